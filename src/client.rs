//! Pooled mTLS HTTPS clients towards the PSP: one for the API, one for the token endpoint,
//! both built from the same identity.
//!
//! Owns: the hyper-util legacy client settings (pool idle timer, keep-alive, connect
//! timeout, ALPN `h2` + `http/1.1` or `http/1.1` only), the API client's protocol
//! discovery ([`UpstreamClient`]) and its bound on HTTP/1.1 connections ([`Slot`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::client::legacy::{Builder, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service as _;

use crate::metrics::Metrics;

pub use crate::config::ClientOptions;

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
/// connection at a time and multiplexes every request on it. A PSP that stops negotiating
/// `h2` is noticed on the next new connection: that connection is refused with
/// [`NotHttp2`] (no request was sent on it) and discovery starts again.
pub struct UpstreamClient<B> {
    discover: Client<AlpnLearner, B>,
    h2: Option<Client<AlpnLearner, B>>,
    learned: Arc<AtomicU8>,
    connector: AlpnLearner,
    base: Uri,
    /// `Host` for HTTP/1.1 requests to `base`, built once.
    host: Option<http::HeaderValue>,
    http1_slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl<B> Clone for UpstreamClient<B> {
    fn clone(&self) -> Self {
        Self {
            discover: self.discover.clone(),
            h2: self.h2.clone(),
            learned: self.learned.clone(),
            connector: self.connector.clone(),
            base: self.base.clone(),
            host: self.host.clone(),
            http1_slots: self.http1_slots.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The right to run one HTTP/1.1 exchange, so to use one HTTP/1.1 connection, from the
/// request until the end of its response body (then hyper hands the connection back to the
/// pool). Empty for an exchange that goes over HTTP/2.
///
/// Without a bound, N app requests in flight keep N TLS connections to the PSP open, each
/// with ~46 KB of buffers (hyper's request channel, read and write buffers, rustls, its
/// task): 256 app connections meant 256 upstream connections and +12 MB. With the bound,
/// requests beyond it wait for a connection to come free instead of opening one. One
/// HTTP/1.1 PSP connection carries thousands of requests a second when the PSP answers
/// fast; when it answers in 200 ms, 32 connections carry ~160 a second.
#[derive(Debug, Default)]
pub struct Slot {
    /// Released on drop: that frees the slot.
    _permit: Option<OwnedSemaphorePermit>,
}

type Answer =
    Result<(http::Response<hyper::body::Incoming>, Slot), hyper_util::client::legacy::Error>;

/// An exchange from [`UpstreamClient::send`] until the PSP's response head.
pub struct Sending(SendState);

enum SendState {
    /// Handed to the pool, with its slot.
    Sent {
        answer: hyper_util::client::legacy::ResponseFuture,
        slot: Option<Slot>,
    },
    /// Waiting for a slot (boxed, with its request).
    Waiting(Pin<Box<dyn Future<Output = Answer> + Send>>),
}

impl Future for Sending {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match &mut self.get_mut().0 {
            SendState::Sent { answer, slot } => {
                let resp = std::task::ready!(Pin::new(answer).poll(cx))?;
                Poll::Ready(Ok((resp, slot.take().unwrap_or_default())))
            }
            SendState::Waiting(waiting) => waiting.as_mut().poll(cx),
        }
    }
}

/// What the PSP negotiated on the newest connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// No connection yet.
    Unknown,
    /// HTTP/1.1 (ALPN `http/1.1` or none).
    Http1,
    /// HTTP/2 (ALPN `h2`).
    Http2,
}

impl UpstreamProtocol {
    const fn to_u8(self) -> u8 {
        match self {
            UpstreamProtocol::Unknown => 0,
            UpstreamProtocol::Http1 => 1,
            UpstreamProtocol::Http2 => 2,
        }
    }

    const fn from_u8(v: u8) -> Self {
        match v {
            1 => UpstreamProtocol::Http1,
            2 => UpstreamProtocol::Http2,
            _ => UpstreamProtocol::Unknown,
        }
    }

    /// `"h2"`, `"http/1.1"` or `"unknown"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Unknown => "unknown",
            UpstreamProtocol::Http1 => "http/1.1",
            UpstreamProtocol::Http2 => "h2",
        }
    }
}

/// A new connection for the HTTP/2-only pool did not negotiate `h2`: it was closed before
/// any request was written on it, so the request can be sent again through discovery.
#[derive(Debug, thiserror::Error)]
#[error("the PSP no longer negotiates HTTP/2 on new connections")]
pub struct NotHttp2;

