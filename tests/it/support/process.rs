//! The `pix-auth-proxy` binary as a child process: spawned without blocking the test's
//! runtime (the mock PSP runs on it), stderr drained while it runs, signalled by PID.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::http_client;

pub const BIN: &str = env!("CARGO_BIN_EXE_pix-auth-proxy");

/// A running child and the reader collecting its stderr.
pub struct Spawned {
    pub child: Child,
    logs: JoinHandle<String>,
}

/// Start the binary with `args` and extra environment; stdout is piped only if asked.
pub fn spawn(args: &[String], env: &[(&str, &str)], pipe_stdout: bool) -> Spawned {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("PIX_AUTH_PROXY_CLIENT_SECRET")
        .stdin(Stdio::null())
        .stdout(if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn pix-auth-proxy");
    // Drain stderr while the process runs: a full pipe would block its logging.
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    });
    Spawned { child, logs }
}

impl Spawned {
    /// Send `signal` (e.g. "TERM", "INT") to the child, by its PID.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{signal} {pid}");
    }

    /// Poll `url` until it answers 200 (up to ~5 s); on failure, kill and show the logs.
    pub async fn wait_for_200(&mut self, url: &str) {
        for _ in 0..100 {
            let answer = tokio::time::timeout(
                Duration::from_millis(500),
                http_client().get(url.parse().unwrap()),
            )
            .await;
            if let Ok(Ok(resp)) = answer {
                if resp.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.start_kill();
        panic!(
            "{url} never answered 200; logs:\n{}",
            (&mut self.logs).await.unwrap()
        );
    }

    /// Wait for the process to exit (bounded) and return its exit code and whole stderr.
    pub async fn finish(mut self, within: Duration) -> (Option<i32>, String) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the process exits in time")
            .unwrap();
        (status.code(), self.logs.await.unwrap())
    }
}
