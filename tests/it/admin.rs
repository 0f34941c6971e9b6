//! The admin listener: probes, metrics, and the shutdown sequence Kubernetes relies on.

use std::time::Duration;

use http::Request;
use pix_auth_proxy::sandbox::TokenMode;

use crate::support::process::spawn;
use crate::support::*;

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("metrics text parses")
}

/// The value of `name` whose labels include every pair of `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .next()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn readyz_is_503_before_the_first_token_and_200_after_while_livez_is_always_200() {
    let env = Env::new().await;
    env.psp.set_mode(TokenMode::Hang);
    let sidecar = env.sidecar(&[]).await;
    let got = get(&sidecar.admin_url("/readyz")).await;
    assert_eq!(got.status, 503);
    assert!(String::from_utf8_lossy(&got.body).contains("no usable access token"));
    assert_eq!(
        get(&sidecar.admin_url("/livez")).await.status,
        200,
        "liveness does not depend on the PSP"
    );
    env.psp.set_mode(TokenMode::Normal);
    sidecar.ready().await;
    assert_eq!(get(&sidecar.admin_url("/readyz")).await.status, 200);
    assert_eq!(get(&sidecar.admin_url("/nope")).await.status, 404);
    sidecar.health.begin_shutdown();
    let got = get(&sidecar.admin_url("/readyz")).await;
    assert_eq!(got.status, 503);
    assert!(String::from_utf8_lossy(&got.body).contains("shutting down"));
}

#[tokio::test]
async fn metrics_parse_and_move_after_requests_a_token_failure_and_a_401() {
    let env = Env::new().await;
    let mut config = env.config(&[]);
    config.refresh.forced_min_interval = Duration::ZERO;
    config.proxy.token_wait = Duration::from_millis(300);
    let sidecar = Running::start(config).await;
    sidecar.ready().await;
    let before = scrape(&String::from_utf8_lossy(
        &get(&sidecar.admin_url("/metrics")).await.body,
    ));
    assert_eq!(value(&before, "pix_auth_proxy_token_valid", &[]), 1.0);
    assert_eq!(value(&before, "pix_auth_proxy_ready", &[]), 1.0);
    assert_eq!(
        value(
            &before,
            "pix_auth_proxy_token_fetch_total",
            &[("result", "success"), ("reason", "initial")]
        ),
        1.0
    );
    let expiry = value(
        &before,
        "pix_auth_proxy_token_expiry_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (expiry - (now + 300.0)).abs() < 5.0,
        "expiry {expiry} vs now {now}"
    );
    assert!(
        value(
            &before,
            "pix_auth_proxy_client_cert_expiry_timestamp_seconds",
            &[]
        ) > now + 300.0 * 86_400.0
    );

    // Two good requests; then a 401 whose renewal hits a failing token endpoint (so the 401
    // is passed through); then a request the sidecar answers itself (forbidden target).
    for _ in 0..2 {
        assert_eq!(get(&sidecar.url("/cob/m")).await.status, 200);
    }
    env.psp.set_mode(TokenMode::Raw {
        status: http::StatusCode::INTERNAL_SERVER_ERROR,
        content_type: "application/json",
        body: bytes::Bytes::from_static(b"{}"),
    });
    env.psp.reject_next_api(1);
    assert_eq!(get(&sidecar.url("/cob/m")).await.status, 401);
    let resp = raw_http1(
        sidecar.addr,
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");

    let after = scrape(&String::from_utf8_lossy(
        &get(&sidecar.admin_url("/metrics")).await.body,
    ));
    assert_eq!(
        value(&after, "pix_auth_proxy_requests_total", &[("class", "2xx")]),
        2.0
    );
    assert_eq!(
        value(&after, "pix_auth_proxy_requests_total", &[("class", "4xx")]),
        2.0,
        "the 401 and the 403"
    );
    assert_eq!(
        value(&after, "pix_auth_proxy_upstream_unauthorized_total", &[]),
        1.0
    );
    assert_eq!(
        value(&after, "pix_auth_proxy_forced_refresh_total", &[]),
        1.0
    );
    assert!(
        value(
            &after,
            "pix_auth_proxy_token_fetch_total",
            &[("result", "failure"), ("reason", "status")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &after,
            "pix_auth_proxy_downstream_errors_total",
            &[("kind", "forbidden-target")]
        ),
        1.0,
        "the app's CONNECT is the app's fault"
    );
    assert_eq!(
        value(
            &after,
            "pix_auth_proxy_upstream_errors_total",
            &[("kind", "forbidden-target")]
        ),
        0.0
    );
    assert_eq!(
        value(&after, "pix_auth_proxy_request_duration_seconds_count", &[]),
        4.0
    );
    assert_eq!(
        value(&after, "pix_auth_proxy_cache_decrypt_failures_total", &[]),
        0.0
    );
    // No label value is a path or a token.
    let text =
        String::from_utf8_lossy(&get(&sidecar.admin_url("/metrics")).await.body).into_owned();
    assert!(!text.contains("/cob/m"));
    for t in env.psp.issued_tokens() {
        assert!(!text.contains(&t));
    }
}

#[tokio::test]
async fn oversized_request_headers_are_refused_with_431() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&["--max-header-bytes", "16384"]).await;
    sidecar.ready().await;
    let req = Request::get(sidecar.url("/cob/big"))
        .header("x-big", "a".repeat(40_000))
        .body(empty())
        .unwrap();
    let got = http_client().request(req).await;
    match got {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => panic!("expected a 431, got {e}"),
    }
    assert_eq!(env.psp.api_requests(), 0);
}

