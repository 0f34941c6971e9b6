//! Settings of the upper layers as plain data: the request path ([`ProxyOptions`], with the
//! preset's [`ApiExtras`]), the app listener ([`ServerOptions`]) and the upstream client
//! ([`ClientOptions`]).
//!
//! They live here, not beside the code that uses them, so that `config` depends on no upper
//! layer (`proxy`, `generation`, `sidecar`); those modules re-export them under their old
//! paths.

use std::time::Duration;

use http::HeaderValue;

use super::files::read_secret;
use super::{ConfigError, err};
use crate::cli::RunArgs;
use crate::provider::{ApiHeader, Preset};

/// What a PSP preset adds to every API call.
#[derive(Clone, Default)]
pub struct ApiExtras {
    /// A query parameter appended to every call (name, value), e.g. BB's `gw-dev-app-key`.
    pub query: Option<(String, secrecy::SecretString)>,
    /// A header set to a fresh UUID v4 on every call unless the app sent one.
    pub correlation_id: Option<http::HeaderName>,
    /// Headers set on every call.
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for ApiExtras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiExtras")
            .field(
                "query",
                &self.query.as_ref().map(|(k, _)| (k, "<redacted>")),
            )
            .field("correlation_id", &self.correlation_id)
            .field("headers", &self.headers)
            .finish()
    }
}

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Bound on waiting for the upstream's response headers.
    pub request_timeout: Duration,
    /// Bound on waiting for a usable token (cold start, outage, after a 401); shorter than
    /// a typical client timeout so that the app gets its 503 rather than no answer.
    pub token_wait: Duration,
    /// Request bodies up to this size are buffered so they can be replayed after a 401.
    pub replay_limit: usize,
    /// What the PSP preset adds to every call.
    pub extras: ApiExtras,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(60),
            token_wait: Duration::from_secs(3),
            replay_limit: 64 * 1024,
            extras: ApiExtras::default(),
        }
    }
}

/// The shortest scheduler slice Linux (6.12+) gives a fair task that asks for one
/// (`--sched-slice`); it clamps a request to this range.
pub const MIN_SCHED_SLICE: Duration = Duration::from_micros(100);
/// The longest.
pub const MAX_SCHED_SLICE: Duration = Duration::from_millis(100);

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How long in-flight requests may take to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// How long a new connection may take to produce a complete first request (HTTP/1.1
    /// head; h2c preface, SETTINGS and first HEADERS), and a client a request's headers.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no byte moving for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list), in bytes.
    pub max_header_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Connection settings shared by the API and token clients.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TCP connect timeout (TLS handshake is bounded by the request timeout).
    pub connect_timeout: Duration,
    /// Negotiate only HTTP/1.1 (for gateways that mishandle h2).
    pub http1_only: bool,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// HTTP/1.1 exchanges in flight to the PSP at once, so HTTP/1.1 connections open at once
    /// (each exchange holds one). HTTP/2 multiplexes on one connection and is not counted.
    pub max_http1_connections: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            http1_only: false,
            pool_idle_timeout: Duration::from_secs(90),
            max_http1_connections: 32,
        }
    }
}

/// What the preset adds to every API call: a developer-key query parameter, a correlation id,
/// a client-id header.
pub(super) fn api_extras(
    args: &RunArgs,
    preset: &Preset,
    client_id: &str,
    warnings: &mut Vec<String>,
) -> Result<ApiExtras, ConfigError> {
    let mut extras = ApiExtras::default();
    match (preset.developer_key_param, &args.developer_key_file) {
        (Some(param), Some(file)) => {
            let key = read_secret("--developer-key-file", file, warnings)?;
            extras.query = Some((param.to_owned(), key));
        }
        (Some(param), None) => {
            return Err(err(
                "--developer-key-file",
                format!(
                    "is required with --provider {}: its API wants `{param}=<developer application key>` on every call",
                    preset.name
                ),
            ));
        }
        (None, Some(_)) => {
            return Err(err(
                "--developer-key-file",
                format!("--provider {} does not use a developer key", preset.name),
            ));
        }
        (None, None) => {}
    }
    for h in preset.api_headers {
        match *h {
            ApiHeader::CorrelationId(name) => {
                extras.correlation_id = Some(header_name(name));
            }
            ApiHeader::ClientId(name) => {
                let value = http::HeaderValue::try_from(client_id)
                    .map_err(|_| err("--client-id", "is not a valid header value"))?;
                extras.headers.push((header_name(name), value));
            }
        }
    }
    Ok(extras)
}

/// A preset's header name, written as the PSP documents it (`x-correlationID`); `from_bytes`
/// lower-cases it, as HTTP/2 requires (HTTP/1 names are case-insensitive on the wire).
fn header_name(name: &'static str) -> http::HeaderName {
    http::HeaderName::from_bytes(name.as_bytes()).expect("preset header names are valid tokens")
}
