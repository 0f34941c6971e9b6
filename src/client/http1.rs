//! The HTTP/1.1 path to the PSP: a bounded pool (`deadpool`) of hyper HTTP/1.1
//! connections, each carrying one exchange at a time.
//!
//! The discovery and HTTP/2 clients use hyper-util's pool, which for every HTTP/1.1 request
//! hashes the destination, builds a connect future it rarely starts, and spawns a task to
//! put the connection back once the response body has been read. Here an exchange takes a
//! connection from the pool before the app's body is read ([`super::Reserved`]: one it
//! does not use goes straight back) and holds it in its [`Slot`] until the response body
//! ends; the bound on connections (`--upstream-max-connections`) is the pool's size, so
//! waiting for a connection and waiting for a slot are the same wait. A connection used by
//! an exchange goes back only after a clean end of its response. An exchange given up before the PSP's response head (a
//! timeout, an app that went away) ends in a task of its own, and its connection comes back
//! if the answer does, whole, within a bound ([`InFlight`]); one given up later (a body
//! broken off, an app gone mid-body) closes its connection instead of leaving it busy in
//! the pool.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;

use deadpool::managed::{self, Object, PoolError, QueueMode, RecycleError, Timeouts};
use http::Uri;
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::SendRequest;
use tower_service::Service as _;

use super::alpn::AlpnLearner;
use super::{BoxError, Exchanged, Holding, SendBody, SendError, Slot};
use crate::metrics::Metrics;

/// How long a connection handed back may take to be ready for its next request (hyper's
/// connection task runs once after the end of a response body) before it is closed.
const READY_BOUND: Duration = Duration::from_secs(1);

/// Connections tried for one request that each closed before taking it (a new connection
/// always takes its first request, so this is only reached by a run of stale ones).
const MAX_ATTEMPTS: u32 = 3;

/// Creates and checks the pool's connections.
pub(super) struct Dialer<B> {
    connector: AlpnLearner,
    base: Uri,
    idle_timeout: Duration,
    _body: PhantomData<fn(B)>,
}

impl<B> managed::Manager for Dialer<B>
where
    B: SendBody,
{
    type Type = SendRequest<B>;
    type Error = BoxError;

    /// Boxed: a TLS connect and handshake is a large future, and every exchange's future
    /// would carry room for one inline.
    fn create(&self) -> impl Future<Output = Result<SendRequest<B>, BoxError>> + Send {
        let mut connector = self.connector.clone();
        let base = self.base.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
            let io = connector.call(base).await?;
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(
                        event = "upstream_connection_error",
                        error = %crate::telemetry::error_chain(&e),
                        "HTTP/1.1 connection to the PSP ended with an error"
                    );
                }
            });
            Ok(sender)
        })
    }

    /// A connection is handed out again if it is still open and was last handed out less
    /// than `--pool-idle-timeout` ago (deadpool records the hand-out, not the return, so a
    /// long exchange counts towards it: such a connection is replaced a little early).
    async fn recycle(&self, sender: &mut SendRequest<B>, metrics: &managed::Metrics) -> Recycled {
        if metrics.last_used() >= self.idle_timeout {
            return Err(RecycleError::message(
                "idle longer than --pool-idle-timeout",
            ));
        }
        if sender.is_ready() {
            return Ok(());
        }
        // Boxed: the timer is the rare path, and every checkout's future would carry it.
        match Box::pin(tokio::time::timeout(READY_BOUND, sender.ready())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RecycleError::Backend(e.into())),
            Err(_) => Err(RecycleError::message("not ready for another request")),
        }
    }
}

type Recycled = managed::RecycleResult<BoxError>;

/// The bounded pool of HTTP/1.1 connections to one PSP host.
pub(super) struct Http1Pool<B>
where
    B: SendBody,
{
    pool: managed::Pool<Dialer<B>>,
    /// Counts the requests that found every connection busy, and those sent again.
    metrics: Arc<Metrics>,
}

