//! The header rules: a request's framing checked, hop-by-hop fields and credentials
//! stripped in both directions, header values detached from the read buffer.

use bytes::BytesMut;
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Why a request's framing is refused before anything is sent: a transfer coding other
/// than `chunked` (hyper decodes only `chunked`; forwarding the body without the other
/// codings would change its meaning, so RFC 9112 §6.1 wants a 501), or an HTTP/1.1 request
/// without `Host` (RFC 9112 §3.2 wants a 400).
pub fn framing_problem(version: Version, headers: &http::HeaderMap) -> Option<FramingProblem> {
    if version == Version::HTTP_11 && !headers.contains_key(header::HOST) {
        return Some(FramingProblem::MissingHost);
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    codings.peek()?;
    let only_chunked = codings.all(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|c| c.trim().eq_ignore_ascii_case("chunked"))
        })
    });
    (!only_chunked).then_some(FramingProblem::UnsupportedCoding)
}

/// See [`framing_problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingProblem {
    /// HTTP/1.1 without `Host`.
    MissingHost,
    /// A transfer coding other than `chunked`.
    UnsupportedCoding,
}

/// Which way a message goes: each direction drops its own credentials.
#[derive(Clone, Copy)]
enum Direction {
    Request,
    Response,
}

/// The fields never forwarded: hop-by-hop (RFC 9110 §7.6.1, `Connection` first), then
/// for a request `Proxy-Authorization`, `Host` (the upstream's is set by the client) and
/// `Authorization` (replaced by ours), for a response `Proxy-Authenticate`.
static DROPPED: [HeaderName; 11] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::HOST,
    header::AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// The index in [`DROPPED`] of a (lowercase) name `direction` drops. A `match` on the
/// name compares its length first and then at most a few bytes, where comparing it with
/// each name in turn cost ~80 instructions per header.
fn dropped_index(name: &str, direction: Direction) -> Option<usize> {
    let i = match name {
        "connection" => 0,
        "keep-alive" => 1,
        "te" => 2,
        "trailer" => 3,
        "transfer-encoding" => 4,
        "upgrade" => 5,
        "proxy-connection" => 6,
        "proxy-authorization" => 7,
        "host" => 8,
        "authorization" => 9,
        "proxy-authenticate" => 10,
        _ => return None,
    };
    match direction {
        Direction::Request if i == 10 => None,
        Direction::Response if (7..=9).contains(&i) => None,
        _ => Some(i),
    }
}

