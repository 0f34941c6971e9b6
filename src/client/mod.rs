//! Pooled mTLS HTTPS clients towards the PSP: one for the API, one for the token endpoint,
//! both built from the same identity.
//!
//! Owns: the hyper-util legacy client settings (pool idle timer, keep-alive, connect
//! timeout, ALPN `h2` + `http/1.1` or `http/1.1` only), the API client's protocol
//! discovery and routing ([`UpstreamClient`]; the connector in [`alpn`]), its own pool of
//! HTTP/1.1 connections ([`http1`]), and what each exchange holds of them ([`exchange`]:
//! the [`Reserved`] way, the [`Slot`] bounding HTTP/1.1 connections).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Builder, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service as _;

use crate::metrics::Metrics;

mod alpn;
mod exchange;
mod http1;

pub use crate::config::ClientOptions;
use alpn::{AlpnLearner, Learned};
pub use alpn::{ProtocolChanged, UpstreamProtocol};
use exchange::{Exchanged, Holding, Lane, ReserveState, SendState};
pub use exchange::{Reserved, Reserving, SendError, Sending, Slot};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body the clients can send: bytes, sendable to a connection's task.
pub trait SendBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<T> SendBody for T where T: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{}

/// A pooled HTTPS-only client presenting the identity in `tls` (ALPN decides the protocol).
pub fn https_client<B>(
    tls: ClientConfig,
    opts: &ClientOptions,
) -> Client<HttpsConnector<HttpConnector>, B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    builder(opts).build(https_connector(tls, opts))
}

fn https_connector(tls: ClientConfig, opts: &ClientOptions) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(opts.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(30)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1();
    if opts.http1_only {
        builder.wrap_connector(http)
    } else {
        builder.enable_http2().wrap_connector(http)
    }
}

/// Request body bytes buffered per HTTP/2 stream, waiting for the PSP's window.
const UPLOAD_BUFFER: usize = 64 * 1024;

fn builder(opts: &ClientOptions) -> Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        // Without a timer the idle timeout is silently ignored.
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(opts.pool_idle_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        // An upload is read from the app no faster than the PSP's flow-control window lets
        // it leave: at most this much of each request body waits in memory. hyper's default
        // (1 MiB per stream) held most of every 1 MiB upload (+10 MiB RSS for 16 uploads).
        .http2_max_send_buf_size(UPLOAD_BUFFER);
    builder
}

