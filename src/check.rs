//! `pix-auth-proxy check`: validate the configuration against the real PSP once and say, in
//! words, what is wrong.
//!
//! Owns: the checks (identity, trust anchors, one TLS handshake with the API host, one token
//! request, one round trip to the shared cache) and the translation of low-level failures
//! into causes a person can act on: DNS, timeout, handshake refused, the PSP's certificate
//! not trusted, our certificate refused by the PSP, `invalid_client`, an ACL refusal. Never
//! prints the secret or the token.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Uri;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::tls::Identity;
use crate::token::TokenClient;
use crate::token::endpoint::{TokenError, is_tls, rustls_cause};

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What was checked.
    pub what: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// Details, or the cause of the failure.
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The checks, in order.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    fn pass(&mut self, what: &'static str, detail: impl Into<String>) {
        self.outcomes.push(Outcome {
            what,
            ok: true,
            detail: detail.into(),
        });
    }

    fn fail(&mut self, what: &'static str, detail: impl Into<String>) {
        self.outcomes.push(Outcome {
            what,
            ok: false,
            detail: detail.into(),
        });
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.outcomes.iter().all(|o| o.ok)
    }

    /// The human report.
    pub fn render(&self) -> String {
        let mut out = String::from("pix-auth-proxy check\n");
        for o in &self.outcomes {
            let _ = writeln!(
                out,
                "  [{}] {:<20} {}",
                if o.ok { " ok " } else { "FAIL" },
                o.what,
                o.detail
            );
        }
        let failed = self.outcomes.iter().filter(|o| !o.ok).count();
        if failed == 0 {
            out.push_str("result: all checks passed\n");
        } else {
            let _ = writeln!(out, "result: {failed} check(s) failed");
        }
        out
    }
}

fn days(d: Duration) -> u64 {
    d.as_secs() / 86_400
}

/// Run every check. Stops early only when a later check cannot mean anything.
pub async fn run(config: &Config) -> Report {
    let mut report = Report::default();
    report.pass(
        "configuration",
        format!(
            "upstream {}, token URL {}, client id {}",
            config.upstream, config.token.url, config.token.client_id
        ),
    );
    let identity = match config.identity.load() {
        Ok(id) => id,
        Err(e) => {
            report.fail("client certificate", e.to_string());
            return report;
        }
    };
    describe_identity(&mut report, &identity);
    if let Some(wh) = &config.webhook {
        describe_webhook(&mut report, wh);
    }
    let roots = match crate::tls::root_store(config.ca.as_deref(), &config.extra_roots) {
        Ok(r) => r,
        Err(e) => {
            report.fail("trust anchors", e.to_string());
            return report;
        }
    };
    report.pass(
        "trust anchors",
        match &config.ca {
            Some(ca) => format!(
                "{} certificates (system roots + --ca {})",
                roots.len(),
                ca.display()
            ),
            None => format!("{} system root certificates", roots.len()),
        },
    );
    let tls = match identity.client_config(Arc::new(roots)) {
        Ok(t) => t,
        Err(e) => {
            report.fail("TLS configuration", e.to_string());
            return report;
        }
    };
    handshake(&mut report, config, tls.clone()).await;
    token(&mut report, config, tls).await;
    if let Some(cache) = &config.cache {
        shared_cache(&mut report, cache).await;
    }
    report
}

/// One round trip to the shared cache, each step in words (see `SharedCache::round_trip`).
async fn shared_cache(report: &mut Report, cache: &crate::token::cache::CacheConfig) {
    const WHAT: &str = "shared cache";
    let probe = crate::token::cache::SharedCache::new(
        cache,
        String::new(),
        Duration::from_secs(10),
        Arc::new(crate::metrics::Metrics::new()),
    );
    let probe = match probe {
        Ok(p) => p,
        Err(e) => return report.fail(WHAT, e.to_string()),
    };
    for step in probe.round_trip().await {
        match step.outcome {
            Ok(d) => report.pass(WHAT, format!("{}: {d}", step.step)),
            Err(e) => report.fail(WHAT, format!("{}: {e}", step.step)),
        }
    }
}