impl<B> UpstreamClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Clients towards `base` presenting the identity in `tls`; waits for an HTTP/1.1 slot
    /// are counted in `metrics`.
    pub fn new(tls: ClientConfig, opts: &ClientOptions, base: Uri, metrics: Arc<Metrics>) -> Self {
        let learned = Arc::new(AtomicU8::new(UpstreamProtocol::Unknown.to_u8()));
        let max_http1 = opts.max_http1_connections.max(1);
        let connector = AlpnLearner {
            inner: https_connector(tls, opts),
            learned: learned.clone(),
            require_h2: false,
        };
        // A connection that comes back while none is waiting stays idle; more than the bound
        // are never needed at once, so extra ones (a connect that lost its race with a
        // returning connection) are closed rather than kept.
        let discover = builder(opts)
            .pool_max_idle_per_host(max_http1)
            .build(connector.clone());
        let h2 = (!opts.http1_only).then(|| {
            let mut only_h2 = connector.clone();
            only_h2.require_h2 = true;
            builder(opts).http2_only(true).build(only_h2)
        });
        Self {
            discover,
            h2,
            learned,
            connector,
            host: host_header(&base),
            base,
            http1_slots: Arc::new(Semaphore::new(max_http1)),
            metrics,
        }
    }

    /// Send `req` (a request to `base`) through the pool that fits what the PSP speaks,
    /// holding an HTTP/1.1 slot for it: the returned [`Slot`] must live as long as the
    /// response body is read.
    ///
    /// When a slot is free (or none is needed) the request is handed to the pool at once and
    /// the future is small: it does not keep the request, which the future of every request
    /// in flight would otherwise carry (it is boxed once per app connection by hyper). Only
    /// a request that must wait for a slot is kept, in a box of its own.
    pub fn send(&self, mut req: http::Request<B>) -> Sending {
        debug_assert_eq!(req.uri().authority(), self.base.authority());
        if !self.on_h2() {
            // hyper-util would format the same value for every HTTP/1.1 request. Before the
            // first connection the protocol is unknown: if ALPN then picks h2, the PSP gets
            // this Host beside an equal `:authority` (RFC 9113 §8.3.1 allows both).
            if let Some(host) = &self.host {
                req.headers_mut()
                    .entry(http::header::HOST)
                    .or_insert_with(|| host.clone());
            }
        }
        match self.free_slot() {
            Some(slot) => Sending(SendState::Sent {
                answer: self.pool_for_now().request(req),
                slot: Some(slot),
            }),
            None => {
                let client = self.clone();
                Sending(SendState::Waiting(Box::pin(async move {
                    let slot = client.wait_for_slot().await;
                    let resp = client.pool_for_now().request(req).await?;
                    Ok((resp, slot))
                })))
            }
        }
    }

    /// Whether requests go through the HTTP/2 pool now.
    fn on_h2(&self) -> bool {
        self.h2.is_some() && self.protocol() == UpstreamProtocol::Http2
    }

    /// What an exchange must hold, if it can have it now: nothing when it goes over HTTP/2,
    /// else one of the HTTP/1.1 slots if one is free. While the protocol is unknown (before
    /// the first connection), a slot is taken.
    fn free_slot(&self) -> Option<Slot> {
        if self.on_h2() {
            return Some(Slot::default());
        }
        let permit = self.http1_slots.clone().try_acquire_owned().ok()?;
        Some(Slot {
            _permit: Some(permit),
        })
    }

    /// Wait for an HTTP/1.1 slot to come free (the wait is counted first, so that a wait cut
    /// short by a timeout counts too).
    async fn wait_for_slot(&self) -> Slot {
        self.metrics.upstream_connection_wait();
        // The semaphore lives as long as the client and is never closed.
        let permit = self.http1_slots.clone().acquire_owned().await.ok();
        // The slot was freed by an exchange whose body just ended; its connection goes back
        // to the pool from another task, queued before this one. Letting it run first means
        // the pool has that connection when this exchange asks for one, instead of starting
        // a new TLS connection that the returning one would then make redundant.
        tokio::task::yield_now().await;
        Slot { _permit: permit }
    }

    /// The protocol the PSP negotiated on the newest connection.
    pub fn protocol(&self) -> UpstreamProtocol {
        UpstreamProtocol::from_u8(self.learned.load(Ordering::Relaxed))
    }

    /// The pool that fits what the PSP speaks now.
    fn pool_for_now(&self) -> &Client<AlpnLearner, B> {
        match &self.h2 {
            Some(h2) if self.on_h2() => h2,
            _ => &self.discover,
        }
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TlsIo = MaybeHttpsStream<TokioIo<TcpStream>>;

/// The HTTPS connector, recording which protocol each new connection negotiated.
#[derive(Clone)]
struct AlpnLearner {
    inner: HttpsConnector<HttpConnector>,
    learned: Arc<AtomicU8>,
    require_h2: bool,
}

impl tower_service::Service<Uri> for AlpnLearner {
    type Response = TlsIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let learned = self.learned.clone();
        let require_h2 = self.require_h2;
        Box::pin(async move {
            let io = connecting.await?;
            let protocol = if io.connected().is_negotiated_h2() {
                UpstreamProtocol::Http2
            } else {
                UpstreamProtocol::Http1
            };
            let before = learned.swap(protocol.to_u8(), Ordering::Relaxed);
            if before != protocol.to_u8() {
                tracing::info!(
                    event = "upstream_protocol",
                    protocol = protocol.as_str(),
                    previous = UpstreamProtocol::from_u8(before).as_str(),
                    "PSP protocol learned from a new connection"
                );
            }
            if require_h2 && protocol != UpstreamProtocol::Http2 {
                return Err(NotHttp2.into());
            }
            Ok(io)
        })
    }
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
