//! The request path: from the app's plaintext request to the PSP over mTLS and back.
//!
//! Owns: target checks (no open proxy), the rewrite to the upstream URI, header hygiene,
//! token injection (one `ArcSwap` load, one `HeaderValue` clone), the upstream call with
//! its timeout, the one-shot replay after a 401, and mapping failures to problem bodies.
//! It never calls the token endpoint: it reads the [`TokenCell`] and reports 401s to the
//! refresher.

pub mod body;
mod deadline;
mod error;
mod extras;
pub mod problem;
pub mod response;
pub mod rewrite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::client::UpstreamProtocol;
pub use crate::config::{ApiExtras, ProxyOptions};
use crate::generation::{Current, Generation};
use crate::metrics::Metrics;
use deadline::within;
pub use error::ProxyError;
pub use problem::ProblemKind;
pub use rewrite::UpstreamTarget;

/// Body sent upstream: buffered (replayable) or streamed from the app.
pub type UpstreamBody = Either<Full<Bytes>, body::AppBody>;
/// Body returned to the app: the PSP's, streamed (large or of unknown length), or read
/// whole (small, of known length: the PSP's, or our problem body).
pub type ResponseBody = Either<response::PspBody, Full<Bytes>>;
/// The pooled mTLS client used for API calls.
pub type UpstreamClient = crate::client::UpstreamClient<UpstreamBody>;

/// What an exchange holds of the PSP connection until its response body ends.
pub type Slot = crate::client::Slot<UpstreamBody>;
/// A way to the PSP taken before the request's body is read.
pub type Reserved = crate::client::Reserved<UpstreamBody>;
/// An exchange handed to the client, until the PSP's response head.
pub type Sending = crate::client::Sending<UpstreamBody>;

/// The proxy service. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    target: UpstreamTarget,
    own_authorities: Vec<Authority>,
    current: Current,
    metrics: Arc<Metrics>,
    opts: ProxyOptions,
    query_suffix: Option<secrecy::SecretString>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("target", &self.inner.target)
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

/// The parts of a request needed to send it (again).
struct Outgoing {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Outgoing {
    fn request(&self, auth: HeaderValue, body: UpstreamBody) -> Request<UpstreamBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        // The client picks h2 or HTTP/1.1 from ALPN; it only refuses an HTTP/2 request on
        // an HTTP/1 connection, so always hand it 1.1.
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        headers.reserve(self.headers.len() + 1);
        for (k, v) in &self.headers {
            headers.append(k.clone(), v.clone());
        }
        headers.insert(header::AUTHORIZATION, auth);
        req
    }
}

