//! Hands an authenticated notification to the app over plain HTTP.
//!
//! Owns: header hygiene (every header a caller could use to claim an identity is removed
//! before the sidecar sets its own), the call to `--webhook-forward` with its timeout, and
//! the mapping of the app's answer to what the PSP sees: 2xx → 200, 4xx passed through,
//! 5xx / timeout / unreachable → 503 so that the PSP retries.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::route::Event;
use super::tls::Caller;
use crate::proxy::ProblemKind;

/// Largest app answer relayed to the PSP; PSPs read no more than a status.
const MAX_APP_BODY: usize = 64 * 1024;

/// The pooled plain-HTTP client towards the app.
pub type AppClient = Client<HttpConnector, Full<Bytes>>;

/// A client for the app beside the sidecar (loopback, keep-alive).
pub fn app_client() -> AppClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// The prefixes and names of headers through which a caller could claim an identity (and
/// `Expect`, which only made sense towards the sidecar).
fn claims_identity(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("x-pix-")
        || n.starts_with("x-client-cert-")
        || n.starts_with("x-forwarded-")
        || n == "forwarded"
        || n == "x-request-id"
        || n == "x-real-ip"
        // The sidecar already read the whole body: the app must not answer 100 Continue.
        || n == "expect"
}

/// Strip hop-by-hop headers, `Host`, credentials and every identity claim from the
/// caller's headers.
pub fn clean_headers(headers: &mut HeaderMap) {
    crate::proxy::rewrite::clean_request_headers(headers);
    let claims: Vec<HeaderName> = headers
        .keys()
        .filter(|n| claims_identity(n))
        .cloned()
        .collect();
    for name in claims {
        headers.remove(name);
    }
}

/// What the sidecar vouches for, set on the forwarded request.
#[derive(Debug)]
pub struct Vouch<'a> {
    /// The event recognised from the path.
    pub event: Event,
    /// The verified caller, if it presented a certificate.
    pub caller: Option<&'a Caller>,
    /// The caller's address.
    pub peer: IpAddr,
    /// The request id (also logged).
    pub request_id: &'a str,
    /// `X-Pix-Webhook-Verified`, when `--webhook-verify` is on.
    pub verified: Option<bool>,
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    // Certificate DNs can hold bytes a header cannot: such a value is left out rather than
    // mangled.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// Set the sidecar's headers on a cleaned header map.
pub fn vouch(headers: &mut HeaderMap, v: &Vouch<'_>) {
    set(headers, "x-pix-webhook-event", v.event.as_str());
    if let Some(c) = v.caller {
        set(headers, "x-client-cert-subject", &c.subject);
        set(headers, "x-client-cert-issuer", &c.issuer);
        set(headers, "x-client-cert-sha256", &c.cert_sha256);
        set(
            headers,
            "x-client-cert-not-after",
            &crate::tls::rfc3339(c.not_after),
        );
    }
    set(headers, "x-forwarded-for", &v.peer.to_string());
    set(headers, "x-forwarded-proto", "https");
    set(headers, "x-request-id", v.request_id);
    if let Some(ok) = v.verified {
        set(
            headers,
            "x-pix-webhook-verified",
            if ok { "true" } else { "false" },
        );
    }
}

/// How the app took the notification.
#[derive(Debug)]
pub enum AppOutcome {
    /// The answer to give the PSP (2xx → 200, 4xx as is).
    Answered(Response<Full<Bytes>>),
    /// 5xx, or the app could not be reached (503 to the PSP).
    Failed(String),
    /// No answer within the timeout (503 to the PSP).
    TimedOut,
}

impl AppOutcome {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            AppOutcome::Answered(_) => "forwarded",
            AppOutcome::Failed(_) => "app_error",
            AppOutcome::TimedOut => "app_timeout",
        }
    }

    /// The response to the PSP.
    pub fn into_response(self, timeout: Duration) -> Response<Full<Bytes>> {
        match self {
            AppOutcome::Answered(r) => r,
            AppOutcome::Failed(why) => {
                crate::proxy::problem::response(ProblemKind::WebhookAppError, &why)
            }
            AppOutcome::TimedOut => crate::proxy::problem::response(
                ProblemKind::WebhookAppTimeout,
                &format!("the application did not answer within {timeout:?}"),
            ),
        }
    }
}

/// POST `body` with `headers` to the app at `target`, bounded by `timeout`.
pub async fn send(
    client: &AppClient,
    target: Uri,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
) -> AppOutcome {
    let mut req = Request::post(target);
    if let Some(h) = req.headers_mut() {
        *h = headers;
    }
    let req = match req.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return AppOutcome::Failed(format!("cannot build the request: {e}")),
    };
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            format!(
                "cannot reach the application: {}",
                crate::telemetry::error_chain(&e)
            )
        })?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_APP_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((parts, body))
    };
    let (parts, body) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return AppOutcome::TimedOut,
        Ok(Err(why)) => return AppOutcome::Failed(why),
        Ok(Ok(answer)) => answer,
    };
    let status = match parts.status.as_u16() {
        200..=299 => StatusCode::OK,
        400..=499 => parts.status,
        other => {
            return AppOutcome::Failed(format!("the application answered {other}"));
        }
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    AppOutcome::Answered(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_claims_and_hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-pix-webhook-verified", "true"),
            ("x-client-cert-subject", "CN=bank"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "mine"),
            ("connection", "close"),
            ("authorization", "Bearer x"),
            ("content-type", "application/json"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        clean_headers(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }
}
