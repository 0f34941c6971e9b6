//! The shared-cache flags (`--cache*`), flattened into [`super::RunArgs`].

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::{duration, secret};

/// Where the shared token cache is and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// Shared token cache for many replicas: redis:// or rediss:// URL (may hold the password;
    /// prefer the env variable from a Secret). Requires --cache-key-file. Repeat it (or
    /// separate by commas) for cluster seed nodes or sentinels.
    #[arg(long, env = "PIX_AUTH_PROXY_CACHE", hide_env_values = true, value_parser = secret, value_delimiter = ',', help_heading = "Shared cache")]
    pub cache: Vec<SecretString>,

    /// How the cache is deployed: one primary behind one name (a DNS failover is followed),
    /// a Redis Cluster (--cache: seed nodes), or Sentinel (--cache: the sentinels).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CACHE_MODE",
        value_enum,
        default_value = "standalone",
        help_heading = "Shared cache"
    )]
    pub cache_mode: CacheModeArg,

    /// ACL user of the cache's data nodes (its password: --cache-password-file).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CACHE_USERNAME",
        help_heading = "Shared cache"
    )]
    pub cache_username: Option<String>,

    /// Prefix of every key and channel, so that an ACL can confine the sidecar to ~prefix*.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CACHE_KEY_PREFIX",
        help_heading = "Shared cache"
    )]
    pub cache_key_prefix: Option<String>,

    /// Sentinel mode: the name of the master the sentinels monitor.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CACHE_SENTINEL_MASTER",
        help_heading = "Shared cache"
    )]
    pub cache_sentinel_master: Option<String>,

    /// Sentinel mode: the sentinels' ACL user, when it differs from the data nodes' (none).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CACHE_SENTINEL_USERNAME",
        help_heading = "Shared cache"
    )]
    pub cache_sentinel_username: Option<String>,

    /// Sentinel mode: file holding the sentinels' password (they often have none, or not the
    /// data nodes').
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CACHE_SENTINEL_PASSWORD_FILE",
        help_heading = "Shared cache"
    )]
    pub cache_sentinel_password_file: Option<PathBuf>,

    /// Sentinel mode: whether the data nodes the sentinels name speak TLS: `same` as the
    /// sentinels (the scheme of --cache), `on` or `off`; --cache-ca and --cache-client-cert
    /// serve both.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CACHE_DATA_TLS",
        value_enum,
        default_value = "same",
        help_heading = "Shared cache"
    )]
    pub cache_data_tls: DataTlsArg,

    /// 32-byte key (raw or Base64) encrypting cached tokens; the same on every replica.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CACHE_KEY_FILE",
        help_heading = "Shared cache"
    )]
    pub cache_key_file: Option<PathBuf>,

    /// File holding the Redis password (instead of putting it in the URL).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CACHE_PASSWORD_FILE",
        help_heading = "Shared cache"
    )]
    pub cache_password_file: Option<PathBuf>,

    /// PEM CA for a rediss:// cache (default: system roots).
    #[arg(long, env = "PIX_AUTH_PROXY_CACHE_CA", help_heading = "Shared cache")]
    pub cache_ca: Option<PathBuf>,

    /// PEM client certificate for a rediss:// cache that requires one.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CACHE_CLIENT_CERT",
        requires = "cache_client_key",
        help_heading = "Shared cache"
    )]
    pub cache_client_cert: Option<PathBuf>,

    /// PEM private key of --cache-client-cert.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CACHE_CLIENT_KEY",
        requires = "cache_client_cert",
        help_heading = "Shared cache"
    )]
    pub cache_client_key: Option<PathBuf>,

    /// Bound on every call to the shared cache; past it the sidecar fetches locally.
    #[arg(long, env = "PIX_AUTH_PROXY_CACHE_TIMEOUT", default_value = "500ms", value_parser = duration, help_heading = "Shared cache")]
    pub cache_timeout: Duration,
}

/// `--cache-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CacheModeArg {
    /// One primary (a DNS failover is followed).
    #[default]
    Standalone,
    /// Redis Cluster.
    Cluster,
    /// Redis Sentinel.
    Sentinel,
}

/// `--cache-data-tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DataTlsArg {
    /// As the sentinels: `rediss://` sentinels, TLS data nodes.
    #[default]
    Same,
    /// TLS to the data nodes, whatever the sentinels speak.
    On,
    /// Plain TCP to the data nodes, whatever the sentinels speak.
    Off,
}
