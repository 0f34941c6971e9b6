//! Reading the PSP's bodies over the HTTP/1.1 pool: small bodies read whole (a cut or a
//! stall is a problem, not a truncated 200), bodies at the limit and without a length
//! passed byte-exact, and a paused body without a length streamed while it holds its slot.
//! And the app's small bodies, read once their request has its connection: a body the app
//! breaks off or never finishes gives that connection back unused.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;

use super::{Setup, one_slot, open, setup, times_out_after_1s, waits};
use crate::faults::hostile;
use crate::support::counting_psp::pattern;
use crate::support::hostile_psp::Step;
use crate::support::*;

/// A sidecar on a PSP offering h2 (default ALPN: h2 is spoken), or offering only HTTP/1.1
/// (with `--upstream-http1-only`, the pool of our own).
async fn offering(h2: bool) -> Setup {
    let extra: &[&str] = if h2 { &[] } else { &["--upstream-http1-only"] };
    setup(h2, extra).await
}

#[tokio::test]
async fn a_small_body_cut_before_its_content_length_is_a_502_problem() {
    let h = hostile(&[]).await;
    h.psp.script(vec![
        Step::Write(Bytes::from_static(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n0123456789",
        )),
        Step::Close,
    ]);
    let got = get(&h.sidecar.url("/cut")).await;
    assert_problem(&got, 502, "upstream-protocol");
    assert_eq!(h.psp.request_count(), 1);

    h.psp.script(vec![Step::Echo]);
    let got = get(&h.sidecar.url("/healthy")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "/healthy");
    h.env.assert_logs_clean();
}

#[tokio::test]
async fn a_small_body_that_stalls_is_a_504_within_the_request_timeout() {
    let h = hostile(&["--request-timeout", "1s"]).await;
    // The head, then nothing: the body never starts.
    h.psp.script(vec![
        Step::Write(Bytes::from_static(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n",
        )),
        Step::Hold,
    ]);
    times_out_after_1s(&h.sidecar.url("/stall"), "a stalled body").await;

    h.psp.script(vec![Step::Echo]);
    let got = get(&h.sidecar.url("/healthy")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "/healthy");
}

#[tokio::test]
async fn small_and_limit_sized_bodies_pass_through_byte_exact() {
    for h2 in [false, true] {
        let s = offering(h2).await;
        let http = http_client();
        // (method, path, status, Content-Length, body)
        let cases = [
            ("GET", "/bytes/0", 200, Some(0), Vec::new()),
            ("HEAD", "/bytes/1000", 200, Some(1000), Vec::new()),
            ("GET", "/status/204", 204, None, Vec::new()),
            ("GET", "/bytes/65536", 200, Some(65536), pattern(65536)),
            ("GET", "/bytes/65537", 200, Some(65537), pattern(65537)),
        ];
        for (method, path, status, length, body) in cases {
            let what = format!("{method} {path} (PSP h2 offered: {h2})");
            let req = Request::builder()
                .method(method)
                .uri(s.sidecar.url(path))
                .body(empty())
                .unwrap();
            let got = send(&http, req).await;
            assert_eq!(got.status.as_u16(), status as u16, "{what}: {:?}", got.body);
            assert_eq!(
                got.headers
                    .get("content-length")
                    .map(|v| v.to_str().unwrap().to_owned()),
                length.map(|n: usize| n.to_string()),
                "{what}: content-length"
            );
            assert!(
                !got.headers.contains_key("transfer-encoding"),
                "{what}: {:?}",
                got.headers
            );
            assert_eq!(got.headers["x-counting-psp"], "1", "{what}");
            assert!(got.body == body, "{what}: body of {} bytes", got.body.len());
        }
        assert_eq!(s.psp.requests(), 5);
    }
}

