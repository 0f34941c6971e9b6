//! The one task allowed to call the token endpoint.
//!
//! Owns: the renewal loop (acting when [`super::schedule`] says: at the refresh point, after
//! a failure's retry delay), requests' demand for a token during an outage (many waiters,
//! one attempt), the shared-cache path, and the deduplication of upstream 401 reports: a
//! burst of 401s for one token version causes at most one forced renewal, rate-limited.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::cache::{CachedToken, Renewal, SharedCache};
use super::schedule::{effective_margin, refresh_in, retry_in};
use super::{RefreshPolicy, Token, TokenCell, TokenClient, TokenError};
use crate::metrics::Metrics;

/// Counters the refresher keeps (read by metrics and tests).
#[derive(Debug, Default)]
pub struct RefreshStats {
    /// Successful fetches.
    pub fetch_ok: AtomicU64,
    /// Failed fetches.
    pub fetch_err: AtomicU64,
    /// Tokens adopted from the shared cache (no fetch).
    pub adopted: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    /// Highest token version an upstream rejected.
    rejected: AtomicU64,
    wake: Notify,
    /// A request is waiting for a token (coalesced: one stored permit, one attempt).
    demand: Notify,
    stats: RefreshStats,
}

/// The proxy's side of the refresher: report rejected tokens, read counters.
#[derive(Debug, Clone)]
pub struct RefresherHandle {
    shared: Arc<Shared>,
}

impl RefresherHandle {
    /// Report that the upstream answered 401 to a request carrying token `version`. Reports
    /// for a version that is no longer current are ignored by the refresher, so a burst of
    /// 401s for one token causes one renewal.
    pub fn report_rejected(&self, version: u64) {
        self.shared.rejected.fetch_max(version, Ordering::AcqRel);
        self.shared.wake.notify_one();
    }

    /// Say that a request is waiting because no usable token is held. Outside an outage this
    /// does nothing (a renewal is already scheduled before the token becomes unusable);
    /// during one it brings the next attempt forward to at most `min_retry_gap` after the
    /// last one ended. Many calls before the refresher looks cause one attempt.
    pub fn demand(&self) {
        self.shared.demand.notify_one();
    }

    /// The refresher's counters.
    pub fn stats(&self) -> &RefreshStats {
        &self.shared.stats
    }
}

/// Renews the token in a [`TokenCell`]; run it with [`Refresher::run`] on its own task.
pub struct Refresher {
    client: TokenClient,
    cell: TokenCell,
    policy: RefreshPolicy,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    cache: Option<Arc<SharedCache>>,
    next_version: u64,
    scope_warned: bool,
    /// Subject and issuer of the client certificate, named when the PSP refuses it.
    certificate: Option<(String, String)>,
}

