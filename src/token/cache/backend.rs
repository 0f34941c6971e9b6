//! Connections to the shared cache, one way per `--cache-mode`, and their repair.
//!
//! Owns: building the clients (ACL user, password, rustls TLS with the `--cache-ca`), the
//! one live connection ([`Conn`]: a multiplexed connection to the primary, or the `redis`
//! crate's async cluster connection), finding the primary (standalone: the URL's name,
//! resolved again on every connect, so a DNS failover is followed; sentinel: asked of the
//! sentinels), and rebuilding the connection in the background when the server turned
//! replica (`READONLY`), lost its master (`MASTERDOWN`), is loading, timed out or went away,
//! or (sentinel mode) when a sentinel announces `+switch-master`.
//! Rebuilds run on their own task, at most one at a time and at most one per
//! [`RECONNECT_INTERVAL`] after a success: a request never waits for one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::{AsyncConnectionConfig, ConnectionInfo, ErrorKind, ServerErrorKind, Value};
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{CacheConfig, CacheError, CacheMode};

mod nodes;
mod sentinel;
use crate::metrics::Metrics;
pub use nodes::Conn;
use nodes::{Tls, is_tls, node_client, parse, with_auth};

/// The shortest time between two rebuilds (and the first retry delay after a failed one).
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);
/// Retries of a failed rebuild back off up to this.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

/// Where the primary is found.
enum Target {
    Standalone(redis::Client),
    Sentinel {
        sentinels: Vec<redis::Client>,
        master: String,
        /// The data nodes' settings (user, password, db); the address is filled in from the
        /// sentinels' answer.
        data: ConnectionInfo,
        /// Whether the data nodes speak TLS (`--cache-data-tls`, else as the sentinels).
        data_tls: bool,
        tls: Tls,
    },
    Cluster {
        client: ClusterClient,
        seeds: String,
    },
}

/// The connection in use and what it is connected to.
#[derive(Clone)]
struct Live {
    conn: Conn,
    /// For pub/sub (not in cluster mode: there waiting replicas re-read).
    pubsub: Option<redis::Client>,
    primary: String,
}

/// The cache's connection, repaired in the background.
pub struct Backend {
    mode: CacheMode,
    target: Target,
    timeout: Duration,
    live: watch::Sender<Option<Live>>,
    rebuilding: AtomicBool,
    last_rebuilt: Mutex<Option<Instant>>,
    /// Sentinel mode: whether the `+switch-master` watcher runs.
    watching: AtomicBool,
    /// Wakes a rebuild waiting to retry (a sentinel announced the new master).
    kick: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
}

/// Why a failure calls for a new connection (`None`: the connection is fine, the command
/// was not). Also the `reason` label of `cache_reconnects_total`.
pub fn reconnect_reason(e: &CacheError) -> Option<&'static str> {
    match e {
        CacheError::Timeout(_) => Some("timeout"),
        CacheError::Redis(e) => match e.kind() {
            ErrorKind::Server(ServerErrorKind::ReadOnly) => Some("readonly"),
            ErrorKind::Server(ServerErrorKind::MasterDown) => Some("masterdown"),
            ErrorKind::Server(ServerErrorKind::BusyLoading) => Some("loading"),
            _ if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() => {
                Some("disconnected")
            }
            _ => None,
        },
        _ => None,
    }
}