impl<B> Clone for Http1Pool<B>
where
    B: SendBody,
{
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// A connection from the pool, held by one exchange.
pub(super) type Held<B> = Object<Dialer<B>>;

impl<B> Http1Pool<B>
where
    B: SendBody + Unpin,
{
    /// At most `max` connections to `base`, made by `connector`; idle ones are closed after
    /// `idle_timeout` (checked when one is handed out, and by a sweep while a runtime runs);
    /// waits for a connection are counted in `metrics`.
    pub(super) fn new(
        connector: AlpnLearner,
        base: Uri,
        max: usize,
        idle_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let dialer = Dialer {
            connector,
            base,
            idle_timeout,
            _body: PhantomData,
        };
        // Last in, first out: the busiest connections stay warm, the rest age out.
        let pool = managed::Pool::builder(dialer)
            .max_size(max)
            .queue_mode(QueueMode::Lifo)
            .build()
            .expect("a pool without hooks or timeouts builds");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(pool.weak(), idle_timeout));
        }
        Self { pool, metrics }
    }

    /// One exchange on `conn`, a connection of this pool: `req` (origin-form, with its
    /// `Host`) until the response head. The connection comes back in the answer's
    /// [`Slot`], to be held until the response body ends; dropped before the head, the
    /// exchange ends in a task of its own ([`InFlight`]).
    ///
    /// A request the connection did not take (it was found closed before any byte of the
    /// request was written) is sent again on another; a request written is never resent.
    pub(super) fn send_on(&self, conn: Held<B>, req: http::Request<B>) -> Sending<B> {
        Sending {
            pool: self.clone(),
            state: Attempt::InFlight(in_flight(conn, req), 1),
        }
    }

    /// A connection: a free one, a new one while fewer than the bound are open, or else the
    /// next to come back (the wait is counted before it starts, so that a wait cut short by
    /// a timeout counts too).
    pub(super) async fn checkout(&self) -> Result<Held<B>, SendError> {
        let now = Timeouts {
            wait: Some(Duration::ZERO),
            ..Timeouts::default()
        };
        let got = match self.pool.timeout_get(&now).await {
            Err(PoolError::Timeout(_)) => {
                self.metrics.upstream_connection_wait();
                self.pool.get().await
            }
            got => got,
        };
        got.map_err(|e| match e {
            PoolError::Backend(e) => SendError::Connect(e),
            other => SendError::Connect(other.to_string().into()),
        })
    }

    /// `req` on a new connection, after `attempts` connections that closed before taking it.
    async fn send_again(self, req: http::Request<B>, attempts: u32) -> Exchanged<B> {
        let conn = self.checkout().await?;
        Sending {
            pool: self,
            state: Attempt::InFlight(in_flight(conn, req), attempts + 1),
        }
        .await
    }
}

/// `req` handed to `conn`, until the PSP's response head.
fn in_flight<B>(mut conn: Held<B>, req: http::Request<B>) -> InFlight<B>
where
    B: SendBody,
{
    let answer: Answer<B> = Box::pin(conn.try_send_request(req));
    InFlight(Some((answer, Slot(Holding::Connection(conn)))))
}

/// An exchange over the pool until the PSP's response head (see [`Http1Pool::send_on`]).
pub(super) struct Sending<B>
where
    B: SendBody + Unpin,
{
    pool: Http1Pool<B>,
    state: Attempt<B>,
}

enum Attempt<B>
where
    B: SendBody + Unpin,
{
    /// On a connection, the how-manieth.
    InFlight(InFlight<B>, u32),
    /// The request goes again on another connection (rare: boxed).
    Again(Pin<Box<dyn Future<Output = Exchanged<B>> + Send>>),
}

