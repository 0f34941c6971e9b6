//! A PSP API server that counts: mTLS (a client certificate from the test CA is required),
//! ALPN `h2` + `http/1.1` or `http/1.1` only, served by hyper. It records how many requests
//! are in flight at once (from the moment its handler is called until the response body
//! has handed over its last byte, or is dropped) and the maximum seen, the connections it
//! accepted by protocol and how many are open now, and the order in which exchanges started
//! and ended. It can close its idle connections silently, as nginx does at its
//! `keepalive_timeout` ([`CountingPsp::close_idle_connections`]).
//!
//! Routes (every answer after the configured delay):
//! - `/echo/...`: `200`, the path as a `text/plain` body;
//! - `/bytes/N`: `200`, exactly N bytes ([`pattern`]) with `Content-Length: N` (`HEAD`:
//!   the same head, no body);
//! - `/status/204`: `204`, no body;
//! - `/chunked/N`, `/gated-chunked/N`: as `/bytes/N`, `/gated/N`, without a length
//!   (HTTP/1.1: chunked);
//! - `/gated/N`: `200`, `Content-Length: N`, the first [`GATE_AT`] bytes at once, the rest
//!   only after [`CountingPsp::open_gate`];
//! - `/stalled-404/...`: `404`, `Content-Length: 64`, the first 16 bytes at once, the rest
//!   only after [`CountingPsp::open_gate`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pix_auth_proxy::sandbox::{Leaf, Pki};
use tokio::sync::{Notify, Semaphore, mpsc};

/// How many bytes of a `/gated/N` body are sent before the gate.
pub const GATE_AT: usize = 96 * 1024;

/// The byte at offset `i` of every body this server sends.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// An exchange starting (the handler is called) or ending (the body is done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start(String),
    End(String),
}

struct State {
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    requests: AtomicU64,
    /// By negotiated protocol: [http/1.1, h2].
    connections: [AtomicU64; 2],
    /// Connections whose TLS handshake is done and that are not closed yet.
    open: AtomicU64,
    delay: Mutex<Duration>,
    events: Mutex<Vec<Event>>,
    gate: Semaphore,
    /// Asks every connection to close once it is idle.
    close_idle: Notify,
}

