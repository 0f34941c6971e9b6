//! Validated configuration: the flags after every check that can be made before start.
//!
//! Owns: provider presets (data, one table), URL and value checks, reading the client
//! secret, and the one-line errors (naming the flag) that make the binary exit with 2.
//! `Config::from_args` reads files but never the process environment: the caller passes the
//! secret taken from the environment, so tests need no `set_var`.
//!
//! Split by concern: [`identity`] (client identity sources), `cache` (shared cache flags),
//! [`options`] (plain settings of the request path, listener and upstream client), `files`
//! (file, URL and duration checks; the secret-file reader), [`webhook`] (the inbound
//! listener). This module depends on no upper layer: `proxy`, `server` and `client`
//! re-export their option types from here.

mod cache;
mod files;
pub mod identity;
pub mod options;
#[cfg(test)]
mod tests;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use rustls_pki_types::CertificateDer;
use secrecy::SecretString;

use crate::cli::RunArgs;
use crate::provider::{self, GrantTypeIn};
use crate::telemetry::LogFormat;
use crate::token::RefreshPolicy;
use crate::token::cache::CacheConfig;
use crate::token::endpoint::{ClientAuth, TokenRequest};
pub(crate) use files::https_url;
use files::{positive, read_non_empty_secret, read_secret, readable_file};
pub use identity::{IdentitySource, PasswordSource};
pub use options::{
    ApiExtras, ClientOptions, MAX_SCHED_SLICE, MIN_SCHED_SLICE, ProxyOptions, ServerOptions,
};
pub use webhook::WebhookConfig;

/// A setting that cannot be used, naming the flag.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct ConfigError {
    /// The flag (e.g. `--token-url`).
    pub flag: &'static str,
    /// What is wrong, including the offending value or file when it is not secret.
    pub reason: String,
}

pub(crate) fn err(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

/// Secrets the binary reads from the environment (there are no flags for them).
#[derive(Debug, Default, Clone)]
pub struct SecretEnv {
    /// `PIX_AUTH_PROXY_CLIENT_SECRET`.
    pub client_secret: Option<SecretString>,
    /// `PIX_AUTH_PROXY_PKCS12_PASSWORD`.
    pub pkcs12_password: Option<SecretString>,
}

/// Everything the sidecar needs to start, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// App-facing listener address.
    pub listen: SocketAddr,
    /// Admin listener address (`/livez`, `/readyz`, `/metrics`).
    pub admin_listen: Option<SocketAddr>,
    /// After a stop signal, how long to keep serving with readiness at 503.
    pub shutdown_delay: Duration,
    /// API base URL (https).
    pub upstream: Uri,
    /// The token request (URL, credentials, dialect).
    pub token: TokenRequest,
    /// The client identity.
    pub identity: IdentitySource,
    /// Extra trust anchors file (`--ca`).
    pub ca: Option<PathBuf>,
    /// Extra trust anchors given in memory (the `demo`'s CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Renewal policy.
    pub refresh: RefreshPolicy,
    /// Connection settings towards the PSP.
    pub client: ClientOptions,
    /// Request-path settings.
    pub proxy: ProxyOptions,
    /// Listener settings.
    pub server: ServerOptions,
    /// Time allowed for a token request.
    pub token_timeout: Duration,
    /// The shared token cache, if any.
    pub cache: Option<CacheConfig>,
    /// Where the client secret is re-read from on reload (`None`: from the environment).
    pub client_secret_file: Option<PathBuf>,
    /// How often identity, CA and secret files are checked for changes.
    pub reload_interval: Duration,
    /// The inbound (webhook) listener, if `--webhook-listen` is given.
    pub webhook: Option<WebhookConfig>,
    /// The scheduler slice to ask for on the runtime's threads (`None`: the kernel's default).
    pub sched_slice: Option<Duration>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter, if given by flag.
    pub log_level: Option<String>,
    /// Non-fatal findings to log once logging is up (e.g. a world-readable secret file).
    pub warnings: Vec<String>,
}

