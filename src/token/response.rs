//! Validation of the token endpoint's response: status, JSON, `access_token` characters,
//! `token_type`, and the lifetime (`expires_in` as number or numeric string, else the JWT
//! `exp`, else a short default), clamped to sane bounds.
//!
//! Owns: turning the body into a lifetime-checked access token or a [`TokenError`] that says
//! why not. No error text ever quotes the body (it may hold the token) or the client secret
//! (a gateway may echo it back): the secret is scrubbed from whatever the PSP's own `error`
//! fields say.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::endpoint::TokenError;

/// Largest token response body we read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Shortest lifetime accepted from the PSP.
pub const MIN_LIFETIME: Duration = Duration::from_secs(1);
/// Longest lifetime accepted; anything above is treated as a broken response.
pub const MAX_ACCEPTED_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);
/// Longest lifetime we act on: a longer token is still renewed at least this often.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Lifetime assumed when the response has no `expires_in` and the token is not a JWT.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct RawResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Validate a token endpoint response. `now` is wall-clock time, used only for a JWT `exp`.
/// `secret` is scrubbed from any error text the PSP echoes back.
pub fn parse_response(
    status: StatusCode,
    body: &[u8],
    now: SystemTime,
    secret: Option<&SecretString>,
) -> Result<(SecretString, Duration, Option<String>), TokenError> {
    if status != StatusCode::OK && status != StatusCode::CREATED {
        let (error, description) = match serde_json::from_slice::<RawResponse>(body) {
            Ok(raw) => (
                raw.error.map(|e| scrub(&e, secret)),
                raw.error_description.map(|d| scrub(&d, secret)),
            ),
            Err(_) => (None, None),
        };
        return Err(TokenError::Status {
            status,
            error,
            description,
        });
    }
    let raw: RawResponse =
        serde_json::from_slice(body).map_err(|e| TokenError::NotJson(json_error(&e)))?;
    let token = raw.access_token.unwrap_or_default();
    if token.is_empty() {
        return Err(TokenError::MissingToken);
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::InvalidToken);
    }
    if let Some(tt) = &raw.token_type {
        if !tt.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::TokenType(truncate(&scrub(tt, secret), 32)));
        }
    }
    let lifetime = match raw.expires_in {
        Some(v) => expires_in(&v, secret)?,
        None => match jwt_lifetime(&token, now) {
            Some(d) => d?,
            None => {
                tracing::warn!(
                    event = "token_lifetime_unknown",
                    assumed_secs = DEFAULT_LIFETIME.as_secs(),
                    "token response has no expires_in and the token is not a JWT; assuming a short lifetime"
                );
                DEFAULT_LIFETIME
            }
        },
    };
    Ok((
        SecretString::from(token),
        lifetime.min(MAX_LIFETIME),
        raw.scope,
    ))
}

