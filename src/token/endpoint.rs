//! The OAuth2 client-credentials request (RFC 6749 §4.4) over mTLS, and the validation of
//! its response.
//!
//! Owns: building the token request in each supported dialect (secret in the body, HTTP
//! Basic, or client_id only; form or JSON body), reading the response with a size cap, and
//! the [`TokenError`] that says why there is no token; the body itself is checked by
//! [`super::response`]. Nothing here ever formats the client secret or the token into a
//! message.

use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

pub use super::response::{
    DEFAULT_LIFETIME, MAX_ACCEPTED_LIFETIME, MAX_LIFETIME, MAX_RESPONSE_BYTES, MIN_LIFETIME,
    parse_response,
};

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the request body (`client_secret_post`).
    Post,
    /// HTTP Basic with the form-encoded id and secret (`client_secret_basic`).
    Basic,
    /// Only `client_id` in the body; the mTLS certificate authenticates (RFC 8705).
    None,
}

/// Encoding of the token request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenEncoding {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    Form,
    /// `application/json` (some PSPs' documented variant).
    Json,
}

/// What to ask the token endpoint for, and how.
#[derive(Clone)]
pub struct TokenRequest {
    /// The token endpoint (https).
    pub url: Uri,
    /// OAuth2 client id.
    pub client_id: String,
    /// OAuth2 client secret; `None` only with [`ClientAuth::None`].
    pub client_secret: Option<SecretString>,
    /// Client authentication style.
    pub auth: ClientAuth,
    /// Body encoding.
    pub encoding: TokenEncoding,
    /// Space-separated scopes to request, if any.
    pub scope: Option<String>,
    /// Send `grant_type=client_credentials` in the URL's query instead of the body.
    pub grant_type_in_query: bool,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("auth", &self.auth)
            .field("encoding", &self.encoding)
            .field("scope", &self.scope)
            .field("grant_type_in_query", &self.grant_type_in_query)
            .finish()
    }
}

/// Why a token could not be obtained. None of the variants carries the secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No response within the token timeout.
    #[error("token endpoint did not answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be sent (DNS, TCP, TLS handshake, connection reset).
    #[error("token request failed: {}", crate::telemetry::error_chain(.0))]
    Transport(#[source] hyper_util::client::legacy::Error),
    /// The response body could not be read.
    #[error("token response body could not be read: {0}")]
    Body(String),
    /// The endpoint answered with a status other than 200/201.
    #[error("token endpoint answered {status}{}", oauth_suffix(.error, .description))]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// OAuth `error` code, if the body had one.
        error: Option<String>,
        /// OAuth `error_description`, if the body had one.
        description: Option<String>,
    },
    /// The body exceeded [`MAX_RESPONSE_BYTES`].
    #[error("token response body larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The body is not the expected JSON object.
    #[error("token response is not valid JSON: {0}")]
    NotJson(String),
    /// `access_token` missing or empty.
    #[error("token response has no access_token")]
    MissingToken,
    /// `access_token` has characters that cannot be a bearer token (CR/LF, spaces, non-ASCII).
    #[error("access_token contains a forbidden character (only visible ASCII is accepted)")]
    InvalidToken,
    /// `token_type` is neither `Bearer` nor absent.
    #[error("token_type {0:?} is not Bearer")]
    TokenType(String),
    /// `expires_in` is missing and unusable, non-numeric, or out of bounds.
    #[error("expires_in {0}")]
    ExpiresIn(String),
    /// The PSP's edge completed the handshake but answered that it refused our client
    /// certificate (nginx's 400 "The SSL certificate error", a 403 naming the certificate).
    #[error("{refusal} (token endpoint answered {status})")]
    ClientCertRefused {
        /// What the edge said, in words.
        refusal: crate::tls::refusal::Refusal,
        /// The HTTP status it answered with.
        status: StatusCode,
    },
}

