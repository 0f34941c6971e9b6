//! The app-facing listener: accepts plaintext HTTP/1.1 and h2c connections on an already
//! bound socket and drains them on shutdown.
//!
//! Owns: the accept loop, per-connection protocol settings (HTTP/1.1, and h2c with prior
//! knowledge), each connection's bounds ([`watchdog`]: a first request within the header
//! read timeout, an idle limit), and graceful shutdown (stop accepting, let in-flight
//! requests finish up to a deadline), and handing the core back to the kernel on time while
//! requests keep it busy ([`slice`]).

pub mod slice;
pub mod watchdog;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;

use futures_util::FutureExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use watchdog::{ConnState, Tracked, Verdict};

/// After an idle connection was asked to close (HTTP/2 GOAWAY), how long it may take
/// before it is dropped: a peer that stopped reading never takes the GOAWAY.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The first bytes of an h2c connection with prior knowledge (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub use crate::config::ServerOptions;

/// Serve `handler` on `listener` until `shutdown` resolves, then drain.
/// Returns whether every connection finished within the drain timeout.
pub async fn serve<H, Fut, B>(
    listener: TcpListener,
    handler: H,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> bool
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builders = Arc::new(builders(&opts));
    let (header_timeout, idle_timeout) = (opts.header_read_timeout, opts.idle_timeout);
    let limits = Limits {
        max_connections: opts.max_connections,
        drain_timeout: opts.drain_timeout,
    };
    accept_loop(listener, limits, shutdown, move |stream, peer, mut stop_rx| {
        let handler = handler.clone();
        let builders = builders.clone();
        async move {
            let state = Arc::new(ConnState::default());
            let service = counted_service(state.clone(), handler);
            // Peek, not read: every byte stays in the socket for hyper. HTTP/1 connections
            // then go straight to hyper's HTTP/1 server, whose read buffer stays at its
            // initial 8 KiB; behind the auto-detecting server's rewind buffer it grows to
            // 16 KiB, which is 2 MiB more at 256 app connections.
            let mut first = [0u8; H2_PREFACE.len()];
            let opened = tokio::time::Instant::now();
            let n = tokio::select! {
                peeked = tokio::time::timeout(header_timeout, stream.peek(&mut first)) => match peeked {
                    Ok(Ok(n)) if n > 0 => n,
                    // Closed, failed, or silent past the header timeout: nothing to serve.
                    _ => return,
                },
                _ = stop_rx.wait_for(|stop| *stop) => return,
            };
            let (h1, any) = &*builders;
            let io = TokioIo::new(Tracked::new(stream, state.clone()));
            // The first request's deadline counts from the accept, peek included.
            let first_request = header_timeout.saturating_sub(opened.elapsed());
            let _watchdog = watchdog::spawn(&state, first_request, idle_timeout, stop_rx);
            let served = if first[..n] == H2_PREFACE[..n] {
                // h2c, or too few bytes yet to tell: let hyper-util read the preface.
                let conn = std::pin::pin!(any.serve_connection(io, service));
                supervise(conn, |c| c.graceful_shutdown(), &state).await
            } else {
                let conn = std::pin::pin!(h1.serve_connection(io, service));
                supervise(conn, |c| c.graceful_shutdown(), &state)
                    .await
                    .map_err(Into::into)
            };
            log_end(peer, served);
        }
    })
    .await
}

/// The app listener's hyper settings: an HTTP/1.1 server, and the auto-detecting one used
/// when a connection may be h2c (same head limits and timers in both).
pub fn builders(opts: &ServerOptions) -> (http1::Builder, auto::Builder<TokioExecutor>) {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        // hyper's floor for the read buffer is 8 KiB.
        .max_buf_size(opts.max_header_bytes.max(8192));
    let mut any = auto::Builder::new(TokioExecutor::new());
    any.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(opts.max_header_bytes.max(8192));
    any.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(opts.max_header_bytes).unwrap_or(u32::MAX));
    (h1, any)
}

/// How many connections a listener serves at once, and how long it drains.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// After shutdown starts, how long connections may take to finish.
    pub drain_timeout: Duration,
}

