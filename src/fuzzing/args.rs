//! The flag-parsing target: the CLI's value parsers and clap over fuzzed argv.

use clap::Parser as _;

use crate::cli::{Cli, RunArgs};
use crate::config::{Config, SecretEnv};
use crate::proxy::UpstreamTarget;

/// Flag parsing. The bytes, split at NUL bytes, are (lossily) UTF-8 arguments after the
/// program name. The first argument also goes to the duration parser (an accepted duration
/// prints and parses back to itself) and the URL check (an accepted URL is `https` with a
/// host, and makes an upstream target, which the sidecar `expect`s). Then `Cli` and
/// `RunArgs` parse the whole argv; accepted `RunArgs` without a `/` in any argument (so
/// that only files under the working directory can be named) go through
/// [`Config::from_args`], whose accepted values must hold its own bounds.
pub fn cli_args(data: &[u8]) {
    let args: Vec<String> = data
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let first = args.first().map(String::as_str).unwrap_or_default();
    check_duration(first);
    check_url(first);

    let argv = || std::iter::once("pix-auth-proxy".to_owned()).chain(args.iter().cloned());
    let _ = Cli::try_parse_from(argv());
    let Ok(run) = RunArgs::try_parse_from(argv()) else {
        return;
    };
    if args.iter().any(|a| a.contains('/')) {
        return;
    }
    if let Ok(config) = Config::from_args(&run, SecretEnv::default()) {
        assert!((0.1..=0.95).contains(&config.refresh.ratio));
        assert!(UpstreamTarget::new(&config.upstream).is_some());
        assert_eq!(config.upstream.scheme_str(), Some("https"));
        assert_eq!(config.token.url.scheme_str(), Some("https"));
        assert!(!config.server.header_read_timeout.is_zero());
        assert!(!config.proxy.request_timeout.is_zero());
    }
}

fn check_duration(text: &str) {
    let Ok(d) = crate::cli::duration(text) else {
        return;
    };
    let printed = humantime::format_duration(d).to_string();
    let again = crate::cli::duration(&printed)
        .unwrap_or_else(|e| panic!("{text:?} → {d:?} printed as {printed:?}, which fails: {e}"));
    assert_eq!(again, d, "{text:?} printed as {printed:?}");
}

fn check_url(text: &str) {
    let Ok(uri) = crate::config::https_url("--upstream", Some(text), "custom") else {
        return;
    };
    assert_eq!(uri.scheme_str(), Some("https"));
    assert!(uri.host().is_some_and(|h| !h.is_empty()));
    assert!(
        UpstreamTarget::new(&uri).is_some(),
        "{text:?} accepted but no upstream target"
    );
}
