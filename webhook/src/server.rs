//! The HTTPS admission server: rustls listener, routing, and the tower
//! stack. The stack reads top to bottom:
//!
//! ```text
//! trace → errors to responses → timeout → concurrency limit → body limit → route
//! ```
//!
//! Every failure on the request path travels up as an error and becomes a
//! response in exactly one place, [`error_response`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tollgate_listen::capped_body::{CappedBody, TooLarge};
use tollgate_listen::first_request;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, Layer, Service, ServiceBuilder};
use tower_http::trace::TraceLayer;

use crate::admission::{Admission, Endpoint};
use crate::config::LimitsConfig;
use crate::metrics::{HttpLabels, Metrics};
use crate::review::{Request as AdmissionRequest, ReviewError};

/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

type Body = Full<Bytes>;

/// What the request handlers share.
pub struct State {
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
    max_body_bytes: usize,
    /// Serving: set once the listener runs, cleared when draining.
    ready: AtomicBool,
    /// What readiness still waits for (the namespace cache's first
    /// listing, the policy ConfigMaps'): until then requests would be judged
    /// on too little.
    waiting: std::sync::Mutex<std::collections::BTreeSet<&'static str>>,
    /// Namespace labels, where the cluster is known.
    namespaces: std::sync::OnceLock<Arc<crate::cluster::namespaces::NamespaceCache>>,
    /// Why the last policy reload failed, until one succeeds (the last
    /// good set is in force meanwhile).
    reload_error: std::sync::Mutex<Option<String>>,
    /// Other degraded states `/readyz` reports, by subsystem (Gatekeeper's
    /// webhook present, say).
    notes: std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>,
}

impl AsRef<crate::admission::Admission> for State {
    fn as_ref(&self) -> &crate::admission::Admission {
        &self.admission
    }
}

impl State {
    pub fn new(admission: Admission, metrics: Arc<Metrics>, limits: &LimitsConfig) -> State {
        State {
            admission,
            metrics,
            max_body_bytes: limits.max_body_bytes,
            ready: AtomicBool::new(false),
            waiting: Default::default(),
            namespaces: Default::default(),
            reload_error: Default::default(),
            notes: Default::default(),
        }
    }

    /// Records the outcome of a policy reload: `Some(error)` when it
    /// failed, `None` when it succeeded. Shown by `/readyz`.
    pub fn set_reload_error(&self, error: Option<String>) {
        if let Ok(mut e) = self.reload_error.lock() {
            *e = error;
        }
    }

    /// Sets (`Some`) or clears what `/readyz` says about `subsystem`.
    pub fn set_note(&self, subsystem: &'static str, note: Option<String>) {
        if let Ok(mut notes) = self.notes.lock() {
            match note {
                Some(note) => notes.insert(subsystem, note),
                None => notes.remove(subsystem),
            };
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Uses `cache` for namespace labels from now on.
    pub fn set_namespaces(&self, cache: Arc<crate::cluster::namespaces::NamespaceCache>) {
        let _ = self.namespaces.set(cache);
    }

    /// The labels of `namespace`, where the cluster is known (`Ok(None)`:
    /// no cluster, no namespace, or one that does not exist). An error
    /// when they could not be had: the request must then be refused, not
    /// judged on a guess.
    pub async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<Option<crate::teams::Labels>, crate::cluster::namespaces::LookupError> {
        match self.namespaces.get() {
            Some(cache) if !namespace.is_empty() => cache.lookup(namespace).await,
            _ => Ok(None),
        }
    }

    /// Readiness waits for `what` until [`State::done_waiting`] says so.
    pub fn wait_for(&self, what: &'static str) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(what);
        }
    }

    pub fn done_waiting(&self, what: &'static str) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.remove(what);
        }
    }

    /// Serving, and waiting for nothing; else what it is waiting for.
    fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::SeqCst) {
            return Err("not serving".into());
        }
        match self.waiting.lock() {
            Ok(w) if w.is_empty() => Ok(()),
            Ok(w) => Err(format!(
                "waiting for {}",
                w.iter().copied().collect::<Vec<_>>().join(", ")
            )),
            Err(_) => Err("state lock poisoned".into()),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// What `/readyz` says below its verdict: the degraded states that do
    /// not make the server unready (it still decides correctly), for the
    /// operator. Empty when all is well.
    fn conditions(&self) -> String {
        let mut out = String::new();
        if let Some(cache) = self.namespaces.get()
            && let Some(error) = cache.stale_because()
        {
            out.push_str(&format!(
                "namespace cache: re-listing after a watch error (lookups ask the API server \
                 meanwhile): {error}\n"
            ));
        }
        if let Ok(reload_error) = self.reload_error.lock()
            && let Some(error) = reload_error.as_deref()
        {
            out.push_str(&format!(
                "policies: the last reload failed; the last good set is in force: {error}\n"
            ));
        }
        if let Ok(notes) = self.notes.lock() {
            for (subsystem, note) in notes.iter() {
                out.push_str(&format!("{subsystem}: {note}\n"));
            }
        }
        out
    }
}

