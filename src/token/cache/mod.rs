//! The optional shared token cache on Redis/Valkey, so that many replicas hold one token
//! and the PSP sees one fetch per lifetime instead of one per pod.
//!
//! Owns the renewal protocol: read and adopt a newer token; else take a `SET NX PX` lock,
//! re-read, fetch, write only if newer (Lua), publish a hint, and release the lock with a
//! Lua compare-and-delete (or keep it [`FAILED_FETCH_HOLD`] after a failed fetch). Losers
//! wait for the hint (standalone, sentinel) or re-read every 100 ms (cluster), bounded.
//! Every Redis call has a short timeout; any Redis failure is a [`CacheError`] the refresher
//! answers with a local fetch, so the cache is never a reason for a request to fail.
//!
//! Split by concern: [`protocol`] (key layout v2, sealing, Lua scripts), [`backend`]
//! (connections per `--cache-mode`, rebuilt in the background on failover), `probe`
//! (`check`'s round trip), `settings` ([`CacheConfig`], [`CacheMode`]).

pub mod backend;
mod probe;
pub mod protocol;
mod settings;

pub use probe::{ACL_COMMANDS, ProbeStep};
pub use settings::{CacheConfig, CacheMode};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use secrecy::SecretString;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::telemetry::hex;
use backend::Backend;
pub use protocol::{CacheKey, Keys, cache_key, redacted_url};
use protocol::{RELEASE_LOCK, WRITE_IF_NEWER, open, seal, unix_ms};

/// Why a shared-cache operation failed. Any of these makes the refresher fetch locally.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A call took longer than the cache timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The cache could not be set up (bad URL, unreadable CA).
    #[error("{0}")]
    Setup(String),
    /// No connection (a rebuild is pending): fetch locally meanwhile.
    #[error("not connected (reconnecting in the background)")]
    NotConnected,
    /// Waiting for another replica's renewal took too long.
    #[error("no replica renewed the token within {0:?}")]
    LockWait(Duration),
}

impl CacheError {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            CacheError::Redis(_) => "error",
            CacheError::Timeout(_) => "timeout",
            CacheError::NotConnected => "not_connected",
            CacheError::Setup(_) => "setup",
            CacheError::LockWait(_) => "lock_wait",
        }
    }
}

/// A token read from (or written to) the cache.
pub struct CachedToken {
    /// The access token.
    pub access_token: SecretString,
    /// Version: greater is newer.
    pub version: u64,
    /// Wall-clock expiry.
    pub expires_at: SystemTime,
    /// Lifetime granted by the PSP.
    pub lifetime: Duration,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("version", &self.version)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl CachedToken {
    /// Time left before expiry, measured now.
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }

    /// The monotonic instant of expiry, measured now.
    pub fn expires_at_instant(&self) -> Instant {
        Instant::now() + self.remaining()
    }
}

/// How a renewal through the cache ended.
#[derive(Debug)]
pub enum Renewal {
    /// Another replica's newer token was adopted: no fetch.
    Adopted(CachedToken),
    /// This replica fetched the token (and shared it).
    Fetched(CachedToken),
}

/// What a read found.
enum Read {
    Missing,
    Found(CachedToken),
    /// A value that does not decrypt; its ciphertext, so the overwrite can target it.
    Undecryptable(Vec<u8>),
}

/// After a failed fetch the lock is kept this long, so that during a token-endpoint outage
/// the replicas together try about once per hold instead of each on its own cadence; after
/// the endpoint's return one of them fetches and the others adopt.
pub const FAILED_FETCH_HOLD: Duration = Duration::from_secs(1);

