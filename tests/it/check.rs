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

/// flags pointing both the API and the token endpoint at an nginx-like edge that refuses
/// our certificate after the handshake.
fn edge_flags(env: &Env, edge: &crate::support::nginx_edge::NginxEdge) -> Vec<String> {
    env.flags(&[
        "--upstream",
        &edge.url(),
        "--token-url",
        &format!("{}/oauth/token", edge.url()),
    ])
}

#[tokio::test]
async fn check_says_the_psp_refused_our_certificate_when_an_nginx_edge_answers_400() {
    let env = Env::new().await;
    let edge = crate::support::nginx_edge::NginxEdge::start(&env.pki.server().unwrap()).await;
    let (code, report) = check(&edge_flags(&env, &edge)).await;
    assert_ne!(code, 0, "{report}");
    let tls_line = report
        .lines()
        .find(|l| l.contains("TLS with the PSP"))
        .unwrap_or_default();
    assert!(tls_line.contains("[FAIL]"), "{report}");
    assert!(
        tls_line.contains("the PSP refused our client certificate: not trusted by its CA"),
        "{report}"
    );
    assert!(
        !tls_line.contains("client certificate accepted"),
        "{report}"
    );
    let token_line = report
        .lines()
        .find(|l| l.contains("token request"))
        .unwrap_or_default();
    assert!(token_line.contains("[FAIL]"), "{report}");
    assert!(
        token_line.contains("refused our client certificate"),
        "{report}"
    );
    assert_eq!(edge.requests(), 2, "one probe and one token request");
}

#[tokio::test]
async fn the_running_sidecar_counts_and_warns_when_the_psp_refuses_its_certificate() {
    let env = Env::new().await;
    // A subject no other test uses, so the log line found is this test's.
    let cn = format!("refused-by-edge-{}", std::process::id());
    let client = env.pki.client(&cn).unwrap();
    env.write("refused.pem", client.cert_pem.as_bytes());
    env.write("refused.key", client.key_pem.as_bytes());
    let edge = crate::support::nginx_edge::NginxEdge::start(&env.pki.server().unwrap()).await;
    let token_url = format!("{}/oauth/token", edge.url());
    let (cert, key) = (env.p("refused.pem"), env.p("refused.key"));
    let sidecar = env
        .sidecar(&[
            "--upstream",
            &edge.url(),
            "--token-url",
            &token_url,
            "--cert",
            &cert,
            "--key",
            &key,
        ])
        .await;
    let metrics = sidecar.metrics.clone();
    let refused = || {
        metrics.encode().lines().any(|l| {
            l.starts_with("pix_auth_proxy_token_fetch_total{")
                && l.contains("reason=\"client_cert_refused\"")
                && l.contains("result=\"failure\"")
        })
    };
    assert!(eventually(std::time::Duration::from_secs(5), refused).await);
    let logs = crate::support::logs::captured();
    let warn = logs
        .lines()
        .find(|l| l.contains("client_cert_refused") && l.contains(&cn))
        .unwrap_or_else(|| panic!("no client_cert_refused WARN naming CN={cn}"));
    assert!(warn.contains("WARN"), "{warn}");
    assert!(
        warn.contains("issuer") && warn.contains("test CA"),
        "{warn}"
    );
    assert!(warn.contains("not trusted by its CA"), "{warn}");
    env.assert_logs_clean();
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
