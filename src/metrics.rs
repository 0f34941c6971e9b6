//! Prometheus metrics (text exposition served by the admin listener) and the
//! suspicious-activity detectors that log at WARN.
//!
//! Owns: every metric name and its bounded label values. Hot-path counters are created
//! once at start-up and kept as handles, so recording a request is a few atomic adds and
//! never a map lookup; no label ever holds a path, a token or anything the app controls.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::time::Instant;

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Latency buckets (seconds) for app requests: PSP calls take tens to hundreds of ms.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// All metrics of one sidecar.
pub struct Metrics {
    registry: Registry,
    by_class: [Counter; 6],
    latency: Histogram,
    upstream_errors: Family<Labels1, Counter>,
    downstream_errors: Family<Labels1, Counter>,
    token_fetch: Family<Labels2, Counter>,
    token_expiry: Gauge<f64, AtomicU64>,
    token_valid: Gauge,
    ready: Gauge,
    unauthorized: Counter,
    forced_refresh: Counter,
    upstream_retries: Counter,
    upstream_connection_waits: Counter,
    cache_ops: Family<Labels2, Counter>,
    cache_lock: Family<Labels1, Counter>,
    cache_decrypt_failures: Counter,
    cache_reconnects: Family<Labels1, Counter>,
    cache_primary: Family<Vec<(&'static str, String)>, Gauge>,
    cert_expiry: Gauge<f64, AtomicU64>,
    tls_reload: Family<Labels1, Counter>,
    webhook_requests: Family<Labels1, Counter>,
    webhook_latency: Histogram,
    webhook_cert_expiry: Gauge<f64, AtomicU64>,
    fetch_spike: Burst,
    unauthorized_burst: Burst,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric under the `pix_auth_proxy_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pix_auth_proxy");
        let requests: Family<Labels1, Counter> = Family::default();
        registry.register(
            "requests",
            "Requests from the app, by response status class",
            requests.clone(),
        );
        let by_class = CLASSES.map(|c| requests.get_or_create(&[("class", c)]).clone());
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "request_duration",
            "Time from the app's request to the response headers",
            Unit::Seconds,
            latency.clone(),
        );
        let upstream_errors = Family::<Labels1, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests the sidecar answered itself because of the PSP or its token endpoint, by problem type",
            upstream_errors.clone(),
        );
        let downstream_errors = Family::<Labels1, Counter>::default();
        registry.register(
            "downstream_errors",
            "Requests the sidecar refused because of the app's own request, by problem type",
            downstream_errors.clone(),
        );
        let token_fetch = Family::<Labels2, Counter>::default();
        registry.register(
            "token_fetch",
            "Token endpoint requests by result and reason",
            token_fetch.clone(),
        );
        let token_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "token_expiry_timestamp_seconds",
            "Unix time at which the current token expires",
            token_expiry.clone(),
        );
        let token_valid = Gauge::default();
        registry.register(
            "token_valid",
            "1 if a usable token is held, else 0",
            token_valid.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 if /readyz answers 200 (token and identity loaded, not shutting down)",
            ready.clone(),
        );
        let unauthorized = Counter::default();
        registry.register(
            "upstream_unauthorized",
            "401 responses from the PSP",
            unauthorized.clone(),
        );
        let forced_refresh = Counter::default();
        registry.register(
            "forced_refresh",
            "Token renewals forced by a PSP 401",
            forced_refresh.clone(),
        );
        let upstream_retries = Counter::default();
        registry.register(
            "upstream_retries",
            "Requests sent again because the PSP had not processed them (HTTP/2 GOAWAY, REFUSED_STREAM; an HTTP/1.1 connection that closed before taking the request)",
            upstream_retries.clone(),
        );
        let upstream_connection_waits = Counter::default();
        registry.register(
            "upstream_connection_waits",
            "Requests that waited for a free HTTP/1.1 connection to the PSP (--upstream-max-connections in use)",
            upstream_connection_waits.clone(),
        );
        let cache_ops = Family::<Labels2, Counter>::default();
        registry.register(
            "cache_ops",
            "Shared cache operations by operation and result",
            cache_ops.clone(),
        );
        let cache_lock = Family::<Labels1, Counter>::default();
        registry.register(
            "cache_lock",
            "Shared cache renewal lock attempts by result",
            cache_lock.clone(),
        );
        let cache_decrypt_failures = Counter::default();
        registry.register(
            "cache_decrypt_failures",
            "Shared cache values that failed to decrypt (tampering or wrong key)",
            cache_decrypt_failures.clone(),
        );
        let cache_reconnects = Family::<Labels1, Counter>::default();
        registry.register(
            "cache_reconnects",
            "Shared cache connections rebuilt, by reason (readonly, masterdown, loading, timeout, disconnected, switch_master)",
            cache_reconnects.clone(),
        );
        let cache_primary = Family::<Vec<(&'static str, String)>, Gauge>::default();
        registry.register(
            "cache_primary",
            "1 for the cache mode and the node this replica writes to now (cluster: its seeds)",
            cache_primary.clone(),
        );
        let cert_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "client_cert_expiry_timestamp_seconds",
            "Unix time at which the client certificate expires",
            cert_expiry.clone(),
        );
        let tls_reload = Family::<Labels1, Counter>::default();
        registry.register(
            "tls_reload",
            "Identity reloads by result",
            tls_reload.clone(),
        );
        let webhook_requests = Family::<Labels1, Counter>::default();
        registry.register(
            "webhook_requests",
            "Webhook calls from the PSP by result (forwarded, no_cert, untrusted, identity_mismatch, forbidden, bad_request, app_error, app_timeout; verified/unverified for --webhook-verify)",
            webhook_requests.clone(),
        );
        let webhook_latency = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "webhook_request_duration",
            "Time from a webhook call's request head to the answer to the PSP",
            Unit::Seconds,
            webhook_latency.clone(),
        );
        let webhook_cert_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "webhook_server_cert_expiry_timestamp_seconds",
            "Unix time at which the webhook listener's server certificate expires",
            webhook_cert_expiry.clone(),
        );
        Self {
            registry,
            by_class,
            latency,
            upstream_errors,
            downstream_errors,
            token_fetch,
            token_expiry,
            token_valid,
            ready,
            unauthorized,
            forced_refresh,
            upstream_retries,
            upstream_connection_waits,
            cache_ops,
            cache_lock,
            cache_decrypt_failures,
            cache_reconnects,
            cache_primary,
            cert_expiry,
            tls_reload,
            webhook_requests,
            webhook_latency,
            webhook_cert_expiry,
            fetch_spike: Burst::new(10, Duration::from_secs(60)),
            unauthorized_burst: Burst::new(20, Duration::from_secs(10)),
        }
    }

    /// Count one webhook call by result (a fixed set of labels, see the metric's help).
    pub fn webhook_request(&self, result: &'static str) {
        self.webhook_requests
            .get_or_create(&[("result", result)])
            .inc();
    }

    /// Record the time a webhook call took.
    pub fn webhook_duration(&self, elapsed: Duration) {
        self.webhook_latency.observe(elapsed.as_secs_f64());
    }

    /// The webhook server certificate's end of validity.
    pub fn set_webhook_cert_expiry(&self, not_after: SystemTime) {
        self.webhook_cert_expiry.set(unix(not_after));
    }

    /// Record one app request.
    #[inline]
    pub fn request(&self, status: u16, elapsed: Duration) {
        let i = match status {
            100..=599 => (status / 100 - 1) as usize,
            _ => 5,
        };
        self.by_class[i].inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// A request the sidecar answered itself because of the PSP side, by problem slug.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&[("kind", kind)]).inc();
    }

    /// A request the sidecar refused because of the app's own request, by problem slug.
    pub fn downstream_error(&self, kind: &'static str) {
        self.downstream_errors
            .get_or_create(&[("kind", kind)])
            .inc();
    }

    /// A successful token fetch.
    pub fn token_fetched(&self, expires_at: SystemTime, reason: &'static str) {
        self.token_fetch
            .get_or_create(&[("result", "success"), ("reason", reason)])
            .inc();
        self.token_expiry.set(unix(expires_at));
        self.token_valid.set(1);
        if let Some(n) = self.fetch_spike.hit() {
            tracing::warn!(
                event = "token_fetch_spike",
                fetches = n,
                window_s = 60,
                "unusually many token fetches: check for 401 loops, clock skew or a stampede"
            );
        }
    }

    /// A failed token fetch with its reason label.
    pub fn token_fetch_failed(&self, reason: &'static str) {
        self.token_fetch
            .get_or_create(&[("result", "failure"), ("reason", reason)])
            .inc();
        if let Some(n) = self.fetch_spike.hit() {
            tracing::warn!(
                event = "token_fetch_spike",
                fetches = n,
                window_s = 60,
                "unusually many token fetches"
            );
        }
    }

    /// Whether a usable token is held (set by the refresher and at scrape time).
    pub fn set_token_valid(&self, valid: bool) {
        self.token_valid.set(i64::from(valid));
    }

    /// Readiness as `/readyz` would answer now (set at scrape time).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// A 401 from the PSP.
    pub fn unauthorized(&self) {
        self.unauthorized.inc();
        if let Some(n) = self.unauthorized_burst.hit() {
            tracing::warn!(
                event = "unauthorized_burst",
                count = n,
                window_s = 10,
                "the PSP is rejecting many requests with 401: revoked credentials or a certificate it does not bind to the token?"
            );
        }
    }

    /// A renewal forced by a 401.
    pub fn forced_refresh(&self) {
        self.forced_refresh.inc();
    }

    /// A request sent again because the PSP had not processed it.
    pub fn upstream_retry(&self) {
        self.upstream_retries.inc();
    }

    /// A request that found every HTTP/1.1 connection slot taken and waited for one.
    pub fn upstream_connection_wait(&self) {
        self.upstream_connection_waits.inc();
    }

    /// A shared-cache operation.
    pub fn cache_op(&self, op: &'static str, result: &'static str) {
        self.cache_ops
            .get_or_create(&[("op", op), ("result", result)])
            .inc();
    }

    /// A shared-cache lock attempt.
    pub fn cache_lock(&self, result: &'static str) {
        self.cache_lock.get_or_create(&[("result", result)]).inc();
    }

    /// A shared-cache connection rebuilt, and why.
    pub fn cache_reconnect(&self, reason: &'static str) {
        self.cache_reconnects
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// The shared cache now writes to `addr` (in `mode`): the one series, set to 1.
    pub fn set_cache_primary(&self, mode: &'static str, addr: &str) {
        self.cache_primary.clear();
        self.cache_primary
            .get_or_create(&vec![("mode", mode.to_owned()), ("addr", addr.to_owned())])
            .set(1);
    }

    /// A shared-cache value that failed to decrypt.
    pub fn cache_decrypt_failure(&self) {
        self.cache_decrypt_failures.inc();
    }

    /// The client certificate's expiry.
    pub fn set_cert_expiry(&self, not_after: SystemTime) {
        self.cert_expiry.set(unix(not_after));
    }

    /// An identity reload attempt.
    pub fn tls_reload(&self, result: &'static str) {
        self.tls_reload.get_or_create(&[("result", result)]).inc();
    }

    /// The text exposition (OpenMetrics format, which Prometheus scrapes natively).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Counts events in a sliding window and reports (once per window) when a threshold is
/// crossed: the basis of the "suspicious activity" warnings.
struct Burst {
    threshold: usize,
    window: Duration,
    state: Mutex<(Vec<Instant>, Option<Instant>)>,
    total: AtomicU64,
}

impl Burst {
    fn new(threshold: usize, window: Duration) -> Self {
        Self {
            threshold,
            window,
            state: Mutex::new((Vec::new(), None)),
            total: AtomicU64::new(0),
        }
    }

    /// Record one event; `Some(count)` when the window now holds more than the threshold
    /// and no warning was given during the last window.
    fn hit(&self) -> Option<usize> {
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (events, last_warned) = &mut *guard;
        events.retain(|t| now.saturating_duration_since(*t) < self.window);
        events.push(now);
        let quiet = last_warned.is_none_or(|w| now.saturating_duration_since(w) >= self.window);
        if events.len() > self.threshold && quiet {
            *last_warned = Some(now);
            Some(events.len())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_prefixed_names_units_and_bounded_labels() {
        let m = Metrics::new();
        m.request(200, Duration::from_millis(3));
        m.request(503, Duration::from_millis(1));
        m.upstream_error("token-unavailable");
        m.token_fetch_failed("timeout");
        let text = m.encode();
        for needle in [
            "pix_auth_proxy_requests_total{class=\"2xx\"} 1",
            "pix_auth_proxy_requests_total{class=\"5xx\"} 1",
            "pix_auth_proxy_request_duration_seconds_count 2",
            "pix_auth_proxy_upstream_errors_total{kind=\"token-unavailable\"} 1",
            "pix_auth_proxy_token_fetch_total{result=\"failure\",reason=\"timeout\"} 1",
            "pix_auth_proxy_cache_decrypt_failures_total 0",
            "pix_auth_proxy_token_valid 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_warns_once_per_window_above_threshold() {
        let b = Burst::new(3, Duration::from_secs(10));
        assert_eq!((0..3).filter_map(|_| b.hit()).count(), 0);
        assert_eq!(b.hit(), Some(4));
        assert_eq!(b.hit(), None, "already warned in this window");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(b.hit(), None, "old events left the window");
    }
}
