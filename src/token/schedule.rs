//! When the refresher acts: pure functions of the token's lifetime, the policy, the clock
//! and a random draw (the linkerd2-proxy `refresh_in()` pattern), so they are tested without
//! a runtime.
//!
//! Owns: [`RefreshPolicy`], the refresh point (a ratio of the lifetime with jitter, always
//! before the token stops being usable), the effective expiry margin, and the retry delays
//! after a failure: exponential with full jitter while a usable token is kept (closing in
//! on its end, never closer than `min_retry_gap`), a short bounded cadence once none is left.

use std::time::Duration;

/// When and how often the refresher renews.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// Fraction of the lifetime after which renewal starts (before jitter).
    pub ratio: f64,
    /// A token is not injected once less than this is left.
    pub expiry_margin: Duration,
    /// First backoff step after a failure.
    pub backoff_base: Duration,
    /// Largest backoff step while a usable token is kept.
    pub backoff_max: Duration,
    /// Largest backoff step once no usable token is left: an outage must end for the app
    /// within seconds of the token endpoint's return.
    pub outage_retry_max: Duration,
    /// Least time between the end of one attempt and the start of the next (retries closing
    /// in on the end of a kept token, attempts asked for by waiting requests).
    pub min_retry_gap: Duration,
    /// Minimum time between two 401-driven renewals.
    pub forced_min_interval: Duration,
    /// With a shared cache: how long to wait for another replica's renewal before fetching
    /// locally.
    pub cache_wait: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            ratio: 0.66,
            expiry_margin: Duration::from_secs(15),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            outage_retry_max: Duration::from_secs(2),
            min_retry_gap: Duration::from_millis(500),
            forced_min_interval: Duration::from_secs(5),
            cache_wait: Duration::from_secs(15),
        }
    }
}

/// The margin actually applied to a token of `lifetime`: the configured one, but never more
/// than a quarter of the lifetime, so that a PSP issuing tokens shorter than the margin does
/// not make every token unusable.
pub fn effective_margin(lifetime: Duration, configured: Duration) -> Duration {
    configured.min(lifetime / 4)
}

/// How long after receiving a token to start renewing it. `jitter` is in `[-1, 1]` and moves
/// the point by up to ±10 %. Renewal always starts before the token stops being usable.
pub fn refresh_in(lifetime: Duration, margin: Duration, ratio: f64, jitter: f64) -> Duration {
    let jitter = jitter.clamp(-1.0, 1.0) * 0.1;
    let planned = lifetime.mul_f64((ratio * (1.0 + jitter)).clamp(0.0, 1.0));
    let usable_for = lifetime.saturating_sub(margin);
    // Leave at least a tenth of the usable window for the renewal itself (and its retries).
    planned.min(usable_for.mul_f64(0.9))
}

/// Backoff before retry number `attempt` (1-based): full jitter over an exponentially
/// growing window, `rand01` in `[0, 1)`. A floor keeps a run of failures from spinning.
pub fn backoff(attempt: u32, base: Duration, max: Duration, rand01: f64) -> Duration {
    let window = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    window
        .mul_f64(rand01.clamp(0.0, 1.0))
        .max(Duration::from_millis(100).min(window))
}

/// How long to wait before the next attempt after `failures` failures in a row (1-based).
/// With a usable token (`usable_for` is how long it stays usable), back off exponentially up
/// to `backoff_max` but come back before the token stops being usable, closing in on its end
/// by halving what is left and never sooner than `min_retry_gap`. Without one, the window
/// stops growing at `outage_retry_max`: the app is waiting. `rand01` in `[0, 1)`.
pub fn retry_in(
    failures: u32,
    usable_for: Option<Duration>,
    policy: &RefreshPolicy,
    rand01: f64,
) -> Duration {
    let max = match usable_for {
        Some(_) => policy.backoff_max,
        None => policy
            .outage_retry_max
            .min(policy.backoff_max.max(policy.backoff_base)),
    };
    let delay = backoff(failures, policy.backoff_base, max, rand01);
    match usable_for {
        Some(left) => delay.min(left / 2).max(policy.min_retry_gap.min(max)),
        // Full jitter keeps replicas apart; the floor keeps a run of instant failures from
        // hammering the endpoint.
        None => delay.max(policy.min_retry_gap.min(max) / 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn refresh_point_follows_ratio_and_jitter() {
        assert_eq!(
            refresh_in(S(300), S(15), 0.66, 0.0),
            Duration::from_secs_f64(198.0)
        );
        let early = refresh_in(S(300), S(15), 0.66, -1.0);
        let late = refresh_in(S(300), S(15), 0.66, 1.0);
        assert!((early.as_secs_f64() - 178.2).abs() < 1e-6, "{early:?}");
        assert!((late.as_secs_f64() - 217.8).abs() < 1e-6, "{late:?}");
    }

    #[test]
    fn refresh_always_starts_before_the_token_becomes_unusable() {
        for ratio in [0.5, 0.66, 0.9, 0.99] {
            for life in [2u64, 10, 60, 300, 3600] {
                let margin = effective_margin(S(life), S(15));
                let at = refresh_in(S(life), margin, ratio, 1.0);
                assert!(at < S(life) - margin, "ratio {ratio} life {life}: {at:?}");
                assert!(at > Duration::ZERO);
            }
        }
    }

    #[test]
    fn margin_never_eats_a_short_token() {
        assert_eq!(effective_margin(S(2), S(15)), Duration::from_millis(500));
        assert_eq!(effective_margin(S(300), S(15)), S(15));
    }

    #[test]
    fn backoff_grows_exponentially_within_full_jitter_and_caps() {
        let (b, m) = (S(1), S(60));
        assert_eq!(backoff(1, b, m, 0.999_999).as_secs(), 0); // window 1 s
        assert!(backoff(3, b, m, 0.999_999) > Duration::from_millis(3_999)); // window 4 s
        assert!(backoff(3, b, m, 0.999_999) < S(4));
        assert!(backoff(30, b, m, 0.999_999) <= m);
        assert!(backoff(30, b, m, 0.999_999) > S(59));
        assert_eq!(backoff(5, b, m, 0.0), Duration::from_millis(100));
    }

    #[test]
    fn without_a_usable_token_retries_stay_within_2s_however_many_failures() {
        let p = RefreshPolicy::default();
        for attempt in 1..=40 {
            for r in [0.0, 0.3, 0.999_999] {
                let d = retry_in(attempt, None, &p, r);
                assert!(d <= S(2), "attempt {attempt} r {r}: {d:?}");
                assert!(d >= Duration::from_millis(250), "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn closing_in_on_the_end_of_a_kept_token_retries_stay_500ms_apart() {
        let p = RefreshPolicy::default();
        for left_ms in [100u64, 300, 900, 2_000, 60_000] {
            for attempt in 1..=10 {
                for r in [0.0, 0.5, 0.999_999] {
                    let left = Duration::from_millis(left_ms);
                    let d = retry_in(attempt, Some(left), &p, r);
                    assert!(d >= Duration::from_millis(500), "{left_ms} ms left: {d:?}");
                    // Never past the end of the kept token, unless that end is nearer than
                    // the gap itself.
                    assert!(d <= (left / 2).max(Duration::from_millis(500)), "{d:?}");
                }
            }
        }
        // With plenty left, the exponential backoff applies as before.
        assert!(retry_in(6, Some(S(3_600)), &p, 0.999_999) > S(31));
    }
}
