//! What one exchange holds of the PSP, from before its request is built to the end of its
//! response body: the way it took ([`Reserved`], taken by [`Reserving`]), the exchange until
//! the response head ([`Sending`]), the HTTP/1.1 connection or discovery slot it keeps until
//! its body ends ([`Slot`]), and why it got no head ([`SendError`]). The clients that hand
//! these out live in the parent module.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::OwnedSemaphorePermit;

use super::{BoxError, SendBody, http1};

/// The right to run one HTTP/1.1 exchange, so to use one HTTP/1.1 connection, from the
/// request (the connection was [`Reserved`] before the app's body was read) until the end
/// of its response body. Empty for an exchange that goes over HTTP/2.
///
/// Without a bound, N app requests in flight keep N TLS connections to the PSP open, each
/// with ~46 KB of buffers (hyper's request channel, read and write buffers, rustls, its
/// task): 256 app connections meant 256 upstream connections and +12 MB. With the bound,
/// requests beyond it wait for a connection to come free instead of opening one. One
/// HTTP/1.1 PSP connection carries thousands of requests a second when the PSP answers
/// fast; when it answers in 200 ms, 32 connections carry ~160 a second.
///
/// An exchange over the HTTP/1.1 pool holds the connection itself: [`Slot::finished`] at
/// the clean end of the response body hands it back for the next exchange; a slot dropped
/// before that (a body broken off, an app gone mid-body) closes it, since the PSP may still
/// be sending on it. An exchange given up before the response head reads the answer
/// nobody waits for, within bounds, to keep its connection (see `http1::InFlight`).
pub struct Slot<B>(pub(super) Holding<B>)
where
    B: SendBody;

pub(super) enum Holding<B>
where
    B: SendBody,
{
    Nothing,
    /// A discovery slot: hyper-util puts the connection back itself.
    Permit(#[allow(dead_code)] OwnedSemaphorePermit),
    Connection(http1::Held<B>),
}

impl<B> Slot<B>
where
    B: SendBody,
{
    /// The response body ended cleanly: the connection is free for another exchange.
    pub fn finished(&mut self) {
        self.0 = Holding::Nothing;
    }
}

impl<B> Default for Slot<B>
where
    B: SendBody,
{
    fn default() -> Self {
        Self(Holding::Nothing)
    }
}

impl<B> std::fmt::Debug for Slot<B>
where
    B: SendBody,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Holding::Nothing => "Slot(none)",
            Holding::Permit(_) => "Slot(discovery)",
            Holding::Connection(_) => "Slot(http/1.1 connection)",
        })
    }
}

impl<B> Drop for Slot<B>
where
    B: SendBody,
{
    fn drop(&mut self) {
        if let Holding::Connection(conn) = std::mem::replace(&mut self.0, Holding::Nothing) {
            http1::close(conn);
        }
    }
}

/// Why an exchange got no response head from the PSP.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// From the discovery or HTTP/2 client.
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
    /// No HTTP/1.1 connection could be made.
    #[error("client error (Connect)")]
    Connect(#[source] BoxError),
    /// The HTTP/1.1 exchange broke after the request was handed to its connection.
    #[error("client error (SendRequest)")]
    Exchange(#[source] hyper::Error),
}

impl SendError {
    /// Whether no connection could be made (nothing was sent).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Pooled(e) => e.is_connect(),
            SendError::Connect(_) => true,
            SendError::Exchange(_) => false,
        }
    }
}

/// What an exchange gets from the PSP: the response head and the slot it holds, or why not.
pub(super) type Exchanged<B> = Result<(http::Response<hyper::body::Incoming>, Slot<B>), SendError>;

/// A way to the PSP taken for one exchange before its request is built
/// ([`UpstreamClient::reserve`]): one of the pool's HTTP/1.1 connections, a discovery
/// slot, or nothing for HTTP/2, whose requests share one connection. Dropped unused, an
/// HTTP/1.1 connection goes back to the pool: nothing was sent on it.
pub struct Reserved<B>(pub(super) Lane<B>)
where
    B: SendBody;

pub(super) enum Lane<B>
where
    B: SendBody,
{
    Http2,
    /// `None` only if the semaphore were closed (it never is).
    Discover(Option<OwnedSemaphorePermit>),
    Http1(http1::Held<B>),
}

impl<B> std::fmt::Debug for Reserved<B>
where
    B: SendBody,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Lane::Http2 => "Reserved(h2)",
            Lane::Discover(_) => "Reserved(discovery)",
            Lane::Http1(_) => "Reserved(http/1.1 connection)",
        })
    }
}

/// Taking a [`Reserved`] way to the PSP: at once for HTTP/2 and a free discovery slot;
/// otherwise boxed, so that the future of every request does not carry room for a wait.
pub struct Reserving<B>(pub(super) ReserveState<B>)
where
    B: SendBody;

pub(super) enum ReserveState<B>
where
    B: SendBody,
{
    Ready(Option<Reserved<B>>),
    Waiting(Pin<Box<dyn Future<Output = Result<Reserved<B>, SendError>> + Send>>),
}

impl<B> Future for Reserving<B>
where
    B: SendBody,
{
    type Output = Result<Reserved<B>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Not structurally pinned: the waiting future is boxed.
        match &mut self.get_mut().0 {
            ReserveState::Ready(reserved) => Poll::Ready(Ok(reserved
                .take()
                .expect("Reserving polled after completion"))),
            ReserveState::Waiting(waiting) => waiting.as_mut().poll(cx),
        }
    }
}

/// An exchange from [`UpstreamClient::send_on`] until the PSP's response head.
pub struct Sending<B>(pub(super) SendState<B>)
where
    B: SendBody + Unpin;

pub(super) enum SendState<B>
where
    B: SendBody + Unpin,
{
    /// Handed to a hyper-util pool, with its slot.
    Sent {
        answer: hyper_util::client::legacy::ResponseFuture,
        slot: Option<Slot<B>>,
    },
    /// On a connection of the HTTP/1.1 pool.
    Http1(http1::Sending<B>),
    /// Still to take its way to the PSP (boxed, with its request).
    Boxed(Pin<Box<dyn Future<Output = Exchanged<B>> + Send>>),
}

impl<B> Future for Sending<B>
where
    B: SendBody + Unpin,
{
    type Output = Exchanged<B>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Exchanged<B>> {
        // No variant is structurally pinned: the futures are boxed or Unpin.
        match &mut self.get_mut().0 {
            SendState::Sent { answer, slot } => {
                let resp = std::task::ready!(Pin::new(answer).poll(cx))?;
                Poll::Ready(Ok((resp, slot.take().unwrap_or_default())))
            }
            SendState::Http1(sending) => Pin::new(sending).poll(cx),
            SendState::Boxed(boxed) => boxed.as_mut().poll(cx),
        }
    }
}
