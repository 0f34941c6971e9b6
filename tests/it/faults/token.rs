//! Hostile token responses that tests/it/token.rs does not already cover (non-ASCII and
//! invisible characters, the 64 KiB bound exactly, JSON of the wrong shape, a form body):
//! after a first good token, each is counted as a failed fetch in
//! `token_fetch_total{result="failure"}` and the last good token keeps being injected.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use pix_auth_proxy::sandbox::TokenMode;

use super::counter;
use crate::support::*;

fn raw(content_type: &'static str, body: impl Into<Bytes>) -> TokenMode {
    TokenMode::Raw {
        status: StatusCode::OK,
        content_type,
        body: body.into(),
    }
}

/// A JSON token response padded to exactly `len` bytes.
fn padded(len: usize) -> Bytes {
    let head = r#"{"access_token":"big64-tok","expires_in":300,"pad":""#;
    let tail = r#""}"#;
    let pad = "p".repeat(len - head.len() - tail.len());
    Bytes::from(format!("{head}{pad}{tail}"))
}

#[tokio::test]
async fn more_hostile_token_responses_count_as_failures_and_keep_the_last_good_token() {
    let env = Env::new().await;
    let mut config = env.config(&["--token-timeout", "2s"]);
    config.refresh.forced_min_interval = Duration::ZERO;
    config.proxy.token_wait = Duration::from_millis(500);
    let sidecar = Running::start(config).await;
    sidecar.ready().await;
    let good = format!("Bearer {}", env.psp.issued_tokens()[0]);
    let json = "application/json";
    let cases: Vec<(&str, TokenMode)> = vec![
        (
            "non-ASCII token",
            raw(
                json,
                r#"{"access_token":"tök-ñ-nonascii","expires_in":300}"#,
            ),
        ),
        (
            "space in the token",
            raw(json, r#"{"access_token":"spa ce-tok","expires_in":300}"#),
        ),
        (
            "tab in the token",
            raw(
                json,
                "{\"access_token\":\"tab\\tgap-tok\",\"expires_in\":300}",
            ),
        ),
        (
            "DEL in the token",
            raw(
                json,
                "{\"access_token\":\"del\\u007fchar-tok\",\"expires_in\":300}",
            ),
        ),
        (
            "NUL in the token",
            raw(
                json,
                "{\"access_token\":\"nul\\u0000byte-tok\",\"expires_in\":300}",
            ),
        ),
        ("one byte over 64 KiB", raw(json, padded(64 * 1024 + 1))),
        (
            "token is null",
            raw(json, r#"{"access_token":null,"expires_in":300}"#),
        ),
        (
            "token is a number",
            raw(json, r#"{"access_token":12345,"expires_in":300}"#),
        ),
        (
            "JSON array",
            raw(json, r#"[{"access_token":"arr-tok","expires_in":300}]"#),
        ),
        (
            "form body, not JSON",
            raw(
                "application/x-www-form-urlencoded",
                "access_token=form-tok&expires_in=300&token_type=Bearer",
            ),
        ),
        (
            "expires_in a 30-digit string",
            raw(
                json,
                r#"{"access_token":"digits-tok","expires_in":"999999999999999999999999999999"}"#,
            ),
        ),
        ("empty body", raw(json, "")),
    ];
    let hostile = [
        "nonascii",
        "spa ce",
        "gap-tok",
        "char-tok",
        "byte-tok",
        "big64",
        "arr-tok",
        "form-tok",
        "digits-tok",
    ];
    let failures = "pix_auth_proxy_token_fetch_total{result=\"failure\"";
    for (name, mode) in cases {
        env.psp.set_mode(mode);
        let before = counter(&sidecar.metrics, failures);
        let fetches = env.psp.token_requests();
        // A 401 from the PSP makes the sidecar ask the (now hostile) endpoint for a token.
        env.psp.reject_next_api(1);
        assert_eq!(get(&sidecar.url("/cob/ht")).await.status, 401, "{name}");
        assert!(
            env.psp.token_requests() > fetches,
            "{name}: no fetch attempted"
        );
        assert!(
            eventually(Duration::from_secs(3), || counter(
                &sidecar.metrics,
                failures
            ) > before)
            .await,
            "{name}: not counted as a failed fetch"
        );
        let got = get(&sidecar.url("/cob/ht")).await;
        assert_eq!(got.status, 200, "{name}");
        assert_eq!(
            got.upstream_authorization(),
            good,
            "{name}: the last good token"
        );
    }
    assert_eq!(sidecar.cell().current().unwrap().version(), 1);
    let logs = crate::support::logs::captured();
    for t in hostile {
        assert!(!logs.contains(t), "hostile token {t:?} reached the logs");
    }
    env.assert_logs_clean();
}
