//! `check`'s round trip to the shared cache: PING, a probe key written and read back under
//! the prefix, a probe lock taken and released; each step reported in words, an ACL refusal
//! explained with the rule the user needs.

use super::protocol::{Keys, RELEASE_LOCK};
use super::{CacheError, SharedCache};

/// One step of [`SharedCache::round_trip`], in words.
#[derive(Debug)]
pub struct ProbeStep {
    /// What was tried.
    pub step: &'static str,
    /// What happened: a description, or the error in words.
    pub outcome: Result<String, String>,
}

/// The commands the sidecar sends (scripts included), for an ACL user's rule.
pub const ACL_COMMANDS: &str = "+ping +hmget +hget +hset +del +pexpire +get +set +eval +publish +subscribe +unsubscribe +role +cluster|slots +cluster|shards +readonly";

impl SharedCache {
    /// One round trip for `check`: connect, PING, write and read back a probe key under the
    /// prefix, take and release a probe lock. Stops at the first failing step.
    pub async fn round_trip(&self) -> Vec<ProbeStep> {
        let mut steps = Vec::new();
        let probe = Keys::probe(&self.prefix, &self.owner);
        let explain = |e: CacheError| match &e {
            CacheError::Redis(r)
                if r.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) =>
            {
                format!(
                    "{e}: the ACL user must be allowed ~{p}* &{p}* and {ACL_COMMANDS} (is --cache-key-prefix the prefix the ACL allows?)",
                    p = self.prefix
                )
            }
            _ => e.to_string(),
        };
        let mut ping = redis::cmd("PING");
        ping.arg("pix-auth-proxy");
        match self.call::<String>("ping", &ping).await {
            Ok(_) => {
                let (mode, primary) = self.primary();
                steps.push(ProbeStep {
                    step: "PING",
                    outcome: Ok(format!(
                        "{} mode, answered by {}",
                        mode.as_str(),
                        primary.unwrap_or_else(|| "?".into())
                    )),
                });
            }
            Err(e) => {
                steps.push(ProbeStep {
                    step: "PING",
                    outcome: Err(explain(e)),
                });
                return steps;
            }
        }
        let mut set = redis::cmd("SET");
        set.arg(&probe.value).arg(&self.owner).arg("PX").arg(10_000);
        let mut get = redis::cmd("GET");
        get.arg(&probe.value);
        let written = async {
            self.call::<()>("probe_write", &set).await?;
            self.call::<Option<String>>("probe_read", &get).await
        }
        .await;
        let ok = match written {
            Ok(Some(v)) if v == self.owner => Ok(format!("wrote and read back {}", probe.value)),
            Ok(_) => Err(format!("{} read back something else", probe.value)),
            Err(e) => Err(explain(e)),
        };
        let failed = ok.is_err();
        steps.push(ProbeStep {
            step: "write/read a probe key",
            outcome: ok,
        });
        if failed {
            return steps;
        }
        let mut lock = redis::cmd("SET");
        lock.arg(&probe.lock)
            .arg(&self.owner)
            .arg("NX")
            .arg("PX")
            .arg(10_000);
        let mut release = redis::cmd("EVAL");
        release
            .arg(RELEASE_LOCK)
            .arg(1)
            .arg(&probe.lock)
            .arg(&self.owner)
            .arg(0);
        let mut del = redis::cmd("DEL");
        del.arg(&probe.value);
        let locked = async {
            let got: Option<String> = self.call("probe_lock", &lock).await?;
            let released: i64 = self.call("probe_unlock", &release).await?;
            let _: i64 = self.call("probe_delete", &del).await?;
            Ok::<_, CacheError>((got.is_some(), released == 1))
        }
        .await;
        steps.push(ProbeStep {
            step: "lock acquire/release",
            outcome: match locked {
                Ok((true, true)) => Ok(format!(
                    "took and released {} (SET NX PX, Lua compare-and-delete)",
                    probe.lock
                )),
                Ok((got, released)) => Err(format!(
                    "lock taken: {got}, released: {released} (expected both)"
                )),
                Err(e) => Err(explain(e)),
            },
        });
        steps
    }
}
