//! A real Redis Cluster per test: 6 redis-server processes (3 masters, 3 replicas) on free
//! ports, joined by `redis-cli --cluster create`, ready once every node says
//! `cluster_state:ok`. Plain or TLS (then the cluster bus and replication use TLS too).

use std::time::{Duration, Instant};

use super::redis_server::{RedisServer, TlsFiles, redis_cli};

/// Six nodes this test owns (killed by PID on drop).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    tls: Option<TlsFiles>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// TLS everywhere; `client` (a certificate with clientAuth, and its key) is what the
    /// nodes present to each other on the cluster bus and for replication.
    pub fn start_tls(files: TlsFiles, client: (String, String)) -> Self {
        Self::launch(Some((files, client)))
    }

    fn launch(tls_client: Option<(TlsFiles, (String, String))>) -> Self {
        let tls = tls_client.as_ref().map(|(t, _)| t.clone());
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "1000",
            // A replica whose master died may be promoted however long it was cut off.
            "--cluster-replica-validity-factor",
            "0",
        ];
        if let Some((_, (cert, key))) = &tls_client {
            args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
            args.extend(["--tls-client-cert-file", cert, "--tls-client-key-file", key]);
        }
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| match &tls {
                None => RedisServer::start_with(&args),
                Some(t) => RedisServer::start_tls_with(t.clone(), &args),
            })
            .collect();
        let cluster = RedisCluster { nodes, tls };
        let mut create: Vec<String> = cluster.cli_prefix();
        create.push("--cluster".into());
        create.push("create".into());
        create.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port)),
        );
        create.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        redis_cli(&create.iter().map(String::as_str).collect::<Vec<_>>());
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &cluster.nodes {
            while !cluster
                .cli(n.port, &["cluster", "info"])
                .contains("cluster_state:ok")
            {
                assert!(Instant::now() < deadline, "cluster did not become ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    fn cli_prefix(&self) -> Vec<String> {
        match &self.tls {
            None => vec![],
            Some(t) => vec![
                "--tls".into(),
                "--cacert".into(),
                t.ca.display().to_string(),
            ],
        }
    }

    /// `redis-cli -p port args…` (TLS when the cluster is), its output; "" if it failed.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let mut argv = self.cli_prefix();
        argv.extend(["-p".to_string(), port.to_string()]);
        argv.extend(args.iter().map(|a| a.to_string()));
        std::process::Command::new("redis-cli")
            .args(&argv)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The `--cache` URLs of every node (seeds).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Index of the master serving `key`'s slot, and of its replica.
    pub fn master_and_replica_of(&self, key: &str) -> (usize, usize) {
        let port = self.nodes[0].port;
        let slot: u16 = self
            .cli(port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT");
        let nodes = self.cli(port, &["cluster", "nodes"]);
        let index = |addr: &str| {
            self.nodes
                .iter()
                .position(|n| addr.starts_with(&format!("127.0.0.1:{}@", n.port)))
                .expect("a node of ours")
        };
        let mut master = None;
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if !f[2].contains("master") {
                continue;
            }
            let serves = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= slot)
                        && b.parse::<u16>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<u16>().is_ok_and(|s| s == slot),
            });
            if serves {
                master = Some((f[0].to_string(), index(f[1])));
            }
        }
        let (id, m) = master.expect("a master serves the slot");
        let r = nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f[3] == id)
            .map(|f| index(f[1]))
            .expect("the master has a replica");
        (m, r)
    }
}
