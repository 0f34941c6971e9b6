//! What can go wrong on the request path, tagged by where it came from, and the problem
//! (RFC 9457) each failure becomes.

use std::time::Duration;

use http::{Response, StatusCode};
use http_body_util::Either;

use super::{ProblemKind, ResponseBody, problem};
use crate::client::SendError;

/// A failure produced by the sidecar itself, tagged by where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The app asked for something this proxy will not do (downstream).
    #[error("forbidden target: {0}")]
    ForbiddenTarget(&'static str),
    /// The app's request could not be read or rewritten (downstream).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request's framing cannot be passed on (downstream).
    #[error("{0}")]
    Framing(&'static str, ProblemKind),
    /// No usable token: the token endpoint is failing, or none arrived within the wait
    /// bound (internal).
    #[error("no usable access token (token endpoint failing, or none within {0:?})")]
    TokenUnavailable(Duration),
    /// Connecting to the PSP failed (upstream, retryable).
    #[error("cannot connect to the PSP: {}", crate::telemetry::error_chain(.0))]
    UpstreamConnect(#[source] SendError),
    /// The TLS handshake with the PSP failed (upstream).
    #[error("TLS with the PSP failed: {}", crate::telemetry::error_chain(.0))]
    UpstreamTls(#[source] SendError),
    /// The PSP did not answer in time (upstream).
    #[error("the PSP did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    /// The exchange broke after the connection was made (upstream).
    #[error("the PSP broke the exchange: {}", crate::telemetry::error_chain(.0))]
    UpstreamProtocol(#[source] SendError),
    /// The PSP's response body broke off before its announced length (upstream).
    #[error("the PSP broke off its response body: {}", crate::telemetry::error_chain(.0))]
    UpstreamBody(#[source] hyper::Error),
    /// The PSP answered with a status the sidecar cannot relay: `101 Switching Protocols`
    /// (upgrades are not supported) or an interim 1xx that hyper hands over (upstream).
    #[error("the PSP answered {0}, which cannot be relayed (no upgrades, no interim responses)")]
    UpstreamStatus(StatusCode),
}

impl ProxyError {
    /// The problem kind (and so status and `type`) for this error.
    pub fn kind(&self) -> ProblemKind {
        match self {
            ProxyError::ForbiddenTarget(_) => ProblemKind::ForbiddenTarget,
            ProxyError::BadRequest(_) => ProblemKind::BadRequest,
            ProxyError::Framing(_, kind) => *kind,
            ProxyError::TokenUnavailable(_) => ProblemKind::TokenUnavailable,
            ProxyError::UpstreamConnect(_) => ProblemKind::UpstreamConnect,
            ProxyError::UpstreamTls(_) => ProblemKind::UpstreamTls,
            ProxyError::UpstreamTimeout(_) => ProblemKind::UpstreamTimeout,
            ProxyError::UpstreamProtocol(_)
            | ProxyError::UpstreamBody(_)
            | ProxyError::UpstreamStatus(_) => ProblemKind::UpstreamProtocol,
        }
    }

    pub(super) fn from_client(err: SendError) -> Self {
        if crate::token::endpoint::is_tls(&err) {
            ProxyError::UpstreamTls(err)
        } else if err.is_connect() {
            ProxyError::UpstreamConnect(err)
        } else {
            ProxyError::UpstreamProtocol(err)
        }
    }

    /// The problem response for this error. Its detail is our own text: it never carries a
    /// token or secret (none of the variants holds one).
    pub fn to_response(&self) -> Response<ResponseBody> {
        problem::response(self.kind(), &self.to_string()).map(Either::Right)
    }
}
