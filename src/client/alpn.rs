//! The HTTPS connector towards the PSP, and what it learns from each new connection: the
//! protocol the PSP picked by ALPN, kept for [`super::UpstreamClient`] to route by.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::BoxError;

/// What the PSP negotiated on the newest connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// No connection yet.
    Unknown,
    /// HTTP/1.1 (ALPN `http/1.1` or none).
    Http1,
    /// HTTP/2 (ALPN `h2`).
    Http2,
}

impl UpstreamProtocol {
    const fn to_u8(self) -> u8 {
        match self {
            UpstreamProtocol::Unknown => 0,
            UpstreamProtocol::Http1 => 1,
            UpstreamProtocol::Http2 => 2,
        }
    }

    const fn from_u8(v: u8) -> Self {
        match v {
            1 => UpstreamProtocol::Http1,
            2 => UpstreamProtocol::Http2,
            _ => UpstreamProtocol::Unknown,
        }
    }

    /// `"h2"`, `"http/1.1"` or `"unknown"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Unknown => "unknown",
            UpstreamProtocol::Http1 => "http/1.1",
            UpstreamProtocol::Http2 => "h2",
        }
    }
}

/// A new connection for a pool of one protocol negotiated the other: it was closed before
/// any request was written on it, so the request can be sent again through the pool that
/// fits.
#[derive(Debug, thiserror::Error)]
#[error("the PSP no longer negotiates {} on new connections", .0.as_str())]
pub struct ProtocolChanged(pub UpstreamProtocol);

/// What the protocol learned so far, shared by every pool of one client.
#[derive(Debug, Clone, Default)]
pub(super) struct Learned(Arc<AtomicU8>);

impl Learned {
    pub(super) fn get(&self) -> UpstreamProtocol {
        UpstreamProtocol::from_u8(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, protocol: UpstreamProtocol) {
        let before = UpstreamProtocol::from_u8(self.0.swap(protocol.to_u8(), Ordering::Relaxed));
        if before != protocol {
            tracing::info!(
                event = "upstream_protocol",
                protocol = protocol.as_str(),
                previous = before.as_str(),
                "PSP protocol learned from a new connection"
            );
        }
    }
}

pub(super) type TlsIo = MaybeHttpsStream<TokioIo<TcpStream>>;

/// The HTTPS connector, recording which protocol each new connection negotiated, and
/// refusing a connection of another protocol than `require` (if set).
#[derive(Clone)]
pub(super) struct AlpnLearner {
    pub(super) inner: HttpsConnector<HttpConnector>,
    pub(super) learned: Learned,
    pub(super) require: Option<UpstreamProtocol>,
}

impl AlpnLearner {
    /// The same connector, refusing connections that do not negotiate `protocol`.
    pub(super) fn requiring(&self, protocol: UpstreamProtocol) -> Self {
        Self {
            require: Some(protocol),
            ..self.clone()
        }
    }
}

impl tower_service::Service<Uri> for AlpnLearner {
    type Response = TlsIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let learned = self.learned.clone();
        let require = self.require;
        Box::pin(async move {
            let io = connecting.await?;
            let protocol = if io.connected().is_negotiated_h2() {
                UpstreamProtocol::Http2
            } else {
                UpstreamProtocol::Http1
            };
            learned.set(protocol);
            match require {
                Some(required) if required != protocol => Err(ProtocolChanged(required).into()),
                _ => Ok(io),
            }
        })
    }
}
