//! RFC 9457 problem bodies for the failures the sidecar itself produces, so that an app can
//! tell them from the PSP's own errors.
//! The webhook listener uses the same machinery (its kinds are prefixed `webhook-`).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Prefix of every problem `type` URI; the suffix is the stable slug.
pub const TYPE_PREFIX: &str = "urn:pix-auth-proxy:problem:";

/// The kinds of failure the sidecar reports itself. Each has a stable slug, status and title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// No usable access token (cold start, token endpoint failing). 503 + `Retry-After`.
    TokenUnavailable,
    /// The PSP could not be reached (DNS, TCP, connection reset). 502.
    UpstreamConnect,
    /// The TLS handshake with the PSP failed (untrusted server, client certificate refused). 502.
    UpstreamTls,
    /// The PSP did not answer within the request timeout. 504.
    UpstreamTimeout,
    /// The PSP broke the HTTP exchange after connecting. 502.
    UpstreamProtocol,
    /// The request targets something other than the configured upstream (absolute-form to
    /// another authority, `CONNECT`). 403.
    ForbiddenTarget,
    /// The request could not be read from the app. 400.
    BadRequest,
    /// The app's request uses a transfer coding the sidecar cannot pass on (anything but
    /// `chunked`). 501.
    UnsupportedTransferCoding,
    /// A webhook caller presented no client certificate (and no URL secret). 403.
    WebhookClientCertRequired,
    /// A webhook caller's certificate verified, but its subject or key is not allowed. 403.
    WebhookIdentityMismatch,
    /// A webhook caller's address or URL secret is not allowed. 403.
    WebhookForbidden,
    /// A webhook call to a path that is not the registered one. 404.
    WebhookNotFound,
    /// A webhook call with another method than POST. 405.
    WebhookMethodNotAllowed,
    /// A webhook body larger than `--webhook-max-body`. 413.
    WebhookBodyTooLarge,
    /// The app answered a notification with 5xx or could not be reached; the PSP should
    /// retry. 503.
    WebhookAppError,
    /// The app did not answer a notification within `--webhook-timeout`. 503.
    WebhookAppTimeout,
    /// `--webhook-verify require` could not ask the PSP about a notification; the PSP should
    /// deliver it again. 503.
    WebhookVerifyUnavailable,
}

