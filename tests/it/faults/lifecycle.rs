//! The process lifecycle under a concurrent client loop: SIGTERM to the real binary (every
//! answered request is a 2xx, exit code 0) and repeated identity rotations the Kubernetes
//! way, over HTTP/1.1 and h2c at once (no non-2xx, no unanswered request).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{Progress, Tally, load_until};
use crate::reload::{publish, sidecar_on_identity_dir};
use crate::support::process::spawn;
use crate::support::*;

#[tokio::test]
async fn sigterm_under_a_concurrent_client_loop_answers_only_2xx_and_exits_0() {
    let env = Env::new().await;
    let port = bind().await.local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let flags = env.flags(&[
        "--listen",
        &listen,
        "--admin-listen",
        "127.0.0.1:0",
        "--shutdown-delay",
        "500ms",
        "--shutdown-timeout",
        "5s",
    ]);
    let mut child = spawn(&flags, &[], false);
    let url = format!("http://{listen}/cob/term");
    child.wait_for_200(&url).await;
    // Requests take a while at the PSP, so some are in flight when the drain starts.
    env.psp.set_api_delay(Duration::from_millis(50));
    let signalled = Arc::new(AtomicBool::new(false));
    let answered_after = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let loops: Vec<_> = (0..4)
        .map(|i| {
            let (url, signalled, answered_after, total) = (
                format!("{url}{i}"),
                signalled.clone(),
                answered_after.clone(),
                total.clone(),
            );
            tokio::spawn(async move {
                let client = http_client();
                let mut t = Tally::default();
                let until = Instant::now() + Duration::from_secs(15);
                while Instant::now() < until {
                    let req = http::Request::get(url.as_str()).body(empty()).unwrap();
                    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                        Ok(Ok(resp)) => {
                            if resp.status().is_success() {
                                t.ok += 1;
                            } else {
                                t.non_2xx += 1;
                                eprintln!("non-2xx during shutdown: {}", resp.status());
                            }
                            total.fetch_add(1, Ordering::SeqCst);
                            if signalled.load(Ordering::SeqCst) {
                                answered_after.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        // Once the listener is gone, nothing answers: the loop is over.
                        _ if signalled.load(Ordering::SeqCst) => break,
                        _ => t.unanswered += 1,
                    }
                }
                t
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || total.load(Ordering::SeqCst)
            >= 40)
        .await,
        "the client loops run"
    );
    signalled.store(true, Ordering::SeqCst);
    child.signal("TERM");
    let mut sum = Tally::default();
    for l in loops {
        let t = l.await.unwrap();
        sum.ok += t.ok;
        sum.non_2xx += t.non_2xx;
        sum.unanswered += t.unanswered;
    }
    let (code, logs) = child.finish(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{logs}");
    assert_eq!(sum.non_2xx, 0, "{sum:?}");
    assert_eq!(
        sum.unanswered, 0,
        "before the signal every request is answered: {sum:?}"
    );
    assert!(
        answered_after.load(Ordering::SeqCst) > 0,
        "requests kept being answered after SIGTERM (the shutdown delay): {sum:?}"
    );
    for secret in env.secrets() {
        assert!(
            !logs.contains(&secret),
            "a secret reached the binary's logs"
        );
    }
}

#[tokio::test]
async fn two_identity_rotations_under_http1_and_h2c_loops_answer_only_2xx() {
    let env = Env::new().await;
    let dir = env.path("identity");
    std::fs::create_dir_all(&dir).unwrap();
    let sidecar = sidecar_on_identity_dir(&env, &dir, "gen1").await;
    let h1: Vec<String> = (0..2)
        .map(|i| sidecar.url(&format!("/cob/h1-{i}")))
        .collect();
    let h2: Vec<String> = (0..2)
        .map(|i| sidecar.url(&format!("/cob/h2c-{i}")))
        .collect();
    // The loops run until stopped; the test moves on by watching their answers, so a slow
    // machine makes it slower, not red.
    let (p1, p2) = (Arc::new(Progress::default()), Arc::new(Progress::default()));
    let loops = {
        let (p1, p2) = (p1.clone(), p2.clone());
        tokio::spawn(
            async move { tokio::join!(load_until(&h1, false, p1), load_until(&h2, true, p2)) },
        )
    };
    // Every loop answers this many 2xx before the first rotation and after each one.
    const STEP: u64 = 20;
    let answered_again = |from: (u64, u64)| {
        let (p1, p2) = (p1.clone(), p2.clone());
        async move {
            eventually(Duration::from_secs(20), || {
                p1.ok() >= from.0 + STEP && p2.ok() >= from.1 + STEP
            })
            .await
        }
    };
    assert!(answered_again((0, 0)).await, "both loops run");
    let mut last = env.client.clone();
    for (n, version) in [(2, "gen2"), (3, "gen3")] {
        let rotated = env.pki.client(&format!("pix-client-{version}")).unwrap();
        publish(&dir, version, &rotated.cert_pem, &rotated.key_pem);
        assert!(
            eventually(Duration::from_secs(3), || sidecar.current.load().number
                == n)
            .await,
            "generation {n} loaded"
        );
        let at_load = (p1.ok(), p2.ok());
        assert!(
            answered_again(at_load).await,
            "both loops answered {STEP} more on generation {n}"
        );
        last = rotated;
    }
    p1.stop();
    p2.stop();
    let (h1, h2c) = loops.await.unwrap();
    for (proto, t) in [("HTTP/1.1", h1), ("h2c", h2c)] {
        assert_eq!((t.non_2xx, t.unanswered), (0, 0), "{proto}: {t:?}");
    }
    let got = get(&sidecar.url("/cob/after-rotations")).await;
    assert_eq!(
        got.json()["client_cert_sha256"],
        pix_auth_proxy::telemetry::hex(&pix_auth_proxy::tls::sha256(last.cert_der.as_ref())),
        "the PSP sees the last certificate"
    );
    env.assert_logs_clean();
}
