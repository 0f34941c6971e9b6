//! The webhook listener's flags (`--webhook-*`), flattened into [`super::RunArgs`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::duration;

/// The PSP-facing mTLS listener for webhooks.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// PSP-facing mTLS listener for webhooks (off unless given). It faces the PSP, so a
    /// public address (0.0.0.0:8443) is expected; it never forwards an unauthenticated caller.
    #[arg(long, env = "PIX_AUTH_PROXY_WEBHOOK_LISTEN", help_heading = "Webhooks")]
    pub webhook_listen: Option<SocketAddr>,

    /// PEM certificate chain the PSP sees on the webhook listener (leaf first).
    #[arg(long, env = "PIX_AUTH_PROXY_WEBHOOK_CERT", help_heading = "Webhooks")]
    pub webhook_cert: Option<PathBuf>,

    /// PEM private key of --webhook-cert.
    #[arg(long, env = "PIX_AUTH_PROXY_WEBHOOK_KEY", help_heading = "Webhooks")]
    pub webhook_key: Option<PathBuf>,

    /// Webhook server identity as PKCS#12, instead of --webhook-cert/--webhook-key.
    #[arg(long, env = "PIX_AUTH_PROXY_WEBHOOK_PKCS12", conflicts_with_all = ["webhook_cert", "webhook_key"], help_heading = "Webhooks")]
    pub webhook_pkcs12: Option<PathBuf>,

    /// File holding the password of --webhook-pkcs12 (none: empty password).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_WEBHOOK_PKCS12_PASSWORD_FILE",
        help_heading = "Webhooks"
    )]
    pub webhook_pkcs12_password_file: Option<PathBuf>,

    /// PEM CA bundle that issues the PSP's client certificate; repeat for several bundles
    /// (e.g. production and homologação chains), no concatenation needed.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_WEBHOOK_CLIENT_CA",
        value_delimiter = ',',
        help_heading = "Webhooks"
    )]
    pub webhook_client_ca: Vec<PathBuf>,

    /// Accept only callers whose certificate subject DN or CN equals this; repeatable.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_WEBHOOK_ALLOW_SUBJECT",
        help_heading = "Webhooks"
    )]
    pub webhook_allow_subject: Vec<String>,

    /// Accept only callers whose leaf public key (SHA-256 of the SubjectPublicKeyInfo, hex or
    /// Base64) is this; repeatable.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_WEBHOOK_ALLOW_SPKI",
        value_delimiter = ',',
        help_heading = "Webhooks"
    )]
    pub webhook_allow_spki: Vec<String>,

    /// The path the webhook URL was registered with; /pix, /rec and /cobr follow it.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_WEBHOOK_PATH",
        default_value = "/",
        help_heading = "Webhooks"
    )]
    pub webhook_path: String,

    /// The app's plain-HTTP endpoint that receives the notifications (loopback unless
    /// --allow-non-loopback).
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_WEBHOOK_FORWARD",
        help_heading = "Webhooks"
    )]
    pub webhook_forward: Option<String>,

    /// Time allowed for the app to answer a forwarded notification (then 503: the PSP retries).
    #[arg(long, env = "PIX_AUTH_PROXY_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = duration, help_heading = "Webhooks")]
    pub webhook_timeout: Duration,

    /// Largest notification body accepted, in bytes (larger: 413).
    #[arg(long, env = "PIX_AUTH_PROXY_WEBHOOK_MAX_BODY", default_value_t = 1024 * 1024, help_heading = "Webhooks")]
    pub webhook_max_body: usize,

    /// Confirm each notified Pix with the PSP (GET /pix/{endToEndId}) before the app trusts it:
    /// `on` marks X-Pix-Webhook-Verified, `require` also drops unconfirmed ones.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_WEBHOOK_VERIFY",
        value_enum,
        default_value = "off",
        help_heading = "Webhooks"
    )]
    pub webhook_verify: WebhookVerify,

    /// For PSPs that call without a client certificate (Efí's "skip mTLS"): a file holding the
    /// secret the registered URL carries as `?hmac=`; callers without it get 403.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_WEBHOOK_URL_SECRET_FILE",
        help_heading = "Webhooks"
    )]
    pub webhook_url_secret_file: Option<PathBuf>,

    /// Accept webhook callers only from this network (CIDR, e.g. 203.0.113.0/24); repeatable.
    #[arg(
        long,
        env = "PIX_AUTH_PROXY_WEBHOOK_ALLOW_IP",
        value_delimiter = ',',
        help_heading = "Webhooks"
    )]
    pub webhook_allow_ip: Vec<String>,
}

/// `--webhook-verify`: whether notified Pix are confirmed with the PSP before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WebhookVerify {
    /// Forward as received.
    #[default]
    Off,
    /// Look each Pix up and set `X-Pix-Webhook-Verified: true|false`.
    On,
    /// As `on`, and drop (200, WARN) a notification that is not confirmed.
    Require,
}