impl ProblemKind {
    /// The stable slug used in the `type` URI and as a metric label.
    pub fn slug(self) -> &'static str {
        match self {
            ProblemKind::TokenUnavailable => "token-unavailable",
            ProblemKind::UpstreamConnect => "upstream-connect",
            ProblemKind::UpstreamTls => "upstream-tls",
            ProblemKind::UpstreamTimeout => "upstream-timeout",
            ProblemKind::UpstreamProtocol => "upstream-protocol",
            ProblemKind::ForbiddenTarget => "forbidden-target",
            ProblemKind::BadRequest => "bad-request",
            ProblemKind::UnsupportedTransferCoding => "unsupported-transfer-coding",
            ProblemKind::WebhookClientCertRequired => "webhook-client-cert-required",
            ProblemKind::WebhookIdentityMismatch => "webhook-identity-mismatch",
            ProblemKind::WebhookForbidden => "webhook-forbidden",
            ProblemKind::WebhookNotFound => "webhook-not-found",
            ProblemKind::WebhookMethodNotAllowed => "webhook-method-not-allowed",
            ProblemKind::WebhookBodyTooLarge => "webhook-body-too-large",
            ProblemKind::WebhookAppError => "webhook-app-error",
            ProblemKind::WebhookAppTimeout => "webhook-app-timeout",
            ProblemKind::WebhookVerifyUnavailable => "webhook-verify-unavailable",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ProblemKind::TokenUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProblemKind::UpstreamConnect
            | ProblemKind::UpstreamTls
            | ProblemKind::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            ProblemKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProblemKind::ForbiddenTarget
            | ProblemKind::WebhookClientCertRequired
            | ProblemKind::WebhookIdentityMismatch
            | ProblemKind::WebhookForbidden => StatusCode::FORBIDDEN,
            ProblemKind::BadRequest => StatusCode::BAD_REQUEST,
            ProblemKind::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProblemKind::WebhookNotFound => StatusCode::NOT_FOUND,
            ProblemKind::WebhookMethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProblemKind::WebhookBodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemKind::WebhookAppError
            | ProblemKind::WebhookAppTimeout
            | ProblemKind::WebhookVerifyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whose fault it is: `downstream`, the side that sent the request (the app outbound,
    /// the webhook caller inbound), or `upstream`, the side it went to (the PSP or its token
    /// endpoint outbound, the app inbound). Used as the log field `side` and to pick the
    /// metric.
    pub fn side(self) -> &'static str {
        match self {
            ProblemKind::ForbiddenTarget
            | ProblemKind::BadRequest
            | ProblemKind::UnsupportedTransferCoding
            | ProblemKind::WebhookClientCertRequired
            | ProblemKind::WebhookIdentityMismatch
            | ProblemKind::WebhookForbidden
            | ProblemKind::WebhookNotFound
            | ProblemKind::WebhookMethodNotAllowed
            | ProblemKind::WebhookBodyTooLarge => "downstream",
            ProblemKind::TokenUnavailable
            | ProblemKind::UpstreamConnect
            | ProblemKind::UpstreamTls
            | ProblemKind::UpstreamTimeout
            | ProblemKind::UpstreamProtocol
            | ProblemKind::WebhookAppError
            | ProblemKind::WebhookAppTimeout
            | ProblemKind::WebhookVerifyUnavailable => "upstream",
        }
    }

    /// A short human title, constant per kind (RFC 9457 §3.1.3).
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::TokenUnavailable => "No access token available for the PSP",
            ProblemKind::UpstreamConnect => "Could not connect to the PSP",
            ProblemKind::UpstreamTls => "TLS handshake with the PSP failed",
            ProblemKind::UpstreamTimeout => "The PSP did not answer in time",
            ProblemKind::UpstreamProtocol => "The PSP broke the HTTP exchange",
            ProblemKind::ForbiddenTarget => {
                "Only the configured PSP can be reached through this proxy"
            }
            ProblemKind::BadRequest => "The request could not be read",
            ProblemKind::UnsupportedTransferCoding => {
                "The request uses a transfer coding other than chunked"
            }
            ProblemKind::WebhookClientCertRequired => "A client certificate is required",
            ProblemKind::WebhookIdentityMismatch => {
                "The client certificate is not one of the allowed callers"
            }
            ProblemKind::WebhookForbidden => "This caller is not allowed",
            ProblemKind::WebhookNotFound => "Not the registered webhook path",
            ProblemKind::WebhookMethodNotAllowed => "Webhooks are delivered with POST",
            ProblemKind::WebhookBodyTooLarge => "The notification body is too large",
            ProblemKind::WebhookAppError => "The application could not take the notification",
            ProblemKind::WebhookAppTimeout => "The application did not answer in time",
            ProblemKind::WebhookVerifyUnavailable => {
                "The notification could not be confirmed with the PSP yet"
            }
        }
    }
}

/// Build the problem response. `detail` must never contain a secret or a token.
pub fn response(kind: ProblemKind, detail: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "type": format!("{TYPE_PREFIX}{}", kind.slug()),
        "title": kind.title(),
        "status": kind.status().as_u16(),
        "detail": detail,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = kind.status();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if kind == ProblemKind::WebhookMethodNotAllowed {
        headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    if kind == ProblemKind::TokenUnavailable {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn problem_body_follows_rfc9457() {
        let resp = response(ProblemKind::TokenUnavailable, "token endpoint failing");
        assert_eq!(resp.status(), 503);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "urn:pix-auth-proxy:problem:token-unavailable");
        assert_eq!(v["status"], 503);
        assert_eq!(v["detail"], "token endpoint failing");
    }
}
