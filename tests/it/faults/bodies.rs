//! Whose fault is a broken body? One table over raw sockets, both sides: the app's own
//! malformed request body is a 400 `bad-request` (or a cut connection), counted under
//! `downstream_errors_total` and logged `side="downstream"`; the PSP's malformed response
//! is a 502 `upstream-*` (or a cut stream) and never counted against the app.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{DOWNSTREAM_BAD_REQUEST, UPSTREAM_ERRORS, counter, hostile};
use crate::support::hostile_psp::Step;
use crate::support::raw::{connect, read_final};

#[derive(Debug, Clone, Copy)]
enum Side {
    App,
    Psp,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// A problem body of this status and slug.
    Problem(u16, &'static str),
    /// A problem of this status and slug, or the connection closed without an answer (the
    /// app itself ended its side, so no answer may be deliverable).
    ProblemOrClosed(u16, &'static str),
    /// The PSP's 200 head, then the stream cut.
    Cut,
}
use Expect::*;

struct Row {
    name: &'static str,
    side: Side,
    /// What the app sends (the head's path is filled in).
    request: Vec<u8>,
    /// Whether the app then shuts down its sending side.
    eof: bool,
    /// The PSP's answer.
    psp: Vec<Step>,
    expect: Expect,
}

fn chunked(body: &str) -> Vec<u8> {
    format!("POST {{P}} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
        .into_bytes()
}

fn psp(bytes: &'static [u8], then: Step) -> Vec<Step> {
    vec![Step::Write(bytes::Bytes::from_static(bytes)), then]
}

fn rows() -> Vec<Row> {
    let get = b"GET {P} HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let mut streamed_short =
        b"POST {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".to_vec();
    streamed_short.extend(std::iter::repeat_n(b'z', 1000));
    let bad_request = Problem(400, "bad-request");
    vec![
        Row {
            name: "app: chunk size not hex",
            side: Side::App,
            request: chunked("5\r\nhello\r\nzz\r\n"),
            eof: false,
            psp: vec![Step::Echo],
            expect: bad_request,
        },
        Row {
            name: "app: chunk size overflowing 64 bits",
            side: Side::App,
            request: chunked("5\r\nhello\r\n1ffffffffffffffff\r\n"),
            eof: false,
            psp: vec![Step::Echo],
            expect: bad_request,
        },
        Row {
            name: "app: chunk longer than its size",
            side: Side::App,
            request: chunked("3\r\nhello\r\n0\r\n\r\n"),
            eof: false,
            psp: vec![Step::Echo],
            expect: bad_request,
        },
        Row {
            name: "app: body shorter than its Content-Length, then EOF (buffered)",
            side: Side::App,
            request: b"POST {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-ten-b"
                .to_vec(),
            eof: true,
            psp: vec![Step::Echo],
            expect: ProblemOrClosed(400, "bad-request"),
        },
        Row {
            name: "app: buffered body that stops arriving, connection held open",
            side: Side::App,
            request: b"POST {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-ten-b"
                .to_vec(),
            eof: false,
            psp: vec![Step::Echo],
            // Answered at --request-timeout (5 s here): a request in flight is never idle, so
            // only this bound ends it.
            expect: bad_request,
        },
        Row {
            name: "app: body shorter than its Content-Length, then EOF (streamed)",
            side: Side::App,
            request: streamed_short,
            eof: true,
            psp: vec![Step::Echo],
            expect: ProblemOrClosed(400, "bad-request"),
        },
        Row {
            name: "PSP: Content-Length not a number",
            side: Side::Psp,
            request: get.clone(),
            eof: false,
            psp: psp(
                b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\nok",
                Step::Close,
            ),
            expect: Problem(502, "upstream-protocol"),
        },
        Row {
            name: "PSP: closes before answering",
            side: Side::Psp,
            request: get.clone(),
            eof: false,
            psp: vec![Step::Close],
            expect: Problem(502, "upstream-protocol"),
        },
        Row {
            // Small enough to be read whole before the head is relayed: a clean 502.
            name: "PSP: small body shorter than its Content-Length, then close",
            side: Side::Psp,
            request: get.clone(),
            eof: false,
            psp: psp(
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort",
                Step::Close,
            ),
            expect: Problem(502, "upstream-protocol"),
        },
        Row {
            // Over the 64 KiB read-whole limit: streamed, so the head is already out.
            name: "PSP: large body shorter than its Content-Length, then close",
            side: Side::Psp,
            request: get.clone(),
            eof: false,
            psp: psp(
                b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nshort",
                Step::Close,
            ),
            expect: Cut,
        },
        Row {
            // Read ahead with its first chunk (it arrives in the same read): a clean 502.
            name: "PSP: chunk size not hex, right after the first chunk",
            side: Side::Psp,
            request: get.clone(),
            eof: false,
            psp: psp(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n",
                Step::Hold,
            ),
            expect: Problem(502, "upstream-protocol"),
        },
        Row {
            // The bad chunk comes after a pause: the first one is already relayed.
            name: "PSP: chunk size not hex, after a pause",
            side: Side::Psp,
            request: get,
            eof: false,
            psp: vec![
                Step::Write(bytes::Bytes::from_static(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n",
                )),
                Step::Sleep(Duration::from_millis(200)),
                Step::Write(bytes::Bytes::from_static(b"zz\r\n")),
                Step::Hold,
            ],
            expect: Cut,
        },
    ]
}

/// Lines logged since `from` that report a request's failure with this problem slug.
fn failure_lines(from: usize, slug: &str) -> Vec<String> {
    let logs = crate::support::logs::captured();
    logs.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("event=\"request_") && l.contains(&format!("problem=\"{slug}\"")))
        .map(str::to_owned)
        .collect()
}

fn has_side(lines: &[String], side: &str) -> bool {
    lines
        .iter()
        .any(|l| l.contains(&format!("side=\"{side}\"")) || l.contains(&format!("side={side} ")))
}

#[tokio::test]
async fn malformed_bodies_are_blamed_on_the_side_that_sent_them() {
    let h = hostile(&["--request-timeout", "5s"]).await;
    let metrics = &h.sidecar.metrics;
    let mut wrong = Vec::new();
    for (i, row) in rows().into_iter().enumerate() {
        h.psp.script(row.psp.clone());
        let path = format!("/bodies/{i}");
        let request = String::from_utf8_lossy(&row.request).replace("{P}", &path);
        let (up_before, down_before) = (
            counter(metrics, UPSTREAM_ERRORS),
            counter(metrics, DOWNSTREAM_BAD_REQUEST),
        );
        let logs_from = crate::support::logs::captured().len();
        let mut tcp = connect(h.sidecar.addr).await;
        let _ = tcp.write_all(request.as_bytes()).await;
        if row.eof {
            let _ = tcp.shutdown().await;
        }
        let (got, closed) = read_final(&mut tcp, Duration::from_secs(10)).await;
        let last = got.last();
        let answered = match row.expect {
            Problem(status, slug) => {
                last.is_some_and(|r| r.status == status && r.problem().as_deref() == Some(slug))
            }
            ProblemOrClosed(status, slug) => match last {
                Some(r) => r.status == status && r.problem().as_deref() == Some(slug),
                None => closed,
            },
            Cut => last.is_some_and(|r| r.status == 200 && !r.complete) && closed,
        };
        if !answered {
            wrong.push(format!(
                "{}: expected {:?}, got {:?} (closed: {closed})",
                row.name,
                row.expect,
                got.iter()
                    .map(|r| (r.status, r.problem()))
                    .collect::<Vec<_>>()
            ));
        }
        // The counters move once the request's handler is done: poll them.
        let (up, down) = match row.side {
            Side::App => (0.0, 1.0),
            Side::Psp => (if row.expect == Cut { 0.0 } else { 1.0 }, 0.0),
        };
        let moved = crate::support::eventually(Duration::from_secs(2), || {
            counter(metrics, UPSTREAM_ERRORS) - up_before == up
                && counter(metrics, DOWNSTREAM_BAD_REQUEST) - down_before == down
        })
        .await;
        if !moved {
            wrong.push(format!(
                "{}: expected upstream_errors +{up} and downstream bad-request +{down}, got +{} and +{}",
                row.name,
                counter(metrics, UPSTREAM_ERRORS) - up_before,
                counter(metrics, DOWNSTREAM_BAD_REQUEST) - down_before,
            ));
        }
        match (row.side, row.expect) {
            (Side::App, _) => {
                let lines = failure_lines(logs_from, "bad-request");
                if !has_side(&lines, "downstream") {
                    wrong.push(format!(
                        "{}: no side=\"downstream\" log line: {lines:?}",
                        row.name
                    ));
                }
            }
            (Side::Psp, Problem(_, slug)) => {
                let lines = failure_lines(logs_from, slug);
                if !has_side(&lines, "upstream") {
                    wrong.push(format!(
                        "{}: no side=\"upstream\" log line: {lines:?}",
                        row.name
                    ));
                }
            }
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    h.psp.script(vec![Step::Echo]);
    super::assert_still_serves(&h.sidecar, "/cob/after-bodies").await;
    h.env.assert_logs_clean();
}