/// The shared cache client.
pub struct SharedCache {
    backend: Arc<Backend>,
    key: Arc<CacheKey>,
    keys: Keys,
    prefix: String,
    owner: String,
    op_timeout: Duration,
    lock_ttl: Duration,
    metrics: Arc<Metrics>,
    acl_reported: AtomicBool,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("mode", &self.backend.mode())
            .field("cache_key", &self.keys.value)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl SharedCache {
    /// Build the client (no connection yet: it is made on first use and rebuilt after a
    /// failover). `cache_key` comes from [`cache_key`]; the `--cache-key-prefix` is added
    /// here. `lock_ttl` must exceed the token request timeout.
    pub fn new(
        config: &CacheConfig,
        cache_key: String,
        lock_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, CacheError> {
        let backend = Backend::new(config, metrics.clone())?;
        let mut owner = [0u8; 12];
        aws_lc_rs::rand::fill(&mut owner)
            .map_err(|_| CacheError::Setup("system RNG failed".into()))?;
        Ok(Self {
            backend: Arc::new(backend),
            key: config.key.clone(),
            keys: Keys::new(&config.key_prefix, &cache_key),
            prefix: config.key_prefix.clone(),
            owner: hex(&owner),
            op_timeout: config.op_timeout,
            lock_ttl,
            metrics,
            acl_reported: AtomicBool::new(false),
        })
    }

    /// The key of the cached value (prefix included), for logs and tests.
    pub fn key(&self) -> &str {
        &self.keys.value
    }

    /// The mode and the node written to now (if connected).
    pub fn primary(&self) -> (CacheMode, Option<String>) {
        (self.backend.mode(), self.backend.primary())
    }

    /// Run one command on the current connection, bounded by the cache timeout; a failure
    /// that means the connection is unusable starts a rebuild in the background.
    async fn call<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, CacheError> {
        let result = async {
            let mut conn = self.backend.conn().await?;
            match tokio::time::timeout(self.op_timeout, cmd.query_async::<T>(&mut conn)).await {
                Ok(r) => r.map_err(CacheError::Redis),
                Err(_) => Err(CacheError::Timeout(self.op_timeout)),
            }
        }
        .await;
        self.metrics
            .cache_op(op, if result.is_ok() { "ok" } else { "error" });
        if let Err(e) = &result {
            self.backend.failed(e);
            self.report_acl(e);
        }
        result
    }

    /// An ACL refusal is a configuration error: say so once, naming the flags.
    fn report_acl(&self, e: &CacheError) {
        let CacheError::Redis(r) = e else { return };
        if r.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
            || self.acl_reported.swap(true, Ordering::Relaxed)
        {
            return;
        }
        tracing::error!(
            event = "cache_acl_refused",
            error = %r,
            key_prefix = %self.prefix,
            "the shared cache's ACL refused a command: the --cache-username user must be allowed the keys and channels under --cache-key-prefix (~{p}* &{p}*) and {ACL_COMMANDS}; fetching locally",
            p = self.prefix,
        );
    }

    async fn read(&self) -> Result<Read, CacheError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&self.keys.value).arg("v").arg("exp").arg("ct");
        let fields: (Option<u64>, Option<u64>, Option<Vec<u8>>) = self.call("read", &cmd).await?;
        match fields {
            (None, None, None) => Ok(Read::Missing),
            (Some(v), Some(exp), Some(ct)) => {
                match open(&self.key, &self.keys.value, v, exp, &ct) {
                    Some(t) => Ok(Read::Found(t)),
                    None => Ok(Read::Undecryptable(ct)),
                }
            }
            (_, _, ct) => Ok(Read::Undecryptable(ct.unwrap_or_default())),
        }
    }

    /// Count and report a value that does not decrypt, once per distinct value.
    fn report_undecryptable(&self, ct: &[u8], reported: &mut Option<Vec<u8>>) {
        if reported.as_deref() == Some(ct) {
            return;
        }
        self.metrics.cache_decrypt_failure();
        tracing::warn!(
            event = "cache_decrypt_failure",
            key = %self.keys.value,
            "a shared cache value failed to decrypt: tampering, or replicas with different --cache-key-file; treating it as a miss and overwriting it"
        );
        *reported = Some(ct.to_vec());
    }

