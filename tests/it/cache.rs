//! The shared token cache: several sidecars, one real redis-server, one mock PSP.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pix_auth_proxy::sandbox::PspSettings;
use redis::AsyncCommands;
use tokio::time::Instant;

use crate::support::redis_server::{RedisServer, TlsFiles, available};
use crate::support::*;

pub(crate) fn settings(ttl: Duration) -> PspSettings {
    PspSettings {
        token_ttl: ttl,
        ..PspSettings::default()
    }
}

/// Flags for a sidecar using `redis` as its shared cache.
pub(crate) fn cache_flags(env: &Env, url: &str) -> Vec<String> {
    env.write("cache.key", &[0x42; 32]);
    vec![
        "--cache".into(),
        url.into(),
        "--cache-key-file".into(),
        env.p("cache.key"),
    ]
}

pub(crate) async fn start_replicas(env: &Env, n: usize, extra: &[&str]) -> Vec<Running> {
    let mut out = Vec::new();
    for _ in 0..n {
        let flags: Vec<&str> = extra.to_vec();
        out.push(Running::start(env.config(&flags)).await);
    }
    out
}

/// One client loop per replica for `duration`; returns the number of failed requests.
pub(crate) async fn load(replicas: &[Running], duration: Duration) -> (u64, u64) {
    let mut tasks = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        let url = r.url(&format!("/cob/r{i}"));
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let end = Instant::now() + duration;
            let (mut ok, mut failed) = (0u64, 0u64);
            while Instant::now() < end {
                let got = send(
                    &client,
                    http::Request::get(url.as_str()).body(empty()).unwrap(),
                )
                .await;
                if got.status == 200 {
                    ok += 1;
                } else {
                    failed += 1;
                    eprintln!(
                        "failed: {} {}",
                        got.status,
                        String::from_utf8_lossy(&got.body)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        }));
    }
    let mut total = (0, 0);
    for t in tasks {
        let (ok, failed) = t.await.unwrap();
        total.0 += ok;
        total.1 += failed;
    }
    total
}

/// Every key and value in the server, as raw bytes.
async fn dump(redis: &RedisServer) -> Vec<u8> {
    let mut conn = redis.conn().await;
    let keys: Vec<String> = conn.keys("*").await.unwrap();
    let mut out = Vec::new();
    for k in keys {
        out.extend_from_slice(k.as_bytes());
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        match kind.as_str() {
            "hash" => {
                let fields: Vec<Vec<u8>> = redis::cmd("HGETALL")
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                fields.into_iter().for_each(|f| out.extend_from_slice(&f));
            }
            "string" => {
                let v: Vec<u8> = conn.get(&k).await.unwrap();
                out.extend_from_slice(&v);
            }
            other => panic!("unexpected key type {other} for {k}"),
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn five_replicas_under_load_for_four_lifetimes_fetch_about_once_per_lifetime() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let env = Env::with(settings(Duration::from_secs(2))).await;
    let flags = cache_flags(&env, &redis.url());
    // Renew late (ratio 0.9, margin 100 ms) so one renewal per lifetime is the ideal to meet.
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend(["--refresh-ratio", "0.9", "--expiry-margin", "100ms"]);
    let replicas = start_replicas(&env, 5, &extra).await;
    let (ok, failed) = load(&replicas, Duration::from_secs(8)).await;
    assert_eq!(failed, 0, "{ok} ok");
    let fetches = env.psp.token_requests();
    eprintln!(
        "measured: 5 replicas, 2 s tokens, 8 s: {ok} ok, {failed} failed, {fetches} token fetches"
    );
    assert!(
        fetches <= 5,
        "4 lifetimes + 1, not 5×: the token endpoint counted {fetches}"
    );
    let adopted: u64 = replicas
        .iter()
        .map(|r| r.refresher().stats().adopted.load(Ordering::SeqCst))
        .sum();
    assert!(
        adopted >= 4 * 3,
        "replicas adopted each other's tokens: {adopted}"
    );
    // No plaintext token anywhere in Redis.
    let all = dump(&redis).await;
    assert!(!all.is_empty());
    for t in env.psp.issued_tokens() {
        assert!(!contains(&all, t.as_bytes()), "a token is stored in clear");
    }
    env.assert_logs_clean();
}

#[tokio::test]
async fn five_replicas_cold_starting_together_cause_one_token_fetch() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let env = Env::new().await;
    let flags = cache_flags(&env, &redis.url());
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let configs: Vec<_> = (0..5).map(|_| env.config(&extra)).collect();
    let replicas = futures_util::future::join_all(configs.into_iter().map(Running::start)).await;
    for r in &replicas {
        r.ready().await;
    }
    assert_eq!(env.psp.token_requests(), 1);
    let (_, failed) = load(&replicas, Duration::from_millis(300)).await;
    assert_eq!(failed, 0);
    let versions: Vec<u64> = replicas
        .iter()
        .map(|r| r.cell().current().unwrap().version())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] == w[1]),
        "one token, one version: {versions:?}"
    );
}

