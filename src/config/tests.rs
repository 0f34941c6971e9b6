//! Unit tests of the flag checks (no process environment, files in a temp directory).

use super::*;
use clap::Parser;
use secrecy::ExposeSecret;

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pap-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["cert.pem", "key.pem"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        std::fs::write(dir.join("secret"), "s3cret\n").unwrap();
        Files { dir }
    }
    fn p(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
    fn args(&self, extra: &[&str]) -> RunArgs {
        let (c, k, s) = (self.p("cert.pem"), self.p("key.pem"), self.p("secret"));
        let mut v = vec![
            "x",
            "--client-id",
            "id",
            "--cert",
            &c,
            "--key",
            &k,
            "--client-secret-file",
            &s,
        ];
        v.extend_from_slice(extra);
        RunArgs::try_parse_from(v).unwrap()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn pagstar_defaults_and_secret_file_trimmed() {
    let f = Files::new("ok");
    let c = Config::from_args(&f.args(&[]), SecretEnv::default()).unwrap();
    assert_eq!(c.upstream, "https://api.pix.pagstar.com");
    assert_eq!(c.token.url, "https://api.pix.pagstar.com/oauth/token");
    assert_eq!(c.token.client_secret.unwrap().expose_secret(), "s3cret");
    assert_eq!(c.token.auth, ClientAuth::Post);
}

#[test]
fn bad_inputs_name_their_flag() {
    let f = Files::new("bad");
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--token-url", "http://psp/oauth"],
            "--token-url",
            "http://",
        ),
        (&["--upstream", "http://psp"], "--upstream", "http://"),
        (
            &["--upstream", "not a url"],
            "--upstream",
            "not a valid URL",
        ),
        (&["--listen", "0.0.0.0:8080"], "--listen", "loopback"),
        (
            &["--ca", "/nonexistent/ca.pem"],
            "--ca",
            "/nonexistent/ca.pem",
        ),
        (&["--provider", "nubank"], "--provider", "unknown provider"),
        (&["--provider", "custom"], "--upstream", "required"),
        (&["--refresh-ratio", "1.5"], "--refresh-ratio", "outside"),
    ];
    for (extra, flag, needle) in cases {
        let e = Config::from_args(&f.args(extra), SecretEnv::default()).unwrap_err();
        assert_eq!(e.flag, *flag, "{extra:?}: {e}");
        assert!(e.to_string().contains(needle), "{extra:?}: {e}");
    }
    let missing = RunArgs::try_parse_from([
        "x",
        "--client-id",
        "id",
        "--cert",
        "/nope/c.pem",
        "--key",
        "/nope/k.pem",
    ])
    .unwrap();
    let e = Config::from_args(
        &missing,
        SecretEnv {
            client_secret: Some(SecretString::from("s")),
            ..SecretEnv::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.flag, "--cert");
    let no_secret = RunArgs::try_parse_from([
        "x",
        "--client-id",
        "id",
        "--cert",
        &f.p("cert.pem"),
        "--key",
        &f.p("key.pem"),
    ])
    .unwrap();
    let e = Config::from_args(&no_secret, SecretEnv::default()).unwrap_err();
    assert_eq!(e.flag, "--client-secret-file");
    let none_auth = RunArgs::try_parse_from([
        "x",
        "--client-id",
        "id",
        "--cert",
        &f.p("cert.pem"),
        "--key",
        &f.p("key.pem"),
        "--client-auth",
        "none",
    ])
    .unwrap();
    assert!(Config::from_args(&none_auth, SecretEnv::default()).is_ok());
}

#[test]
fn non_loopback_needs_the_explicit_flag() {
    let f = Files::new("nl");
    assert!(
        Config::from_args(
            &f.args(&["--listen", "0.0.0.0:8080", "--allow-non-loopback"]),
            SecretEnv::default()
        )
        .is_ok()
    );
}

#[test]
fn debug_of_config_hides_the_secret() {
    let f = Files::new("dbg");
    let c = Config::from_args(&f.args(&[]), SecretEnv::default()).unwrap();
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn webhook_flags_are_checked_and_name_their_flag() {
    let f = Files::new("wh");
    std::fs::write(f.dir.join("ca.pem"), "x").unwrap();
    let (c, k, ca) = (f.p("cert.pem"), f.p("key.pem"), f.p("ca.pem"));
    let base = [
        "--webhook-listen",
        "0.0.0.0:8443",
        "--webhook-cert",
        &c,
        "--webhook-key",
        &k,
        "--webhook-client-ca",
        &ca,
        "--webhook-forward",
        "http://127.0.0.1:3000/hook",
    ];
    let ok = Config::from_args(&f.args(&base), SecretEnv::default()).unwrap();
    let wh = ok.webhook.expect("webhook configured");
    assert_eq!(wh.path, "");
    assert_eq!(wh.max_body, 1024 * 1024);
    assert!(
        ok.warnings
            .iter()
            .any(|w| w.contains("--webhook-allow-subject"))
    );

    let without = |drop_flag: &str| {
        let mut v: Vec<&str> = Vec::new();
        let mut i = 0;
        while i < base.len() {
            if base[i] == drop_flag {
                i += 2;
                continue;
            }
            v.push(base[i]);
            i += 1;
        }
        v
    };
    let with = |extra: &[&'static str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (without("--webhook-cert"), "--webhook-cert", "required"),
        (
            without("--webhook-client-ca"),
            "--webhook-client-ca",
            "required",
        ),
        (
            without("--webhook-forward"),
            "--webhook-forward",
            "required",
        ),
        (
            with(&["--webhook-forward", "http://10.1.2.3/x"]),
            "--webhook-forward",
            "loopback",
        ),
        (
            with(&["--webhook-forward", "https://127.0.0.1/x"]),
            "--webhook-forward",
            "http://",
        ),
        (
            with(&["--webhook-allow-spki", "abc"]),
            "--webhook-allow-spki",
            "SHA-256",
        ),
        (
            with(&["--webhook-allow-ip", "10.0.0.0/40"]),
            "--webhook-allow-ip",
            "CIDR",
        ),
        (with(&["--webhook-path", "hook"]), "--webhook-path", "start"),
        (
            with(&["--webhook-max-body", "0"]),
            "--webhook-max-body",
            "outside",
        ),
        (
            vec!["--webhook-forward", "http://127.0.0.1:3000/"],
            "--webhook-forward",
            "--webhook-listen",
        ),
    ];
    for (argv, flag, needle) in cases {
        // A repeated flag keeps its last value for single-valued flags.
        let args = match RunArgs::try_parse_from(
            [
                "x",
                "--client-id",
                "id",
                "--cert",
                &c,
                "--key",
                &k,
                "--client-secret-file",
                &f.p("secret"),
            ]
            .into_iter()
            .chain(dedup_last(&argv)),
        ) {
            Ok(a) => a,
            Err(e) => panic!("{argv:?}: {e}"),
        };
        let e = Config::from_args(&args, SecretEnv::default()).unwrap_err();
        assert_eq!(e.flag, flag, "{argv:?}: {e}");
        assert!(e.to_string().contains(needle), "{argv:?}: {e}");
    }
    // The URL-secret variant needs no client CA.
    std::fs::write(f.dir.join("url-secret"), "hmac-value\n").unwrap();
    let secret_file = f.p("url-secret");
    let mut argv = without("--webhook-client-ca");
    argv.extend(["--webhook-url-secret-file", &secret_file]);
    let c = Config::from_args(&f.args(&argv), SecretEnv::default()).unwrap();
    let wh = c.webhook.unwrap();
    assert!(wh.client_ca.is_empty() && wh.accepts_unverified());
    assert!(
        !format!("{wh:?}").contains("hmac-value"),
        "Debug hides the URL secret"
    );
    // Without a certificate at all.
    let e = Config::from_args(
        &f.args(
            &without("--webhook-cert")
                .into_iter()
                .filter(|a| *a != "--webhook-key" && *a != k)
                .collect::<Vec<_>>(),
        ),
        SecretEnv::default(),
    )
    .unwrap_err();
    assert_eq!(e.flag, "--webhook-cert", "{e}");
}

/// `argv` with an earlier `--flag value` pair removed when the flag comes again.
fn dedup_last<'a>(argv: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for pair in argv.chunks(2) {
        if let Some(i) = out.iter().position(|x| *x == pair[0]) {
            out.drain(i..i + 2);
        }
        out.extend_from_slice(pair);
    }
    out
}

