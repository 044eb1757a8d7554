//! The one place a request-path error becomes a response.
//!
//! Every layer fails with a [`ProxyError`]; the top of the stack
//! ([`crate::stack::Finish`]) hands it to [`error_response`]. Plain HTTP
//! requests get the status below with an `x-tollgate-reason` header and a
//! one-line text body; gRPC requests (`content-type: application/grpc…`)
//! get HTTP 200 with `grpc-status` and `grpc-message` ("trailers-only"), as
//! gRPC clients expect, and the same reason header.
//!
//! | error | HTTP | gRPC | reason |
//! |---|---|---|---|
//! | no client identity on a route with an allow-list | 403 | 7 PERMISSION_DENIED | `identity-required` |
//! | identity not in the route's allow-list | 403 | 7 PERMISSION_DENIED | `identity-not-allowed` |
//! | no outbound upstream for the `Host` | 404 | 12 UNIMPLEMENTED | `no-upstream` |
//! | request body over `limits.maxBodyBytes` | 413 | 8 RESOURCE_EXHAUSTED | `body-too-large` |
//! | an h2 request head over `limits.maxHeaderBytes` (HTTP/1.1: hyper's own 431) | 431 | 8 RESOURCE_EXHAUSTED | `head-too-large` |
//! | a request the proxy cannot forward | 400 | 13 INTERNAL | `bad-request` |
//! | a path refused by normalisation (`paths`) | 400 | 3 INVALID_ARGUMENT | `bad-path` |
//! | upstream refused or unreachable | 503 | 14 UNAVAILABLE | `upstream-unavailable` |
//! | connect or response-headers timeout | 504 | 4 DEADLINE_EXCEEDED | `upstream-timeout` |
//! | upstream TLS handshake failed | 502 | 14 UNAVAILABLE | `upstream-tls` |
//! | upstream reset or broke the protocol | 502 | 14 UNAVAILABLE | `upstream-error` |
//! | no token on a route that requires one | 401 | 16 UNAUTHENTICATED | `jwt-missing` |
//! | a token that does not verify | 401 | 16 UNAUTHENTICATED | `jwt-invalid` |
//! | over the route's rate limit | 429 | 8 RESOURCE_EXHAUSTED | `rate-limited` |
//! | a deny rule of the route's `authorization` matched | 403 | 7 PERMISSION_DENIED | `authz-denied` |
//! | the route has allow rules and none matched | 403 | 7 PERMISSION_DENIED | `authz-not-allowed` |
//! | no token, from a browser, with `jwt.browserLogin` set | 302 to the login URL | (16 UNAUTHENTICATED) | `jwt-missing` |
//! | a shared limit whose Redis is down, `failureMode: deny` | 503 | 14 UNAVAILABLE | `rate-limit-unavailable` |
//!
//! 401s carry `WWW-Authenticate: Bearer …` (RFC 6750: `error="invalid_token"`
//! and the cause as `error_description`); 429s carry `Retry-After`,
//! `RateLimit-Policy` and `RateLimit`, on gRPC answers too.
//!
//! An upstream that fails after its response headers went out (the app
//! killed mid-stream) cannot change the status any more. A gRPC stream
//! over HTTP/2 then ends with the trailers `grpc-status: 14` and the cause
//! ([`GrpcRescue`]), so the client sees UNAVAILABLE as in the table rather
//! than a reset stream (which gRPC clients report as UNKNOWN or INTERNAL);
//! any other response is cut off (HTTP/1.1: the connection closes before
//! the body's end; h2: the stream is reset), never ended as if complete.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, ProxyBody};
use crate::jwt::JwtError;
use crate::ratelimit::{Limited, add_limited_headers};
use tollgate_listen::capped_body::TooLarge;

pub const REASON_HEADER: &str = "x-tollgate-reason";

