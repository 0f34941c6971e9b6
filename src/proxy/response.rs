//! The PSP's response on its way back to the app: hop-by-hop headers cleaned, and the body
//! read ahead so that a small answer reaches the app in one write.
//!
//! hyper writes a response head as soon as it has it and flushes whenever the body has
//! nothing ready, so a body relayed frame by frame costs the app connection a second write
//! (and the app a second wake-up): for a chunked body, the last-chunk marker comes after
//! the data. Most PSP answers (a charge, a Pix, an error) are a few KiB, so they are read
//! whole first:
//! - a body of known length up to [`READ_WHOLE_LIMIT`] is read to its end (by the
//!   exchange's deadline); a PSP that breaks it off gives a clean 502 instead of a cut;
//! - a body of unknown length (chunked, or h2 without `content-length`) is read while its
//!   frames are already there: its first frame is awaited (by the deadline), the following
//!   ones only as long as they arrive without waiting on the network (one yield lets the
//!   connection's task decode what it has already received). If one is not there, or the
//!   limit is passed, what was read goes first and the rest streams;
//! - a longer body streams from the start.
//!
//! A streamed body holds its exchange's HTTP/1.1 connection [`Slot`] until it ends; the
//! connection is handed back only after a clean end.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::{ProxyError, ResponseBody, Slot, rewrite, within};

/// Bodies up to this size are read whole before the response goes to the app.
pub const READ_WHOLE_LIMIT: u64 = 64 * 1024;

/// The PSP's response, ready for the app. `timeout` is only named in the error when the
/// deadline passes. Not an `async fn`: the head is cleaned now, and the future keeps it once.
pub fn relay<'a>(
    resp: Response<Incoming>,
    mut slot: Slot,
    deadline: Pin<&'a mut Sleep>,
    timeout: std::time::Duration,
) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + use<'a> {
    let (mut parts, mut body) = resp.into_parts();
    rewrite::clean_response_headers(&mut parts.headers);
    let late = move || ProxyError::UpstreamTimeout(timeout);
    async move {
        let body = match body.size_hint().exact() {
            Some(n) if n <= READ_WHOLE_LIMIT => {
                let whole = within(deadline, body.collect())
                    .await
                    .ok_or_else(late)?
                    .map_err(ProxyError::UpstreamBody)?;
                slot.finished();
                Either::Right(Full::new(whole.to_bytes()))
            }
            Some(_) => Either::Left(PspBody::new(body, VecDeque::new(), slot)),
            None => match within(deadline, read_ahead(&mut body))
                .await
                .ok_or_else(late)?
                .map_err(ProxyError::UpstreamBody)?
            {
                ReadAhead::Whole(bytes) => {
                    slot.finished();
                    Either::Right(Full::new(bytes))
                }
                ReadAhead::Started(read) => Either::Left(PspBody::new(body, read, slot)),
            },
        };
        Ok(Response::from_parts(parts, body))
    }
}

enum ReadAhead {
    /// The body ended: all of it.
    Whole(Bytes),
    /// The frames read so far; the rest is still to come.
    Started(VecDeque<Frame<Bytes>>),
}

/// Reads a body of unknown length while its frames come without waiting on the network.
async fn read_ahead(body: &mut Incoming) -> Result<ReadAhead, hyper::Error> {
    let mut read = VecDeque::new();
    let mut len = 0u64;
    let mut next = body.frame().await;
    loop {
        match next {
            None => return Ok(ReadAhead::Whole(concat(read))),
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => {
                let trailers = frame.is_trailers();
                len += frame.data_ref().map_or(0, |d| d.len() as u64);
                read.push_back(frame);
                if trailers || len > READ_WHOLE_LIMIT {
                    // Trailers travel as frames; a large body streams.
                    return Ok(ReadAhead::Started(read));
                }
            }
        }
        next = match poll_now(body) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                // The connection's task was woken by that poll: let it decode what it has.
                tokio::task::yield_now().await;
                match poll_now(body) {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => return Ok(ReadAhead::Started(read)),
                }
            }
        };
    }
}

/// One poll of the body's next frame, without waiting.
fn poll_now(body: &mut Incoming) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
    let waker = std::task::Waker::noop();
    Pin::new(body).poll_frame(&mut Context::from_waker(waker))
}

/// The data of frames that are all data (trailers end a read-ahead early).
fn concat(mut frames: VecDeque<Frame<Bytes>>) -> Bytes {
    if frames.len() == 1 {
        if let Some(Ok(data)) = frames.pop_front().map(Frame::into_data) {
            return data;
        }
        return Bytes::new();
    }
    let mut all = BytesMut::new();
    for frame in frames {
        if let Ok(data) = frame.into_data() {
            all.extend_from_slice(&data);
        }
    }
    all.freeze()
}

/// The PSP's response body, streamed to the app: first the frames read ahead, then the
/// rest. Holds the exchange's HTTP/1.1 connection [`Slot`] (the connection is busy until
/// the body ends) and frees it at the end of the body, or when the app goes away and the
/// body is dropped.
#[derive(Debug)]
pub struct PspBody {
    read: VecDeque<Frame<Bytes>>,
    inner: Incoming,
    slot: Option<Slot>,
}

impl PspBody {
    fn new(inner: Incoming, read: VecDeque<Frame<Bytes>>, slot: Slot) -> Self {
        Self {
            read,
            inner,
            slot: Some(slot),
        }
    }
}

impl PspBody {
    /// Give up the slot: back to the pool if the body ended `clean`ly, else closed.
    fn end(&mut self, clean: bool) {
        if let Some(mut slot) = self.slot.take() {
            if clean {
                slot.finished();
            }
        }
    }
}

impl Body for PspBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            // The end of the body (hyper's writer does not poll again once a body says it
            // ended, so the last frame counts): the connection is free for another exchange.
            Poll::Ready(None) => this.end(true),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.end(true),
            // A broken body: the connection goes with it.
            Poll::Ready(Some(Err(_))) => this.end(false),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self
            .read
            .iter()
            .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
            .sum();
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + read);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}
