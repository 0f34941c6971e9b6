//! A hostile PSP's heads and bodies: 101, stray 1xx, malformed status lines and headers,
//! oversized heads, lying lengths, resets, endless bodies, garbage after the response. Each
//! ends in a 502 problem body, a passed-through 200 where HTTP allows it, or a cut stream:
//! never a hang, never a forwarded 101 or injected header; the next request is served.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{Hostile, hostile};
use crate::support::hostile_psp::Step;
use crate::support::raw::{RawResponse, connect, read_final};

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A 502 problem of this slug.
    Problem(&'static str),
    /// A 502 problem of any `upstream-*` slug.
    AnyUpstreamProblem,
    /// The PSP's 200 with this body, passed through.
    Passed(&'static str),
    /// The PSP's 200 head, then a body cut short and the connection closed.
    Cut,
}
use Expect::*;

fn w(bytes: &'static [u8]) -> Step {
    Step::Write(Bytes::from_static(bytes))
}

fn cases() -> Vec<(&'static str, Vec<Step>, Expect)> {
    let huge_head = {
        let mut h = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        h.extend(std::iter::repeat_n(b'a', 1 << 20));
        h.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\nok");
        Step::Write(h.into())
    };
    vec![
        (
            "101 Switching Protocols to a plain GET",
            vec![
                w(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
                Step::Hold,
            ],
            Problem("upstream-protocol"),
        ),
        (
            "102 Processing then 200",
            vec![w(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")],
            Passed("ok"),
        ),
        (
            "199 then close",
            vec![w(b"HTTP/1.1 199 Whatever\r\nX-Injected: 1\r\n\r\n"), Step::Close],
            Problem("upstream-protocol"),
        ),
        (
            "100 Continue then 200",
            vec![w(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")],
            Passed("ok"),
        ),
        (
            "103 Early Hints then 200",
            vec![w(b"HTTP/1.1 103 Early Hints\r\nLink: </x.css>; rel=preload\r\nX-Injected: 1\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")],
            Passed("ok"),
        ),
        (
            "invalid status code",
            vec![w(b"HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\nok")],
            Problem("upstream-protocol"),
        ),
        (
            "not HTTP at all",
            vec![w(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"), Step::Close],
            Problem("upstream-protocol"),
        ),
        (
            "bare CR splitting a header",
            vec![w(b"HTTP/1.1 200 OK\r\nX-A: a\rX-Injected: 1\r\ncontent-length: 2\r\n\r\nok")],
            Problem("upstream-protocol"),
        ),
        (
            // RFC 9112, section 2.2: a recipient may read a bare LF as a line end; the
            // sidecar re-frames both headers with CRLF, it never forwards the LF.
            "bare LF ending a header line",
            vec![w(b"HTTP/1.1 200 OK\r\nX-A: a\nX-B: 1\r\ncontent-length: 2\r\n\r\nok")],
            Passed("ok"),
        ),
        (
            "NUL in a header value",
            vec![w(b"HTTP/1.1 200 OK\r\nX-A: a\0X-Injected: 1\r\ncontent-length: 2\r\n\r\nok")],
            Problem("upstream-protocol"),
        ),
        (
            "obs-fold continuing a header",
            vec![w(b"HTTP/1.1 200 OK\r\nX-A: a\r\n X-Injected: 1\r\ncontent-length: 2\r\n\r\nok")],
            Problem("upstream-protocol"),
        ),
        (
            "space in a header name",
            vec![w(b"HTTP/1.1 200 OK\r\nX Injected: 1\r\ncontent-length: 2\r\n\r\nok")],
            Problem("upstream-protocol"),
        ),
        ("1 MiB head", vec![huge_head], Problem("upstream-protocol")),
        (
            "conflicting Content-Lengths",
            vec![w(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 7\r\n\r\nokX-Inj")],
            Problem("upstream-protocol"),
        ),
        (
            "Content-Length not a number",
            vec![w(b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\nok")],
            Problem("upstream-protocol"),
        ),
        // A small body (≤ 64 KiB by Content-Length) is read whole before the head goes
        // out, so its failure is a clean 502; a large one is streamed, so it is cut.
        (
            "small body shorter than Content-Length, then close",
            vec![w(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort"), Step::Close],
            Problem("upstream-protocol"),
        ),
        (
            "large body shorter than Content-Length, then close",
            vec![w(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nshort"), Step::Close],
            Cut,
        ),
        (
            "reset in the middle of a small body",
            vec![
                w(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789"),
                Step::Sleep(Duration::from_millis(50)),
                Step::Reset,
            ],
            Problem("upstream-protocol"),
        ),
        (
            "reset in the middle of a large body",
            vec![
                w(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n0123456789"),
                Step::Sleep(Duration::from_millis(50)),
                Step::Reset,
            ],
            Cut,
        ),
        (
            "invalid chunk size right after the first chunk (read ahead)",
            vec![
                w(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n"),
                Step::Hold,
            ],
            Problem("upstream-protocol"),
        ),
        (
            "invalid chunk size after a pause (already streaming)",
            vec![
                w(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n"),
                Step::Sleep(Duration::from_millis(200)),
                w(b"zz\r\n"),
                Step::Hold,
            ],
            Cut,
        ),
        (
            "garbage after the response",
            vec![w(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nX-Injected: 1\r\ncontent-length: 8\r\n\r\ninjected")],
            Passed("ok"),
        ),
        ("close without an answer", vec![Step::Close], Problem("upstream-protocol")),
        ("reset without an answer", vec![Step::Reset], AnyUpstreamProblem),
    ]
}

/// Send one GET over a fresh raw connection and read its final response (10 s: a hang).
async fn raw_get(h: &Hostile, path: &str) -> (Vec<RawResponse>, bool) {
    let mut tcp = connect(h.sidecar.addr).await;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_final(&mut tcp, Duration::from_secs(10)).await
}

#[tokio::test]
async fn hostile_psp_heads_and_bodies_become_502s_or_cut_streams_and_the_next_request_is_served() {
    let h = hostile(&["--request-timeout", "5s"]).await;
    let mut wrong = Vec::new();
    for (i, (name, script, expect)) in cases().into_iter().enumerate() {
        h.psp.script(script);
        let (got, closed) = raw_get(&h, &format!("/hostile/{i}")).await;
        if got.iter().any(|r| r.has_header("x-injected")) {
            wrong.push(format!(
                "{name}: an injected header reached the app: {got:?}"
            ));
        }
        if got.iter().any(|r| r.status == 101) {
            wrong.push(format!("{name}: a 101 reached the app"));
        }
        let last = got.last();
        let ok = match (expect, last) {
            (Problem(slug), Some(r)) => r.status == 502 && r.problem().as_deref() == Some(slug),
            (AnyUpstreamProblem, Some(r)) => {
                r.status == 502 && r.problem().is_some_and(|p| p.starts_with("upstream-"))
            }
            (Passed(body), Some(r)) => r.status == 200 && r.complete && r.body_text() == body,
            (Cut, Some(r)) => r.status == 200 && !r.complete && closed,
            (_, None) => false,
        };
        if !ok {
            wrong.push(format!(
                "{name}: expected {expect:?}, got {:?} (closed: {closed})",
                got.iter()
                    .map(|r| (r.status, r.problem(), r.complete))
                    .collect::<Vec<_>>()
            ));
        }
        // The next request, on whatever connection the pool picks, is a clean echo.
        h.psp.script(vec![Step::Echo]);
        let after = format!("/after/{i}");
        let (next, _) = raw_get(&h, &after).await;
        let next = next.last().expect("an answer");
        assert!(!next.has_header("x-injected"), "{name}: {next:?}");
        assert_eq!(
            (next.status, next.body_text()),
            (200, after.clone()),
            "{name}: the request after it"
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    h.env.assert_logs_clean();
}

#[tokio::test]
async fn an_endless_psp_body_streams_to_the_app_and_stops_when_the_app_goes_away() {
    let h = hostile(&[]).await;
    let mut chunk = b"1000\r\n".to_vec();
    chunk.extend(std::iter::repeat_n(b'y', 0x1000));
    chunk.extend_from_slice(b"\r\n");
    h.psp.script(vec![
        w(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
        Step::Endless(chunk.into()),
    ]);
    let resp = http_client_get(&h, "/lote/endless").await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0usize;
    while received < 1 << 20 {
        let frame = tokio::time::timeout(
            Duration::from_secs(5),
            http_body_util::BodyExt::frame(&mut body),
        )
        .await
        .expect("the body keeps streaming")
        .expect("not the end")
        .expect("no error");
        received += frame.data_ref().map_or(0, |d| d.len());
    }
    drop(body);
    h.psp.script(vec![Step::Echo]);
    assert!(
        crate::support::eventually(Duration::from_secs(5), || h.psp.aborted_writes() >= 1).await,
        "the PSP's endless body is still being read after the app went away"
    );
    super::assert_still_serves(&h.sidecar, "/cob/after-endless").await;
}

async fn http_client_get(h: &Hostile, path: &str) -> http::Response<hyper::body::Incoming> {
    // A client of its own, dropped with the response: the pooled connection goes with it.
    let client = crate::support::http_client();
    client
        .request(
            http::Request::get(h.sidecar.url(path))
                .body(crate::support::empty())
                .unwrap(),
        )
        .await
        .unwrap()
}
