//! The shared cache's settings as `config` validated them: the mode, the nodes, TLS and
//! credentials, the key prefix.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{CacheKey, redacted_url};

/// How the cache is deployed (`--cache-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// One primary behind one name (a DNS failover is followed).
    #[default]
    Standalone,
    /// Redis Cluster: `--cache` names seed nodes.
    Cluster,
    /// Redis Sentinel: `--cache` names sentinels, which name the primary.
    Sentinel,
}

impl CacheMode {
    /// The flag value, also the metric and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Standalone => "standalone",
            CacheMode::Cluster => "cluster",
            CacheMode::Sentinel => "sentinel",
        }
    }
}

/// Settings of the shared cache.
#[derive(Clone)]
pub struct CacheConfig {
    /// How the cache is deployed.
    pub mode: CacheMode,
    /// `redis://` or `rediss://` URLs (one in standalone mode; seeds or sentinels otherwise);
    /// they may carry a password, so they are kept secret.
    pub urls: Vec<SecretString>,
    /// AES-256 key for the cached values.
    pub key: Arc<CacheKey>,
    /// PEM CA for `rediss://` (otherwise the system roots).
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key for `rediss://` with client authentication.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// ACL user of the data nodes.
    pub username: Option<String>,
    /// Password of the data nodes, when not in the URL.
    pub password: Option<SecretString>,
    /// Prepended to every key and channel (an ACL can then allow `~prefix*` only).
    pub key_prefix: String,
    /// Sentinel mode: the monitored master's name.
    pub sentinel_master: Option<String>,
    /// Sentinel mode: the sentinels' ACL user, when they have one.
    pub sentinel_username: Option<String>,
    /// Sentinel mode: the sentinels' password, when they have one.
    pub sentinel_password: Option<SecretString>,
    /// Sentinel mode: whether the data nodes speak TLS (`None`: as the sentinels).
    pub data_tls: Option<bool>,
    /// Bound on every Redis call, and on connecting.
    pub op_timeout: Duration,
}

impl CacheConfig {
    /// The URLs without credentials, comma-separated, for logs.
    pub fn shown(&self) -> String {
        self.urls
            .iter()
            .map(|u| redacted_url(u.expose_secret()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("mode", &self.mode)
            .field("urls", &self.shown())
            .field("key_id", &self.key.id)
            .field("ca", &self.ca)
            .field("client_identity", &self.client_identity)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("key_prefix", &self.key_prefix)
            .field("sentinel_master", &self.sentinel_master)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}
