//! Wires a validated [`Config`] into a running sidecar: identity → TLS config → clients →
//! token cell + refresher → proxy → listener.
//!
//! Owns: start-up errors (everything that makes the binary exit with 2) and the lifetime of
//! the background tasks. Takes an already bound listener and a shutdown future, so tests
//! run many sidecars in parallel on `127.0.0.1:0`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::uri::Authority;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::admin::{Admin, Health};
use crate::config::{Config, IdentitySource};
use crate::generation::{Current, Generation, GenerationError};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, UpstreamTarget};
use crate::server::ServerOptions;
use crate::tls::TlsError;
use crate::token::Refresher;
use crate::webhook::Webhook;

/// Why the sidecar cannot start. Displayed as one line naming the flag.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A flag is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The shared cache cannot be set up.
    #[error("--cache: {0}")]
    Cache(crate::token::cache::CacheError),
    /// The webhook listener's identity or CAs cannot be loaded.
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookTlsError),
    /// The identity or trust anchors cannot be loaded.
    #[error("{flag}: {source}")]
    Tls {
        /// The flag the file came from.
        flag: &'static str,
        /// What went wrong.
        source: TlsError,
    },
}

fn tls_flag(err: &TlsError, config: &Config) -> &'static str {
    let is = |p: &PathBuf| match err {
        TlsError::Read { path, .. }
        | TlsError::NoCertificate { path, .. }
        | TlsError::BadKey { path, .. }
        | TlsError::BadCertificate { path, .. }
        | TlsError::Expired { path, .. }
        | TlsError::NotYetValid { path, .. } => path == p,
        TlsError::KeyMismatch { key, .. } => key == p,
        TlsError::Pkcs12 { path, .. } => path == p,
        _ => false,
    };
    let (cert, key) = match &config.identity {
        IdentitySource::Pem { cert, key } => (Some(cert), Some(key)),
        IdentitySource::Pkcs12 { path, .. } => {
            if is(path) || matches!(err, TlsError::Pkcs12 { .. }) {
                return "--pkcs12";
            }
            if let IdentitySource::Pkcs12 {
                password: crate::config::PasswordSource::File(f),
                ..
            } = &config.identity
            {
                if is(f) {
                    return "--pkcs12-password-file";
                }
            }
            (None, None)
        }
        IdentitySource::Loaded(_) => (None, None),
    };
    if key.is_some_and(is) {
        "--key"
    } else if cert.is_some_and(is) {
        "--cert"
    } else if config.ca.as_ref().is_some_and(is) {
        "--ca"
    } else {
        "--cert"
    }
}

/// A sidecar ready to serve: identity loaded, clients built, refresher not yet started.
pub struct Sidecar {
    config: Config,
    current: Current,
    first_refresher: Option<Refresher>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    reload: Arc<Notify>,
    webhook: Option<Arc<Webhook>>,
    webhook_listener: Option<TcpListener>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("config", &self.config)
            .field("generation", &self.current.load().number)
            .finish_non_exhaustive()
    }
}

/// Days of certificate validity below which start-up warns.
const CERT_WARN_DAYS: u64 = 30;

impl Sidecar {
    /// Load the identity and trust anchors and build the clients. Fails on any bad input.
    pub fn new(config: Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let (generation, refresher) =
            Generation::build(&config, 1, &metrics).map_err(|e| match e {
                GenerationError::Tls(source) => StartError::Tls {
                    flag: tls_flag(&source, &config),
                    source,
                },
                GenerationError::Cache(e) => StartError::Cache(e),
                GenerationError::Secret(reason) => StartError::Config(crate::config::ConfigError {
                    flag: "--client-secret-file",
                    reason,
                }),
            })?;
        let current: Current = Arc::new(ArcSwap::from_pointee(generation));
        let webhook = match &config.webhook {
            Some(wh) => {
                let verifier = (wh.verify != crate::cli::WebhookVerify::Off).then(|| {
                    crate::webhook::verify::Verifier::new(
                        current.clone(),
                        UpstreamTarget::new(&config.upstream)
                            .expect("config guarantees an absolute upstream URL"),
                        config.proxy.extras.clone(),
                        // Leave the app most of the PSP's patience.
                        wh.timeout.min(Duration::from_secs(5)),
                        wh.verify == crate::cli::WebhookVerify::Require,
                    )
                });
                Some(Arc::new(Webhook::new(
                    wh.clone(),
                    metrics.clone(),
                    verifier,
                )?))
            }
            None => None,
        };
        Ok(Self {
            current,
            webhook,
            webhook_listener: None,
            first_refresher: Some(refresher),
            metrics,
            health: Arc::new(Health::new()),
            reload: Arc::new(Notify::new()),
            config,
        })
    }

