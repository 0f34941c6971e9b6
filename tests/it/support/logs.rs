//! Captures every log line the library emits in this test process, so tests can assert that
//! no secret or token ever reaches a log.

use std::io::Write;
use std::sync::{Mutex, Once, OnceLock};

static BUFFER: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
static INIT: Once = Once::new();

struct Tee;

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        BUFFER
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .extend_from_slice(buf);
        // Keep the lines in the test's output: `eprint!` (unlike writing to the stderr
        // handle) is captured by the test harness and shown only for failing tests.
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install the capturing subscriber at TRACE for every crate (once per process).
pub fn init() {
    INIT.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_writer(|| Tee)
            .with_ansi(false)
            .try_init();
    });
}

/// Everything logged so far in this process. Under `cargo test` that is every test's TRACE
/// lines, and every thread that logs waits on the buffer's lock: the bytes are copied under
/// it and checked as UTF-8 after.
pub fn captured() -> String {
    let bytes = BUFFER.get_or_init(Default::default).lock().unwrap().clone();
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Panic if any of `secrets` appears in the captured logs.
pub fn assert_clean(secrets: &[String]) {
    let logs = captured();
    assert!(
        !logs.is_empty(),
        "no logs were captured: the check would prove nothing"
    );
    for s in secrets {
        assert!(!s.is_empty());
        assert!(
            !logs.contains(s.as_str()),
            "a secret or token of {} bytes appears in the logs",
            s.len()
        );
    }
}
