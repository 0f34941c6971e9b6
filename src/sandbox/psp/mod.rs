//! The mock PSP server: mTLS required, an OAuth2 token endpoint at `/oauth/token`, and an
//! API that accepts only tokens it issued (to the certificate that asked for them) and
//! echoes what it received as JSON.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::pki::{Leaf, Pki};
use crate::telemetry::hex;
use crate::token::endpoint::{ClientAuth, TokenEncoding};

mod api;
mod token;
use api::api;
use token::token_endpoint;

/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/oauth/token";

/// What the mock PSP expects and grants.
#[derive(Debug, Clone)]
pub struct PspSettings {
    /// The only client id accepted.
    pub client_id: String,
    /// The only client secret accepted.
    pub client_secret: String,
    /// The client authentication style demanded; others are refused with `invalid_client`.
    pub auth: ClientAuth,
    /// Lifetime of issued tokens.
    pub token_ttl: Duration,
    /// Status of a successful token response (200, or 201 as Pagstar answers).
    pub token_status: StatusCode,
    /// Demand this body encoding (`None`: accept form or JSON).
    pub encoding: Option<TokenEncoding>,
    /// Demand `grant_type=client_credentials` in the token URL's query, not the body.
    pub grant_type_in_query: bool,
    /// Demand a `scope`.
    pub require_scope: bool,
    /// Grant only these scopes (space-separated), whatever was asked.
    pub grant_scope: Option<String>,
    /// Serve Pix-shaped endpoints (`PUT`/`GET /cob/{txid}`, `GET /pix`) instead of echoing
    /// those paths. Every other path always echoes.
    pub pix_api: bool,
}

impl Default for PspSettings {
    fn default() -> Self {
        Self {
            client_id: "sandbox-client".into(),
            client_secret: "sandbox-secret-0123456789".into(),
            auth: ClientAuth::Post,
            token_ttl: Duration::from_secs(300),
            token_status: StatusCode::OK,
            encoding: None,
            grant_type_in_query: false,
            require_scope: false,
            grant_scope: None,
            pix_api: false,
        }
    }
}

/// How the token endpoint behaves right now.
#[derive(Debug, Clone)]
pub enum TokenMode {
    /// Validate the request and issue a token.
    Normal,
    /// Answer this exact response, whatever the request.
    Raw {
        /// Status code.
        status: StatusCode,
        /// `Content-Type`.
        content_type: &'static str,
        /// Body.
        body: Bytes,
    },
    /// Never answer (until the mode changes).
    Hang,
}

#[derive(Debug)]
struct Issued {
    expires_at: Instant,
    client_cert: String,
}

#[derive(Debug)]
struct State {
    settings: Mutex<PspSettings>,
    mode: Mutex<TokenMode>,
    mode_changed: watch::Sender<()>,
    token_requests: AtomicU64,
    api_requests: AtomicU64,
    reject_next: AtomicU32,
    api_delay: Mutex<Duration>,
    tokens: Mutex<HashMap<String, Issued>>,
    /// Offer `h2` in ALPN to new connections.
    offer_h2: AtomicBool,
    /// TLS connections accepted, by negotiated protocol: [http/1.1, h2].
    connections: [AtomicU64; 2],
    /// TLS connections open now.
    open: AtomicU64,
    /// Bumped to close every open connection gracefully.
    kick: watch::Sender<u64>,
    /// Close each connection gracefully after this many requests (0: never).
    requests_per_connection: AtomicU64,
    cobs: Mutex<HashMap<String, serde_json::Value>>,
    /// Received Pix by `endToEndId` (`GET /pix/{e2eid}`).
    pix: Mutex<HashMap<String, serde_json::Value>>,
    /// Where a simulated payment is notified.
    webhook: Mutex<Option<super::WebhookTarget>>,
    issued: Mutex<Vec<String>>,
    token_certs: Mutex<Vec<String>>,
}

/// A running mock PSP. Dropping it stops the server.
#[derive(Debug)]
pub struct MockPsp {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: watch::Sender<bool>,
}

/// Everything a client needs to talk to a mock PSP started with [`MockPsp::start`].
impl MockPsp {
    /// Start on `listener` (bind `127.0.0.1:0`), with a server certificate from `pki`, and
    /// accept only client certificates issued by `client_ca`.
    pub fn start(
        listener: TcpListener,
        server_cert: &Leaf,
        client_ca: &Pki,
        settings: PspSettings,
    ) -> std::io::Result<Self> {
        Self::start_trusting(
            listener,
            server_cert,
            vec![client_ca.ca_der().clone()],
            settings,
        )
    }

