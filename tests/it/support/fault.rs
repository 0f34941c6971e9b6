//! A TCP relay on 127.0.0.1 in front of any address (the mock PSP, a `redis-server`) that
//! can be switched at run time to add latency, cut, reset or blackhole the traffic. A switch
//! affects new connections and those already open; the relay counts both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What the relay does to the bytes right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways.
    Pass,
    /// Forward both ways, each chunk held this long first.
    Latency(Duration),
    /// Close every connection (FIN); new ones are closed on accept.
    Cut,
    /// Reset every connection (RST, zero linger); new ones are reset on accept.
    Reset,
    /// Accept and hold connections, forward nothing. A connection that swallowed bytes is
    /// closed when the fault ends (its peers' views of the stream no longer agree).
    Blackhole,
}

struct Shared {
    target: SocketAddr,
    mode: watch::Sender<Fault>,
    accepted: AtomicU64,
    open: AtomicU64,
}

/// A running relay; dropping it stops accepting.
pub struct Relay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        // Closes every relayed connection too: their tasks watch the mode.
        self.shared.mode.send_replace(Fault::Cut);
    }
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = super::bind().await;
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Fault::Pass);
        let shared = Arc::new(Shared {
            target,
            mode,
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(relay(tcp, s.clone()));
            }
        });
        Relay { addr, shared, task }
    }

    pub fn set(&self, fault: Fault) {
        self.shared.mode.send_replace(fault);
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.shared.open.load(Ordering::SeqCst)
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }
}

struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

async fn relay(client: TcpStream, shared: Arc<Shared>) {
    shared.open.fetch_add(1, Ordering::SeqCst);
    let _open = Open(shared.clone());
    let mut mode_rx = shared.mode.subscribe();
    match *mode_rx.borrow_and_update() {
        Fault::Cut => return,
        Fault::Reset => return reset(client),
        _ => {}
    }
    let _ = client.set_nodelay(true);
    let Ok(upstream) = TcpStream::connect(shared.target).await else {
        return reset(client);
    };
    let _ = upstream.set_nodelay(true);
    let (mut client, mut upstream) = (client, upstream);
    let mut swallowed = false;
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_upstream = vec![0u8; 16 * 1024];
    loop {
        let mode = *mode_rx.borrow_and_update();
        match mode {
            Fault::Cut => return,
            Fault::Reset => {
                reset(upstream);
                return reset(client);
            }
            Fault::Pass | Fault::Latency(_) if swallowed => return,
            _ => {}
        }
        tokio::select! {
            r = client.read(&mut from_client) => {
                let n = match r { Ok(n) if n > 0 => n, _ => return };
                if !forward(&mut upstream, &from_client[..n], mode, &mut swallowed).await {
                    return;
                }
            }
            r = upstream.read(&mut from_upstream) => {
                let n = match r { Ok(n) if n > 0 => n, _ => return };
                if !forward(&mut client, &from_upstream[..n], mode, &mut swallowed).await {
                    return;
                }
            }
            changed = mode_rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Forward one chunk under `mode`; false when the connection must end.
async fn forward(to: &mut TcpStream, chunk: &[u8], mode: Fault, swallowed: &mut bool) -> bool {
    match mode {
        Fault::Blackhole => {
            *swallowed = true;
            true
        }
        Fault::Latency(d) => {
            tokio::time::sleep(d).await;
            to.write_all(chunk).await.is_ok()
        }
        _ => to.write_all(chunk).await.is_ok(),
    }
}
