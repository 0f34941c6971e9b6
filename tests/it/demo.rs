//! `pix-auth-proxy demo` as a newcomer runs it: start it, paste the printed curl lines
//! (including the payment that comes back through the webhook), Ctrl-C.

use std::time::Duration;

use http::{Method, Request};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::process::spawn;
use crate::support::*;

/// A `curl` line of the banner, as method, URL, headers and body.
struct Curl {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

fn parse_curl(line: &str) -> Curl {
    let words = shlex::split(line).expect("the curl line is valid shell");
    assert_eq!(words[0], "curl");
    let mut c = Curl {
        method: Method::GET,
        url: String::new(),
        headers: vec![],
        body: None,
    };
    let mut it = words.into_iter().skip(1);
    while let Some(w) = it.next() {
        match w.as_str() {
            "-s" => {}
            "-X" => c.method = it.next().unwrap().parse().unwrap(),
            "-H" => {
                let h = it.next().unwrap();
                let (k, v) = h.split_once(':').unwrap();
                c.headers.push((k.trim().into(), v.trim().into()));
            }
            "-d" => c.body = Some(it.next().unwrap()),
            url => c.url = url.into(),
        }
    }
    c
}

#[tokio::test]
async fn demo_serves_the_printed_curl_lines_and_stops_on_ctrl_c() {
    let port = bind().await.local_addr().unwrap().port();
    let admin_port = bind().await.local_addr().unwrap().port();
    let mut child = spawn(
        &[
            "demo".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin_port}"),
            "--demo-token-ttl".into(),
            "3s".into(),
        ],
        &[],
        true,
    );
    let mut lines = BufReader::new(child.child.stdout.take().unwrap()).lines();
    let mut curls = Vec::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await
    {
        if let Some(cmd) = line.trim_start().strip_prefix("curl ") {
            curls.push(parse_curl(&format!("curl {cmd}")));
        }
        if line.contains("Ctrl-C stops") {
            break;
        }
    }
    assert!(curls.len() >= 6, "the banner prints the curl lines");
    let client = http_client();
    let mut paid = false;
    for c in &curls {
        let app = c.url.starts_with(&format!("http://127.0.0.1:{port}/"));
        let admin = c
            .url
            .starts_with(&format!("http://127.0.0.1:{admin_port}/"));
        assert!(app || admin, "{}", c.url);
        let mut req = Request::builder().method(c.method.clone()).uri(&c.url);
        for (k, v) in &c.headers {
            req = req.header(k, v);
        }
        let got = send(
            &client,
            req.body(full(c.body.clone().unwrap_or_default())).unwrap(),
        )
        .await;
        assert!(
            got.status.is_success(),
            "{} {}: {} {}",
            c.method,
            c.url,
            got.status,
            String::from_utf8_lossy(&got.body)
        );
        if c.method == Method::PUT {
            assert_eq!(got.status, 201);
            assert_eq!(got.json()["status"], "ATIVA");
        }
        if c.url.ends_with("/pay") {
            // The round trip: the mock PSP called the sidecar's webhook listener over mTLS,
            // which forwarded to the demo app; the app's 204 became the PSP's 200.
            assert_eq!(got.json()["webhook"]["status"], 200, "{:?}", got.json());
            paid = true;
        }
        if c.url.ends_with("/echo") {
            assert!(
                got.upstream_authorization().starts_with("Bearer ey"),
                "the mock PSP accepted a bearer"
            );
        }
    }
    assert!(paid, "the banner prints the pay line");
    // Renewals happen while it runs (3 s tokens).
    tokio::time::sleep(Duration::from_secs(3)).await;
    child.signal("INT");
    let (code, logs) = child.finish(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        logs.matches("token_renewed").count() >= 2,
        "renewals are logged: {logs}"
    );
    let received = logs
        .lines()
        .find(|l| l.contains("demo_app_received"))
        .unwrap_or_else(|| panic!("the demo app logged the notification: {logs}"));
    assert!(received.contains("webhook_event=pix"), "{received}");
    assert!(received.contains("verified=true"), "{received}");
    assert!(received.contains("webhook.mock-psp.local"), "{received}");
}
