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

/// The flags of one identity (the client's, or the webhook listener's) and their names, so
/// that both are checked by the same code and errors name the right flag.
pub(super) struct IdentityFlags<'a> {
    pub cert: (&'static str, Option<&'a PathBuf>),
    pub key: (&'static str, Option<&'a PathBuf>),
    pub pkcs12: (&'static str, Option<&'a PathBuf>),
    pub password_file: (&'static str, Option<&'a PathBuf>),
    /// The password from the environment, when there is no password file.
    pub password_env: Option<SecretString>,
    /// What the certificate is, for the "is required" message.
    pub what: &'static str,
}

impl<'a> IdentityFlags<'a> {
    /// The client identity's flags.
    pub fn client(args: &'a RunArgs, secrets: &SecretEnv) -> Self {
        IdentityFlags {
            cert: ("--cert", args.cert.as_ref()),
            key: ("--key", args.key.as_ref()),
            pkcs12: ("--pkcs12", args.pkcs12.as_ref()),
            password_file: ("--pkcs12-password-file", args.pkcs12_password_file.as_ref()),
            password_env: secrets.pkcs12_password.clone(),
            what: "PEM client certificate",
        }
    }

    /// Whether any of them was given.
    pub fn any(&self) -> bool {
        self.cert.1.is_some()
            || self.key.1.is_some()
            || self.pkcs12.1.is_some()
            || self.password_file.1.is_some()
    }
}

pub(super) fn identity_source(
    flags: IdentityFlags<'_>,
    warnings: &mut Vec<String>,
) -> Result<IdentitySource, ConfigError> {
    if let (name, Some(p12)) = flags.pkcs12 {
        readable_file(name, p12)?;
        if let Some(w) = permissive_mode(p12) {
            warnings.push(format!("{name} {}: {w}", p12.display()));
        }
        let password = match flags.password_file {
            (name, Some(f)) => {
                readable_file(name, f)?;
                if let Some(w) = permissive_mode(f) {
                    warnings.push(format!("{name} {}: {w}", f.display()));
                }
                PasswordSource::File(f.clone())
            }
            (_, None) => PasswordSource::Value(
                flags
                    .password_env
                    .unwrap_or_else(|| SecretString::from(String::new())),
            ),
        };
        return Ok(IdentitySource::Pkcs12 {
            path: p12.clone(),
            password,
        });
    }
    if let (name, Some(_)) = flags.password_file {
        return Err(err(
            name,
            format!("only makes sense with {}", flags.pkcs12.0),
        ));
    }
    let (cert_flag, key_flag) = (flags.cert.0, flags.key.0);
    let cert = flags.cert.1.cloned().ok_or_else(|| {
        err(
            cert_flag,
            format!(
                "is required ({}), or give the identity as {}",
                flags.what, flags.pkcs12.0
            ),
        )
    })?;
    let key = flags.key.1.cloned().ok_or_else(|| {
        err(
            key_flag,
            format!("is required (PEM private key of {cert_flag})"),
        )
    })?;
    readable_file(cert_flag, &cert)?;
    readable_file(key_flag, &key)?;
    if let Some(w) = permissive_mode(&key) {
        warnings.push(format!("{key_flag} {}: {w}", key.display()));
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
