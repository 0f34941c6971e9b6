//! Command-line flags (clap derive). Every flag also reads `PIX_AUTH_PROXY_<FLAG>`.
//!
//! Owns: the raw, unvalidated settings. [`crate::config::Config`] turns them into a checked
//! configuration; nothing here opens a file or a socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::provider::Environment;
use crate::telemetry::LogFormat;
use crate::token::endpoint::{ClientAuth, TokenEncoding};

mod cache;
mod webhook;
pub use cache::{CacheArgs, CacheModeArg, DataTlsArg};
pub use webhook::{WebhookArgs, WebhookVerify};

/// Environment variable holding the client secret when `--client-secret-file` is not used.
/// There is deliberately no plain `--client-secret` flag: it would show in `ps`.
pub const CLIENT_SECRET_ENV: &str = "PIX_AUTH_PROXY_CLIENT_SECRET";

/// Environment variable holding the PKCS#12 password when `--pkcs12-password-file` is not used.
pub const PKCS12_PASSWORD_ENV: &str = "PIX_AUTH_PROXY_PKCS12_PASSWORD";

/// pix-auth-proxy: call a Pix PSP API over plain HTTP; this sidecar adds the mTLS client
/// certificate and the OAuth2 access token.
#[derive(Debug, Parser)]
#[command(
    name = "pix-auth-proxy",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `run`, accepted without the subcommand name.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (the default).
    Run(Box<RunArgs>),
    /// List the PSP presets and their settings (Markdown).
    Providers,
    /// Check the configuration against the PSP once (identity, TLS handshake, one token
    /// request) and print a report; exit 0 only if everything passed.
    Check(Box<RunArgs>),
    /// A complete local sandbox: throwaway certificates, a mock PSP and the sidecar, in one process.
    Demo(DemoArgs),
}

/// Flags of the `demo` subcommand.
#[derive(Debug, Clone, Parser)]
pub struct DemoArgs {
    /// Where the demo sidecar listens for your app.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_LISTEN",
        default_value = "127.0.0.1:8080",
        help_heading = "Listeners"
    )]
    pub listen: SocketAddr,

    /// Health and metrics listener of the demo sidecar.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090",
        help_heading = "Listeners"
    )]
    pub admin_listen: SocketAddr,

    /// Lifetime of the mock PSP's tokens (short, to watch renewals).
    #[arg(long, env = "PIX_AUTH_PROXY_DEMO_TOKEN_TTL", default_value = "30s", value_parser = duration, help_heading = "PSP and token")]
    pub demo_token_ttl: Duration,

    /// Write the demo's CA, certificates, key and client secret to this directory.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_WRITE_CERTS",
        help_heading = "Client identity"
    )]
    pub write_certs: Option<PathBuf>,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

fn secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_owned()))
}

pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 15s, 2m)"))
}

