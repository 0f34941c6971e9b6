//! The admin listener: `/livez`, `/readyz` and `/metrics`, for Kubernetes probes and
//! Prometheus.
//!
//! Owns: the readiness latch (a usable token, a loaded identity, not shutting down) and the
//! admin routes. Readiness never calls the PSP: it reads state the refresher maintains.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tokio::time::Instant;

use crate::generation::Current;
use crate::metrics::Metrics;
use crate::token::TokenCell;

/// Process-wide health state.
#[derive(Debug, Default)]
pub struct Health {
    shutting_down: AtomicBool,
}

impl Health {
    /// Health with a loaded identity, not shutting down.
    pub fn new() -> Self {
        Self {
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Flip readiness off for good: the process is going away.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// `Ok` if ready to serve, else why not.
    pub fn readiness(&self, cell: &TokenCell) -> Result<(), &'static str> {
        if self.is_shutting_down() {
            return Err("shutting down");
        }
        if cell.usable(Instant::now()).is_none() {
            return Err("no usable access token");
        }
        Ok(())
    }
}

/// State the admin routes read.
#[derive(Clone, Debug)]
pub struct Admin {
    /// Readiness latch.
    pub health: Arc<Health>,
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// The current generation (its token decides readiness and the validity gauge).
    pub current: Current,
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl Admin {
    /// Answer one admin request.
    pub fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "GET only\n",
            );
        }
        match req.uri().path() {
            "/livez" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
            "/readyz" => match self.health.readiness(&self.current.load().cell) {
                Ok(()) => text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n"),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("not ready: {why}\n"),
                ),
            },
            "/metrics" => {
                let cell = self.current.load().cell.clone();
                self.metrics
                    .set_token_valid(cell.usable(Instant::now()).is_some());
                self.metrics.set_ready(self.health.readiness(&cell).is_ok());
                text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.metrics.encode(),
                )
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: try /livez, /readyz or /metrics\n",
            ),
        }
    }
}