#[tokio::test]
async fn redis_killed_mid_run_loses_no_request_and_sharing_resumes_after_restart() {
    if !available() {
        return;
    }
    let mut redis = RedisServer::start();
    let env = Env::with(settings(Duration::from_secs(2))).await;
    let flags = cache_flags(&env, &redis.url());
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend(["--cache-timeout", "200ms"]);
    let replicas = start_replicas(&env, 3, &extra).await;
    for r in &replicas {
        r.ready().await;
    }
    redis.kill();
    // Two lifetimes without Redis: every replica renews locally; nothing fails.
    let (ok, failed) = load(&replicas, Duration::from_secs(4)).await;
    assert_eq!(failed, 0, "{ok} ok");
    let text =
        String::from_utf8_lossy(&get(&replicas[0].admin_url("/metrics")).await.body).into_owned();
    assert!(
        text.lines().any(|l| l
            .starts_with("pix_auth_proxy_cache_ops_total{op=\"renew\",result=\"fallback\"}")
            && !l.ends_with(" 0")),
        "fallback counted:\n{text}"
    );

    redis.restart();
    let adopted_before: u64 = replicas
        .iter()
        .map(|r| r.refresher().stats().adopted.load(Ordering::SeqCst))
        .sum();
    let (_, failed) = load(&replicas, Duration::from_secs(4)).await;
    assert_eq!(failed, 0);
    let adopted_after: u64 = replicas
        .iter()
        .map(|r| r.refresher().stats().adopted.load(Ordering::SeqCst))
        .sum();
    assert!(
        adopted_after > adopted_before,
        "replicas share tokens again once Redis is back"
    );
    let mut conn = redis.conn().await;
    let keys: Vec<String> = conn.keys("pix-auth-proxy:v2:*").await.unwrap();
    assert!(!keys.is_empty(), "the token is cached again");
}

