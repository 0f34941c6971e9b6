//! The shared cache on the deployments people run: a standalone primary that fails over
//! behind one name, an ACL user confined to a key prefix, Redis Cluster (plain and TLS) and
//! Sentinel. Real redis-server processes on free ports; waits observe, never guess.

use std::time::Duration;

use redis::AsyncCommands;
use tokio::time::Instant;

use crate::cache::{cache_flags, load, settings, start_replicas};
use crate::support::redis_cluster::RedisCluster;
use crate::support::redis_sentinel::{MASTER_NAME, RedisSentinels};
use crate::support::redis_server::{RedisServer, TlsFiles, available, info, wait_until};
use crate::support::repoint_relay::RepointRelay;
use crate::support::*;

/// The sum over `replicas` of every metric line starting with `prefix`.
pub(crate) async fn metric_sum(replicas: &[Running], prefix: &str) -> f64 {
    let mut sum = 0.0;
    for r in replicas {
        let text = String::from_utf8_lossy(&get(&r.admin_url("/metrics")).await.body).into_owned();
        sum += text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    sum
}

/// The lines of `/metrics` of `r` that start with `prefix`.
pub(crate) async fn metric_lines(r: &Running, prefix: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&get(&r.admin_url("/metrics")).await.body).into_owned();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn standalone_primary_demoted_behind_a_repointed_name_shares_again_without_a_failed_request()
{
    if !available() {
        return;
    }
    let a = RedisServer::start();
    let b = RedisServer::start_with(&["--replicaof", "127.0.0.1", &a.port.to_string()]);
    wait_until("B replicates A", Duration::from_secs(10), || async {
        info(b.port, "replication")
            .await
            .contains("master_link_status:up")
    })
    .await;
    let relay = RepointRelay::start(a.addr()).await;
    let env = Env::with(settings(Duration::from_secs(2))).await;
    let flags = cache_flags(&env, &relay.url());
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend([
        "--refresh-ratio",
        "0.9",
        "--expiry-margin",
        "100ms",
        "--cache-timeout",
        "200ms",
    ]);
    let replicas = start_replicas(&env, 3, &extra).await;
    for r in &replicas {
        r.ready().await;
    }
    // The failover: B promoted, A demoted to B's replica, the name points at B for new
    // connections while the sidecars' connections stay on A (as after a DNS change).
    let before = env.psp.token_requests();
    let mut cb = b.conn().await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut cb)
        .await
        .unwrap();
    let mut ca = a.conn().await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(b.port)
        .query_async(&mut ca)
        .await
        .unwrap();
    relay.point_new_connections_to(b.addr());
    let (ok, failed) = load(&replicas, Duration::from_secs(8)).await;
    let fetches = env.psp.token_requests() - before;
    let reconnects = metric_sum(&replicas, "pix_auth_proxy_cache_reconnects_total").await;
    eprintln!(
        "measured: standalone failover, 3 replicas, 2 s tokens, 4 lifetimes after it: {ok} ok, {failed} failed, {fetches} token fetches, {reconnects} reconnects"
    );
    assert_eq!(failed, 0, "{ok} ok");
    assert!(
        fetches <= 4 + 2,
        "sharing resumed on the new primary: {fetches} fetches in 4 lifetimes"
    );
    // A replica that only ever adopts (reads work on the demoted primary, now a replica of
    // the new one) has no reason to rebuild; the ones that wrote did.
    assert!(
        reconnects >= 1.0,
        "the demoted primary's connections were rebuilt"
    );
    for r in &replicas {
        let primary = metric_lines(r, "pix_auth_proxy_cache_primary{").await;
        assert!(
            primary.iter().any(|l| l.contains("mode=\"standalone\"")),
            "{primary:?}"
        );
    }
    let keys: Vec<String> = cb.keys("pix-auth-proxy:v2:*").await.unwrap();
    assert!(!keys.is_empty(), "the token is cached on the new primary");
    env.assert_logs_clean();
}

