//! The deadline of an exchange with the PSP: one timer, shared by every step (waiting for a
//! connection slot, the response head, a small body read whole).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Sleep;

/// `fut`'s output, or `None` if `deadline` passes first. `fut` is polled first, so one that
/// is ready wins over a deadline that has just passed. Every step of an exchange shares the
/// exchange's one timer (registered with the runtime once), instead of a timer per step.
pub(super) fn within<F: Future>(deadline: Pin<&mut Sleep>, fut: F) -> Within<'_, F> {
    Within { deadline, fut }
}

pin_project_lite::pin_project! {
    /// The future of [`within`]: a struct rather than an `async fn`, which would keep `fut`
    /// twice (as its argument and as the pinned local it polls).
    pub(super) struct Within<'a, F> {
        deadline: Pin<&'a mut Sleep>,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        this.deadline.as_mut().poll(cx).map(|()| None)
    }
}
