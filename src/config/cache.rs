//! Checks on the shared-cache flags (`--cache*`), producing the token cache's settings.

use std::sync::Arc;

use super::files::{permissive_mode, positive, read_secret, readable_file};
use super::{ConfigError, err};
use crate::cli::RunArgs;
use crate::token::cache::{CacheConfig, CacheKey};

pub(super) fn cache_config(
    args: &RunArgs,
    warnings: &mut Vec<String>,
) -> Result<Option<CacheConfig>, ConfigError> {
    use secrecy::ExposeSecret;
    let Some(url) = &args.cache else {
        for (flag, set) in [
            ("--cache-key-file", args.cache_key_file.is_some()),
            ("--cache-password-file", args.cache_password_file.is_some()),
            ("--cache-ca", args.cache_ca.is_some()),
            ("--cache-client-cert", args.cache_client_cert.is_some()),
        ] {
            if set {
                return Err(err(flag, "only makes sense with --cache"));
            }
        }
        return Ok(None);
    };
    let shown = crate::token::cache::redacted_url(url.expose_secret());
    match url.expose_secret().split_once("://").map(|(s, _)| s) {
        Some("redis") | Some("rediss") => {}
        _ => {
            return Err(err(
                "--cache",
                format!("{shown} must be a redis:// or rediss:// URL"),
            ));
        }
    }
    if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.expose_secret()) {
        return Err(err(
            "--cache",
            format!("{shown} is not a valid Redis URL: {e}"),
        ));
    }
    let key_file = args.cache_key_file.as_ref().ok_or_else(|| {
        err(
            "--cache-key-file",
            "is required with --cache: cached tokens are always encrypted",
        )
    })?;
    readable_file("--cache-key-file", key_file)?;
    let key = CacheKey::from_file(key_file).map_err(|e| err("--cache-key-file", e))?;
    if let Some(w) = permissive_mode(key_file) {
        warnings.push(format!("--cache-key-file {}: {w}", key_file.display()));
    }
    let password = match &args.cache_password_file {
        Some(p) => Some(read_secret("--cache-password-file", p, warnings)?),
        None => None,
    };
    let tls = url.expose_secret().starts_with("rediss://");
    if !tls && (args.cache_ca.is_some() || args.cache_client_cert.is_some()) {
        return Err(err(
            "--cache-ca",
            "TLS settings need a rediss:// --cache URL",
        ));
    }
    for (flag, path) in [
        ("--cache-ca", &args.cache_ca),
        ("--cache-client-cert", &args.cache_client_cert),
        ("--cache-client-key", &args.cache_client_key),
    ] {
        if let Some(p) = path {
            readable_file(flag, p)?;
        }
    }
    positive("--cache-timeout", args.cache_timeout)?;
    Ok(Some(CacheConfig {
        url: url.clone(),
        key: Arc::new(key),
        ca: args.cache_ca.clone(),
        client_identity: args
            .cache_client_cert
            .clone()
            .zip(args.cache_client_key.clone()),
        password,
        op_timeout: args.cache_timeout,
    }))
}
