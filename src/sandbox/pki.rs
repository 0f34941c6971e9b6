//! A throwaway certificate authority that issues server and client certificates in memory.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

/// A certificate and its key, as PEM and DER.
#[derive(Clone)]
pub struct Leaf {
    /// PEM certificate chain (leaf, then the CA that issued it is *not* included).
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// PKCS#8 DER of the key.
    pub key_pkcs8: Vec<u8>,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Leaf {
    /// The private key, DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// A CA able to issue certificates. Every `Pki` is a new, unrelated trust domain.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// Why a certificate could not be generated.
pub type PkiError = rcgen::Error;

impl Pki {
    /// A new CA named `name`, valid from yesterday for ten years.
    pub fn new(name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "pix-auth-proxy sandbox");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(86_400);
        params.not_after = now + Duration::from_secs(10 * 365 * 86_400);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An intermediate CA named `name`, issued by this one (for chains 3 and more deep):
    /// its `ca_pem`/`ca_der` are the intermediate's certificate.
    pub fn intermediate(&self, name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let params = Self::ca_params(name)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Self {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    fn ca_params(name: &str) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "pix-auth-proxy sandbox");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(86_400);
        params.not_after = now + Duration::from_secs(10 * 365 * 86_400);
        Ok(params)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// A server certificate for `127.0.0.1` and `localhost`.
    pub fn server(&self) -> Result<Leaf, PkiError> {
        self.issue(
            "mock-psp",
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            Duration::from_secs(86_400),
            Duration::from_secs(365 * 86_400),
        )
    }

    /// A client certificate with common name `cn`, valid from yesterday for a year.
    pub fn client(&self, cn: &str) -> Result<Leaf, PkiError> {
        self.client_valid(
            cn,
            Duration::from_secs(86_400),
            Duration::from_secs(365 * 86_400),
        )
    }

    /// A client certificate with an RSA-2048 key (PSPs and ICP-Brasil mostly issue RSA).
    pub fn client_rsa(&self, cn: &str) -> Result<Leaf, PkiError> {
        let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?;
        let mut params = self.leaf_params(cn, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(86_400);
        params.not_after = now + Duration::from_secs(365 * 86_400);
        self.sign(params, key)
    }

    /// A client certificate valid from `now - before` to `now + after`.
    pub fn client_valid(
        &self,
        cn: &str,
        before: Duration,
        after: Duration,
    ) -> Result<Leaf, PkiError> {
        self.issue(
            cn,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            before,
            after,
        )
    }

    /// A client certificate that expired `ago`.
    pub fn expired_client(&self, cn: &str, ago: Duration) -> Result<Leaf, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = self.leaf_params(cn, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(30 * 86_400);
        params.not_after = now - ago;
        self.sign(params, key)
    }

    fn leaf_params(
        &self,
        cn: &str,
        sans: Vec<String>,
        eku: ExtendedKeyUsagePurpose,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::new(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn issue(
        &self,
        cn: &str,
        sans: Vec<String>,
        eku: ExtendedKeyUsagePurpose,
        before: Duration,
        after: Duration,
    ) -> Result<Leaf, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = self.leaf_params(cn, sans, eku)?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - before;
        params.not_after = now + after;
        self.sign(params, key)
    }

    fn sign(&self, params: CertificateParams, key: KeyPair) -> Result<Leaf, PkiError> {
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_pkcs8: key.serialize_der(),
        })
    }
}
