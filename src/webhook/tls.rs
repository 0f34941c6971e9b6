//! TLS of the webhook listener: the server identity the PSP sees, the client-certificate
//! verifier built from every `--webhook-client-ca` bundle, and what a verified caller's
//! leaf certificate says (subject, CN, issuer, fingerprints) for the allow-lists and headers.
//!
//! Owns: [`TlsState`], one loaded set of identity + CAs. The listener keeps it in an
//! `ArcSwap` and builds each connection's acceptor from the current one, so a reload (a new
//! certificate or a new CA bundle) applies to the next handshake and never to one in flight.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::config::WebhookConfig;
use crate::metrics::Metrics;
use crate::tls::{CertificateInfo, Identity, TlsError};

/// One loaded CA certificate, as `check` and the start-up log show it.
#[derive(Debug, Clone)]
pub struct CaInfo {
    /// The bundle it came from (`None`: given in memory).
    pub file: Option<PathBuf>,
    /// Its facts.
    pub info: CertificateInfo,
}

/// A server identity and client verifier, loaded together.
pub struct TlsState {
    /// The rustls configuration for new connections.
    pub config: Arc<ServerConfig>,
    /// The server identity.
    pub identity: Arc<Identity>,
    /// Every CA certificate that can anchor a caller's chain.
    pub cas: Vec<CaInfo>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("identity", &self.identity)
            .field("cas", &self.cas.len())
            .finish_non_exhaustive()
    }
}

/// Why the webhook TLS state could not be loaded; names the flag.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {source}")]
pub struct WebhookTlsError {
    /// The flag whose file is at fault.
    pub flag: &'static str,
    /// What went wrong.
    pub source: TlsError,
}

impl TlsState {
    /// Load the identity and CA bundles named by `config`.
    pub fn load(
        config: &WebhookConfig,
        rejected: Arc<RejectLog>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WebhookTlsError> {
        let identity = config.identity.load().map_err(|source| WebhookTlsError {
            flag: identity_flag(config, &source),
            source,
        })?;
        let ca_err = |source| WebhookTlsError {
            flag: "--webhook-client-ca",
            source,
        };
        let mut roots = RootCertStore::empty();
        let mut cas = Vec::new();
        let mut add = |file: Option<&Path>, der: CertificateDer<'static>| {
            let label = file.unwrap_or(Path::new("(in memory)"));
            let info = crate::tls::certificate_info(label, &der).map_err(ca_err)?;
            roots.add(der).map_err(|e| {
                ca_err(TlsError::BadCertificate {
                    path: label.to_owned(),
                    reason: e.to_string(),
                })
            })?;
            cas.push(CaInfo {
                file: file.map(Path::to_owned),
                info,
            });
            Ok::<_, WebhookTlsError>(())
        };
        for der in &config.extra_client_ca {
            add(None, der.clone())?;
        }
        for file in &config.client_ca {
            let pem = std::fs::read(file).map_err(|source| {
                ca_err(TlsError::Read {
                    path: file.clone(),
                    source,
                })
            })?;
            // Every certificate of the bundle is an anchor: a bundle may hold the root and
            // the intermediates, and a PSP may send its leaf alone.
            for der in crate::tls::certs_from_pem(file, &pem).map_err(ca_err)? {
                add(Some(file), der)?;
            }
        }
        let provider = crate::tls::provider();
        let verifier: Arc<dyn ClientCertVerifier> = if roots.is_empty() {
            // Only the URL-secret variant: no certificate is asked for.
            WebPkiClientVerifier::no_client_auth()
        } else {
            let inner =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    // Requested, not required: a caller without one completes the handshake
                    // and gets a 403 problem it can read (Efí's registration probe wants that).
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| ca_err(TlsError::Rustls(rustls::Error::General(e.to_string()))))?;
            Arc::new(RejectingVerifier {
                inner,
                rejected,
                metrics,
            })
        };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ca_err(TlsError::Rustls(e)))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(FixedCert(identity.certified_key())));
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsState {
            config: Arc::new(server),
            identity,
            cas,
        })
    }
}