/// An ACL user confined to `team-a:` keys and channels, with only the commands the sidecar
/// sends ([`pix_auth_proxy::token::cache::ACL_COMMANDS`]).
fn acl_server(password: &str) -> RedisServer {
    let secret = format!(">{password}");
    let mut args = vec![
        "--user",
        "pix",
        "on",
        &secret,
        "~team-a:*",
        "&team-a:*",
        "-@all",
    ];
    args.extend(pix_auth_proxy::token::cache::ACL_COMMANDS.split(' '));
    RedisServer::start_with(&args)
}

#[tokio::test]
async fn an_acl_user_confined_to_the_prefix_shares_one_token() {
    if !available() {
        return;
    }
    let redis = acl_server("s3cret-acl");
    let env = Env::with(settings(Duration::from_secs(30))).await;
    env.write("cache.pw", b"s3cret-acl");
    let flags = cache_flags(&env, &redis.url());
    let pw = env.p("cache.pw");
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend([
        "--cache-username",
        "pix",
        "--cache-password-file",
        &pw,
        "--cache-key-prefix",
        "team-a:",
    ]);
    let configs: Vec<_> = (0..3).map(|_| env.config(&extra)).collect();
    let replicas = futures_util::future::join_all(configs.into_iter().map(Running::start)).await;
    for r in &replicas {
        r.ready().await;
    }
    assert_eq!(env.psp.token_requests(), 1, "shared through the ACL user");
    let mut conn = redis.conn().await;
    let keys: Vec<String> = conn.keys("team-a:pix-auth-proxy:v2:{*}").await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let report = pix_auth_proxy::check::run(&env.config(&extra)).await;
    let cache: Vec<_> = report
        .outcomes
        .iter()
        .filter(|o| o.what == "shared cache")
        .collect();
    assert_eq!(cache.len(), 3, "{}", report.render());
    assert!(cache.iter().all(|o| o.ok), "{}", report.render());
    env.assert_logs_clean();
}

#[tokio::test]
async fn an_acl_user_without_the_prefix_is_refused_in_words_and_the_sidecar_still_serves() {
    if !available() {
        return;
    }
    let redis = acl_server("s3cret-acl");
    let env = Env::with(settings(Duration::from_secs(30))).await;
    env.write("cache.pw", b"s3cret-acl");
    let flags = cache_flags(&env, &redis.url());
    let pw = env.p("cache.pw");
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend(["--cache-username", "pix", "--cache-password-file", &pw]);
    let report = pix_auth_proxy::check::run(&env.config(&extra)).await;
    let text = report.render();
    assert!(!report.passed(), "{text}");
    assert!(
        text.contains("NOPERM") || text.contains("no permissions"),
        "{text}"
    );
    assert!(text.contains("--cache-key-prefix"), "{text}");
    assert!(!text.contains("s3cret-acl"), "{text}");
    assert!(!crate::support::logs::captured().contains("s3cret-acl"));
    // Running anyway: the cache refuses, the sidecar fetches locally and serves.
    let r = Running::start(env.config(&extra)).await;
    r.ready().await;
    let got = get(&r.url("/cob/1")).await;
    assert_eq!(got.status, 200);
    let started = Instant::now();
    while !crate::support::logs::captured().contains("cache_acl_refused") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the refusal is logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.assert_logs_clean();
}

/// Flags for cluster mode over `urls` (every node a seed).
fn cluster_flags(env: &Env, urls: &[String]) -> Vec<String> {
    let mut flags = cache_flags(env, &urls[0]);
    for u in &urls[1..] {
        flags.extend(["--cache".to_string(), u.clone()]);
    }
    flags.extend(["--cache-mode".to_string(), "cluster".to_string()]);
    flags
}

