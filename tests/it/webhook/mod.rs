//! The inbound direction over real TLS: the PSP's webhook calls with its client certificate
//! (three certificates deep), impostors and allow-lists here; forwarding to the app in
//! [`forwarding`]; rotation, `--webhook-verify`, the URL secret and the address allow-list in
//! [`variants`].

mod forwarding;
mod variants;

use std::time::Duration;

use crate::support::webhook::{App, Called, Hooks, post};
use crate::support::*;

pub const BODY: &str = r#"{"pix":[{"endToEndId":"E00000000202612011200abcdefghijk","txid":"abc","valor":"10.00","horario":"2026-12-01T12:00:00Z"}]}"#;
/// The `endToEndId` of [`BODY`].
pub const E2E: &str = "E00000000202612011200abcdefghijk";

/// An env, its webhook certificates, an app and a sidecar forwarding to it.
pub async fn setup(extra: &[&str]) -> (Env, Hooks, App, Running) {
    setup_with(Env::new().await, extra).await
}

pub async fn setup_with(env: Env, extra: &[&str]) -> (Env, Hooks, App, Running) {
    let hooks = Hooks::new(&env);
    let app = App::start().await;
    let flags = hooks.flags(&env, &app.url(), extra);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let sidecar = env.sidecar(&flags).await;
    (env, hooks, app, sidecar)
}

