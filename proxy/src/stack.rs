//! The request pipeline: one tower stack per listener, built once and
//! cloned per connection. It reads top to bottom:
//!
//! ```text
//! finish      errors → responses (errors.rs), metrics, access log,
//!             x-request-id, the server span (trace/, when tracing is on)
//! paths       normalised once (path.rs); refused → 400; forwarded as normalised (inbound)
//! limits      an h2 head over limits.maxHeaderBytes → 431 (its stream only);
//!             a body over limits.maxBodyBytes → 413 once read on (to twice it); counted
//! route       the one route table, matched once → Arc<Route> extension (route.rs)
//! identity    the route's allow-list of SPIFFE IDs → 403       (inbound)
//! jwt         the route's token → 401; claims as headers/extension (inbound)
//! rate limit  the route's GCRA bucket for the request's key → 429 (inbound)
//! authz       the route's authorization rules → 403             (inbound)
//! filters     the route's proxy-wasm chain                     (inbound)
//! forward     the upstream's connection pool (pool.rs); upgrades spliced
//! ```
//!
//! Every layer below `route` reads the request's match; none matches paths
//! itself. The outbound listener's stack is the same with an empty route
//! table (its clients are the app on localhost, without certificates).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tollgate_listen::capped_body::CappedBody;
use tower::{Layer, Service, ServiceBuilder};

use crate::authz::AuthzLayer;
use crate::authz::layer::Authorize;
use crate::body::{Metered, ProxyBody};
use crate::config::{AccessLogConfig, Config};
use crate::errors::{ProxyError, REASON_HEADER, error_response, is_grpc};
use crate::filters::{Filters, FiltersLayer};
use crate::forward::Forward;
use crate::identity::{CheckIdentity, IdentityLayer};
use crate::jwt::JwtLayer;
use crate::jwt::layer::CheckJwt;
use crate::listener::ConnInfo;
use crate::metrics::{Direction, DirectionMetrics};
use crate::ratelimit::{CheckRate, RateLimitLayer};
use crate::route::{MatchRoute, RouteLayer, RouteTable};
use crate::trace::{RequestSpan, Tracing};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The policy layers between identity and forwarding, built once per
/// process (they hold JWKS caches, rate-limit buckets and filter hosts).
#[derive(Clone)]
pub struct Policies {
    pub jwt: JwtLayer,
    pub rate_limit: RateLimitLayer,
    pub authz: AuthzLayer,
    pub filters: FiltersLayer,
}

impl Policies {
    /// None at all: the outbound listener's (its client is the app itself).
    pub fn none() -> Policies {
        Policies {
            jwt: JwtLayer::disabled(),
            rate_limit: RateLimitLayer::disabled(),
            authz: AuthzLayer::disabled(),
            filters: FiltersLayer::disabled(),
        }
    }
}

/// The stack for one listener, as hyper gets it.
pub type Stack = Finish<
    Normalize<
        BodyLimit<MatchRoute<CheckIdentity<CheckJwt<CheckRate<Authorize<Filters<Forward>>>>>>>,
    >,
>;

/// Builds a listener's stack. `routes` is empty for the outbound listener.
pub fn build(
    config: &Config,
    direction: Direction,
    metrics: DirectionMetrics,
    routes: RouteTable,
    policies: Policies,
    forward: Forward,
    tracing: Option<Tracing>,
) -> Stack {
    ServiceBuilder::new()
        .layer(FinishLayer {
            shared: Arc::new(FinishShared {
                direction,
                metrics: metrics.clone(),
                log: config.access_log.clone(),
                tracing,
            }),
        })
        .layer(NormalizeLayer {
            config: config.paths,
            enabled: direction == Direction::Inbound,
        })
        .layer(BodyLimitLayer {
            limit: config.limits.max_body_bytes,
            max_head: config.limits.max_header_bytes,
            metrics,
        })
        .layer(RouteLayer::new(routes))
        .layer(IdentityLayer)
        .layer(policies.jwt)
        .layer(policies.rate_limit)
        .layer(policies.authz)
        .layer(policies.filters)
        .service(forward)
}

struct FinishShared {
    direction: Direction,
    metrics: DirectionMetrics,
    log: AccessLogConfig,
    tracing: Option<Tracing>,
}

#[derive(Clone)]
pub struct FinishLayer {
    shared: Arc<FinishShared>,
}

impl<S> Layer<S> for FinishLayer {
    type Service = Finish<S>;
    fn layer(&self, inner: S) -> Finish<S> {
        Finish {
            inner,
            shared: self.shared.clone(),
            conn: None,
        }
    }
}

/// The top of the stack: attaches the connection's [`ConnInfo`], turns
/// every error from below into a response ([`error_response`]), counts
/// it, and writes the access log line.
#[derive(Clone)]
pub struct Finish<S> {
    inner: S,
    shared: Arc<FinishShared>,
    conn: Option<Arc<ConnInfo>>,
}