/// The app-facing API client: finds out once which protocol the PSP speaks, then keeps to it.
///
/// hyper-util only serialises connection set-up for HTTP/2 when it knows in advance that a
/// destination speaks HTTP/2. With ALPN left open, a burst of N requests on a cold pool opens
/// N TLS connections (N handshakes on the PSP) and keeps several of them. So requests go
/// through a *discovery* client (ALPN `h2` + `http/1.1`) until a connection tells which one the
/// PSP picks; once that is `h2`, they go through an `http2_only` client whose pool opens one
/// connection at a time and multiplexes every request on it; once that is `http/1.1` (or
/// always, with `--upstream-http1-only`), through the bounded HTTP/1.1 pool
/// ([`http1`]). A PSP that changes its mind is noticed on the next new connection: that
/// connection is refused with [`ProtocolChanged`] (no request was sent on it) and the
/// request can go again through the pool that now fits.
///
/// The discovery client has its own bound of `--upstream-max-connections` slots; it only
/// carries requests while the protocol is unknown (the PSP could not be reached at start).
pub struct UpstreamClient<B>
where
    B: SendBody,
{
    discover: Client<AlpnLearner, B>,
    h2: Option<Client<AlpnLearner, B>>,
    http1: http1::Http1Pool<B>,
    learned: Learned,
    connector: AlpnLearner,
    base: Uri,
    /// `Host` for HTTP/1.1 requests to `base`, built once.
    host: Option<http::HeaderValue>,
    discovery_slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl<B> Clone for UpstreamClient<B>
where
    B: SendBody,
{
    fn clone(&self) -> Self {
        Self {
            discover: self.discover.clone(),
            h2: self.h2.clone(),
            http1: self.http1.clone(),
            learned: self.learned.clone(),
            connector: self.connector.clone(),
            base: self.base.clone(),
            host: self.host.clone(),
            discovery_slots: self.discovery_slots.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Which pool a request goes through now.
enum Route {
    Discover,
    Http1,
    Http2,
}

impl<B> UpstreamClient<B>
where
    B: SendBody + Unpin,
{
    /// Clients towards `base` presenting the identity in `tls`; waits for an HTTP/1.1
    /// connection are counted in `metrics`.
    pub fn new(tls: ClientConfig, opts: &ClientOptions, base: Uri, metrics: Arc<Metrics>) -> Self {
        let max_http1 = opts.max_http1_connections.max(1);
        let connector = AlpnLearner {
            inner: https_connector(tls, opts),
            learned: Learned::default(),
            require: None,
        };
        // A connection that comes back while none is waiting stays idle; more than the bound
        // are never needed at once, so extra ones (a connect that lost its race with a
        // returning connection) are closed rather than kept.
        let discover = builder(opts)
            .pool_max_idle_per_host(max_http1)
            .build(connector.clone());
        let h2 = (!opts.http1_only).then(|| {
            builder(opts)
                .http2_only(true)
                .build(connector.requiring(UpstreamProtocol::Http2))
        });
        let http1 = http1::Http1Pool::new(
            connector.requiring(UpstreamProtocol::Http1),
            base.clone(),
            max_http1,
            opts.pool_idle_timeout,
            metrics.clone(),
        );
        Self {
            discover,
            h2,
            http1,
            learned: connector.learned.clone(),
            connector,
            host: host_header(&base),
            base,
            discovery_slots: Arc::new(Semaphore::new(max_http1)),
            metrics,
        }
    }

    /// Take a way to the PSP for one exchange, in the pool that fits what the PSP speaks:
    /// an HTTP/1.1 connection (a free one, a new one while fewer than the bound are open,
    /// or else the next to come back; the wait is counted), a discovery slot, or nothing
    /// for HTTP/2. The proxy takes it before it reads the app's body, so that a request
    /// waiting for a connection keeps its body in the socket, not in memory.
    pub fn reserve(&self) -> Reserving<B> {
        let ready = |lane| Reserving(ReserveState::Ready(Some(Reserved(lane))));
        match self.route() {
            Route::Http2 => ready(Lane::Http2),
            Route::Http1 => {
                let pool = self.http1.clone();
                Reserving(ReserveState::Waiting(Box::pin(async move {
                    Ok(Reserved(Lane::Http1(pool.checkout().await?)))
                })))
            }
            Route::Discover => match self.discovery_slots.clone().try_acquire_owned() {
                Ok(permit) => ready(Lane::Discover(Some(permit))),
                Err(_) => {
                    let client = self.clone();
                    Reserving(ReserveState::Waiting(Box::pin(async move {
                        Ok(Reserved(Lane::Discover(
                            client.wait_for_discovery_slot().await,
                        )))
                    })))
                }
            },
        }
    }

    /// Send `req` (a request to `base`) the way `reserved` took. The returned [`Slot`] must
    /// live as long as the response body is read, and be [`Slot::finished`] at its clean end.
    ///
    /// The future is small: the request goes to its connection or pool now, so the future
    /// (kept by every request in flight, boxed by hyper once per app connection) does not
    /// keep the request as well.
    pub fn send_on(&self, reserved: Reserved<B>, mut req: http::Request<B>) -> Sending<B> {
        debug_assert_eq!(req.uri().authority(), self.base.authority());
        if !matches!(reserved.0, Lane::Http2) {
            // hyper-util would format the same value for every HTTP/1.1 request. Before the
            // first connection the protocol is unknown: if ALPN then picks h2, the PSP gets
            // this Host beside an equal `:authority` (RFC 9113 §8.3.1 allows both).
            if let Some(host) = &self.host {
                req.headers_mut()
                    .entry(http::header::HOST)
                    .or_insert_with(|| host.clone());
            }
        }
        match reserved.0 {
            Lane::Http1(conn) => {
                // An HTTP/1.1 connection of our own takes the request-target as given.
                let target = req.uri().path_and_query().cloned();
                *req.uri_mut() = target.map_or_else(|| Uri::from_static("/"), Uri::from);
                Sending(SendState::Http1(self.http1.send_on(conn, req)))
            }
            // A lane is HTTP/2 only when there is an HTTP/2 client.
            Lane::Http2 => Sending(SendState::Sent {
                answer: self.h2.as_ref().unwrap_or(&self.discover).request(req),
                slot: Some(Slot::default()),
            }),
            Lane::Discover(permit) => Sending(SendState::Sent {
                answer: self.discover.request(req),
                slot: Some(permit.map_or_else(Slot::default, |p| Slot(Holding::Permit(p)))),
            }),
        }
    }

    /// [`reserve`](Self::reserve), then [`send_on`](Self::send_on): for a request whose
    /// body is already at hand.
    pub fn send(&self, req: http::Request<B>) -> Sending<B> {
        match self.reserve().0 {
            ReserveState::Ready(Some(reserved)) => self.send_on(reserved, req),
            waiting => {
                let client = self.clone();
                Sending(SendState::Boxed(Box::pin(async move {
                    let reserved = Reserving(waiting).await?;
                    client.send_on(reserved, req).await
                })))
            }
        }
    }

    /// The pool for a request now: HTTP/1.1 with `--upstream-http1-only` or once the PSP
    /// picked it, HTTP/2 once it picked that, discovery before the first connection.
    fn route(&self) -> Route {
        // No HTTP/2 client: `--upstream-http1-only`.
        if self.h2.is_none() {
            return Route::Http1;
        }
        match self.protocol() {
            UpstreamProtocol::Unknown => Route::Discover,
            UpstreamProtocol::Http1 => Route::Http1,
            UpstreamProtocol::Http2 => Route::Http2,
        }
    }

    /// Wait for a discovery slot to come free (the wait is counted first, so that a wait
    /// cut short by a timeout counts too).
    async fn wait_for_discovery_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.metrics.upstream_connection_wait();
        // The semaphore lives as long as the client and is never closed.
        let permit = self.discovery_slots.clone().acquire_owned().await;
        // The slot was freed by an exchange whose body just ended; its connection goes back
        // to the pool from another task, queued before this one. Letting it run first means
        // the pool has that connection when this exchange asks for one, instead of starting
        // a new TLS connection that the returning one would then make redundant.
        tokio::task::yield_now().await;
        permit.ok()
    }

    /// The protocol the PSP negotiated on the newest connection.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.learned.get()
    }

    /// Open one TLS connection to the API host to learn its protocol before the first
    /// request, so that even the first burst shares one HTTP/2 connection. The connection
    /// is closed at once; nothing is sent on it.
    /// With `--upstream-http1-only` there is nothing to choose, so no handshake is made.
    pub async fn discover(&self) -> Result<UpstreamProtocol, BoxError> {
        if self.h2.is_none() || self.protocol() != UpstreamProtocol::Unknown {
            return Ok(self.protocol());
        }
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        drop(connector.call(self.base.clone()).await?);
        Ok(self.protocol())
    }
}

/// `Host` for requests to `base`: its host, and its port unless that is the scheme's default
/// (what hyper-util sets on an HTTP/1.1 request that has none).
fn host_header(base: &Uri) -> Option<http::HeaderValue> {
    let host = base.host()?;
    let default = match base.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match base.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    http::HeaderValue::from_str(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::host_header;

    #[test]
    fn host_is_the_bases_host_with_its_port_unless_default() {
        let host =
            |uri: &str| host_header(&uri.parse().unwrap()).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            host("https://psp.example/v2").as_deref(),
            Some("psp.example")
        );
        assert_eq!(
            host("https://psp.example:443/").as_deref(),
            Some("psp.example")
        );
        assert_eq!(
            host("https://psp.example:8443/").as_deref(),
            Some("psp.example:8443")
        );
        assert_eq!(host("http://127.0.0.1:80/").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            host("https://127.0.0.1:80/").as_deref(),
            Some("127.0.0.1:80")
        );
        assert_eq!(host("https://[::1]:9443/").as_deref(), Some("[::1]:9443"));
    }
}
