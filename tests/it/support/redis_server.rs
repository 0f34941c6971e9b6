//! A real `redis-server` process per test, on a free port, started and killed by PID.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server this test owns.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    tls: Option<TlsFiles>,
    extra: Vec<String>,
}

#[derive(Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether redis-server is installed; in CI its absence is a failure, not a skip.
pub fn available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("redis-server is not installed, and CI is set: .ci/run must install it");
    }
    if !found {
        eprintln!("SKIPPED: redis-server is not installed");
    }
    found
}

impl RedisServer {
    pub fn start() -> Self {
        Self::launch(None)
    }

    pub fn start_tls(files: TlsFiles) -> Self {
        Self::launch(Some(files))
    }

    /// A TLS server with extra `redis-server` arguments.
    pub fn start_tls_with(files: TlsFiles, extra: &[&str]) -> Self {
        Self::launch_with(Some(files), extra)
    }

    /// A plain server with extra `redis-server` arguments (`--replicaof`, ACL users, …).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::launch_with(None, extra)
    }

    fn launch(tls: Option<TlsFiles>) -> Self {
        Self::launch_with(tls, &[])
    }

    fn launch_with(tls: Option<TlsFiles>, extra: &[&str]) -> Self {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            tls,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]);
        cmd.arg("--dir").arg(self.dir.path());
        match &self.tls {
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Some(t) => {
                cmd.args([
                    "--port",
                    "0",
                    "--tls-port",
                    &self.port.to_string(),
                    "--tls-auth-clients",
                    "no",
                ]);
                cmd.arg("--tls-cert-file").arg(&t.cert);
                cmd.arg("--tls-key-file").arg(&t.key);
                cmd.arg("--tls-ca-cert-file").arg(&t.ca);
            }
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        // Ready when the port accepts connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}/0", self.port),
            Some(_) => format!("rediss://127.0.0.1:{}/0", self.port),
        }
    }

    /// Kill the server process (SIGKILL, by its PID).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port (empty: it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client for inspecting or tampering with the server from the test.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = match &self.tls {
            None => redis::Client::open(self.url()).unwrap(),
            Some(t) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&t.ca).unwrap()),
                },
            )
            .unwrap(),
        };
        client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `redis-cli` with `args`, returning its standard output (panics on failure).
pub fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .expect("run redis-cli (Debian: redis-tools, installed with redis-server)");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `probe` every 50 ms until it is true; panic with `what` after `limit`. Returns how
/// long it took.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    while !probe().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// `INFO <section>` of the server at `port`, or "" if it does not answer.
pub async fn info(port: u16, section: &str) -> String {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
        return String::new();
    };
    let Ok(Ok(mut conn)) = tokio::time::timeout(
        Duration::from_millis(500),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return String::new();
    };
    redis::cmd("INFO")
        .arg(section)
        .query_async::<String>(&mut conn)
        .await
        .unwrap_or_default()
}
