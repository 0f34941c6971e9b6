//! Sentinel mode's side of [`super::Backend`]: asking the sentinels for the master, and
//! watching them for `+switch-master` so a failover is followed at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::{AsyncConnectionConfig, ConnectionAddr};

use super::{Backend, CacheError, RECONNECT_MAX_DELAY, Target};

impl Backend {
    /// Sentinel mode: listen for `+switch-master` (on one sentinel at a time, the next one
    /// when it goes away) and rebuild at once, instead of at the next failed call. Ends
    /// within seconds of the cache being dropped.
    pub(super) fn watch_sentinels(self: &Arc<Self>) {
        let Target::Sentinel { sentinels, .. } = &self.target else {
            return;
        };
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        let (sentinels, limit, weak) = (sentinels.clone(), self.timeout, Arc::downgrade(self));
        tokio::spawn(async move {
            for s in sentinels.iter().cycle() {
                let subscribed = async {
                    let mut ps = s.get_async_pubsub().await?;
                    ps.subscribe("+switch-master").await?;
                    Ok::<_, redis::RedisError>(ps)
                };
                if let Ok(Ok(mut ps)) = tokio::time::timeout(limit, subscribed).await {
                    let mut notices = ps.on_message();
                    loop {
                        tokio::select! {
                            notice = notices.next() => {
                                let Some(_) = notice else { break };
                                let Some(me) = weak.upgrade() else { return };
                                me.reconnect("switch_master");
                            }
                            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        }
                        if weak.strong_count() == 0 {
                            return;
                        }
                    }
                }
                if weak.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(RECONNECT_MAX_DELAY).await;
            }
        });
    }

    /// The first sentinel that knows the master answers; each is given the cache timeout.
    /// The master is reached over TLS when `data_tls`, whatever the sentinels speak.
    pub(super) async fn ask_sentinels(
        &self,
        sentinels: &[redis::Client],
        master: &str,
        data_tls: bool,
        config: &AsyncConnectionConfig,
    ) -> Result<ConnectionAddr, CacheError> {
        let mut last = CacheError::Setup(format!("no sentinel knows the master {master:?}"));
        for s in sentinels {
            let asked = async {
                let mut conn = s
                    .get_multiplexed_async_connection_with_config(config)
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            match tokio::time::timeout(self.timeout, asked).await {
                Ok(Ok(Some((host, port)))) => {
                    return Ok(if data_tls {
                        ConnectionAddr::TcpTls {
                            host,
                            port,
                            insecure: false,
                            tls_params: None,
                        }
                    } else {
                        ConnectionAddr::Tcp(host, port)
                    });
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => last = CacheError::Redis(e),
                Err(_) => last = CacheError::Timeout(self.timeout),
            }
        }
        Err(last)
    }
}
