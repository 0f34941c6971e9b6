//! A hostile PSP API server: mTLS (a client certificate from the test CA is required), ALPN
//! `http/1.1` only. It records the raw bytes it receives and every request it parses with
//! `httparse` (framing by Content-Length or chunked, as a strict origin would), and answers
//! each request with a scripted byte sequence, so tests can send what no sane PSP sends:
//! 101s, stray 1xx, malformed heads, injected headers, endless bodies, resets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pix_auth_proxy::sandbox::{Leaf, Pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::raw::{dechunk, find};

/// One step of the answer to a request.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these exact bytes.
    Write(Bytes),
    /// `200 OK` whose body is the request's path (tells tests which request it answers).
    Echo,
    /// Wait.
    Sleep(Duration),
    /// Write these bytes again and again (bounded: 30 s) until the peer goes away.
    Endless(Bytes),
    /// Close the connection (FIN) and stop.
    Close,
    /// Reset the connection (RST) and stop.
    Reset,
    /// Never answer; hold the connection until the peer closes it.
    Hold,
}

/// The answer to every request, until changed.
pub type Script = Vec<Step>;

/// A request as the hostile PSP parsed it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

#[derive(Default)]
struct State {
    script: Mutex<Script>,
    seen: Mutex<Vec<Seen>>,
    raw: Mutex<Vec<u8>>,
    connections: AtomicU64,
    unparsable: AtomicU64,
    aborted_writes: AtomicU64,
}

pub struct HostilePsp {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostilePsp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostilePsp {
    /// Serve on 127.0.0.1 with `server`'s certificate, requiring a client certificate
    /// issued by `pki`. Every request is echoed until [`HostilePsp::script`] says otherwise.
    pub async fn start(pki: &Pki, server: &Leaf) -> Self {
        let listener = super::bind().await;
        let addr = listener.local_addr().unwrap();
        let acceptor = super::mtls_acceptor(pki, server, &[b"http/1.1"]);
        let state = Arc::new(State::default());
        *state.script.lock().unwrap() = vec![Step::Echo];
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    serve(tls, &state).await;
                });
            }
        });
        HostilePsp { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Answer every following request with `script`.
    pub fn script(&self, script: Script) {
        *self.state.script.lock().unwrap() = script;
    }

    /// Answer every following request with exactly `bytes` (then keep the connection).
    pub fn answer(&self, bytes: impl Into<Bytes>) {
        self.script(vec![Step::Write(bytes.into())]);
    }

    /// Every request parsed so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// Every byte received (after TLS), all connections concatenated.
    pub fn raw(&self) -> Vec<u8> {
        self.state.raw.lock().unwrap().clone()
    }

    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections whose bytes did not parse as HTTP/1.1 requests.
    pub fn unparsable(&self) -> u64 {
        self.state.unparsable.load(Ordering::SeqCst)
    }

    /// Scripted writes that failed because the peer went away (an endless body stopped).
    pub fn aborted_writes(&self) -> u64 {
        self.state.aborted_writes.load(Ordering::SeqCst)
    }
}

enum Parsed {
    Request(Seen, usize),
    Partial,
    Invalid,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let mut seen = Seen {
        method: req.method.unwrap_or_default().to_owned(),
        path: req.path.unwrap_or_default().to_owned(),
        headers,
        body: Vec::new(),
    };
    let rest = &buf[head_len..];
    let te = seen.header("transfer-encoding");
    let cl = seen.header("content-length");
    if te.is_some() && cl.is_some() || seen.header_count("content-length") > 1 {
        // Ambiguous framing: exactly what a smuggling attempt needs. Refuse it.
        return Parsed::Invalid;
    }
    let used = if let Some(te) = te {
        if te.trim() != "chunked" {
            return Parsed::Invalid;
        }
        let (body, complete, used) = dechunk(rest);
        if !complete {
            // Either more is coming or it is malformed; the size line tells.
            let line_ok = find(rest, b"\r\n").is_none_or(|eol| {
                let l = String::from_utf8_lossy(&rest[..eol]);
                usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).is_ok()
            });
            return if line_ok {
                Parsed::Partial
            } else {
                Parsed::Invalid
            };
        }
        seen.body = body;
        used
    } else if let Some(cl) = cl {
        let Ok(len) = cl.trim().parse::<usize>() else {
            return Parsed::Invalid;
        };
        if rest.len() < len {
            return Parsed::Partial;
        }
        seen.body = rest[..len].to_vec();
        len
    } else {
        0
    };
    Parsed::Request(seen, head_len + used)
}

async fn serve(mut tls: TlsStream<tokio::net::TcpStream>, state: &State) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match parse(&buf) {
            Parsed::Request(seen, used) => {
                buf.drain(..used);
                let path = seen.path.clone();
                state.seen.lock().unwrap().push(seen);
                let script = state.script.lock().unwrap().clone();
                if !answer(&mut tls, state, &script, &path).await {
                    return;
                }
            }
            Parsed::Invalid => {
                state.unparsable.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Parsed::Partial => match tls.read(&mut chunk).await {
                Ok(n) if n > 0 => {
                    state.raw.lock().unwrap().extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
                _ => return,
            },
        }
    }
}

/// Run `script` for one request; false when the connection is over.
async fn answer(
    tls: &mut TlsStream<tokio::net::TcpStream>,
    state: &State,
    script: &Script,
    path: &str,
) -> bool {
    for step in script {
        let wrote = match step {
            Step::Write(bytes) => write(tls, bytes).await,
            Step::Echo => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{path}",
                    path.len()
                );
                write(tls, head.as_bytes()).await
            }
            Step::Sleep(d) => {
                tokio::time::sleep(*d).await;
                true
            }
            Step::Endless(bytes) => {
                let until = Instant::now() + Duration::from_secs(30);
                let mut ok = true;
                while ok && Instant::now() < until {
                    ok = write(tls, bytes).await;
                }
                ok
            }
            Step::Close => {
                let _ = tls.shutdown().await;
                return false;
            }
            Step::Reset => {
                let _ = tls.get_ref().0.set_zero_linger();
                return false;
            }
            Step::Hold => {
                let mut sink = [0u8; 1024];
                while let Ok(n) = tls.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                return false;
            }
        };
        if !wrote {
            state.aborted_writes.fetch_add(1, Ordering::SeqCst);
            return false;
        }
    }
    true
}

async fn write(tls: &mut TlsStream<tokio::net::TcpStream>, bytes: &[u8]) -> bool {
    tls.write_all(bytes).await.is_ok() && tls.flush().await.is_ok()
}
