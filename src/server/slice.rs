//! Handing the core back when our CPU time slice is over, not up to a tick later.
//!
//! Linux's fair scheduler (EEVDF, since 6.6) gives a running task a slice (0.7 ms ×
//! (1 + log2 of the CPUs, at most 8): 1.4 ms on 2 CPUs) but only looks at whether it is
//! over when something makes it account the task's time: the scheduler tick (every 4 ms at
//! `HZ=250`, Debian's and most cloud kernels' setting), a task waking or sleeping on that
//! CPU, or the task reading its own CPU clock. The high-resolution tick that would end the
//! slice on time is off by default (`HRTICK`).
//!
//! So when another process shares the proxy's core and the proxy stays busy, the proxy keeps
//! the core up to the next tick (measured: runs of 3.9–8 ms against a 1.4 ms slice). The
//! other task's claim grows while it waits; once it gets the core it keeps it for its whole
//! burst (2 ms in the bench's hog), and every request in flight waits that long. HAProxy,
//! which reads its thread's CPU clock around each poll, gives the core up at 1.4 ms, and the
//! other task's bursts come in two pieces (1.4 + 0.6 ms).
//!
//! [`checkpoint`], called as each request arrives, reads this thread's CPU clock at most
//! once per [`EVERY`]: a system call that makes the kernel account the running task, and if
//! its slice is over while another task waits, switch at the return to user space. When
//! nothing else wants the core, it costs that one system call and changes nothing. It does
//! not ask for more than the fair share (`sched_yield` would, and pushes the task's deadline
//! back a whole slice).

use std::cell::Cell;
use std::time::{Duration, Instant};

use rustix::time::{ClockId, DynamicClockId, clock_gettime_dynamic};

/// How often, at most, a busy thread lets the kernel account it: well inside the smallest
/// default slice, and a system call per 250 µs of work (0.1 % of a core) at most.
pub const EVERY: Duration = Duration::from_micros(250);

thread_local! {
    /// When this thread last let the kernel account it.
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Let the kernel account this thread's CPU time if it has not done so for [`EVERY`].
pub fn checkpoint() {
    let now = Instant::now();
    LAST.with(|last| {
        if due(last.get(), now) {
            last.set(Some(now));
            // The value is not needed: reading the clock is what makes the kernel look. An
            // error (a sandbox refusing the call) only means the kernel looks at its tick.
            let _ = clock_gettime_dynamic(DynamicClockId::Known(ClockId::ThreadCPUTime));
        }
    });
}

/// Whether a checkpoint is due at `now`, the last one having been at `last`.
fn due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_checkpoint_per_interval() {
        let t0 = Instant::now();
        assert!(due(None, t0), "the first request checks");
        assert!(
            !due(Some(t0), t0),
            "a second request at the same instant does not"
        );
        assert!(!due(Some(t0), t0 + EVERY / 2));
        assert!(
            due(Some(t0), t0 + EVERY),
            "one interval after the last check"
        );
        assert!(!due(Some(t0 + EVERY), t0 + EVERY + EVERY / 2));
        assert!(
            due(Some(t0), t0 + 3 * EVERY),
            "after a quiet spell, the next request checks"
        );
        // An instant before the last check never makes it due.
        assert!(!due(Some(t0 + EVERY), t0));
    }

    #[test]
    fn checkpoint_records_when_it_read_the_clock() {
        // A fresh thread: its first request reads the clock and records the instant, which
        // the next request's `due` is measured from.
        std::thread::spawn(|| {
            assert_eq!(LAST.with(Cell::get), None);
            let before = Instant::now();
            checkpoint();
            let after = Instant::now();
            let last = LAST
                .with(Cell::get)
                .expect("the first checkpoint is recorded");
            assert!(
                before <= last && last <= after,
                "{before:?} <= {last:?} <= {after:?}"
            );
        })
        .join()
        .unwrap();
    }
}