/// Bodies without a length (HTTP/1.1 chunked, h2 without `content-length`) are read ahead
/// while their frames come without waiting; whatever the split between read-ahead and
/// streaming, the app gets every byte, in order.
#[tokio::test]
async fn bodies_without_a_length_pass_through_byte_exact() {
    for h2 in [false, true] {
        let s = offering(h2).await;
        let http = http_client();
        let sizes = [1, 100, 16 * 1024, 65536, 65537, 300 * 1024];
        for n in sizes {
            let what = format!("/chunked/{n} (PSP h2 offered: {h2})");
            let got = send(
                &http,
                Request::get(s.sidecar.url(&format!("/chunked/{n}")))
                    .body(empty())
                    .unwrap(),
            )
            .await;
            assert_eq!(got.status, 200, "{what}");
            assert_eq!(got.headers["x-counting-psp"], "1", "{what}");
            assert!(
                got.body == pattern(n),
                "{what}: body of {} bytes",
                got.body.len()
            );
        }
        assert_eq!(s.psp.requests(), sizes.len() as u64);
    }
}

/// A body without a length whose rest is held back: what came is relayed at once (the
/// read-ahead stops at the first frame that is not there), and the slot is held until the
/// end.
#[tokio::test]
async fn a_paused_body_without_a_length_streams_what_came_and_holds_its_slot() {
    let s = one_slot(&[]).await;
    let len = 200 * 1024;
    let mut first = open(&s.sidecar, &format!("/gated-chunked/{len}")).await;
    assert_eq!(first.status(), 200);
    assert!(!first.headers().contains_key("content-length"));
    // The data before the gate reaches the app while the PSP holds the rest.
    let mut got = Vec::new();
    while got.len() < 64 * 1024 {
        let frame = tokio::time::timeout(Duration::from_secs(10), first.body_mut().frame())
            .await
            .expect("the data sent before the pause reaches the app")
            .expect("a frame")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    assert_eq!(s.psp.in_flight(), 1);
    assert_eq!(s.psp.requests(), 1);
    s.psp.open_gate();
    let rest = first.into_body().collect().await.unwrap().to_bytes();
    got.extend_from_slice(&rest);
    assert!(
        got == pattern(len),
        "body of {} bytes is not byte-exact",
        got.len()
    );
    let after = get(&s.sidecar.url("/echo/after")).await;
    assert_eq!(after.status, 200);
    assert_eq!(waits(&s.sidecar).await, 0);
}

/// An app's POST to `/echo/{name}` announcing 100 bytes of body and sending 10, on a raw
/// connection kept open (`close`: then closed), and the sidecar's answer to it.
async fn short_body(sidecar: &Running, name: &str, close: bool) -> raw::RawResponse {
    use tokio::io::AsyncWriteExt as _;
    let mut tcp = raw::connect(sidecar.addr).await;
    let head =
        format!("POST /echo/{name} HTTP/1.1\r\nhost: app\r\ncontent-length: 100\r\n\r\n0123456789");
    tcp.write_all(head.as_bytes()).await.unwrap();
    if close {
        tcp.shutdown().await.unwrap();
    }
    let (responses, _) = raw::read_final(&mut tcp, Duration::from_secs(10)).await;
    responses
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{name}: no answer to a short body"))
}

/// The connection a request took before reading its small body goes back to the pool when
/// that body never arrives whole: the app stops sending (the request timeout passes) or
/// breaks the connection off. Nothing was written on it, so it is neither closed nor
/// counted against the single slot: the next request rides the same connection.
#[tokio::test]
async fn a_connection_taken_for_a_body_the_app_never_finishes_goes_back_to_the_pool() {
    let s = one_slot(&["--request-timeout", "1s"]).await;
    super::echo(&s.sidecar, "warm").await;
    assert_eq!(s.psp.connections(), (1, 0));

    let stalled = short_body(&s.sidecar, "stalled", false).await;
    assert_eq!(stalled.status, 400, "{}", stalled.body_text());
    assert_eq!(stalled.problem().as_deref(), Some("bad-request"));
    assert!(
        stalled.body_text().contains("not received in full"),
        "{}",
        stalled.body_text()
    );
    let cut = short_body(&s.sidecar, "cut", true).await;
    assert_eq!(cut.status, 400, "{}", cut.body_text());
    assert_eq!(cut.problem().as_deref(), Some("bad-request"));

    super::echo(&s.sidecar, "after").await;
    assert_eq!(s.psp.requests(), 2, "neither short body reached the PSP");
    assert_eq!(
        s.psp.connections(),
        (1, 0),
        "the connection taken for each short body went back to the pool"
    );
    assert_eq!(s.psp.open_connections(), 1);
    assert_eq!(waits(&s.sidecar).await, 0);
}