impl<B> Future for Sending<B>
where
    B: SendBody + Unpin,
{
    type Output = Exchanged<B>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (mut e, attempts) = match &mut this.state {
            Attempt::Again(again) => return again.as_mut().poll(cx),
            Attempt::InFlight(flight, attempts) => {
                let (answer, slot) = std::task::ready!(Pin::new(flight).poll(cx));
                match answer {
                    Ok(resp) => return Poll::Ready(Ok((resp, slot))),
                    // The slot, dropped, closes the connection that did not take it.
                    Err(e) => (e, *attempts),
                }
            }
        };
        match e.take_message() {
            Some(unsent) if attempts < MAX_ATTEMPTS => {
                tracing::debug!(
                    event = "upstream_retry",
                    error = %crate::telemetry::error_chain(e.error()),
                    "the connection closed before taking the request; sending it on another"
                );
                this.pool.metrics.upstream_retry();
                let again = this.pool.clone().send_again(unsent, attempts);
                this.state = Attempt::Again(Box::pin(again));
                Pin::new(this).poll(cx)
            }
            _ => Poll::Ready(Err(SendError::Exchange(e.into_error()))),
        }
    }
}

/// What hyper's `try_send_request` answers, and that answer as a future of its own.
type TrySent<B> = Result<http::Response<Incoming>, TrySendError<http::Request<B>>>;
type Answer<B> = Pin<Box<dyn Future<Output = TrySent<B>> + Send>>;

/// A request handed to its connection, until the PSP's response head.
///
/// Dropped before that (the app went away, or the request timeout passed), it does not
/// close the connection at once, which would make the next request pay a new TLS
/// handshake: a task of its own waits for the answer and reads its body to the end, then
/// hands the connection back, within [`DRAIN_BOUND`] and [`DRAIN_MAX_BYTES`]; past either,
/// or on any error, the connection is closed. The answer goes nowhere: it is not the app's
/// any more, and the PSP has the request either way. Boxed: the exchange's own future
/// cannot be moved into that task once polled. `None` once the answer came.
struct InFlight<B>(Option<(Answer<B>, Slot<B>)>)
where
    B: SendBody;

/// How long an abandoned exchange may take to end before its connection is closed.
const DRAIN_BOUND: Duration = Duration::from_secs(1);

/// The most response body an abandoned exchange reads to keep its connection.
const DRAIN_MAX_BYTES: usize = 64 * 1024;

impl<B> Future for InFlight<B>
where
    B: SendBody,
{
    type Output = (TrySent<B>, Slot<B>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (answer, _) = this.0.as_mut().expect("InFlight polled after its answer");
        let answer = std::task::ready!(answer.as_mut().poll(cx));
        let (_, slot) = this.0.take().expect("still in flight");
        Poll::Ready((answer, slot))
    }
}

impl<B> Drop for InFlight<B>
where
    B: SendBody,
{
    fn drop(&mut self) {
        let Some((answer, slot)) = self.0.take() else {
            return;
        };
        // Outside a runtime (never, in the sidecar) the slot is dropped: connection closed.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(answer, slot));
        }
    }
}

/// The end of an exchange nobody waits for: its connection back to the pool if the answer
/// comes, whole, in time; closed otherwise.
async fn drain<B>(answer: Answer<B>, mut slot: Slot<B>)
where
    B: SendBody,
{
    let ended = tokio::time::timeout(DRAIN_BOUND, async move {
        let mut body = answer.await.ok()?.into_body();
        let mut read = 0;
        while let Some(frame) = body.frame().await {
            read += frame.ok()?.data_ref().map_or(0, Bytes::len);
            if read > DRAIN_MAX_BYTES {
                return None;
            }
        }
        Some(())
    })
    .await;
    let kept = matches!(ended, Ok(Some(())));
    if kept {
        slot.finished();
    }
    tracing::debug!(
        event = "upstream_abandoned",
        connection = if kept { "kept" } else { "closed" },
        "an exchange the app gave up on before the PSP's head ended"
    );
}

/// Take `conn` out of the pool (its place is free at once) and close it.
pub(super) fn close<B>(conn: Held<B>)
where
    B: SendBody,
{
    drop(Object::take(conn));
}

/// Close idle connections older than `idle_timeout`, until the pool is gone.
async fn sweep<B>(pool: managed::WeakPool<Dialer<B>>, idle_timeout: Duration)
where
    B: SendBody,
{
    let every = (idle_timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.retain(|sender, metrics| !sender.is_closed() && metrics.last_used() < idle_timeout);
    }
}
