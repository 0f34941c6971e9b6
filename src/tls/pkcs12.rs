//! PKCS#12 (`.p12` / `.pfx`) client identities, pure Rust: modern AES/PBES2 files and the
//! legacy RC2-40 / 3DES ones that OpenSSL 3 refuses without its legacy provider.
//!
//! Owns: picking the one private key in the file, its certificate (by local key id, else by
//! public key) and the intermediates that chain it, leaf first.

use std::path::Path;

use p12_keystore::{Certificate, Pkcs12Archive};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use secrecy::{ExposeSecret, SecretString};

use super::{Identity, TlsError};

fn bad(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Pkcs12 {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Load the identity in a PKCS#12 file. `password` is empty for password-less files.
pub fn load(path: &Path, password: &SecretString) -> Result<Identity, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_bytes(&data, password, path)
}

/// [`load`] on the file's contents; `path` only labels errors.
pub fn from_bytes(data: &[u8], password: &SecretString, path: &Path) -> Result<Identity, TlsError> {
    let archive = Pkcs12Archive::from_pkcs12(data, password.expose_secret()).map_err(|e| {
        use p12_keystore::error::Error as E;
        match e {
            E::MacError(_) => bad(path, "wrong password (the file's integrity check failed)"),
            E::UnpadError | E::Pkcs5Error(_) => {
                bad(path, format!("cannot decrypt (wrong password?): {e}"))
            }
            E::UnsupportedEncryptionScheme | E::UnsupportedMacAlgorithm => {
                bad(path, format!("unsupported PKCS#12 protection: {e}"))
            }
            other => bad(path, format!("not a readable PKCS#12 file: {other}")),
        }
    })?;
    let key = match archive.keys.as_slice() {
        [] => {
            return Err(bad(
                path,
                "holds no private key (only certificates); export it with its key",
            ));
        }
        [one] => one,
        many => {
            return Err(bad(
                path,
                format!(
                    "holds {} private keys; export only the client identity you need",
                    many.len()
                ),
            ));
        }
    };
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key.as_der().to_vec()));
    let certs: Vec<&Certificate> = archive.certs.iter().map(|b| &b.cert).collect();
    if certs.is_empty() {
        return Err(bad(path, "holds a private key but no certificate"));
    }
    // The leaf: the certificate bag carrying the key's local key id, else any certificate
    // whose public key matches (checked below by Identity::from_der either way).
    let by_id = key.local_key_id.as_ref().and_then(|id| {
        archive
            .certs
            .iter()
            .find(|b| b.local_key_id.as_deref() == Some(id.0.as_slice()))
            .map(|b| &b.cert)
    });
    let candidates: Vec<&Certificate> = match by_id {
        Some(leaf) => vec![leaf],
        None => certs.clone(),
    };
    let mut last_err = None;
    for leaf in candidates {
        let chain = chain_for(leaf, &certs);
        match Identity::from_der(chain, key_der.clone_key(), path, path) {
            Ok(identity) => return Ok(identity),
            Err(TlsError::KeyMismatch { .. }) => {
                last_err = Some(bad(
                    path,
                    "no certificate in the file matches its private key",
                ));
            }
            Err(other) => return Err(other),
        }
    }
    Err(last_err.unwrap_or_else(|| bad(path, "no certificate in the file matches its private key")))
}

/// `leaf` followed by the certificates that issued it, as found in the file; a self-signed
/// root is left out (the server has it already).
fn chain_for(leaf: &Certificate, all: &[&Certificate]) -> Vec<CertificateDer<'static>> {
    let mut chain = vec![CertificateDer::from(leaf.as_der().to_vec())];
    let mut current = leaf;
    while let Some(issuer) = all
        .iter()
        .find(|c| c.subject() == current.issuer() && c.as_der() != current.as_der())
    {
        let self_signed = issuer.subject() == issuer.issuer();
        if self_signed || chain.iter().any(|d| d.as_ref() == issuer.as_der()) {
            break;
        }
        chain.push(CertificateDer::from(issuer.as_der().to_vec()));
        current = issuer;
    }
    chain
}