/// Accept on `listener` until `shutdown` resolves, running `connection` for each accepted
/// socket on its own task, with a receiver that turns `true` when the server stops (a
/// connection should then close gracefully); then wait up to the drain timeout for every
/// connection to end. Returns whether they all did. Shared by the app listener and the
/// webhook listener, so that both have the same limits and the same drain.
pub async fn accept_loop<C, Fut>(
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    connection: C,
) -> bool
where
    C: Fn(tokio::net::TcpStream, std::net::SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (stopping, stop_rx) = watch::channel(false);
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let permits = Arc::new(Semaphore::new(max));
    tokio::pin!(shutdown);
    loop {
        // Take a permit before accepting: at the limit, new connections wait in the
        // kernel's backlog instead of being accepted and starved.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(event = "accept_failed", error = %e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let served = connection(stream, peer, stop_rx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            served.await;
        });
    }
    let _ = stopping.send(true);
    drop(listener);
    tracing::info!(
        event = "draining",
        timeout_s = limits.drain_timeout.as_secs_f64(),
        "stopped accepting; draining in-flight requests"
    );
    // Every connection holds a permit until it is done: all permits back means drained.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    match tokio::time::timeout(limits.drain_timeout, permits.acquire_many(all)).await {
        Ok(_) => true,
        Err(_) => {
            tracing::warn!(
                event = "drain_timeout",
                "in-flight requests did not finish before the drain deadline"
            );
            false
        }
    }
}

/// The hyper service for one connection: calls `handler` and counts the request in flight
/// on `state` until the response head is ready.
pub fn counted_service<H, Fut, B>(
    state: Arc<ConnState>,
    handler: H,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<B>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<B>, Infallible>> + Send,
> + Clone
where
    H: Fn(Request<Incoming>) -> Fut + Clone,
    Fut: Future<Output = Response<B>> + Send,
    B: http_body::Body,
{
    let requests = state;
    // `map`, not `async move { Ok(fut.await) }`: an async block would store the
    // handler's future twice (as captured value and as awaitee) in the allocation every
    // connection keeps for its in-flight request.
    service_fn(move |req| {
        slice::checkpoint();
        let in_flight = requests.request();
        handler(req).map(move |resp| {
            drop(in_flight);
            Ok::<_, Infallible>(resp)
        })
    })
}

/// Log how a connection ended (debug: ordinary events, never the request's content).
pub fn log_end(
    peer: std::net::SocketAddr,
    served: Result<Option<Verdict>, Box<dyn std::error::Error + Send + Sync>>,
) {
    match served {
        Ok(Some(verdict)) => {
            tracing::debug!(event = "connection_closed", %peer, reason = ?verdict)
        }
        Ok(None) => {}
        Err(e) => {
            tracing::debug!(event = "connection_error", %peer, error = %crate::telemetry::error_chain(e.as_ref()))
        }
    }
}

/// Drive one connection to its end, or until its watchdog ([`watchdog::spawn`]) ends it.
/// Shutdown and idleness close it gracefully (HTTP/1.1 after the response in progress,
/// HTTP/2 with GOAWAY); a connection without a first request in time is dropped at once,
/// and so is an idle one that does not close within [`IDLE_CLOSE_GRACE`].
/// Returns the verdict that ended it, if any.
pub async fn supervise<C, E>(
    mut conn: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
    state: &ConnState,
) -> Result<Option<Verdict>, E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut interrupt = state.interrupt();
    let verdict = loop {
        // Biased: the connection is what wakes this task nearly every time; the interrupt is
        // one atomic load.
        tokio::select! {
            biased;
            served = conn.as_mut() => return served.map(|()| None),
            verdict = &mut interrupt => match verdict {
                // The server's drain deadline bounds the rest.
                Verdict::Stop => graceful(conn.as_mut()),
                other => break other,
            },
        }
    };
    if verdict == Verdict::Idle {
        graceful(conn.as_mut());
        if let Ok(served) = tokio::time::timeout(IDLE_CLOSE_GRACE, conn).await {
            return served.map(|()| Some(verdict));
        }
    }
    Ok(Some(verdict))
}
