//! The inbound direction: the PSP's webhook calls over mutual TLS, handed to the app over
//! plain HTTP.
//!
//! A call travels: TLS handshake ([`tls`]: server identity, client certificate requested and
//! verified against `--webhook-client-ca`) → who is calling (allow-lists, or the URL secret
//! of the "skip mTLS" variant, and the address allow-list) → which event ([`route`]) →
//! optional confirmation with the PSP ([`verify`]) → the app ([`forward`]). A caller that is
//! not the PSP gets a 403 problem and nothing is forwarded; authentication failures are never
//! 5xx. Only an app that cannot take the notification produces a 503, so the PSP retries.
//!
//! Shares with the outbound side: the identity loaders, the reload poller, the metrics
//! registry and the problem bodies.

pub mod forward;
pub mod route;
pub mod tls;
pub mod verify;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::config::WebhookConfig;
use crate::metrics::Metrics;
use crate::proxy::ProblemKind;
use crate::server::watchdog::{self, ConnState, Tracked};
use forward::{AppClient, AppOutcome, Vouch};
use route::Event;
pub use tls::{Caller, RejectLog, TlsState, WebhookTlsError};

/// Webhook connections served at once.
const MAX_CONNECTIONS: usize = 512;

/// The webhook listener's state. Cheap to share (`Arc`).
pub struct Webhook {
    config: WebhookConfig,
    state: ArcSwap<TlsState>,
    rejected: Arc<RejectLog>,
    metrics: Arc<Metrics>,
    app: AppClient,
    verifier: Option<verify::Verifier>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("listen", &self.config.listen)
            .field("forward", &self.config.forward)
            .finish_non_exhaustive()
    }
}

fn problem(kind: ProblemKind, detail: &str) -> Response<Full<Bytes>> {
    crate::proxy::problem::response(kind, detail)
}

impl Webhook {
    /// Load the server identity and the CAs. `verifier` confirms notified Pix with the PSP
    /// (`--webhook-verify`).
    pub fn new(
        config: WebhookConfig,
        metrics: Arc<Metrics>,
        verifier: Option<verify::Verifier>,
    ) -> Result<Self, WebhookTlsError> {
        let rejected = Arc::new(RejectLog::default());
        let state = TlsState::load(&config, rejected.clone(), metrics.clone())?;
        metrics.set_webhook_cert_expiry(state.identity.info().not_after);
        Ok(Webhook {
            config,
            state: ArcSwap::from_pointee(state),
            rejected,
            metrics,
            app: forward::app_client(),
            verifier,
        })
    }

    /// The settings.
    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// The identity and CAs in use.
    pub fn tls(&self) -> Arc<TlsState> {
        self.state.load_full()
    }

