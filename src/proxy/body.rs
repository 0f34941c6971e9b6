//! The app's request body on its way to the PSP, watched so that a body the app itself
//! breaks (a bad chunk size, a connection closed before its `Content-Length`) is blamed on
//! the app and not on the PSP.
//!
//! hyper's client reports a failing request body as one more failed exchange, in the same
//! error type as a PSP that broke the connection; only the body itself knows which side
//! failed first.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The app's streamed request body; remembers the first error it yielded.
#[derive(Debug)]
pub struct AppBody {
    inner: Incoming,
    failed: Arc<OnceLock<String>>,
}

/// Tells, after the exchange, whether the app's body failed (and how).
#[derive(Debug, Clone)]
pub struct AppBodyWatch(Arc<OnceLock<String>>);

impl AppBody {
    /// Wrap the app's body; the watch says later whether reading it failed.
    pub fn new(inner: Incoming) -> (Self, AppBodyWatch) {
        let failed = Arc::new(OnceLock::new());
        (
            Self {
                inner,
                failed: failed.clone(),
            },
            AppBodyWatch(failed),
        )
    }
}

impl AppBodyWatch {
    /// The error reading the app's body, if it failed.
    pub fn failure(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            // hyper's text for a body error names the framing problem; it holds no app data.
            let _ = this.failed.set(crate::telemetry::error_chain(e));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