    /// The current generation (identity, client, token), as requests see it.
    pub fn current(&self) -> Current {
        self.current.clone()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The readiness latch.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// The webhook listener's state, when `--webhook-listen` is configured.
    pub fn webhook(&self) -> Option<Arc<Webhook>> {
        self.webhook.clone()
    }

    /// The already bound socket the webhook listener serves on (needed when the config has
    /// a webhook; nothing in the library binds a port itself).
    pub fn set_webhook_listener(&mut self, listener: TcpListener) {
        self.webhook_listener = Some(listener);
    }

    /// Notify this to reload the identity files now (what SIGHUP does).
    pub fn reload_trigger(&self) -> Arc<Notify> {
        self.reload.clone()
    }

    /// Start the refresher, serve the app on `listener` and the admin routes on `admin`,
    /// until `shutdown` resolves. Then readiness turns 503 at once, the app listener keeps
    /// serving for the shutdown delay (so endpoints controllers catch up), stops accepting,
    /// and drains in-flight requests up to the drain timeout. Returns whether the drain
    /// completed in time.
    pub async fn run(
        mut self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> bool {
        let first = self.current.load_full();
        if let Some(refresher) = self.first_refresher.take() {
            first.start(refresher);
        }
        let info = first.identity.info();
        let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            event = "starting",
            listen = %addr(&listener),
            admin = %admin.as_ref().map(addr).unwrap_or_else(|| "off".into()),
            upstream = %self.config.upstream,
            token_url = %self.config.token.url,
            client_id = %self.config.token.client_id,
            cache = %self.config.cache.as_ref().map(|c| format!("{} {}", c.mode.as_str(), c.shown())).unwrap_or_else(|| "off".into()),
            cert_subject = %info.subject,
            cert_not_after = %crate::tls::rfc3339(info.not_after),
            "pix-auth-proxy starting"
        );
        let left = info.time_left(SystemTime::now());
        if left < Duration::from_secs(CERT_WARN_DAYS * 86_400) {
            tracing::warn!(
                event = "client_cert_near_expiry",
                days_left = left.as_secs() / 86_400,
                not_after = %crate::tls::rfc3339(info.not_after),
                "the client certificate expires soon: renew it with the PSP"
            );
        }
        let target = UpstreamTarget::new(&self.config.upstream)
            .expect("config guarantees an absolute upstream URL");
        let mut own = Vec::new();
        if let Ok(addr) = listener.local_addr() {
            if let Ok(a) = Authority::try_from(addr.to_string()) {
                own.push(a);
            }
            if let Ok(a) = Authority::try_from(format!("localhost:{}", addr.port())) {
                own.push(a);
            }
        }
        drop(first);
        let proxy = Proxy::new(
            target,
            own,
            self.current.clone(),
            self.metrics.clone(),
            self.config.proxy.clone(),
        );
        // One trigger (SIGHUP) reloads both directions.
        let generation_trigger = Arc::new(Notify::new());
        let webhook_trigger = Arc::new(Notify::new());
        let fan_out = {
            let (source, a, b) = (
                self.reload.clone(),
                generation_trigger.clone(),
                webhook_trigger.clone(),
            );
            tokio::spawn(async move {
                loop {
                    source.notified().await;
                    a.notify_one();
                    b.notify_one();
                }
            })
        };
        let reloader = tokio::spawn(crate::reload::watch(
            self.config.clone(),
            self.current.clone(),
            self.metrics.clone(),
            generation_trigger,
        ));
        let (webhook_stop, webhook_stop_rx) = tokio::sync::watch::channel(false);
        let webhook_task = self.start_webhook(webhook_trigger, webhook_stop_rx);

        let (admin_stop, admin_task) = match admin {
            Some(l) => {
                let state = Admin {
                    health: self.health.clone(),
                    metrics: self.metrics.clone(),
                    current: self.current.clone(),
                };
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let handler = move |req: http::Request<hyper::body::Incoming>| {
                    let resp = state.handle(&req);
                    async move { resp }
                };
                let opts = ServerOptions {
                    drain_timeout: Duration::from_secs(1),
                    max_connections: 64,
                    ..ServerOptions::default()
                };
                let task = tokio::spawn(crate::server::serve(l, handler, opts, async {
                    let _ = rx.await;
                }));
                (Some(tx), Some(task))
            }
            None => (None, None),
        };

        let handler = move |req: http::Request<hyper::body::Incoming>| proxy.clone().handle(req);
        let health = self.health.clone();
        let delay = self.config.shutdown_delay;
        let app_shutdown = async move {
            shutdown.await;
            health.begin_shutdown();
            if !delay.is_zero() {
                tracing::info!(
                    event = "shutdown_delay",
                    delay_s = delay.as_secs_f64(),
                    "readiness is now 503; still serving while endpoints update"
                );
                tokio::time::sleep(delay).await;
            }
            let _ = webhook_stop.send(true);
        };
        let drained =
            crate::server::serve(listener, handler, self.config.server.clone(), app_shutdown).await;
        reloader.abort();
        fan_out.abort();
        let drained = match webhook_task {
            Some((task, watcher)) => {
                watcher.abort();
                task.await.unwrap_or(false) && drained
            }
            None => drained,
        };
        if let Some(tx) = admin_stop {
            let _ = tx.send(());
        }
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        drained
    }

    /// Serve the webhook listener (and watch its files) if one is configured.
    #[allow(clippy::type_complexity)]
    fn start_webhook(
        &mut self,
        trigger: Arc<Notify>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<(tokio::task::JoinHandle<bool>, tokio::task::JoinHandle<()>)> {
        let webhook = self.webhook.clone()?;
        let Some(listener) = self.webhook_listener.take() else {
            tracing::error!(
                event = "webhook_not_listening",
                "--webhook-listen is configured but no socket was given; webhooks are not served"
            );
            return None;
        };
        let wh = webhook.config();
        let state = webhook.tls();
        let info = state.identity.info();
        let accepts_unverified = wh.accepts_unverified();
        tracing::info!(
            event = "webhook_starting",
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            forward = %wh.forward,
            path = %if wh.path.is_empty() { "/" } else { wh.path.as_str() },
            cert_subject = %info.subject,
            cert_not_after = %crate::tls::rfc3339(info.not_after),
            client_cas = state.cas.len(),
            "webhook listener starting"
        );
        if accepts_unverified {
            tracing::warn!(
                event = "webhook_accepts_unverified",
                "the webhook listener accepts callers without a verified client certificate when the URL carries the secret (--webhook-url-secret-file); restrict them with --webhook-allow-ip"
            );
        }
        let left = info.time_left(SystemTime::now());
        if left < Duration::from_secs(CERT_WARN_DAYS * 86_400) {
            tracing::warn!(
                event = "webhook_cert_near_expiry",
                days_left = left.as_secs() / 86_400,
                "the webhook server certificate expires soon: the PSP will refuse to call"
            );
        }
        let files = wh.watched_files();
        let watcher = {
            let webhook = webhook.clone();
            tokio::spawn(crate::reload::on_change(
                files,
                self.config.reload_interval,
                trigger,
                move |_| {
                    let _ = webhook.reload();
                    std::future::ready(())
                },
            ))
        };
        let task = tokio::spawn(webhook.serve(
            listener,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
            self.config.server.clone(),
        ));
        Some((task, watcher))
    }
}
