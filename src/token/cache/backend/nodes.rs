//! The nodes of the shared cache, whatever the mode: the one connection type the rest of the
//! cache uses ([`Conn`]), TLS material, and building a node's client from its URL with the
//! right credentials.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisFuture, Value};
use secrecy::ExposeSecret;

use super::super::{CacheError, redacted_url};

/// One connection of any mode; cheap to clone (both kinds multiplex).
#[derive(Clone)]
pub enum Conn {
    /// A standalone or sentinel-resolved primary.
    Node(MultiplexedConnection),
    /// A Redis Cluster (routes by slot, follows `MOVED` and failovers itself).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// TLS material for every node of one kind (data nodes or sentinels).
#[derive(Clone, Default)]
pub(super) struct Tls {
    pub(super) root: Option<Vec<u8>>,
    pub(super) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl Tls {
    pub(super) fn certs(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.root.clone(),
        }
    }
}

pub(super) fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

pub(super) fn node_client(info: ConnectionInfo, tls: &Tls) -> Result<redis::Client, CacheError> {
    Ok(if is_tls(&info) {
        redis::Client::build_with_tls(info, tls.certs())?
    } else {
        redis::Client::open(info)?
    })
}

pub(super) fn parse(url: &str, flag: &str) -> Result<ConnectionInfo, CacheError> {
    redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| CacheError::Setup(format!("{flag} {}: {e}", redacted_url(url))))
}

/// `info` with the user and password of `user` / `password` (when given).
pub(super) fn with_auth(
    info: ConnectionInfo,
    user: Option<&str>,
    password: Option<&secrecy::SecretString>,
) -> ConnectionInfo {
    let mut settings = info.redis_settings().clone();
    if let Some(u) = user {
        settings = settings.set_username(u);
    }
    if let Some(p) = password {
        settings = settings.set_password(p.expose_secret());
    }
    info.set_redis_settings(settings)
}