fn oauth_suffix(error: &Option<String>, description: &Option<String>) -> String {
    match (error, description) {
        (Some(e), Some(d)) => format!(" (error={e:?}, error_description={d:?})"),
        (Some(e), None) => format!(" (error={e:?})"),
        _ => String::new(),
    }
}

impl TokenError {
    /// Whether the PSP refused our client certificate, during the handshake (a TLS alert)
    /// or after it (an edge's refusal page).
    pub fn refusal(&self) -> Option<crate::tls::refusal::Refusal> {
        match self {
            TokenError::ClientCertRefused { refusal, .. } => Some(*refusal),
            TokenError::Transport(e) => {
                rustls_cause(e).and_then(crate::tls::refusal::alert_refusal)
            }
            _ => None,
        }
    }

    /// A bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Timeout(_) => "timeout",
            _ if self.refusal().is_some() => "client_cert_refused",
            TokenError::ClientCertRefused { .. } => "client_cert_refused",
            TokenError::Transport(e) if is_tls(e) => "tls",
            TokenError::Transport(_) => "connect",
            TokenError::Body(_) => "body",
            TokenError::Status { error: Some(_), .. } => "oauth_error",
            TokenError::Status { .. } => "status",
            TokenError::TooLarge => "too_large",
            TokenError::NotJson(_) => "not_json",
            TokenError::MissingToken | TokenError::InvalidToken => "invalid_token",
            TokenError::TokenType(_) => "token_type",
            TokenError::ExpiresIn(_) => "expires_in",
        }
    }
}

/// The rustls error behind a client error, if the failure came from the TLS layer
/// (handshake refused, unknown CA, …).
///
/// hyper-rustls wraps tokio-rustls' `io::Error` in another `io::Error`, and `io::Error`'s
/// `source()` skips the error it wraps, so descend through `get_ref()` instead.
pub fn rustls_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    crate::telemetry::find_cause(err)
}

/// Whether a client error came from the TLS layer.
pub fn is_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    rustls_cause(err).is_some()
}

/// A token granted by the endpoint, validated.
pub struct Granted {
    /// The access token (visible ASCII, non-empty).
    pub access_token: SecretString,
    /// When the request was sent (monotonic): the lifetime counts from here.
    pub sent_at: Instant,
    /// Lifetime after clamping to [`MAX_LIFETIME`].
    pub lifetime: Duration,
    /// The scope the PSP says it granted, if it said.
    pub scope: Option<String>,
}

impl std::fmt::Debug for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Granted")
            .field("access_token", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .field("scope", &self.scope)
            .finish()
    }
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends token requests over the mTLS identity it was built with.
#[derive(Clone)]
pub struct TokenClient {
    client: HttpsClient,
    request: TokenRequest,
    timeout: Duration,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient")
            .field("request", &self.request)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TokenClient {
    /// A token client over `client` (an mTLS-configured hyper client).
    pub fn new(client: HttpsClient, request: TokenRequest, timeout: Duration) -> Self {
        Self {
            client,
            request,
            timeout,
        }
    }

    /// What this client asks for.
    pub fn request(&self) -> &TokenRequest {
        &self.request
    }

    /// Request one token. The whole exchange, body included, is bounded by the token timeout.
    pub async fn fetch(&self) -> Result<Granted, TokenError> {
        let req = build_request(&self.request);
        let sent_at = Instant::now();
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(TokenError::Transport)?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        TokenError::TooLarge
                    } else {
                        TokenError::Body(crate::telemetry::error_chain(e.as_ref()))
                    }
                })?
                .to_bytes();
            Ok::<_, TokenError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| TokenError::Timeout(self.timeout))??;
        if !status.is_success() {
            if let Some(refusal) = crate::tls::refusal::http_refusal(status, &body) {
                return Err(TokenError::ClientCertRefused { refusal, status });
            }
        }
        let secret = self.request.client_secret.as_ref();
        parse_response(status, &body, SystemTime::now(), secret).map(|(token, lifetime, scope)| {
            Granted {
                access_token: token,
                sent_at,
                lifetime,
                scope,
            }
        })
    }
}

