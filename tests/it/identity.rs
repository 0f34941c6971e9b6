//! Client identities as Pix users hold them: PKCS#12 in every encryption, PEM, and the
//! errors for files that cannot work.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use pix_auth_proxy::sandbox::{MockPsp, PspSettings};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_pix-auth-proxy");

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pkcs12"
    ))
    .join(name)
}

fn fixture_cert(name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(fixture(name)).unwrap()
}

/// A mock PSP that trusts the fixtures' root CA for client certificates.
async fn psp_trusting_fixture_root(env: &Env) -> MockPsp {
    MockPsp::start_trusting(
        bind().await,
        &env.pki.server().unwrap(),
        vec![fixture_cert("root-ca.pem")],
        PspSettings::default(),
    )
    .unwrap()
}

fn p12_flags(env: &Env, psp: &MockPsp, p12: &str, password_file: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--provider",
        "custom",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &psp.url(),
        "--token-url",
        &psp.token_url(),
        "--client-id",
        "sandbox-client",
        "--client-secret-file",
        &env.p("secret"),
        "--ca",
        &env.p("ca.pem"),
    ]
    .into_iter()
    .map(String::from)
    .collect();
    v.push("--pkcs12".into());
    v.push(fixture(p12).display().to_string());
    if let Some(pw) = password_file {
        v.push("--pkcs12-password-file".into());
        v.push(pw.into());
    }
    v
}

#[tokio::test]
async fn pkcs12_identities_in_every_encryption_serve_requests_and_send_the_intermediate() {
    let env = Env::new().await;
    let psp = psp_trusting_fixture_root(&env).await;
    let leaf = fixture_cert("client.pem");
    let leaf_sha = pix_auth_proxy::telemetry::hex(&pix_auth_proxy::tls::sha256(leaf.as_ref()));
    let password = fixture("password").display().to_string();
    for (p12, pw) in [
        ("client-modern.p12", Some(password.as_str())),
        ("client-legacy-rc2.p12", Some(password.as_str())),
        ("client-legacy-3des.p12", Some(password.as_str())),
        ("client-nopass.p12", None),
    ] {
        let mut argv = vec!["pix-auth-proxy".to_string()];
        argv.extend(p12_flags(&env, &psp, p12, pw));
        let args = <pix_auth_proxy::cli::RunArgs as clap::Parser>::try_parse_from(argv).unwrap();
        let config =
            pix_auth_proxy::config::Config::from_args(&args, Default::default()).expect(p12);
        let sidecar = Running::start(config).await;
        let got = get(&sidecar.url("/cob/p12")).await;
        // The PSP trusts only the root: the handshake works only if the intermediate is sent.
        assert_eq!(
            got.status,
            200,
            "{p12}: {}",
            String::from_utf8_lossy(&got.body)
        );
        assert_eq!(got.json()["client_cert_sha256"], leaf_sha, "{p12}");
    }
    assert_eq!(psp.token_client_certs().len(), 4);
    assert!(
        psp.token_client_certs().iter().all(|c| *c == leaf_sha),
        "tokens were fetched with the p12 identity"
    );
}

