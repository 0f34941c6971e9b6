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
//!
//! [`request_slice`] is the other half (`--sched-slice`, 100 µs by default): since Linux 6.12
//! a task under the fair scheduler may ask for a shorter slice than the default. It gets no
//! more CPU time for it, but earlier virtual deadlines (a deadline is the virtual runtime
//! plus the slice), so when the proxy wakes up to a request while another process runs on
//! its core, it may preempt it instead of waiting out that process's burst. Measured with a
//! process taking 20 % of the proxy's core in 2 ms bursts: a p99 of 1.4–1.8 ms instead of
//! 2.0–2.5 (BENCHMARKS.md).

use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

use crate::config::{MAX_SCHED_SLICE, MIN_SCHED_SLICE};

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

/// What [`request_slice`] did to the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceOutcome {
    /// The kernel runs this thread with the asked-for slice.
    Granted,
    /// The kernel took the request but kept its default slice: it has no custom slices for
    /// fair tasks (Linux before 6.12).
    Unsupported,
    /// The thread runs under a policy other than the fair scheduler's (`SCHED_FIFO`,
    /// `SCHED_IDLE`, … set by whoever started the process): left as it is.
    OtherPolicy(u32),
}

/// Ask the kernel to run the calling thread with `slice` as its fair-scheduler slice
/// (clamped, as the kernel would, to [`MIN_SCHED_SLICE`]..=[`MAX_SCHED_SLICE`]). Everything
/// else about how the thread is scheduled (policy, nice value, reset-on-fork) stays as it
/// was. An error (a seccomp profile refusing the call, a kernel without `sched_setattr`)
/// changes nothing.
pub fn request_slice(slice: Duration) -> io::Result<SliceOutcome> {
    let mut attr = sched::get()?;
    if !matches!(attr.policy, sched::SCHED_OTHER | sched::SCHED_BATCH) {
        return Ok(SliceOutcome::OtherPolicy(attr.policy));
    }
    let wanted =
        u64::try_from(slice.clamp(MIN_SCHED_SLICE, MAX_SCHED_SLICE).as_nanos()).unwrap_or(u64::MAX);
    attr.runtime = wanted;
    // Only the flag that describes the thread itself is passed back; the others ask the
    // kernel to keep or clamp fields this request does not carry.
    attr.flags &= sched::SCHED_FLAG_RESET_ON_FORK;
    sched::set(&attr)?;
    // Before 6.12 the kernel accepts the request, ignores the slice and reports none back.
    Ok(if sched::get()?.runtime == wanted {
        SliceOutcome::Granted
    } else {
        SliceOutcome::Unsupported
    })
}

/// `sched_getattr` and `sched_setattr` on the calling thread. No maintained crate wraps them
/// (rustix and nix do not; glibc only from 2.41), so this is the crate's one use of `unsafe`.
#[allow(unsafe_code)]
mod sched {
    use std::io;

    pub(super) const SCHED_OTHER: u32 = 0;
    pub(super) const SCHED_BATCH: u32 = 3;
    pub(super) const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

    /// `struct sched_attr` as the kernel first defined it (`SCHED_ATTR_SIZE_VER0`, 48
    /// bytes): the utilisation clamps that later versions add are left untouched.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct Attr {
        size: u32,
        pub(super) policy: u32,
        pub(super) flags: u64,
        nice: i32,
        priority: u32,
        /// For a fair task since Linux 6.12: its slice, in nanoseconds.
        pub(super) runtime: u64,
        deadline: u64,
        period: u64,
    }

    const SIZE: u32 = std::mem::size_of::<Attr>() as u32;
    const _: () = assert!(SIZE == 48);

    /// The calling thread's scheduling attributes.
    pub(super) fn get() -> io::Result<Attr> {
        let mut attr = Attr::default();
        // SAFETY: pid 0 is the calling thread; the kernel writes at most SIZE bytes (the size
        // passed) into `attr`, which is a live, writable `repr(C)` struct of exactly that size
        // whose every bit pattern is valid.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                0 as libc::c_long,
                &raw mut attr,
                libc::c_long::from(SIZE),
                0 as libc::c_long,
            )
        };
        if rc == 0 {
            Ok(attr)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Set the calling thread's scheduling attributes.
    pub(super) fn set(attr: &Attr) -> io::Result<()> {
        let attr = Attr {
            size: SIZE,
            ..*attr
        };
        // SAFETY: pid 0 is the calling thread; the kernel only reads `attr.size` (SIZE) bytes
        // from `attr`, a live `repr(C)` struct of exactly that size.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_setattr,
                0 as libc::c_long,
                &raw const attr,
                0 as libc::c_long,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
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

    /// Whether this kernel gives fair tasks the slice they ask for (Linux 6.12+).
    fn kernel_has_custom_slices() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>());
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (6, 12),
            _ => panic!("cannot read the kernel version from {release:?}"),
        }
    }

    #[test]
    fn a_thread_gets_the_slice_it_asks_for_and_keeps_the_rest() {
        // A thread of its own: the slice must not leak into other tests' threads.
        std::thread::spawn(|| {
            let before = sched::get().unwrap();
            let nice = thread_nice();
            let outcome = request_slice(Duration::from_micros(300)).unwrap();
            let after = sched::get().unwrap();
            assert_eq!(after.policy, before.policy, "the policy is kept");
            assert_eq!(after.flags, before.flags, "reset-on-fork is kept");
            assert_eq!(thread_nice(), nice, "the nice value is kept");
            if !kernel_has_custom_slices() {
                assert_eq!(outcome, SliceOutcome::Unsupported);
                return;
            }
            assert_eq!(outcome, SliceOutcome::Granted);
            assert_eq!(after.runtime, 300_000);
            // A request below the kernel's floor is raised to it, as the kernel would.
            assert_eq!(
                request_slice(Duration::from_micros(10)).unwrap(),
                SliceOutcome::Granted
            );
            assert_eq!(sched::get().unwrap().runtime, 100_000);
        })
        .join()
        .unwrap();
    }

    /// The calling thread's nice value, read the plain way (`/proc/thread-self/stat`, field 19).
    fn thread_nice() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
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
