//! Identity rotation the Kubernetes way (a new directory and an atomic `..data` symlink
//! swap), under load, and a broken rotation that must not hurt.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use pix_auth_proxy::sandbox::Leaf;
use tokio::time::Instant;

use crate::support::*;

/// `dir/..<version>/{cert.pem,key.pem}` and `dir/..data -> ..<version>`, swapped atomically
/// like the kubelet does for Secret volumes.
pub(crate) fn publish(dir: &Path, version: &str, cert_pem: &str, key_pem: &str) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("cert.pem"), cert_pem).unwrap();
    std::fs::write(data.join("key.pem"), key_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["cert.pem", "key.pem"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

/// A sidecar reading its identity from `dir` (first published as `version`), polling it
/// every 100 ms; ready.
pub(crate) async fn sidecar_on_identity_dir(env: &Env, dir: &Path, version: &str) -> Running {
    publish(dir, version, &env.client.cert_pem, &env.client.key_pem);
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let sidecar = env
        .sidecar(&["--cert", &cert, "--key", &key, "--reload-interval", "100ms"])
        .await;
    sidecar.ready().await;
    sidecar
}

fn sha(leaf: &Leaf) -> String {
    pix_auth_proxy::telemetry::hex(&pix_auth_proxy::tls::sha256(leaf.cert_der.as_ref()))
}

/// A client loop until `stop`; counts failures.
fn spawn_loop(
    url: String,
    failed: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    until: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = http_client();
        while Instant::now() < until {
            let got = send(&client, Request::get(url.as_str()).body(empty()).unwrap()).await;
            if got.status == 200 {
                ok.fetch_add(1, Ordering::SeqCst);
            } else {
                failed.fetch_add(1, Ordering::SeqCst);
                eprintln!(
                    "failed: {} {}",
                    got.status,
                    String::from_utf8_lossy(&got.body)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

fn metric_line(text: &str, prefix: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn rotating_the_identity_under_load_drops_nothing_and_refetches_the_token_with_the_new_certificate()
 {
    let env = Env::new().await;
    let dir = env.path("identity");
    std::fs::create_dir_all(&dir).unwrap();
    let sidecar = sidecar_on_identity_dir(&env, &dir, "2026_11_01").await;
    let old_sha = env.client_cert_sha256();
    assert_eq!(
        get(&sidecar.url("/cob/a")).await.json()["client_cert_sha256"],
        old_sha
    );

    let (failed, ok) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let until = Instant::now() + Duration::from_secs(3);
    let loops: Vec<_> = (0..4)
        .map(|i| {
            spawn_loop(
                sidecar.url(&format!("/cob/l{i}")),
                failed.clone(),
                ok.clone(),
                until,
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;

    // A renewed certificate with a new key, from the same CA.
    let rotated = env.pki.client("pix-client-2027").unwrap();
    publish(&dir, "2026_11_29", &rotated.cert_pem, &rotated.key_pem);
    for l in loops {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "{} ok",
        ok.load(Ordering::SeqCst)
    );
    assert!(ok.load(Ordering::SeqCst) > 100);

    let got = get(&sidecar.url("/cob/after")).await;
    assert_eq!(
        got.json()["client_cert_sha256"],
        sha(&rotated),
        "the PSP sees the new certificate"
    );
    let certs = env.psp.token_client_certs();
    assert_eq!(certs.len(), 2, "one token per identity");
    assert_eq!(certs[0], old_sha);
    assert_eq!(
        certs[1],
        sha(&rotated),
        "the token was fetched with the new certificate"
    );
    assert_eq!(sidecar.current.load().number, 2);
    let text =
        String::from_utf8_lossy(&get(&sidecar.admin_url("/metrics")).await.body).into_owned();
    assert_eq!(
        metric_line(&text, "pix_auth_proxy_tls_reload_total{result=\"success\"}"),
        "pix_auth_proxy_tls_reload_total{result=\"success\"} 1"
    );
    env.assert_logs_clean();
}

#[tokio::test]
async fn a_broken_new_identity_keeps_the_old_one_serving_and_is_reported_then_a_fixed_one_loads() {
    let env = Env::new().await;
    let dir = env.path("identity");
    std::fs::create_dir_all(&dir).unwrap();
    let sidecar = sidecar_on_identity_dir(&env, &dir, "v1").await;

    // New certificate, but the key of another one.
    let new = env.pki.client("new").unwrap();
    let other = env.pki.client("other").unwrap();
    publish(&dir, "v2", &new.cert_pem, &other.key_pem);
    // Logs are shared by every test of this process: look for this test's own line.
    let dir_text = dir.display().to_string();
    let reported = || {
        crate::support::logs::captured().lines().any(|l| {
            l.contains("reload_failed") && l.contains("does not match") && l.contains(&dir_text)
        })
    };
    assert!(
        eventually(Duration::from_secs(5), reported).await,
        "the failure is reported with its reason"
    );
    let got = get(&sidecar.url("/cob/still")).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.json()["client_cert_sha256"],
        env.client_cert_sha256(),
        "the old identity still serves"
    );
    assert_eq!(sidecar.current.load().number, 1);
    let text =
        String::from_utf8_lossy(&get(&sidecar.admin_url("/metrics")).await.body).into_owned();
    assert!(
        metric_line(&text, "pix_auth_proxy_tls_reload_total{result=\"failure\"}").ends_with(" 1"),
        "{text}"
    );
    assert_eq!(get(&sidecar.admin_url("/readyz")).await.status, 200);

    // The next change is tried again.
    publish(&dir, "v3", &new.cert_pem, &new.key_pem);
    assert!(
        eventually(Duration::from_secs(5), || sidecar.current.load().number
            == 2)
        .await
    );
    assert_eq!(
        get(&sidecar.url("/cob/fixed")).await.json()["client_cert_sha256"],
        sha(&new)
    );
}

#[tokio::test]
async fn a_forced_reload_builds_a_new_generation_with_a_fresh_token() {
    let env = Env::new().await;
    let sidecar = env.sidecar(&[]).await;
    sidecar.ready().await;
    assert_eq!(env.psp.token_requests(), 1);
    // What SIGHUP does.
    sidecar.reload.notify_one();
    assert!(
        eventually(Duration::from_secs(5), || sidecar.current.load().number
            == 2)
        .await
    );
    assert_eq!(env.psp.token_requests(), 2);
    assert_eq!(get(&sidecar.url("/cob/x")).await.status, 200);
}
