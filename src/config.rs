//! Validated configuration: the flags after every check that can be made before start.
//!
//! Owns: provider presets (data, one table), URL and value checks, reading the client
//! secret, and the one-line errors (naming the flag) that make the binary exit with 2.
//! `Config::from_args` reads files but never the process environment: the caller passes the
//! secret taken from the environment, so tests need no `set_var`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use rustls_pki_types::CertificateDer;
use secrecy::SecretString;

use crate::cli::RunArgs;
use crate::client::ClientOptions;
use crate::provider::{self, ApiHeader, GrantTypeIn, Preset};
use crate::proxy::ApiExtras;
use crate::proxy::ProxyOptions;
use crate::server::ServerOptions;
use crate::telemetry::LogFormat;
use crate::tls::{Identity, TlsError};
use crate::token::RefreshPolicy;
use crate::token::cache::{CacheConfig, CacheKey};
use crate::token::endpoint::{ClientAuth, TokenRequest};

/// A setting that cannot be used, naming the flag.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct ConfigError {
    /// The flag (e.g. `--token-url`).
    pub flag: &'static str,
    /// What is wrong, including the offending value or file when it is not secret.
    pub reason: String,
}

fn err(flag: &'static str, reason: impl Into<String>) -> ConfigError {
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

fn identity_source(
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
        let api_extras = api_extras(args, preset, &client_id, &mut warnings)?;

        let identity = identity_source(args, &secrets, &mut warnings)?;
        if let Some(ca) = &args.ca {
            readable_file("--ca", ca)?;
        }

        let cache = cache_config(args, &mut warnings)?;

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
            log_format: args.log.log_format,
            log_level: args.log.log_level.clone(),
            warnings,
        })
    }
}

/// What the preset adds to every API call: a developer-key query parameter, a correlation id,
/// a client-id header.
fn api_extras(
    args: &RunArgs,
    preset: &Preset,
    client_id: &str,
    warnings: &mut Vec<String>,
) -> Result<ApiExtras, ConfigError> {
    let mut extras = ApiExtras::default();
    match (preset.developer_key_param, &args.developer_key_file) {
        (Some(param), Some(file)) => {
            let key = read_secret("--developer-key-file", file, warnings)?;
            extras.query = Some((param.to_owned(), key));
        }
        (Some(param), None) => {
            return Err(err(
                "--developer-key-file",
                format!(
                    "is required with --provider {}: its API wants `{param}=<developer application key>` on every call",
                    preset.name
                ),
            ));
        }
        (None, Some(_)) => {
            return Err(err(
                "--developer-key-file",
                format!("--provider {} does not use a developer key", preset.name),
            ));
        }
        (None, None) => {}
    }
    for h in preset.api_headers {
        match *h {
            ApiHeader::CorrelationId(name) => {
                extras.correlation_id = Some(header_name(name));
            }
            ApiHeader::ClientId(name) => {
                let value = http::HeaderValue::try_from(client_id)
                    .map_err(|_| err("--client-id", "is not a valid header value"))?;
                extras.headers.push((header_name(name), value));
            }
        }
    }
    Ok(extras)
}

/// A preset's header name, written as the PSP documents it (`x-correlationID`); `from_bytes`
/// lower-cases it, as HTTP/2 requires (HTTP/1 names are case-insensitive on the wire).
fn header_name(name: &'static str) -> http::HeaderName {
    http::HeaderName::from_bytes(name.as_bytes()).expect("preset header names are valid tokens")
}

fn cache_config(
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

fn positive(flag: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(err(flag, "must be greater than zero"));
    }
    Ok(())
}