/// A request that could not be answered normally, by cause.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("reading the request body: {0}")]
    BodyRead(String),
    #[error("{0}")]
    BadReview(#[from] ReviewError),
    #[error("expected Content-Type application/json, got {0:?}")]
    ContentType(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("{path} does not accept {method}")]
    MethodNotAllowed { path: String, method: Method },
}

/// The one place that turns request-path errors into responses.
fn error_response(error: BoxError) -> Response<Body> {
    let (status, message) = match error.downcast::<HttpError>() {
        Ok(e) => {
            let status = match *e {
                HttpError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                HttpError::BodyRead(_) | HttpError::BadReview(_) => StatusCode::BAD_REQUEST,
                HttpError::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                HttpError::NotFound(_) => StatusCode::NOT_FOUND,
                HttpError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            };
            (status, e.to_string())
        }
        Err(e) if e.is::<tower::timeout::error::Elapsed>() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "request timed out before a decision was made".to_owned(),
        ),
        Err(e) => {
            tracing::error!(error = %e, "request failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal error: {e}"),
            )
        }
    };
    let body = serde_json::json!({ "error": message }).to_string();
    json_response(status, body.into_bytes())
}

/// Every response passes here: errors become responses, and each is counted.
fn finish(metrics: &Metrics, result: Result<Response<Body>, BoxError>) -> Response<Body> {
    let response = result.unwrap_or_else(error_response);
    metrics
        .http_responses
        .get_or_create(&HttpLabels {
            code: response.status().as_u16(),
        })
        .inc();
    response
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Routes a request whose body is already size-limited.
async fn route(
    state: Arc<State>,
    request: Request<CappedBody<Incoming>>,
) -> Result<Response<Body>, BoxError> {
    let path = request.uri().path();
    let endpoint = match path {
        "/validate" => Endpoint::Validate,
        "/mutate" => Endpoint::Mutate,
        "/healthz" | "/readyz" | "/metrics" if request.method() != Method::GET => {
            return Err(method_not_allowed(&request));
        }
        "/healthz" => return Ok(text_response(StatusCode::OK, "text/plain", "ok\n".into())),
        "/readyz" => {
            let conditions = state.conditions();
            return Ok(match state.readiness() {
                Ok(()) => {
                    text_response(StatusCode::OK, "text/plain", format!("ready\n{conditions}"))
                }
                Err(why) => text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {why}\n{conditions}"),
                ),
            });
        }
        "/metrics" => {
            return Ok(text_response(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.metrics.encode(),
            ));
        }
        other => return Err(HttpError::NotFound(other.to_owned()).into()),
    };
    if request.method() != Method::POST {
        return Err(method_not_allowed(&request));
    }
    if let Some(ct) = request.headers().get(header::CONTENT_TYPE) {
        let ct = String::from_utf8_lossy(ct.as_bytes());
        if !ct.starts_with("application/json") {
            return Err(HttpError::ContentType(ct.into_owned()).into());
        }
    }
    let trace_parts = crate::trace::tracer().map(|_| {
        let path: &'static str = match endpoint {
            Endpoint::Validate => "/validate",
            Endpoint::Mutate => "/mutate",
        };
        (request.headers().clone(), path)
    });
    let body = request.into_body().collect().await.map_err(|e| {
        if e.is::<TooLarge>() {
            BoxError::from(HttpError::BodyTooLarge {
                limit: state.max_body_bytes,
            })
        } else {
            BoxError::from(HttpError::BodyRead(e.to_string()))
        }
    })?;
    let span =
        trace_parts.and_then(|(headers, path)| crate::trace::server_span(&headers, "POST", path));
    let decode = span
        .as_ref()
        .and_then(|cx| crate::trace::child(cx, "decode"));
    let decoded = AdmissionRequest::decode(&body.to_bytes());
    crate::trace::end(decode, []);
    let review = decoded.map_err(HttpError::from)?;
    let lookup = span
        .as_ref()
        .and_then(|cx| crate::trace::child(cx, "namespace lookup"));
    let labels = state.namespace_labels(&review.namespace).await;
    crate::trace::end(lookup, []);
    // Decided under the request's span (no await while attached), so the
    // admission's own spans and its log line's trace_id find it.
    let guard = span.clone().map(opentelemetry::Context::attach);
    let response = match labels {
        Ok(labels) => state.admission.decide(endpoint, &review, labels.as_ref()),
        Err(cause) => state
            .admission
            .refuse_unresolved(endpoint, &review, &cause.0),
    };
    drop(guard);
    crate::trace::end(
        span,
        [
            opentelemetry::KeyValue::new("tollgate.uid", review.uid.clone()),
            opentelemetry::KeyValue::new("tollgate.kind", review.kind.clone()),
            opentelemetry::KeyValue::new("tollgate.allowed", response.allowed),
        ],
    );
    Ok(json_response(StatusCode::OK, response.encode()))
}