impl<S> Finish<S> {
    /// This stack for one connection.
    pub fn for_connection(&self, conn: Arc<ConnInfo>) -> Finish<S>
    where
        S: Clone,
    {
        Finish {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            conn: Some(conn),
        }
    }
}

impl<S> Service<Request<Incoming>> for Finish<S>
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Response<ProxyBody>, std::convert::Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Every layer below is always ready; an error here would have no
        // request to answer, so readiness errors surface on the call.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        let start = Instant::now();
        let shared = self.shared.clone();
        shared.metrics.requests.inc();
        let grpc = is_grpc(&request);
        let conn = self.conn.clone();
        if let Some(conn) = &conn {
            request.extensions_mut().insert(conn.clone());
        }
        let request_id = crate::trace::request_id::ensure(request.headers_mut());
        let span = shared.tracing.as_ref().map(|tracing| {
            let cx = tracing.server_span(&request, shared.direction.as_str());
            if let Some(conn) = &conn {
                use opentelemetry::trace::TraceContextExt as _;
                let span = cx.span();
                if span.is_recording() {
                    span.set_attribute(opentelemetry::KeyValue::new(
                        "client.address",
                        conn.peer.ip().to_string(),
                    ));
                    if let Some(id) = &conn.identity {
                        span.set_attribute(opentelemetry::KeyValue::new(
                            "tollgate.peer.identity",
                            id.to_string(),
                        ));
                    }
                }
            }
            request.extensions_mut().insert(RequestSpan {
                cx: cx.clone(),
                tracing: tracing.clone(),
            });
            cx
        });
        let log = shared.log.enabled
            && !shared
                .log
                .exclude_paths
                .iter()
                .any(|p| p == request.uri().path());
        let line = log.then(|| AccessLine {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            version: request.version(),
            host: request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| request.uri().authority().map(|a| a.as_str()))
                .unwrap_or("")
                .to_owned(),
            request_id: request_id.clone(),
            trace_id: match &span {
                Some(cx) => crate::trace::trace_id(cx),
                None => crate::trace::incoming_trace_id(request.headers()),
            },
        });
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let (mut response, error) = match result {
                Ok(response) => (response, None),
                Err(e) => {
                    let response = error_response(&e, grpc);
                    (response, Some(e))
                }
            };
            response
                .headers_mut()
                .entry(crate::trace::request_id::HEADER)
                .or_insert(request_id);
            if let Some(cx) = &span {
                crate::trace::end(
                    cx,
                    response.status().as_u16(),
                    error.as_ref().map(|e| e.reason()),
                    true,
                );
            }
            let elapsed = start.elapsed();
            let status = response.status().as_u16();
            shared.metrics.response(status);
            shared.metrics.duration.observe(elapsed.as_secs_f64());
            match (line, &error) {
                (Some(line), _) => {
                    line.write(&shared, conn.as_deref(), &response, elapsed, error.as_ref())
                }
                (None, Some(e)) => tracing::debug!(error = %e, "request failed"),
                (None, None) => {}
            }
            Ok(response)
        })
    }
}

struct AccessLine {
    method: String,
    path: String,
    version: http::Version,
    host: String,
    request_id: http::HeaderValue,
    trace_id: Option<String>,
}

impl AccessLine {
    fn write(
        self,
        shared: &FinishShared,
        conn: Option<&ConnInfo>,
        response: &Response<ProxyBody>,
        elapsed: std::time::Duration,
        error: Option<&ProxyError>,
    ) {
        let grpc_status = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok());
        let reason = response
            .headers()
            .get(REASON_HEADER)
            .and_then(|v| v.to_str().ok());
        tracing::info!(
            target: "access",
            direction = shared.direction.as_str(),
            method = %self.method,
            host = %self.host,
            path = %self.path,
            version = ?self.version,
            status = response.status().as_u16(),
            grpc_status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            peer = conn.map(|c| c.peer.ip().to_string()),
            identity = conn.and_then(|c| c.identity.as_deref()),
            reason,
            error = error.map(|e| e.to_string()),
            request_id = self.request_id.to_str().unwrap_or_default(),
            trace_id = self.trace_id.as_deref(),
        );
    }
}

/// Normalises the request path before any route looks at it
/// ([`crate::path`]) and rewrites the URI, so the app receives the path
/// that was checked. A path normalisation refuses is a 400 `bad-path`.
/// Inbound only: the outbound listener has no routes, and its client is
/// the app.
#[derive(Clone)]
pub struct NormalizeLayer {
    config: crate::path::PathConfig,
    enabled: bool,
}

impl<S> Layer<S> for NormalizeLayer {
    type Service = Normalize<S>;
    fn layer(&self, inner: S) -> Normalize<S> {
        Normalize {
            inner,
            config: self.config,
            enabled: self.enabled,
        }
    }
}

#[derive(Clone)]
pub struct Normalize<S> {
    inner: S,
    config: crate::path::PathConfig,
    enabled: bool,
}

