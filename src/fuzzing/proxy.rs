//! The whole-proxy target: the fuzzer's bytes are what an app writes on one connection.
//!
//! The app's side is a `tokio::io::duplex` pipe served by the real [`Proxy::handle`]
//! through hyper's HTTP/1 server, or hyper-util's auto server (h2c) when the bytes start
//! like the HTTP/2 preface, with the settings `server::serve` uses. Behind the proxy is a
//! real generation (identity, pooled mTLS client, token cell with a token already fetched
//! by its refresher) talking to the sandbox's mock PSP on a loopback port: the upstream is
//! a real socket, not an in-memory one, because the pooled client's connector is concrete
//! and giving it a type parameter would touch the hot path. One runtime, PSP and
//! generation serve every input; each input gets a fresh app connection. The connection
//! watchdog of `server::serve` is left out: this target is about what the proxy does with
//! the bytes, not how long a silent connection may stay.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::FutureExt as _;
use http::uri::Authority;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Notify;

use crate::config::{Config, IdentitySource};
use crate::generation::{Current, Generation};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, UpstreamTarget};
use crate::sandbox::{MockPsp, Pki, PspSettings};
use crate::server::ServerOptions;
use crate::tls::Identity;
use crate::token::endpoint::{ClientAuth, TokenEncoding, TokenRequest};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Far above what one input needs (request timeout 5 s, token wait 1 s): past it the
/// exchange hangs, which is a finding.
const EXCHANGE_BOUND: Duration = Duration::from_secs(30);
/// How long the app waits for the answers to what it sent before closing its side; the
/// mock PSP on loopback answers in a few milliseconds.
const SETTLE_BOUND: Duration = Duration::from_millis(200);
/// Headers the PSP must never see, whatever the app sent.
const NEVER_UPSTREAM: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "trailer",
];

struct Harness {
    rt: tokio::runtime::Runtime,
    psp: MockPsp,
    proxy: Proxy,
    _current: Current,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (psp, proxy, current) = rt.block_on(start());
        Harness {
            rt,
            psp,
            proxy,
            _current: current,
        }
    })
}

async fn start() -> (MockPsp, Proxy, Current) {
    let pki = Pki::new("pix-auth-proxy fuzz CA").expect("CA");
    let server = pki.server().expect("server certificate");
    let client = pki.client("fuzz-client").expect("client certificate");
    let settings = PspSettings {
        token_ttl: Duration::from_secs(3600),
        ..PspSettings::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the mock PSP");
    let psp = MockPsp::start(listener, &server, &pki, settings.clone()).expect("mock PSP");
    let identity = Identity::from_der(
        vec![client.cert_der.clone()],
        client.key_der(),
        Path::new("<fuzz client certificate>"),
        Path::new("<fuzz client key>"),
    )
    .expect("identity");
    let token = TokenRequest {
        url: psp.token_url().parse().expect("token URL"),
        client_id: settings.client_id.clone(),
        client_secret: Some(SecretString::from(settings.client_secret.clone())),
        auth: ClientAuth::Post,
        encoding: TokenEncoding::Form,
        scope: None,
        grant_type_in_query: false,
    };
    let mut config = Config::with_defaults(
        "127.0.0.1:8080".parse().expect("address"),
        psp.url().parse().expect("PSP URL"),
        token,
        IdentitySource::Loaded(Arc::new(identity)),
    );
    config.extra_roots.push(pki.ca_der().clone());
    config.proxy.token_wait = Duration::from_secs(1);
    config.proxy.request_timeout = Duration::from_secs(5);
    let metrics = Arc::new(Metrics::new());
    let (generation, refresher) = Generation::build(&config, 1, &metrics).expect("generation");
    generation.start(refresher);
    let current: Current = Arc::new(ArcSwap::from_pointee(generation));
    current
        .load()
        .cell
        .wait_usable(0, Duration::from_secs(30))
        .await
        .expect("a first token from the mock PSP");
    let proxy = Proxy::new(
        UpstreamTarget::new(&config.upstream).expect("absolute upstream"),
        vec![Authority::from_static("127.0.0.1:8080")],
        current.clone(),
        metrics,
        config.proxy.clone(),
    );
    (psp, proxy, current)
}

/// Requests being handled on the connection, so the app's side closes only after the
/// proxy answered what it sent (closing earlier cuts the exchange short).
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    done: Notify,
}

