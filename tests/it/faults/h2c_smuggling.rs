//! h2c downgrade smuggling: requests an h2c app sends in hand-built frames, forwarded by the
//! sidecar to an HTTP/1.1-only PSP. Connection-specific headers, CR/LF or NUL in a field,
//! upper-case names, lying content-lengths and request lines hidden in `:path` never become
//! a second HTTP/1.1 request or an injected header; well-formed bodies holding request-like
//! bytes arrive as exactly one request with that body.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{assert_still_serves, hostile};
use crate::support::h2_frames::{answered_200, data, frames, headers};
use crate::support::raw::{H2_EMPTY_SETTINGS, H2_PREFACE, connect, read_until_end};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Nothing reaches the PSP and the app gets no 200.
    Refused,
    /// One request reaches the PSP, with exactly the body sent, and the app gets its 200.
    Served,
}
use Expect::*;

struct Case {
    name: &'static str,
    /// Fields after the four pseudo-headers; `:path` may be replaced by `path`.
    fields: Vec<(&'static [u8], &'static [u8])>,
    path: Option<String>,
    body: Option<&'static [u8]>,
    expect: Expect,
}

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

fn case(
    name: &'static str,
    fields: Vec<(&'static [u8], &'static [u8])>,
    body: Option<&'static [u8]>,
    expect: Expect,
) -> Case {
    Case {
        name,
        fields,
        path: None,
        body,
        expect,
    }
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        case(
            "transfer-encoding: chunked",
            vec![(b"transfer-encoding", b"chunked")],
            Some(b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
            Refused,
        ),
        case(
            "connection: keep-alive",
            vec![(b"connection", b"keep-alive")],
            None,
            Refused,
        ),
        case("upgrade: h2c", vec![(b"upgrade", b"h2c")], None, Refused),
        case("te: gzip", vec![(b"te", b"gzip")], None, Refused),
        case("te: trailers", vec![(b"te", b"trailers")], None, Served),
        case(
            "content-length shorter than DATA",
            vec![(b"content-length", b"5")],
            Some(b"helloGET /smuggled HTTP/1.1\r\n\r\n"),
            Refused,
        ),
        case(
            "content-length longer than DATA",
            vec![(b"content-length", b"40")],
            Some(b"hello"),
            Refused,
        ),
        case(
            "two different content-lengths",
            vec![(b"content-length", b"5"), (b"content-length", b"11")],
            Some(b"hello"),
            Refused,
        ),
        case(
            "CR LF in a value",
            vec![(b"x-a", b"a\r\nx-injected: 1")],
            None,
            Refused,
        ),
        case(
            "bare LF in a value",
            vec![(b"x-a", b"a\nx-injected: 1")],
            None,
            Refused,
        ),
        case("NUL in a value", vec![(b"x-a", b"a\0b")], None, Refused),
        case(
            "upper-case name",
            vec![(b"X-Injected", b"1")],
            None,
            Refused,
        ),
        case("colon in a name", vec![(b"x-a:b", b"1")], None, Refused),
        case(
            "pseudo-header after a field",
            vec![(b"x-a", b"1"), (b":scheme", b"http")],
            None,
            Refused,
        ),
        case(
            "request line in DATA, exact content-length",
            vec![(b"content-length", b"35")],
            Some(SMUGGLED),
            Served,
        ),
        case(
            "request line in DATA, no content-length",
            vec![],
            Some(SMUGGLED),
            Served,
        ),
        case(
            "host conflicting with :authority",
            vec![(b"host", b"evil.example")],
            None,
            Served,
        ),
        case("plain GET", vec![], None, Served),
    ];
    for (name, path) in [
        (
            "request line in :path",
            "{P} HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled",
        ),
        ("space in :path", "{P} HTTP/1.1"),
        ("empty :path", ""),
    ] {
        let mut c = case(name, vec![], None, Refused);
        c.path = Some(path.to_owned());
        v.push(c);
    }
    v
}

#[tokio::test]
async fn h2c_requests_in_hand_built_frames_are_never_downgraded_into_smuggled_http1() {
    let h = hostile(&[]).await;
    let authority = h.sidecar.addr.to_string();
    let runs = cases().into_iter().enumerate().map(|(i, c)| {
        let own = format!("/h2smug/{i}");
        let path = c
            .path
            .clone()
            .map_or(own.clone(), |p| p.replace("{P}", &own));
        let method: &[u8] = if c.body.is_some() { b"POST" } else { b"GET" };
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", method),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", authority.as_bytes()),
        ];
        fields.extend(c.fields.iter().copied());
        let mut bytes = [H2_PREFACE, H2_EMPTY_SETTINGS].concat();
        bytes.extend(headers(1, &fields, c.body.is_none()));
        if let Some(body) = c.body {
            bytes.extend(data(1, body, true));
        }
        let addr = h.sidecar.addr;
        async move {
            let mut tcp = connect(addr).await;
            let _ = tcp.write_all(&bytes).await;
            let read = read_until_end(
                &mut tcp,
                Duration::from_millis(1500),
                Duration::from_secs(10),
            )
            .await;
            (c, own, frames(&read.bytes))
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let seen = h.psp.seen();
    let mut wrong = Vec::new();
    for (c, own, got) in &results {
        let reached: Vec<_> = seen
            .iter()
            .filter(|s| s.path == *own || s.path.starts_with(&format!("{own}%20")))
            .collect();
        let ok = match c.expect {
            Refused => reached.is_empty() && !answered_200(got, 1),
            Served => {
                reached.len() == 1
                    && answered_200(got, 1)
                    && reached[0].body == c.body.unwrap_or_default()
            }
        };
        if !ok {
            wrong.push(format!(
                "{}: expected {:?}; PSP saw {:?}; frames back: {:?}",
                c.name,
                c.expect,
                reached
                    .iter()
                    .map(|s| (&s.path, s.body.len()))
                    .collect::<Vec<_>>(),
                got.iter()
                    .map(|f| (f.kind, f.stream, f.payload.first()))
                    .collect::<Vec<_>>()
            ));
        }
        for s in &reached {
            assert!(s.header("x-injected").is_none(), "{}: {s:?}", c.name);
            assert_eq!(
                s.header("host").as_deref(),
                Some(h.psp.addr.to_string().as_str()),
                "{}: the PSP sees its own Host",
                c.name
            );
            assert!(
                s.header_count("content-length") <= 1
                    && s.header("transfer-encoding").is_none_or(|t| t == "chunked"),
                "{}: {s:?}",
                c.name
            );
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
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_still_serves(&h.sidecar, "/after-h2c-smuggling").await;
    h.env.assert_logs_clean();
}
