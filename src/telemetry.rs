//! Logging set-up and the redaction helpers every module uses to name a secret without
//! showing it.
//!
//! Owns: the `tracing` subscriber (text or JSON, filtered by `--log-level`/`RUST_LOG`) and
//! [`fingerprint`], the short hash that identifies a token in logs.

use tracing_subscriber::EnvFilter;

/// Output format of the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber. `filter` is an `EnvFilter` directive such as `info` or
/// `pix_auth_proxy=debug,hyper=info`.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("--log-level {filter:?}: {e}"))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// A short, stable, non-reversible label for a secret value: the first 8 hex digits of its
/// SHA-256. Enough to tell two tokens apart in logs, useless to an attacker.
pub fn fingerprint(secret: &[u8]) -> String {
    hex(&crate::tls::sha256(secret)[..4])
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// The first error of type `T` in `err`'s chain, looking through `io::Error` wrappers
/// (rustls and tokio-rustls hide their errors inside one).
pub fn find_cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Render an error and its whole `source()` chain on one line: hyper's and rustls'
/// `Display` only show the outermost layer.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_short_and_does_not_contain_the_secret() {
        let fp = fingerprint(b"eyJhbGciOi.secret.token");
        assert_eq!(fp.len(), 8);
        assert!(!fp.contains("eyJ"));
        assert_ne!(fp, fingerprint(b"another"));
    }

    #[test]
    fn error_chain_shows_every_layer() {
        let inner = std::io::Error::other("connection reset");
        let outer = std::io::Error::other(Wrapper(inner));
        let text = error_chain(&outer);
        assert!(text.contains("wrapped"), "{text}");
        assert!(text.contains("connection reset"), "{text}");
    }

    #[derive(Debug)]
    struct Wrapper(std::io::Error);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "wrapped")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
