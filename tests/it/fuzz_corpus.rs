//! Replays the committed fuzz corpus on stable, without cargo-fuzz: every file of
//! `fuzz/corpus/TARGET/` (and `fuzz/regressions/TARGET/`, the inputs of fixed findings) goes
//! through the same entry point the fuzz target calls. A target without corpus fails, so a
//! lost directory cannot turn into a test that checks nothing.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use pix_auth_proxy::fuzzing::TARGETS;

/// Run every input of `target`; returns how many ran. Panics naming each failing file.
fn replay(target: &str) -> usize {
    let (_, entry) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target named {target}"));
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut ran = 0;
    let mut failed = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz.join(kind).join(target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if kind == "regressions" && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        let mut files: Vec<_> = entries
            .map(|e| e.expect("directory entry").path())
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if catch_unwind(AssertUnwindSafe(|| entry(&data))).is_err() {
                failed.push(file.display().to_string());
            }
            ran += 1;
        }
    }
    assert!(failed.is_empty(), "{target}: findings in {failed:?}");
    assert!(ran > 0, "{target}: fuzz/corpus/{target} holds no input");
    eprintln!("{target}: {ran} corpus inputs replayed");
    ran
}

#[test]
fn fuzz_corpus_token_response_replays_without_a_finding() {
    replay("token_response");
}

#[test]
fn fuzz_corpus_cache_value_replays_without_a_finding() {
    replay("cache_value");
}

#[test]
fn fuzz_corpus_rewrite_replays_without_a_finding() {
    replay("rewrite");
}

#[test]
fn fuzz_corpus_identity_replays_without_a_finding() {
    replay("identity");
}

#[test]
fn fuzz_corpus_cli_args_replays_without_a_finding() {
    replay("cli_args");
}

#[test]
fn fuzz_corpus_proxy_connection_replays_without_a_finding() {
    replay("proxy_connection");
}

#[test]
fn every_fuzz_target_has_a_replay_test() {
    let names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "token_response",
            "cache_value",
            "rewrite",
            "identity",
            "cli_args",
            "proxy_connection"
        ],
        "a new target needs its replay test above"
    );
    for name in names {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(file.is_file(), "{} missing", file.display());
    }
}