/// The webhook listener's server certificate (days left) and every CA it trusts.
fn describe_webhook(report: &mut Report, wh: &crate::config::WebhookConfig) {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let state = match crate::webhook::TlsState::load(wh, Arc::default(), metrics) {
        Ok(s) => s,
        Err(e) => {
            report.fail("webhook certificate", e.to_string());
            return;
        }
    };
    let now = SystemTime::now();
    let info = state.identity.info();
    report.pass(
        "webhook certificate",
        format!(
            "{} (issuer {}), {} days left",
            info.subject,
            info.issuer,
            days(info.time_left(now))
        ),
    );
    for ca in &state.cas {
        let from = ca
            .file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "(in memory)".into());
        let left = ca.info.time_left(now);
        let detail = format!("{} from {from}, {} days left", ca.info.subject, days(left));
        if left.is_zero() {
            report.fail("webhook client CA", format!("{detail}: expired"));
        } else {
            report.pass("webhook client CA", detail);
        }
    }
    if state.cas.is_empty() {
        report.pass(
            "webhook client CA",
            "none: callers are authenticated by the URL secret only",
        );
    }
}

fn describe_identity(report: &mut Report, identity: &Identity) {
    let info = identity.info();
    let left = info.time_left(SystemTime::now());
    let detail = format!(
        "subject {}; issuer {}; valid {} to {} ({} days left); chain of {}",
        info.subject,
        info.issuer,
        crate::tls::rfc3339(info.not_before),
        crate::tls::rfc3339(info.not_after),
        days(left),
        identity.chain().len()
    );
    if left < Duration::from_secs(30 * 86_400) {
        report.fail(
            "client certificate",
            format!("{detail}: expires in less than 30 days, renew it with the PSP"),
        );
    } else {
        report.pass("client certificate", detail);
    }
}

/// Why a TLS failure happened, in words.
fn tls_cause(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    rustls_cause(err).map(describe_rustls)
}

fn describe_rustls(e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "the PSP's server certificate is not trusted (unknown CA): add its CA with --ca".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the PSP's server certificate does not match the host name in the URL".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the PSP's server certificate has expired".into()
        }
        E::InvalidCertificate(other) => {
            format!("the PSP's server certificate is invalid: {other:?}")
        }
        E::AlertReceived(a) if crate::tls::refusal::alert_refusal(e).is_some() => format!(
            "the PSP refused our client certificate (TLS alert {a:?}): is this certificate registered with the PSP, and is it the one for this environment?"
        ),
        E::AlertReceived(a) => format!("the PSP ended the handshake (TLS alert {a:?})"),
        E::NoCertificatesPresented => "the PSP presented no certificate".into(),
        other => format!("TLS handshake failed: {other}"),
    }
}

