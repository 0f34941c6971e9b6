//! Faults and abuse (issue 12): hostile apps, hostile PSPs, hostile token endpoints, a
//! misbehaving network towards the PSP and Redis, and the process lifecycle under load.
//! Every test here proves one promise of DESIGN.md "Reliability promise" over real sockets.

mod bodies;
mod h2c_smuggling;
mod lifecycle;
mod network;
mod slow;
mod smuggling;
mod token;
mod upstream;

use pix_auth_proxy::metrics::Metrics;

use crate::support::hostile_psp::HostilePsp;
use crate::support::*;

/// A sidecar whose API calls go to a [`HostilePsp`] (HTTP/1.1 only, as it offers no h2) and
/// whose tokens come from the env's well-behaved mock PSP.
pub struct Hostile {
    pub env: Env,
    pub psp: HostilePsp,
    pub sidecar: Running,
}

pub async fn hostile(extra: &[&str]) -> Hostile {
    let env = Env::new().await;
    let server = env.pki.server().unwrap();
    let psp = HostilePsp::start(&env.pki, &server).await;
    let url = psp.url();
    let mut flags = vec!["--upstream", url.as_str(), "--upstream-http1-only"];
    flags.extend_from_slice(extra);
    let sidecar = env.sidecar(&flags).await;
    sidecar.ready().await;
    Hostile { env, psp, sidecar }
}

/// The sum of every sample whose line starts with `prefix` (a name, optionally with the
/// start of its label set), in this sidecar's Prometheus exposition.
pub fn counter(metrics: &Metrics, prefix: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub const UPSTREAM_ERRORS: &str = "pix_auth_proxy_upstream_errors_total";
pub const DOWNSTREAM_BAD_REQUEST: &str =
    "pix_auth_proxy_downstream_errors_total{kind=\"bad-request\"}";

/// A plain GET answered 200 by the PSP: the sidecar still serves.
pub async fn assert_still_serves(sidecar: &Running, path: &str) {
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), get(&sidecar.url(path)))
        .await
        .expect("a normal request is answered within 10 s");
    assert_eq!(
        got.status,
        200,
        "after the fault: {}",
        String::from_utf8_lossy(&got.body)
    );
}

/// Answers counted by a client loop: 2xx, other statuses, and requests with no answer.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub ok: u64,
    pub non_2xx: u64,
    pub unanswered: u64,
}

/// One sequential HTTP/1.1 client per URL, each request bounded by 5 s, for at least
/// `duration` and until `ok` 2xx answers in all (at most 30 s, so a stalled loop still ends).
pub async fn load_for_at_least(urls: &[String], duration: std::time::Duration, ok: u64) -> Tally {
    let progress = std::sync::Arc::new(Progress::default());
    let watcher = {
        let progress = progress.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            eventually(std::time::Duration::from_secs(30), || progress.ok() >= ok).await;
            progress.stop();
        })
    };
    let t = load_until(urls, false, progress).await;
    watcher.await.unwrap();
    t
}

/// A client loop's live view: 2xx answers so far, and the flag that ends it.
#[derive(Debug, Default)]
pub struct Progress {
    ok: std::sync::atomic::AtomicU64,
    stop: std::sync::atomic::AtomicBool,
}

impl Progress {
    pub fn ok(&self) -> u64 {
        self.ok.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Each loop ends after the request it is in.
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One sequential client per URL (h2c with prior knowledge if `h2c`, else HTTP/1.1), each
/// request bounded by 5 s, until [`Progress::stop`]; 2xx answers are counted in `progress`
/// as they come.
pub async fn load_until(urls: &[String], h2c: bool, progress: std::sync::Arc<Progress>) -> Tally {
    let tasks: Vec<_> = urls
        .iter()
        .cloned()
        .map(|url| {
            let progress = progress.clone();
            tokio::spawn(async move {
                let client = if h2c { h2c_client() } else { http_client() };
                let mut t = Tally::default();
                while !progress.stopped() {
                    let req = http::Request::get(url.as_str()).body(empty()).unwrap();
                    let answer = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        client.request(req),
                    )
                    .await;
                    match answer {
                        Ok(Ok(resp)) if resp.status().is_success() => {
                            t.ok += 1;
                            progress
                                .ok
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Ok(Ok(resp)) => {
                            t.non_2xx += 1;
                            eprintln!("non-2xx answer: {}", resp.status());
                        }
                        _ => t.unanswered += 1,
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                t
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let t = task.await.unwrap();
        total.ok += t.ok;
        total.non_2xx += t.non_2xx;
        total.unanswered += t.unanswered;
    }
    total
}