fn adopted(replicas: &[Running]) -> u64 {
    replicas
        .iter()
        .map(|r| {
            r.refresher()
                .stats()
                .adopted
                .load(std::sync::atomic::Ordering::SeqCst)
        })
        .sum()
}

#[tokio::test]
async fn cluster_replicas_share_one_token_per_lifetime_and_survive_a_master_failover() {
    if !available() {
        return;
    }
    let mut cluster = RedisCluster::start();
    let env = Env::with(settings(Duration::from_secs(2))).await;
    let flags = cluster_flags(&env, &cluster.urls());
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend([
        "--refresh-ratio",
        "0.9",
        "--expiry-margin",
        "100ms",
        "--cache-timeout",
        "300ms",
    ]);
    let replicas = start_replicas(&env, 3, &extra).await;
    for r in &replicas {
        r.ready().await;
    }
    // Counted from the first token on (a cold start slowed by a loaded machine can fall
    // back to local fetches; the cold start's single fetch is shown in the cache tests).
    let base = env.psp.token_requests();
    let (ok, failed) = load(&replicas, Duration::from_secs(8)).await;
    let fetches = env.psp.token_requests() - base;
    eprintln!(
        "measured: cluster, 3 replicas, 2 s tokens, 8 s after the first token ({base} fetched at start): {ok} ok, {failed} failed, {fetches} token fetches"
    );
    assert_eq!(failed, 0, "{ok} ok");
    assert!(fetches <= 4 + 1, "4 lifetimes + 1: {fetches} fetches");
    assert!(
        adopted(&replicas) > 0,
        "replicas adopted each other's tokens"
    );
    let logs = crate::support::logs::captured();
    assert!(
        !logs.contains("CROSSSLOT"),
        "a script or command crossed slots"
    );

    // Kill the master that holds the token; the cluster promotes its replica.
    // The entry expires just before its token; between that and the next renewal there
    // may be none for a moment: look until there is one.
    let find_key = |cluster: &RedisCluster| {
        cluster
            .nodes
            .iter()
            .flat_map(|n| {
                cluster
                    .cli(n.port, &["keys", "pix-auth-proxy:v2:*"])
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .find(|k| !k.ends_with(":lock") && !k.is_empty())
    };
    let mut key = None;
    wait_until("the token is cached", Duration::from_secs(5), || {
        key = find_key(&cluster);
        std::future::ready(key.is_some())
    })
    .await;
    let key = key.unwrap();
    let (m, r) = cluster.master_and_replica_of(&key);
    let replica_port = cluster.nodes[r].port;
    let adopted_before = adopted(&replicas);
    let ((ok, failed), promoted_after) =
        tokio::join!(load(&replicas, Duration::from_secs(8)), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cluster.nodes[m].kill();
            wait_until(
                "the replica is promoted",
                Duration::from_secs(15),
                || async {
                    info(replica_port, "replication")
                        .await
                        .contains("role:master")
                },
            )
            .await
        });
    let fetches_during = env.psp.token_requests() - fetches - base;
    eprintln!(
        "measured: cluster master killed: promoted after {promoted_after:?}; 8 s: {ok} ok, {failed} failed, {fetches_during} token fetches"
    );
    assert_eq!(failed, 0, "{ok} ok");
    // Sharing resumed: over 2 more lifetimes the replicas adopt again, about one fetch each.
    let before = env.psp.token_requests();
    let (_, failed) = load(&replicas, Duration::from_secs(4)).await;
    let fetches_after = env.psp.token_requests() - before;
    eprintln!("measured: cluster after the failover, 2 lifetimes: {fetches_after} token fetches");
    assert_eq!(failed, 0);
    assert!(adopted(&replicas) > adopted_before, "sharing resumed");
    assert!(
        // 4 s is 2 lifetimes: 2 or 3 renewals depending on the phase, +1 for the window edge.
        fetches_after <= 2 + 2,
        "{fetches_after} fetches in 2 lifetimes"
    );
    env.assert_logs_clean();
}

#[tokio::test]
async fn cluster_over_rediss_with_a_test_ca_shares_one_token() {
    if !available() {
        return;
    }
    let env = Env::new().await;
    let server = env.pki.server().unwrap();
    env.write("redis.crt", server.cert_pem.as_bytes());
    env.write("redis.key", server.key_pem.as_bytes());
    let bus = env.pki.client("redis-node").unwrap();
    env.write("bus.crt", bus.cert_pem.as_bytes());
    env.write("bus.key", bus.key_pem.as_bytes());
    let cluster = RedisCluster::start_tls(
        TlsFiles {
            cert: env.path("redis.crt"),
            key: env.path("redis.key"),
            ca: env.path("ca.pem"),
        },
        (env.p("bus.crt"), env.p("bus.key")),
    );
    let urls = cluster.urls();
    assert!(urls[0].starts_with("rediss://"));
    let flags = cluster_flags(&env, &urls);
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let ca = env.p("ca.pem");
    // The first connect is a TLS handshake with every node plus the slot map: give it time
    // on a loaded 2-core machine (debug build), or the replicas fetch locally instead.
    extra.extend(["--cache-ca", &ca, "--cache-timeout", "3s"]);
    let configs: Vec<_> = (0..3).map(|_| env.config(&extra)).collect();
    let replicas = futures_util::future::join_all(configs.into_iter().map(Running::start)).await;
    for r in &replicas {
        r.ready().await;
    }
    assert_eq!(
        env.psp.token_requests(),
        1,
        "shared over TLS in cluster mode"
    );
    let (_, failed) = load(&replicas, Duration::from_millis(300)).await;
    assert_eq!(failed, 0);
    env.assert_logs_clean();
}

#[tokio::test]
async fn sentinel_master_killed_sidecars_follow_the_promoted_replica_without_a_failed_request() {
    if !available() {
        return;
    }
    let mut deployment = RedisSentinels::start().await;
    let env = Env::with(settings(Duration::from_secs(2))).await;
    let urls = deployment.urls();
    let mut flags = cache_flags(&env, &urls[0]);
    for u in &urls[1..] {
        flags.extend(["--cache".to_string(), u.clone()]);
    }
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend([
        "--cache-mode",
        "sentinel",
        "--cache-sentinel-master",
        MASTER_NAME,
        "--refresh-ratio",
        "0.9",
        "--expiry-margin",
        "100ms",
        "--cache-timeout",
        "300ms",
    ]);
    let replicas = start_replicas(&env, 3, &extra).await;
    for r in &replicas {
        r.ready().await;
    }
    assert_eq!(
        env.psp.token_requests(),
        1,
        "shared through the sentinels' master"
    );
    let old = format!("127.0.0.1:{}", deployment.master.port);
    for r in &replicas {
        let lines = metric_lines(r, "pix_auth_proxy_cache_primary{").await;
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&old) && l.contains("sentinel")),
            "{lines:?}"
        );
    }
    let new = format!("127.0.0.1:{}", deployment.replica.port);
    let ((ok, failed), followed_after) =
        tokio::join!(load(&replicas, Duration::from_secs(14)), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            deployment.master.kill();
            wait_until(
                "every sidecar writes to the promoted replica",
                Duration::from_secs(13),
                || async {
                    let mut all = true;
                    for r in &replicas {
                        all &= metric_lines(r, "pix_auth_proxy_cache_primary{")
                            .await
                            .iter()
                            .any(|l| l.contains(&new));
                    }
                    all
                },
            )
            .await
        });
    eprintln!(
        "measured: sentinel, master killed: every sidecar on the promoted replica after {followed_after:?}; {ok} ok, {failed} failed"
    );
    assert_eq!(failed, 0, "{ok} ok");
    let before = env.psp.token_requests();
    let adopted_before = adopted(&replicas);
    let (_, failed) = load(&replicas, Duration::from_secs(4)).await;
    let fetches = env.psp.token_requests() - before;
    eprintln!("measured: sentinel after the failover, 2 lifetimes: {fetches} token fetches");
    assert_eq!(failed, 0);
    assert!(adopted(&replicas) > adopted_before, "sharing resumed");
    // 4 s is 2 lifetimes: 2 or 3 renewals depending on the phase, +1 for the window edge.
    assert!(fetches <= 2 + 2, "{fetches} fetches in 2 lifetimes");
    env.assert_logs_clean();
}

