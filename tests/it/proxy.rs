//! What the PSP receives, and what the app gets back, for requests through the sidecar.

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;

use crate::support::body::Chunks;
use crate::support::*;

#[tokio::test]
async fn get_reaches_the_psp_with_bearer_path_query_and_client_certificate() {
    let env = Env::new().await;
    let base = format!("{}/pix/v2", env.psp.url());
    let sidecar = env.sidecar(&["--upstream", &base]).await;
    let req = Request::get(sidecar.url("/cob/tx%2F01?inicio=2024-01-01T00:00:00Z&fim=a+b&&x=%20"))
        .header("authorization", "Bearer app-supplied-token")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("connection", "x-hop-header")
        .header("x-hop-header", "must-not-arrive")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("upgrade", "h2c")
        .header("proxy-connection", "keep-alive")
        .header("x-request-id", "req-42")
        .header("accept", "application/json")
        .body(empty())
        .unwrap();
    let got = send(&http_client(), req).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let echo = got.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/pix/v2/cob/tx%2F01");
    assert_eq!(echo["query"], "inicio=2024-01-01T00:00:00Z&fim=a+b&&x=%20");
    assert_eq!(echo["client_cert_sha256"], env.client_cert_sha256());
    let issued = env.psp.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(
        got.upstream_authorization(),
        format!("Bearer {}", issued[0])
    );
    let headers = echo["headers"].as_object().unwrap();
    for hop in [
        "proxy-authorization",
        "connection",
        "x-hop-header",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        assert!(!headers.contains_key(hop), "{hop} reached the PSP: {echo}");
    }
    assert_eq!(
        echo["headers"]["authorization"].as_array().unwrap().len(),
        1
    );
    assert_eq!(echo["headers"]["x-request-id"][0], "req-42");
    assert_eq!(echo["headers"]["accept"][0], "application/json");
    // Host / :authority are the PSP's, not the sidecar's.
    let host = echo["headers"]["host"][0]
        .as_str()
        .or(echo["authority"].as_str())
        .unwrap();
    assert_eq!(host, env.psp.addr().to_string());
    env.assert_logs_clean();
}

#[tokio::test]
async fn streamed_20_mb_post_arrives_intact() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&[]).await;
    const TOTAL: usize = 20 * 1024 * 1024;
    let req = Request::post(sidecar.url("/upload?kind=big"))
        .header("content-type", "application/octet-stream")
        .body(Chunks::new(TOTAL, 64 * 1024, 7).boxed())
        .unwrap();
    let got = send(&http_client(), req).await;
    assert_eq!(got.status, 200);
    let echo = got.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/upload");
    assert_eq!(echo["body_len"], TOTAL as u64);
    assert_eq!(echo["body_sha256"], Chunks::sha256_hex(TOTAL, 64 * 1024, 7));
    assert_eq!(
        got.upstream_authorization(),
        format!("Bearer {}", env.psp.issued_tokens()[0])
    );
    assert_eq!(echo["client_cert_sha256"], env.client_cert_sha256());
}

#[tokio::test]
async fn h2c_app_and_h2_upstream_work_and_http1_only_forces_http1() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&[]).await;
    let payload = r#"{"valor":{"original":"1.00"}}"#;
    let req = Request::put(sidecar.url("/cob/abc"))
        .body(full(payload))
        .unwrap();
    let got = send(&h2c_client(), req).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.json()["version"],
        "HTTP/2.0",
        "ALPN should pick h2 upstream"
    );
    assert_eq!(got.json()["body_len"], payload.len());

    let h1 = env.sidecar(&["--upstream-http1-only"]).await;
    let got = get(&h1.url("/cob/abc")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["version"], "HTTP/1.1");
}

