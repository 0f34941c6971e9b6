//! A misbehaving network, through the fault relay: towards the PSP (blackhole → 504 after
//! the request timeout, reset or cut → 502, latency → still 200, and recovery once it
//! passes again) and towards Redis (blackhole, reset, cut, latency → no app request fails:
//! the sidecar renews locally).

use std::time::Duration;

use pix_auth_proxy::sandbox::PspSettings;
use tokio::time::Instant;

use super::{counter, load_for_at_least};
use crate::support::fault::{Fault, Relay};
use crate::support::redis_server::{RedisServer, available};
use crate::support::*;

/// GET until 200, at most 20 tries 100 ms apart: the path through the relay works again.
async fn recovers(sidecar: &Running, what: &str) {
    for _ in 0..20 {
        if get(&sidecar.url("/cob/recover")).await.status == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no 200 within 2 s after {what} ended");
}

#[tokio::test]
async fn psp_blackhole_is_504_reset_and_cut_are_502_latency_is_200_and_each_recovers() {
    let env = Env::new().await;
    let relay = Relay::start(env.psp.addr()).await;
    let upstream = relay.url("https");
    let sidecar = env
        .sidecar(&["--upstream", &upstream, "--request-timeout", "1s"])
        .await;
    sidecar.ready().await;
    assert_eq!(get(&sidecar.url("/cob/direct")).await.status, 200);
    assert!(relay.accepted() >= 1, "API calls go through the relay");

    relay.set(Fault::Latency(Duration::from_millis(150)));
    let started = Instant::now();
    let got = get(&sidecar.url("/cob/slow")).await;
    assert_eq!(got.status, 200, "latency below the request timeout");
    assert!(started.elapsed() >= Duration::from_millis(150));
    relay.set(Fault::Pass);

    relay.set(Fault::Blackhole);
    let started = Instant::now();
    let got = get(&sidecar.url("/cob/blackhole")).await;
    let after = started.elapsed();
    assert_problem(&got, 504, "upstream-timeout");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "answered after {after:?} with a 1 s request timeout"
    );
    relay.set(Fault::Pass);
    recovers(&sidecar, "the blackhole").await;

    for fault in [Fault::Reset, Fault::Cut] {
        relay.set(fault);
        let got = tokio::time::timeout(Duration::from_secs(5), get(&sidecar.url("/cob/broken")))
            .await
            .unwrap_or_else(|_| panic!("{fault:?}: no answer within 5 s"));
        assert_eq!(got.status, 502, "{fault:?}: {:?}", got.body);
        let kind = got.json()["type"].as_str().unwrap_or_default().to_owned();
        assert!(
            kind.starts_with("urn:pix-auth-proxy:problem:upstream-"),
            "{fault:?}: {kind}"
        );
        relay.set(Fault::Pass);
        recovers(&sidecar, &format!("{fault:?}")).await;
    }
    env.assert_logs_clean();
}

#[tokio::test]
async fn redis_blackholed_reset_cut_or_slow_fails_no_app_request() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let relay = Relay::start(([127, 0, 0, 1], redis.port).into()).await;
    let env = Env::with(PspSettings {
        token_ttl: Duration::from_secs(2),
        ..PspSettings::default()
    })
    .await;
    env.write("cache.key", &[0x42; 32]);
    let (url, key) = (format!("{}/0", relay.url("redis")), env.p("cache.key"));
    let extra = [
        "--cache",
        url.as_str(),
        "--cache-key-file",
        key.as_str(),
        "--cache-timeout",
        "200ms",
    ];
    let replicas = [
        Running::start(env.config(&extra)).await,
        Running::start(env.config(&extra)).await,
    ];
    for r in &replicas {
        r.ready().await;
    }
    assert!(
        relay.accepted() >= 1,
        "the cache is reached through the relay"
    );
    let urls: Vec<String> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| r.url(&format!("/cob/redis{i}")))
        .collect();
    let fallback = "pix_auth_proxy_cache_ops_total{op=\"renew\",result=\"fallback\"}";
    for fault in [
        Fault::Latency(Duration::from_millis(30)),
        Fault::Blackhole,
        Fault::Reset,
        Fault::Cut,
    ] {
        relay.set(fault);
        let fetches = env.psp.token_requests();
        let fallbacks =
            counter(&replicas[0].metrics, fallback) + counter(&replicas[1].metrics, fallback);
        // Longer than a token lifetime (every replica renews at least once under the fault)
        // and at least 50 answers, however slow the machine.
        let t = load_for_at_least(&urls, Duration::from_millis(2500), 50).await;
        assert_eq!((t.non_2xx, t.unanswered), (0, 0), "{fault:?}: {t:?}");
        assert!(t.ok >= 50, "{fault:?}: the loop ran: {t:?}");
        assert!(
            env.psp.token_requests() > fetches,
            "{fault:?}: tokens were renewed during the fault"
        );
        if fault == Fault::Blackhole {
            let now =
                counter(&replicas[0].metrics, fallback) + counter(&replicas[1].metrics, fallback);
            assert!(
                now > fallbacks,
                "blackhole: renewals fell back to a local fetch"
            );
        }
        relay.set(Fault::Pass);
    }
    env.assert_logs_clean();
}