/// Why a request was not forwarded, or failed upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("route {route} requires a client certificate with an allowed SPIFFE ID")]
    IdentityRequired { route: String },
    #[error("peer {peer} is not allowed on route {route}")]
    IdentityNotAllowed { peer: String, route: String },
    #[error("no outbound upstream is configured for host {host:?}")]
    NoUpstream { host: String },
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request head exceeds the limit of {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("bad path: {0}")]
    BadPath(#[from] crate::path::PathError),
    #[error("upstream {upstream} is unavailable: {cause}")]
    Unavailable { upstream: String, cause: String },
    #[error("upstream {upstream} did not answer within {after:?}")]
    Timeout { upstream: String, after: Duration },
    #[error("TLS to upstream {upstream} failed: {cause}")]
    UpstreamTls { upstream: String, cause: String },
    #[error("upstream {upstream} failed: {cause}")]
    Upstream { upstream: String, cause: String },
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] JwtError),
    #[error("{0}")]
    RateLimited(#[from] Limited),
    /// The body names the rule class and the route, never a claim.
    #[error("forbidden: a deny rule of route {route} matched")]
    AuthzDenied { route: String },
    #[error("forbidden: no allow rule of route {route} matched")]
    AuthzNotAllowed { route: String },
    /// A browser without a token: sent to log in, and back.
    #[error("login required: see {location}")]
    LoginRequired { location: String },
}

impl From<crate::jwt::layer::LoginRequired> for ProxyError {
    fn from(l: crate::jwt::layer::LoginRequired) -> ProxyError {
        ProxyError::LoginRequired { location: l.0 }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::IdentityRequired { .. } | ProxyError::IdentityNotAllowed { .. } => {
                StatusCode::FORBIDDEN
            }
            ProxyError::NoUpstream { .. } => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadRequest(_) | ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamTls { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ProxyError::RateLimited(l) if l.unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::AuthzDenied { .. } | ProxyError::AuthzNotAllowed { .. } => {
                StatusCode::FORBIDDEN
            }
            ProxyError::LoginRequired { .. } => StatusCode::FOUND,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::IdentityRequired { .. } => "identity-required",
            ProxyError::IdentityNotAllowed { .. } => "identity-not-allowed",
            ProxyError::NoUpstream { .. } => "no-upstream",
            ProxyError::BodyTooLarge { .. } => "body-too-large",
            ProxyError::HeadTooLarge { .. } => "head-too-large",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::BadPath(_) => "bad-path",
            ProxyError::Unavailable { .. } => "upstream-unavailable",
            ProxyError::Timeout { .. } => "upstream-timeout",
            ProxyError::UpstreamTls { .. } => "upstream-tls",
            ProxyError::Upstream { .. } => "upstream-error",
            ProxyError::Unauthenticated(JwtError::Missing) => "jwt-missing",
            ProxyError::Unauthenticated(_) => "jwt-invalid",
            ProxyError::RateLimited(l) if l.unavailable => "rate-limit-unavailable",
            ProxyError::RateLimited(_) => "rate-limited",
            ProxyError::AuthzDenied { .. } => "authz-denied",
            ProxyError::AuthzNotAllowed { .. } => "authz-not-allowed",
            ProxyError::LoginRequired { .. } => "jwt-missing",
        }
    }

