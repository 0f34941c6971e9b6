//! Hot reload of the client identity, trust anchors and client secret.
//!
//! Owns: polling the files (mtime + length + content hash, following symlinks, so the
//! Kubernetes `..data` symlink swap is seen where inotify-style watches miss it), SIGHUP-style
//! forced reloads, and the swap itself: a new [`Generation`] is built, its first token is
//! fetched with the new certificate, and only then does it replace the current one. A new
//! identity that fails to load, validate or obtain a token leaves the old one serving.
//! The same poller ([`on_change`]) watches the webhook listener's identity and CA files.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::config::Config;
use crate::generation::{Current, Generation};
use crate::metrics::Metrics;

/// What a file looked like at one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    sha256: [u8; 32],
}

/// The state of every watched file; `None` for a file that cannot be read right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(Vec<Option<Seen>>);

impl Snapshot {
    /// Read every file (through symlinks).
    pub fn take(files: &[PathBuf]) -> Self {
        Snapshot(
            files
                .iter()
                .map(|f| {
                    let meta = std::fs::metadata(f).ok()?;
                    let data = std::fs::read(f).ok()?;
                    Some(Seen {
                        modified: meta.modified().ok(),
                        len: meta.len(),
                        sha256: crate::tls::sha256(&data),
                    })
                })
                .collect(),
        )
    }
}

/// Poll `files` every `interval` (and at once when `trigger` is notified), calling
/// `changed(forced)` after each change. Shared by the client identity and the webhook
/// listener's identity and CAs. Runs until dropped.
pub async fn on_change<F, Fut>(
    files: Vec<PathBuf>,
    interval: Duration,
    trigger: Arc<Notify>,
    mut changed: F,
) where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut seen = Snapshot::take(&files);
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = trigger.notified() => true,
        };
        let now = Snapshot::take(&files);
        if !forced && now == seen {
            continue;
        }
        // A half-written update is retried at the next change, not in a loop.
        seen = now;
        changed(forced).await;
    }
}

/// Watch the files named by `config` and swap in a new generation when they change or when
/// `trigger` is notified. Runs until dropped.
pub async fn watch(config: Config, current: Current, metrics: Arc<Metrics>, trigger: Arc<Notify>) {
    let files = config.watched_files();
    let interval = config.reload_interval;
    on_change(files, interval, trigger, |forced| {
        reload_generation(&config, &current, &metrics, forced)
    })
    .await;
}

async fn reload_generation(
    config: &Config,
    current: &Current,
    metrics: &Arc<Metrics>,
    forced: bool,
) {
    let number = current.load().number + 1;
    tracing::info!(
        event = "reload_started",
        generation = number,
        forced,
        "identity files changed; loading them"
    );
    match next_generation(config, number, metrics).await {
        Ok(generation) => {
            let info = generation.identity.info().clone();
            let old = current.swap(Arc::new(generation));
            metrics.tls_reload("success");
            tracing::info!(
                event = "reload_succeeded",
                generation = number,
                cert_subject = %info.subject,
                cert_not_after = %crate::tls::rfc3339(info.not_after),
                previous_subject = %old.identity.info().subject,
                "new identity in use; requests in flight finish on the previous one"
            );
        }
        Err(reason) => {
            metrics.tls_reload("failure");
            tracing::error!(
                event = "reload_failed",
                generation = number,
                error = %reason,
                "the new identity is not usable; still serving with the previous one (retried on the next change)"
            );
        }
    }
}

async fn next_generation(
    config: &Config,
    number: u64,
    metrics: &Arc<Metrics>,
) -> Result<Generation, String> {
    let (generation, refresher) =
        Generation::build(config, number, metrics).map_err(|e| e.to_string())?;
    generation.start(refresher);
    // PSP tokens are bound to the certificate: get one with the new identity before anyone
    // uses it.
    let wait = config.token_timeout * 2 + Duration::from_secs(1);
    match generation.cell.wait_usable(0, wait).await {
        Some(_) => Ok(generation),
        None => Err(format!(
            "no token could be obtained with the new identity within {wait:?}"
        )),
    }
}
