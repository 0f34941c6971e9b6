//! Pooled mTLS HTTPS clients towards the PSP: one for the API, one for the token endpoint,
//! both built from the same identity.
//!
//! Owns: the hyper-util legacy client settings (pool idle timer, keep-alive, connect
//! timeout, ALPN `h2` + `http/1.1` or `http/1.1` only).

use std::time::Duration;

use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;

/// Connection settings shared by the API and token clients.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TCP connect timeout (TLS handshake is bounded by the request timeout).
    pub connect_timeout: Duration,
    /// Negotiate only HTTP/1.1 (for gateways that mishandle h2).
    pub http1_only: bool,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            http1_only: false,
            pool_idle_timeout: Duration::from_secs(90),
        }
    }
}

/// A pooled HTTPS-only client presenting the identity in `tls`.
pub fn https_client<B>(
    tls: ClientConfig,
    opts: &ClientOptions,
) -> Client<HttpsConnector<HttpConnector>, B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(opts.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(30)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1();
    let connector = if opts.http1_only {
        builder.wrap_connector(http)
    } else {
        builder.enable_http2().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        // Without a timer the idle timeout is silently ignored.
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(opts.pool_idle_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .build(connector)
}
