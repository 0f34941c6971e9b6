//! The app-facing listener: accepts plaintext HTTP/1.1 and h2c connections on an already
//! bound socket and drains them on shutdown.
//!
//! Owns: the accept loop, per-connection protocol settings (HTTP/1.1, and h2c with prior
//! knowledge), and graceful shutdown (stop accepting, let in-flight requests finish up to a
//! deadline).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

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
    let builders = Arc::new((h1, any));
    let (stopping, stop_rx) = watch::channel(false);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
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
        let handler = handler.clone();
        // `map`, not `async move { Ok(fut.await) }`: an async block would store the
        // handler's future twice (as captured value and as awaitee) in the allocation every
        // connection keeps for its in-flight request.
        let service = service_fn(move |req| handler(req).map(Ok::<_, Infallible>));
        let watcher = graceful.watcher();
        let builders = builders.clone();
        let mut stop_rx = stop_rx.clone();
        let header_timeout = opts.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            // Peek, not read: every byte stays in the socket for hyper. HTTP/1 connections
            // then go straight to hyper's HTTP/1 server, whose read buffer stays at its
            // initial 8 KiB; behind the auto-detecting server's rewind buffer it grows to
            // 16 KiB, which is 2 MiB more at 256 app connections.
            let mut first = [0u8; H2_PREFACE.len()];
            let n = tokio::select! {
                peeked = tokio::time::timeout(header_timeout, stream.peek(&mut first)) => match peeked {
                    Ok(Ok(n)) if n > 0 => n,
                    // Closed, failed, or silent past the header timeout: nothing to serve.
                    _ => return,
                },
                _ = stop_rx.wait_for(|stop| *stop) => return,
            };
            let (h1, any) = &*builders;
            let io = TokioIo::new(stream);
            let served = if first[..n] == H2_PREFACE[..n] {
                // h2c, or too few bytes yet to tell: let hyper-util read the preface.
                watcher
                    .watch(any.serve_connection(io, service).into_owned())
                    .await
            } else {
                watcher
                    .watch(h1.serve_connection(io, service))
                    .await
                    .map_err(Into::into)
            };
            if let Err(e) = served {
                tracing::debug!(event = "connection_error", %peer, error = %crate::telemetry::error_chain(e.as_ref()));
            }
        });
    }
    let _ = stopping.send(true);
    drop(listener);
    tracing::info!(
        event = "draining",
        timeout_s = opts.drain_timeout.as_secs_f64(),
        "stopped accepting; draining in-flight requests"
    );
    match tokio::time::timeout(opts.drain_timeout, graceful.shutdown()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                event = "drain_timeout",
                "in-flight requests did not finish before the drain deadline"
            );
            false
        }
    }
}