    /// Like [`MockPsp::start`], trusting the given client CA certificates (DER).
    pub fn start_trusting(
        listener: TcpListener,
        server_cert: &Leaf,
        client_cas: Vec<rustls_pki_types::CertificateDer<'static>>,
        settings: PspSettings,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let provider = crate::tls::provider();
        let mut roots = rustls::RootCertStore::empty();
        for ca in client_cas {
            roots.add(ca).map_err(std::io::Error::other)?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(std::io::Error::other)?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server_cert.cert_der.clone()], server_cert.key_der())
            .map_err(std::io::Error::other)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http1 = TlsAcceptor::from(Arc::new(config.clone()));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let both = TlsAcceptor::from(Arc::new(config));
        let (mode_changed, _) = watch::channel(());
        let state = Arc::new(State {
            settings: Mutex::new(settings),
            mode: Mutex::new(TokenMode::Normal),
            mode_changed,
            token_requests: AtomicU64::new(0),
            api_requests: AtomicU64::new(0),
            reject_next: AtomicU32::new(0),
            api_delay: Mutex::new(Duration::ZERO),
            tokens: Mutex::new(HashMap::new()),
            offer_h2: AtomicBool::new(true),
            connections: [AtomicU64::new(0), AtomicU64::new(0)],
            open: AtomicU64::new(0),
            kick: watch::channel(0).0,
            requests_per_connection: AtomicU64::new(0),
            cobs: Mutex::new(HashMap::new()),
            pix: Mutex::new(HashMap::new()),
            webhook: Mutex::new(None),
            issued: Mutex::new(Vec::new()),
            token_certs: Mutex::new(Vec::new()),
        });
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, [http1, both], state.clone(), stop_rx));
        Ok(Self {
            addr,
            state,
            _stop: stop,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the API, e.g. `https://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// URL of the token endpoint.
    pub fn token_url(&self) -> String {
        format!("https://{}{TOKEN_PATH}", self.addr)
    }

    /// Token requests received (any outcome).
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// API requests received (any outcome).
    pub fn api_requests(&self) -> u64 {
        self.state.api_requests.load(Ordering::SeqCst)
    }

    /// Change how the token endpoint answers.
    pub fn set_mode(&self, mode: TokenMode) {
        *self.state.mode.lock().unwrap() = mode;
        self.state.mode_changed.send_replace(());
    }

    /// Change the lifetime of tokens issued from now on.
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.state.settings.lock().unwrap().token_ttl = ttl;
    }

    /// Answer the next `n` API requests with 401, whatever their token.
    pub fn reject_next_api(&self, n: u32) {
        self.state.reject_next.store(n, Ordering::SeqCst);
    }

    /// Delay every API response by `d` (slow PSP).
    pub fn set_api_delay(&self, d: Duration) {
        *self.state.api_delay.lock().unwrap() = d;
    }

    /// Forget every issued token: the API then rejects them (as a PSP does after a
    /// credential rotation).
    pub fn revoke_all(&self) {
        self.state.tokens.lock().unwrap().clear();
    }

    /// Every access token ever issued, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.issued.lock().unwrap().clone()
    }

    /// Offer (or stop offering) `h2` in ALPN on new connections, as a PSP changing its
    /// gateway would.
    pub fn set_offer_h2(&self, offer: bool) {
        self.state.offer_h2.store(offer, Ordering::SeqCst);
    }

    /// Close every open connection (token and API alike) gracefully, as a gateway restart
    /// would: HTTP/2 `GOAWAY`, HTTP/1.1 close once idle. [`MockPsp::open_connections`] tells
    /// when they are gone.
    pub fn close_connections(&self) {
        self.state.kick.send_modify(|n| *n += 1);
    }

    /// Close each new connection gracefully (HTTP/2 `GOAWAY`, HTTP/1.1 `Connection: close`)
    /// once it has received `n` requests, as gateways do (nginx's `keepalive_requests`).
    /// 0 turns it off.
    pub fn set_requests_per_connection(&self, n: u64) {
        self.state
            .requests_per_connection
            .store(n, Ordering::SeqCst);
    }

    /// TLS connections open now.
    pub fn open_connections(&self) -> u64 {
        self.state.open.load(Ordering::SeqCst)
    }

    /// TLS connections accepted so far that negotiated HTTP/1.1 and h2: `(http1, h2)`.
    pub fn connections(&self) -> (u64, u64) {
        (
            self.state.connections[0].load(Ordering::SeqCst),
            self.state.connections[1].load(Ordering::SeqCst),
        )
    }

    /// Deliver every simulated payment (`POST /cob/{txid}/pay`) to `target`.
    pub fn set_webhook(&self, target: super::WebhookTarget) {
        *self.state.webhook.lock().unwrap() = Some(target);
    }

    /// Record a received Pix of `valor` (e.g. "10.00") for `txid`, as `GET /pix/{e2eid}`
    /// will show it; returns its `endToEndId`.
    pub fn record_pix(&self, txid: &str, valor: &str) -> String {
        super::pix::record(&self.state.pix, txid, valor)["endToEndId"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// SHA-256 (hex) of the client certificate of each successful token request, in order.
    pub fn token_client_certs(&self) -> Vec<String> {
        self.state.token_certs.lock().unwrap().clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    [http1, both]: [TlsAcceptor; 2],
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let acceptor = if state.offer_h2.load(Ordering::SeqCst) {
            both.clone()
        } else {
            http1.clone()
        };
        let state = state.clone();
        let mut stop = stop.clone();
        let mut kick = state.kick.subscribe();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            state.connections[usize::from(h2)].fetch_add(1, Ordering::SeqCst);
            let _open = OpenConnection::new(state.clone());
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| hex(&crate::tls::sha256(c.as_ref())))
                .unwrap_or_default();
            let limit = state.requests_per_connection.load(Ordering::SeqCst);
            let counter = Arc::new(AtomicU64::new(0));
            let limit_reached = Arc::new(tokio::sync::Notify::new());
            let reached = limit_reached.clone();
            let service = service_fn(move |req| {
                if counter.fetch_add(1, Ordering::SeqCst) + 1 == limit {
                    reached.notify_one();
                }
                let state = state.clone();
                let cert = cert.clone();
                async move { Ok::<_, Infallible>(handle(&state, &cert, req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = stop.changed() => break,
                    _ = kick.changed(), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    () = limit_reached.notified(), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        });
    }
}

/// Counts a connection as open until dropped.
struct OpenConnection(Arc<State>);

impl OpenConnection {
    fn new(state: Arc<State>) -> Self {
        state.open.fetch_add(1, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn handle(state: &State, cert: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == TOKEN_PATH {
        state.token_requests.fetch_add(1, Ordering::SeqCst);
        return token_endpoint(state, cert, req).await;
    }
    state.api_requests.fetch_add(1, Ordering::SeqCst);
    api(state, cert, req).await
}