struct Guard(Arc<InFlight>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.done.notify_one();
    }
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> Guard {
        self.count.fetch_add(1, Ordering::SeqCst);
        Guard(self.clone())
    }

    /// Let the server parse what was written, then wait until nothing is in flight.
    async fn settle(&self) {
        loop {
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            self.done.notified().await;
        }
    }
}

/// One app connection carrying `data`. Checks: the exchange ends within a bound; an
/// HTTP/1 connection only ever answers with HTTP/1 responses; every request the PSP
/// echoed carried exactly one `Authorization`, a token the PSP issued, no hop-by-hop or
/// proxy header, and the PSP's own authority.
pub fn proxy_connection(data: &[u8]) {
    let h = harness();
    let out = h.rt.block_on(async {
        tokio::time::timeout(EXCHANGE_BOUND, exchange(h, data))
            .await
            .expect("the exchange must end")
    });
    let h2c = is_h2c(data);
    if !h2c && !out.is_empty() {
        assert!(out.starts_with(b"HTTP/1."), "not an HTTP/1 response");
    }
    check_echoes(h, &out);
}

fn is_h2c(data: &[u8]) -> bool {
    let n = data.len().min(H2_PREFACE.len());
    n > 0 && data[..n] == H2_PREFACE[..n]
}

async fn exchange(h: &Harness, data: &[u8]) -> Vec<u8> {
    let opts = ServerOptions::default();
    let (app, sidecar) = tokio::io::duplex(64 * 1024);
    let inflight = Arc::new(InFlight::default());
    let proxy = h.proxy.clone();
    let counter = inflight.clone();
    let service = service_fn(move |req| {
        let guard = counter.enter();
        proxy.clone().handle(req).map(move |resp| {
            drop(guard);
            Ok::<_, Infallible>(resp)
        })
    });
    let io = TokioIo::new(sidecar);
    let serve = async {
        let (h1, any) = crate::server::builders(&opts);
        if is_h2c(data) {
            let _ = any.serve_connection(io, service).await;
        } else {
            let _ = h1.serve_connection(io, service).await;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(app);
    let write = async {
        // A write fails once the server closed its side: the rest is not read anyway.
        // Then close like an app that got its answers, or gave up waiting: a request whose
        // body never arrives in full would otherwise keep every input waiting on the app
        // (this loop has no watchdog; see the module header).
        if wr.write_all(data).await.is_ok() {
            let _ = tokio::time::timeout(SETTLE_BOUND, inflight.settle()).await;
        }
        let _ = wr.shutdown().await;
    };
    let read = async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let ((), (), out) = tokio::join!(serve, write, read);
    out
}

/// Find the mock PSP's echo bodies (JSON objects, keys sorted, so they start with
/// `{"authority":`) in the raw output and check what the PSP received.
fn check_echoes(h: &Harness, out: &[u8]) {
    const START: &[u8] = b"{\"authority\":";
    let psp_authority = h.psp.addr().to_string();
    let issued = h.psp.issued_tokens();
    let mut at = 0;
    while let Some(pos) = find(&out[at..], START) {
        let from = at + pos;
        at = from + START.len();
        let mut values = serde_json::Deserializer::from_slice(&out[from..]).into_iter();
        // A body split across h2 DATA frames or chunks does not parse: nothing to check.
        let Some(Ok(serde_json::Value::Object(echo))) = values.next() else {
            continue;
        };
        if let Some(authority) = echo.get("authority").and_then(|a| a.as_str()) {
            assert_eq!(
                authority, psp_authority,
                "request sent to another authority"
            );
        }
        let Some(headers) = echo.get("headers").and_then(|h| h.as_object()) else {
            continue;
        };
        for name in NEVER_UPSTREAM {
            assert!(!headers.contains_key(*name), "the PSP received {name}");
        }
        let auth = headers
            .get("authorization")
            .and_then(|a| a.as_array())
            .expect("the PSP echoed a request without Authorization");
        assert_eq!(auth.len(), 1, "several Authorization headers upstream");
        let bearer = auth[0].as_str().and_then(|a| a.strip_prefix("Bearer "));
        assert!(
            bearer.is_some_and(|b| issued.iter().any(|t| t == b)),
            "the PSP received a token it did not issue"
        );
        if let Some(hosts) = headers.get("host").and_then(|v| v.as_array()) {
            for host in hosts {
                assert_eq!(host.as_str(), Some(psp_authority.as_str()), "foreign Host");
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
