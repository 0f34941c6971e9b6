//! The `pix-auth-proxy` binary as a user runs it: flags, exit codes, signals, log output.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::process::spawn;
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_pix-auth-proxy");

fn run_to_end(args: &[String]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("PIX_AUTH_PROXY_CLIENT_SECRET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_input_is_refused_at_start_with_one_line_naming_the_flag() {
    let env = Env::new().await;
    let other = env.pki.client("someone-else").unwrap();
    env.write("other-key.pem", other.key_pem.as_bytes());
    let expired = env
        .pki
        .expired_client("expired", Duration::from_secs(3600))
        .unwrap();
    env.write("expired.pem", expired.cert_pem.as_bytes());
    env.write("expired-key.pem", expired.key_pem.as_bytes());
    env.write("garbage.pem", b"not a pem file");
    let (cert, key, ca) = (env.p("cert.pem"), env.p("key.pem"), env.p("ca.pem"));
    let (other_key, exp_cert, exp_key, garbage) = (
        env.p("other-key.pem"),
        env.p("expired.pem"),
        env.p("expired-key.pem"),
        env.p("garbage.pem"),
    );
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["--cert", "/nonexistent/client.pem"],
            "--cert",
            "/nonexistent/client.pem",
        ),
        (vec!["--key", &other_key], "--key", "does not match"),
        (
            vec!["--cert", &exp_cert, "--key", &exp_key],
            "--cert",
            "expired",
        ),
        (
            vec!["--cert", &garbage],
            "--cert",
            "no valid PEM certificate",
        ),
        (vec!["--key", &garbage], "--key", "no PEM private key"),
        (
            vec!["--token-url", "http://127.0.0.1:1/oauth/token"],
            "--token-url",
            "http://",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:1"],
            "--upstream",
            "http://",
        ),
        (
            vec!["--upstream", "https://bad host/"],
            "--upstream",
            "not a valid URL",
        ),
        (
            vec!["--ca", "/nonexistent/ca.pem"],
            "--ca",
            "/nonexistent/ca.pem",
        ),
        (vec!["--listen", "0.0.0.0:0"], "--listen", "loopback"),
        (vec!["--expiry-margin", "soon"], "--expiry-margin", "soon"),
        (
            vec!["--cache", "redis://127.0.0.1:1"],
            "--cache-key-file",
            "required",
        ),
        (
            vec!["--cache", "memcached://127.0.0.1:1"],
            "--cache",
            "redis://",
        ),
        (
            vec![
                "--cache",
                "redis://127.0.0.1:1",
                "--cache-key-file",
                &garbage,
            ],
            "--cache-key-file",
            "Base64",
        ),
        (
            vec!["--cache-key-file", &garbage],
            "--cache-key-file",
            "only makes sense with --cache",
        ),
        (
            vec!["--webhook-listen", "127.0.0.1:0"],
            "--webhook-cert",
            "required",
        ),
        (
            vec![
                "--webhook-listen",
                "127.0.0.1:0",
                "--webhook-cert",
                &cert,
                "--webhook-key",
                &key,
                "--webhook-forward",
                "http://127.0.0.1:3000/",
            ],
            "--webhook-client-ca",
            "required",
        ),
        (
            vec![
                "--webhook-listen",
                "127.0.0.1:0",
                "--webhook-cert",
                &cert,
                "--webhook-key",
                &key,
                "--webhook-client-ca",
                &ca,
            ],
            "--webhook-forward",
            "required",
        ),
        (
            vec![
                "--webhook-listen",
                "127.0.0.1:0",
                "--webhook-cert",
                &garbage,
                "--webhook-key",
                &key,
                "--webhook-client-ca",
                &ca,
                "--webhook-forward",
                "http://127.0.0.1:3000/",
                "--webhook-allow-subject",
                "psp",
            ],
            "--webhook-cert",
            "no valid PEM certificate",
        ),
        (
            vec![
                "--webhook-listen",
                "127.0.0.1:0",
                "--webhook-cert",
                &cert,
                "--webhook-key",
                &key,
                "--webhook-client-ca",
                &garbage,
                "--webhook-forward",
                "http://127.0.0.1:3000/",
                "--webhook-allow-subject",
                "psp",
            ],
            "--webhook-client-ca",
            "no valid PEM certificate",
        ),
        (
            vec!["--webhook-forward", "http://127.0.0.1:3000/"],
            "--webhook-forward",
            "only makes sense with --webhook-listen",
        ),
        (vec!["--sched-slice", "50us"], "--sched-slice", "50us"),
        (vec!["--sched-slice", "1s"], "--sched-slice", "outside"),
    ];
    for (extra, flag, needle) in cases {
        let (code, stderr) = run_to_end(&env.flags(&extra));
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(needle),
            "{extra:?}: {stderr}"
        );
        if flag != "--expiry-margin" {
            // clap's own usage errors are multi-line; ours are exactly one line.
            assert_eq!(stderr.trim_end().lines().count(), 1, "{extra:?}: {stderr}");
        }
    }
}

