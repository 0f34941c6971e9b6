//! A bare HTTP/2 API server (the `h2` crate, no hyper) that refuses every `k`-th stream
//! with `RST_STREAM(REFUSED_STREAM)` before reading it, as an overloaded gateway may. A
//! refused stream was not processed (RFC 9113, section 8.7), so a client may send it again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use pix_auth_proxy::sandbox::{Leaf, Pki};

pub struct RefusingH2 {
    pub addr: SocketAddr,
    answered: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RefusingH2 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RefusingH2 {
    /// Serve on 127.0.0.1 with `server`'s certificate, requiring a client certificate
    /// issued by `pki` (mTLS, as a PSP does), refusing streams k, 2k, 3k, …
    pub async fn start(pki: &Pki, server: &Leaf, every: u64) -> Self {
        let listener = super::bind().await;
        let addr = listener.local_addr().unwrap();
        let acceptor = super::mtls_acceptor(pki, server, &[b"h2"]);
        let answered = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let (a, r) = (answered.clone(), refused.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen, answered, refused) =
                    (acceptor.clone(), seen.clone(), a.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut conn) = h2::server::handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        if (seen.fetch_add(1, Ordering::SeqCst) + 1) % every == 0 {
                            refused.fetch_add(1, Ordering::SeqCst);
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let answered = answered.clone();
                        tokio::spawn(async move {
                            let mut body = req.into_body();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                            }
                            answered.fetch_add(1, Ordering::SeqCst);
                            let resp = http::Response::new(());
                            if let Ok(mut send) = respond.send_response(resp, false) {
                                let _ = send.send_data(Bytes::from_static(b"ok"), true);
                            }
                        });
                    }
                });
            }
        });
        RefusingH2 {
            addr,
            answered,
            refused,
            task,
        }
    }

    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}
