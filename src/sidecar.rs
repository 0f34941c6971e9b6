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

use http::uri::Authority;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::admin::{Admin, Health};
use crate::config::{Config, IdentitySource};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, UpstreamTarget};
use crate::server::ServerOptions;
use crate::tls::{Identity, TlsError};
use crate::token::cache::SharedCache;
use crate::token::{Refresher, RefresherHandle, TokenCell, TokenClient};

/// Why the sidecar cannot start. Displayed as one line naming the flag.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A flag is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The shared cache cannot be set up.
    #[error("--cache: {0}")]
    Cache(crate::token::cache::CacheError),
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
    identity: Arc<Identity>,
    cell: TokenCell,
    refresher: Refresher,
    handle: RefresherHandle,
    upstream_client: crate::proxy::UpstreamClient,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("config", &self.config)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Days of certificate validity below which start-up warns.
const CERT_WARN_DAYS: u64 = 30;

impl Sidecar {
    /// Load the identity and trust anchors and build the clients. Fails on any bad input.
    pub fn new(config: Config) -> Result<Self, StartError> {
        let tls_err = |source: TlsError| StartError::Tls {
            flag: tls_flag(&source, &config),
            source,
        };
        let identity = config.identity.load().map_err(tls_err)?;
        let roots =
            crate::tls::root_store(config.ca.as_deref(), &config.extra_roots).map_err(tls_err)?;
        let roots = Arc::new(roots);
        let tls = identity.client_config(roots).map_err(tls_err)?;
        let upstream_client = crate::client::https_client(tls.clone(), &config.client);
        // The token endpoint gets its own pool: its connections live on another host and
        // carry other timeouts.
        let token_http = crate::client::https_client(tls, &config.client);
        let token_client = TokenClient::new(token_http, config.token.clone(), config.token_timeout);
        let metrics = Arc::new(Metrics::new());
        metrics.set_cert_expiry(identity.info().not_after);
        let cell = TokenCell::new();
        let refresher = Refresher::new(
            token_client,
            cell.clone(),
            config.refresh.clone(),
            metrics.clone(),
        );
        let refresher = match &config.cache {
            Some(cache) => {
                let key = crate::token::cache::cache_key(
                    &config.token.url.to_string(),
                    &config.token.client_id,
                    config.token.scope.as_deref(),
                    &identity.info().spki_sha256,
                );
                // The lock outlives a whole token request, so a slow winner keeps it.
                let lock_ttl = config.token_timeout + Duration::from_secs(1);
                let shared = SharedCache::new(cache, key, lock_ttl, metrics.clone())
                    .map_err(StartError::Cache)?;
                refresher.with_cache(Arc::new(shared))
            }
            None => refresher,
        };
        let handle = refresher.handle();
        Ok(Self {
            identity,
            cell,
            refresher,
            handle,
            upstream_client,
            metrics,
            health: Arc::new(Health::new()),
            config,
        })
    }

    /// The token cell (read-only use: tests and health checks).
    pub fn token_cell(&self) -> TokenCell {
        self.cell.clone()
    }

    /// The refresher's handle (counters).
    pub fn refresher(&self) -> RefresherHandle {
        self.handle.clone()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The readiness latch.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// The loaded client identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Start the refresher, serve the app on `listener` and the admin routes on `admin`,
    /// until `shutdown` resolves. Then readiness turns 503 at once, the app listener keeps
    /// serving for the shutdown delay (so endpoints controllers catch up), stops accepting,
    /// and drains in-flight requests up to the drain timeout. Returns whether the drain
    /// completed in time.
    pub async fn run(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> bool {
        let info = self.identity.info();
        let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            event = "starting",
            listen = %addr(&listener),
            admin = %admin.as_ref().map(addr).unwrap_or_else(|| "off".into()),
            upstream = %self.config.upstream,
            token_url = %self.config.token.url,
            client_id = %self.config.token.client_id,
            cache = %self.config.cache.as_ref().map(|c| crate::token::cache::redacted_url(secrecy::ExposeSecret::expose_secret(&c.url))).unwrap_or_else(|| "off".into()),
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
        let proxy = Proxy::new(
            target,
            own,
            self.upstream_client,
            self.cell.clone(),
            self.handle,
            self.metrics.clone(),
            self.config.proxy.clone(),
        );
        let refresher = tokio::spawn(self.refresher.run());

        let (admin_stop, admin_task) = match admin {
            Some(l) => {
                let state = Admin {
                    health: self.health.clone(),
                    metrics: self.metrics.clone(),
                    cell: self.cell.clone(),
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

        let metrics = self.metrics.clone();
        let handler = move |req: http::Request<hyper::body::Incoming>| {
            let proxy = proxy.clone();
            let metrics = metrics.clone();
            async move {
                let started = Instant::now();
                let resp = proxy.handle(req).await;
                metrics.request(resp.status().as_u16(), started.elapsed());
                resp
            }
        };
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
        };
        let drained =
            crate::server::serve(listener, handler, self.config.server.clone(), app_shutdown).await;
        refresher.abort();
        if let Some(tx) = admin_stop {
            let _ = tx.send(());
        }
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        drained
    }
}
