//! Webhook fixtures: a PSP PKI three certificates deep (root → intermediate → issuing CA →
//! the PSP's client certificate), an impostor CA, the sidecar's webhook server identity, a
//! TLS client that calls like a PSP, and an app endpoint that records what it receives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pix_auth_proxy::sandbox::{Leaf, Pki};
use pix_auth_proxy::tls::Identity;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};

use super::{Env, Got, bind};

/// The certificates of a webhook test.
pub struct Hooks {
    /// The PSP's root CA: the `--webhook-client-ca` bundle.
    pub root: Pki,
    /// root → this intermediate → `issuing`.
    pub intermediate: Pki,
    /// The CA that issues the PSP's client certificates.
    pub issuing: Pki,
    /// The PSP's client certificate (CN `psp-webhook`).
    pub psp: Leaf,
    /// An unrelated CA, whose client certificate must never get through.
    pub impostor: Pki,
    /// Issues the sidecar's webhook server certificate.
    pub server_ca: Pki,
    /// The sidecar's webhook server certificate.
    pub server: Leaf,
}

impl Hooks {
    /// New certificates, written next to `env`'s files: `webhook-cert.pem`,
    /// `webhook-key.pem`, `psp-ca.pem`.
    pub fn new(env: &Env) -> Self {
        let root = Pki::new("PSP root CA").unwrap();
        let intermediate = root.intermediate("PSP intermediate CA").unwrap();
        let issuing = intermediate.intermediate("PSP webhook issuing CA").unwrap();
        let psp = issuing.client("psp-webhook").unwrap();
        let server_ca = Pki::new("webhook server CA").unwrap();
        let server = server_ca.server().unwrap();
        let hooks = Hooks {
            root,
            intermediate,
            issuing,
            psp,
            impostor: Pki::new("impostor CA").unwrap(),
            server_ca,
            server,
        };
        env.write("webhook-cert.pem", hooks.server.cert_pem.as_bytes());
        env.write("webhook-key.pem", hooks.server.key_pem.as_bytes());
        env.write("psp-ca.pem", hooks.root.ca_pem().as_bytes());
        hooks
    }

    /// The webhook flags for a sidecar forwarding to `forward`, plus `extra`.
    pub fn flags(&self, env: &Env, forward: &str, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "--webhook-listen",
            "127.0.0.1:0",
            "--webhook-cert",
            &env.p("webhook-cert.pem"),
            "--webhook-key",
            &env.p("webhook-key.pem"),
            "--webhook-client-ca",
            &env.p("psp-ca.pem"),
            "--webhook-forward",
            forward,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for flag in extra.iter().filter(|f| f.starts_with("--")) {
            // Single-valued flags in `extra` replace the default pair.
            if matches!(
                *flag,
                "--webhook-cert" | "--webhook-key" | "--webhook-forward"
            ) {
                if let Some(i) = v.iter().position(|x| x == flag) {
                    v.drain(i..i + 2);
                }
            }
        }
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// A client presenting `leaf` with `intermediates`, trusting the webhook server CA.
    pub fn client_with(&self, leaf: &Leaf, intermediates: &[&Pki]) -> Arc<ClientConfig> {
        let mut chain = vec![leaf.cert_der.clone()];
        chain.extend(intermediates.iter().map(|p| p.ca_der().clone()));
        let id = Identity::from_der(
            chain,
            leaf.key_der(),
            std::path::Path::new("leaf"),
            std::path::Path::new("key"),
        )
        .unwrap();
        Arc::new(id.client_config(self.server_roots()).unwrap())
    }

    /// The PSP's client: its certificate and both intermediates.
    pub fn psp_client(&self) -> Arc<ClientConfig> {
        self.client_with(&self.psp, &[&self.issuing, &self.intermediate])
    }

    /// A client without a certificate.
    pub fn anonymous_client(&self) -> Arc<ClientConfig> {
        Arc::new(
            ClientConfig::builder_with_provider(pix_auth_proxy::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(self.server_roots())
                .with_no_client_auth(),
        )
    }

    fn server_roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.server_ca.ca_der().clone()).unwrap();
        Arc::new(roots)
    }
}

/// What a PSP-like caller got back: the response and the server certificate it was shown.
#[derive(Debug)]
pub struct Called {
    pub got: Got,
    pub server_cert: CertificateDer<'static>,
}

/// POST `body` to `https://localhost{path_and_query}` at `addr` over a new TLS connection.
/// `Err` when the TLS handshake or the exchange fails.
pub async fn post(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Called, String> {
    call(addr, tls, "POST", path_and_query, headers, body).await
}

/// [`post`] with any method.
pub async fn call(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Called, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let server_cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("exchange: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Called {
        got: Got {
            status: parts.status,
            headers: parts.headers,
            body,
        },
        server_cert,
    })
}

/// POST `body` over HTTP/2 (ALPN `h2`) on a new TLS connection; the status.
pub async fn post_h2(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    path: &str,
    body: &str,
) -> Result<StatusCode, String> {
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::post(format!("https://localhost{path}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("exchange: {e}"))?;
    Ok(resp.status())
}

/// A request the app received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An app endpoint on 127.0.0.1 that records every request and answers `status` after
/// `delay`.
pub struct App {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<Mutex<(u16, Duration)>>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    pub async fn start() -> Self {
        let listener = bind().await;
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let answer = Arc::new(Mutex::new((204u16, Duration::ZERO)));
        let (s, a) = (seen.clone(), answer.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (s, a) = (s.clone(), a.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (s, a) = (s.clone(), a.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                s.lock().unwrap().push(Seen {
                                    uri: parts.uri.to_string(),
                                    headers: parts.headers,
                                    body,
                                });
                                let (status, delay) = *a.lock().unwrap();
                                tokio::time::sleep(delay).await;
                                let mut resp = Response::new(Full::new(Bytes::from_static(b"app")));
                                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        App {
            addr,
            seen,
            answer,
            task,
        }
    }

    /// The URL to give as `--webhook-forward`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answer `status` after `delay` from now on.
    pub fn answer(&self, status: u16, delay: Duration) {
        *self.answer.lock().unwrap() = (status, delay);
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}