    /// The gRPC status code for gRPC requests.
    pub fn grpc_code(&self) -> u8 {
        match self {
            ProxyError::IdentityRequired { .. } | ProxyError::IdentityNotAllowed { .. } => 7,
            ProxyError::NoUpstream { .. } => 12,
            ProxyError::BodyTooLarge { .. } | ProxyError::HeadTooLarge { .. } => 8,
            ProxyError::BadRequest(_) => 13,
            ProxyError::BadPath(_) => 3,
            ProxyError::Timeout { .. } => 4,
            ProxyError::Unavailable { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::Upstream { .. } => 14,
            ProxyError::Unauthenticated(_) => 16,
            ProxyError::RateLimited(l) if l.unavailable => 14,
            ProxyError::RateLimited(_) => 8,
            ProxyError::AuthzDenied { .. } | ProxyError::AuthzNotAllowed { .. } => 7,
            ProxyError::LoginRequired { .. } => 16,
        }
    }

    /// Classifies a failure of the pool's connection to `upstream`.
    pub fn from_pool(upstream: &str, error: crate::pool::PoolError) -> ProxyError {
        use crate::pool::PoolError;
        if let Some(limit) = find_source::<TooLarge>(&error).map(|e| e.limit) {
            return ProxyError::BodyTooLarge {
                limit: limit as u64,
            };
        }
        let cause = chain(&error);
        let upstream = upstream.to_owned();
        match &error {
            PoolError::ConnectTimeout { after, .. } => ProxyError::Timeout {
                upstream,
                after: *after,
            },
            PoolError::Tls { source, .. } if is_tls_error(source) => {
                ProxyError::UpstreamTls { upstream, cause }
            }
            e if e.is_connect() => ProxyError::Unavailable { upstream, cause },
            _ => ProxyError::Upstream { upstream, cause },
        }
    }
}

/// The first error of type `E` in `error`'s source chain (itself included).
fn find_source<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Whether a rustls error is in `error`'s chain, looking inside I/O errors
/// too (an `io::Error`'s `source()` skips the error it wraps).
fn is_tls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if is_tls_error(inner) {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// `error: cause: cause…` in one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        current = e.source();
    }
    out
}

/// Whether a request is gRPC (its errors are answered as gRPC statuses).
pub fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// Whether a failure of the response body can be answered with gRPC
/// trailers: a gRPC request (not gRPC-Web, whose trailers travel in the
/// body) over HTTP/2, where trailers always reach the client.
pub fn can_rescue_grpc<B>(request: &http::Request<B>) -> bool {
    request.version() == http::Version::HTTP_2
        && is_grpc(request)
        && !request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc-web"))
}

/// A gRPC response body that, when the upstream fails mid-stream, ends
/// with `grpc-status: 14` (UNAVAILABLE) trailers naming the cause instead
/// of failing (see the module docs).
pub struct GrpcRescue<B> {
    inner: B,
    upstream: std::sync::Arc<str>,
    done: bool,
}

impl<B> GrpcRescue<B> {
    pub fn new(inner: B, upstream: std::sync::Arc<str>) -> GrpcRescue<B> {
        GrpcRescue {
            inner,
            upstream,
            done: false,
        }
    }
}

impl<B> hyper::body::Body for GrpcRescue<B>
where
    B: hyper::body::Body<Data = bytes::Bytes, Error = tower::BoxError> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, tower::BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Err(e)) => {
                self.done = true;
                let error = ProxyError::Upstream {
                    upstream: self.upstream.to_string(),
                    cause: chain(&*e),
                };
                tracing::warn!(
                    error = %error,
                    "upstream failed mid-stream; ending the gRPC stream with UNAVAILABLE"
                );
                let mut trailers = http::HeaderMap::new();
                trailers.insert(
                    "grpc-status",
                    HeaderValue::from(u16::from(error.grpc_code())),
                );
                if let Ok(v) = HeaderValue::from_str(&percent_encode(&error.to_string())) {
                    trailers.insert("grpc-message", v);
                }
                trailers.insert(REASON_HEADER, HeaderValue::from_static(error.reason()));
                Poll::Ready(Some(Ok(hyper::body::Frame::trailers(trailers))))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        if self.done {
            hyper::body::SizeHint::with_exact(0)
        } else {
            // Trailers may come that the inner body never promised.
            let mut hint = hyper::body::SizeHint::new();
            hint.set_lower(self.inner.size_hint().lower());
            hint
        }
    }
}