/// Flags of the `run` subcommand.
#[derive(Debug, Clone, Parser)]
pub struct RunArgs {
    /// App-facing plaintext listener. A non-loopback address needs --allow-non-loopback.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_LISTEN",
        default_value = "127.0.0.1:8080",
        help_heading = "Listeners"
    )]
    pub listen: SocketAddr,

    /// Health and metrics listener (/livez, /readyz, /metrics); in Kubernetes use 0.0.0.0:9090
    /// so the kubelet can probe it. It serves no secrets.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090",
        help_heading = "Listeners"
    )]
    pub admin_listen: SocketAddr,

    /// Allow --listen on a non-loopback address (anyone who reaches it can use your token).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_ALLOW_NON_LOOPBACK",
        help_heading = "Listeners"
    )]
    pub allow_non_loopback: bool,

    /// PSP preset for URLs and token-request style (`custom` needs --upstream and --token-url).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_PROVIDER",
        default_value = "pagstar",
        help_heading = "PSP and token"
    )]
    pub provider: String,

    /// Which of the provider's environments: production or sandbox (homologação).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_ENVIRONMENT",
        value_enum,
        default_value = "production",
        help_heading = "PSP and token"
    )]
    pub environment: Environment,

    /// File holding the developer application key some PSPs want on every API call
    /// (Banco do Brasil: gw-dev-app-key).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_DEVELOPER_KEY_FILE",
        help_heading = "PSP and token"
    )]
    pub developer_key_file: Option<PathBuf>,

    /// API base URL (https; may carry a path prefix). Default: the provider's.
    #[arg(long, env = "PIX_AUTH_PROXY_UPSTREAM", help_heading = "PSP and token")]
    pub upstream: Option<String>,

    /// OAuth2 token endpoint (https). Default: the provider's.
    #[arg(long, env = "PIX_AUTH_PROXY_TOKEN_URL", help_heading = "PSP and token")]
    pub token_url: Option<String>,

    /// OAuth2 client id.
    #[arg(long, env = "PIX_AUTH_PROXY_CLIENT_ID", help_heading = "PSP and token")]
    pub client_id: Option<String>,

    /// File holding the client secret (or set PIX_AUTH_PROXY_CLIENT_SECRET).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CLIENT_SECRET_FILE",
        help_heading = "PSP and token"
    )]
    pub client_secret_file: Option<PathBuf>,

    /// Client authentication at the token endpoint. Default: the provider's (post).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_CLIENT_AUTH",
        value_enum,
        help_heading = "PSP and token"
    )]
    pub client_auth: Option<ClientAuth>,

    /// Token request body encoding. Default: the provider's (form).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_TOKEN_ENCODING",
        value_enum,
        help_heading = "PSP and token"
    )]
    pub token_encoding: Option<TokenEncoding>,

    /// Scopes to request, space-separated.
    #[arg(long, env = "PIX_AUTH_PROXY_SCOPE", help_heading = "PSP and token")]
    pub scope: Option<String>,

    /// Client identity as PKCS#12 (.p12/.pfx), instead of --cert/--key; legacy RC2/3DES files work.
    #[arg(long, env = "PIX_AUTH_PROXY_PKCS12", conflicts_with_all = ["cert", "key"], help_heading = "Client identity")]
    pub pkcs12: Option<PathBuf>,

    /// File holding the PKCS#12 password (or set PIX_AUTH_PROXY_PKCS12_PASSWORD; none: empty).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_PKCS12_PASSWORD_FILE",
        help_heading = "Client identity"
    )]
    pub pkcs12_password_file: Option<PathBuf>,

    /// PEM client certificate chain, leaf first.
    #[arg(long, env = "PIX_AUTH_PROXY_CERT", help_heading = "Client identity")]
    pub cert: Option<PathBuf>,

    /// PEM private key of the client certificate (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "PIX_AUTH_PROXY_KEY", help_heading = "Client identity")]
    pub key: Option<PathBuf>,

    /// Extra PEM trust anchors for the PSP's server certificates (added to the system roots).
    #[arg(long, env = "PIX_AUTH_PROXY_CA", help_heading = "PSP and token")]
    pub ca: Option<PathBuf>,

    /// Never negotiate HTTP/2 with the PSP.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_UPSTREAM_HTTP1_ONLY",
        help_heading = "PSP and token"
    )]
    pub upstream_http1_only: bool,

    /// The shared token cache (`--cache*`).
    #[command(flatten)]
    pub shared_cache: CacheArgs,

    /// How often the certificate, key, CA and secret files are checked for changes (a change,
    /// or SIGHUP, loads them as a new identity without dropping a request).
    #[arg(long, env = "PIX_AUTH_PROXY_RELOAD_INTERVAL", default_value = "2s", value_parser = duration, help_heading = "Client identity")]
    pub reload_interval: Duration,

    /// Start renewing at this fraction of the token lifetime (±10% jitter).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_REFRESH_RATIO",
        default_value_t = 0.66,
        help_heading = "PSP and token"
    )]
    pub refresh_ratio: f64,

    /// Never inject a token with less than this left.
    #[arg(long, env = "PIX_AUTH_PROXY_EXPIRY_MARGIN", default_value = "15s", value_parser = duration, help_heading = "PSP and token")]
    pub expiry_margin: Duration,

    /// TCP connect timeout towards the PSP.
    #[arg(long, env = "PIX_AUTH_PROXY_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration, help_heading = "Timeouts and limits")]
    pub connect_timeout: Duration,

    /// HTTP/1.1 connections to the PSP at once (an HTTP/1.1 exchange holds one from its
    /// request to the end of its response). Further requests wait for one to come free,
    /// within --request-timeout; waits are counted in upstream_connection_waits_total.
    /// HTTP/2 multiplexes every request on one connection and is not limited by this.
    #[arg(long, env = "PIX_AUTH_PROXY_UPSTREAM_MAX_CONNECTIONS", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..), help_heading = "Timeouts and limits")]
    pub upstream_max_connections: u16,

    /// Time allowed for the PSP's response headers to an API request.
    #[arg(long, env = "PIX_AUTH_PROXY_REQUEST_TIMEOUT", default_value = "60s", value_parser = duration, help_heading = "Timeouts and limits")]
    pub request_timeout: Duration,

    /// Time allowed for a whole token request.
    #[arg(long, env = "PIX_AUTH_PROXY_TOKEN_TIMEOUT", default_value = "10s", value_parser = duration, help_heading = "Timeouts and limits")]
    pub token_timeout: Duration,

    /// How long an app request waits for a usable token (cold start, outage) before its 503;
    /// shorter than a typical client timeout. A failed renewal attempt ends the wait at once.
    #[arg(long, env = "PIX_AUTH_PROXY_TOKEN_WAIT", default_value = "3s", value_parser = duration, help_heading = "Timeouts and limits")]
    pub token_wait: Duration,

    /// On SIGTERM/SIGINT, keep serving this long with /readyz at 503 before draining.
    #[arg(long, env = "PIX_AUTH_PROXY_SHUTDOWN_DELAY", default_value = "5s", value_parser = duration, help_heading = "Listeners")]
    pub shutdown_delay: Duration,

    /// Then, how long in-flight requests may take to finish.
    #[arg(long, env = "PIX_AUTH_PROXY_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = duration, help_heading = "Listeners")]
    pub shutdown_timeout: Duration,

    /// Runtime worker threads; 0 = the CPUs this process may use (cgroup limits included).
    /// With 1, a single-threaded runtime without work-stealing overhead is used.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_WORKER_THREADS",
        default_value_t = 0,
        help_heading = "Listeners"
    )]
    pub worker_threads: usize,

    /// CPU time slice asked of Linux's fair scheduler (6.12+) for the proxy's threads:
    /// a short one gets the core back sooner when another process shares it, without taking
    /// more CPU time. 100us to 100ms; 0 keeps the kernel's default.
    #[arg(long, env = "PIX_AUTH_PROXY_SCHED_SLICE", default_value = "100us", value_parser = duration, help_heading = "Listeners")]
    pub sched_slice: Duration,

    /// Connections from the app served at once (further ones wait).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_MAX_CONNECTIONS",
        default_value_t = 1024,
        help_heading = "Timeouts and limits"
    )]
    pub max_connections: usize,

    /// Time a new app connection may take to send a complete request head (HTTP/1.1), or
    /// the HTTP/2 preface, SETTINGS and a first request (h2c); slow or silent clients are
    /// cut off.
    #[arg(long, env = "PIX_AUTH_PROXY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration, help_heading = "Timeouts and limits")]
    pub header_read_timeout: Duration,

    /// An app connection with no request in flight and no bytes moving for this long is
    /// closed (h2c: GOAWAY first); this also bounds a client that stops reading a response.
    #[arg(long, env = "PIX_AUTH_PROXY_IDLE_TIMEOUT", default_value = "60s", value_parser = duration, help_heading = "Timeouts and limits")]
    pub idle_timeout: Duration,

    /// Largest request head accepted from the app, in bytes.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_MAX_HEADER_BYTES",
        default_value_t = 65536,
        help_heading = "Timeouts and limits"
    )]
    pub max_header_bytes: usize,

    /// The webhook listener (`--webhook-*`).
    #[command(flatten)]
    pub webhook: WebhookArgs,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Logging flags, shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_LOG_FORMAT",
        value_enum,
        default_value = "text",
        help_heading = "Logging"
    )]
    pub log_format: LogFormat,

    /// Log filter (e.g. info, debug, pix_auth_proxy=debug). Default: RUST_LOG, else info.
    #[arg(long, env = "PIX_AUTH_PROXY_LOG_LEVEL", help_heading = "Logging")]
    pub log_level: Option<String>,
}
