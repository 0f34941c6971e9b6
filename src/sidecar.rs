//! Wires a validated [`Config`] into a running sidecar: identity → TLS config → clients →
//! token cell + refresher → proxy → listener.
//!
//! Owns: start-up errors (everything that makes the binary exit with 2) and the lifetime of
//! the background tasks. Takes an already bound listener and a shutdown future, so tests
//! run many sidecars in parallel on `127.0.0.1:0`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use http::uri::Authority;
use tokio::net::TcpListener;

use crate::config::{Config, IdentitySource};
use crate::proxy::{Proxy, UpstreamTarget};
use crate::tls::{Identity, TlsError};
use crate::token::{Refresher, RefresherHandle, TokenCell, TokenClient};

/// Why the sidecar cannot start. Displayed as one line naming the flag.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A flag is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
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
        _ => false,
    };
    let (cert, key) = match &config.identity {
        IdentitySource::Pem { cert, key } => (Some(cert), Some(key)),
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
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("config", &self.config)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

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
        let cell = TokenCell::new();
        let refresher = Refresher::new(token_client, cell.clone(), config.refresh.clone());
        let handle = refresher.handle();
        Ok(Self {
            identity,
            cell,
            refresher,
            handle,
            upstream_client,
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

    /// The loaded client identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Start the refresher and serve on `listener` until `shutdown` resolves; then stop
    /// accepting and drain in-flight requests up to the drain timeout. Returns whether the
    /// drain completed in time.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> bool {
        let info = self.identity.info();
        tracing::info!(
            event = "starting",
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            upstream = %self.config.upstream,
            token_url = %self.config.token.url,
            client_id = %self.config.token.client_id,
            cert_subject = %info.subject,
            cert_not_after = %crate::tls::rfc3339(info.not_after),
            "pix-auth-proxy starting"
        );
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
            self.cell,
            self.handle,
            self.config.proxy.clone(),
        );
        let refresher = tokio::spawn(self.refresher.run());
        let handler = move |req| {
            let proxy = proxy.clone();
            async move { proxy.handle(req).await }
        };
        let drained =
            crate::server::serve(listener, handler, self.config.server.clone(), shutdown).await;
        refresher.abort();
        drained
    }
}