/// Three sidecars on `deployment`'s sentinels with `extra` flags share one token, and
/// `check`'s three cache steps pass.
async fn three_sidecars_share_one_token_through(
    env: &Env,
    deployment: &RedisSentinels,
    extra: &[&str],
    what: &str,
) {
    let urls = deployment.urls();
    let mut flags = cache_flags(env, &urls[0]);
    for u in &urls[1..] {
        flags.extend(["--cache".to_string(), u.clone()]);
    }
    let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
    all.extend([
        "--cache-mode",
        "sentinel",
        "--cache-sentinel-master",
        MASTER_NAME,
    ]);
    all.extend(extra);
    let configs: Vec<_> = (0..3).map(|_| env.config(&all)).collect();
    let replicas = futures_util::future::join_all(configs.into_iter().map(Running::start)).await;
    for r in &replicas {
        r.ready().await;
    }
    assert_eq!(
        env.psp.token_requests(),
        1,
        "one token for three replicas {what}"
    );
    let report = pix_auth_proxy::check::run(&env.config(&all)).await;
    let cache: Vec<_> = report
        .outcomes
        .iter()
        .filter(|o| o.what == "shared cache")
        .collect();
    assert!(
        cache.len() == 3 && cache.iter().all(|o| o.ok),
        "{}",
        report.render()
    );
    env.assert_logs_clean();
}

