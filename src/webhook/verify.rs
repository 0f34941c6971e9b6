//! `--webhook-verify`: confirm a `pix` notification with the PSP before the app trusts it.
//!
//! The BCB spec defines no body signature, and anyone holding a Pix key at the same PSP can
//! register *your* URL as their webhook, so a genuine, mTLS-authenticated notification may be
//! about someone else's Pix. The defence is to look each `endToEndId` up with our own
//! credentials (`GET {upstream}/pix/{endToEndId}` through the current generation's client and
//! token) and compare the amount and txid. Lookups are bounded in time and in concurrency.
//! A PSP that could not be asked is not a refutation: with `require`, such a notification
//! gets a 503 (the PSP retries later) instead of being dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::{Instant, timeout_at};

use crate::config::ApiExtras;
use crate::generation::Current;
use crate::proxy::{Slot, UpstreamTarget};

/// PSP lookups in flight at once, over every notification.
const MAX_LOOKUPS: usize = 8;
/// Pix per notification that will be looked up; a larger batch is not confirmed.
const MAX_PIX_PER_NOTIFICATION: usize = 50;
/// Largest PSP answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// What the PSP said about a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The PSP confirmed every Pix (same amount and txid).
    Confirmed,
    /// The PSP answered, and at least one Pix is unknown or differs (or the body names none).
    Refuted,
    /// The PSP could not be asked (no token, timeout, connection failure, 5xx): nothing is
    /// known either way.
    Unknown,
}

/// Confirms notified Pix through the outbound side.
#[derive(Debug, Clone)]
pub struct Verifier {
    current: Current,
    target: UpstreamTarget,
    extras: ApiExtras,
    timeout: Duration,
    require: bool,
    permits: Arc<Semaphore>,
}

impl Verifier {
    /// Look Pix up at `target` with the generation in `current`, each within `timeout`;
    /// `require` drops what is not confirmed.
    pub fn new(
        current: Current,
        target: UpstreamTarget,
        extras: ApiExtras,
        timeout: Duration,
        require: bool,
    ) -> Self {
        Verifier {
            current,
            target,
            extras,
            timeout,
            require,
            permits: Arc::new(Semaphore::new(MAX_LOOKUPS)),
        }
    }

    /// Whether unconfirmed notifications are dropped.
    pub fn require(&self) -> bool {
        self.require
    }

    /// What the PSP says about every Pix in the notification `body` (`{"pix": [...]}`).
    pub async fn confirm(&self, body: &Bytes) -> Verdict {
        let Ok(doc) = serde_json::from_slice::<Value>(body) else {
            return Verdict::Refuted;
        };
        let Some(items) = doc["pix"].as_array() else {
            return Verdict::Refuted;
        };
        if items.is_empty() || items.len() > MAX_PIX_PER_NOTIFICATION {
            return Verdict::Refuted;
        }
        let checks = items.iter().map(|item| self.confirm_one(item));
        let verdicts = futures_util::future::join_all(checks).await;
        if verdicts.contains(&Verdict::Refuted) {
            Verdict::Refuted
        } else if verdicts.contains(&Verdict::Unknown) {
            Verdict::Unknown
        } else {
            Verdict::Confirmed
        }
    }

    async fn confirm_one(&self, item: &Value) -> Verdict {
        let Some(e2e) = item["endToEndId"].as_str().filter(|id| valid_e2e(id)) else {
            return Verdict::Refuted;
        };
        match self.lookup(e2e).await {
            Lookup::Found(record)
                if record["endToEndId"].as_str() == Some(e2e)
                    && same_amount(&record["valor"], &item["valor"])
                    && record["txid"] == item["txid"] =>
            {
                Verdict::Confirmed
            }
            Lookup::Found(_) | Lookup::NotFound => Verdict::Refuted,
            Lookup::Failed => Verdict::Unknown,
        }
    }

    async fn lookup(&self, e2e: &str) -> Lookup {
        let deadline = Instant::now() + self.timeout;
        let Ok(Some((resp, mut slot, _permit))) = timeout_at(deadline, self.ask(e2e)).await else {
            return Lookup::Failed;
        };
        let status = resp.status();
        // Every answer is read to its end within the same bound, so that its HTTP/1.1
        // connection serves the next lookup (dropped before that, the slot closes it). A
        // 404's or an error's body that breaks or stalls costs only that connection: the
        // status gives the verdict.
        let body = timeout_at(
            deadline,
            Limited::new(resp.into_body(), MAX_ANSWER).collect(),
        );
        let record = match body.await {
            Ok(Ok(body)) => {
                slot.finished();
                Some(body.to_bytes())
            }
            _ => None,
        };
        match (status, record) {
            (StatusCode::OK, Some(record)) => serde_json::from_slice(&record)
                .map(Lookup::Found)
                .unwrap_or(Lookup::NotFound),
            (StatusCode::OK, None) => Lookup::Failed,
            (StatusCode::NOT_FOUND, _) => Lookup::NotFound,
            (status, _) => {
                tracing::info!(
                    event = "webhook_verify_lookup_failed",
                    status = status.as_u16(),
                    "the PSP did not answer a Pix lookup"
                );
                Lookup::Failed
            }
        }
    }

    /// `GET /pix/{e2e}` through the current generation: the PSP's answer head, the slot its
    /// HTTP/1.1 connection is held by, and the lookup permit; `None` if it could not be asked.
    async fn ask(&self, e2e: &str) -> Option<(Response<Incoming>, Slot, SemaphorePermit<'_>)> {
        let permit = self.permits.acquire().await.ok()?;
        let generation = self.current.load_full();
        let (auth, _) = generation.cell.wait_usable(0, self.timeout).await?;
        let path = format!("/pix/{e2e}").parse::<Uri>().ok()?;
        let suffix = self.extras.query_suffix();
        let uri = self.target.uri_for(&path, suffix.as_deref()).ok()?;
        let mut req = Request::get(uri)
            .version(Version::HTTP_11)
            .body(Either::Left(Full::new(Bytes::new())))
            .ok()?;
        self.extras.apply(req.headers_mut());
        req.headers_mut().insert(header::AUTHORIZATION, auth);
        let (resp, slot) = generation.client.send(req).await.ok()?;
        Some((resp, slot, permit))
    }
}

/// One PSP lookup.
enum Lookup {
    /// 200 with this record.
    Found(Value),
    /// 404 (or a 200 that is not a Pix record).
    NotFound,
    /// No answer to rely on.
    Failed,
}

/// An `endToEndId` is 32 alphanumerics (BCB); anything else never reaches a URL.
fn valid_e2e(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Amounts are decimal strings ("10.00"); compare them as numbers of cents so "10.0" and
/// "10.00" agree.
fn same_amount(a: &Value, b: &Value) -> bool {
    let cents = |v: &Value| -> Option<i64> {
        let s = v.as_str()?;
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if frac.len() > 2 || int.is_empty() {
            return None;
        }
        let frac = format!("{frac:0<2}");
        Some(int.parse::<i64>().ok()? * 100 + frac.parse::<i64>().ok()?)
    };
    matches!((cents(a), cents(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_compare_as_cents() {
        assert!(same_amount(&"10.00".into(), &"10.0".into()));
        assert!(!same_amount(&"10.00".into(), &"10.01".into()));
        assert!(!same_amount(&Value::Null, &Value::Null));
        assert!(!valid_e2e("E123/../x"));
    }
}