pub fn webhook_metric(sidecar: &Running, result: &str) -> u64 {
    let text = sidecar.metrics.encode();
    let prefix = format!("pix_auth_proxy_webhook_requests_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

pub async fn psp_post(h: &Hooks, s: &Running, path: &str, headers: &[(&str, &str)]) -> Called {
    post(s.webhook.unwrap(), h.psp_client(), path, headers, BODY)
        .await
        .expect("the PSP's call completes")
}

#[tokio::test]
async fn a_caller_without_a_certificate_gets_403_and_nothing_is_forwarded() {
    let (_env, hooks, app, sidecar) = setup(&[]).await;
    let called = post(
        sidecar.webhook.unwrap(),
        hooks.anonymous_client(),
        "/pix",
        &[],
        BODY,
    )
    .await
    .expect("the handshake completes without a certificate");
    assert_problem(&called.got, 403, "webhook-client-cert-required");
    assert!(app.seen().is_empty());
    assert_eq!(webhook_metric(&sidecar, "no_cert"), 1);
}

#[tokio::test]
async fn an_impostor_ca_is_refused_nothing_is_forwarded_and_it_is_logged_once() {
    let (_env, hooks, app, sidecar) = setup(&[]).await;
    let impostor = hooks.impostor.client("psp-webhook").unwrap();
    for attempt in 1..=2 {
        let result = post(
            sidecar.webhook.unwrap(),
            hooks.client_with(&impostor, &[]),
            "/pix",
            &[],
            BODY,
        )
        .await;
        if let Ok(called) = result {
            assert_eq!(called.got.status, 403, "{:?}", called.got);
        }
        assert!(
            eventually(Duration::from_secs(5), || webhook_metric(
                &sidecar,
                "untrusted"
            ) == attempt)
            .await
        );
    }
    assert!(app.seen().is_empty());
    let sha =
        pix_auth_proxy::telemetry::hex(&pix_auth_proxy::tls::sha256(impostor.cert_der.as_ref()));
    let lines = logs::captured()
        .lines()
        .filter(|l| l.contains("webhook_caller_rejected") && l.contains(&sha))
        .count();
    assert_eq!(
        lines, 1,
        "the rejected certificate is logged once, with its fingerprint"
    );
}

#[tokio::test]
async fn a_verified_subject_not_in_the_allow_list_gets_403_identity_mismatch() {
    let (_env, hooks, app, sidecar) = setup(&["--webhook-allow-subject", "psp-webhook"]).await;
    let ok = psp_post(&hooks, &sidecar, "/pix", &[]).await;
    assert_eq!(ok.got.status, 200);
    let other = hooks.issuing.client("someone-else").unwrap();
    let called = post(
        sidecar.webhook.unwrap(),
        hooks.client_with(&other, &[&hooks.issuing, &hooks.intermediate]),
        "/pix",
        &[],
        BODY,
    )
    .await
    .unwrap();
    assert_problem(&called.got, 403, "webhook-identity-mismatch");
    assert_eq!(app.seen().len(), 1);
    assert_eq!(webhook_metric(&sidecar, "identity_mismatch"), 1);
}

#[tokio::test]
async fn a_pinned_spki_accepts_the_pinned_key_and_refuses_another_key_with_the_same_subject() {
    let env = Env::new().await;
    let hooks = Hooks::new(&env);
    let app = App::start().await;
    let (_, cert) = x509_parser::parse_x509_certificate(hooks.psp.cert_der.as_ref()).unwrap();
    let pin = pix_auth_proxy::telemetry::hex(&pix_auth_proxy::tls::sha256(
        cert.tbs_certificate.subject_pki.raw,
    ));
    let flags = hooks.flags(&env, &app.url(), &["--webhook-allow-spki", &pin]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let sidecar = env.sidecar(&flags).await;
    assert_eq!(
        psp_post(&hooks, &sidecar, "/pix", &[]).await.got.status,
        200
    );
    let same_subject = hooks.issuing.client("psp-webhook").unwrap();
    let called = post(
        sidecar.webhook.unwrap(),
        hooks.client_with(&same_subject, &[&hooks.issuing, &hooks.intermediate]),
        "/pix",
        &[],
        BODY,
    )
    .await
    .unwrap();
    assert_problem(&called.got, 403, "webhook-identity-mismatch");
    assert_eq!(app.seen().len(), 1);
}

#[tokio::test]
async fn identity_headers_sent_by_the_caller_never_reach_the_app() {
    let (_env, hooks, app, sidecar) = setup(&["--webhook-verify", "off"]).await;
    let forged = [
        ("x-client-cert-subject", "CN=forged"),
        ("x-client-cert-sha256", "00"),
        ("x-pix-webhook-verified", "true"),
        ("x-pix-webhook-event", "rec"),
        ("x-forwarded-for", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7"),
        ("x-request-id", "forged"),
    ];
    assert_eq!(
        psp_post(&hooks, &sidecar, "/pix", &forged).await.got.status,
        200
    );
    let s = &app.seen()[0];
    assert!(
        s.headers["x-client-cert-subject"]
            .to_str()
            .unwrap()
            .contains("psp-webhook")
    );
    assert_ne!(s.headers["x-client-cert-sha256"], "00");
    assert!(!s.headers.contains_key("x-pix-webhook-verified"));
    assert_eq!(s.headers["x-pix-webhook-event"], "pix");
    assert_eq!(s.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1");
    assert!(!s.headers.contains_key("forwarded"));
    assert_ne!(s.headers["x-request-id"], "forged");
}

/// The webhook listener is public: a caller that completes the TLS handshake and then says
/// nothing, or connects and never starts the handshake, is closed at
/// `--header-read-timeout`, like an app connection, and the PSP's calls are served meanwhile.
#[tokio::test]
async fn silent_callers_are_closed_at_the_header_read_timeout_and_the_psp_is_served() {
    use tokio::io::AsyncReadExt;
    let (_env, hooks, app, sidecar) = setup(&["--header-read-timeout", "1s"]).await;
    let addr = sidecar.webhook.unwrap();
    let silent_tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(hooks.psp_client());
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let silent_tls = connector
        .connect(name, tcp)
        .await
        .expect("handshake completes");
    let started = tokio::time::Instant::now();
    assert_eq!(
        psp_post(&hooks, &sidecar, "/pix", &[]).await.got.status,
        200
    );
    let closed = |mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    };
    let closed_tls = async move {
        let mut s = silent_tls;
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    };
    let (tcp_closed, tls_closed) = tokio::join!(closed(silent_tcp), closed_tls);
    let took = started.elapsed();
    assert!(
        tcp_closed,
        "a caller that never started TLS is still connected"
    );
    assert!(
        tls_closed,
        "a caller silent after the handshake is still connected"
    );
    assert!(took < Duration::from_millis(2_500), "closed after {took:?}");
    assert_eq!(app.seen().len(), 1);
}
