//! The server certificate rotated under load, `--webhook-verify`, the URL-secret variant and
//! the address allow-list.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{BODY, E2E, psp_post, setup, setup_with, webhook_metric};
use crate::support::counting_psp::{CountingPsp, Event};
use crate::support::webhook::{App, Hooks, post};
use crate::support::*;

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

/// A sidecar (ready) verifying against the mock PSP's Pix API, with `extra` flags.
async fn setup_pix_api(extra: &[&str]) -> (Env, Hooks, App, Running) {
    let settings = pix_auth_proxy::sandbox::PspSettings {
        pix_api: true,
        ..Default::default()
    };
    let (env, hooks, app, sidecar) = setup_with(Env::with(settings).await, extra).await;
    sidecar.ready().await;
    (env, hooks, app, sidecar)
}

#[tokio::test]
async fn verify_marks_known_pix_true_unknown_false_and_require_drops_the_unknown() {
    let (env, hooks, app, sidecar) = setup_pix_api(&["--webhook-verify", "on"]).await;
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

/// Over an HTTP/1.1 PSP, each lookup reads the PSP's answer to its end, a 404's included,
/// and hands its connection back: a run of verified notifications rides one connection
/// instead of opening (and handshaking) a new one per lookup.
#[tokio::test]
async fn verify_lookups_over_http1_reuse_one_psp_connection() {
    let (env, hooks, app, sidecar) =
        setup_pix_api(&["--webhook-verify", "on", "--upstream-http1-only"]).await;
    let e2e = env.psp.record_pix("txid0000000000000000000000002", "12.34");
    let known = format!(
        r#"{{"pix":[{{"endToEndId":"{e2e}","txid":"txid0000000000000000000000002","valor":"12.34"}}]}}"#
    );
    let addr = sidecar.webhook.unwrap();
    // The first lookup opens the API connection (the token's came before).
    let first = post(addr, hooks.psp_client(), "/pix", &[], &known);
    assert_eq!(first.await.unwrap().got.status, 200);
    let warm = env.psp.connections();
    assert_eq!(warm.1, 0, "HTTP/1.1 only");
    let wrong_amount = known.replace("12.34", "1.00");
    for body in [known.as_str(), BODY, wrong_amount.as_str(), known.as_str()] {
        let called = post(addr, hooks.psp_client(), "/pix", &[], body);
        assert_eq!(called.await.unwrap().got.status, 200);
    }
    let verdicts: Vec<String> = app
        .seen()
        .iter()
        .map(|r| {
            r.headers["x-pix-webhook-verified"]
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(verdicts, ["true", "true", "false", "false", "true"]);
    assert_eq!(
        env.psp.connections(),
        warm,
        "four more lookups (200s and a 404) opened no PSP connection"
    );
}

/// The status gives a lookup its verdict; reading the body after it only keeps the
/// connection. A PSP that answers 404 and then stalls the body still refutes the Pix: under
/// `require` the notification is dropped with a 200, not answered 503 as if the PSP could
/// not be asked.
#[tokio::test]
async fn a_404_whose_body_stalls_still_refutes_the_pix() {
    let env = Env::new().await;
    let psp = CountingPsp::start(&env.pki, &env.pki.server().unwrap(), false).await;
    let upstream = format!("{}/stalled-404", psp.url());
    let extra = [
        "--webhook-verify",
        "require",
        "--webhook-timeout",
        "1s",
        "--upstream",
        upstream.as_str(),
    ];
    let (_env, hooks, app, sidecar) = setup_with(env, &extra).await;
    sidecar.ready().await;
    let called = psp_post(&hooks, &sidecar, "/pix", &[]).await;
    assert_eq!(
        called.got.status, 200,
        "refuted (dropped with 200), not unknown (503)"
    );
    assert!(app.seen().is_empty(), "a refuted Pix never reaches the app");
    // The PSP sees the abandoned exchange end once the sidecar's close reaches it, which
    // may come after the sidecar's answer to the webhook call.
    eventually(Duration::from_secs(5), || psp.events().len() >= 2).await;
    assert_eq!(
        psp.events(),
        [
            Event::Start(format!("/stalled-404/pix/{E2E}")),
            Event::End(format!("/stalled-404/pix/{E2E}"))
        ],
        "one lookup, its stalled body given up at the deadline"
    );
}

#[tokio::test]
async fn url_secret_variant_forwards_without_the_secret_and_refuses_a_wrong_or_missing_one() {
    let env = Env::new().await;
    let secret = "hmac-secret-5a0c1d9e";
    env.write("url-secret", format!("{secret}\n").as_bytes());
    let hooks = Hooks::new(&env);
    let app = App::start().await;
    let mut flags = hooks.flags(
        &env,
        &app.url(),
        &["--webhook-url-secret-file", &env.p("url-secret")],
    );
    // The variant for PSPs that cannot do mTLS: no client CA at all.
    let ca = flags
        .iter()
        .position(|f| f == "--webhook-client-ca")
        .unwrap();
    flags.drain(ca..ca + 2);
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
    assert!(
        logs.contains("webhook_accepts_unverified"),
        "the start-up WARN says so"
    );
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

#[tokio::test]
async fn require_answers_503_when_the_psp_cannot_be_asked_so_the_notification_comes_again() {
    let (env, hooks, app, sidecar) =
        setup_pix_api(&["--webhook-verify", "require", "--webhook-timeout", "300ms"]).await;
    let e2e = env.psp.record_pix("txid0000000000000000000000002", "1.00");
    let known = format!(
        r#"{{"pix":[{{"endToEndId":"{e2e}","txid":"txid0000000000000000000000002","valor":"1.00"}}]}}"#
    );
    env.psp.set_api_delay(Duration::from_secs(2));
    let called = post(
        sidecar.webhook.unwrap(),
        hooks.psp_client(),
        "/pix",
        &[],
        &known,
    )
    .await
    .unwrap();
    assert_problem(&called.got, 503, "webhook-verify-unavailable");
    assert!(app.seen().is_empty(), "nothing unconfirmed reaches the app");
    env.psp.set_api_delay(Duration::ZERO);
    let again = post(
        sidecar.webhook.unwrap(),
        hooks.psp_client(),
        "/pix",
        &[],
        &known,
    )
    .await
    .unwrap();
    assert_eq!(again.got.status, 200);
    assert_eq!(
        app.seen().len(),
        1,
        "the PSP's retry is confirmed and forwarded"
    );
}

#[tokio::test]
async fn a_new_client_ca_bundle_is_picked_up_without_a_restart() {
    let (env, hooks, app, sidecar) = setup(&["--reload-interval", "100ms"]).await;
    let newcomer = hooks.impostor.client("psp-webhook").unwrap();
    let client = hooks.client_with(&newcomer, &[]);
    let addr = sidecar.webhook.unwrap();
    let refused = post(addr, client.clone(), "/pix", &[], BODY).await;
    assert!(refused.map_or(true, |c| c.got.status == 403));
    // The PSP moved to a new CA: the operator adds it to the bundle file.
    let bundle = format!("{}{}", hooks.root.ca_pem(), hooks.impostor.ca_pem());
    env.write("psp-ca.pem", bundle.as_bytes());
    let mut accepted = false;
    for _ in 0..100 {
        if let Ok(c) = post(addr, client.clone(), "/pix", &[], BODY).await {
            if c.got.status == 200 {
                accepted = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "the new CA is trusted after the reload");
    assert_eq!(app.seen().len(), 1);
    assert_eq!(
        psp_post(&hooks, &sidecar, "/pix", &[]).await.got.status,
        200,
        "the old CA still works"
    );
}