/// The sidecar sets `Host` itself on HTTP/1.1 (built once from `--upstream`); the PSP sees
/// exactly one, its own, whatever the app sent; over h2 it sees `:authority` and no `Host`.
#[tokio::test]
async fn the_psp_sees_its_own_host_once_over_http1_and_only_authority_over_h2() {
    let env = Env::new().await;
    let psp = env.psp.addr().to_string();
    for (flags, version) in [
        (&[][..], "HTTP/2.0"),
        (&["--upstream-http1-only"][..], "HTTP/1.1"),
    ] {
        let sidecar = env.sidecar(flags).await;
        sidecar.ready().await;
        if version == "HTTP/2.0" {
            assert!(
                eventually(Duration::from_secs(5), || {
                    sidecar.current.load().client.protocol()
                        == pix_auth_proxy::client::UpstreamProtocol::Http2
                })
                .await,
                "the sidecar learns that the PSP speaks h2"
            );
        }
        for app_host in [None, Some("app.internal:8080")] {
            let mut req = Request::get(sidecar.url("/cob/host"));
            if let Some(h) = app_host {
                req = req.header("host", h);
            }
            let got = send(&http_client(), req.body(empty()).unwrap()).await;
            assert_eq!(got.status, 200, "{version} {app_host:?}");
            let echo = got.json();
            assert_eq!(echo["version"], version);
            let hosts = &echo["headers"]["host"];
            if version == "HTTP/1.1" {
                assert_eq!(hosts, &serde_json::json!([psp]), "{app_host:?}: {echo}");
            } else {
                assert!(hosts.is_null(), "no Host over h2 ({app_host:?}): {echo}");
            }
        }
    }
    env.assert_logs_clean();
}

#[tokio::test]
async fn absolute_form_to_another_host_and_connect_are_refused() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&[]).await;
    sidecar.ready().await;
    let resp = raw_http1(
        sidecar.addr,
        "GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("application/problem+json"), "{resp}");
    assert!(
        resp.contains("urn:pix-auth-proxy:problem:forbidden-target"),
        "{resp}"
    );

    let resp = raw_http1(
        sidecar.addr,
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert_eq!(env.psp.api_requests(), 0, "nothing may reach the PSP");

    // Absolute-form naming the configured upstream itself is an ordinary request.
    let resp = raw_http1(
        sidecar.addr,
        &format!(
            "GET {}/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            env.psp.url()
        ),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test]
async fn unreachable_psp_is_a_502_upstream_connect_problem() {
    let env = Env::new().await;
    // A port that was free a moment ago: nothing listens there.
    let closed = bind().await.local_addr().unwrap();
    let sidecar = env
        .sidecar(&["--upstream", &format!("https://{closed}")])
        .await;
    let got = get(&sidecar.url("/cob/x")).await;
    assert_problem(&got, 502, "upstream-connect");
}

#[tokio::test]
async fn untrusted_psp_certificate_is_a_502_upstream_tls_problem() {
    let env = Env::new().await;
    // A second PSP whose server certificate comes from a CA the sidecar does not trust.
    let rogue_pki = pix_auth_proxy::sandbox::Pki::new("rogue CA").unwrap();
    let rogue = pix_auth_proxy::sandbox::MockPsp::start(
        bind().await,
        &rogue_pki.server().unwrap(),
        &env.pki,
        env.settings.clone(),
    )
    .unwrap();
    let sidecar = env.sidecar(&["--upstream", &rogue.url()]).await;
    let got = get(&sidecar.url("/cob/x")).await;
    assert_problem(&got, 502, "upstream-tls");
    assert_eq!(rogue.api_requests(), 0);
}

#[tokio::test]
async fn slow_psp_is_a_504_upstream_timeout_problem() {
    let env = Env::new().await;
    env.psp.set_api_delay(Duration::from_secs(3));
    let sidecar = env.sidecar(&["--request-timeout", "300ms"]).await;
    let got = get(&sidecar.url("/cob/x")).await;
    assert_problem(&got, 504, "upstream-timeout");
}

#[tokio::test]
async fn psp_errors_pass_through_unchanged() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&[]).await;
    sidecar.ready().await;
    // The PSP's own 401 for a streamed (non-replayable) body reaches the app as the PSP sent it.
    env.psp.reject_next_api(1);
    let req = Request::post(sidecar.url("/cob"))
        .body(Chunks::new(200_000, 16 * 1024, 3).boxed())
        .unwrap();
    let got = send(&http_client(), req).await;
    assert_eq!(got.status, 401);
    assert_eq!(got.headers["content-type"], "application/json");
    assert_eq!(
        got.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(got.json()["title"], "Não Autorizado");
}
