//! Raw-socket helpers: send exact bytes, read until the peer closes (or a bound passes),
//! tell closed-by-peer from still-open, and split what came back into HTTP/1.1 responses.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How a read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed its side (EOF).
    Closed,
    /// The peer reset the connection (or another read error).
    Reset,
    /// Nothing arrived for the idle bound: the connection is still open.
    Idle,
    /// The overall bound passed while bytes kept coming.
    Deadline,
}

impl End {
    /// The peer ended the connection (cleanly or not).
    pub fn by_peer(self) -> bool {
        matches!(self, End::Closed | End::Reset)
    }
}

/// What a read loop collected.
#[derive(Debug)]
pub struct Read {
    pub bytes: Vec<u8>,
    pub end: End,
    /// Time from the start of the read loop to its end.
    pub after: Duration,
}

impl Read {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// Read until the peer closes, nothing arrives for `idle`, or `within` passes.
pub async fn read_until_end(tcp: &mut TcpStream, idle: Duration, within: Duration) -> Read {
    let start = Instant::now();
    let deadline = start + within;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        let wait = (Instant::now() + idle).min(deadline);
        match tokio::time::timeout_at(wait, tcp.read(&mut buf)).await {
            Ok(Ok(0)) => break End::Closed,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break End::Reset,
            Err(_) if Instant::now() >= deadline => break End::Deadline,
            Err(_) => break End::Idle,
        }
    };
    Read {
        bytes,
        end,
        after: start.elapsed(),
    }
}

/// Read (and discard) until the peer ends the connection; `Some(elapsed)` if it did within
/// `within`, `None` if the connection was still open then.
pub async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<Duration> {
    let r = read_until_end(tcp, within, within).await;
    r.end.by_peer().then_some(r.after)
}

/// Connect, send `bytes`, then read until close or `idle` silence (at most 10 s).
pub async fn exchange(addr: SocketAddr, bytes: &[u8], idle: Duration) -> Read {
    let mut tcp = connect(addr).await;
    // The peer may close before everything is written (a rejected head): not an error here.
    let _ = tcp.write_all(bytes).await;
    read_until_end(&mut tcp, idle, Duration::from_secs(10)).await
}

/// One HTTP/1.1 response parsed out of a byte stream.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The body ended as its framing said (false: the stream was cut).
    pub complete: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The problem `type` slug, if this is one of our problem bodies.
    pub fn problem(&self) -> Option<String> {
        if self.header("content-type") != Some(b"application/problem+json") {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["type"]
            .as_str()?
            .strip_prefix("urn:pix-auth-proxy:problem:")
            .map(str::to_owned)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Split `bytes` into the responses it holds (interim 1xx included). Parsing stops at the
/// first thing that is not a response head; a body cut short is returned with
/// `complete: false`.
pub fn responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => break,
        };
        let status = resp.code.unwrap_or(0);
        let headers: Vec<(String, Vec<u8>)> = resp
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect();
        bytes = &bytes[head_len..];
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
        };
        let (body, complete, used) = if (100..200).contains(&status) || status == 204 {
            (Vec::new(), true, 0)
        } else if find("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
            dechunk(bytes)
        } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let n = len.min(bytes.len());
            (bytes[..n].to_vec(), n == len, n)
        } else {
            // Delimited by close: everything left.
            (bytes.to_vec(), true, bytes.len())
        };
        bytes = &bytes[used..];
        out.push(RawResponse {
            status,
            headers,
            body,
            complete,
        });
        if !complete {
            break;
        }
    }
    out
}

/// Decode a chunked body at the start of `bytes`: (body, complete, bytes used).
pub fn dechunk(bytes: &[u8]) -> (Vec<u8>, bool, usize) {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&bytes[at..], b"\r\n") else {
            return (body, false, bytes.len());
        };
        let line = String::from_utf8_lossy(&bytes[at..at + eol]);
        let size_text = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (body, false, bytes.len());
        };
        at += eol + 2;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let Some(eol) = find(&bytes[at..], b"\r\n") else {
                    return (body, false, bytes.len());
                };
                at += eol + 2;
                if eol == 0 {
                    return (body, true, at);
                }
            }
        }
        if bytes.len() < at + size + 2 {
            body.extend_from_slice(&bytes[at..bytes.len().min(at + size)]);
            return (body, false, bytes.len());
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The 24-byte HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame (length 0, type 4, no flags, stream 0).
pub const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Read until the last response parsed is a complete final (non-1xx) one, or the peer ends
/// the connection; `closed` says which. Panics after `within` (a hang).
pub async fn read_final(tcp: &mut TcpStream, within: Duration) -> (Vec<RawResponse>, bool) {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + within;
    loop {
        let parsed = responses(&bytes);
        if parsed.last().is_some_and(|r| r.status >= 200 && r.complete) {
            return (parsed, false);
        }
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
            Ok(_) => return (responses(&bytes), true),
            Err(_) => panic!(
                "no final response within {within:?}: {:?}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
}
