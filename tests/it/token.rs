//! Token lifecycle: renewal, cold start, outages, hostile token responses, upstream 401s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use pix_auth_proxy::sandbox::{PspSettings, TokenMode};
use tokio::time::Instant;

use crate::support::body::Chunks;
use crate::support::*;
use http_body_util::BodyExt;

fn short_tokens(ttl: Duration) -> PspSettings {
    PspSettings {
        token_ttl: ttl,
        ..PspSettings::default()
    }
}

/// Run a sequential client loop for `duration`; returns (ok, failed) counts.
async fn client_loop(url: String, duration: Duration) -> (u64, u64) {
    let client = http_client();
    let end = Instant::now() + duration;
    let (mut ok, mut failed) = (0, 0);
    while Instant::now() < end {
        let got = send(&client, Request::get(url.as_str()).body(empty()).unwrap()).await;
        if got.status == 200 {
            ok += 1;
        } else {
            failed += 1;
            eprintln!(
                "failed request: {} {}",
                got.status,
                String::from_utf8_lossy(&got.body)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ok, failed)
}

#[tokio::test]
async fn two_second_tokens_over_three_lifetimes_fail_nothing_and_renew_once_per_interval() {
    let env = Env::with(short_tokens(Duration::from_secs(2))).await;
    // Default margin (15 s) is larger than the token: the effective margin shrinks to 0.5 s.
    let sidecar = env.sidecar(&[]).await;
    let (ok, failed) = client_loop(sidecar.url("/cob/loop"), Duration::from_secs(6)).await;
    assert_eq!(failed, 0, "{ok} ok");
    assert!(ok > 100, "the loop ran: {ok}");
    // Renewal at 0.66 × 2 s ± 10 % (1.19–1.45 s): over 6 s that is 1 + 4..=5 fetches.
    let fetches = env.psp.token_requests();
    eprintln!("measured: 2 s tokens, 6 s loop: {ok} ok, {failed} failed, {fetches} token fetches");
    assert!(
        (5..=6).contains(&fetches),
        "token endpoint counted {fetches} fetches"
    );
    env.assert_logs_clean();
}

#[tokio::test]
async fn fifty_concurrent_requests_at_cold_start_cause_one_token_request() {
    let env = Env::new().await;
    // Hold the first token request so every app request arrives before any token exists.
    env.psp.set_mode(TokenMode::Hang);
    let sidecar = env.sidecar(&[]).await;
    let client = http_client();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = client.clone();
        let url = sidecar.url(&format!("/cob/cold{i}"));
        tasks.push(tokio::spawn(async move {
            send(&client, Request::get(url).body(empty()).unwrap())
                .await
                .status
        }));
    }
    assert!(eventually(Duration::from_secs(5), || env.psp.token_requests() == 1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.psp.api_requests(),
        0,
        "no request may go out without a token"
    );
    env.psp.set_mode(TokenMode::Normal);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(env.psp.token_requests(), 1);
    assert_eq!(env.psp.api_requests(), 50);
}

#[tokio::test]
async fn token_endpoint_outage_keeps_the_valid_token_then_503_after_expiry_then_recovers() {
    let env = Env::with(short_tokens(Duration::from_secs(6))).await;
    let sidecar = env.sidecar(&["--token-timeout", "300ms"]).await;
    sidecar.ready().await;
    let first = env.psp.issued_tokens()[0].clone();
    // 6 s token, effective margin 1.5 s: usable for 4.5 s, renewal from ~3.6 s on.
    let usable_until = sidecar.cell().current().unwrap().usable_until();
    env.psp.set_mode(TokenMode::Raw {
        status: StatusCode::SERVICE_UNAVAILABLE,
        content_type: "text/html",
        body: Bytes::from_static(b"<html>maintenance</html>"),
    });
    // Inside the usable window requests succeed with the kept token, while the refresher
    // keeps retrying in the background.
    let window =
        usable_until.saturating_duration_since(Instant::now()) - Duration::from_millis(150);
    let (ok, failed) = client_loop(sidecar.url("/cob/outage"), window).await;
    assert_eq!(failed, 0, "{ok} ok");
    let fetches_during_outage = env.psp.token_requests();
    // The first fetch, then at least one renewal attempt in the ~0.9 s between the refresh
    // point and the end of the usable window, retries no closer than 500 ms apart.
    assert!(
        (2..=4).contains(&fetches_during_outage),
        "the refresher kept retrying, not too often: {fetches_during_outage}"
    );
    assert_eq!(sidecar.cell().current().unwrap().version(), 1);

    // Past expiry − margin: 503 token-unavailable with Retry-After, never the stale token.
    tokio::time::sleep_until(usable_until + Duration::from_millis(50)).await;
    let got = get(&sidecar.url("/cob/x")).await;
    assert_problem(&got, 503, "token-unavailable");
    assert_eq!(got.headers["retry-after"], "1");
    assert!(env.psp.issued_tokens() == vec![first.clone()]);

    // The token endpoint comes back: so do successful requests.
    env.psp.set_mode(TokenMode::Normal);
    let mut recovered = false;
    for _ in 0..50 {
        let got = get(&sidecar.url("/cob/x")).await;
        if got.status == 200 {
            assert_ne!(got.upstream_authorization(), format!("Bearer {first}"));
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "requests succeed again once the token endpoint recovers"
    );
    env.assert_logs_clean();
}

fn raw(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> TokenMode {
    TokenMode::Raw {
        status: StatusCode::from_u16(status).unwrap(),
        content_type,
        body: body.into(),
    }
}

#[tokio::test]
async fn hostile_token_responses_keep_the_last_good_token_and_never_become_a_header() {
    let env = Env::new().await;
    let mut config = env.config(&["--token-timeout", "2s"]);
    config.refresh.forced_min_interval = Duration::ZERO;
    config.proxy.token_wait = Duration::from_millis(500);
    let sidecar = Running::start(config).await;
    sidecar.ready().await;
    let good = format!("Bearer {}", env.psp.issued_tokens()[0]);

    let json = "application/json";
    let cases: Vec<(&str, TokenMode)> = vec![
        (
            "html",
            raw(200, "text/html", "<html><body>Bad gateway</body></html>"),
        ),
        (
            "truncated json",
            raw(200, json, r#"{"access_token":"trunc-abc","expires_in":30"#),
        ),
        (
            "empty token",
            raw(
                200,
                json,
                r#"{"access_token":"","expires_in":300,"token_type":"Bearer"}"#,
            ),
        ),
        (
            "token with CRLF",
            raw(
                200,
                json,
                "{\"access_token\":\"evil-crlf\\r\\nX-Injected: 1\",\"expires_in\":300}",
            ),
        ),
        (
            "1 MB body",
            raw(
                200,
                json,
                format!(
                    r#"{{"access_token":"big-{}","expires_in":300}}"#,
                    "a".repeat(1 << 20)
                ),
            ),
        ),
        (
            "negative expires_in",
            raw(200, json, r#"{"access_token":"neg-tok","expires_in":-300}"#),
        ),
        (
            "zero expires_in",
            raw(200, json, r#"{"access_token":"zero-tok","expires_in":0}"#),
        ),
        (
            "huge expires_in",
            raw(
                200,
                json,
                r#"{"access_token":"huge-tok","expires_in":1e18}"#,
            ),
        ),
        (
            "string expires_in",
            raw(
                200,
                json,
                r#"{"access_token":"str-tok","expires_in":"forever"}"#,
            ),
        ),
        (
            "token_type mac",
            raw(
                200,
                json,
                r#"{"access_token":"mac-tok","expires_in":300,"token_type":"mac"}"#,
            ),
        ),
        (
            "status 500",
            raw(
                500,
                json,
                r#"{"access_token":"five-hundred","expires_in":300}"#,
            ),
        ),
        (
            "401 invalid_client",
            raw(
                401,
                json,
                r#"{"error":"invalid_client","error_description":"Invalid client credentials"}"#,
            ),
        ),
    ];
    let hostile_tokens = [
        "trunc-abc",
        "evil-crlf",
        "neg-tok",
        "zero-tok",
        "huge-tok",
        "str-tok",
        "mac-tok",
        "five-hundred",
        "big-aaaa",
    ];
    for (name, mode) in cases {
        env.psp.set_mode(mode);
        let before = env.psp.token_requests();
        let errors_before = sidecar.refresher().stats().fetch_err.load(Ordering::SeqCst);
        // The PSP rejects the next call: the sidecar asks the (hostile) endpoint for a new
        // token, which must be refused; the 401 is passed through.
        env.psp.reject_next_api(1);
        let got = get(&sidecar.url("/cob/h")).await;
        assert_eq!(got.status, 401, "{name}");
        assert!(
            env.psp.token_requests() > before,
            "{name}: a token fetch was attempted"
        );
        assert!(
            eventually(Duration::from_secs(3), || sidecar
                .refresher()
                .stats()
                .fetch_err
                .load(Ordering::SeqCst)
                > errors_before)
            .await,
            "{name}: the fetch was counted as failed"
        );
        // The last good token is still injected.
        let got = get(&sidecar.url("/cob/h")).await;
        assert_eq!(got.status, 200, "{name}");
        assert_eq!(got.upstream_authorization(), good, "{name}");
        for t in hostile_tokens {
            assert!(!got.upstream_authorization().contains(t), "{name}");
        }
    }
    assert_eq!(
        sidecar.cell().current().unwrap().version(),
        1,
        "no hostile response became a token"
    );
    let logs = crate::support::logs::captured();
    for t in hostile_tokens {
        assert!(!logs.contains(t), "hostile token {t} reached the logs");
    }
    env.assert_logs_clean();
}

#[tokio::test]
async fn upstream_401_once_costs_one_extra_fetch_and_the_small_request_is_replayed() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&[]).await;
    sidecar.ready().await;
    env.psp.reject_next_api(1);
    let payload = r#"{"calendario":{"expiracao":3600},"valor":{"original":"10.00"}}"#;
    let req = Request::put(sidecar.url("/cob/replay1"))
        .header("content-type", "application/json")
        .body(full(payload))
        .unwrap();
    let got = send(&http_client(), req).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(env.psp.token_requests(), 2);
    assert_eq!(
        env.psp.api_requests(),
        2,
        "the first attempt and one replay"
    );
    let tokens = env.psp.issued_tokens();
    assert_eq!(
        got.upstream_authorization(),
        format!("Bearer {}", tokens[1])
    );
    assert_eq!(got.json()["method"], "PUT");
    assert_eq!(got.json()["body_len"], payload.len());
    env.assert_logs_clean();
}

#[tokio::test]
async fn a_burst_of_401s_for_one_token_is_one_renewal() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&[]).await;
    sidecar.ready().await;
    // The PSP forgets the token: every request carrying it gets 401 at once.
    env.psp.revoke_all();
    let client = http_client();
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (client, ok, url) = (
            client.clone(),
            ok.clone(),
            sidecar.url(&format!("/cob/b{i}")),
        );
        tasks.push(tokio::spawn(async move {
            let got = send(&client, Request::get(url).body(empty()).unwrap()).await;
            if got.status == 200 {
                ok.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        ok.load(Ordering::SeqCst),
        20,
        "every request succeeded on replay"
    );
    assert_eq!(
        env.psp.token_requests(),
        2,
        "one initial fetch + one renewal for the whole burst"
    );
}

#[tokio::test]
async fn a_401_on_a_streamed_body_is_passed_through_and_renews_the_token() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&[]).await;
    sidecar.ready().await;
    env.psp.reject_next_api(1);
    let req = Request::post(sidecar.url("/lote"))
        .body(Chunks::new(100_000, 8192, 1).boxed())
        .unwrap();
    let got = send(&http_client(), req).await;
    assert_eq!(got.status, 401, "a streamed body cannot be replayed");
    assert!(eventually(Duration::from_secs(3), || env.psp.token_requests() == 2).await);
    let got = get(&sidecar.url("/cob/after")).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.upstream_authorization(),
        format!("Bearer {}", env.psp.issued_tokens()[1])
    );
}

#[tokio::test]
async fn every_client_auth_style_and_encoding_gets_a_token() {
    use pix_auth_proxy::token::endpoint::ClientAuth;
    for (auth, flag, enc) in [
        (ClientAuth::Post, "post", "form"),
        (ClientAuth::Post, "post", "json"),
        (ClientAuth::Basic, "basic", "form"),
        (ClientAuth::None, "none", "form"),
    ] {
        let env = Env::with(PspSettings {
            auth,
            token_status: StatusCode::CREATED,
            ..PspSettings::default()
        })
        .await;
        let sidecar = env
            .sidecar(&["--client-auth", flag, "--token-encoding", enc])
            .await;
        let got = get(&sidecar.url("/cob/x")).await;
        assert_eq!(got.status, 200, "{flag}/{enc}: {:?}", got.body);
        // A wrong style is refused by the PSP with invalid_client.
        let wrong = if flag == "basic" { "post" } else { "basic" };
        let bad = env
            .sidecar(&["--client-auth", wrong, "--token-timeout", "500ms"])
            .await;
        let got = get(&bad.url("/cob/x")).await;
        assert_problem(&got, 503, "token-unavailable");
    }
}