#[tokio::test]
async fn a_lock_whose_holder_died_expires_and_another_replica_renews_in_time() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let env = Env::with(settings(Duration::from_secs(10))).await;
    let flags = cache_flags(&env, &redis.url());
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Renewal due at ~4 s; lock TTL = token timeout + 1 s = 2 s.
    extra.extend([
        "--refresh-ratio",
        "0.4",
        "--token-timeout",
        "1s",
        "--expiry-margin",
        "1s",
    ]);
    let replicas = start_replicas(&env, 3, &extra).await;
    for r in &replicas {
        r.ready().await;
    }
    let started = Instant::now();
    // A holder takes the lock just before the renewal is due, then dies without releasing it.
    tokio::time::sleep(Duration::from_millis(3_400)).await;
    let mut conn = redis.conn().await;
    let lock_key = format!("{}:lock", {
        let keys: Vec<String> = conn.keys("pix-auth-proxy:v2:*").await.unwrap();
        keys.into_iter()
            .find(|k| !k.ends_with(":lock"))
            .expect("the token is cached")
    });
    let set: Option<String> = redis::cmd("SET")
        .arg(&lock_key)
        .arg("dead-replica")
        .arg("NX")
        .arg("PX")
        .arg(2000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(set.is_some(), "the test holds the lock");
    // Load until the lock has expired and a renewal could land (~5.4 s), well before the
    // token stops being usable (9 s).
    let (ok, failed) = load(&replicas, Duration::from_millis(3_000)).await;
    assert_eq!(failed, 0, "{ok} ok");
    assert_eq!(
        env.psp.token_requests(),
        2,
        "one replica renewed once the lock expired"
    );
    let renewed_by = started.elapsed();
    assert!(
        renewed_by < Duration::from_secs(9),
        "renewed in time: {renewed_by:?}"
    );
    let versions: Vec<u64> = replicas
        .iter()
        .map(|r| r.cell().current().unwrap().version())
        .collect();
    assert!(versions.iter().all(|v| *v == 2), "{versions:?}");
    for r in &replicas {
        let text = String::from_utf8_lossy(&get(&r.admin_url("/metrics")).await.body).into_owned();
        assert!(
            !text.contains("op=\"renew\",result=\"fallback\""),
            "renewed through the cache, not by a local fallback:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_tampered_value_is_counted_never_injected_and_overwritten() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let env = Env::new().await;
    let flags = cache_flags(&env, &redis.url());
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let first = Running::start(env.config(&extra)).await;
    first.ready().await;
    let mut conn = redis.conn().await;
    let keys: Vec<String> = conn.keys("pix-auth-proxy:v2:*").await.unwrap();
    let key = keys.into_iter().find(|k| !k.ends_with(":lock")).unwrap();
    // An attacker with Redis access plants a value of a higher version.
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("v")
        .arg(99)
        .arg("ct")
        .arg("attacker-controlled-bytes")
        .query_async(&mut conn)
        .await
        .unwrap();

    // A new replica starts: it must not adopt the planted value.
    let second = Running::start(env.config(&extra)).await;
    second.ready().await;
    let got = get(&second.url("/cob/t")).await;
    assert_eq!(got.status, 200);
    assert!(!got.upstream_authorization().contains("attacker"));
    assert_eq!(
        env.psp.token_requests(),
        2,
        "the tampered value was a miss: a fresh fetch"
    );
    let text = String::from_utf8_lossy(&get(&second.admin_url("/metrics")).await.body).into_owned();
    assert!(
        text.contains("pix_auth_proxy_cache_decrypt_failures_total 1"),
        "{text}"
    );
    assert!(crate::support::logs::captured().contains("cache_decrypt_failure"));
    // Overwritten with a valid value.
    let ct: Vec<u8> = conn.hget(&key, "ct").await.unwrap();
    assert!(!contains(&ct, b"attacker-controlled-bytes"));
    let all = dump(&redis).await;
    for t in env.psp.issued_tokens() {
        assert!(!contains(&all, t.as_bytes()));
    }
}

#[tokio::test]
async fn a_burst_of_401s_across_replicas_is_one_renewal_through_the_lock() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let env = Env::new().await;
    let flags = cache_flags(&env, &redis.url());
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let replicas = start_replicas(&env, 4, &extra).await;
    for r in &replicas {
        r.ready().await;
    }
    assert_eq!(env.psp.token_requests(), 1);
    env.psp.revoke_all();
    let (ok, failed) = load(&replicas, Duration::from_millis(800)).await;
    assert_eq!(
        failed, 0,
        "{ok} ok: every 401 was replayed with the renewed token"
    );
    assert_eq!(env.psp.token_requests(), 2, "one renewal for all replicas");
}

#[tokio::test]
async fn the_cache_works_over_rediss_with_a_test_ca() {
    if !available() {
        return;
    }
    let env = Env::new().await;
    let server = env.pki.server().unwrap();
    env.write("redis.crt", server.cert_pem.as_bytes());
    env.write("redis.key", server.key_pem.as_bytes());
    let redis = RedisServer::start_tls(TlsFiles {
        cert: env.path("redis.crt"),
        key: env.path("redis.key"),
        ca: env.path("ca.pem"),
    });
    let flags = cache_flags(&env, &redis.url());
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let ca = env.p("ca.pem");
    extra.extend(["--cache-ca", &ca]);
    let configs: Vec<_> = (0..3).map(|_| env.config(&extra)).collect();
    let replicas = futures_util::future::join_all(configs.into_iter().map(Running::start)).await;
    for r in &replicas {
        r.ready().await;
    }
    assert_eq!(env.psp.token_requests(), 1, "shared over TLS");
    let (_, failed) = load(&replicas, Duration::from_millis(300)).await;
    assert_eq!(failed, 0);
    let all = dump(&redis).await;
    assert!(!all.is_empty());
    for t in env.psp.issued_tokens() {
        assert!(!contains(&all, t.as_bytes()));
    }
}
