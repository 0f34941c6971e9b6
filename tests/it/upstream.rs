//! How the sidecar connects to the PSP: a burst on a cold pool shares one HTTP/2
//! connection, and a PSP that changes protocol costs no request.

use std::time::Duration;

use http::Request;
use pix_auth_proxy::client::UpstreamProtocol;
use tokio::task::JoinSet;

use crate::support::refusing_h2::RefusingH2;
use crate::support::*;

fn protocol(sidecar: &Running) -> UpstreamProtocol {
    sidecar.current.load().client.protocol()
}

/// `n` concurrent requests, each on its own app connection; returns the versions the PSP
/// saw them arrive with, after asserting every one succeeded.
async fn burst(sidecar: &Running, n: usize, with_body: bool) -> Vec<String> {
    let http = http_client();
    let mut running = JoinSet::new();
    for i in 0..n {
        let http = http.clone();
        let req = if with_body {
            Request::put(sidecar.url(&format!("/cob/burst{i}")))
                .header("content-type", "application/json")
                .body(full(format!(r#"{{"valor":{{"original":"{i}.00"}}}}"#)))
        } else {
            Request::get(sidecar.url(&format!("/burst/{i}"))).body(empty())
        };
        let req = req.unwrap();
        running.spawn(async move { send(&http, req).await });
    }
    let mut versions = Vec::new();
    while let Some(got) = running.join_next().await {
        let got = got.unwrap();
        assert_eq!(got.status, 200, "{:?}", got.body);
        versions.push(got.json()["version"].as_str().unwrap().to_owned());
    }
    versions
}

#[tokio::test]
async fn a_cold_burst_of_40_requests_opens_one_http2_connection() {
    let env = Env::new().await;
    // Every request stays in flight long enough for the whole burst to overlap.
    env.psp.set_api_delay(Duration::from_millis(200));
    let sidecar = env.sidecar(&[]).await;
    sidecar.ready().await;
    // The protocol is learned from one TLS handshake at start, before any request.
    assert!(
        eventually(Duration::from_secs(5), || protocol(&sidecar)
            == UpstreamProtocol::Http2)
        .await,
        "the PSP's protocol was not learned at start"
    );
    assert_eq!(env.psp.api_requests(), 0);
    let before = env.psp.connections();

    let versions = burst(&sidecar, 40, false).await;
    assert!(versions.iter().all(|v| v == "HTTP/2.0"), "{versions:?}");
    assert_eq!(env.psp.api_requests(), 40);
    assert_eq!(
        env.psp.connections(),
        (before.0, before.1 + 1),
        "40 concurrent requests on a cold pool must open exactly one (h2) connection"
    );

    // A second burst on the warm pool opens nothing.
    burst(&sidecar, 40, true).await;
    assert_eq!(env.psp.connections(), (before.0, before.1 + 1));
    env.assert_logs_clean();
}

/// Have the PSP close every connection gracefully, and wait until it has.
async fn close_all(env: &Env) {
    env.psp.close_connections();
    assert!(
        eventually(Duration::from_secs(5), || env.psp.open_connections() == 0).await,
        "the PSP still has {} connections open",
        env.psp.open_connections()
    );
}

#[tokio::test]
async fn a_psp_that_stops_and_resumes_offering_h2_loses_no_request() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&[]).await;
    sidecar.ready().await;
    assert_eq!(burst(&sidecar, 1, true).await, ["HTTP/2.0"]);
    assert_eq!(protocol(&sidecar), UpstreamProtocol::Http2);

    // The PSP's gateway restarts without h2: the open connections are closed (GOAWAY), new
    // ones are HTTP/1.1 only.
    env.psp.set_offer_h2(false);
    close_all(&env).await;
    let versions = burst(&sidecar, 10, true).await;
    assert!(versions.iter().all(|v| v == "HTTP/1.1"), "{versions:?}");
    assert_eq!(protocol(&sidecar), UpstreamProtocol::Http1);
    let versions = burst(&sidecar, 10, false).await;
    assert!(versions.iter().all(|v| v == "HTTP/1.1"), "{versions:?}");

    // And back: the next new connection negotiates h2 again and the sidecar follows.
    env.psp.set_offer_h2(true);
    close_all(&env).await;
    let before = env.psp.connections();
    assert_eq!(burst(&sidecar, 1, true).await, ["HTTP/2.0"]);
    assert_eq!(protocol(&sidecar), UpstreamProtocol::Http2);
    let versions = burst(&sidecar, 10, false).await;
    assert!(versions.iter().all(|v| v == "HTTP/2.0"), "{versions:?}");
    assert_eq!(
        env.psp.connections().1,
        before.1 + 2,
        "one new connection tells the sidecar h2 is back (the HTTP/1.1 pool refuses it, \
         nothing is sent on it); the h2-only pool opens one and carries all 11 requests"
    );
    assert_eq!(env.psp.api_requests(), 1 + 10 + 10 + 1 + 10);
    env.assert_logs_clean();
}

#[tokio::test]
async fn a_psp_closing_each_connection_gracefully_after_10_requests_loses_and_repeats_no_request() {
    let env = Env::new().await;
    // As gateways do after `keepalive_requests`: GOAWAY, finish what is in flight, close.
    env.psp.set_requests_per_connection(10);
    let sidecar = env.sidecar(&[]).await;
    sidecar.ready().await;
    let http = http_client();
    let mut workers = JoinSet::new();
    for w in 0..20 {
        let http = http.clone();
        let base = sidecar.url("");
        workers.spawn(async move {
            for i in 0..15 {
                let req = if i % 2 == 0 {
                    Request::put(format!("{base}/cob/w{w}r{i}"))
                        .header("content-type", "application/json")
                        .body(full(r#"{"valor":{"original":"1.00"}}"#))
                } else {
                    Request::get(format!("{base}/cob/w{w}r{i}")).body(empty())
                };
                let got = send(&http, req.unwrap()).await;
                assert_eq!(got.status, 200, "worker {w} request {i}: {:?}", got.body);
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    // Each request reached the PSP's handler exactly once: none lost, none done twice.
    assert_eq!(env.psp.api_requests(), 300);
    let (_, h2) = env.psp.connections();
    // A graceful close lets the requests already in flight finish on the old connection, so
    // a connection carries 10 or a few more: well over 10 connections for 300 requests.
    assert!(
        h2 >= 10,
        "the PSP closed connections: only {h2} h2 connections"
    );
    env.assert_logs_clean();
}

#[tokio::test]
async fn streams_the_psp_refused_unprocessed_are_sent_again_once() {
    let env = Env::new().await;
    let upstream = RefusingH2::start(&env.pki, &env.pki.server().unwrap(), 4).await;
    let sidecar = env
        .sidecar(&["--upstream", &format!("https://{}", upstream.addr)])
        .await;
    sidecar.ready().await;
    let http = http_client();
    for i in 0..12 {
        let req = Request::put(sidecar.url(&format!("/cob/r{i}")))
            .header("content-type", "application/json")
            .body(full(r#"{"valor":{"original":"1.00"}}"#))
            .unwrap();
        let got = send(&http, req).await;
        assert_eq!(got.status, 200, "request {i}: {:?}", got.body);
        assert_eq!(got.body, "ok");
    }
    // Every 4th stream was refused: 12 answered in 15 streams (4, 8 and 12 refused), so
    // each request was processed exactly once and each refused one sent again once.
    assert_eq!(upstream.answered(), 12);
    assert_eq!(upstream.refused(), 3);
    let metrics = get(&sidecar.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines()
            .any(|l| l == "pix_auth_proxy_upstream_retries_total 3"),
        "{text}"
    );
    env.assert_logs_clean();
}

#[tokio::test]
async fn http1_only_makes_no_protocol_learning_handshake() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&["--upstream-http1-only"]).await;
    sidecar.ready().await;
    for _ in 0..3 {
        assert_eq!(burst(&sidecar, 1, true).await, ["HTTP/1.1"]);
    }
    // The token endpoint's connection and one pooled API connection: nothing else.
    assert_eq!(env.psp.connections(), (2, 0));
    assert_eq!(protocol(&sidecar), UpstreamProtocol::Http1);
}
