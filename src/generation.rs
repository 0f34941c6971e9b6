//! A *generation*: everything that depends on the client identity, swapped as one unit
//! when the certificate, the trust anchors or the client secret change.
//!
//! Owns: building a generation (identity → TLS config → pooled API client + token client →
//! token cell + refresher, with its own shared-cache key since PSP tokens are bound to the
//! certificate) and the `ArcSwap` that requests read it from. A request loads the current
//! generation once and uses its client and its token together, so it never mixes a new
//! certificate with an old token; in-flight requests finish on the generation they started
//! with, whose refresher stops when the last of them drops it.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::AbortHandle;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::UpstreamClient;
use crate::tls::{Identity, TlsError};
use crate::token::cache::{CacheError, SharedCache};
use crate::token::{Refresher, RefresherHandle, TokenCell, TokenClient};

/// Why a generation could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// The identity, the trust anchors or the secret could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The shared cache could not be set up.
    #[error("--cache: {0}")]
    Cache(#[from] CacheError),
    /// The client secret file could not be read.
    #[error("--client-secret-file: {0}")]
    Secret(String),
}

/// One identity and everything built from it.
pub struct Generation {
    /// 1 for the identity loaded at start, then +1 per successful reload.
    pub number: u64,
    /// The client identity.
    pub identity: Arc<Identity>,
    /// Pooled mTLS client towards the PSP API.
    pub client: UpstreamClient,
    /// The token obtained with this identity.
    pub cell: TokenCell,
    /// The proxy's handle on this generation's refresher.
    pub refresher: RefresherHandle,
    task: std::sync::Mutex<Option<AbortHandle>>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("number", &self.number)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // The last request using this identity is gone: stop renewing its token.
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl Generation {
    /// Load the identity, trust anchors and secret named by `config` and build the clients.
    /// The returned refresher must be started with [`Generation::start`].
    pub fn build(
        config: &Config,
        number: u64,
        metrics: &Arc<Metrics>,
    ) -> Result<(Self, Refresher), GenerationError> {
        let identity = config.identity.load()?;
        let roots = crate::tls::root_store(config.ca.as_deref(), &config.extra_roots)?;
        let tls = identity.client_config(Arc::new(roots))?;
        let client = UpstreamClient::new(
            tls.clone(),
            &config.client,
            config.upstream.clone(),
            metrics.clone(),
        );
        // The token endpoint gets its own pool: its connections live on another host and
        // carry other timeouts.
        let token_http = crate::client::https_client(tls, &config.client);
        let mut request = config.token.clone();
        if let Some(secret) = config
            .read_client_secret()
            .map_err(GenerationError::Secret)?
        {
            request.client_secret = Some(secret);
        }
        let token_client = TokenClient::new(token_http, request, config.token_timeout);
        let cell = TokenCell::new();
        let mut refresher = Refresher::new(
            token_client,
            cell.clone(),
            config.refresh.clone(),
            metrics.clone(),
        )
        .with_certificate(
            identity.info().subject.clone(),
            identity.info().issuer.clone(),
        );
        if let Some(cache) = &config.cache {
            let key = crate::token::cache::cache_key(
                &config.token.url.to_string(),
                &config.token.client_id,
                config.token.scope.as_deref(),
                &identity.info().spki_sha256,
            );
            // The lock outlives a whole token request, so a slow winner keeps it.
            let lock_ttl = config.token_timeout + Duration::from_secs(1);
            let shared = SharedCache::new(cache, key, lock_ttl, metrics.clone())?;
            refresher = refresher.with_cache(Arc::new(shared));
        }
        metrics.set_cert_expiry(identity.info().not_after);
        let generation = Generation {
            number,
            identity,
            client,
            cell,
            refresher: refresher.handle(),
            task: std::sync::Mutex::new(None),
        };
        Ok((generation, refresher))
    }

    /// Start the refresher on its own task; it stops when this generation is dropped.
    pub fn start(&self, refresher: Refresher) {
        // Learn the PSP's protocol while the first token is being fetched, so that the
        // first burst of requests shares one HTTP/2 connection instead of opening one each.
        let client = self.client.clone();
        tokio::spawn(async move {
            let bound = Duration::from_secs(30);
            let failure = match tokio::time::timeout(bound, client.discover()).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => crate::telemetry::error_chain(&*e),
                Err(_) => format!("no TLS connection within {bound:?}"),
            };
            tracing::debug!(
                event = "upstream_discovery_failed",
                error = %failure,
                "could not learn the PSP's protocol ahead of the first request"
            );
        });
        let task = tokio::spawn(refresher.run());
        if let Ok(mut slot) = self.task.lock() {
            *slot = Some(task.abort_handle());
        }
    }
}

/// The current generation, read by every request.
pub type Current = Arc<ArcSwap<Generation>>;