#[tokio::test]
async fn sentinel_and_data_nodes_with_different_passwords_share_one_token() {
    if !available() {
        return;
    }
    let deployment =
        RedisSentinels::start_with_passwords(Some("data-pw-1"), Some("sentinel-pw-2")).await;
    let env = Env::with(settings(Duration::from_secs(30))).await;
    env.write("data.pw", b"data-pw-1");
    env.write("sentinel.pw", b"sentinel-pw-2");
    let (data, sentinel) = (env.p("data.pw"), env.p("sentinel.pw"));
    let extra = [
        "--cache-password-file",
        &data,
        "--cache-sentinel-password-file",
        &sentinel,
    ];
    three_sidecars_share_one_token_through(
        &env,
        &deployment,
        &extra,
        "through authenticated sentinels",
    )
    .await;
    let logs = crate::support::logs::captured();
    assert!(!logs.contains("data-pw-1") && !logs.contains("sentinel-pw-2"));
}

#[tokio::test]
async fn plain_sentinels_naming_tls_data_nodes_share_one_token_with_cache_data_tls_on() {
    if !available() {
        return;
    }
    let env = Env::with(settings(Duration::from_secs(30))).await;
    let server = env.pki.server().unwrap();
    env.write("redis.crt", server.cert_pem.as_bytes());
    env.write("redis.key", server.key_pem.as_bytes());
    let deployment = RedisSentinels::start_with_tls_data(crate::support::redis_server::TlsFiles {
        cert: env.path("redis.crt"),
        key: env.path("redis.key"),
        ca: env.path("ca.pem"),
    })
    .await;
    assert!(
        deployment.urls()[0].starts_with("redis://"),
        "the sentinels are plain TCP"
    );
    let ca = env.p("ca.pem");
    let extra = ["--cache-data-tls", "on", "--cache-ca", &ca];
    three_sidecars_share_one_token_through(&env, &deployment, &extra, "through TLS data nodes")
        .await;
}