fn check_bounds(secs: f64) -> Result<Duration, TokenError> {
    if !secs.is_finite() || secs < MIN_LIFETIME.as_secs_f64() {
        return Err(TokenError::ExpiresIn(format!(
            "{secs} is below the minimum of {}s",
            MIN_LIFETIME.as_secs()
        )));
    }
    if secs > MAX_ACCEPTED_LIFETIME.as_secs_f64() {
        return Err(TokenError::ExpiresIn(format!(
            "{secs} is above the maximum of {}s",
            MAX_ACCEPTED_LIFETIME.as_secs()
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn expires_in(
    v: &serde_json::Value,
    secret: Option<&SecretString>,
) -> Result<Duration, TokenError> {
    let secs = match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match secs {
        Some(s) => check_bounds(s),
        None => Err(TokenError::ExpiresIn(format!(
            "{} is not a number",
            truncate(&scrub(&v.to_string(), secret), 32)
        ))),
    }
}

/// If `token` is a JWT with an `exp` claim, its remaining lifetime.
fn jwt_lifetime(token: &str, now: SystemTime) -> Option<Result<Duration, TokenError>> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Some(check_bounds(exp - now))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// `text` with the secret replaced, then cut to 256 characters (in this order, so that a
/// secret straddling the cut does not leave its first characters behind).
fn scrub(text: &str, secret: Option<&SecretString>) -> String {
    match secret.map(|s| s.expose_secret()) {
        Some(s) if !s.is_empty() && text.contains(s) => {
            truncate(&text.replace(s, "<redacted>"), 256)
        }
        _ => truncate(text, 256),
    }
}

/// What is wrong with a body that is not the expected JSON, without quoting it: serde_json's
/// own message repeats the string it choked on, which may be the token or the echoed secret.
fn json_error(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "not the expected object",
        serde_json::error::Category::Eof => "truncated",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Result<(SecretString, Duration, Option<String>), TokenError> {
        parse_response(StatusCode::OK, body.as_bytes(), SystemTime::now(), None)
    }

    #[test]
    fn keycloak_response_is_accepted() {
        let (t, life, scope) = ok(r#"{"access_token":"eyJ.a.b","expires_in":300,"refresh_expires_in":0,"token_type":"Bearer","not-before-policy":1680810673,"scope":"profile email qrcodes"}"#).unwrap();
        assert_eq!(t.expose_secret(), "eyJ.a.b");
        assert_eq!(life, Duration::from_secs(300));
        assert_eq!(scope.as_deref(), Some("profile email qrcodes"));
    }

    #[test]
    fn created_and_numeric_string_and_lowercase_bearer_are_accepted() {
        let r = parse_response(
            StatusCode::CREATED,
            br#"{"access_token":"x","expires_in":"120","token_type":"bearer"}"#,
            SystemTime::now(),
            None,
        )
        .unwrap();
        assert_eq!(r.1, Duration::from_secs(120));
    }

    #[test]
    fn hostile_responses_are_refused_with_the_right_reason() {
        let cases: &[(&str, &str)] = &[
            ("<html>oops</html>", "not_json"),
            (r#"{"access_token":"abc","expires_in":30"#, "not_json"),
            (r#"{"access_token":"","expires_in":30}"#, "invalid_token"),
            (r#"{"expires_in":30}"#, "invalid_token"),
            (
                "{\"access_token\":\"abc\\r\\nX-Evil: 1\",\"expires_in\":30}",
                "invalid_token",
            ),
            (r#"{"access_token":"a b","expires_in":30}"#, "invalid_token"),
            (r#"{"access_token":"abc","expires_in":-5}"#, "expires_in"),
            (r#"{"access_token":"abc","expires_in":0}"#, "expires_in"),
            (r#"{"access_token":"abc","expires_in":1e15}"#, "expires_in"),
            (
                r#"{"access_token":"abc","expires_in":"soon"}"#,
                "expires_in",
            ),
            (r#"{"access_token":"abc","expires_in":true}"#, "expires_in"),
            (
                r#"{"access_token":"abc","expires_in":30,"token_type":"mac"}"#,
                "token_type",
            ),
        ];
        for (body, reason) in cases {
            let err = ok(body).expect_err(body);
            assert_eq!(err.reason(), *reason, "{body}: {err}");
            assert!(
                !err.to_string().contains("abc"),
                "error text leaks token: {err}"
            );
        }
    }

    #[test]
    fn not_json_and_bad_fields_never_quote_the_token_or_the_secret() {
        // fuzz/regressions/token_response/not-json-quotes-secret: serde_json's message
        // quoted the string it rejected, here a top-level string holding the secret.
        let secret = SecretString::from("s3cr3t-value");
        for body in [
            r#""tok-s3cr3t-value""#,
            r#"{"access_token":"abc","token_type":"s3cr3t-value"}"#,
            r#"{"access_token":"abc","expires_in":"s3cr3t-value"}"#,
        ] {
            let err = parse_response(
                StatusCode::OK,
                body.as_bytes(),
                SystemTime::now(),
                Some(&secret),
            )
            .unwrap_err();
            let text = err.to_string();
            assert!(!text.contains("s3cr3t"), "{body}: {text}");
            assert!(!text.contains("tok-"), "{body}: {text}");
        }
    }

    #[test]
    fn oauth_error_is_reported_and_secret_scrubbed() {
        let secret = SecretString::from("s3cr3t-value");
        let err = parse_response(
            StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid_client","error_description":"bad secret s3cr3t-value"}"#,
            SystemTime::now(),
            Some(&secret),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("invalid_client"), "{text}");
        assert!(text.contains("401"), "{text}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
        assert_eq!(err.reason(), "oauth_error");
    }

    #[test]
    fn jwt_exp_is_used_when_expires_in_is_missing() {
        let now = SystemTime::now();
        let exp = now.duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#));
        let body = format!(r#"{{"access_token":"eyJhbGciOiJSUzI1NiJ9.{payload}.sig"}}"#);
        let (_, life, _) = parse_response(StatusCode::OK, body.as_bytes(), now, None).unwrap();
        assert!(
            life <= Duration::from_secs(600) && life >= Duration::from_secs(598),
            "{life:?}"
        );
    }

    #[test]
    fn opaque_token_without_expiry_gets_the_default_and_huge_lifetimes_are_clamped() {
        let (_, life, _) = ok(r#"{"access_token":"opaque"}"#).unwrap();
        assert_eq!(life, DEFAULT_LIFETIME);
        let (_, life, _) = ok(r#"{"access_token":"x","expires_in":2592000}"#).unwrap();
        assert_eq!(life, MAX_LIFETIME);
    }
}
