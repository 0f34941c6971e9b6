//! Checks on the `--webhook-*` flags: the PSP-facing listener, its server identity, the CAs
//! and allow-lists that say who the PSP is, and where notifications are forwarded.
//!
//! Produces [`WebhookConfig`] (plain data); the `webhook` module builds the listener from it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use http::Uri;
use rustls_pki_types::CertificateDer;
use secrecy::SecretString;

use super::files::{positive, read_secret, readable_file};
use super::identity::{IdentityFlags, identity_source};
use super::{ConfigError, IdentitySource, err};
use crate::cli::{RunArgs, WebhookVerify};

/// Largest `--webhook-max-body` accepted: a Pix notification is a few KiB.
const MAX_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// The inbound (webhook) side, checked.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where the PSP connects.
    pub listen: SocketAddr,
    /// The server identity the PSP sees.
    pub identity: IdentitySource,
    /// PEM bundles of the CAs that issue the PSP's client certificate.
    pub client_ca: Vec<PathBuf>,
    /// CA certificates given in memory (the `demo`).
    pub extra_client_ca: Vec<CertificateDer<'static>>,
    /// Accepted subject DNs or CNs (empty: any verified certificate).
    pub allow_subject: Vec<String>,
    /// Accepted SHA-256 digests of the leaf's SubjectPublicKeyInfo (empty: any key).
    pub allow_spki: Vec<[u8; 32]>,
    /// The registered base path, without a trailing slash (`""` for `/`).
    pub path: String,
    /// The app's plain-HTTP endpoint.
    pub forward: Uri,
    /// Bound on the app's answer.
    pub timeout: Duration,
    /// Largest accepted body, in bytes.
    pub max_body: usize,
    /// Whether notified Pix are confirmed with the PSP.
    pub verify: WebhookVerify,
    /// The `hmac` query parameter every caller must send (Efí's "skip mTLS" variant).
    pub url_secret: Option<SecretString>,
    /// Networks callers may connect from (empty: any).
    pub allow_ip: Vec<Cidr>,
}

impl WebhookConfig {
    /// Every file whose change means a new webhook server identity or CA set.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = self.identity.files();
        files.extend(self.client_ca.iter().cloned());
        files
    }

    /// Whether callers without a verified client certificate can be forwarded.
    pub fn accepts_unverified(&self) -> bool {
        self.url_secret.is_some()
    }

    /// A listener with every default of the CLI (the `demo`): address, identity, CAs and
    /// the app's endpoint are given.
    pub fn with_defaults(
        listen: SocketAddr,
        identity: IdentitySource,
        extra_client_ca: Vec<CertificateDer<'static>>,
        forward: Uri,
    ) -> Self {
        WebhookConfig {
            listen,
            identity,
            client_ca: Vec::new(),
            extra_client_ca,
            allow_subject: Vec::new(),
            allow_spki: Vec::new(),
            path: String::new(),
            forward,
            timeout: Duration::from_secs(10),
            max_body: 1024 * 1024,
            verify: WebhookVerify::Off,
            url_secret: None,
            allow_ip: Vec::new(),
        }
    }
}

/// An IP network (`203.0.113.0/24`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `ADDR/LEN` or a bare address (a single host).
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n) as u128, u32::from(i) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        if shift >= 128 {
            return true;
        }
        (net >> shift) == (ip >> shift)
    }
}

/// A pin given as 64 hex digits or 32 bytes of Base64 (standard or URL-safe, padded or not).
fn parse_spki(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        let b64 = base64::engine::general_purpose::STANDARD;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        b64.decode(s)
            .or_else(|_| url.decode(s.trim_end_matches('=')))
            .ok()?
    };
    bytes.try_into().ok()
}

