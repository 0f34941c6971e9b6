//! A TCP relay the test re-points, standing in for a DNS name whose address changes in a
//! failover (ElastiCache, Memorystore): accepts on 127.0.0.1:0, forwards each connection to
//! the current target; [`RepointRelay::point_to`] changes the target and drops every
//! connection made to the old one, as a failed-over primary's clients see.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A relay in front of one address at a time.
pub struct RepointRelay {
    /// Where clients connect.
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    /// Bumped on every re-point; connections of an older epoch end.
    epoch: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl RepointRelay {
    /// Start relaying to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let (epoch, _) = watch::channel(0u64);
        let (t, e) = (target.clone(), epoch.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *t.lock().unwrap();
                let mut rx = e.subscribe();
                let mine = *rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|now| *now != mine) => {}
                    }
                });
            }
        });
        Self {
            addr,
            target,
            epoch,
            task,
        }
    }

    /// Send new connections to `target` and drop the existing ones.
    pub fn point_to(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Send new connections to `target`, leaving the existing ones where they are: what a
    /// DNS change does (a client keeps talking to the demoted primary until it reconnects).
    pub fn point_new_connections_to(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    /// `redis://` URL of the relay.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }
}

impl Drop for RepointRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
