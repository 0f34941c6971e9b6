//! `pix-auth-proxy demo`: the whole product in one process, with nothing to install or
//! download. A throwaway CA and certificates in memory, the mock PSP (mTLS only, bearer
//! checked, short-lived tokens, Pix-shaped endpoints) and the sidecar in front of it.
//!
//! Owns: wiring the sandbox to a sidecar and the banner with ready-to-paste `curl` lines.
//! Both directions run: the app calls the PSP through the sidecar, and a simulated payment
//! (`POST /cob/{txid}/pay`) makes the mock PSP call the sidecar's webhook listener over mTLS,
//! which hands the notification to a tiny app endpoint that logs it.
//! Writes nothing to disk unless asked (`--write-certs`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::config::{Config, IdentitySource, WebhookConfig};
use crate::sandbox::{Leaf, MockPsp, Pki, PspSettings, WebhookTarget};
use crate::sidecar::{Sidecar, StartError};
use crate::tls::Identity;
use crate::token::endpoint::{ClientAuth, TokenEncoding, TokenRequest};

/// Settings of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Lifetime of the mock PSP's tokens (short, to watch renewals).
    pub token_ttl: Duration,
    /// Write the demo's CA, certificates, key and secret here (mode 600) for trying `run`.
    pub write_certs: Option<PathBuf>,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Certificate generation failed.
    #[error("cannot generate demo certificates: {0}")]
    Pki(#[from] rcgen::Error),
    /// A socket or file could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The sidecar refused the demo configuration.
    #[error(transparent)]
    Start(#[from] StartError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// A demo ready to run: mock PSP started, sidecar built.
pub struct Demo {
    psp: MockPsp,
    sidecar: Sidecar,
    listener: TcpListener,
    admin: Option<TcpListener>,
    banner: String,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("psp", &self.psp.url())
            .finish_non_exhaustive()
    }
}

impl Demo {
    /// Build the sandbox and the sidecar; the sidecar will serve on `listener`.
    pub async fn start(
        listener: TcpListener,
        admin: Option<TcpListener>,
        opts: DemoOptions,
    ) -> Result<Self, DemoError> {
        let pki = Pki::new("pix-auth-proxy demo CA")?;
        let server = pki.server()?;
        let client = pki.client("demo-client.pix-auth-proxy.local")?;
        let mut secret_bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut secret_bytes).map_err(|_| DemoError::Io {
            what: "random secret".into(),
            source: std::io::Error::other("system RNG failed"),
        })?;
        let settings = PspSettings {
            client_id: "demo-client".into(),
            client_secret: crate::telemetry::hex(&secret_bytes),
            auth: ClientAuth::Post,
            token_ttl: opts.token_ttl,
            pix_api: true,
            ..PspSettings::default()
        };
        let psp_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io("bind the mock PSP on 127.0.0.1"))?;
        let psp = MockPsp::start(psp_listener, &server, &pki, settings.clone())
            .map_err(io("start the mock PSP"))?;

        if let Some(dir) = &opts.write_certs {
            write_certs(dir, &pki, &server, &client, &settings.client_secret)?;
        }
        let loaded = |leaf: &Leaf, what: &str| {
            Identity::from_der(
                vec![leaf.cert_der.clone()],
                leaf.key_der(),
                Path::new(&format!("<demo {what} certificate>")),
                Path::new(&format!("<demo {what} key>")),
            )
            .map(Arc::new)
            .map_err(|source| StartError::Tls {
                flag: "demo",
                source,
            })
        };
        let identity = loaded(&client, "client")?;
        let local = listener
            .local_addr()
            .map_err(io("read the listener address"))?;
        let upstream: Uri = psp.url().parse().expect("mock PSP URL is valid");
        let token = TokenRequest {
            url: psp
                .token_url()
                .parse()
                .expect("mock PSP token URL is valid"),
            client_id: settings.client_id.clone(),
            client_secret: Some(SecretString::from(settings.client_secret.clone())),
            auth: ClientAuth::Post,
            encoding: TokenEncoding::Form,
            scope: Some("cob.write cob.read pix.read".into()),
            grant_type_in_query: false,
        };
        let mut config =
            Config::with_defaults(local, upstream, token, IdentitySource::Loaded(identity));
        config.extra_roots.push(pki.ca_der().clone());
        config.refresh.expiry_margin = Duration::from_secs(5);

        // The inbound direction: the mock PSP's webhook certificate, the sidecar's webhook
        // listener, and an app endpoint that logs what it receives.
        let app_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io("bind the demo app on 127.0.0.1"))?;
        let app_addr = app_listener
            .local_addr()
            .map_err(io("read the demo app address"))?;
        tokio::spawn(demo_app(app_listener));
        let webhook_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io("bind the webhook listener on 127.0.0.1"))?;
        let webhook_addr = webhook_listener
            .local_addr()
            .map_err(io("read the webhook listener address"))?;
        let mut webhook = WebhookConfig::with_defaults(
            webhook_addr,
            IdentitySource::Loaded(loaded(&pki.server()?, "webhook server")?),
            vec![pki.ca_der().clone()],
            format!("http://{app_addr}/pix-webhook")
                .parse()
                .expect("app URL is valid"),
        );
        webhook.allow_subject = vec![PSP_WEBHOOK_CN.into()];
        webhook.verify = crate::cli::WebhookVerify::On;
        config.webhook = Some(webhook);
        let psp_webhook = pki.client(PSP_WEBHOOK_CN)?;
        let target = WebhookTarget::new(
            &format!("https://{webhook_addr}"),
            &psp_webhook,
            pki.ca_der(),
        )
        .map_err(|source| StartError::Tls {
            flag: "demo",
            source,
        })?;
        psp.set_webhook(target);

        let mut sidecar = Sidecar::new(config)?;
        sidecar.set_webhook_listener(webhook_listener);
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let banner = banner(
            local,
            webhook_addr,
            admin_addr,
            &psp,
            &settings,
            opts.token_ttl,
            opts.write_certs.as_deref(),
        );
        Ok(Self {
            psp,
            sidecar,
            listener,
            admin,
            banner,
        })
    }

    /// What to print for the user: addresses, equivalent flags and `curl` lines.
    pub fn banner(&self) -> &str {
        &self.banner
    }

    /// Serve until `shutdown`, then drain and stop the mock PSP.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let drained = self.sidecar.run(self.listener, self.admin, shutdown).await;
        drop(self.psp);
        drained
    }
}

