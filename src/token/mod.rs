//! The access token: its in-memory cell, the client that fetches it, and the task that
//! renews it.
//!
//! Owns: [`Token`] (a pre-built, sensitive `Authorization` value with its version and
//! monotonic expiry), [`TokenCell`] (lock-free current token, read on every request),
//! [`endpoint`] (the OAuth2 client-credentials request and response validation) and
//! [`refresher`] (the one background task allowed to call the token endpoint).

pub mod cache;
pub mod endpoint;
pub mod refresher;
pub mod response;
pub mod schedule;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::watch;
use tokio::time::Instant;

pub use endpoint::{TokenClient, TokenError};
pub use refresher::{Refresher, RefresherHandle};
pub use schedule::RefreshPolicy;

/// One access token, ready to be injected.
///
/// The `Authorization` value is built once, when the token arrives, and marked sensitive so
/// that HTTP/2 HPACK never indexes it and hyper's `Debug` hides it.
pub struct Token {
    header: HeaderValue,
    version: u64,
    expires_at: Instant,
    usable_until: Instant,
    expires_at_wall: std::time::SystemTime,
    lifetime: Duration,
    fingerprint: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("fingerprint", &self.fingerprint)
            .field("version", &self.version)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Build a token. `access_token` must already be validated (visible ASCII);
    /// `sent_at` is when the token request was sent, so the expiry errs on the early side.
    /// `margin` is how long before `expires_at` the token stops being injected.
    pub fn new(
        access_token: &str,
        version: u64,
        sent_at: Instant,
        lifetime: Duration,
        margin: Duration,
    ) -> Result<Self, http::header::InvalidHeaderValue> {
        let mut header = HeaderValue::try_from(format!("Bearer {access_token}"))?;
        header.set_sensitive(true);
        let expires_at = sent_at + lifetime;
        // Wall-clock expiry for metrics and the shared cache; the monotonic one decides.
        let expires_at_wall =
            std::time::SystemTime::now() + expires_at.saturating_duration_since(Instant::now());
        Ok(Self {
            header,
            version,
            expires_at,
            expires_at_wall,
            usable_until: expires_at.checked_sub(margin).unwrap_or(sent_at),
            lifetime,
            fingerprint: crate::telemetry::fingerprint(access_token.as_bytes()),
        })
    }

    /// Build a token whose expiry is already known as a monotonic instant (adopted from the
    /// shared cache, or fetched).
    pub fn with_expiry(
        access_token: &str,
        version: u64,
        expires_at: Instant,
        lifetime: Duration,
        margin: Duration,
    ) -> Result<Self, http::header::InvalidHeaderValue> {
        let issued = expires_at.checked_sub(lifetime).unwrap_or(expires_at);
        let mut t = Self::new(access_token, version, issued, lifetime, margin)?;
        // `issued` may be clamped above; the expiry given is the truth.
        t.expires_at = expires_at;
        t.usable_until = expires_at.checked_sub(margin).unwrap_or(issued);
        Ok(t)
    }

    /// The `Authorization: Bearer …` value (sensitive).
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// Monotonic version: a later token has a larger version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Wall-clock expiry (for metrics and logs only).
    pub fn expires_at_wall(&self) -> std::time::SystemTime {
        self.expires_at_wall
    }

    /// The last instant at which the token may be injected (`expires_at − margin`).
    pub fn usable_until(&self) -> Instant {
        self.usable_until
    }

    /// Short hash that names the token in logs.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether the token may be injected at `now`.
    pub fn is_usable(&self, now: Instant) -> bool {
        now < self.usable_until
    }
}

/// The current token, shared by every request and written only by the refresher.
///
/// Reads are a lock-free `ArcSwap` load; waiters for a first (or newer) token are woken
/// through a `watch` channel carrying the latest version, and through a second one counting
/// failed renewal attempts, so that a request waiting during an outage gets its answer as
/// soon as the attempt it waited for has failed instead of at the end of its wait bound.
#[derive(Clone)]
pub struct TokenCell {
    inner: Arc<CellInner>,
}

struct CellInner {
    current: ArcSwapOption<Token>,
    version_tx: watch::Sender<u64>,
    failures_tx: watch::Sender<u64>,
}

impl std::fmt::Debug for TokenCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCell")
            .field(
                "current",
                &self.inner.current.load().as_ref().map(|t| t.version),
            )
            .finish()
    }
}

impl Default for TokenCell {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenCell {
    /// An empty cell.
    pub fn new() -> Self {
        let (version_tx, _) = watch::channel(0);
        let (failures_tx, _) = watch::channel(0);
        Self {
            inner: Arc::new(CellInner {
                current: ArcSwapOption::empty(),
                version_tx,
                failures_tx,
            }),
        }
    }

