//! The mock PSP's webhook side: after a simulated payment (`POST /cob/{txid}/pay`) it calls
//! the registered webhook, `POST {url}/pix`, over mutual TLS with its own client certificate,
//! as a real PSP does.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri, header};
use http_body_util::{BodyExt, Full};
use rustls_pki_types::CertificateDer;

use super::pki::Leaf;
use crate::tls::{Identity, TlsError};

/// Where and how the mock PSP delivers notifications.
#[derive(Clone)]
pub struct WebhookTarget {
    url: String,
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl WebhookTarget {
    /// Deliver to `url` (the registered webhook URL; `/pix` is appended literally),
    /// presenting `client` (issued by a CA the receiver trusts) and trusting `server_ca` for
    /// the receiver's certificate.
    pub fn new(
        url: &str,
        client: &Leaf,
        server_ca: &CertificateDer<'static>,
    ) -> Result<Self, TlsError> {
        let identity = Identity::from_der(
            vec![client.cert_der.clone()],
            client.key_der(),
            std::path::Path::new("<mock PSP webhook certificate>"),
            std::path::Path::new("<mock PSP webhook key>"),
        )?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_ca.clone())?;
        let tls = identity.client_config(Arc::new(roots))?;
        let opts = crate::config::ClientOptions {
            http1_only: true,
            ..Default::default()
        };
        Ok(WebhookTarget {
            url: url.trim_end_matches('?').to_owned(),
            client: crate::client::https_client(tls, &opts),
        })
    }

    /// POST the notification `body`; the receiver's status, or why it could not be reached.
    pub async fn deliver(&self, body: Bytes) -> Result<u16, String> {
        let uri: Uri = format!("{}/pix", self.url)
            .parse()
            .map_err(|e| format!("webhook URL: {e}"))?;
        let req = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let send = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| crate::telemetry::error_chain(&e))?;
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            Ok(status)
        };
        tokio::time::timeout(Duration::from_secs(15), send)
            .await
            .map_err(|_| "the webhook did not answer within 15 s".to_string())?
    }
}

/// Deliver the notification in a payment's answer and add what the webhook said to it
/// (`"webhook": {"status": 200}` or `{"error": "…"}`), so the caller sees the round trip.
pub(super) async fn notify_payment(
    target: &WebhookTarget,
    answer: Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    let (parts, body) = answer.into_parts();
    let Ok(bytes) = body.collect().await.map(|b| b.to_bytes());
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let delivered = target.deliver(bytes).await;
    tracing::info!(event = "mock_psp_webhook_delivered", result = ?delivered, "mock PSP notified the webhook");
    doc["webhook"] = match delivered {
        Ok(status) => serde_json::json!({"status": status}),
        Err(e) => serde_json::json!({"error": e}),
    };
    super::psp::json(parts.status, doc)
}