    async fn write(
        &self,
        token: &CachedToken,
        margin: Duration,
        replace: &[u8],
    ) -> Result<bool, CacheError> {
        // The entry disappears before the token stops being usable (same effective margin as
        // the refresher applies).
        let ttl = token
            .remaining()
            .saturating_sub(margin.min(token.lifetime / 4));
        if ttl < Duration::from_millis(10) {
            return Ok(false);
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(WRITE_IF_NEWER)
            .arg(1)
            .arg(&self.keys.value)
            .arg(token.version)
            .arg(unix_ms(token.expires_at))
            .arg(seal(&self.key, &self.keys.value, token))
            .arg(ttl.as_millis() as u64)
            .arg(replace);
        let written: i64 = self.call("write", &cmd).await?;
        Ok(written == 1)
    }

    async fn try_lock(&self) -> Result<bool, CacheError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&self.keys.lock)
            .arg(&self.owner)
            .arg("NX")
            .arg("PX")
            .arg(self.lock_ttl.as_millis() as u64);
        let set: Option<String> = self.call("lock", &cmd).await?;
        let won = set.is_some();
        self.metrics
            .cache_lock(if won { "acquired" } else { "busy" });
        Ok(won)
    }

    /// Release the lock now, or `hold` from now (see [`FAILED_FETCH_HOLD`]).
    async fn unlock(&self, hold: Duration) -> Result<i64, CacheError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RELEASE_LOCK)
            .arg(1)
            .arg(&self.keys.lock)
            .arg(&self.owner)
            .arg(hold.as_millis() as u64);
        let released = self.call("unlock", &cmd).await;
        if let Err(e) = &released {
            // The lock expires by itself; another replica takes over after its TTL.
            tracing::debug!(event = "cache_unlock_failed", error = %e);
        }
        released
    }

    async fn publish(&self, version: u64) {
        if self.backend.mode() == CacheMode::Cluster {
            // Waiting replicas re-read (a cluster's pub/sub is per shard).
            return;
        }
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&self.keys.channel).arg(version);
        if let Err(e) = self.call::<i64>("publish", &cmd).await {
            tracing::debug!(event = "cache_publish_failed", error = %e);
        }
    }

    /// Obtain a token newer than `have` (any usable one when `have` is `None`): adopt one
    /// another replica stored, or win the lock and `fetch` it, then share it. `margin` is the
    /// expiry margin (the Redis TTL ends before it); `deadline` bounds the whole renewal.
    pub async fn renew<F, Fut, E>(
        &self,
        have: Option<u64>,
        margin: Duration,
        deadline: Duration,
        fetch: F,
    ) -> Result<Result<Renewal, E>, CacheError>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = Result<CachedToken, E>>,
    {
        let started = Instant::now();
        let acceptable = |t: &CachedToken| {
            have.is_none_or(|h| t.version > h) && t.remaining() > margin.min(t.lifetime / 4)
        };
        let mut fetch = Some(fetch);
        let mut pubsub: Option<redis::aio::PubSub> = None;
        let mut reported = None;
        // One more round after a failover rebuilt the connection (see `Backend::settle`).
        let mut settled = false;
        loop {
            let mut replace = Vec::new();
            let mut seen_version = have.unwrap_or(0);
            let read = match self.read().await {
                Err(e) if !settled && self.backend.settle(&e).await => {
                    settled = true;
                    continue;
                }
                r => r?,
            };
            match read {
                Read::Found(t) if acceptable(&t) => {
                    self.metrics.cache_op("adopt", "ok");
                    return Ok(Ok(Renewal::Adopted(t)));
                }
                Read::Found(t) => seen_version = seen_version.max(t.version),
                Read::Undecryptable(ct) => {
                    self.report_undecryptable(&ct, &mut reported);
                    replace = ct;
                }
                Read::Missing => {}
            }
            let won = match self.try_lock().await {
                Err(e) if !settled && self.backend.settle(&e).await => {
                    settled = true;
                    continue;
                }
                r => r?,
            };
            if won {
                let fetch = fetch
                    .take()
                    .expect("fetch is used once: renew_locked returns");
                let result = self
                    .renew_locked(have, margin, seen_version, &replace, &mut reported, fetch)
                    .await;
                let hold = match &result {
                    Ok(Err(_)) => FAILED_FETCH_HOLD,
                    _ => Duration::ZERO,
                };
                let _ = self.unlock(hold).await;
                return result;
            }
            if started.elapsed() >= deadline {
                return Err(CacheError::LockWait(deadline));
            }
            // Another replica holds the lock. Subscribe first, then read again (the publish
            // may have happened in between), then wait for the publish; the lock's TTL
            // bounds how long a dead holder can make us wait. Without pub/sub (cluster
            // mode, or it failed) re-read every 100 ms.
            match &mut pubsub {
                None => {
                    pubsub = self.subscribe().await;
                    if pubsub.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Some(ps) => {
                    let got =
                        tokio::time::timeout(Duration::from_millis(500), ps.on_message().next())
                            .await;
                    if let Ok(None) = got {
                        // The subscription's connection ended (failover): poll instead.
                        pubsub = None;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    async fn subscribe(&self) -> Option<redis::aio::PubSub> {
        let client = self.backend.pubsub_client()?;
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&self.keys.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(self.op_timeout, subscribed).await {
            Ok(Ok(ps)) => Some(ps),
            // Cannot subscribe: fall back to polling.
            _ => None,
        }
    }

    async fn renew_locked<F, Fut, E>(
        &self,
        have: Option<u64>,
        margin: Duration,
        mut seen_version: u64,
        replace: &[u8],
        reported: &mut Option<Vec<u8>>,
        fetch: F,
    ) -> Result<Result<Renewal, E>, CacheError>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = Result<CachedToken, E>>,
    {
        let mut replace = replace.to_vec();
        // Re-read under the lock: a renewal may have landed between our read and the lock.
        match self.read().await? {
            Read::Found(t)
                if have.is_none_or(|h| t.version > h)
                    && t.remaining() > margin.min(t.lifetime / 4) =>
            {
                self.metrics.cache_op("adopt", "ok");
                return Ok(Ok(Renewal::Adopted(t)));
            }
            Read::Found(t) => seen_version = seen_version.max(t.version),
            Read::Undecryptable(ct) => {
                self.report_undecryptable(&ct, reported);
                replace = ct;
            }
            Read::Missing => {}
        }
        let token = match fetch(seen_version + 1).await {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        match self.write(&token, margin, &replace).await {
            Ok(true) => self.publish(token.version).await,
            Ok(false) => tracing::debug!(
                event = "cache_write_skipped",
                "a newer token was already cached"
            ),
            // The token is good; only sharing failed. Use it and let the next renewal retry.
            Err(e) => {
                tracing::warn!(event = "cache_write_failed", error = %e, "could not share the new token")
            }
        }
        Ok(Ok(Renewal::Fetched(token)))
    }
}
