//! Bounds on every app connection, whatever protocol it speaks: a deadline for its first
//! request, and an idle limit once it is quiet.
//!
//! Owns: [`Tracked`], the socket wrapper that counts I/O (one relaxed atomic add per read or
//! write that moved bytes, no clock read), [`ConnState`] with the requests started and in
//! flight, [`watch`], the per-connection timer that decides when a connection has had
//! its chance, and [`spawn`], which runs that timer (and the server's stop signal) on a task
//! of its own and hands its verdicts to the connection through an [`Interrupt`]: the
//! connection's task then polls one atomic per wake-up instead of a timer and a channel. hyper bounds an HTTP/1.1 request head itself (`header_read_timeout`) but has
//! no deadline for an HTTP/2 preface, SETTINGS and first request, and no idle limit for
//! either protocol: a connection that opens and says nothing, or stops reading its
//! response, would otherwise hold a connection slot forever.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf, Take};
use tokio::sync::watch as signal;
use tokio::time::Instant;

/// What the watchdog sees of one connection.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Bumped whenever bytes move in either direction.
    activity: AtomicU64,
    /// Requests whose handler has been called.
    started: AtomicU64,
    /// Requests whose handler has not produced a response head yet.
    in_flight: AtomicU64,
    /// The latest verdict not yet taken by the connection (0: none; see [`Verdict::code`]).
    verdict: std::sync::atomic::AtomicU8,
    /// Wakes the connection's task when a verdict arrives.
    waker: AtomicWaker,
}

impl ConnState {
    /// Count a request from the moment its handler is called until the guard drops (when
    /// the handler has produced the response head).
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight on a connection; see [`ConnState::request`].
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the watchdog gave up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No complete request within the header read timeout: close at once.
    NoRequest,
    /// No request in flight and no byte moved for the idle timeout: close gracefully.
    Idle,
    /// The server is shutting down: close gracefully, within the drain deadline.
    Stop,
}

impl Verdict {
    fn code(self) -> u8 {
        match self {
            Verdict::NoRequest => 1,
            Verdict::Idle => 2,
            Verdict::Stop => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Verdict::NoRequest),
            2 => Some(Verdict::Idle),
            3 => Some(Verdict::Stop),
            _ => None,
        }
    }
}

/// Run the bounds of `state`'s connection ([`watch`]) and the server's `stop` signal on a
/// task of their own; the connection learns their verdicts through [`Interrupt`]. The task
/// ends with the returned guard (drop it when the connection ends).
pub fn spawn(
    state: &Arc<ConnState>,
    first_request: Duration,
    idle: Duration,
    mut stop: signal::Receiver<bool>,
) -> WatchdogGuard {
    let state = state.clone();
    let task = tokio::spawn(async move {
        let bounds = watch(&state, first_request, idle);
        let mut bounds = std::pin::pin!(bounds);
        let verdict = tokio::select! {
            verdict = bounds.as_mut() => verdict,
            // A closed channel means the server is gone: stop as well.
            _ = stop.wait_for(|stop| *stop) => Verdict::Stop,
        };
        state.raise(verdict);
        if verdict == Verdict::Stop {
            // Draining: an idle or silent connection still goes before the drain deadline.
            let verdict = bounds.await;
            state.raise(verdict);
        }
    });
    WatchdogGuard(task.abort_handle())
}

/// Stops a connection's watchdog task when dropped.
#[derive(Debug)]
pub struct WatchdogGuard(tokio::task::AbortHandle);

impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ConnState {
    fn raise(&self, verdict: Verdict) {
        self.verdict.store(verdict.code(), Ordering::Release);
        self.waker.wake();
    }

    /// The next verdict for this connection (see [`spawn`]).
    pub fn interrupt(&self) -> Interrupt<'_> {
        Interrupt(self)
    }
}

/// Resolves with the next verdict the watchdog raised for a connection.
#[derive(Debug)]
pub struct Interrupt<'a>(&'a ConnState);

impl std::future::Future for Interrupt<'_> {
    type Output = Verdict;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Verdict> {
        let state = self.0;
        if let Some(v) = Verdict::from_code(state.verdict.swap(0, Ordering::Acquire)) {
            return Poll::Ready(v);
        }
        state.waker.register(cx.waker());
        // A verdict raised between the check and the registration would be missed.
        match Verdict::from_code(state.verdict.swap(0, Ordering::Acquire)) {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending,
        }
    }
}

/// Resolve when `state`'s connection has had its chance: no first request within
/// `first_request`, or quiet (no request in flight, no byte moving) for `idle`, counted from
/// the connection's start. Runs forever otherwise; drop it to stop.
pub async fn watch(state: &ConnState, first_request: Duration, idle: Duration) -> Verdict {
    let start = Instant::now();
    let first_deadline = start + first_request;
    // Sample the activity counter a few times per idle period rather than reading the clock
    // on every read and write; quiet is declared within a quarter period of `idle`.
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut seen = state.activity.load(Ordering::Relaxed);
    let mut quiet_since = start;
    let mut next = start + tick;
    loop {
        let waiting_for_first = state.started.load(Ordering::Relaxed) == 0;
        let wake = if waiting_for_first {
            next.min(first_deadline)
        } else {
            next
        };
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        if state.started.load(Ordering::Relaxed) == 0 && now >= first_deadline {
            return Verdict::NoRequest;
        }
        if now < next {
            continue;
        }
        next = now + tick;
        let now_seen = state.activity.load(Ordering::Relaxed);
        if now_seen != seen || state.in_flight.load(Ordering::Relaxed) > 0 {
            seen = now_seen;
            quiet_since = now;
        } else if now.duration_since(quiet_since) >= idle {
            return Verdict::Idle;
        }
    }
}