    /// Load the identity and CA files again; on failure the current ones keep serving.
    pub fn reload(&self) -> Result<(), WebhookTlsError> {
        match TlsState::load(&self.config, self.rejected.clone(), self.metrics.clone()) {
            Ok(state) => {
                let info = state.identity.info().clone();
                self.metrics.set_webhook_cert_expiry(info.not_after);
                self.state.store(Arc::new(state));
                self.metrics.tls_reload("success");
                tracing::info!(
                    event = "webhook_reload_succeeded",
                    cert_subject = %info.subject,
                    cert_not_after = %crate::tls::rfc3339(info.not_after),
                    "new webhook server identity / CAs in use for new connections"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.tls_reload("failure");
                tracing::error!(
                    event = "webhook_reload_failed",
                    error = %e,
                    "the new webhook identity or CA files are not usable; still serving the previous ones"
                );
                Err(e)
            }
        }
    }

    /// Serve the PSP on `listener` until `shutdown` resolves, then drain for at most the
    /// drain timeout. Returns whether the drain completed. Connections get the app
    /// listener's bounds ([`crate::server::watchdog`]; this listener is public): the TLS
    /// handshake and a first request within `--header-read-timeout` of the accept, and
    /// `--idle-timeout`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        opts: crate::server::ServerOptions,
    ) -> bool {
        let (first_timeout, idle_timeout) = (opts.header_read_timeout, opts.idle_timeout);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(first_timeout);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let limits = crate::server::Limits {
            max_connections: MAX_CONNECTIONS,
            drain_timeout: opts.drain_timeout,
        };
        crate::server::accept_loop(listener, limits, shutdown, move |stream, peer, stop| {
            let this = self.clone();
            let builder = builder.clone();
            async move {
                let opened = Instant::now();
                // The configuration current at accept time serves this whole connection.
                let acceptor = tokio_rustls::TlsAcceptor::from(this.state.load().config.clone());
                let tls = match tokio::time::timeout(first_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(event = "webhook_handshake_failed", %peer, error = %e);
                        return;
                    }
                    Err(_) => return,
                };
                let caller = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|leaf| Caller::from_leaf(leaf.as_ref()))
                    .map(Arc::new);
                let conn_state = Arc::new(ConnState::default());
                let handler = move |req| this.clone().handle(req, peer, caller.clone());
                let service = crate::server::counted_service(conn_state.clone(), handler);
                let io = TokioIo::new(Tracked::new(tls, conn_state.clone()));
                let first_request = first_timeout.saturating_sub(opened.elapsed());
                let _watchdog = watchdog::spawn(&conn_state, first_request, idle_timeout, stop);
                let conn = std::pin::pin!(builder.serve_connection(io, service));
                let served =
                    crate::server::supervise(conn, |c| c.graceful_shutdown(), &conn_state).await;
                crate::server::log_end(peer, served);
            }
        })
        .await
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        caller: Option<Arc<Caller>>,
    ) -> Response<Full<Bytes>> {
        let start = Instant::now();
        let request_id = uuid::Uuid::new_v4().hyphenated().to_string();
        // Only the path is logged: the query may carry the URL secret.
        let path = req.uri().path().to_owned();
        let (result, event, resp) = self.decide(req, peer, caller.as_deref(), &request_id).await;
        self.metrics.webhook_request(result);
        self.metrics.webhook_duration(start.elapsed());
        tracing::info!(
            event = "webhook_request",
            request_id = %request_id,
            %peer,
            path = %path,
            webhook_event = event.map(Event::as_str).unwrap_or("-"),
            result,
            status = resp.status().as_u16(),
            caller = caller.as_ref().map(|c| c.subject.as_str()).unwrap_or("-"),
            elapsed_ms = start.elapsed().as_millis() as u64,
            "webhook call"
        );
        resp
    }

    /// Who is calling: `Err` with the metric label, the problem and its detail.
    fn authenticate(
        &self,
        uri: &Uri,
        peer: SocketAddr,
        caller: Option<&Caller>,
    ) -> Result<(), (&'static str, ProblemKind, &'static str)> {
        let wh = &self.config;
        if !wh.allow_ip.is_empty() && !wh.allow_ip.iter().any(|n| n.contains(peer.ip())) {
            return Err((
                "forbidden",
                ProblemKind::WebhookForbidden,
                "the caller's address is not in --webhook-allow-ip",
            ));
        }
        if let Some(c) = caller {
            if !c.allowed(&wh.allow_subject, &wh.allow_spki) {
                self.rejected.once(&c.der, "identity_mismatch");
                return Err((
                    "identity_mismatch",
                    ProblemKind::WebhookIdentityMismatch,
                    "the client certificate chains to a configured CA, but its subject or key is not allowed",
                ));
            }
        }
        if let Some(secret) = &wh.url_secret {
            let given = route::hmac_param(uri.query()).unwrap_or_default();
            let same = aws_lc_rs::constant_time::verify_slices_are_equal(
                given.as_bytes(),
                secret.expose_secret().as_bytes(),
            )
            .is_ok();
            if !same {
                return Err((
                    "forbidden",
                    ProblemKind::WebhookForbidden,
                    "the webhook URL's secret is missing or wrong",
                ));
            }
            return Ok(());
        }
        if caller.is_none() {
            return Err((
                "no_cert",
                ProblemKind::WebhookClientCertRequired,
                "connect with the client certificate your PSP issued for webhooks",
            ));
        }
        Ok(())
    }

    async fn decide(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        caller: Option<&Caller>,
        request_id: &str,
    ) -> (&'static str, Option<Event>, Response<Full<Bytes>>) {
        let wh = &self.config;
        if let Err((label, kind, detail)) = self.authenticate(req.uri(), peer, caller) {
            return (label, None, problem(kind, detail));
        }
        let Some(event) = route::recognise(&wh.path, req.uri().path(), req.uri().query()) else {
            return (
                "bad_request",
                None,
                problem(
                    ProblemKind::WebhookNotFound,
                    "not the registered webhook path",
                ),
            );
        };
        if req.method() != Method::POST {
            return (
                "bad_request",
                Some(event),
                problem(ProblemKind::WebhookMethodNotAllowed, "use POST"),
            );
        }
        let too_large = || {
            problem(
                ProblemKind::WebhookBodyTooLarge,
                &format!("the body exceeds {} bytes", wh.max_body),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > wh.max_body as u64) {
            return ("bad_request", Some(event), too_large());
        }
        let (mut parts, body) = req.into_parts();
        let body = match Limited::new(body, wh.max_body).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return ("bad_request", Some(event), too_large());
            }
            Err(e) => {
                return (
                    "bad_request",
                    Some(event),
                    problem(
                        ProblemKind::BadRequest,
                        &format!("the body could not be read: {e}"),
                    ),
                );
            }
        };
        let verified = match (&self.verifier, event) {
            (Some(v), Event::Pix) => {
                let verdict = v.confirm(&body).await;
                let confirmed = verdict == verify::Verdict::Confirmed;
                self.metrics
                    .webhook_request(if confirmed { "verified" } else { "unverified" });
                match verdict {
                    verify::Verdict::Refuted if v.require() => {
                        tracing::warn!(
                            event = "webhook_unverified_dropped",
                            request_id,
                            %peer,
                            "the PSP does not confirm every Pix of this notification; dropped (200, so the PSP stops retrying)"
                        );
                        return (
                            "unverified",
                            Some(event),
                            Response::new(Full::new(Bytes::new())),
                        );
                    }
                    verify::Verdict::Unknown if v.require() => {
                        tracing::warn!(
                            event = "webhook_verify_unavailable",
                            request_id,
                            %peer,
                            "the PSP could not be asked about this notification; 503 so that it is delivered again"
                        );
                        return (
                            "unverified",
                            Some(event),
                            problem(
                                ProblemKind::WebhookVerifyUnavailable,
                                "the notified Pix could not be confirmed with the PSP right now",
                            ),
                        );
                    }
                    _ => Some(confirmed),
                }
            }
            _ => None,
        };
        forward::clean_headers(&mut parts.headers);
        forward::vouch(
            &mut parts.headers,
            &Vouch {
                event,
                caller,
                peer: peer.ip(),
                request_id,
                verified,
            },
        );
        let target = self.target(parts.uri.query());
        let outcome = forward::send(&self.app, target, parts.headers, body, wh.timeout).await;
        if let AppOutcome::Failed(why) = &outcome {
            tracing::warn!(event = "webhook_app_error", request_id, error = %why, "the app could not take the notification; answering 503 so the PSP retries");
        }
        (
            outcome.label(),
            Some(event),
            outcome.into_response(wh.timeout),
        )
    }

    /// `--webhook-forward`, with the caller's query minus the sidecar's parameters.
    fn target(&self, query: Option<&str>) -> Uri {
        let base = &self.config.forward;
        let Some(q) = route::app_query(query) else {
            return base.clone();
        };
        let path = base.path();
        let joined = match base.query() {
            Some(own) => format!("{path}?{own}&{q}"),
            None => format!("{path}?{q}"),
        };
        let mut parts = base.clone().into_parts();
        parts.path_and_query = joined.parse().ok().or(parts.path_and_query);
        Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
    }
}