fn identity_flag(config: &WebhookConfig, err: &TlsError) -> &'static str {
    use crate::config::{IdentitySource, PasswordSource};
    match &config.identity {
        IdentitySource::Pem { key, .. } => match err {
            TlsError::BadKey { path, .. } if path == key => "--webhook-key",
            TlsError::KeyMismatch { .. } => "--webhook-key",
            TlsError::Read { path, .. } if path == key => "--webhook-key",
            _ => "--webhook-cert",
        },
        IdentitySource::Pkcs12 {
            password: PasswordSource::File(f),
            ..
        } if matches!(err, TlsError::Read { path, .. } if path == f) => {
            "--webhook-pkcs12-password-file"
        }
        _ => "--webhook-pkcs12",
    }
}

/// The one server identity of a [`TlsState`] (whatever SNI the PSP sends).
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Callers already logged as rejected, by certificate fingerprint, so a PSP retrying every
/// few seconds with the wrong certificate writes one line per certificate, not thousands.
#[derive(Debug, Default)]
pub struct RejectLog(Mutex<HashSet<[u8; 32]>>);

/// Bound on remembered fingerprints (past it, a rejected caller may be logged again).
const REJECT_LOG_MAX: usize = 1024;

impl RejectLog {
    /// Log `why` for this certificate at WARN unless it was logged already.
    pub fn once(&self, der: &[u8], why: &'static str) {
        let sha = crate::tls::sha256(der);
        {
            let Ok(mut seen) = self.0.lock() else { return };
            if seen.len() >= REJECT_LOG_MAX {
                seen.clear();
            }
            if !seen.insert(sha) {
                return;
            }
        }
        let (subject, issuer) = match x509_parser::parse_x509_certificate(der) {
            Ok((_, c)) => (c.subject().to_string(), c.issuer().to_string()),
            Err(_) => ("(unparsable)".into(), "(unparsable)".into()),
        };
        tracing::warn!(
            event = "webhook_caller_rejected",
            reason = why,
            cert_subject = %subject,
            cert_issuer = %issuer,
            cert_sha256 = %crate::telemetry::hex(&sha),
            "webhook caller refused (logged once per certificate); if this is your PSP, add its CA or allow its subject/key"
        );
    }
}

/// rustls' verifier, plus a log line and a metric for a chain that does not verify (the
/// handshake then fails, so nothing else would see the certificate).
#[derive(Debug)]
struct RejectingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    rejected: Arc<RejectLog>,
    metrics: Arc<Metrics>,
}

impl ClientCertVerifier for RejectingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        if verified.is_err() {
            self.metrics.webhook_request("untrusted");
            self.rejected.once(end_entity.as_ref(), "untrusted_chain");
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a verified caller's leaf certificate says.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Subject DN.
    pub subject: String,
    /// Subject common name, if any.
    pub cn: Option<String>,
    /// Issuer DN.
    pub issuer: String,
    /// End of validity.
    pub not_after: SystemTime,
    /// SHA-256 of the leaf DER, hex.
    pub cert_sha256: String,
    /// SHA-256 of the leaf's SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
    /// The leaf DER (for the once-per-certificate log).
    pub der: Vec<u8>,
}

impl Caller {
    /// Read a leaf certificate that rustls already verified.
    pub fn from_leaf(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let secs = cert.validity().not_after.timestamp().max(0) as u64;
        Some(Caller {
            subject: cert.subject().to_string(),
            cn,
            issuer: cert.issuer().to_string(),
            not_after: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            cert_sha256: crate::telemetry::hex(&crate::tls::sha256(der)),
            spki_sha256: crate::tls::sha256(cert.tbs_certificate.subject_pki.raw),
            der: der.to_vec(),
        })
    }

    /// Whether the allow-lists admit this caller (an empty list admits everyone). With both
    /// lists set, the caller must pass both.
    pub fn allowed(&self, subjects: &[String], spkis: &[[u8; 32]]) -> bool {
        let subject_ok = subjects.is_empty()
            || subjects
                .iter()
                .any(|s| s == &self.subject || self.cn.as_deref() == Some(s.as_str()));
        let spki_ok = spkis.is_empty()
            || spkis.iter().any(|p| {
                aws_lc_rs::constant_time::verify_slices_are_equal(p, &self.spki_sha256).is_ok()
            });
        subject_ok && spki_ok
    }
}
