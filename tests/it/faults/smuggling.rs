//! Request smuggling over raw sockets: whatever framing tricks the app's bytes play, the PSP
//! sees exactly one request per request the sidecar answered, framed by the sidecar (one
//! unambiguous Content-Length or chunked, no hop-by-hop header), and a refused payload
//! reaches nothing.

use std::time::Duration;

use super::{assert_still_serves, hostile};
use crate::support::raw::{End, exchange, responses};

/// What the sidecar does with a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Refused with an error status (or closed), and nothing reached the PSP.
    Refused,
    /// This many requests forwarded, each answered.
    Served(usize),
    /// One request forwarded and answered, then the connection closed, so that what follows
    /// the ambiguous message is never read as a request (RFC 9112, section 6.3).
    ServedThenClosed,
}
use Expect::*;

/// `{P}` is the payload's own path, `{S}` a path only a smuggled request would carry (12
/// bytes: the lengths below count on it).
const PAYLOADS: &[(&str, &str, Expect)] = &[
    (
        "CL then TE chunked",
        "POST {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET {S} HTTP/1.1\r\nHost: x\r\n\r\n",
        ServedThenClosed,
    ),
    (
        "TE chunked then CL",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET {S} HTTP/1.1\r\nHost: x\r\n\r\n",
        ServedThenClosed,
    ),
    (
        "duplicate conflicting CL",
        "POST {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\nhelloGET {S} HTTP/1.1\r\nHost: x\r\n\r\n",
        Refused,
    ),
    (
        "CL list with two values",
        "POST {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 41\r\n\r\nhelloGET {S} HTTP/1.1\r\nHost: x\r\n\r\n",
        Refused,
    ),
    (
        "CL with a plus sign",
        "POST {P} HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        Refused,
    ),
    (
        "negative CL",
        "POST {P} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nGET {S} HTTP/1.1\r\nHost: x\r\n\r\n",
        Refused,
    ),
    (
        "hex CL",
        "POST {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello",
        Refused,
    ),
    (
        "TE chunked, identity",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE xchunked",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE chunkedx",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE identity alone",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
        Refused,
    ),
    (
        "space before the colon of TE",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "tab before TE value",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Served(1),
    ),
    (
        "TE value in upper case",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Served(1),
    ),
    (
        "TE split over two headers (gzip cannot be decoded: 501)",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE on HTTP/1.0",
        "POST {P} HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET {S} HTTP/1.1\r\nHost: x\r\n\r\n",
        Refused,
    ),
    (
        "obs-fold continuing TE",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n chunked\r\nContent-Length: 5\r\n\r\nhello",
        Refused,
    ),
    (
        "obs-fold in an ordinary header",
        "GET {P} HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n",
        Refused,
    ),
    (
        "bare LF line endings",
        "GET {P} HTTP/1.1\nHost: x\nX-A: 1\n\n",
        Served(1),
    ),
    (
        "bare CR inside a header",
        "GET {P} HTTP/1.1\r\nHost: x\r\nX-A: a\rTransfer-Encoding: chunked\r\n\r\n",
        Refused,
    ),
    (
        "NUL in a header value",
        "GET {P} HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        Refused,
    ),
    (
        "NUL in a header name",
        "GET {P} HTTP/1.1\r\nHost: x\r\nX\0A: a\r\n\r\n",
        Refused,
    ),
    (
        "space in a header name",
        "GET {P} HTTP/1.1\r\nHost: x\r\nContent Length: 5\r\n\r\nhello",
        Refused,
    ),
    (
        "chunk size not hex",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "chunk size overflowing 64 bits",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "chunk longer than its size",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhelloGET {S} HTTP/1.1\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "chunk size with an extension",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n",
        Served(1),
    ),
    (
        "a request line inside a CL body",
        "POST {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 38\r\n\r\nGET {S} HTTP/1.1\r\nHost: x\r\n\r\n",
        Served(1),
    ),
    (
        "a request line inside a chunked body",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n26\r\nGET {S} HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
        Served(1),
    ),
    (
        "two pipelined requests",
        "GET {P} HTTP/1.1\r\nHost: x\r\n\r\nGET {P}/b HTTP/1.1\r\nHost: x\r\n\r\n",
        Served(2),
    ),
    (
        "GET with a body, then a pipelined GET",
        "GET {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET {P}/b HTTP/1.1\r\nHost: x\r\n\r\n",
        Served(2),
    ),
    (
        "h2c upgrade on HTTP/1.1",
        "GET {P} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        Served(1),
    ),
    (
        "websocket upgrade",
        "GET {P} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        Served(1),
    ),
    (
        "Connection naming Content-Length",
        "POST {P} HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello",
        Served(1),
    ),
    (
        "HTTP/2 preface sent as an HTTP/1.1 request line",
        "PRI {P} HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Refused,
    ),
    (
        "absolute-form with a smuggled authority",
        "GET http://evil.example{P} HTTP/1.1\r\nHost: x\r\n\r\n",
        Refused,
    ),
    ("HTTP/0.9 request line", "GET {P}\r\n\r\n", Refused),
    (
        "TE gzip, chunked in one header (501)",
        "POST {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "HTTP/1.1 without Host (400, RFC 9112 §3.2)",
        "GET {P} HTTP/1.1\r\n\r\n",
        Refused,
    ),
];

