//! The optional shared token cache on Redis/Valkey, so that many replicas hold one token
//! and the PSP sees one fetch per lifetime instead of one per pod.
//!
//! Owns: the cache key (token URL, client id, scopes and the client certificate's SPKI), the
//! encrypted value (AES-256-GCM with a random nonce; key id, cache key, version and expiry
//! bound as associated data), and the renewal protocol: read and adopt a newer token; else
//! take a `SET NX PX` lock, re-read, fetch, write only if newer (Lua), publish, and release
//! the lock with a Lua compare-and-delete. Losers wait for the publish, then re-read.
//! Every Redis call has a short timeout; any Redis failure is a [`CacheError`] the refresher
//! answers with a local fetch, so the cache is never a reason for a request to fail.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::telemetry::hex;

/// Settings of the shared cache.
#[derive(Clone)]
pub struct CacheConfig {
    /// `redis://` or `rediss://` URL; may carry a password, so it is kept secret.
    pub url: SecretString,
    /// AES-256 key for the cached values.
    pub key: Arc<CacheKey>,
    /// PEM CA for `rediss://` (otherwise the system roots).
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key for `rediss://` with client authentication.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Password, when not in the URL.
    pub password: Option<SecretString>,
    /// Bound on every Redis call.
    pub op_timeout: Duration,
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("url", &redacted_url(self.url.expose_secret()))
            .field("key_id", &self.key.id)
            .field("ca", &self.ca)
            .field("client_identity", &self.client_identity)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

/// The URL with any password replaced, for logs.
pub fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            format!("{}://<credentials>@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The 32-byte encryption key and its public id.
pub struct CacheKey {
    key: LessSafeKey,
    /// First 8 bytes of a hash of the key, hex: tells keys apart without revealing them.
    pub id: String,
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl CacheKey {
    /// From 32 raw bytes, or their Base64 (standard or URL-safe, padded or not).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, String> {
        let raw: Vec<u8> = if bytes.len() == 32 {
            bytes.to_vec()
        } else {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| {
                    format!(
                        "must hold 32 raw bytes or their Base64 (found {} bytes)",
                        bytes.len()
                    )
                })?
                .trim();
            let engines = [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            engines
                .iter()
                .find_map(|e| e.decode(text).ok())
                .ok_or_else(|| "is neither 32 raw bytes nor Base64".to_owned())?
        };
        if raw.len() != 32 {
            return Err(format!("must decode to 32 bytes, not {}", raw.len()));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, &raw)
            .map_err(|_| "not a valid AES-256 key".to_owned())?;
        let mut id_input = b"pix-auth-proxy cache key id\0".to_vec();
        id_input.extend_from_slice(&raw);
        Ok(Self {
            key: LessSafeKey::new(unbound),
            id: hex(&crate::tls::sha256(&id_input)[..8]),
        })
    }

    /// Read the key file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_file_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

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

/// Plaintext inside the ciphertext.
#[derive(Serialize, Deserialize)]
struct Sealed {
    t: String,
    v: u64,
    exp: u64,
    life: u64,
}

/// What a read found.
enum Read {
    Missing,
    Found(CachedToken),
    /// A value that does not decrypt; its ciphertext, so the overwrite can target it.
    Undecryptable(Vec<u8>),
}

/// Write `ct` if its version is newer than the stored one (or the stored value is the
/// undecryptable one we saw); set the TTL. Returns 1 if written.
const WRITE_IF_NEWER: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
local curct = redis.call('HGET', KEYS[1], 'ct')
if cur and tonumber(cur) >= tonumber(ARGV[1]) and not (ARGV[5] ~= '' and curct == ARGV[5]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'exp', ARGV[2], 'ct', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"#;

/// Release the lock only if we still own it: delete it, or (ARGV[2] > 0 ms) let it expire
/// that much later, which keeps the other replicas off a failing token endpoint meanwhile.
const RELEASE_LOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if tonumber(ARGV[2]) > 0 then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// After a failed fetch the lock is kept this long, so that during a token-endpoint outage
/// the replicas together try about once per hold instead of each on its own cadence; after
/// the endpoint's return one of them fetches and the others adopt.
pub const FAILED_FETCH_HOLD: Duration = Duration::from_secs(1);

/// The shared cache client.
pub struct SharedCache {
    client: redis::Client,
    conn: ConnectionManager,
    key: Arc<CacheKey>,
    cache_key: String,
    lock_key: String,
    channel: String,
    owner: String,
    op_timeout: Duration,
    lock_ttl: Duration,
    metrics: Arc<Metrics>,
    write_script: redis::Script,
    release_script: redis::Script,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("cache_key", &self.cache_key)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The Redis key for a token: a new certificate (SPKI) or other scopes is a new key.
pub fn cache_key(
    token_url: &str,
    client_id: &str,
    scope: Option<&str>,
    spki_sha256: &str,
) -> String {
    let mut scopes: Vec<&str> = scope.unwrap_or("").split_whitespace().collect();
    scopes.sort_unstable();
    scopes.dedup();
    let material = format!(
        "{token_url}\0{client_id}\0{}\0{spki_sha256}",
        scopes.join(" ")
    );
    format!(
        "pix-auth-proxy:v1:{}",
        hex(&crate::tls::sha256(material.as_bytes()))
    )
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SharedCache {
    /// Build the client (no connection yet: it is made lazily and re-made after failures).
    /// `lock_ttl` must exceed the token request timeout.
    pub fn new(
        config: &CacheConfig,
        cache_key: String,
        lock_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, CacheError> {
        let url = config.url.expose_secret();
        let mut info: redis::ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| CacheError::Setup(format!("--cache {}: {e}", redacted_url(url))))?;
        if let Some(pw) = &config.password {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(pw.expose_secret());
            info = info.set_redis_settings(settings);
        }
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        let client = if tls {
            let read = |p: &Path, flag: &str| {
                std::fs::read(p)
                    .map_err(|e| CacheError::Setup(format!("{flag} {}: {e}", p.display())))
            };
            let root_cert = config
                .ca
                .as_deref()
                .map(|p| read(p, "--cache-ca"))
                .transpose()?;
            let client_tls = match &config.client_identity {
                Some((cert, key)) => Some(redis::ClientTlsConfig {
                    client_cert: read(cert, "--cache-cert")?,
                    client_key: read(key, "--cache-key")?,
                }),
                None => None,
            };
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )?
        } else {
            if config.ca.is_some() || config.client_identity.is_some() {
                return Err(CacheError::Setup(
                    "--cache-ca / --cache-cert need a rediss:// URL".into(),
                ));
            }
            redis::Client::open(info)?
        };
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.op_timeout))
            .set_response_timeout(Some(config.op_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        let mut owner = [0u8; 12];
        aws_lc_rs::rand::fill(&mut owner)
            .map_err(|_| CacheError::Setup("system RNG failed".into()))?;
        Ok(Self {
            client,
            conn,
            key: config.key.clone(),
            lock_key: format!("{cache_key}:lock"),
            channel: format!("{cache_key}:renewed"),
            cache_key,
            owner: hex(&owner),
            op_timeout: config.op_timeout,
            lock_ttl,
            metrics,
            write_script: redis::Script::new(WRITE_IF_NEWER),
            release_script: redis::Script::new(RELEASE_LOCK),
        })
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        let result = match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CacheError::Redis(e)),
            Err(_) => Err(CacheError::Timeout(self.op_timeout)),
        };
        self.metrics
            .cache_op(op, if result.is_ok() { "ok" } else { "error" });
        result
    }

    fn aad(&self, version: u64, exp_ms: u64) -> Vec<u8> {
        format!("{}\0{}\0{version}\0{exp_ms}", self.key.id, self.cache_key).into_bytes()
    }

    fn seal(&self, token: &CachedToken) -> Vec<u8> {
        let exp = unix_ms(token.expires_at);
        let plain = serde_json::to_vec(&Sealed {
            t: token.access_token.expose_secret().to_owned(),
            v: token.version,
            exp,
            life: token.lifetime.as_millis() as u64,
        })
        .expect("plain struct serializes");
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system RNG");
        let mut in_out = zeroize::Zeroizing::new(plain);
        let mut sealed = self.key.id.as_bytes().to_vec();
        sealed.extend_from_slice(&nonce);
        self.key
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(token.version, exp)),
                &mut *in_out,
            )
            .expect("AES-GCM sealing cannot fail for small inputs");
        sealed.extend_from_slice(&in_out);
        sealed
    }

    fn open(&self, version: u64, exp_ms: u64, sealed: &[u8]) -> Option<CachedToken> {
        let id = self.key.id.as_bytes();
        let rest = sealed.strip_prefix(id)?;
        if rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = zeroize::Zeroizing::new(ct.to_vec());
        let plain = self
            .key
            .key
            .open_in_place(nonce, Aad::from(self.aad(version, exp_ms)), &mut buf)
            .ok()?;
        let s: Sealed = serde_json::from_slice(plain).ok()?;
        if s.v != version
            || s.exp != exp_ms
            || s.t.is_empty()
            || !s.t.bytes().all(|b| b.is_ascii_graphic())
        {
            return None;
        }
        Some(CachedToken {
            access_token: SecretString::from(s.t),
            version: s.v,
            expires_at: UNIX_EPOCH + Duration::from_millis(s.exp),
            lifetime: Duration::from_millis(s.life),
        })
    }

    async fn read(&self) -> Result<Read, CacheError> {
        let mut conn = self.conn.clone();
        let fields: (Option<u64>, Option<u64>, Option<Vec<u8>>) = self
            .timed("read", async {
                redis::cmd("HMGET")
                    .arg(&self.cache_key)
                    .arg("v")
                    .arg("exp")
                    .arg("ct")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        match fields {
            (None, None, None) => Ok(Read::Missing),
            (Some(v), Some(exp), Some(ct)) => match self.open(v, exp, &ct) {
                Some(t) => Ok(Read::Found(t)),
                None => Ok(Read::Undecryptable(ct)),
            },
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
            key = %self.cache_key,
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
        let sealed = self.seal(token);
        let mut conn = self.conn.clone();
        let mut inv = self.write_script.key(&self.cache_key);
        inv.arg(token.version)
            .arg(unix_ms(token.expires_at))
            .arg(sealed)
            .arg(ttl.as_millis() as u64)
            .arg(replace);
        let written: i64 = self
            .timed("write", async { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(written == 1)
    }

    async fn try_lock(&self) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = self
            .timed("lock", async {
                redis::cmd("SET")
                    .arg(&self.lock_key)
                    .arg(&self.owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.lock_ttl.as_millis() as u64)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let won = set.is_some();
        self.metrics
            .cache_lock(if won { "acquired" } else { "busy" });
        Ok(won)
    }

    /// Release the lock now, or `hold` from now (see [`FAILED_FETCH_HOLD`]).
    async fn unlock(&self, hold: Duration) {
        let mut conn = self.conn.clone();
        let mut inv = self.release_script.key(&self.lock_key);
        inv.arg(&self.owner).arg(hold.as_millis() as u64);
        if let Err(e) = self
            .timed::<i64>("unlock", async { inv.invoke_async(&mut conn).await })
            .await
        {
            // The lock expires by itself; another replica takes over after its TTL.
            tracing::debug!(event = "cache_unlock_failed", error = %e);
        }
    }

    async fn publish(&self, version: u64) {
        let mut conn = self.conn.clone();
        let r: Result<i64, _> = self
            .timed("publish", async {
                conn.publish(&self.channel, version).await
            })
            .await;
        if let Err(e) = r {
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
        loop {
            let mut replace = Vec::new();
            let mut seen_version = have.unwrap_or(0);
            match self.read().await? {
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
            if self.try_lock().await? {
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
                self.unlock(hold).await;
                return result;
            }
            if started.elapsed() >= deadline {
                return Err(CacheError::LockWait(deadline));
            }
            // Another replica holds the lock. Subscribe first, then read again (the publish
            // may have happened in between), then wait for the publish; the lock's TTL
            // bounds how long a dead holder can make us wait.
            match &mut pubsub {
                None => {
                    pubsub = self.subscribe().await;
                    if pubsub.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Some(ps) => {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(500), ps.on_message().next())
                            .await;
                }
            }
        }
    }

    async fn subscribe(&self) -> Option<redis::aio::PubSub> {
        let subscribed = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_accepts_raw_and_base64_and_rejects_the_rest() {
        let raw = [7u8; 32];
        let a = CacheKey::from_file_bytes(&raw).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let b = CacheKey::from_file_bytes(format!("{b64}\n").as_bytes()).unwrap();
        assert_eq!(a.id, b.id);
        assert!(CacheKey::from_file_bytes(b"short").is_err());
        assert!(
            CacheKey::from_file_bytes(
                base64::engine::general_purpose::STANDARD
                    .encode([1u8; 16])
                    .as_bytes()
            )
            .is_err()
        );
        assert!(!format!("{a:?}").contains("07070707"));
    }

    #[test]
    fn cache_key_depends_on_certificate_and_sorted_scopes() {
        let k1 = cache_key("https://psp/oauth", "id", Some("b a"), "spki1");
        assert_eq!(
            k1,
            cache_key("https://psp/oauth", "id", Some("a  b"), "spki1")
        );
        assert_ne!(
            k1,
            cache_key("https://psp/oauth", "id", Some("a b"), "spki2")
        );
        assert_ne!(
            k1,
            cache_key("https://psp/oauth", "id2", Some("a b"), "spki1")
        );
        assert!(k1.starts_with("pix-auth-proxy:v1:"));
    }

    #[test]
    fn redacted_url_hides_credentials() {
        assert_eq!(
            redacted_url("rediss://:hunter2@redis:6380/0"),
            "rediss://<credentials>@redis:6380/0"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    fn cache() -> SharedCache {
        let config = CacheConfig {
            url: SecretString::from("redis://127.0.0.1:1"),
            key: Arc::new(CacheKey::from_file_bytes(&[9u8; 32]).unwrap()),
            ca: None,
            client_identity: None,
            password: None,
            op_timeout: Duration::from_millis(100),
        };
        SharedCache::new(
            &config,
            cache_key("u", "c", None, "s"),
            Duration::from_secs(2),
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn sealed_values_round_trip_and_any_change_fails_to_open() {
        let c = cache();
        let t = CachedToken {
            access_token: SecretString::from("tok-123".to_owned()),
            version: 4,
            expires_at: UNIX_EPOCH + Duration::from_millis(unix_ms(SystemTime::now()) + 60_000),
            lifetime: Duration::from_secs(60),
        };
        let exp = unix_ms(t.expires_at);
        let sealed = c.seal(&t);
        assert!(
            !sealed.windows(7).any(|w| w == b"tok-123"),
            "plaintext token in the value"
        );
        let back = c.open(4, exp, &sealed).unwrap();
        assert_eq!(back.access_token.expose_secret(), "tok-123");
        assert!(c.open(5, exp, &sealed).is_none(), "version is bound");
        assert!(c.open(4, exp + 1, &sealed).is_none(), "expiry is bound");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(c.open(4, exp, &flipped).is_none(), "tag is checked");
        assert_ne!(c.seal(&t), sealed, "nonces are random");
    }
}
