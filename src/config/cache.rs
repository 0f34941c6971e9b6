//! Checks on the shared-cache flags (`--cache*`), producing the token cache's settings.
//!
//! Bad combinations of `--cache-mode` and the other flags are refused here, one line
//! naming the flag (exit 2).

use std::sync::Arc;

use super::files::{permissive_mode, positive, read_secret, readable_file};
use super::{ConfigError, err};
use crate::cli::{CacheModeArg, DataTlsArg, RunArgs};
use crate::token::cache::{CacheConfig, CacheKey, CacheMode};

pub(super) fn cache_config(
    args: &RunArgs,
    warnings: &mut Vec<String>,
) -> Result<Option<CacheConfig>, ConfigError> {
    use secrecy::ExposeSecret;
    let mode = match args.shared_cache.cache_mode {
        CacheModeArg::Standalone => CacheMode::Standalone,
        CacheModeArg::Cluster => CacheMode::Cluster,
        CacheModeArg::Sentinel => CacheMode::Sentinel,
    };
    if args.shared_cache.cache.is_empty() {
        for (flag, set) in [
            (
                "--cache-key-file",
                args.shared_cache.cache_key_file.is_some(),
            ),
            (
                "--cache-password-file",
                args.shared_cache.cache_password_file.is_some(),
            ),
            ("--cache-ca", args.shared_cache.cache_ca.is_some()),
            (
                "--cache-client-cert",
                args.shared_cache.cache_client_cert.is_some(),
            ),
            ("--cache-mode", mode != CacheMode::Standalone),
            (
                "--cache-username",
                args.shared_cache.cache_username.is_some(),
            ),
            (
                "--cache-key-prefix",
                args.shared_cache.cache_key_prefix.is_some(),
            ),
            (
                "--cache-sentinel-master",
                args.shared_cache.cache_sentinel_master.is_some(),
            ),
            (
                "--cache-data-tls",
                args.shared_cache.cache_data_tls != DataTlsArg::Same,
            ),
        ] {
            if set {
                return Err(err(flag, "only makes sense with --cache"));
            }
        }
        return Ok(None);
    }
    let mut schemes = Vec::new();
    for url in &args.shared_cache.cache {
        let shown = crate::token::cache::redacted_url(url.expose_secret());
        match url.expose_secret().split_once("://").map(|(s, _)| s) {
            Some(s @ ("redis" | "rediss")) => schemes.push(s),
            _ => {
                return Err(err(
                    "--cache",
                    format!("{shown} must be a redis:// or rediss:// URL"),
                ));
            }
        }
        match redis::IntoConnectionInfo::into_connection_info(url.expose_secret()) {
            Err(e) => {
                return Err(err(
                    "--cache",
                    format!("{shown} is not a valid Redis URL: {e}"),
                ));
            }
            Ok(info) if mode == CacheMode::Cluster && info.redis_settings().db() != 0 => {
                return Err(err(
                    "--cache",
                    format!("{shown}: a cluster has only database 0"),
                ));
            }
            Ok(_) => {}
        }
    }
    if schemes.iter().any(|s| *s != schemes[0]) {
        return Err(err(
            "--cache",
            "mixes redis:// and rediss:// URLs: every node is reached the same way",
        ));
    }
    if mode == CacheMode::Standalone && args.shared_cache.cache.len() > 1 {
        return Err(err(
            "--cache",
            format!(
                "is given {} URLs; standalone mode takes one (several: --cache-mode cluster or sentinel)",
                args.shared_cache.cache.len()
            ),
        ));
    }
    match (mode, &args.shared_cache.cache_sentinel_master) {
        (CacheMode::Sentinel, None) => {
            return Err(err(
                "--cache-sentinel-master",
                "is required with --cache-mode sentinel: the name the sentinels monitor",
            ));
        }
        (CacheMode::Sentinel, Some(name)) if name.trim().is_empty() => {
            return Err(err("--cache-sentinel-master", "must not be empty"));
        }
        (CacheMode::Sentinel, _) => {}
        (_, _) => {
            for (flag, set) in [
                (
                    "--cache-sentinel-master",
                    args.shared_cache.cache_sentinel_master.is_some(),
                ),
                (
                    "--cache-sentinel-username",
                    args.shared_cache.cache_sentinel_username.is_some(),
                ),
                (
                    "--cache-sentinel-password-file",
                    args.shared_cache.cache_sentinel_password_file.is_some(),
                ),
                (
                    "--cache-data-tls",
                    args.shared_cache.cache_data_tls != DataTlsArg::Same,
                ),
            ] {
                if set {
                    return Err(err(flag, "only makes sense with --cache-mode sentinel"));
                }
            }
        }
    }
    let key_prefix = args
        .shared_cache
        .cache_key_prefix
        .clone()
        .unwrap_or_default();
    if key_prefix.contains(['{', '}']) {
        return Err(err(
            "--cache-key-prefix",
            "must not contain { or }: the hash tag that keeps a token's keys in one cluster slot is the sidecar's",
        ));
    }
    if key_prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(err(
            "--cache-key-prefix",
            "must not contain spaces or control characters",
        ));
    }
    if args
        .shared_cache
        .cache_username
        .as_deref()
        .is_some_and(|u| u.trim().is_empty())
    {
        return Err(err("--cache-username", "must not be empty"));
    }
    let key_file = args.shared_cache.cache_key_file.as_ref().ok_or_else(|| {
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
    let password = match &args.shared_cache.cache_password_file {
        Some(p) => Some(read_secret("--cache-password-file", p, warnings)?),
        None => None,
    };
    let sentinel_password = match &args.shared_cache.cache_sentinel_password_file {
        Some(p) => Some(read_secret("--cache-sentinel-password-file", p, warnings)?),
        None => None,
    };
    let data_tls = match args.shared_cache.cache_data_tls {
        DataTlsArg::Same => None,
        DataTlsArg::On => Some(true),
        DataTlsArg::Off => Some(false),
    };
    let tls = schemes[0] == "rediss" || data_tls == Some(true);
    if !tls
        && (args.shared_cache.cache_ca.is_some() || args.shared_cache.cache_client_cert.is_some())
    {
        return Err(err(
            "--cache-ca",
            "TLS settings need a rediss:// --cache URL (or --cache-data-tls on)",
        ));
    }
    for (flag, path) in [
        ("--cache-ca", &args.shared_cache.cache_ca),
        ("--cache-client-cert", &args.shared_cache.cache_client_cert),
        ("--cache-client-key", &args.shared_cache.cache_client_key),
    ] {
        if let Some(p) = path {
            readable_file(flag, p)?;
        }
    }
    positive("--cache-timeout", args.shared_cache.cache_timeout)?;
    Ok(Some(CacheConfig {
        mode,
        urls: args.shared_cache.cache.clone(),
        key: Arc::new(key),
        ca: args.shared_cache.cache_ca.clone(),
        client_identity: args
            .shared_cache
            .cache_client_cert
            .clone()
            .zip(args.shared_cache.cache_client_key.clone()),
        username: args.shared_cache.cache_username.clone(),
        password,
        key_prefix,
        sentinel_master: args.shared_cache.cache_sentinel_master.clone(),
        sentinel_username: args.shared_cache.cache_sentinel_username.clone(),
        sentinel_password,
        data_tls,
        op_timeout: args.shared_cache.cache_timeout,
    }))
}
