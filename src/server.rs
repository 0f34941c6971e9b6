//! The app-facing listener: accepts plaintext HTTP/1.1 and h2c connections on an already
//! bound socket and drains them on shutdown.
//!
//! Owns: the accept loop, per-connection `auto::Builder` settings, and graceful shutdown
//! (stop accepting, let in-flight requests finish up to a deadline).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How long in-flight requests may take to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
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
            max_connections: 1024,
            max_header_bytes: 64 * 1024,
        }
    }
}

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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        // hyper's floor for the read buffer is 8 KiB.
        .max_buf_size(opts.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(opts.max_header_bytes).unwrap_or(u32::MAX));
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
        let service = service_fn(move |req| {
            let fut = handler(req);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(event = "connection_error", %peer, error = %crate::telemetry::error_chain(e.as_ref()));
            }
        });
    }
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