fn method_not_allowed<B>(request: &Request<B>) -> BoxError {
    HttpError::MethodNotAllowed {
        path: request.uri().path().to_owned(),
        method: request.method().clone(),
    }
    .into()
}

/// Turns every error from below into a response (via [`error_response`])
/// and counts each response by status code.
#[derive(Clone)]
pub struct FinishLayer {
    metrics: Arc<Metrics>,
}

impl<S> Layer<S> for FinishLayer {
    type Service = Finish<S>;
    fn layer(&self, inner: S) -> Finish<S> {
        Finish {
            inner,
            metrics: self.metrics.clone(),
            not_ready: None,
        }
    }
}

pub struct Finish<S> {
    inner: S,
    metrics: Arc<Metrics>,
    /// A readiness error from below, answered on the next call.
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for Finish<S> {
    fn clone(&self) -> Self {
        Finish {
            inner: self.inner.clone(),
            metrics: self.metrics.clone(),
            not_ready: None,
        }
    }
}

impl<S, R> Service<R> for Finish<S>
where
    S: Service<R, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                self.not_ready = Some(e);
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, request: R) -> Self::Future {
        let metrics = self.metrics.clone();
        if let Some(e) = self.not_ready.take() {
            return Box::pin(async move { Ok(finish(&metrics, Err(e))) });
        }
        let future = self.inner.call(request);
        Box::pin(async move { Ok(finish(&metrics, future.await)) })
    }
}

/// Caps request bodies ([`CappedBody`]): past the limit the rest is read
/// and thrown away (up to as much again) before the 413, so the client sees
/// it over HTTP/1.1 and h2 alike; a declared Content-Length past that is
/// refused before anything is read.
#[derive(Clone, Copy)]
pub struct BodyLimitLayer {
    limit: usize,
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct BodyLimit<S> {
    inner: S,
    limit: usize,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for BodyLimit<S>
where
    S: Service<Request<CappedBody<B>>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| !CappedBody::<B>::drainable(len, self.limit)) {
            let limit = self.limit;
            return Box::pin(async move { Err(HttpError::BodyTooLarge { limit }.into()) });
        }
        let limit = self.limit;
        let future = self.inner.call(request.map(|b| CappedBody::new(b, limit)));
        Box::pin(future)
    }
}

/// Serves HTTPS on `listener` until `shutdown` completes, then stops
/// accepting, marks the server unready and drains requests in flight.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    limits: &LimitsConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let handler_state = state.clone();
    let metrics = state.metrics.clone();
    let service = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(FinishLayer { metrics })
        .timeout(limits.request_timeout_ms)
        .layer(GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent_requests,
        ))
        .layer(BodyLimitLayer {
            limit: limits.max_body_bytes,
        })
        .service_fn(move |req| route(handler_state.clone(), req));

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout_ms);
    let head_timeout = limits.header_read_timeout_ms;
    let graceful = GracefulShutdown::new();
    state.set_ready(true);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // No Nagle delay: an h2 response goes out as several small writes
        // (HEADERS, DATA, TLS records), and holding one back until the
        // client ACKs the last meets the client's delayed ACK: a 40 ms stall
        // on about 1 % of h2 requests (what kube-apiserver speaks), measured
        // by benches/policy-scale.sh before this line.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(service.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(head_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let (service, served) = first_request::noting(service);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            let conn = watcher.watch(conn.into_owned());
            first_request::finish_or_cut(conn, served, head_timeout, peer).await;
        });
    }
    state.set_ready(false);
    tracing::info!("shutting down: draining requests in flight");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    Ok(())
}