#[test]
fn cache_mode_combinations_are_checked_and_name_their_flag() {
    let f = Files::new("cache-modes");
    std::fs::write(f.dir.join("cache.key"), [7u8; 32]).unwrap();
    let key = f.p("cache.key");
    let k = key.as_str();
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--cache-mode", "cluster"], "--cache-mode", "with --cache"),
        (
            &["--cache-key-prefix", "a:"],
            "--cache-key-prefix",
            "with --cache",
        ),
        (
            &[
                "--cache",
                "redis://a",
                "--cache",
                "redis://b",
                "--cache-key-file",
                k,
            ],
            "--cache",
            "standalone mode takes one",
        ),
        (
            &[
                "--cache",
                "redis://a",
                "--cache-mode",
                "sentinel",
                "--cache-key-file",
                k,
            ],
            "--cache-sentinel-master",
            "is required",
        ),
        (
            &[
                "--cache",
                "redis://a",
                "--cache-sentinel-master",
                "m",
                "--cache-key-file",
                k,
            ],
            "--cache-sentinel-master",
            "only makes sense with --cache-mode sentinel",
        ),
        (
            &[
                "--cache",
                "redis://a",
                "--cache-data-tls",
                "on",
                "--cache-key-file",
                k,
            ],
            "--cache-data-tls",
            "only makes sense with --cache-mode sentinel",
        ),
        (
            &[
                "--cache",
                "redis://a,rediss://b",
                "--cache-mode",
                "cluster",
                "--cache-key-file",
                k,
            ],
            "--cache",
            "mixes",
        ),
        (
            &[
                "--cache",
                "redis://a/3",
                "--cache-mode",
                "cluster",
                "--cache-key-file",
                k,
            ],
            "--cache",
            "database 0",
        ),
        (
            &[
                "--cache",
                "redis://a",
                "--cache-key-prefix",
                "x{y}",
                "--cache-key-file",
                k,
            ],
            "--cache-key-prefix",
            "hash tag",
        ),
    ];
    for (extra, flag, needle) in cases {
        let e = Config::from_args(&f.args(extra), SecretEnv::default())
            .expect_err(&format!("{extra:?} must be refused"))
            .to_string();
        assert!(e.starts_with(flag), "{extra:?}: {e}");
        assert!(e.contains(needle), "{extra:?}: {e}");
    }
    let ok = Config::from_args(
        &f.args(&[
            "--cache",
            "redis://s1:26379,redis://s2:26379",
            "--cache-mode",
            "sentinel",
            "--cache-sentinel-master",
            "pix",
            "--cache-username",
            "pix",
            "--cache-key-prefix",
            "team-a:",
            "--cache-key-file",
            k,
        ]),
        SecretEnv::default(),
    )
    .unwrap();
    let cache = ok.cache.unwrap();
    assert_eq!(cache.urls.len(), 2);
    assert_eq!(cache.key_prefix, "team-a:");
    assert_eq!(cache.sentinel_master.as_deref(), Some("pix"));
}