#[tokio::test]
async fn smuggling_payloads_never_reach_the_psp_as_an_extra_request() {
    assert!(PAYLOADS.len() >= 30);
    let h = hostile(&[]).await;
    // Every payload on its own connection, all at once: the slowest (an idle keep-alive
    // connection) bounds the test, not their sum.
    let runs = PAYLOADS.iter().enumerate().map(|(i, (name, template, _))| {
        let payload = template
            .replace("{P}", &format!("/smug/{i}"))
            .replace("{S}", &format!("/smuggled/{i:02}"));
        let addr = h.sidecar.addr;
        async move {
            (
                *name,
                exchange(addr, payload.as_bytes(), Duration::from_millis(1500)).await,
            )
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let seen = h.psp.seen();
    let mut wrong = Vec::new();
    for (i, ((name, read), (_, _, expect))) in results.iter().zip(PAYLOADS).enumerate() {
        let own = format!("/smug/{i}");
        let reached: Vec<_> = seen
            .iter()
            .filter(|s| s.path == own || s.path.starts_with(&format!("{own}/")))
            .collect();
        let answers = responses(&read.bytes);
        // Each 200 carries the path the PSP saw: the PSP's requests and the sidecar's
        // answers must be the same list.
        let mut echoed: Vec<String> = answers
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.body_text())
            .collect();
        let mut reached_paths: Vec<String> = reached.iter().map(|s| s.path.clone()).collect();
        echoed.sort();
        reached_paths.sort();
        let outcome = match expect {
            // Which side is blamed for a broken body is the bodies table's concern.
            Refused => {
                reached.is_empty()
                    && answers.iter().all(|r| r.status >= 400)
                    && (!answers.is_empty() || read.end.by_peer())
            }
            Served(n) => reached.len() == *n && echoed == reached_paths,
            ServedThenClosed => reached.len() == 1 && read.end == End::Closed,
        };
        if !outcome || echoed != reached_paths {
            wrong.push(format!(
                "{name}: expected {expect:?}; PSP saw {reached_paths:?}; app got {:?} ({:?}): {:?}",
                answers.iter().map(|r| r.status).collect::<Vec<_>>(),
                read.end,
                read.text()
            ));
        }
        for s in &reached {
            // Framed by the sidecar: one length, or chunked, never both, no hop-by-hop.
            let cl = s.header_count("content-length");
            let te = s.header("transfer-encoding");
            assert!(cl <= 1, "{name}: {s:?}");
            assert!(!(cl == 1 && te.is_some()), "{name}: {s:?}");
            assert!(te.is_none_or(|t| t == "chunked"), "{name}: {s:?}");
            for hop in [
                "connection",
                "upgrade",
                "http2-settings",
                "keep-alive",
                "te",
            ] {
                assert_eq!(s.header_count(hop), 0, "{name}: {hop} forwarded: {s:?}");
            }
        }
    }
    assert!(
        seen.iter().all(|s| !s.path.contains("smuggled")),
        "a smuggled request reached the PSP: {seen:?}"
    );
    assert_eq!(
        h.psp.unparsable(),
        0,
        "the PSP got bytes it could not frame"
    );
    // Re-framed, not relayed: no payload's bare LF, bare CR or NUL reaches the PSP's stream
    // (none of the forwarded bodies holds one).
    let raw = h.psp.raw();
    assert!(!raw.is_empty());
    for (i, b) in raw.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| raw[p]);
        let next = raw.get(i + 1).copied();
        assert!(*b != 0, "a NUL reached the PSP");
        assert!(
            *b != b'\n' || prev == Some(b'\r'),
            "a bare LF reached the PSP"
        );
        assert!(
            *b != b'\r' || next == Some(b'\n'),
            "a bare CR reached the PSP"
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_still_serves(&h.sidecar, "/after-smuggling").await;
    h.env.assert_logs_clean();
}