/// Remove the fields the `Connection` header lists (RFC 9110 §7.6.1). Nearly always it
/// lists only names dropped anyway (`keep-alive`, `upgrade`, `te`): then nothing is
/// parsed into a name or collected. `close` and any other name are removed one by one.
fn drop_connection_listed(headers: &mut HeaderMap, direction: Direction) {
    let tokens = || {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    };
    let dropped_anyway = |t: &str| {
        DROPPED
            .iter()
            .position(|d| t.eq_ignore_ascii_case(d.as_str()))
            .is_some_and(|i| dropped_index(DROPPED[i].as_str(), direction).is_some())
    };
    if tokens().all(dropped_anyway) {
        return;
    }
    let listed: Vec<HeaderName> = tokens()
        .filter(|t| !dropped_anyway(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
}

/// Remove the fields `direction` drops that are present in `headers`, and those
/// `Connection` lists. One pass over the (few) headers present marks which are there, and
/// only those are removed: a `remove` costs a hash lookup each, present or not.
fn strip(headers: &mut HeaderMap, direction: Direction) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = dropped_index(name.as_str(), direction) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        drop_connection_listed(headers, direction);
    }
    for (i, name) in DROPPED.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Give the header values a buffer of their own. hyper parses them as slices of the app
/// connection's read buffer; kept for the whole exchange (a 401 replays them), they would
/// keep that 8 KiB buffer alive and make hyper allocate another one for the connection's
/// next read: +8 KiB per request in flight. One copy into one allocation instead.
pub fn detach_values(headers: &mut HeaderMap) {
    let total: usize = headers.values().map(HeaderValue::len).sum();
    if total == 0 {
        return;
    }
    let mut buf = BytesMut::with_capacity(total);
    for value in headers.values() {
        buf.extend_from_slice(value.as_bytes());
    }
    let buf = buf.freeze();
    let mut at = 0;
    for value in headers.values_mut() {
        let len = value.len();
        if let Ok(mut own) = HeaderValue::from_maybe_shared(buf.slice(at..at + len)) {
            own.set_sensitive(value.is_sensitive());
            *value = own;
        }
        at += len;
    }
}

/// Strip hop-by-hop headers, `Host` and the app's credentials from a request's headers.
pub fn clean_request_headers(headers: &mut HeaderMap) {
    strip(headers, Direction::Request);
}

/// Strip hop-by-hop headers from a response before it goes back to the app.
pub fn clean_response_headers(headers: &mut HeaderMap) {
    strip(headers, Direction::Response);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn detached_values_are_equal_in_order_and_keep_their_sensitivity() {
        let mut h = HeaderMap::new();
        let wire = Bytes::from_static(b"application/json\x00a\x00b\x00s3cr3t");
        let value =
            |r: std::ops::Range<usize>| HeaderValue::from_maybe_shared(wire.slice(r)).unwrap();
        h.append(header::ACCEPT, value(0..16));
        h.append("x-multi", value(17..18));
        h.append("x-multi", value(19..20));
        let mut secret = value(21..27);
        secret.set_sensitive(true);
        h.append("x-api-key", secret);
        h.append("x-empty", HeaderValue::from_static(""));
        let before = h.clone();
        detach_values(&mut h);
        assert_eq!(h, before);
        let multi: Vec<_> = h.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert!(h["x-api-key"].is_sensitive());
        assert!(!h[header::ACCEPT].is_sensitive());
        // No value points into the original buffer any more.
        let wire_range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        for v in h.values() {
            assert!(!wire_range.contains(&(v.as_bytes().as_ptr() as usize)) || v.is_empty());
        }
    }

    #[test]
    fn only_chunked_framing_with_a_host_passes() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let v11 = Version::HTTP_11;
        assert_eq!(framing_problem(v11, &headers(&[("host", "a")])), None);
        assert_eq!(
            framing_problem(
                v11,
                &headers(&[("host", "a"), ("transfer-encoding", "Chunked")])
            ),
            None
        );
        assert_eq!(
            framing_problem(v11, &headers(&[])),
            Some(FramingProblem::MissingHost)
        );
        // HTTP/1.0 and HTTP/2 need no Host (h2 has :authority).
        assert_eq!(framing_problem(Version::HTTP_10, &headers(&[])), None);
        assert_eq!(framing_problem(Version::HTTP_2, &headers(&[])), None);
        for te in [
            &[("transfer-encoding", "gzip, chunked")][..],
            &[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
        ] {
            let mut h = headers(te);
            h.insert(header::HOST, "a".parse().unwrap());
            assert_eq!(
                framing_problem(v11, &h),
                Some(FramingProblem::UnsupportedCoding),
                "{te:?}"
            );
        }
    }

    #[test]
    fn hop_by_hop_and_credentials_are_stripped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9v"),
            ("authorization", "Bearer app-token"),
            ("host", "127.0.0.1:8080"),
            ("x-request-id", "r1"),
            ("content-type", "application/json"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        clean_request_headers(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-request-id", "content-type"]);
    }

    #[test]
    fn each_dropped_name_is_found_at_its_own_index() {
        for (i, name) in DROPPED.iter().enumerate() {
            let found =
                [Direction::Request, Direction::Response].map(|d| dropped_index(name.as_str(), d));
            assert!(found.contains(&Some(i)), "{name} not found at {i}");
            assert!(found.iter().all(|f| f.is_none() || *f == Some(i)), "{name}");
        }
        assert_eq!(dropped_index("authorization", Direction::Response), None);
        assert_eq!(
            dropped_index("proxy-authenticate", Direction::Request),
            None
        );
        assert_eq!(dropped_index("content-length", Direction::Request), None);
    }

    #[test]
    fn a_response_loses_its_hop_by_hop_fields_and_what_connection_lists_in_any_case() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        // Sorted: a removal moves the last field into its place.
        let left = |h: &HeaderMap| {
            let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
            names.sort();
            names
        };
        // Only names dropped anyway, in another case: the fast path.
        let mut h = headers(&[
            ("connection", "Keep-Alive, UPGRADE"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("proxy-authenticate", "Basic"),
            ("content-length", "2"),
        ]);
        clean_response_headers(&mut h);
        assert_eq!(left(&h), ["content-length"]);
        // A response keeps `Authorization` and `Host` unless `Connection` names them.
        let mut h = headers(&[
            ("connection", "keep-alive"),
            ("authorization", "x"),
            ("host", "psp"),
        ]);
        clean_response_headers(&mut h);
        assert_eq!(left(&h), ["authorization", "host"]);
        let mut h = headers(&[
            ("connection", "keep-alive, Authorization"),
            ("authorization", "x"),
            ("x-kept", "1"),
        ]);
        clean_response_headers(&mut h);
        assert_eq!(left(&h), ["x-kept"]);
    }
}
