//! What reaches the app: events from paths, limits, header hygiene, and the app's failures
//! turned into answers that make the PSP retry.

use std::time::Duration;

use super::{BODY, psp_post, setup, webhook_metric};
use crate::support::webhook::{Hooks, call, post, post_h2};
use crate::support::*;

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
    let text = sidecar.metrics.encode();
    assert!(
        text.contains("pix_auth_proxy_webhook_request_duration_seconds_count 1"),
        "{text}"
    );
    let expiry = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("pix_auth_proxy_webhook_server_cert_expiry_timestamp_seconds ")
        })
        .map(|v| v.trim().parse::<f64>().unwrap())
        .expect("the webhook certificate expiry is exported");
    assert!(expiry > 1.7e9, "{expiry}");
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
async fn a_psp_speaking_http2_is_served_too() {
    let (_env, hooks, app, sidecar) = setup(&[]).await;
    let status = post_h2(sidecar.webhook.unwrap(), hooks.psp_client(), "/pix", BODY)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, BODY.as_bytes());
    assert_eq!(seen[0].headers["x-pix-webhook-event"], "pix");
}
