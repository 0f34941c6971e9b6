//! The inbound direction over real TLS: the PSP's webhook calls with its client certificate
//! (three certificates deep), impostors, allow-lists, the app's failures, a Kubernetes-style
//! rotation of the server certificate under load, `--webhook-verify` and the URL-secret
//! variant.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::support::webhook::{App, Called, Hooks, call, post};
use crate::support::*;

const BODY: &str = r#"{"pix":[{"endToEndId":"E00000000202612011200abcdefghijk","txid":"abc","valor":"10.00","horario":"2026-12-01T12:00:00Z"}]}"#;

/// An env, its webhook certificates, an app and a sidecar forwarding to it.
async fn setup(extra: &[&str]) -> (Env, Hooks, App, Running) {
    setup_with(Env::new().await, extra).await
}

async fn setup_with(env: Env, extra: &[&str]) -> (Env, Hooks, App, Running) {
    let hooks = Hooks::new(&env);
    let app = App::start().await;
    let flags = hooks.flags(&env, &app.url(), extra);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let sidecar = env.sidecar(&flags).await;
    (env, hooks, app, sidecar)
}

fn webhook_metric(sidecar: &Running, result: &str) -> u64 {
    let text = sidecar.metrics.encode();
    let prefix = format!("pix_auth_proxy_webhook_requests_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

async fn psp_post(h: &Hooks, s: &Running, path: &str, headers: &[(&str, &str)]) -> Called {
    post(s.webhook.unwrap(), h.psp_client(), path, headers, BODY)
        .await
        .expect("the PSP's call completes")
}

#[tokio::test]
async fn pix_notification_reaches_the_app_with_exact_body_and_identity_headers() {
    let (_env, hooks, app, sidecar) = setup(&[]).await;
    let called = psp_post(
        &hooks,
        &sidecar,
        "/pix",
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(called.got.status, 200, "{:?}", called.got);
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.body, BODY.as_bytes());
    assert_eq!(s.uri, "/hook");
    assert_eq!(s.headers["x-pix-webhook-event"], "pix");
    assert_eq!(s.headers["content-type"], "application/json");
    assert!(
        s.headers["x-client-cert-subject"]
            .to_str()
            .unwrap()
            .contains("CN=psp-webhook")
    );
    assert!(
        s.headers["x-client-cert-issuer"]
            .to_str()
            .unwrap()
            .contains("PSP webhook issuing CA")
    );
    let sha =
        pix_auth_proxy::telemetry::hex(&pix_auth_proxy::tls::sha256(hooks.psp.cert_der.as_ref()));
    assert_eq!(s.headers["x-client-cert-sha256"], sha.as_str());
    assert!(
        s.headers["x-client-cert-not-after"]
            .to_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(s.headers["x-forwarded-proto"], "https");
    assert_eq!(s.headers["x-request-id"].len(), 36);
    assert_eq!(webhook_metric(&sidecar, "forwarded"), 1);
}

#[tokio::test]
async fn suffixes_doubled_slashes_swallowing_queries_and_the_bare_path_map_to_events() {
    let (_env, hooks, app, sidecar) = setup(&["--webhook-path", "/hook"]).await;
    let cases = [
        ("/hook/pix", "pix"),
        ("/hook/rec", "rec"),
        ("/hook/cobr", "cobr"),
        ("/hook//pix", "pix"),
        ("/hook?ignorar=/pix", "pix"),
        ("/hook", "probe"),
    ];
    for (path, event) in cases {
        let called = psp_post(&hooks, &sidecar, path, &[]).await;
        assert_eq!(called.got.status, 200, "{path}");
        let seen = app.seen();
        assert_eq!(
            seen.last().unwrap().headers["x-pix-webhook-event"],
            event,
            "{path}"
        );
        assert_eq!(
            seen.last().unwrap().uri,
            "/hook",
            "{path}: no sidecar query reaches the app"
        );
    }
    let before = app.seen().len();
    let other = psp_post(&hooks, &sidecar, "/other/pix", &[]).await;
    assert_problem(&other.got, 404, "webhook-not-found");
    let get = call(
        sidecar.webhook.unwrap(),
        hooks.psp_client(),
        "GET",
        "/hook/pix",
        &[],
        "",
    )
    .await
    .unwrap();
    assert_problem(&get.got, 405, "webhook-method-not-allowed");
    assert_eq!(
        app.seen().len(),
        before,
        "refused calls are never forwarded"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let (_env, hooks, app, sidecar) = setup(&["--webhook-max-body", "64"]).await;
    let big = "x".repeat(65);
    let called = post(
        sidecar.webhook.unwrap(),
        hooks.psp_client(),
        "/pix",
        &[],
        &big,
    )
    .await
    .unwrap();
    assert_problem(&called.got, 413, "webhook-body-too-large");
    assert!(app.seen().is_empty());
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

#[tokio::test]
async fn app_failures_become_503_so_the_psp_retries_and_4xx_pass_through() {
    let (_env, hooks, app, sidecar) = setup(&["--webhook-timeout", "300ms"]).await;
    app.answer(500, Duration::ZERO);
    assert_problem(
        &psp_post(&hooks, &sidecar, "/pix", &[]).await.got,
        503,
        "webhook-app-error",
    );
    app.answer(422, Duration::ZERO);
    let called = psp_post(&hooks, &sidecar, "/pix", &[]).await;
    assert_eq!(called.got.status, 422);
    assert_eq!(called.got.body, "app");
    app.answer(200, Duration::from_secs(3));
    assert_problem(
        &psp_post(&hooks, &sidecar, "/pix", &[]).await.got,
        503,
        "webhook-app-timeout",
    );
    assert_eq!(webhook_metric(&sidecar, "app_error"), 1);
    assert_eq!(webhook_metric(&sidecar, "app_timeout"), 1);
}

#[tokio::test]
async fn an_app_that_is_down_gets_the_psp_a_503() {
    let closed = bind().await;
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let env = Env::new().await;
    let hooks = Hooks::new(&env);
    let flags = hooks.flags(&env, &url, &[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let sidecar = env.sidecar(&flags).await;
    assert_problem(
        &psp_post(&hooks, &sidecar, "/pix", &[]).await.got,
        503,
        "webhook-app-error",
    );
}

#[tokio::test]
async fn server_certificate_swapped_the_kubernetes_way_under_load_loses_no_call() {
    let env = Env::new().await;
    let hooks = Hooks::new(&env);
    let app = App::start().await;
    let dir = env.path("webhook-identity");
    std::fs::create_dir_all(&dir).unwrap();
    crate::reload::publish(&dir, "v1", &hooks.server.cert_pem, &hooks.server.key_pem);
    let (cert, key) = (
        dir.join("cert.pem").display().to_string(),
        dir.join("key.pem").display().to_string(),
    );
    let flags = hooks.flags(
        &env,
        &app.url(),
        &[
            "--webhook-cert",
            &cert,
            "--webhook-key",
            &key,
            "--reload-interval",
            "100ms",
        ],
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let sidecar = Arc::new(env.sidecar(&flags).await);
    let addr = sidecar.webhook.unwrap();
    assert_eq!(
        psp_post(&hooks, &sidecar, "/pix", &[]).await.server_cert,
        hooks.server.cert_der
    );

    let (failed, ok) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = hooks.psp_client();
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (failed, ok, stop, client) =
                (failed.clone(), ok.clone(), stop.clone(), client.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match post(addr, client.clone(), "/pix", &[], BODY).await {
                        Ok(c) if c.got.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                        other => {
                            eprintln!("failed: {other:?}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || ok.load(Ordering::SeqCst) >= 5).await);
    let new = hooks.server_ca.server().unwrap();
    crate::reload::publish(&dir, "v2", &new.cert_pem, &new.key_pem);
    // Observe the swap: a new connection is shown the new certificate.
    let mut served_new = false;
    for _ in 0..100 {
        if psp_post(&hooks, &sidecar, "/pix", &[]).await.server_cert == new.cert_der {
            served_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served_new, "the new certificate is served after the swap");
    let after = ok.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || ok.load(Ordering::SeqCst)
            >= after + 5)
        .await
    );
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no call failed across the swap"
    );
}

#[tokio::test]
async fn verify_marks_known_pix_true_unknown_false_and_require_drops_the_unknown() {
    let settings = pix_auth_proxy::sandbox::PspSettings {
        pix_api: true,
        ..Default::default()
    };
    let (env, hooks, app, sidecar) =
        setup_with(Env::with(settings).await, &["--webhook-verify", "on"]).await;
    sidecar.ready().await;
    let e2e = env.psp.record_pix("txid0000000000000000000000001", "10.00");
    let known = format!(
        r#"{{"pix":[{{"endToEndId":"{e2e}","txid":"txid0000000000000000000000001","valor":"10.00"}}]}}"#
    );
    let wrong_amount = known.replace("10.00", "99.00");
    let addr = sidecar.webhook.unwrap();
    for (body, want) in [
        (known.as_str(), "true"),
        (wrong_amount.as_str(), "false"),
        (BODY, "false"),
    ] {
        let called = post(addr, hooks.psp_client(), "/pix", &[], body)
            .await
            .unwrap();
        assert_eq!(called.got.status, 200);
        assert_eq!(
            app.seen().last().unwrap().headers["x-pix-webhook-verified"],
            want,
            "{body}"
        );
    }
    // Other events are not Pix: nothing to verify.
    post(addr, hooks.psp_client(), "/rec", &[], "{}")
        .await
        .unwrap();
    assert!(
        !app.seen()
            .last()
            .unwrap()
            .headers
            .contains_key("x-pix-webhook-verified")
    );
    assert_eq!(webhook_metric(&sidecar, "verified"), 1);
    assert_eq!(webhook_metric(&sidecar, "unverified"), 2);

    let flags = hooks.flags(&env, &app.url(), &["--webhook-verify", "require"]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let strict = env.sidecar(&flags).await;
    strict.ready().await;
    let before = app.seen().len();
    let dropped = post(
        strict.webhook.unwrap(),
        hooks.psp_client(),
        "/pix",
        &[],
        BODY,
    )
    .await
    .unwrap();
    assert_eq!(
        dropped.got.status, 200,
        "dropped with 200 so the PSP stops retrying"
    );
    assert_eq!(
        app.seen().len(),
        before,
        "an unconfirmed Pix never reaches the app"
    );
    let kept = post(
        strict.webhook.unwrap(),
        hooks.psp_client(),
        "/pix",
        &[],
        &known,
    )
    .await
    .unwrap();
    assert_eq!(kept.got.status, 200);
    assert_eq!(app.seen().len(), before + 1);
    assert_eq!(
        app.seen().last().unwrap().headers["x-pix-webhook-verified"],
        "true"
    );
}

#[tokio::test]
async fn url_secret_variant_forwards_without_the_secret_and_refuses_a_wrong_or_missing_one() {
    let env = Env::new().await;
    let secret = "hmac-secret-5a0c1d9e";
    env.write("url-secret", format!("{secret}\n").as_bytes());
    let hooks = Hooks::new(&env);
    let app = App::start().await;
    let flags = hooks.flags(
        &env,
        &app.url(),
        &["--webhook-url-secret-file", &env.p("url-secret")],
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let sidecar = env.sidecar(&flags).await;
    let addr = sidecar.webhook.unwrap();
    let anon = hooks.anonymous_client();
    let right = post(
        addr,
        anon.clone(),
        &format!("/?hmac={secret}&ignorar=/pix"),
        &[],
        BODY,
    )
    .await
    .unwrap();
    assert_eq!(right.got.status, 200);
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].uri, "/hook",
        "neither hmac nor ignorar reaches the app"
    );
    assert_eq!(seen[0].headers["x-pix-webhook-event"], "pix");
    for path in [
        "/?hmac=wrong&ignorar=/pix",
        "/pix",
        &format!("/?hmac={secret}x"),
    ] {
        let refused = post(addr, anon.clone(), path, &[], BODY).await.unwrap();
        assert_problem(&refused.got, 403, "webhook-forbidden");
    }
    assert_eq!(app.seen().len(), 1);
    let logs = logs::captured();
    assert!(logs.contains("webhook_request"), "the calls were logged");
    assert!(!logs.contains(secret), "the URL secret never reaches a log");
}

#[tokio::test]
async fn a_caller_outside_the_allowed_networks_gets_403() {
    let (_env, hooks, app, sidecar) = setup(&["--webhook-allow-ip", "10.0.0.0/8"]).await;
    assert_problem(
        &psp_post(&hooks, &sidecar, "/pix", &[]).await.got,
        403,
        "webhook-forbidden",
    );
    assert!(app.seen().is_empty());
    let (_env, hooks, app, sidecar) = setup(&["--webhook-allow-ip", "127.0.0.0/8"]).await;
    assert_eq!(
        psp_post(&hooks, &sidecar, "/pix", &[]).await.got.status,
        200
    );
    assert_eq!(app.seen().len(), 1);
}
