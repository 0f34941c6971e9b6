//! Shared fixtures: a PKI, a mock PSP, files on disk, an in-process sidecar, a plain HTTP
//! client, and captured logs. Compiled once for the whole `it` binary.

#![allow(dead_code)]

pub mod body;
pub mod counting_psp;
pub mod fault;
pub mod h2_frames;
pub mod hostile_psp;
pub mod logs;
pub mod nginx_edge;
pub mod process;
pub mod raw;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;
pub mod refusing_h2;
pub mod repoint_relay;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pix_auth_proxy::cli::RunArgs;
use pix_auth_proxy::config::Config;
use pix_auth_proxy::sandbox::{Leaf, MockPsp, Pki, PspSettings};
use pix_auth_proxy::sidecar::Sidecar;
use pix_auth_proxy::token::{RefresherHandle, TokenCell};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A PKI, a client identity on disk, a mock PSP and a client secret file.
pub struct Env {
    pub pki: Pki,
    pub client: Leaf,
    pub psp: MockPsp,
    pub settings: PspSettings,
    pub dir: tempfile::TempDir,
}

/// A TLS acceptor for a test PSP: `server`'s certificate, a client certificate issued by
/// `pki` required (mTLS, as a PSP does), `alpn` offered.
pub fn mtls_acceptor(pki: &Pki, server: &Leaf, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let provider = pix_auth_proxy::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.cert_der.clone()], server.key_der())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

impl Env {
    pub async fn new() -> Self {
        Self::with(PspSettings::default()).await
    }

    pub async fn with(settings: PspSettings) -> Self {
        logs::init();
        let pki = Pki::new("test CA").unwrap();
        let client = pki.client("pix-client").unwrap();
        let server = pki.server().unwrap();
        let psp = MockPsp::start(bind().await, &server, &pki, settings.clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let env = Env {
            pki,
            client,
            psp,
            settings,
            dir,
        };
        env.write("cert.pem", env.client.cert_pem.as_bytes());
        env.write("key.pem", env.client.key_pem.as_bytes());
        env.write("ca.pem", env.pki.ca_pem().as_bytes());
        env.write(
            "secret",
            format!("{}\n", env.settings.client_secret).as_bytes(),
        );
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    pub fn write(&self, name: &str, data: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(name);
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// The flags that point a sidecar at this env's mock PSP, plus `extra`.
    pub fn flags(&self, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "--provider",
            "custom",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &self.psp.url(),
            "--token-url",
            &self.psp.token_url(),
            "--client-id",
            &self.settings.client_id,
            "--client-secret-file",
            &self.p("secret"),
            "--cert",
            &self.p("cert.pem"),
            "--key",
            &self.p("key.pem"),
            "--ca",
            &self.p("ca.pem"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // A flag given in `extra` replaces the default pair.
        for flag in extra.iter().filter(|f| f.starts_with("--")) {
            if let Some(i) = v.iter().position(|x| x == flag) {
                v.drain(i..i + 2);
            }
        }
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// A validated config for this env, with fast backoff so tests recover quickly.
    pub fn config(&self, extra: &[&str]) -> Config {
        let mut argv = vec!["pix-auth-proxy".to_string()];
        argv.extend(self.flags(extra));
        let args = RunArgs::try_parse_from(argv).expect("flags parse");
        let mut config = Config::from_args(&args, pix_auth_proxy::config::SecretEnv::default())
            .expect("config valid");
        config.refresh.backoff_base = Duration::from_millis(100);
        config.refresh.backoff_max = Duration::from_millis(500);
        config.shutdown_delay = Duration::ZERO;
        config
    }

    pub async fn sidecar(&self, extra: &[&str]) -> Running {
        Running::start(self.config(extra)).await
    }

    /// Every secret this env knows: the client secret and every token the PSP issued.
    pub fn secrets(&self) -> Vec<String> {
        let mut s = self.psp.issued_tokens();
        s.push(self.settings.client_secret.clone());
        s
    }

    /// The captured logs of this process never contain a secret or a token.
    pub fn assert_logs_clean(&self) {
        logs::assert_clean(&self.secrets());
    }

    pub fn client_cert_sha256(&self) -> String {
        pix_auth_proxy::telemetry::hex(&pix_auth_proxy::tls::sha256(self.client.cert_der.as_ref()))
    }
}

/// A sidecar running in this process on a free port.
pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: std::sync::Arc<pix_auth_proxy::metrics::Metrics>,
    pub health: std::sync::Arc<pix_auth_proxy::admin::Health>,
    pub current: pix_auth_proxy::generation::Current,
    pub reload: std::sync::Arc<tokio::sync::Notify>,
    /// The webhook listener's address, when the config has one.
    pub webhook: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<bool>,
}

impl Running {
    pub async fn start(config: Config) -> Self {
        let mut sidecar = Sidecar::new(config).expect("sidecar starts");
        let mut webhook = None;
        if sidecar.webhook().is_some() {
            let l = bind().await;
            webhook = Some(l.local_addr().unwrap());
            sidecar.set_webhook_listener(l);
        }
        let listener = bind().await;
        let addr = listener.local_addr().unwrap();
        let admin_listener = bind().await;
        let admin = admin_listener.local_addr().unwrap();
        let current = sidecar.current();
        let reload = sidecar.reload_trigger();
        let (tx, rx) = oneshot::channel::<()>();
        let metrics = sidecar.metrics();
        let health = sidecar.health();
        let task = tokio::spawn(sidecar.run(listener, Some(admin_listener), async {
            let _ = rx.await;
        }));
        Running {
            addr,
            admin,
            metrics,
            health,
            current,
            reload,
            webhook,
            stop: Some(tx),
            task,
        }
    }

    /// The current generation's token cell.
    pub fn cell(&self) -> TokenCell {
        self.current.load().cell.clone()
    }

    /// The current generation's refresher.
    pub fn refresher(&self) -> RefresherHandle {
        self.current.load().refresher.clone()
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Wait until the sidecar holds a token.
    pub async fn ready(&self) {
        self.cell()
            .wait_usable(0, Duration::from_secs(10))
            .await
            .expect("a token within 10 s");
    }

    /// Start shutdown and wait for the drain; returns whether it completed.
    pub async fn stop(mut self) -> bool {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn http_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// A response read whole.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `Authorization` header the mock PSP echoed.
    pub fn upstream_authorization(&self) -> String {
        self.json()["headers"]["authorization"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

pub async fn send(client: &Client<HttpConnector, TestBody>, req: Request<TestBody>) -> Got {
    let resp: Response<hyper::body::Incoming> = client
        .request(req)
        .await
        .expect("request reaches the sidecar");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Got {
    let req = Request::get(url).body(empty()).unwrap();
    send(&http_client(), req).await
}

/// Poll `cond` every 20 ms for up to `within`.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Assert that a response is one of our RFC 9457 problems of the given slug.
pub fn assert_problem(got: &Got, status: u16, slug: &str) {
    assert_eq!(
        got.status.as_u16(),
        status,
        "body: {}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(
        got.headers[http::header::CONTENT_TYPE],
        "application/problem+json"
    );
    let v = got.json();
    assert_eq!(
        v["type"],
        format!("urn:pix-auth-proxy:problem:{slug}"),
        "{v}"
    );
    assert_eq!(v["status"], status);
    assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()));
}

/// Send raw bytes as an HTTP/1.1 request and read the response head (and whatever body
/// arrived) as text.
pub async fn raw_http1(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        // Stop once the head and a Content-Length body are complete.
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len = text[..head_end].lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if out.len() >= head_end + 4 + len.unwrap_or(0) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
