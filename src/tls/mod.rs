//! The mTLS client identity and the rustls configurations built from it.
//!
//! Owns: reading the certificate chain and private key (PEM via `rustls-pki-types`),
//! checking that they belong together and are within their validity period, the trust
//! anchors (system roots plus `--ca`), and the `rustls::ClientConfig` shared by the upstream
//! client and the token client. It never touches the network.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod pkcs12;
pub mod refusal;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why an identity or trust store could not be loaded. Each variant names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read (missing, permissions, …).
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no PEM `CERTIFICATE` block, or a block is malformed.
    #[error("{path}: no valid PEM certificate found{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint, if any.
        detail: Option<String>,
    },
    /// The file holds no usable private key.
    #[error("{path}: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A PKCS#12 file that cannot be used (wrong password, no key, several keys, …).
    #[error("{path}: {reason}")]
    Pkcs12 {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key does not belong to the leaf certificate.
    #[error("{key}: private key does not match the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The leaf certificate cannot be parsed as X.509.
    #[error("{path}: certificate cannot be parsed: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// The leaf certificate expired.
    #[error("{path}: certificate expired on {not_after} (subject {subject})")]
    Expired {
        /// The file.
        path: PathBuf,
        /// The end of validity, RFC 3339-ish.
        not_after: String,
        /// The certificate subject.
        subject: String,
    },
    /// The leaf certificate is not valid yet.
    #[error("{path}: certificate is not valid before {not_before} (subject {subject})")]
    NotYetValid {
        /// The file.
        path: PathBuf,
        /// The start of validity.
        not_before: String,
        /// The certificate subject.
        subject: String,
    },
    /// No trust anchor could be loaded at all.
    #[error("no trust anchors: the system store is empty and no --ca was given")]
    NoTrustAnchors,
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Facts about the leaf certificate shown in logs, `check` and metrics.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// SHA-256 of the SubjectPublicKeyInfo, hex: identifies the key across renewals of the
    /// certificate and keys the shared cache.
    pub spki_sha256: String,
}

impl CertificateInfo {
    /// Time left until the certificate expires (zero if already expired).
    pub fn time_left(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }
}

/// A loaded and validated client identity: chain + key that belong together.
pub struct Identity {
    key: Arc<CertifiedKey>,
    info: CertificateInfo,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("subject", &self.info.subject)
            .field("chain_len", &self.key.cert.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The crypto provider used everywhere: rustls with aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Identity {
    /// Load a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        Self::from_pem_bytes(&cert_pem, &key_pem, cert, key)
    }

    /// [`Identity::from_pem_files`] on the files' contents; `cert_path`/`key_path` only
    /// label errors.
    pub fn from_pem_bytes(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, TlsError> {
        let chain = certs_from_pem(cert_path, cert_pem)?;
        let key_der = key_from_pem(key_path, key_pem)?;
        Self::from_der(chain, key_der, cert_path, key_path)
    }

    /// Build an identity from DER parts; `cert_path`/`key_path` only label errors.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let signing_key =
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| TlsError::BadKey {
                    path: key_path.to_owned(),
                    reason: format!("private key not usable: {e}"),
                })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch {
                    cert: cert_path.to_owned(),
                    key: key_path.to_owned(),
                });
            }
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => {
                return Err(TlsError::BadCertificate {
                    path: cert_path.to_owned(),
                    reason: e.to_string(),
                });
            }
        }
        let info = certificate_info(cert_path, &certified.cert[0])?;
        let now = SystemTime::now();
        if now > info.not_after {
            return Err(TlsError::Expired {
                path: cert_path.to_owned(),
                not_after: rfc3339(info.not_after),
                subject: info.subject,
            });
        }
        if now < info.not_before {
            return Err(TlsError::NotYetValid {
                path: cert_path.to_owned(),
                not_before: rfc3339(info.not_before),
                subject: info.subject,
            });
        }
        Ok(Self {
            key: Arc::new(certified),
            info,
        })
    }

    /// Facts about the leaf certificate.
    pub fn info(&self) -> &CertificateInfo {
        &self.info
    }

    /// The chain and signing key, as rustls serves them (the webhook listener's resolver).
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.key.clone()
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.key.cert
    }

    /// A `ClientConfig` presenting this identity and trusting `roots`. ALPN is left empty:
    /// the connector sets it.
    pub fn client_config(&self, roots: Arc<RootCertStore>) -> Result<ClientConfig, TlsError> {
        let resolver = SingleCert(self.key.clone());
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(resolver));
        Ok(config)
    }
}

/// Always presents the one identity, whatever the server asks for (PSPs rarely send a useful
/// list of acceptable CAs).
#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for SingleCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // Offer the key only if it can sign with one of the server's schemes; otherwise
        // rustls would fail the handshake locally with a less helpful error.
        self.0.key.choose_scheme(sigschemes).map(|_| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Trust anchors: the system store plus the PEM certificates in `extra_ca` plus `extra`.
pub fn root_store(
    extra_ca: Option<&Path>,
    extra: &[CertificateDer<'static>],
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in extra {
        roots.add(cert.clone())?;
    }
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A broken system certificate is not our user's problem; skip it.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let pem = read(path)?;
        for cert in certs_from_pem(path, &pem)? {
            roots.add(cert).map_err(|e| TlsError::BadCertificate {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parse every `CERTIFICATE` block in `pem`.
pub fn certs_from_pem(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, pem::Error> = CertificateDer::pem_slice_iter(pem).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(TlsError::NoCertificate {
            path: path.to_owned(),
            detail: None,
        }),
        Err(e) => Err(TlsError::NoCertificate {
            path: path.to_owned(),
            detail: Some(e.to_string()),
        }),
    }
}

/// Parse the first private key in `pem`: PKCS#8, PKCS#1 (`RSA PRIVATE KEY`) or SEC1
/// (`EC PRIVATE KEY`). An encrypted PKCS#8 key is refused with a message saying how to
/// decrypt it.
pub fn key_from_pem(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    if contains(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(TlsError::BadKey {
            path: path.to_owned(),
            reason: "encrypted PKCS#8 keys are not supported; decrypt it first \
                     (openssl pkcs8 -in key.pem -out key.plain.pem) or use --pkcs12"
                .into(),
        });
    }
    if contains(pem, b"Proc-Type: 4,ENCRYPTED") {
        return Err(TlsError::BadKey {
            path: path.to_owned(),
            reason: "encrypted (legacy OpenSSL) private keys are not supported; decrypt it first"
                .into(),
        });
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::BadKey {
        path: path.to_owned(),
        reason: match e {
            pem::Error::NoItemsFound => {
                "no PEM private key found (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                    .into()
            }
            other => format!("malformed PEM private key: {other}"),
        },
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Facts about a DER certificate; `path` only labels the error.
pub fn certificate_info(
    path: &Path,
    der: &CertificateDer<'_>,
) -> Result<CertificateInfo, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
        TlsError::BadCertificate {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })?;
    let to_system = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH
        }
    };
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(CertificateInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: to_system(cert.validity().not_before),
        not_after: to_system(cert.validity().not_after),
        spki_sha256: crate::telemetry::hex(&sha256(spki)),
    })
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Format a `SystemTime` as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