impl Proxy {
    /// A proxy to `target` through the current generation's client and token.
    pub fn new(
        target: UpstreamTarget,
        own_authorities: Vec<Authority>,
        current: Current,
        metrics: Arc<Metrics>,
        opts: ProxyOptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                target,
                own_authorities,
                current,
                metrics,
                query_suffix: opts.extras.query_suffix().map(secrecy::SecretString::from),
                opts,
            }),
        }
    }

    /// Handle one request from the app and count it. Never fails: errors become problem
    /// responses. Takes the proxy by value (one `Arc`) so that the future needs no wrapper.
    ///
    /// The request is checked and rewritten before the future is made, so that the future
    /// (boxed by hyper once per app connection, for the request in flight) keeps only what
    /// goes upstream, not the app's request as well.
    pub fn handle(
        self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        let started = Instant::now();
        let method = req.method().clone();
        let prepared = self.prepare(req);
        async move {
            let answer = match prepared {
                Ok((out, body)) => self.exchange(&out, body).await,
                Err(err) => Err(err),
            };
            let resp = self.respond(&method, answer);
            self.inner
                .metrics
                .request(resp.status().as_u16(), started.elapsed());
            resp
        }
    }

    /// The app's answer: the PSP's response, or the problem for what went wrong (logged and
    /// counted).
    fn respond(
        &self,
        method: &Method,
        answer: Result<Response<ResponseBody>, ProxyError>,
    ) -> Response<ResponseBody> {
        match answer {
            Ok(resp) => resp,
            Err(err) => {
                let kind = err.kind();
                let side = kind.side();
                if side == "downstream" {
                    self.inner.metrics.downstream_error(kind.slug());
                    tracing::info!(event = "request_refused", side, %method, problem = kind.slug(), error = %err)
                } else {
                    self.inner.metrics.upstream_error(kind.slug());
                    tracing::warn!(event = "request_failed", side, %method, problem = kind.slug(), error = %err)
                }
                err.to_response()
            }
        }
    }

    /// The app's request checked (framing, target) and rewritten for the PSP: its URI, its
    /// headers cleaned; the body as it came.
    fn prepare(&self, req: Request<Incoming>) -> Result<(Outgoing, Incoming), ProxyError> {
        let inner = &*self.inner;
        match rewrite::framing_problem(req.version(), req.headers()) {
            None => {}
            Some(rewrite::FramingProblem::MissingHost) => {
                return Err(ProxyError::Framing(
                    "an HTTP/1.1 request must carry Host",
                    ProblemKind::BadRequest,
                ));
            }
            Some(rewrite::FramingProblem::UnsupportedCoding) => {
                return Err(ProxyError::Framing(
                    "only the chunked transfer coding is supported",
                    ProblemKind::UnsupportedTransferCoding,
                ));
            }
        }
        if let Some(reason) = rewrite::forbidden_target(req.method(), req.version(), req.uri()) {
            let allowed = req.method() != Method::CONNECT
                && req
                    .uri()
                    .authority()
                    .is_some_and(|a| inner.target.accepts_authority(a, &inner.own_authorities));
            if !allowed {
                return Err(ProxyError::ForbiddenTarget(reason));
            }
        }
        let extra_query = inner
            .query_suffix
            .as_ref()
            .map(secrecy::ExposeSecret::expose_secret);
        let uri = inner.target.uri_for(req.uri(), extra_query).map_err(|e| {
            ProxyError::BadRequest(format!("request target cannot be rewritten: {e}"))
        })?;
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        rewrite::clean_request_headers(&mut headers);
        rewrite::detach_values(&mut headers);
        inner.opts.extras.apply(&mut headers);
        let out = Outgoing {
            method: parts.method,
            uri,
            headers,
        };
        Ok((out, body))
    }

    /// The exchange with the PSP for a prepared request: a token, a way to the PSP (an
    /// HTTP/1.1 connection may have to come free), then the request.
    ///
    /// A small body is read only once its request has a connection to go on: a request
    /// waiting for one keeps its body in the app's socket, and not in memory (at 256 app
    /// connections over 32 PSP connections, 224 bodies, and each one held hyper's 32 KiB
    /// read buffer behind it).
    async fn exchange(
        &self,
        out: &Outgoing,
        body: Incoming,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let inner = &*self.inner;
        // One generation for the whole exchange: its client and its token belong together.
        let generation = inner.current.load_full();
        let (auth, version) = self.token(&generation).await?;
        // The PSP's whole answer (a free connection, the app's small body, the head, a
        // small body read whole) is due within `request_timeout` of here: one timer for all.
        let mut deadline = std::pin::pin!(tokio::time::sleep(inner.opts.request_timeout));
        let reserved = self.reserve(&generation, deadline.as_mut()).await?;
        // Buffer small bodies of known size so a 401 can be replayed; stream the rest.
        let replayable = match body.size_hint().upper() {
            // No body (most GETs): nothing to wait for.
            Some(0) if body.is_end_stream() => Ok(Bytes::new()),
            // Bounded by the deadline: an app that announces a body and never sends it all
            // would hold its PSP connection as long as it liked.
            Some(n) if n as usize <= inner.opts.replay_limit => {
                let limited = Limited::new(body, inner.opts.replay_limit);
                let collected = within(deadline.as_mut(), limited.collect())
                    .await
                    .ok_or_else(|| {
                        ProxyError::BadRequest(format!(
                            "request body not received in full within {:?}",
                            inner.opts.request_timeout
                        ))
                    })?
                    .map_err(|e| ProxyError::BadRequest(format!("request body: {e}")))?;
                Ok(collected.to_bytes())
            }
            _ => Err(body),
        };
        match replayable {
            Err(stream) => {
                let (stream, app_body) = body::AppBody::new(stream);
                let request = out.request(auth, Either::Right(stream));
                let (resp, slot) = self
                    .send(
                        generation.client.send_on(reserved, request),
                        deadline.as_mut(),
                    )
                    .await
                    .map_err(|e| match app_body.failure() {
                        // The exchange failed because the app's own body did: its fault.
                        Some(why) => ProxyError::BadRequest(format!("request body: {why}")),
                        None => e,
                    })?;
                if resp.status() == StatusCode::UNAUTHORIZED {
                    // Cannot replay a streamed body: pass the 401 through, but renew.
                    inner.metrics.unauthorized();
                    generation.refresher.report_rejected(version);
                }
                self.relay(resp, slot, deadline).await
            }
            Ok(bytes) => {
                let (resp, slot) = self
                    .send_buffered(&generation, out, &auth, &bytes, reserved, deadline.as_mut())
                    .await?;
                if resp.status() != StatusCode::UNAUTHORIZED {
                    return self.relay(resp, slot, deadline).await;
                }
                // The cold path lives in its own allocation, so the future every app
                // connection keeps for its in-flight request stays small.
                Box::pin(self.replay_after_401(&generation, out, version, &bytes, (resp, slot)))
                    .await
            }
        }
    }

    /// The PSP refused the token of a buffered request: renew and send it once more.
    async fn replay_after_401(
        &self,
        generation: &Generation,
        out: &Outgoing,
        version: u64,
        bytes: &Bytes,
        (resp, slot): (Response<Incoming>, Slot),
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let inner = &*self.inner;
        inner.metrics.unauthorized();
        generation.refresher.report_rejected(version);
        let Some((auth, new_version)) = generation
            .cell
            .wait_for_attempt(version, inner.opts.token_wait, || ())
            .await
        else {
            tracing::warn!(
                event = "upstream_unauthorized",
                version,
                "PSP rejected the token and no newer one arrived; passing the 401 through"
            );
            let deadline = std::pin::pin!(tokio::time::sleep(inner.opts.request_timeout));
            return self.relay(resp, slot, deadline).await;
        };
        tracing::info!(
            event = "upstream_unauthorized_replay",
            rejected = version,
            replay_with = new_version,
            "PSP rejected the token; replaying once with a new one"
        );
        // The 401's connection (and its slot) is given up before the replay takes one.
        drop((resp, slot));
        let mut deadline = std::pin::pin!(tokio::time::sleep(inner.opts.request_timeout));
        let reserved = self.reserve(generation, deadline.as_mut()).await?;
        let (resp, slot) = self
            .send_buffered(generation, out, &auth, bytes, reserved, deadline.as_mut())
            .await?;
        self.relay(resp, slot, deadline).await
    }

    /// The token to inject: immediately if usable, else ask the refresher for an attempt and
    /// wait for its outcome, bounded by `token_wait`.
    async fn token(&self, generation: &Generation) -> Result<(HeaderValue, u64), ProxyError> {
        let inner = &*self.inner;
        if let Some(t) = generation.cell.usable(Instant::now()) {
            return Ok(t);
        }
        let demand = || generation.refresher.demand();
        Box::pin(
            generation
                .cell
                .wait_for_attempt(0, inner.opts.token_wait, demand),
        )
        .await
        .ok_or(ProxyError::TokenUnavailable(inner.opts.token_wait))
    }

    /// A way to the PSP for one exchange ([`UpstreamClient::reserve`]), by `deadline`. If the
    /// HTTP/1.1 pool could not make a connection because the PSP negotiated HTTP/2 meanwhile,
    /// take one once more, in the pool that now fits.
    async fn reserve(
        &self,
        generation: &Generation,
        mut deadline: Pin<&mut Sleep>,
    ) -> Result<Reserved, ProxyError> {
        let before = generation.client.protocol();
        match self.reserving(generation, deadline.as_mut()).await {
            Err(ProxyError::UpstreamConnect(_))
                if before != UpstreamProtocol::Unknown
                    && generation.client.protocol() != before =>
            {
                self.reserving(generation, deadline).await
            }
            reserved => reserved,
        }
    }

    /// Not an `async fn`: a wait is boxed by the client, and this future only maps it.
    fn reserving<'a>(
        &self,
        generation: &Generation,
        deadline: Pin<&'a mut Sleep>,
    ) -> impl Future<Output = Result<Reserved, ProxyError>> + use<'a> {
        let timeout = self.inner.opts.request_timeout;
        let reserving = within(deadline, generation.client.reserve());
        async move {
            match reserving.await {
                Some(Ok(reserved)) => Ok(reserved),
                Some(Err(e)) => Err(ProxyError::from_client(e)),
                None => Err(ProxyError::UpstreamTimeout(timeout)),
            }
        }
    }

    /// Send a buffered request the way `reserved` took. If it went to the HTTP/2 pool or the
    /// discovery pool and that pool could not get a connection because the PSP negotiated
    /// the other protocol meanwhile, nothing was sent (a connect error is raised before any
    /// byte of the request is written): send it once more, through the pool that now fits;
    /// and once more too if the PSP said it did not process it.
    async fn send_buffered(
        &self,
        generation: &Generation,
        out: &Outgoing,
        auth: &HeaderValue,
        bytes: &Bytes,
        reserved: Reserved,
        mut deadline: Pin<&mut Sleep>,
    ) -> Result<(Response<Incoming>, Slot), ProxyError> {
        let request = || out.request(auth.clone(), Either::Left(Full::new(bytes.clone())));
        let client = &generation.client;
        let before = client.protocol();
        let first = client.send_on(reserved, request());
        match self.send(first, deadline.as_mut()).await {
            Err(ProxyError::UpstreamConnect(_))
                if before != UpstreamProtocol::Unknown && client.protocol() != before =>
            {
                self.send(client.send(request()), deadline).await
            }
            Err(ProxyError::UpstreamProtocol(e)) if not_processed(&e) => {
                tracing::debug!(
                    event = "upstream_retry",
                    error = %crate::telemetry::error_chain(&e),
                    "the PSP did not process the request; sending it again"
                );
                self.inner.metrics.upstream_retry();
                self.send(client.send(request()), deadline).await
            }
            sent => sent,
        }
    }

    /// One exchange with the PSP, from the request handed to the client until the response
    /// head, by `deadline`. Not an `async fn`: the request is already with the client, so
    /// the future does not keep it.
    fn send<'a>(
        &self,
        sending: Sending,
        deadline: Pin<&'a mut Sleep>,
    ) -> impl Future<Output = Result<(Response<Incoming>, Slot), ProxyError>> + use<'a> {
        let timeout = self.inner.opts.request_timeout;
        let sending = within(deadline, sending);
        async move {
            match sending.await {
                // hyper consumes 100 Continue and 103 Early Hints itself; anything else below
                // 200 (a 101 to a request that asked for no upgrade) has no place in a reply.
                Some(Ok((resp, _))) if resp.status().is_informational() => {
                    Err(ProxyError::UpstreamStatus(resp.status()))
                }
                Some(Ok(sent)) => Ok(sent),
                Some(Err(e)) => Err(ProxyError::from_client(e)),
                None => Err(ProxyError::UpstreamTimeout(timeout)),
            }
        }
    }

    /// The PSP's response, for the app (see [`response`]).
    fn relay<'a>(
        &self,
        resp: Response<Incoming>,
        slot: Slot,
        deadline: Pin<&'a mut Sleep>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + use<'a> {
        response::relay(resp, slot, deadline, self.inner.opts.request_timeout)
    }
}

/// Whether the PSP said it never processed the request, so that sending it again cannot do
/// it twice (RFC 9113, sections 6.8 and 8.7): its stream was above the last one a GOAWAY
/// covers, or was opened after the GOAWAY (a gateway closing a connection after N requests,
/// as nginx does every 1000 by default), or was refused with `REFUSED_STREAM`.
fn not_processed(err: &crate::client::SendError) -> bool {
    crate::telemetry::find_cause::<h2::Error>(err).is_some_and(|e| {
        e.is_remote() && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM))
    })
}