impl Config {
    /// The client secret as the file says now (`None` when it came from the environment).
    pub fn read_client_secret(&self) -> Result<Option<SecretString>, String> {
        match &self.client_secret_file {
            None => Ok(None),
            Some(path) => read_non_empty_secret(path).map(Some),
        }
    }

    /// Every file whose change means a new identity generation.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = self.identity.files();
        files.extend(self.ca.clone());
        files.extend(self.client_secret_file.clone());
        files
    }

    /// A configuration with every default of the CLI, for callers that build it in code
    /// (the `demo`): listen address, upstream, token request and identity are given.
    pub fn with_defaults(
        listen: SocketAddr,
        upstream: Uri,
        token: TokenRequest,
        identity: IdentitySource,
    ) -> Self {
        Config {
            listen,
            admin_listen: None,
            shutdown_delay: Duration::ZERO,
            upstream,
            token,
            identity,
            ca: None,
            extra_roots: Vec::new(),
            refresh: RefreshPolicy::default(),
            client: ClientOptions::default(),
            proxy: ProxyOptions::default(),
            server: ServerOptions::default(),
            token_timeout: Duration::from_secs(10),
            cache: None,
            client_secret_file: None,
            reload_interval: Duration::from_secs(2),
            webhook: None,
            // The caller runs the runtime, and with it the threads' scheduling.
            sched_slice: None,
            log_format: LogFormat::Text,
            log_level: None,
            warnings: Vec::new(),
        }
    }

    /// Check `args`. `secrets` holds the secrets taken from the environment.
    pub fn from_args(args: &RunArgs, secrets: SecretEnv) -> Result<Self, ConfigError> {
        let env_secret = secrets.client_secret.clone();
        let mut warnings = Vec::new();
        let preset = provider::find(&args.provider).ok_or_else(|| {
            let names: Vec<_> = provider::PRESETS.iter().map(|p| p.name).collect();
            err(
                "--provider",
                format!(
                    "unknown provider {:?} (known: {}; `pix-auth-proxy providers` lists them)",
                    args.provider,
                    names.join(", ")
                ),
            )
        })?;
        let endpoints = match (preset.endpoints(args.environment), preset.production) {
            (Some(e), _) => Some(e),
            // `custom` has no endpoints in any environment: the URLs must be given.
            (None, None) => None,
            (None, Some(_)) => {
                if args.upstream.is_none() || args.token_url.is_none() {
                    return Err(err(
                        "--environment",
                        format!(
                            "{} has no sandbox preset; give --upstream and --token-url for it",
                            preset.name
                        ),
                    ));
                }
                None
            }
        };

        if !args.listen.ip().is_loopback() && !args.allow_non_loopback {
            return Err(err(
                "--listen",
                format!(
                    "{} is not a loopback address; anyone who can reach it could use your PSP credentials. Pass --allow-non-loopback if this is intended",
                    args.listen
                ),
            ));
        }

        let sched_slice = sched_slice(args.sched_slice)?;

        let upstream = https_url(
            "--upstream",
            args.upstream.as_deref().or(endpoints.map(|e| e.upstream)),
            preset.name,
        )?;
        if upstream.query().is_some() {
            return Err(err("--upstream", "must not carry a query string"));
        }
        let token_url = https_url(
            "--token-url",
            args.token_url.as_deref().or(endpoints.map(|e| e.token_url)),
            preset.name,
        )?;

        let client_id = match args.client_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => return Err(err("--client-id", "is required")),
        };
        let client_auth = args.client_auth.unwrap_or(preset.client_auth);
        let client_secret = match (&args.client_secret_file, env_secret) {
            (Some(path), _) => Some(read_secret("--client-secret-file", path, &mut warnings)?),
            (None, Some(s)) => Some(s),
            (None, None) => None,
        };
        if client_secret.is_none() && client_auth != ClientAuth::None {
            return Err(err(
                "--client-secret-file",
                format!(
                    "a client secret is required with --client-auth {} (give --client-secret-file or set {})",
                    match client_auth {
                        ClientAuth::Post => "post",
                        _ => "basic",
                    },
                    crate::cli::CLIENT_SECRET_ENV
                ),
            ));
        }
        let scope = args
            .scope
            .as_deref()
            .or(preset.default_scope)
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty());
        let api_extras = options::api_extras(args, preset, &client_id, &mut warnings)?;

        let identity = identity::identity_source(
            identity::IdentityFlags::client(args, &secrets),
            &mut warnings,
        )?;
        if let Some(ca) = &args.ca {
            readable_file("--ca", ca)?;
        }

        let cache = cache::cache_config(args, &mut warnings)?;
        let webhook = webhook::webhook_config(args, &mut warnings)?;

        if !(0.1..=0.95).contains(&args.refresh_ratio) {
            return Err(err(
                "--refresh-ratio",
                format!("{} is outside 0.1..=0.95", args.refresh_ratio),
            ));
        }
        positive("--connect-timeout", args.connect_timeout)?;
        positive("--request-timeout", args.request_timeout)?;
        positive("--token-timeout", args.token_timeout)?;
        positive("--token-wait", args.token_wait)?;
        positive("--idle-timeout", args.idle_timeout)?;
        positive("--header-read-timeout", args.header_read_timeout)?;
        positive("--reload-interval", args.reload_interval)?;
        if args.max_connections == 0 {
            return Err(err("--max-connections", "must be at least 1"));
        }
        if !(1024..=1024 * 1024).contains(&args.max_header_bytes) {
            return Err(err(
                "--max-header-bytes",
                format!("{} is outside 1024..=1048576", args.max_header_bytes),
            ));
        }

        Ok(Config {
            listen: args.listen,
            admin_listen: Some(args.admin_listen),
            shutdown_delay: args.shutdown_delay,
            upstream,
            token: TokenRequest {
                url: token_url,
                client_id,
                client_secret,
                auth: client_auth,
                encoding: args.token_encoding.unwrap_or(preset.encoding),
                scope,
                grant_type_in_query: preset.grant_type == GrantTypeIn::Query,
            },
            identity,
            ca: args.ca.clone(),
            extra_roots: Vec::new(),
            refresh: RefreshPolicy {
                ratio: args.refresh_ratio,
                expiry_margin: args.expiry_margin,
                // Long enough for a lock holder's whole token request, and for its lock to
                // expire if it died, before falling back to a local fetch.
                cache_wait: args.token_timeout * 2 + Duration::from_secs(2),
                ..RefreshPolicy::default()
            },
            client: ClientOptions {
                connect_timeout: args.connect_timeout,
                http1_only: args.upstream_http1_only || preset.http1_only,
                max_http1_connections: usize::from(args.upstream_max_connections),
                ..ClientOptions::default()
            },
            proxy: ProxyOptions {
                request_timeout: args.request_timeout,
                token_wait: args.token_wait,
                extras: api_extras,
                ..ProxyOptions::default()
            },
            server: ServerOptions {
                drain_timeout: args.shutdown_timeout,
                header_read_timeout: args.header_read_timeout,
                idle_timeout: args.idle_timeout,
                max_connections: args.max_connections,
                max_header_bytes: args.max_header_bytes,
            },
            token_timeout: args.token_timeout,
            cache,
            client_secret_file: args.client_secret_file.clone(),
            reload_interval: args.reload_interval,
            webhook,
            sched_slice,
            log_format: args.log.log_format,
            log_level: args.log.log_level.clone(),
            warnings,
        })
    }
}

/// `--sched-slice`: 0 for the kernel's default, else within the range the kernel accepts.
fn sched_slice(slice: Duration) -> Result<Option<Duration>, ConfigError> {
    if slice.is_zero() {
        return Ok(None);
    }
    if !(MIN_SCHED_SLICE..=MAX_SCHED_SLICE).contains(&slice) {
        return Err(err(
            "--sched-slice",
            format!(
                "{} is outside {}..={}, the range Linux accepts (0 keeps the kernel's default)",
                humantime::format_duration(slice),
                humantime::format_duration(MIN_SCHED_SLICE),
                humantime::format_duration(MAX_SCHED_SLICE),
            ),
        ));
    }
    Ok(Some(slice))
}