/// The most one read from a connection takes: one byte under hyper's initial read buffer.
///
/// hyper's HTTP/1 server reads into a buffer that starts at 8 KiB and doubles whenever a
/// read fills it, up to its maximum (`--max-header-bytes`, 64 KiB). A 16 KiB POST arrives
/// in one read, so each connection that carried one kept a 32 KiB buffer, and twice that
/// while its body waited in hyper's body channel (the body pins the buffer it was split
/// from, and hyper's next read allocates another). Reads that never fill 8 KiB keep the
/// buffer at 8 KiB; a longer head still grows it, 8 KiB a read, up to the head limit.
/// Measured: peak RSS at 256 app connections sending 16 KiB POSTs, 30.6-32.5 MiB before.
const MAX_READ: usize = 8 * 1024 - 1;

/// A socket that reports its I/O to a [`ConnState`] and reads at most [`MAX_READ`] bytes
/// at a time.
#[derive(Debug)]
pub struct Tracked<T> {
    /// `Take`, its limit reset before every read, caps each read without unsafe code.
    inner: Take<T>,
    state: Arc<ConnState>,
}

impl<T: AsyncRead> Tracked<T> {
    /// Wrap `inner`.
    pub fn new(inner: T, state: Arc<ConnState>) -> Self {
        Self {
            inner: inner.take(MAX_READ as u64),
            state,
        }
    }

    fn moved(&self, n: usize) {
        if n > 0 {
            self.state.activity.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        this.inner.set_limit(MAX_READ as u64);
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.moved(buf.filled().len() - before);
        }
        polled
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(this.inner.get_mut()).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.moved(n);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(this.inner.get_mut()).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            this.moved(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.get_ref().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner.get_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_takes_at_most_max_read_bytes_and_every_byte_arrives_in_order() {
        use tokio::io::AsyncWriteExt as _;
        let sent: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        let (mut app, sidecar) = tokio::io::duplex(128 * 1024);
        app.write_all(&sent).await.unwrap();
        drop(app);
        let state = Arc::new(ConnState::default());
        let mut conn = Tracked::new(sidecar, state.clone());
        let mut got = Vec::new();
        let mut reads = 0;
        loop {
            // As hyper asks: a buffer far larger than the cap.
            let mut buf = vec![0u8; 64 * 1024];
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= MAX_READ, "one read took {n} bytes");
            got.extend_from_slice(&buf[..n]);
            reads += 1;
        }
        assert!(got == sent, "the bytes read differ from the bytes sent");
        assert_eq!(reads, sent.len().div_ceil(MAX_READ));
        assert_eq!(state.activity.load(Ordering::Relaxed), reads as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_given_up_at_the_first_request_deadline() {
        let state = ConnState::default();
        let started = Instant::now();
        let verdict = watch(&state, Duration::from_secs(2), Duration::from_secs(60)).await;
        assert_eq!(verdict, Verdict::NoRequest);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_stop_signal_then_idleness_reach_the_connection_through_its_interrupt() {
        let state = Arc::new(ConnState::default());
        let started = Instant::now();
        drop(state.request());
        let (stop, stop_rx) = signal::channel(false);
        let _watchdog = spawn(
            &state,
            Duration::from_secs(10),
            Duration::from_secs(5),
            stop_rx,
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.send(true).unwrap();
        assert_eq!(state.interrupt().await, Verdict::Stop);
        // Still watched while draining: quiet since the start, idle at ~5 s.
        assert_eq!(state.interrupt().await, Verdict::Idle);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(5) && took <= Duration::from_millis(6_250),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_counts_from_the_start_not_from_the_first_request_deadline() {
        let state = Arc::new(ConnState::default());
        // A request at once, then silence: idle after ~2 s although the first-request
        // deadline is 10 s.
        drop(state.request());
        let started = Instant::now();
        let verdict = watch(&state, Duration::from_secs(10), Duration::from_secs(2)).await;
        assert_eq!(verdict, Verdict::Idle);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took <= Duration::from_millis(2_500),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_is_idle_but_a_request_in_flight_or_moving_bytes_is_not() {
        let state = Arc::new(ConnState::default());
        let guard = state.request();
        let s2 = state.clone();
        let started = Instant::now();
        let watcher = tokio::spawn(async move {
            watch(&s2, Duration::from_secs(1), Duration::from_secs(4)).await
        });
        // A slow upstream: the request stays in flight for 10 s without a byte moving.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!watcher.is_finished());
        drop(guard);
        // Bytes keep moving for another 10 s (a response body being streamed).
        for _ in 0..20 {
            state.activity.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(!watcher.is_finished());
        assert_eq!(watcher.await.unwrap(), Verdict::Idle);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(24) && took <= Duration::from_secs(25),
            "{took:?}"
        );
    }
}