/// The request with its path normalised.
pub fn normalize_request<B>(
    mut request: Request<B>,
    config: &crate::path::PathConfig,
) -> Result<Request<B>, ProxyError> {
    let uri = request.uri();
    // `OPTIONS *` and CONNECT's authority-form have no path to normalise.
    if uri.path() == "*"
        || (request.method() == http::Method::CONNECT && !uri.path().starts_with('/'))
    {
        return Ok(request);
    }
    let normal = match crate::path::normalize(uri.path(), config)? {
        std::borrow::Cow::Borrowed(_) => return Ok(request),
        std::borrow::Cow::Owned(normal) => normal,
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal,
    };
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|e: http::uri::InvalidUri| ProxyError::BadRequest(e.to_string()))?,
    );
    *request.uri_mut() =
        http::Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    Ok(request)
}

impl<S, B> Service<Request<B>> for Normalize<S>
where
    S: Service<Request<B>, Error = ProxyError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<S::Response, ProxyError>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        use futures_util::future::Either;
        if !self.enabled {
            return Either::Right(self.inner.call(request));
        }
        match normalize_request(request, &self.config) {
            Ok(request) => Either::Right(self.inner.call(request)),
            Err(e) => Either::Left(std::future::ready(Err(e))),
        }
    }
}

/// Caps request bodies at `limits.maxBodyBytes` and counts their bytes.
/// Past the cap the rest is read and thrown away (up to as much again,
/// `CappedBody`) before the 413, declared or streamed, so an h2 client
/// still uploading gets the answer, not a reset. The body becomes a
/// [`ProxyBody`] here.
///
/// It also refuses an h2 head over `limits.maxHeaderBytes` with 431. The
/// h2 settings announce four times that as the header list size (see
/// `listener::http_builder`), so the h2 crate decodes such a head and the
/// refusal costs the client its stream, not its connection.
#[derive(Clone)]
pub struct BodyLimitLayer {
    limit: Option<u64>,
    max_head: usize,
    metrics: DirectionMetrics,
}

/// The size of `request`'s head as HTTP/2 counts a header list (RFC 9113
/// §6.5.2: each field's name and value, plus 32), pseudo-headers included.
fn head_list_size<B>(request: &Request<B>) -> usize {
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    let uri = request.uri();
    let pseudo = request.method().as_str().len()
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.scheme_str().map_or(0, str::len)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + 4 * 32
        + ":method:path:scheme:authority".len();
    fields + pseudo
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            inner,
            limit: self.limit,
            max_head: self.max_head,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BodyLimit<S> {
    inner: S,
    limit: Option<u64>,
    max_head: usize,
    metrics: DirectionMetrics,
}

impl<S> Service<Request<Incoming>> for BodyLimit<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        // HTTP/1.1 heads are capped by hyper's read buffer already.
        if request.version() == http::Version::HTTP_2 && head_list_size(&request) > self.max_head {
            let limit = self.max_head;
            return Box::pin(std::future::ready(Err(ProxyError::HeadTooLarge { limit })));
        }
        let counter = self.metrics.request_bytes.clone();
        let Some(limit) = self.limit else {
            let request = request.map(|body| Metered::new(body, counter).boxed_unsync());
            return Box::pin(self.inner.call(request));
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let cap = usize::try_from(limit).unwrap_or(usize::MAX);
        if let Some(length) = declared.filter(|len| *len > limit) {
            // Read and thrown away first (up to twice the limit), so a
            // client still sending gets the 413 rather than a reset.
            let mut body = request.into_body();
            return Box::pin(async move {
                if CappedBody::<Incoming>::drainable(length, cap) {
                    // Frame by frame, nothing kept: the body is never buffered.
                    let mut seen: u64 = 0;
                    while let Some(Ok(frame)) = body.frame().await {
                        seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                        if seen > length {
                            break;
                        }
                    }
                }
                Err(ProxyError::BodyTooLarge { limit })
            });
        }
        let request =
            request.map(|body| Metered::new(CappedBody::new(body, cap), counter).boxed_unsync());
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::PathConfig;

    fn uri_after(uri: &str) -> Result<String, String> {
        let request = Request::builder().uri(uri).body(()).unwrap();
        normalize_request(request, &PathConfig::default())
            .map(|r| r.uri().to_string())
            .map_err(|e| e.reason().to_owned())
    }

    #[test]
    fn the_normalised_path_replaces_the_uri_path_and_keeps_the_query() {
        assert_eq!(uri_after("/a/../b?x=/../y").unwrap(), "/b?x=/../y");
        assert_eq!(uri_after("/%61dmin/x").unwrap(), "/admin/x");
        assert_eq!(
            uri_after("https://h:1//admin/./x?q").unwrap(),
            "https://h:1/admin/x?q"
        );
        assert_eq!(uri_after("/plain?q=1").unwrap(), "/plain?q=1");
        assert_eq!(uri_after("*").unwrap(), "*");
        assert_eq!(uri_after("/admin%2Fx").unwrap_err(), "bad-path");
    }
}
