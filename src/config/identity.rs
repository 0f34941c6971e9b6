//! Where the client identity (and the webhook server identity) is read from: PEM files, a
//! PKCS#12 file with its password, or an identity already in memory.
//!
//! Owns: [`IdentitySource`], [`PasswordSource`] and the checks on the identity flags.

use std::path::PathBuf;
use std::sync::Arc;

use secrecy::SecretString;

use super::files::{permissive_mode, read_secret_file, readable_file};
use super::{ConfigError, SecretEnv, err};
use crate::cli::RunArgs;
use crate::tls::{Identity, TlsError};

pub(super) fn identity_source(
    args: &RunArgs,
    secrets: &SecretEnv,
    warnings: &mut Vec<String>,
) -> Result<IdentitySource, ConfigError> {
    if let Some(p12) = &args.pkcs12 {
        readable_file("--pkcs12", p12)?;
        if let Some(w) = permissive_mode(p12) {
            warnings.push(format!("--pkcs12 {}: {w}", p12.display()));
        }
        let password = match &args.pkcs12_password_file {
            Some(f) => {
                readable_file("--pkcs12-password-file", f)?;
                if let Some(w) = permissive_mode(f) {
                    warnings.push(format!("--pkcs12-password-file {}: {w}", f.display()));
                }
                PasswordSource::File(f.clone())
            }
            None => PasswordSource::Value(
                secrets
                    .pkcs12_password
                    .clone()
                    .unwrap_or_else(|| SecretString::from(String::new())),
            ),
        };
        return Ok(IdentitySource::Pkcs12 {
            path: p12.clone(),
            password,
        });
    }
    if args.pkcs12_password_file.is_some() {
        return Err(err(
            "--pkcs12-password-file",
            "only makes sense with --pkcs12",
        ));
    }
    let cert = args.cert.clone().ok_or_else(|| {
        err(
            "--cert",
            "is required (PEM client certificate), or give the identity as --pkcs12",
        )
    })?;
    let key = args
        .key
        .clone()
        .ok_or_else(|| err("--key", "is required (PEM private key of --cert)"))?;
    readable_file("--cert", &cert)?;
    readable_file("--key", &key)?;
    if let Some(w) = permissive_mode(&key) {
        warnings.push(format!("--key {}: {w}", key.display()));
    }
    Ok(IdentitySource::Pem { cert, key })
}

/// Where a PKCS#12 password comes from.
#[derive(Debug, Clone)]
pub enum PasswordSource {
    /// Re-read on every (re)load, so a rotated password file is picked up.
    File(PathBuf),
    /// From the environment (empty for password-less files).
    Value(SecretString),
}

impl PasswordSource {
    fn read(&self) -> Result<SecretString, TlsError> {
        match self {
            PasswordSource::Value(v) => Ok(v.clone()),
            // An empty file is a valid (empty) PKCS#12 password.
            PasswordSource::File(path) => read_secret_file(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            }),
        }
    }
}

/// Where the client identity comes from.
#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// PEM files: certificate chain and private key.
    Pem {
        /// PEM certificate chain, leaf first.
        cert: PathBuf,
        /// PEM private key.
        key: PathBuf,
    },
    /// A PKCS#12 file (`.p12` / `.pfx`).
    Pkcs12 {
        /// The file.
        path: PathBuf,
        /// Its password.
        password: PasswordSource,
    },
    /// An identity already loaded (the `demo`, which writes nothing to disk).
    Loaded(Arc<Identity>),
}

impl IdentitySource {
    /// Load and validate the identity.
    pub fn load(&self) -> Result<Arc<Identity>, TlsError> {
        match self {
            IdentitySource::Pem { cert, key } => Identity::from_pem_files(cert, key).map(Arc::new),
            IdentitySource::Pkcs12 { path, password } => {
                crate::tls::pkcs12::load(path, &password.read()?).map(Arc::new)
            }
            IdentitySource::Loaded(identity) => Ok(identity.clone()),
        }
    }

    /// The files this identity is read from (to watch for changes).
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            IdentitySource::Pem { cert, key } => vec![cert.clone(), key.clone()],
            IdentitySource::Pkcs12 { path, password } => match password {
                PasswordSource::File(f) => vec![path.clone(), f.clone()],
                PasswordSource::Value(_) => vec![path.clone()],
            },
            IdentitySource::Loaded(_) => Vec::new(),
        }
    }
}