fn run_to_end(args: &[String]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A PKCS#12 file written at test time with the pure-Rust writer.
fn write_p12(env: &Env, name: &str, chains: Vec<(Vec<u8>, CertificateDer<'static>)>) -> String {
    use p12_keystore::{
        Certificate, KeyStore, KeyStoreEntry, LocalKeyId, PrivateKey, PrivateKeyChain,
    };
    let mut ks = KeyStore::new();
    for (i, (key, cert)) in chains.into_iter().enumerate() {
        let chain = PrivateKeyChain::new(
            LocalKeyId(vec![i as u8 + 1; 4]),
            PrivateKey::from_der(&key).unwrap(),
            [Certificate::from_der(cert.as_ref()).unwrap()],
        );
        ks.add_entry(&format!("entry{i}"), KeyStoreEntry::PrivateKeyChain(chain));
    }
    let bytes = ks.writer("pw").write().unwrap();
    env.write(name, &bytes);
    env.write("pw", b"pw");
    env.p(name)
}

#[tokio::test]
async fn unusable_pkcs12_files_are_refused_at_start_with_one_clear_line() {
    let env = Env::new().await;
    let psp = psp_trusting_fixture_root(&env).await;
    env.write("wrong-password", b"not-the-password");
    let a = env.pki.client("a").unwrap();
    let b = env.pki.client("b").unwrap();
    let two = write_p12(
        &env,
        "two-keys.p12",
        vec![
            (a.key_pkcs8.clone(), a.cert_der.clone()),
            (b.key_pkcs8.clone(), b.cert_der.clone()),
        ],
    );
    let mismatch = write_p12(
        &env,
        "mismatch.p12",
        vec![(a.key_pkcs8.clone(), b.cert_der.clone())],
    );
    let pw = env.p("pw");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            p12_flags(
                &env,
                &psp,
                "client-modern.p12",
                Some(&env.p("wrong-password")),
            ),
            "wrong password",
        ),
        (
            p12_flags(&env, &psp, "client-modern.p12", None),
            "wrong password",
        ),
        (
            p12_flags(
                &env,
                &psp,
                "certs-only.p12",
                Some(&fixture("password").display().to_string()),
            ),
            "no private key",
        ),
        (
            {
                let mut f = p12_flags(&env, &psp, "client-modern.p12", Some(&pw));
                let i = f.iter().position(|x| x == "--pkcs12").unwrap();
                f[i + 1] = two.clone();
                f
            },
            "2 private keys",
        ),
        (
            {
                let mut f = p12_flags(&env, &psp, "client-modern.p12", Some(&pw));
                let i = f.iter().position(|x| x == "--pkcs12").unwrap();
                f[i + 1] = mismatch.clone();
                f
            },
            "matches its private key",
        ),
    ];
    for (args, needle) in cases {
        let (code, stderr) = run_to_end(&args);
        assert_eq!(code, 2, "{needle}: {stderr}");
        assert!(
            stderr.contains("--pkcs12") && stderr.contains(needle),
            "{needle}: {stderr}"
        );
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{stderr}"
        );
        assert!(
            !stderr.contains("senha-do-certificado"),
            "never print the password"
        );
    }
    // --pkcs12 and --cert together make no sense.
    let mut both = p12_flags(&env, &psp, "client-modern.p12", None);
    both.extend(["--cert".into(), env.p("cert.pem")]);
    let (code, stderr) = run_to_end(&both);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--cert"), "{stderr}");
}

#[tokio::test]
async fn pem_identities_with_each_key_format_and_a_chain_file_serve_requests() {
    let env = Env::new().await;
    let psp = psp_trusting_fixture_root(&env).await;
    let read = |f: &str| std::fs::read_to_string(fixture(f)).unwrap();
    let intermediate = read("intermediate-ca.pem");
    // Leaf first, then the intermediate: the PSP trusts only the root.
    env.write(
        "rsa-chain.pem",
        format!("{}{intermediate}", read("client.pem")).as_bytes(),
    );
    env.write(
        "ec-chain.pem",
        format!("{}{intermediate}", read("client-ec.pem")).as_bytes(),
    );
    let cases = [
        (
            "PKCS#8 RSA",
            "rsa-chain.pem",
            "client-key.pem",
            "client.pem",
            "-----BEGIN PRIVATE KEY-----",
        ),
        (
            "PKCS#1 RSA",
            "rsa-chain.pem",
            "client-key-pkcs1.pem",
            "client.pem",
            "-----BEGIN RSA PRIVATE KEY-----",
        ),
        (
            "PKCS#8 EC",
            "ec-chain.pem",
            "client-ec-key-pkcs8.pem",
            "client-ec.pem",
            "-----BEGIN PRIVATE KEY-----",
        ),
        (
            "SEC1 EC",
            "ec-chain.pem",
            "client-ec-key-sec1.pem",
            "client-ec.pem",
            "-----BEGIN EC PRIVATE KEY-----",
        ),
    ];
    for (name, chain, key, leaf, header) in cases {
        assert!(read(key).starts_with(header), "{name}");
        let mut argv = vec!["pix-auth-proxy".to_string()];
        let mut flags = p12_flags(&env, &psp, "client-modern.p12", None);
        let i = flags.iter().position(|x| x == "--pkcs12").unwrap();
        flags.drain(i..i + 2);
        flags.extend([
            "--cert".into(),
            env.p(chain),
            "--key".into(),
            fixture(key).display().to_string(),
        ]);
        argv.extend(flags);
        let args = <pix_auth_proxy::cli::RunArgs as clap::Parser>::try_parse_from(argv).unwrap();
        let config =
            pix_auth_proxy::config::Config::from_args(&args, Default::default()).expect(name);
        let sidecar = Running::start(config).await;
        let got = get(&sidecar.url("/cob/pem")).await;
        assert_eq!(
            got.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&got.body)
        );
        let expected = pix_auth_proxy::telemetry::hex(&pix_auth_proxy::tls::sha256(
            fixture_cert(leaf).as_ref(),
        ));
        assert_eq!(got.json()["client_cert_sha256"], expected, "{name}");
    }
}
