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
