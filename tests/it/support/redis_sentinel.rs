//! A real Sentinel deployment per test: one master, one replica and three sentinels
//! (`redis-server --sentinel` with a config file each), on free ports; ready once every
//! sentinel names the master, knows the replica and reaches quorum. Killed by PID.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::redis_server::{RedisServer, TlsFiles, free_port, wait_until};

/// The name the sentinels monitor.
pub const MASTER_NAME: &str = "pixmaster";

struct Sentinel {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Master, replica and sentinels this test owns.
pub struct RedisSentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<Sentinel>,
}

async fn ask(port: u16, password: Option<&str>, args: &[&str]) -> Option<redis::Value> {
    let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
    let client = redis::Client::open(format!("redis://{auth}127.0.0.1:{port}/")).ok()?;
    let mut conn = tokio::time::timeout(
        Duration::from_millis(500),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.ok()
}

impl RedisSentinels {
    pub async fn start() -> Self {
        Self::start_with_passwords(None, None).await
    }

    /// Data nodes with `requirepass data`, sentinels with `requirepass sentinel` (each
    /// password different, as `--cache-password-file` and `--cache-sentinel-password-file`).
    pub async fn start_with_passwords(data: Option<&str>, sentinel: Option<&str>) -> Self {
        Self::start_with(data, sentinel, None).await
    }

    /// Data nodes speaking only TLS (`files`, replication over TLS too), sentinels plain
    /// TCP reaching them over TLS: the sentinels' and the data nodes' TLS settings differ.
    pub async fn start_with_tls_data(files: TlsFiles) -> Self {
        Self::start_with(None, None, Some(files)).await
    }

    async fn start_with(data: Option<&str>, sentinel: Option<&str>, tls: Option<TlsFiles>) -> Self {
        let mut auth: Vec<&str> = match data {
            Some(p) => vec!["--requirepass", p, "--masterauth", p],
            None => vec![],
        };
        if tls.is_some() {
            auth.extend(["--tls-replication", "yes"]);
        }
        let start = |args: &[&str]| match &tls {
            Some(files) => RedisServer::start_tls_with(files.clone(), args),
            None => RedisServer::start_with(args),
        };
        let master = start(&auth);
        let mport = master.port.to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &mport];
        replica_args.extend(&auth);
        let replica = start(&replica_args);
        // Plain data nodes: wait for the replica's sync here; TLS ones: the sentinels'
        // quorum and replica list below are the proof.
        wait_until("the replica syncs", Duration::from_secs(10), || async {
            if tls.is_some() {
                return true;
            }
            let got = ask(replica.port, data, &["INFO", "replication"]).await;
            let text = match got {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                Some(redis::Value::VerbatimString { text, .. }) => text,
                _ => String::new(),
            };
            text.contains("master_link_status:up")
        })
        .await;
        let mut extra_conf = String::new();
        if let Some(p) = data {
            extra_conf.push_str(&format!("sentinel auth-pass {MASTER_NAME} {p}\n"));
        }
        if let Some(p) = sentinel {
            extra_conf.push_str(&format!("requirepass {p}\nsentinel sentinel-pass {p}\n"));
        }
        if let Some(t) = &tls {
            // Plain sentinel port; TLS towards the master and replicas.
            extra_conf.push_str(&format!(
                "tls-replication yes\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n",
                t.cert.display(),
                t.key.display(),
                t.ca.display()
            ));
        }
        let sentinels: Vec<Sentinel> = (0..3)
            .map(|_| {
                let port = free_port();
                let dir = tempfile::tempdir().unwrap();
                let conf = dir.path().join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 5000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n{extra_conf}",
                        dir.path().display(),
                        master.port
                    ),
                )
                .unwrap();
                let child = Command::new("redis-server")
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn redis-server --sentinel");
                Sentinel {
                    child: Some(child),
                    port,
                    _dir: dir,
                }
            })
            .collect();
        let replica_port = replica.port.to_string();
        for s in &sentinels {
            wait_until(
                "a sentinel knows the replica and reaches quorum",
                Duration::from_secs(30),
                || async {
                    let quorum = matches!(ask(s.port, sentinel, &["SENTINEL", "CKQUORUM", MASTER_NAME]).await,
                    Some(redis::Value::SimpleString(ref ok)) if ok.contains("3 usable"));
                    let replicas = ask(s.port, sentinel, &["SENTINEL", "REPLICAS", MASTER_NAME]).await;
                    quorum && format!("{replicas:?}").contains(&replica_port)
                },
            )
            .await;
        }
        RedisSentinels {
            master,
            replica,
            sentinels,
        }
    }

    /// The `--cache` URLs: the sentinels.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }
}
