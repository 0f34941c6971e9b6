//! `pix-auth-proxy check` against the mock PSP: a clean pass, and the named cause of each
//! common failure.

use std::process::Stdio;

use tokio::process::Command;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_pix-auth-proxy");

/// Run `check` as a child process without blocking the runtime the mock PSP runs on.
async fn check(args: &[String]) -> (i32, String) {
    let mut argv = vec!["check".to_string()];
    argv.extend_from_slice(args);
    let out = Command::new(BIN)
        .args(&argv)
        .env_remove("PIX_AUTH_PROXY_CLIENT_SECRET")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn check_passes_against_a_correctly_configured_psp() {
    let env = Env::new().await;
    let (code, report) = check(&env.flags(&[])).await;
    assert_eq!(code, 0, "{report}");
    for line in [
        "[ ok ] client certificate",
        "subject CN=pix-client",
        "days left",
        "[ ok ] TLS with the PSP",
        "client certificate accepted",
        "[ ok ] token request",
        "Bearer token (fingerprint",
    ] {
        assert!(report.contains(line), "{line} missing from:\n{report}");
    }
    assert!(report.contains("result: all checks passed"));
    for secret in env.secrets() {
        assert!(
            !report.contains(&secret),
            "the report shows a secret or the token"
        );
    }
    assert_eq!(env.psp.token_requests(), 1);
}

#[tokio::test]
async fn check_names_a_wrong_secret() {
    let env = Env::new().await;
    env.write("wrong-secret", b"not-the-secret");
    let (code, report) = check(&env.flags(&["--client-secret-file", &env.p("wrong-secret")])).await;
    assert_ne!(code, 0);
    assert!(
        report.contains("[FAIL] token request") && report.contains("invalid_client"),
        "{report}"
    );
    assert!(
        report.contains("check --client-id and the client secret"),
        "{report}"
    );
    assert!(!report.contains("not-the-secret"));
}

#[tokio::test]
async fn check_names_an_untrusted_psp_certificate() {
    let env = Env::new().await;
    let other = pix_auth_proxy::sandbox::Pki::new("some other CA").unwrap();
    env.write("other-ca.pem", other.ca_pem().as_bytes());
    let (code, report) = check(&env.flags(&["--ca", &env.p("other-ca.pem")])).await;
    assert_ne!(code, 0);
    assert!(report.contains("[FAIL] TLS with the PSP"), "{report}");
    assert!(report.contains("not trusted (unknown CA)"), "{report}");
}

#[tokio::test]
async fn check_names_a_client_certificate_the_psp_does_not_trust() {
    let env = Env::new().await;
    let stranger_pki = pix_auth_proxy::sandbox::Pki::new("not the PSP's client CA").unwrap();
    let stranger = stranger_pki.client("stranger").unwrap();
    env.write("stranger.pem", stranger.cert_pem.as_bytes());
    env.write("stranger-key.pem", stranger.key_pem.as_bytes());
    let (code, report) = check(&env.flags(&[
        "--cert",
        &env.p("stranger.pem"),
        "--key",
        &env.p("stranger-key.pem"),
    ]))
    .await;
    assert_ne!(code, 0);
    assert!(report.contains("[FAIL] TLS with the PSP"), "{report}");
    assert!(
        report.contains("refused our client certificate"),
        "{report}"
    );
    assert!(report.contains("[FAIL] token request"), "{report}");
}

#[tokio::test]
async fn check_names_an_unreachable_psp() {
    let env = Env::new().await;
    let closed = bind().await.local_addr().unwrap();
    let (code, report) = check(&env.flags(&[
        "--upstream",
        &format!("https://{closed}"),
        "--token-url",
        &format!("https://{closed}/oauth/token"),
        "--connect-timeout",
        "1s",
    ]))
    .await;
    assert_ne!(code, 0);
    assert!(report.contains("cannot connect to"), "{report}");
    let (code, report) = check(&env.flags(&[
        "--upstream",
        "https://psp.invalid",
        "--connect-timeout",
        "2s",
    ]))
    .await;
    assert_ne!(code, 0);
    assert!(
        report.contains("DNS:") && report.contains("psp.invalid"),
        "{report}"
    );
}

#[tokio::test]
async fn check_reports_the_webhook_certificate_and_each_client_ca() {
    let env = Env::new().await;
    let hooks = crate::support::webhook::Hooks::new(&env);
    env.write("psp-ca-2.pem", hooks.impostor.ca_pem().as_bytes());
    let mut extra = hooks.flags(&env, "http://127.0.0.1:3000/hook", &[]);
    extra.extend(["--webhook-client-ca".to_string(), env.p("psp-ca-2.pem")]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (code, report) = check(&env.flags(&extra)).await;
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("[ ok ] webhook certificate"), "{report}");
    assert!(report.contains("CN=mock-psp"), "{report}");
    let cas: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("webhook client CA"))
        .collect();
    assert_eq!(cas.len(), 2, "{report}");
    assert!(
        cas[0].contains("PSP root CA") && cas[0].contains("days left"),
        "{report}"
    );
    assert!(cas[1].contains("impostor CA"), "{report}");
}

#[tokio::test]
async fn check_reads_a_pkcs12_webhook_identity_and_names_a_wrong_password() {
    let env = Env::new().await;
    let hooks = crate::support::webhook::Hooks::new(&env);
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pkcs12");
    let p12 = format!("{fixtures}/client-modern.p12");
    env.write("wrong-password", b"not-the-password");
    for (password, ok) in [
        (format!("{fixtures}/password"), true),
        (env.p("wrong-password"), false),
    ] {
        let mut extra = hooks.flags(&env, "http://127.0.0.1:3000/hook", &[]);
        let i = extra.iter().position(|f| f == "--webhook-cert").unwrap();
        extra.drain(i..i + 4);
        extra.extend([
            "--webhook-pkcs12".into(),
            p12.clone(),
            "--webhook-pkcs12-password-file".into(),
            password,
        ]);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (code, report) = check(&env.flags(&extra)).await;
        let line = report
            .lines()
            .find(|l| l.contains("webhook certificate"))
            .unwrap_or_else(|| panic!("{report}"));
        if ok {
            assert_eq!(code, 0, "{report}");
            assert!(
                line.contains("[ ok ]") && line.contains("days left"),
                "{report}"
            );
        } else {
            assert_ne!(code, 0, "{report}");
            assert!(
                line.contains("[FAIL]") && line.contains("--webhook-pkcs12"),
                "{report}"
            );
        }
    }
}