/// Build the token request for `req`'s dialect.
pub fn build_request(req: &TokenRequest) -> Request<Full<Bytes>> {
    let secret = req.client_secret.as_ref().map(|s| s.expose_secret());
    let mut fields: Vec<(&str, &str)> = Vec::new();
    if !req.grant_type_in_query {
        fields.push(("grant_type", "client_credentials"));
    }
    match req.auth {
        ClientAuth::Post => {
            fields.push(("client_id", &req.client_id));
            if let Some(s) = secret {
                fields.push(("client_secret", s));
            }
        }
        ClientAuth::None => fields.push(("client_id", &req.client_id)),
        ClientAuth::Basic => {}
    }
    if let Some(scope) = &req.scope {
        fields.push(("scope", scope));
    }
    let (content_type, body) = match req.encoding {
        TokenEncoding::Form => (
            "application/x-www-form-urlencoded",
            serde_urlencoded::to_string(&fields).unwrap_or_default(),
        ),
        TokenEncoding::Json => {
            let map: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                .collect();
            (
                "application/json",
                serde_json::Value::Object(map).to_string(),
            )
        }
    };
    let uri = if req.grant_type_in_query {
        let sep = if req.url.query().is_some() { '&' } else { '?' };
        Uri::try_from(format!("{}{sep}grant_type=client_credentials", req.url))
            .unwrap_or_else(|_| req.url.clone())
    } else {
        req.url.clone()
    };
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT, "application/json");
    if req.auth == ClientAuth::Basic {
        // RFC 6749 §2.3.1: both parts are form-urlencoded before Base64.
        let id: String = form_urlencoded::byte_serialize(req.client_id.as_bytes()).collect();
        let pw: String = form_urlencoded::byte_serialize(secret.unwrap_or("").as_bytes()).collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{pw}"));
        let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
            .expect("base64 is a valid header value");
        value.set_sensitive(true);
        builder = builder.header(header::AUTHORIZATION, value);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .expect("token request parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: ClientAuth, encoding: TokenEncoding) -> TokenRequest {
        TokenRequest {
            url: Uri::from_static("https://psp.example/oauth/token"),
            client_id: "my id".into(),
            client_secret: Some(SecretString::from("p@ss:w")),
            auth,
            encoding,
            scope: Some("cob.read cob.write".into()),
            grant_type_in_query: false,
        }
    }

    async fn body_of(r: Request<Full<Bytes>>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn each_dialect_builds_the_right_request() {
        let r = build_request(&req(ClientAuth::Post, TokenEncoding::Form));
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
        assert!(r.headers().get(header::AUTHORIZATION).is_none());
        assert_eq!(
            body_of(r).await,
            "grant_type=client_credentials&client_id=my+id&client_secret=p%40ss%3Aw&scope=cob.read+cob.write"
        );

        let r = build_request(&req(ClientAuth::Basic, TokenEncoding::Form));
        let auth = r.headers()[header::AUTHORIZATION].clone();
        assert!(auth.is_sensitive());
        let b64 = auth
            .to_str()
            .unwrap()
            .strip_prefix("Basic ")
            .unwrap()
            .to_owned();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(decoded, b"my+id:p%40ss%3Aw");
        assert_eq!(
            body_of(r).await,
            "grant_type=client_credentials&scope=cob.read+cob.write"
        );

        let r = build_request(&req(ClientAuth::None, TokenEncoding::Json));
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_str(&body_of(r).await).unwrap();
        assert_eq!(v["client_id"], "my id");
        assert_eq!(v["grant_type"], "client_credentials");
        assert!(v.get("client_secret").is_none());
    }

    #[test]
    fn debug_of_request_hides_the_secret() {
        let dbg = format!("{:?}", req(ClientAuth::Post, TokenEncoding::Form));
        assert!(!dbg.contains("p@ss"), "{dbg}");
    }
}