impl Refresher {
    /// A refresher writing into `cell`.
    pub fn new(
        client: TokenClient,
        cell: TokenCell,
        policy: RefreshPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            cell,
            policy,
            shared: Arc::default(),
            metrics,
            cache: None,
            next_version: 1,
            scope_warned: false,
            certificate: None,
        }
    }

    /// Name the client certificate (subject, issuer) in the warning logged when the PSP
    /// refuses it.
    pub fn with_certificate(mut self, subject: String, issuer: String) -> Self {
        self.certificate = Some((subject, issuer));
        self
    }

    /// Share tokens with other replicas through `cache`.
    pub fn with_cache(mut self, cache: Arc<SharedCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The handle the proxy uses to report 401s.
    pub fn handle(&self) -> RefresherHandle {
        RefresherHandle {
            shared: self.shared.clone(),
        }
    }

    /// Fetch now, then keep the token fresh forever. Cancel by dropping the future (abort the
    /// task).
    pub async fn run(mut self) {
        let mut next_at = Instant::now();
        let mut failures: u32 = 0;
        let mut last_forced: Option<Instant> = None;
        let mut last_ended: Option<Instant> = None;
        let mut reason = "initial";
        loop {
            let forced = tokio::select! {
                _ = tokio::time::sleep_until(next_at) => false,
                _ = self.shared.wake.notified() => {
                    match self.forced_due(last_forced) {
                        ForcedCheck::Stale => continue,
                        ForcedCheck::RateLimited(at) => {
                            next_at = next_at.min(at);
                            continue;
                        }
                        ForcedCheck::Due => true,
                    }
                }
                _ = self.shared.demand.notified() => {
                    // Only an outage makes requests wait; then bring the next attempt
                    // forward, but keep attempts `min_retry_gap` apart.
                    if self.cell.usable(Instant::now()).is_none() {
                        let earliest = last_ended.map_or_else(Instant::now, |t| t + self.policy.min_retry_gap);
                        next_at = next_at.min(earliest);
                    }
                    continue;
                }
            };
            if forced {
                reason = "forced";
                last_forced = Some(Instant::now());
                self.metrics.forced_refresh();
                tracing::info!(
                    event = "token_forced_refresh",
                    "upstream rejected the current token; renewing"
                );
            }
            let have = if forced {
                Some(self.shared.rejected.load(Ordering::Acquire))
            } else {
                self.cell.current().map(|t| t.version())
            };
            let obtained = self.obtain(have).await;
            last_ended = Some(Instant::now());
            match obtained {
                Ok(got) => {
                    failures = 0;
                    let margin = effective_margin(got.lifetime, self.policy.expiry_margin);
                    self.next_version = self.next_version.max(got.version + 1);
                    let token = match Token::with_expiry(
                        got.access_token.expose_secret(),
                        got.version,
                        got.expires_at,
                        got.lifetime,
                        margin,
                    ) {
                        Ok(t) => t,
                        Err(_) => {
                            // Only visible ASCII gets here, which is always a valid header
                            // value; keep the old token if that ever changes.
                            tracing::error!("token could not be turned into a header value");
                            next_at = Instant::now() + self.policy.backoff_base;
                            continue;
                        }
                    };
                    let now = Instant::now();
                    let issued = got.expires_at.checked_sub(got.lifetime).unwrap_or(now);
                    let planned = issued
                        + refresh_in(
                            got.lifetime,
                            margin,
                            self.policy.ratio,
                            fastrand::f64() * 2.0 - 1.0,
                        );
                    // An adopted token may already be past its refresh point: renew soon, with
                    // jitter so that replicas do not all try at once.
                    next_at = planned.max(now + Duration::from_millis(100 + fastrand::u64(0..500)));
                    let source = if got.adopted {
                        "shared cache"
                    } else {
                        "token endpoint"
                    };
                    tracing::info!(
                        event = if got.adopted {
                            "token_adopted"
                        } else {
                            "token_renewed"
                        },
                        fingerprint = token.fingerprint(),
                        version = got.version,
                        expires_in_s = got.expires_at.saturating_duration_since(now).as_secs_f64(),
                        next_refresh_in_s = next_at.saturating_duration_since(now).as_secs_f64(),
                        source,
                        "new access token"
                    );
                    if got.adopted {
                        self.shared.stats.adopted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.shared.stats.fetch_ok.fetch_add(1, Ordering::Relaxed);
                        self.metrics.token_fetched(token.expires_at_wall(), reason);
                    }
                    self.metrics.set_token_valid(true);
                    self.cell.store(token);
                    reason = "scheduled";
                }
                Err(err) => {
                    failures += 1;
                    self.shared.stats.fetch_err.fetch_add(1, Ordering::Relaxed);
                    self.metrics.token_fetch_failed(err.reason());
                    if reason == "scheduled" {
                        reason = "retry";
                    }
                    let now = Instant::now();
                    let current = self.cell.current();
                    let usable = current.as_ref().filter(|t| t.is_usable(now));
                    let delay = retry_in(
                        failures,
                        usable.map(|t| t.usable_until().saturating_duration_since(now)),
                        &self.policy,
                        fastrand::f64(),
                    );
                    if let (Some(refusal), 1) = (err.refusal(), failures) {
                        let (subject, issuer) = self.certificate.clone().unwrap_or_default();
                        tracing::warn!(
                            event = "client_cert_refused",
                            %refusal,
                            cert_subject = %subject,
                            cert_issuer = %issuer,
                            "the PSP refused our client certificate: check that this certificate is the one registered with the PSP for this environment"
                        );
                    }
                    let kept = usable.map(|t| t.fingerprint().to_owned());
                    tracing::warn!(
                        event = "token_fetch_failed",
                        reason = err.reason(),
                        error = %err,
                        attempt = failures,
                        retry_in_ms = delay.as_millis() as u64,
                        kept_token = kept.as_deref().unwrap_or("none"),
                        "token request failed"
                    );
                    self.metrics.set_token_valid(usable.is_some());
                    if usable.is_none() && current.is_some() {
                        tracing::error!(
                            event = "token_expired",
                            "no usable token: requests get 503 until the token endpoint recovers"
                        );
                    }
                    next_at = now + delay;
                    // Waiting requests answer their 503 now instead of at their deadline.
                    self.cell.note_failure();
                }
            }
        }
    }

    /// A token newer than `have`: from the shared cache (adopted, or fetched under its lock
    /// and shared), or fetched locally when there is no cache or it fails.
    async fn obtain(&mut self, have: Option<u64>) -> Result<Obtained, TokenError> {
        if let Some(cache) = self.cache.clone() {
            let client = self.client.clone();
            let fetch = move |version: u64| async move {
                let g = client.fetch().await?;
                let left = (g.sent_at + g.lifetime).saturating_duration_since(Instant::now());
                Ok::<_, TokenError>(CachedToken {
                    access_token: g.access_token,
                    version,
                    expires_at: SystemTime::now() + left,
                    lifetime: g.lifetime,
                })
            };
            match cache
                .renew(
                    have,
                    self.policy.expiry_margin,
                    self.policy.cache_wait,
                    fetch,
                )
                .await
            {
                Ok(Ok(renewal)) => {
                    let (t, adopted) = match renewal {
                        Renewal::Adopted(t) => (t, true),
                        Renewal::Fetched(t) => (t, false),
                    };
                    return Ok(Obtained {
                        expires_at: t.expires_at_instant(),
                        access_token: t.access_token,
                        version: t.version,
                        lifetime: t.lifetime,
                        adopted,
                    });
                }
                Ok(Err(token_err)) => return Err(token_err),
                Err(cache_err) => {
                    self.metrics.cache_op("renew", "fallback");
                    tracing::warn!(
                        event = "cache_unavailable",
                        reason = cache_err.label(),
                        error = %cache_err,
                        "shared cache failed; fetching the token locally"
                    );
                }
            }
        }
        let version = self.next_version.max(have.unwrap_or(0) + 1);
        let g = self.client.fetch().await?;
        self.check_scope(g.scope.as_deref());
        Ok(Obtained {
            expires_at: g.sent_at + g.lifetime,
            access_token: g.access_token,
            version,
            lifetime: g.lifetime,
            adopted: false,
        })
    }

    /// Warn once when the PSP granted less than was asked: the 403s come later, far from
    /// their cause.
    fn check_scope(&mut self, granted: Option<&str>) {
        let (Some(requested), Some(granted)) = (self.client.request().scope.as_deref(), granted)
        else {
            return;
        };
        let granted: Vec<&str> = granted.split_whitespace().collect();
        let missing: Vec<&str> = requested
            .split_whitespace()
            .filter(|s| !granted.contains(s))
            .collect();
        if !missing.is_empty() && !self.scope_warned {
            self.scope_warned = true;
            tracing::warn!(
                event = "scope_narrower",
                requested,
                granted = %granted.join(" "),
                missing = %missing.join(" "),
                "the PSP granted fewer scopes than requested: calls needing them will get 403"
            );
        }
    }

    fn forced_due(&self, last_forced: Option<Instant>) -> ForcedCheck {
        let rejected = self.shared.rejected.load(Ordering::Acquire);
        match self.cell.current() {
            Some(cur) if rejected >= cur.version() => {}
            _ => return ForcedCheck::Stale,
        }
        match last_forced {
            Some(at) if at.elapsed() < self.policy.forced_min_interval => {
                ForcedCheck::RateLimited(at + self.policy.forced_min_interval)
            }
            _ => ForcedCheck::Due,
        }
    }
}

/// A token ready to store.
struct Obtained {
    access_token: secrecy::SecretString,
    version: u64,
    expires_at: Instant,
    lifetime: Duration,
    adopted: bool,
}

enum ForcedCheck {
    /// The rejected token was already replaced (or there is none yet).
    Stale,
    /// A forced renewal happened too recently; renew at the given instant instead.
    RateLimited(Instant),
    Due,
}