    /// The token to inject now, if there is a usable one: its header and version.
    /// This is the request path: one atomic load, one refcount increment for the header.
    #[inline]
    pub fn usable(&self, now: Instant) -> Option<(HeaderValue, u64)> {
        let guard = self.inner.current.load();
        match guard.as_deref() {
            Some(t) if t.is_usable(now) => Some((t.header.clone(), t.version)),
            _ => None,
        }
    }

    /// The stored token, usable or not.
    pub fn current(&self) -> Option<Arc<Token>> {
        self.inner.current.load_full()
    }

    /// Store a new token if it is newer than the current one; wakes every waiter.
    /// Returns whether it was stored.
    pub fn store(&self, token: Token) -> bool {
        let version = token.version;
        let new = Arc::new(token);
        let mut stored = false;
        self.inner.current.rcu(|cur| match cur {
            Some(c) if c.version >= version => {
                stored = false;
                cur.clone()
            }
            _ => {
                stored = true;
                Some(new.clone())
            }
        });
        if stored {
            self.inner.version_tx.send_replace(version);
        }
        stored
    }

    /// Record that a renewal attempt failed; wakes every waiter (see [`TokenCell::wait_usable`]).
    pub fn note_failure(&self) {
        self.inner.failures_tx.send_modify(|n| *n += 1);
    }

    /// Wait until a usable token with a version greater than `after` exists, or `timeout`
    /// passes. `after = 0` means any usable token. Failed attempts do not end the wait (a
    /// reload waits through the refresher's retries).
    pub async fn wait_usable(&self, after: u64, timeout: Duration) -> Option<(HeaderValue, u64)> {
        self.wait(after, timeout, false, || ()).await
    }

    /// Like [`TokenCell::wait_usable`], but a renewal attempt that fails after the wait began
    /// ends it too: a request during an outage gets its answer as soon as the attempt it
    /// waited for failed. `subscribed` runs once the waiter listens for both events (so it
    /// cannot miss them): the place to ask the refresher for an attempt.
    pub async fn wait_for_attempt(
        &self,
        after: u64,
        timeout: Duration,
        subscribed: impl FnOnce(),
    ) -> Option<(HeaderValue, u64)> {
        self.wait(after, timeout, true, subscribed).await
    }

    async fn wait(
        &self,
        after: u64,
        timeout: Duration,
        end_on_failure: bool,
        subscribed: impl FnOnce(),
    ) -> Option<(HeaderValue, u64)> {
        let mut versions = self.inner.version_tx.subscribe();
        let mut failures = self.inner.failures_tx.subscribe();
        subscribed();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((h, v)) = self.usable(Instant::now()) {
                if v > after {
                    return Some((h, v));
                }
            }
            tokio::select! {
                // The senders live in `self`: `changed` cannot fail while we hold it.
                changed = versions.changed() => if changed.is_err() { return None },
                changed = failures.changed(), if end_on_failure => if changed.is_ok() { return None },
                () = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(v: u64, life: u64) -> Token {
        Token::new(
            "abc.def",
            v,
            Instant::now(),
            Duration::from_secs(life),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn token_is_unusable_after_expiry_minus_margin() {
        let cell = TokenCell::new();
        assert!(cell.usable(Instant::now()).is_none());
        cell.store(token(1, 10));
        assert!(cell.usable(Instant::now()).is_some());
        tokio::time::advance(Duration::from_millis(8_999)).await;
        assert!(cell.usable(Instant::now()).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cell.usable(Instant::now()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn older_version_never_replaces_newer() {
        let cell = TokenCell::new();
        assert!(cell.store(token(2, 10)));
        assert!(!cell.store(token(1, 100)));
        assert_eq!(cell.current().unwrap().version(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_wakes_on_store_and_times_out_without() {
        let cell = TokenCell::new();
        assert!(
            cell.wait_usable(0, Duration::from_secs(1)).await.is_none(),
            "no token: must time out"
        );
        let c2 = cell.clone();
        let waiter = tokio::spawn(async move { c2.wait_usable(0, Duration::from_secs(5)).await });
        tokio::time::advance(Duration::from_millis(100)).await;
        cell.store(token(7, 10));
        let got = waiter.await.unwrap().expect("woken by store");
        assert_eq!(got.1, 7);
        assert!(got.0.is_sensitive());
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_is_answered_by_a_failed_attempt_not_by_one_before_it() {
        let cell = TokenCell::new();
        // A failure recorded before the wait starts does not end it.
        cell.note_failure();
        let c2 = cell.clone();
        let started = Instant::now();
        let waiter = tokio::spawn(async move {
            let got = c2.wait_for_attempt(0, Duration::from_secs(5), || ()).await;
            (got.is_none(), started.elapsed())
        });
        tokio::time::advance(Duration::from_millis(300)).await;
        cell.note_failure();
        let (none, waited) = waiter.await.unwrap();
        assert!(none);
        assert!(waited < Duration::from_secs(1), "{waited:?}");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = token(1, 10);
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("abc.def"), "{dbg}");
    }
}