fn https_url(flag: &'static str, value: Option<&str>, provider: &str) -> Result<Uri, ConfigError> {
    let value =
        value.ok_or_else(|| err(flag, format!("is required with --provider {provider}")))?;
    let uri: Uri = value
        .parse()
        .map_err(|e| err(flag, format!("{value:?} is not a valid URL: {e}")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") => {
            return Err(err(
                flag,
                format!("{value:?} uses http://; credentials and tokens only travel over https://"),
            ));
        }
        _ => {
            return Err(err(
                flag,
                format!("{value:?} must be an absolute https:// URL"),
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(err(flag, format!("{value:?} has no host")));
    }
    Ok(uri)
}

fn readable_file(flag: &'static str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| err(flag, format!("{}: cannot read: {e}", path.display()))),
        Ok(_) => Err(err(flag, format!("{}: not a regular file", path.display()))),
        Err(e) => Err(err(flag, format!("{}: {e}", path.display()))),
    }
}

#[cfg(unix)]
fn permissive_mode(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "is readable by every user (mode {:o}); chmod 600 it",
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
fn permissive_mode(_: &Path) -> Option<String> {
    None
}

fn read_secret(
    flag: &'static str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<SecretString, ConfigError> {
    readable_file(flag, path)?;
    let secret = read_non_empty_secret(path).map_err(|e| err(flag, e))?;
    if let Some(w) = permissive_mode(path) {
        warnings.push(format!("{flag} {}: {w}", path.display()));
    }
    Ok(secret)
}

/// Read a secret file. Secret files usually end with a newline (`echo`, `kubectl create
/// secret --from-file`), which is not part of the secret.
fn read_secret_file(path: &Path) -> std::io::Result<SecretString> {
    let text = std::fs::read_to_string(path)?;
    Ok(SecretString::from(
        text.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

/// [`read_secret_file`], refusing an empty secret; the error names the file.
fn read_non_empty_secret(path: &Path) -> Result<SecretString, String> {
    use secrecy::ExposeSecret;
    let secret =
        read_secret_file(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if secret.expose_secret().is_empty() {
        return Err(format!("{}: file is empty", path.display()));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use secrecy::ExposeSecret;

    struct Files {
        dir: PathBuf,
    }

    impl Files {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("pap-config-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["cert.pem", "key.pem"] {
                std::fs::write(dir.join(f), "x").unwrap();
            }
            std::fs::write(dir.join("secret"), "s3cret\n").unwrap();
            Files { dir }
        }
        fn p(&self, f: &str) -> String {
            self.dir.join(f).display().to_string()
        }
        fn args(&self, extra: &[&str]) -> RunArgs {
            let (c, k, s) = (self.p("cert.pem"), self.p("key.pem"), self.p("secret"));
            let mut v = vec![
                "x",
                "--client-id",
                "id",
                "--cert",
                &c,
                "--key",
                &k,
                "--client-secret-file",
                &s,
            ];
            v.extend_from_slice(extra);
            RunArgs::try_parse_from(v).unwrap()
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn pagstar_defaults_and_secret_file_trimmed() {
        let f = Files::new("ok");
        let c = Config::from_args(&f.args(&[]), SecretEnv::default()).unwrap();
        assert_eq!(c.upstream, "https://api.pix.pagstar.com");
        assert_eq!(c.token.url, "https://api.pix.pagstar.com/oauth/token");
        assert_eq!(c.token.client_secret.unwrap().expose_secret(), "s3cret");
        assert_eq!(c.token.auth, ClientAuth::Post);
    }

    #[test]
    fn bad_inputs_name_their_flag() {
        let f = Files::new("bad");
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["--token-url", "http://psp/oauth"],
                "--token-url",
                "http://",
            ),
            (&["--upstream", "http://psp"], "--upstream", "http://"),
            (
                &["--upstream", "not a url"],
                "--upstream",
                "not a valid URL",
            ),
            (&["--listen", "0.0.0.0:8080"], "--listen", "loopback"),
            (
                &["--ca", "/nonexistent/ca.pem"],
                "--ca",
                "/nonexistent/ca.pem",
            ),
            (&["--provider", "nubank"], "--provider", "unknown provider"),
            (&["--provider", "custom"], "--upstream", "required"),
            (&["--refresh-ratio", "1.5"], "--refresh-ratio", "outside"),
        ];
        for (extra, flag, needle) in cases {
            let e = Config::from_args(&f.args(extra), SecretEnv::default()).unwrap_err();
            assert_eq!(e.flag, *flag, "{extra:?}: {e}");
            assert!(e.to_string().contains(needle), "{extra:?}: {e}");
        }
        let missing = RunArgs::try_parse_from([
            "x",
            "--client-id",
            "id",
            "--cert",
            "/nope/c.pem",
            "--key",
            "/nope/k.pem",
        ])
        .unwrap();
        let e = Config::from_args(
            &missing,
            SecretEnv {
                client_secret: Some(SecretString::from("s")),
                ..SecretEnv::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.flag, "--cert");
        let no_secret = RunArgs::try_parse_from([
            "x",
            "--client-id",
            "id",
            "--cert",
            &f.p("cert.pem"),
            "--key",
            &f.p("key.pem"),
        ])
        .unwrap();
        let e = Config::from_args(&no_secret, SecretEnv::default()).unwrap_err();
        assert_eq!(e.flag, "--client-secret-file");
        let none_auth = RunArgs::try_parse_from([
            "x",
            "--client-id",
            "id",
            "--cert",
            &f.p("cert.pem"),
            "--key",
            &f.p("key.pem"),
            "--client-auth",
            "none",
        ])
        .unwrap();
        assert!(Config::from_args(&none_auth, SecretEnv::default()).is_ok());
    }

    #[test]
    fn non_loopback_needs_the_explicit_flag() {
        let f = Files::new("nl");
        assert!(
            Config::from_args(
                &f.args(&["--listen", "0.0.0.0:8080", "--allow-non-loopback"]),
                SecretEnv::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn debug_of_config_hides_the_secret() {
        let f = Files::new("dbg");
        let c = Config::from_args(&f.args(&[]), SecretEnv::default()).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