fn is_loopback_host(uri: &Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Check the webhook flags; `None` when `--webhook-listen` is not given.
pub(super) fn webhook_config(
    args: &RunArgs,
    warnings: &mut Vec<String>,
) -> Result<Option<WebhookConfig>, ConfigError> {
    let flags = IdentityFlags {
        cert: ("--webhook-cert", args.webhook.webhook_cert.as_ref()),
        key: ("--webhook-key", args.webhook.webhook_key.as_ref()),
        pkcs12: ("--webhook-pkcs12", args.webhook.webhook_pkcs12.as_ref()),
        password_file: (
            "--webhook-pkcs12-password-file",
            args.webhook.webhook_pkcs12_password_file.as_ref(),
        ),
        password_env: None,
        what: "PEM server certificate the PSP sees",
    };
    let Some(listen) = args.webhook.webhook_listen else {
        let given = [
            ("--webhook-cert", flags.any()),
            (
                "--webhook-client-ca",
                !args.webhook.webhook_client_ca.is_empty(),
            ),
            (
                "--webhook-allow-subject",
                !args.webhook.webhook_allow_subject.is_empty(),
            ),
            (
                "--webhook-allow-spki",
                !args.webhook.webhook_allow_spki.is_empty(),
            ),
            ("--webhook-forward", args.webhook.webhook_forward.is_some()),
            (
                "--webhook-verify",
                args.webhook.webhook_verify != WebhookVerify::Off,
            ),
            (
                "--webhook-url-secret-file",
                args.webhook.webhook_url_secret_file.is_some(),
            ),
            (
                "--webhook-allow-ip",
                !args.webhook.webhook_allow_ip.is_empty(),
            ),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            return Err(err(flag, "only makes sense with --webhook-listen"));
        }
        return Ok(None);
    };
    if !flags.any() {
        return Err(err(
            "--webhook-cert",
            "is required with --webhook-listen (the server certificate the PSP sees), or give it as --webhook-pkcs12",
        ));
    }
    let identity = identity_source(flags, warnings)?;
    for ca in &args.webhook.webhook_client_ca {
        readable_file("--webhook-client-ca", ca)?;
    }
    let url_secret = match &args.webhook.webhook_url_secret_file {
        Some(f) => Some(read_secret("--webhook-url-secret-file", f, warnings)?),
        None => None,
    };
    if args.webhook.webhook_client_ca.is_empty() && url_secret.is_none() {
        return Err(err(
            "--webhook-client-ca",
            "is required with --webhook-listen: the CA bundle that issues the PSP's client certificate (or opt into --webhook-url-secret-file for PSPs that call without one)",
        ));
    }
    let allow_spki = args
        .webhook
        .webhook_allow_spki
        .iter()
        .map(|s| {
            parse_spki(s).ok_or_else(|| {
                err(
                    "--webhook-allow-spki",
                    format!("{s:?} is not a SHA-256 digest (64 hex digits or 32 bytes of Base64)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let allow_ip = args
        .webhook
        .webhook_allow_ip
        .iter()
        .map(|s| {
            Cidr::parse(s).ok_or_else(|| {
                err(
                    "--webhook-allow-ip",
                    format!("{s:?} is not an address or CIDR network (e.g. 203.0.113.0/24)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let path = &args.webhook.webhook_path;
    if !path.starts_with('/') || path.contains('?') || path.contains('#') {
        return Err(err(
            "--webhook-path",
            format!("{path:?} must be a path starting with / (no query)"),
        ));
    }
    let forward = forward_url(args)?;
    positive("--webhook-timeout", args.webhook.webhook_timeout)?;
    if !(1..=MAX_BODY_LIMIT).contains(&args.webhook.webhook_max_body) {
        return Err(err(
            "--webhook-max-body",
            format!(
                "{} is outside 1..={MAX_BODY_LIMIT}",
                args.webhook.webhook_max_body
            ),
        ));
    }
    // With a URL secret, the sidecar itself warns at start that callers without a verified
    // certificate are accepted (the demo and tests build configs without these warnings).
    if url_secret.is_none()
        && args.webhook.webhook_allow_subject.is_empty()
        && allow_spki.is_empty()
    {
        warnings.push(
            "--webhook-client-ca: without --webhook-allow-subject or --webhook-allow-spki, anyone holding a certificate from these CAs is accepted as the PSP".into(),
        );
    }
    Ok(Some(WebhookConfig {
        listen,
        identity,
        client_ca: args.webhook.webhook_client_ca.clone(),
        extra_client_ca: Vec::new(),
        allow_subject: args.webhook.webhook_allow_subject.clone(),
        allow_spki,
        path: path.trim_end_matches('/').to_owned(),
        forward,
        timeout: args.webhook.webhook_timeout,
        max_body: args.webhook.webhook_max_body,
        verify: args.webhook.webhook_verify,
        url_secret,
        allow_ip,
    }))
}

fn forward_url(args: &RunArgs) -> Result<Uri, ConfigError> {
    const FLAG: &str = "--webhook-forward";
    let value = args.webhook.webhook_forward.as_deref().ok_or_else(|| {
        err(
            FLAG,
            "is required with --webhook-listen (the app's plain-HTTP endpoint, e.g. http://127.0.0.1:3000/pix-webhook)",
        )
    })?;
    let uri: Uri = value
        .parse()
        .map_err(|e| err(FLAG, format!("{value:?} is not a valid URL: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none_or(str::is_empty) {
        return Err(err(
            FLAG,
            format!("{value:?} must be an absolute http:// URL (the app beside the sidecar)"),
        ));
    }
    if !is_loopback_host(&uri) && !args.allow_non_loopback {
        return Err(err(
            FLAG,
            format!(
                "{value:?} is not a loopback address; notifications would cross the network in clear. Pass --allow-non-loopback if this is intended"
            ),
        ));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let net = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(net.contains("203.0.113.9".parse().unwrap()));
        assert!(net.contains("::ffff:203.0.113.9".parse().unwrap()));
        assert!(!net.contains("203.0.114.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
    }

    #[test]
    fn spki_pins_in_hex_or_base64() {
        let raw = [7u8; 32];
        let hex = crate::telemetry::hex(&raw);
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(parse_spki(&hex), Some(raw));
        assert_eq!(parse_spki(&b64), Some(raw));
        assert_eq!(parse_spki("abcd"), None);
    }
}