/// The response for `error`; `grpc` says whether the request was gRPC.
pub fn error_response(error: &ProxyError, grpc: bool) -> Response<ProxyBody> {
    let reason = HeaderValue::from_static(error.reason());
    let message = error.to_string();
    if grpc {
        let mut response = Response::new(body::empty());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(
            "grpc-status",
            HeaderValue::from(u16::from(error.grpc_code())),
        );
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
            headers.insert("grpc-message", v);
        }
        headers.insert(REASON_HEADER, reason);
        add_cause_headers(error, headers);
        return response;
    }
    let mut response = Response::new(body::full(format!("{message}\n")));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(REASON_HEADER, reason);
    add_cause_headers(error, headers);
    response
}

/// What a client needs to retry: the bearer challenge, the rate limit.
fn add_cause_headers(error: &ProxyError, headers: &mut http::HeaderMap) {
    match error {
        ProxyError::Unauthenticated(JwtError::Missing) => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate\""),
            );
        }
        ProxyError::Unauthenticated(e) => {
            let description = e.to_string().replace(['"', '\\'], "'");
            let challenge = format!(
                "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{description}\""
            );
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        ProxyError::RateLimited(limited) => add_limited_headers(headers, limited),
        ProxyError::LoginRequired { location } => {
            if let Ok(v) = HeaderValue::from_str(location) {
                headers.insert(header::LOCATION, v);
            }
        }
        _ => {}
    }
}

/// `grpc-message` encoding: printable ASCII except `%` as is, the rest
/// percent-encoded (UTF-8 bytes).
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_errors_carry_status_and_reason() {
        let e = ProxyError::IdentityNotAllowed {
            peer: "spiffe://x/ns/a/sa/b".into(),
            route: "/".into(),
        };
        let r = error_response(&e, false);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[REASON_HEADER], "identity-not-allowed");
        let e = ProxyError::Timeout {
            upstream: "app".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(
            error_response(&e, false).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }

    #[test]
    fn grpc_errors_are_grpc_statuses() {
        let e = ProxyError::Unavailable {
            upstream: "127.0.0.1:1".into(),
            cause: "connection refused — 100%".into(),
        };
        let r = error_response(&e, true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()[REASON_HEADER], "upstream-unavailable");
        let msg = r.headers()["grpc-message"].to_str().unwrap();
        assert!(msg.ends_with("refused %E2%80%94 100%25"), "{msg}");
        let e = ProxyError::Timeout {
            upstream: "a".into(),
            after: Duration::ZERO,
        };
        assert_eq!(error_response(&e, true).headers()["grpc-status"], "4");
    }

    #[tokio::test]
    async fn a_grpc_body_failing_mid_stream_ends_with_unavailable_trailers() {
        use http_body_util::BodyExt as _;
        let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, tower::BoxError>> = vec![
            Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"abc"))),
            Err("connection reset".into()),
            Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                b"never",
            ))),
        ];
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let body = GrpcRescue::new(inner, "app 127.0.0.1:8080".into());
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(collected.to_bytes(), "abc");
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(trailers[REASON_HEADER], "upstream-error");
        assert_eq!(
            trailers["grpc-message"],
            "upstream app 127.0.0.1:8080 failed: connection reset"
        );
    }

    #[test]
    fn only_grpc_over_h2_is_rescued() {
        let request = |version, ct: &str| {
            http::Request::builder()
                .version(version)
                .header(header::CONTENT_TYPE, ct)
                .body(())
                .unwrap()
        };
        assert!(can_rescue_grpc(&request(
            http::Version::HTTP_2,
            "application/grpc+proto"
        )));
        assert!(!can_rescue_grpc(&request(
            http::Version::HTTP_11,
            "application/grpc"
        )));
        assert!(!can_rescue_grpc(&request(
            http::Version::HTTP_2,
            "application/grpc-web"
        )));
        assert!(!can_rescue_grpc(&request(
            http::Version::HTTP_2,
            "application/json"
        )));
    }
}
