//! How the sidecar connects to the PSP: a burst on a cold pool shares one HTTP/2
//! connection, and a PSP that changes protocol costs no request.

use std::time::Duration;

use http::Request;
use pix_auth_proxy::client::UpstreamProtocol;
use tokio::task::JoinSet;

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

#[tokio::test]
async fn a_psp_that_stops_and_resumes_offering_h2_loses_no_request() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&[]).await;
    sidecar.ready().await;
    assert_eq!(burst(&sidecar, 1, true).await, ["HTTP/2.0"]);
    assert_eq!(protocol(&sidecar), UpstreamProtocol::Http2);

    // The PSP's gateway restarts without h2: the open connections go, new ones are
    // HTTP/1.1 only. Give the sidecar's connection tasks a moment to see the close.
    env.psp.set_offer_h2(false);
    env.psp.close_connections();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let versions = burst(&sidecar, 10, true).await;
    assert!(versions.iter().all(|v| v == "HTTP/1.1"), "{versions:?}");
    assert_eq!(protocol(&sidecar), UpstreamProtocol::Http1);
    let versions = burst(&sidecar, 10, false).await;
    assert!(versions.iter().all(|v| v == "HTTP/1.1"), "{versions:?}");

    // And back: the next new connection negotiates h2 again and the sidecar follows.
    env.psp.set_offer_h2(true);
    env.psp.close_connections();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(burst(&sidecar, 1, true).await, ["HTTP/2.0"]);
    assert_eq!(protocol(&sidecar), UpstreamProtocol::Http2);
    let before = env.psp.connections();
    let versions = burst(&sidecar, 10, false).await;
    assert!(versions.iter().all(|v| v == "HTTP/2.0"), "{versions:?}");
    assert_eq!(
        env.psp.connections().1,
        before.1 + 1,
        "the h2-only pool opens one connection"
    );
    assert_eq!(env.psp.api_requests(), 1 + 10 + 10 + 1 + 10);
    env.assert_logs_clean();
}