#[test]
fn help_lists_every_flag_and_never_shows_the_secret() {
    let out = Command::new(BIN)
        .arg("--help")
        .env("PIX_AUTH_PROXY_CLIENT_SECRET", "do-not-show-me")
        .env("PIX_AUTH_PROXY_CLIENT_ID", "shown-id")
        .env(
            "PIX_AUTH_PROXY_CACHE",
            "rediss://:redis-password-value@redis:6380",
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for heading in [
        "PSP and token:",
        "Client identity:",
        "Listeners:",
        "Shared cache:",
        "Webhooks:",
        "Timeouts and limits:",
        "Logging:",
    ] {
        assert!(help.contains(heading), "{heading} missing from --help");
    }
    for flag in [
        "--cache-mode",
        "--cache-username",
        "--cache-key-prefix",
        "--cache-sentinel-master",
    ] {
        // The section runs from its heading to the next one.
        let shared = &help[help.find("Shared cache:").unwrap()..];
        let end = shared
            .match_indices('\n')
            .map(|(i, _)| i)
            .find(|&i| shared[i + 1..].starts_with(|c: char| c.is_ascii_uppercase()))
            .unwrap_or(shared.len());
        let section = &shared[..end];
        assert!(
            section.contains(flag),
            "{flag} is not under Shared cache:\n{section}"
        );
    }
    assert!(!help.contains("do-not-show-me"));
    assert!(
        !help.contains("redis-password-value"),
        "the cache URL carries a password"
    );
    assert!(
        !help.contains("--client-secret "),
        "there is no plain secret flag"
    );
    for flag in [
        "--listen",
        "--upstream",
        "--token-url",
        "--client-id",
        "--client-secret-file",
        "--client-auth",
        "--token-encoding",
        "--scope",
        "--cert",
        "--key",
        "--ca",
        "--refresh-ratio",
        "--expiry-margin",
        "--connect-timeout",
        "--request-timeout",
        "--token-timeout",
        "--upstream-http1-only",
        "--log-format",
        "--allow-non-loopback",
        "--webhook-listen",
        "--webhook-cert",
        "--webhook-key",
        "--webhook-pkcs12",
        "--webhook-pkcs12-password-file",
        "--webhook-client-ca",
        "--webhook-allow-subject",
        "--webhook-allow-spki",
        "--webhook-path",
        "--webhook-forward",
        "--webhook-timeout",
        "--webhook-max-body",
        "--webhook-verify",
        "--webhook-url-secret-file",
        "--webhook-allow-ip",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        let env_name = format!(
            "PIX_AUTH_PROXY_{}",
            flag.trim_start_matches("--")
                .replace('-', "_")
                .to_uppercase()
        );
        assert!(help.contains(&env_name), "{env_name} missing from --help");
    }
}

#[tokio::test]
async fn binary_serves_with_env_secret_and_json_logs_then_sigterm_drains_and_exits_0() {
    let env = Env::new().await;
    let port = bind().await.local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut flags = env.flags(&[
        "--listen",
        &listen,
        "--log-format",
        "json",
        "--log-level",
        "trace",
        // The multi-threaded runtime, whose workers take the scheduler slice as they start.
        "--worker-threads",
        "2",
    ]);
    // Take the secret from the environment instead of the file.
    let i = flags
        .iter()
        .position(|f| f == "--client-secret-file")
        .unwrap();
    flags.drain(i..i + 2);
    let mut child = spawn(
        &flags,
        &[("PIX_AUTH_PROXY_CLIENT_SECRET", &env.settings.client_secret)],
        false,
    );
    let url = format!("http://{listen}/cob/bin");
    child.wait_for_200(&url).await;
    // By default every runtime thread (the workers as they start, the main thread in `run`)
    // asks for a 100 µs scheduler slice (`--sched-slice`); where the kernel has custom
    // slices, its own record is each thread's `se.slice`.
    let pid = child.child.id().unwrap();
    let custom_slices = kernel_at_least(6, 12);
    if custom_slices {
        let mut threads = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let sched = std::fs::read_to_string(task.unwrap().path().join("sched")).unwrap();
            let slice_ns = sched
                .lines()
                .find_map(|l| l.strip_prefix("se.slice"))
                .and_then(|l| l.rsplit(':').next())
                .map(|v| v.trim().parse::<u64>().unwrap());
            assert_eq!(slice_ns, Some(100_000), "{sched}");
            threads += 1;
        }
        assert!(threads >= 3, "the main thread and two workers: {threads}");
    }
    // A 401 + replay and a token refusal, so the logs cover the sensitive paths.
    env.psp.reject_next_api(1);
    assert_eq!(get(&url).await.status, 200);

    // SIGTERM while a slow request is in flight: it completes, then the process exits 0.
    env.psp.set_api_delay(Duration::from_millis(800));
    let slow = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await.status }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.signal("TERM");
    assert_eq!(slow.await.unwrap(), 200, "the in-flight request finished");
    let (code, logs) = child.finish(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("token_renewed"), "{logs}");
    let slice_event = if custom_slices {
        r#""event":"sched_slice""#
    } else {
        r#""event":"sched_slice_unsupported""#
    };
    assert!(logs.contains(slice_event), "{logs}");
    for line in logs.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    for secret in env.secrets() {
        assert!(
            !logs.contains(&secret),
            "a secret or token reached the binary's logs"
        );
    }
}

#[test]
fn every_flag_in_help_is_documented_in_the_readme() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for sub in [&["--help"][..], &["demo", "--help"][..]] {
        let out = Command::new(BIN).args(sub).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let flags: Vec<&str> = help
            .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
            .filter(|w| {
                w.starts_with("--")
                    && w.len() > 2
                    && w[2..]
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit())
            })
            .filter(|w| !matches!(*w, "--help" | "--version"))
            .collect();
        assert!(flags.len() >= 5, "{sub:?}: parsed flags {flags:?}");
        for flag in flags {
            assert!(
                readme.contains(&format!("`{flag}`")),
                "{flag} (from {sub:?}) is not in README.md"
            );
        }
    }
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b) >= (major, minor),
        _ => panic!("cannot read the kernel version from {release:?}"),
    }
}
