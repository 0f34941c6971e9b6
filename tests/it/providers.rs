//! Every PSP preset's token-request dialect against a mock PSP that demands exactly that
//! dialect, and the extras each preset adds to API calls.

use std::process::Command;

use http::StatusCode;
use pix_auth_proxy::provider::{ApiHeader, GrantTypeIn, PRESETS, Preset};
use pix_auth_proxy::sandbox::PspSettings;

use crate::support::*;

fn demanding(preset: &Preset) -> PspSettings {
    PspSettings {
        auth: preset.client_auth,
        encoding: Some(preset.encoding),
        grant_type_in_query: preset.grant_type == GrantTypeIn::Query,
        require_scope: preset.default_scope.is_some(),
        // Pagstar answers 201 to a token request.
        token_status: if preset.name == "pagstar" {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        ..PspSettings::default()
    }
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && b[8] == b'-'
        && b[13] == b'-'
        && b[14] == b'4'
        && b[18] == b'-'
        && b[23] == b'-'
        && s.chars()
            .filter(|c| *c != '-')
            .all(|c| c.is_ascii_hexdigit())
}

#[tokio::test]
async fn every_preset_dialect_gets_a_token_and_its_extras_reach_the_psp() {
    for preset in PRESETS.iter().filter(|p| p.name != "custom") {
        let env = Env::with(demanding(preset)).await;
        env.write("dev-key", b"app-key+123\n");
        let base = format!("{}/psp-base", env.psp.url());
        let token_url = env.psp.token_url();
        let key = env.p("dev-key");
        let mut flags = vec![
            "--provider",
            preset.name,
            "--upstream",
            &base,
            "--token-url",
            &token_url,
        ];
        if preset.developer_key_param.is_some() {
            flags.extend(["--developer-key-file", key.as_str()]);
        }
        let sidecar = env.sidecar(&flags).await;
        let got = get(&sidecar.url("/cob/x?y=1")).await;
        assert_eq!(
            got.status,
            200,
            "{}: {}",
            preset.name,
            String::from_utf8_lossy(&got.body)
        );
        let echo = got.json();
        assert_eq!(echo["path"], "/psp-base/cob/x", "{}", preset.name);
        match preset.developer_key_param {
            Some(param) => assert_eq!(
                echo["query"],
                format!("y=1&{param}=app-key%2B123"),
                "{}",
                preset.name
            ),
            None => assert_eq!(echo["query"], "y=1", "{}", preset.name),
        }
        for h in preset.api_headers {
            match h {
                ApiHeader::CorrelationId(name) => {
                    let first = echo["headers"][name.to_ascii_lowercase()][0]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    assert!(is_uuid_v4(&first), "{}: {name} = {first:?}", preset.name);
                    let again = get(&sidecar.url("/cob/x")).await.json();
                    assert_ne!(
                        again["headers"][name.to_ascii_lowercase()][0]
                            .as_str()
                            .unwrap(),
                        first,
                        "a fresh id per request"
                    );
                }
                ApiHeader::ClientId(name) => {
                    assert_eq!(
                        echo["headers"][*name][0], env.settings.client_id,
                        "{}",
                        preset.name
                    );
                }
            }
        }
        let expected_version = if preset.http1_only {
            "HTTP/1.1"
        } else {
            "HTTP/2.0"
        };
        assert_eq!(echo["version"], expected_version, "{}", preset.name);
        assert_eq!(env.psp.token_requests(), 1, "{}", preset.name);
    }
}

#[tokio::test]
async fn a_mock_demanding_a_dialect_rejects_the_generic_one() {
    for preset in PRESETS.iter().filter(|p| {
        p.client_auth != pix_auth_proxy::token::endpoint::ClientAuth::Post
            || p.encoding != pix_auth_proxy::token::endpoint::TokenEncoding::Form
            || p.grant_type != GrantTypeIn::Body
            || p.default_scope.is_some()
    }) {
        let env = Env::with(demanding(preset)).await;
        let sidecar = env
            .sidecar(&["--provider", "custom", "--token-timeout", "500ms"])
            .await;
        let got = get(&sidecar.url("/cob/x")).await;
        assert_problem(&got, 503, "token-unavailable");
        assert!(env.psp.token_requests() >= 1, "{}", preset.name);
        assert!(
            env.psp.issued_tokens().is_empty(),
            "{}: the PSP refused the generic dialect",
            preset.name
        );
    }
}

#[tokio::test]
async fn a_narrower_granted_scope_is_warned_about_once() {
    let env = Env::with(PspSettings {
        grant_scope: Some("cob.read".into()),
        token_ttl: std::time::Duration::from_secs(2),
        ..PspSettings::default()
    })
    .await;
    let sidecar = env.sidecar(&["--scope", "cob.read cob.write"]).await;
    sidecar.ready().await;
    assert!(
        eventually(std::time::Duration::from_secs(4), || env
            .psp
            .token_requests()
            >= 3)
        .await
    );
    let logs = crate::support::logs::captured();
    assert_eq!(
        logs.matches("event=\"scope_narrower\"").count(),
        1,
        "once, not per renewal"
    );
    assert!(logs.contains("cob.write"));
}

#[test]
fn providers_output_and_the_readme_table_agree() {
    let out = Command::new(env!("CARGO_BIN_EXE_pix-auth-proxy"))
        .arg("providers")
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed = String::from_utf8(out.stdout).unwrap();
    let table: String = listed
        .lines()
        .take_while(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(table.lines().count() >= PRESETS.len() + 2);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(&table),
        "README.md's provider table differs from `pix-auth-proxy providers`:\n{table}"
    );
    for p in PRESETS {
        assert!(listed.contains(&format!("`{}`", p.name)));
    }
}