impl Backend {
    /// Build the clients; nothing connects yet.
    pub fn new(config: &CacheConfig, metrics: Arc<Metrics>) -> Result<Self, CacheError> {
        let read = |p: &std::path::Path, flag: &str| {
            std::fs::read(p).map_err(|e| CacheError::Setup(format!("{flag} {}: {e}", p.display())))
        };
        let tls = Tls {
            root: config
                .ca
                .as_deref()
                .map(|p| read(p, "--cache-ca"))
                .transpose()?,
            client: match &config.client_identity {
                Some((cert, key)) => Some((read(cert, "--cache-cert")?, read(key, "--cache-key")?)),
                None => None,
            },
        };
        let infos = config
            .urls
            .iter()
            .map(|u| parse(u.expose_secret(), "--cache"))
            .collect::<Result<Vec<_>, _>>()?;
        let first = infos
            .first()
            .cloned()
            .ok_or_else(|| CacheError::Setup("--cache is required".into()))?;
        let user = config.username.as_deref();
        let password = config.password.as_ref();
        let target = match config.mode {
            CacheMode::Standalone => {
                Target::Standalone(node_client(with_auth(first, user, password), &tls)?)
            }
            CacheMode::Cluster => {
                let seeds = infos
                    .iter()
                    .map(|i| i.addr().to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                let tls_on = is_tls(&first);
                let nodes: Vec<ConnectionInfo> = infos
                    .into_iter()
                    .map(|i| with_auth(i, user, password))
                    .collect();
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(config.op_timeout)
                    .response_timeout(config.op_timeout)
                    .retries(2)
                    .min_retry_wait(20)
                    .max_retry_wait(200);
                if let Some(u) = user {
                    builder = builder.username(u);
                }
                if let Some(p) = password {
                    builder = builder.password(p.expose_secret());
                }
                if tls_on {
                    builder = builder.certs(tls.certs());
                }
                Target::Cluster {
                    client: builder.build()?,
                    seeds,
                }
            }
            CacheMode::Sentinel => {
                let master = config.sentinel_master.clone().ok_or_else(|| {
                    CacheError::Setup("--cache-sentinel-master is required in sentinel mode".into())
                })?;
                let sentinels = infos
                    .iter()
                    .map(|i| {
                        node_client(
                            with_auth(
                                i.clone(),
                                config.sentinel_username.as_deref(),
                                config.sentinel_password.as_ref(),
                            ),
                            &tls,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Target::Sentinel {
                    sentinels,
                    master,
                    data_tls: config.data_tls.unwrap_or_else(|| is_tls(&first)),
                    data: with_auth(first, user, password),
                    tls,
                }
            }
        };
        Ok(Self {
            mode: config.mode,
            target,
            timeout: config.op_timeout,
            live: watch::channel(None).0,
            rebuilding: AtomicBool::new(false),
            last_rebuilt: Mutex::new(None),
            watching: AtomicBool::new(false),
            kick: Arc::new(tokio::sync::Notify::new()),
            metrics,
        })
    }

    /// The mode, for logs and `check`.
    pub fn mode(&self) -> CacheMode {
        self.mode
    }

    /// The node written to now (cluster: the seeds), if connected.
    pub fn primary(&self) -> Option<String> {
        self.live.borrow().as_ref().map(|l| l.primary.clone())
    }

    /// The connection to use now. Without one, wait (bounded by the cache timeout) for a
    /// rebuild in flight, or fail at once so the caller falls back to a local fetch.
    pub async fn conn(self: &Arc<Self>) -> Result<Conn, CacheError> {
        let mut rx = self.live.subscribe();
        if let Some(live) = rx.borrow().as_ref() {
            return Ok(live.conn.clone());
        }
        if !self.reconnect("connect") {
            return Err(CacheError::NotConnected);
        }
        match tokio::time::timeout(self.timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(live)) => Ok(live.as_ref().expect("waited for Some").conn.clone()),
            _ => Err(CacheError::Timeout(self.timeout)),
        }
    }

    /// A client for pub/sub on the current primary (none in cluster mode).
    pub fn pubsub_client(&self) -> Option<redis::Client> {
        self.live.borrow().as_ref().and_then(|l| l.pubsub.clone())
    }

    /// React to a failed call: rebuild the connection if the failure says it is unusable.
    pub fn failed(self: &Arc<Self>, e: &CacheError) {
        if let Some(reason) = reconnect_reason(e) {
            self.reconnect(reason);
        }
    }

    /// After a failure that started a rebuild (not a timeout: that already cost the cache
    /// timeout), wait for it, bounded by the cache timeout. True when a connection is there
    /// to try again on: the renewal then goes on through the new primary instead of
    /// fetching locally, which is what keeps the fetch count flat across a failover.
    pub async fn settle(&self, e: &CacheError) -> bool {
        if !matches!(
            reconnect_reason(e),
            Some("readonly" | "masterdown" | "loading" | "disconnected")
        ) {
            return false;
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            if !self.rebuilding.load(Ordering::SeqCst) && self.live.borrow().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Start a rebuild unless one is running (returns true then too) or the last one
    /// succeeded less than [`RECONNECT_INTERVAL`] ago (returns false).
    fn reconnect(self: &Arc<Self>, reason: &'static str) -> bool {
        if self.rebuilding.swap(true, Ordering::SeqCst) {
            if reason == "switch_master" {
                // The rebuild in flight may be backing off: the new master is known now.
                self.kick.notify_one();
            }
            return true;
        }
        let recent = self
            .last_rebuilt
            .lock()
            .expect("not poisoned")
            .is_some_and(|t| t.elapsed() < RECONNECT_INTERVAL);
        if recent && self.live.borrow().is_some() {
            self.rebuilding.store(false, Ordering::SeqCst);
            return false;
        }
        if reason != "connect" {
            self.metrics.cache_reconnect(reason);
            tracing::info!(
                event = "cache_reconnecting",
                mode = self.mode.as_str(),
                reason,
                "rebuilding the shared cache connection in the background"
            );
        }
        if reason == "disconnected" {
            // A dropped connection answers nothing: fail fast (local fetch) until rebuilt.
            self.live.send_replace(None);
        }
        let (weak, kick) = (Arc::downgrade(self), self.kick.clone());
        tokio::spawn(async move {
            let mut delay = RECONNECT_INTERVAL;
            let mut warned = false;
            loop {
                let Some(me) = weak.upgrade() else { return };
                match me.connect().await {
                    Ok(live) => {
                        tracing::info!(
                            event = "cache_connected",
                            mode = me.mode.as_str(),
                            primary = %live.primary,
                            "shared cache connected"
                        );
                        me.metrics
                            .set_cache_primary(me.mode.as_str(), &live.primary);
                        me.live.send_replace(Some(live));
                        *me.last_rebuilt.lock().expect("not poisoned") = Some(Instant::now());
                        me.rebuilding.store(false, Ordering::SeqCst);
                        me.watch_sentinels();
                        return;
                    }
                    Err(e) => {
                        if !warned {
                            tracing::warn!(
                                event = "cache_connect_failed",
                                mode = me.mode.as_str(),
                                error = %e,
                                "cannot reach the shared cache; fetching locally meanwhile, retrying"
                            );
                            warned = true;
                        }
                    }
                }
                drop(me);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = kick.notified() => {}
                }
                delay = (delay * 2).min(RECONNECT_MAX_DELAY);
            }
        });
        true
    }

    async fn connect(&self) -> Result<Live, CacheError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match &self.target {
            Target::Standalone(client) => {
                let conn = bounded(
                    self.timeout,
                    client.get_multiplexed_async_connection_with_config(&config),
                )
                .await?;
                Ok(Live {
                    conn: Conn::Node(conn),
                    pubsub: Some(client.clone()),
                    primary: client.get_connection_info().addr().to_string(),
                })
            }
            Target::Sentinel {
                sentinels,
                master,
                data,
                data_tls,
                tls,
            } => {
                let addr = self
                    .ask_sentinels(sentinels, master, *data_tls, &config)
                    .await?;
                let client = node_client(data.clone().set_addr(addr), tls)?;
                let mut conn = bounded(
                    self.timeout,
                    client.get_multiplexed_async_connection_with_config(&config),
                )
                .await?;
                // The sentinels' answer may lag a failover: only a primary will do.
                let role: Vec<Value> = match tokio::time::timeout(
                    self.timeout,
                    redis::cmd("ROLE").query_async(&mut conn),
                )
                .await
                {
                    Ok(r) => r?,
                    Err(_) => return Err(CacheError::Timeout(self.timeout)),
                };
                let is_master = matches!(role.first(), Some(Value::BulkString(b)) if b == b"master")
                    || matches!(role.first(), Some(Value::SimpleString(s)) if s == "master");
                if !is_master {
                    return Err(CacheError::Setup(format!(
                        "{} is not a primary yet",
                        client.get_connection_info().addr()
                    )));
                }
                Ok(Live {
                    conn: Conn::Node(conn),
                    pubsub: Some(client.clone()),
                    primary: client.get_connection_info().addr().to_string(),
                })
            }
            Target::Cluster { client, seeds } => {
                let conn = bounded(self.timeout, client.get_async_connection()).await?;
                Ok(Live {
                    conn: Conn::Cluster(conn),
                    pubsub: None,
                    primary: seeds.clone(),
                })
            }
        }
    }
}

async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, CacheError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(CacheError::Redis),
        Err(_) => Err(CacheError::Timeout(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str) -> CacheError {
        match redis::parse_redis_value(format!("-{code} message\r\n").as_bytes()).unwrap() {
            Value::ServerError(e) => CacheError::Redis(e.into()),
            v => panic!("{code} parsed as {v:?}"),
        }
    }

    #[test]
    fn failover_answers_and_lost_connections_call_for_a_rebuild_and_others_do_not() {
        assert_eq!(
            reconnect_reason(&server_error("READONLY")),
            Some("readonly")
        );
        assert_eq!(
            reconnect_reason(&server_error("MASTERDOWN")),
            Some("masterdown")
        );
        assert_eq!(reconnect_reason(&server_error("LOADING")), Some("loading"));
        assert_eq!(
            reconnect_reason(&CacheError::Timeout(Duration::from_millis(1))),
            Some("timeout")
        );
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(
            reconnect_reason(&CacheError::Redis(io)),
            Some("disconnected")
        );
        assert_eq!(reconnect_reason(&server_error("NOPERM")), None);
        assert_eq!(reconnect_reason(&server_error("ERR")), None);
        assert_eq!(
            reconnect_reason(&CacheError::LockWait(Duration::ZERO)),
            None
        );
    }
}