async fn handshake(report: &mut Report, config: &Config, mut tls: rustls::ClientConfig) {
    const WHAT: &str = "TLS with the PSP";
    let uri = &config.upstream;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let timeout = config.client.connect_timeout.max(Duration::from_secs(1));
    let addrs =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port))).await {
            Ok(Ok(a)) => a.collect::<Vec<_>>(),
            Ok(Err(e)) => return report.fail(WHAT, format!("DNS: cannot resolve {host}: {e}")),
            Err(_) => return report.fail(WHAT, format!("DNS: resolving {host} timed out")),
        };
    let Some(addr) = addrs.first().copied() else {
        return report.fail(WHAT, format!("DNS: {host} has no address"));
    };
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return report.fail(WHAT, format!("cannot connect to {addr}: {e}")),
        Err(_) => {
            return report.fail(
                WHAT,
                format!("connecting to {addr} timed out after {timeout:?}"),
            );
        }
    };
    // HTTP/1.1 only, so that a plain request can confirm the server accepted our certificate
    // (with TLS 1.3 a refusal arrives only after the client's side of the handshake).
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let Ok(name) = ServerName::try_from(host.clone()) else {
        return report.fail(WHAT, format!("{host} is not a valid TLS server name"));
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let mut stream = match tokio::time::timeout(timeout * 2, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return report.fail(
                WHAT,
                tls_cause(&e).unwrap_or_else(|| format!("handshake failed: {e}")),
            );
        }
        Err(_) => return report.fail(WHAT, "the TLS handshake timed out"),
    };
    let version = stream
        .get_ref()
        .1
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    // GET, not HEAD: an edge that refused our certificate after the handshake (nginx with
    // `ssl_verify_client on`) says so only in the body of its 400.
    let probe = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: pix-auth-proxy-check\r\n\r\n",
        uri.authority().map(|a| a.as_str()).unwrap_or(&host)
    );
    let mut answer = Vec::new();
    let exchange = async {
        stream.write_all(probe.as_bytes()).await?;
        let mut buf = [0u8; 1024];
        while answer.len() < crate::tls::refusal::SNIFF_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                // Some answer already came: a reset after it is the server closing.
                Err(_) if !answer.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let bound = config.proxy.request_timeout.min(Duration::from_secs(15));
    let outcome = tokio::time::timeout(bound, exchange).await;
    if answer.is_empty() {
        return match outcome {
            Ok(Ok(())) => report.fail(
                WHAT,
                "the PSP closed the connection right after the handshake (client certificate refused?)",
            ),
            Ok(Err(e)) => report.fail(
                WHAT,
                tls_cause(&e)
                    .unwrap_or_else(|| format!("the connection failed after the handshake: {e}")),
            ),
            Err(_) => report.fail(
                WHAT,
                "the PSP did not answer a plain request after the handshake",
            ),
        };
    }
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or_default().to_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<http::StatusCode>().ok());
    let body = text.find("\r\n\r\n").map_or(&b""[..], |i| &answer[i + 4..]);
    match status.and_then(|s| crate::tls::refusal::http_refusal(s, body)) {
        Some(refusal) => report.fail(
            WHAT,
            format!("{addr}: {version}, {refusal} (probe without a token: {status_line})"),
        ),
        None => report.pass(
            WHAT,
            format!(
                "{addr}: {version}, client certificate accepted (probe without a token: {status_line})"
            ),
        ),
    }
}

async fn token(report: &mut Report, config: &Config, tls: rustls::ClientConfig) {
    const WHAT: &str = "token request";
    let mut request = config.token.clone();
    match config.read_client_secret() {
        Ok(Some(secret)) => request.client_secret = Some(secret),
        Ok(None) => {}
        Err(e) => return report.fail(WHAT, format!("--client-secret-file {e}")),
    }
    let client = TokenClient::new(
        crate::client::https_client(tls, &config.client),
        request,
        config.token_timeout,
    );
    match client.fetch().await {
        Ok(granted) => {
            let fp = crate::telemetry::fingerprint(
                secrecy::ExposeSecret::expose_secret(&granted.access_token).as_bytes(),
            );
            let scope = granted
                .scope
                .map(|s| format!(", scope \"{s}\""))
                .unwrap_or_default();
            report.pass(
                WHAT,
                format!(
                    "got a Bearer token (fingerprint {fp}) valid for {}s{scope}",
                    granted.lifetime.as_secs()
                ),
            );
        }
        Err(e) => report.fail(WHAT, describe_token_error(&e, &config.token.url)),
    }
}

fn describe_token_error(e: &TokenError, url: &Uri) -> String {
    match e {
        TokenError::Status {
            error: Some(code),
            description,
            status,
        } if code == "invalid_client" || code == "unauthorized_client" => format!(
            "the PSP rejected the client credentials ({code}, HTTP {status}{}): check --client-id and the client secret, and that they belong to this certificate and environment",
            description
                .as_ref()
                .map(|d| format!(": {d:?}"))
                .unwrap_or_default()
        ),
        TokenError::Transport(t) if is_tls(t) => tls_cause(t).unwrap_or_else(|| e.to_string()),
        TokenError::Transport(t) => {
            let text = crate::telemetry::error_chain(t);
            if text.contains("dns error") || text.contains("failed to lookup") {
                format!(
                    "DNS: cannot resolve {}: {text}",
                    url.host().unwrap_or_default()
                )
            } else {
                format!("cannot reach {url}: {text}")
            }
        }
        TokenError::Timeout(d) => format!("the token endpoint did not answer within {d:?}"),
        other => other.to_string(),
    }
}