fn write_certs(
    dir: &Path,
    pki: &Pki,
    server: &Leaf,
    client: &Leaf,
    secret: &str,
) -> Result<(), DemoError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("--write-certs {}", dir.display())))?;
    let files: [(&str, &str); 6] = [
        ("ca.pem", pki.ca_pem()),
        ("server.pem", &server.cert_pem),
        ("server-key.pem", &server.key_pem),
        ("client.pem", &client.cert_pem),
        ("client-key.pem", &client.key_pem),
        ("client-secret", secret),
    ];
    for (name, content) in files {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(format!("--write-certs {}", path.display())))?;
        std::io::Write::write_all(&mut f, content.as_bytes())
            .map_err(io(format!("--write-certs {}", path.display())))?;
    }
    Ok(())
}

/// A txid in the BCB format (26–35 alphanumerics).
const DEMO_TXID: &str = "DEMO0000000000000000000000001";

/// The subject CN of the mock PSP's webhook client certificate (the demo pins it).
const PSP_WEBHOOK_CN: &str = "webhook.mock-psp.local";

/// The tiny app endpoint of the demo: logs every notification the sidecar forwards.
async fn demo_app(listener: TcpListener) {
    use http_body_util::BodyExt;
    while let Ok((tcp, _)) = listener.accept().await {
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let h = |name: &str| {
                        parts
                            .headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned()
                    };
                    tracing::info!(
                        event = "demo_app_received",
                        webhook_event = %h("x-pix-webhook-event"),
                        verified = %h("x-pix-webhook-verified"),
                        caller = %h("x-client-cert-subject"),
                        request_id = %h("x-request-id"),
                        body = %String::from_utf8_lossy(&body),
                        "demo app: webhook notification received"
                    );
                    let mut resp =
                        http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                    *resp.status_mut() = http::StatusCode::NO_CONTENT;
                    Ok::<_, std::convert::Infallible>(resp)
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn banner(
    local: SocketAddr,
    webhook: SocketAddr,
    admin: Option<SocketAddr>,
    psp: &MockPsp,
    settings: &PspSettings,
    ttl: Duration,
    certs: Option<&Path>,
) -> String {
    let app = format!("http://{local}");
    let files = match certs {
        Some(d) => format!(
            "\n  the same sidecar from the written files:\n    pix-auth-proxy run --provider custom --upstream {} --token-url {} \\\n      --client-id {} --client-secret-file {d}/client-secret \\\n      --cert {d}/client.pem --key {d}/client-key.pem --ca {d}/ca.pem --listen 127.0.0.1:8081\n",
            psp.url(),
            psp.token_url(),
            settings.client_id,
            d = d.display()
        ),
        None => "\n  (add --write-certs DIR to get the demo's certificates as files)\n".into(),
    };
    format!(
        "\
pix-auth-proxy demo — everything runs in this process; nothing is written to disk.

  mock PSP (mTLS only):  {psp_url}   token endpoint {token_url}
  tokens live {ttl}s and are renewed before they expire (watch the log)
  sidecar for your app:  {app}   (plain HTTP: no certificate, no token on your side)
  webhook listener:      https://{webhook}   (the mock PSP calls it with its client certificate)
  equivalent flags:      --provider custom --upstream {psp_url} --token-url {token_url} --client-id {id} --client-auth post --token-encoding form
{files}
Try it:
  curl -s -X PUT {app}/cob/{txid} -H 'content-type: application/json' -d '{{\"calendario\":{{\"expiracao\":3600}},\"valor\":{{\"original\":\"12.34\"}},\"chave\":\"contato@example.com\"}}'
  curl -s {app}/cob/{txid}
  curl -s -X POST {app}/cob/{txid}/pay
  curl -s '{app}/pix?inicio=2026-01-01T00:00:00Z&fim=2026-12-31T23:59:59Z'
  curl -s {app}/echo

The POST …/pay line pays the charge: the mock PSP records the Pix and calls the webhook over
mTLS; the sidecar checks its certificate, confirms the Pix with the PSP and forwards it to
the demo app, which logs `demo_app_received` (event pix, verified true).
{admin}
Ctrl-C stops.
",
        admin = match admin {
            Some(a) => format!("\nHealth and metrics:\n  curl -s http://{a}/readyz\n  curl -s http://{a}/metrics\n"),
            None => String::new(),
        },
        psp_url = psp.url(),
        token_url = psp.token_url(),
        ttl = ttl.as_secs(),
        id = settings.client_id,
        txid = DEMO_TXID,
    )
}