pub struct CountingPsp {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingPsp {
    fn drop(&mut self) {
        self.task.abort();
        // Every gated body still waiting ends (cut short) so its connection task ends.
        self.state.gate.close();
    }
}

impl CountingPsp {
    /// Serve on 127.0.0.1 with `server`'s certificate, requiring a client certificate
    /// issued by `pki`, offering `h2` too if `h2`.
    pub async fn start(pki: &Pki, server: &Leaf, h2: bool) -> Self {
        let listener = super::bind().await;
        let addr = listener.local_addr().unwrap();
        let alpn: &[&[u8]] = if h2 {
            &[b"h2", b"http/1.1"]
        } else {
            &[b"http/1.1"]
        };
        let acceptor = super::mtls_acceptor(pki, server, alpn);
        let state = Arc::new(State {
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            connections: [AtomicU64::new(0), AtomicU64::new(0)],
            open: AtomicU64::new(0),
            delay: Mutex::new(Duration::ZERO),
            events: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
            close_idle: Notify::new(),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    state.connections[usize::from(is_h2)].fetch_add(1, Ordering::SeqCst);
                    let open = OpenConnection::count(&state);
                    let closing = state.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = closing.close_idle.notified() => {
                            // As nginx at its `keepalive_timeout`: no header, just a close
                            // (after the exchange in flight, if any).
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                    drop(open);
                });
            }
        });
        CountingPsp { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Delay every answer by `d` (server side, inside the in-flight span).
    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    /// Let one waiting (or the next) `/gated/` body send its rest.
    pub fn open_gate(&self) {
        self.state.gate.add_permits(1);
    }

    /// Close every connection open now once it is idle, silently (no `Connection: close`).
    pub fn close_idle_connections(&self) {
        self.state.close_idle.notify_waiters();
    }

    /// Requests whose handler was called.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Exchanges in flight now.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most exchanges ever in flight at once.
    pub fn max_in_flight(&self) -> u64 {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// TLS connections accepted: `(http1, h2)`.
    pub fn connections(&self) -> (u64, u64) {
        (
            self.state.connections[0].load(Ordering::SeqCst),
            self.state.connections[1].load(Ordering::SeqCst),
        )
    }

    /// Connections open now (handshake done, not closed by either side).
    pub fn open_connections(&self) -> u64 {
        self.state.open.load(Ordering::SeqCst)
    }

    pub fn events(&self) -> Vec<Event> {
        self.state.events.lock().unwrap().clone()
    }
}

/// Counts one connection as open until dropped.
struct OpenConnection(Arc<State>);

impl OpenConnection {
    fn count(state: &Arc<State>) -> Self {
        state.open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(state.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Holds one exchange in flight; ends it when dropped.
struct InFlight {
    state: Arc<State>,
    path: String,
}

impl InFlight {
    fn begin(state: Arc<State>, path: String) -> Self {
        state.requests.fetch_add(1, Ordering::SeqCst);
        state
            .events
            .lock()
            .unwrap()
            .push(Event::Start(path.clone()));
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight { state, path }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.state
            .events
            .lock()
            .unwrap()
            .push(Event::End(std::mem::take(&mut self.path)));
    }
}

/// A response body fed by a channel, of a known length, that ends its exchange's
/// [`InFlight`] as it hands over its last byte (before hyper writes it), or when dropped.
pub struct Tracked {
    rx: mpsc::Receiver<Bytes>,
    remaining: u64,
    /// Whether the length is announced (`content-length`); else HTTP/1.1 sends it chunked.
    announced: bool,
    guard: Option<InFlight>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            this.guard = None;
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => {
                this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
                if this.remaining == 0 {
                    this.guard = None;
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(None) => {
                this.guard = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.announced {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::new()
        }
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Tracked> {
    let path = req.uri().path().to_owned();
    let guard = InFlight::begin(state.clone(), path.clone());
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    // `/chunked/N` and `/gated-chunked/N`: the same bodies without a length (chunked).
    let unannounced = ["/chunked", "/gated-chunked"]
        .iter()
        .find_map(|p| path.strip_prefix(p).map(|rest| (*p, rest.to_owned())));
    let (path, announced) = match unannounced {
        Some(("/chunked", rest)) => (format!("/bytes{rest}"), false),
        Some((_, rest)) => (format!("/gated{rest}"), false),
        None => (path, true),
    };
    let number = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|n| n.parse::<usize>().ok())
    };
    // `gate_at`: the bytes sent before the gate.
    let (status, content_type, body, gate_at) = if path.starts_with("/echo/") {
        (
            StatusCode::OK,
            "text/plain",
            path.clone().into_bytes(),
            None,
        )
    } else if let Some(n) = number("/bytes/") {
        (StatusCode::OK, "application/octet-stream", pattern(n), None)
    } else if path == "/status/204" {
        (StatusCode::NO_CONTENT, "text/plain", Vec::new(), None)
    } else if let Some(n) = number("/gated/") {
        (
            StatusCode::OK,
            "application/octet-stream",
            pattern(n),
            Some(GATE_AT),
        )
    } else if path.starts_with("/stalled-404/") {
        (StatusCode::NOT_FOUND, "text/plain", pattern(64), Some(16))
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            b"no route".to_vec(),
            None,
        )
    };
    let len = body.len();
    let head = req.method() == Method::HEAD;
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-counting-psp", "1");
    if status != StatusCode::NO_CONTENT && announced {
        builder = builder.header("content-length", len.to_string());
    }
    let sent = if head { 0 } else { len };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let body = Bytes::from(body);
    if sent > 0 {
        tokio::spawn(async move {
            let split = gate_at.map_or(sent, |at| at.min(sent));
            for piece in body.slice(..split).chunks(16 * 1024) {
                if tx.send(Bytes::copy_from_slice(piece)).await.is_err() {
                    return;
                }
            }
            if split == sent {
                return;
            }
            let Ok(permit) = state.gate.acquire().await else {
                return;
            };
            permit.forget();
            for piece in body.slice(split..).chunks(16 * 1024) {
                if tx.send(Bytes::copy_from_slice(piece)).await.is_err() {
                    return;
                }
            }
        });
    }
    builder
        .body(Tracked {
            rx,
            remaining: sent as u64,
            announced,
            guard: Some(guard),
        })
        .unwrap()
}