/// The sidecar reads at most 8 KiB - 1 from the app at a time (so that hyper's read buffer
/// stays at 8 KiB per connection); a head longer than that, within `--max-header-bytes`,
/// still arrives whole, over several reads. (12,000 bytes: the mock PSP, a hyper h2 server,
/// takes header lists up to 16 KiB.)
#[tokio::test]
async fn a_head_longer_than_one_read_within_the_limit_reaches_the_psp_whole() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&[]).await;
    sidecar.ready().await;
    let big = "b".repeat(12_000);
    let req = Request::get(sidecar.url("/cob/long-head"))
        .header("x-big", &big)
        .body(empty())
        .unwrap();
    let got = send(&http_client(), req).await;
    assert_eq!(got.status, 200, "{:?}", String::from_utf8_lossy(&got.body));
    let echo = got.json();
    assert_eq!(echo["path"], "/cob/long-head");
    assert_eq!(echo["headers"]["x-big"][0].as_str(), Some(big.as_str()));
    assert_eq!(env.psp.api_requests(), 1);
}

#[tokio::test]
async fn sigterm_flips_readiness_keeps_serving_through_the_delay_drains_and_exits_0() {
    let env = Env::new().await;
    let port = bind().await.local_addr().unwrap().port();
    let admin_port = bind().await.local_addr().unwrap().port();
    let (listen, admin) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{admin_port}"),
    );
    let mut child = spawn(
        &env.flags(&[
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
            "--shutdown-delay",
            "1s",
            "--shutdown-timeout",
            "10s",
        ]),
        &[],
        false,
    );
    let ready_url = format!("http://{admin}/readyz");
    child.wait_for_200(&ready_url).await;

    // Slow PSP: requests in flight when SIGTERM arrives.
    env.psp.set_api_delay(Duration::from_millis(2_500));
    let mut slow = Vec::new();
    for i in 0..5 {
        let url = format!("http://{listen}/cob/slow{i}");
        slow.push(tokio::spawn(async move { get(&url).await.status }));
    }
    assert!(
        eventually(Duration::from_secs(2), || env.psp.api_requests() == 5).await,
        "the slow requests reached the PSP"
    );
    child.signal("TERM");
    // Readiness flips well within the 1 s delay.
    let mut flipped = false;
    for _ in 0..25 {
        if get(&ready_url).await.status == 503 {
            flipped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(flipped, "readiness turns 503 at once");
    // During the delay, new connections are still served.
    env.psp.set_api_delay(Duration::ZERO);
    assert_eq!(
        get(&format!("http://{listen}/cob/during-delay"))
            .await
            .status,
        200
    );
    // After the delay the listener closes while the slow requests are still in flight.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&listen).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener is closed after the delay");
    assert!(
        slow.iter().any(|t| !t.is_finished()),
        "the listener closed while requests were still being drained"
    );
    for t in slow {
        assert_eq!(t.await.unwrap(), 200, "in-flight requests complete");
    }
    let (code, logs) = child.finish(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        logs.contains("shutdown_delay") && logs.contains("draining"),
        "{logs}"
    );
}
