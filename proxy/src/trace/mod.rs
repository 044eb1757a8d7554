//! Distributed tracing (docs/proxy.md#tracing): W3C trace context
//! (`traceparent`, `tracestate`) read and written with OpenTelemetry's
//! propagator, one server span per request and one client span per
//! upstream call, exported over OTLP (`tollgate-otel`).
//!
//! It must never hold up or fail a request: spans end into a bounded
//! queue and are dropped, and counted, when the collector is slow or down.
//! With no `tracing:` section nothing here is on the request path: a
//! `traceparent` that arrives passes through to the app unchanged.
//!
//! The request's span rides on the request as a [`RequestSpan`]
//! extension; the layers below add their decisions to it with [`note`]
//! (nothing happens when tracing is off or the trace is not sampled).

pub mod request_id;

use std::time::SystemTime;

use http::{HeaderMap, Request};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

pub use tollgate_otel::{TraceMetrics, TracingConfig};

/// The process's tracer: cloned into each listener's stack.
#[derive(Clone, Debug)]
pub struct Tracing {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

/// The span of one request (its server span), as a request extension,
/// with the tracer for its children.
#[derive(Clone, Debug)]
pub struct RequestSpan {
    pub cx: Context,
    pub tracing: Tracing,
}

impl RequestSpan {
    /// A finished child span that took `spent` up to now.
    pub fn child_done(&self, name: String, spent: std::time::Duration) {
        if self.cx.span().is_recording() {
            self.tracing.child_done(&self.cx, name, spent);
        }
    }
}

impl Tracing {
    pub fn new(provider: &SdkTracerProvider) -> Tracing {
        Tracing {
            tracer: provider.tracer("tollgate-proxy"),
            propagator: TraceContextPropagator::new(),
        }
    }

    /// Starts the server span of a request, continuing the trace its
    /// headers carry (sampled as its parent was) or starting one.
    pub fn server_span<B>(&self, request: &Request<B>, direction: &'static str) -> Context {
        let parent = self.propagator.extract(&HeaderExtractor(request.headers()));
        let method = request.method().as_str().to_owned();
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("url.path", request.uri().path().to_owned()),
            KeyValue::new("network.protocol.version", version(request.version())),
            KeyValue::new("tollgate.direction", direction),
        ];
        if let Some(id) = request
            .headers()
            .get(request_id::HEADER)
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(KeyValue::new(
                "http.request.header.x-request-id",
                id.to_owned(),
            ));
        }
        let span = self
            .tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        parent.with_span(span)
    }

    /// Starts the client span of an upstream call under `parent` and
    /// writes its context into the outgoing `headers`, so the app's spans
    /// are its children.
    pub fn client_span(
        &self,
        parent: &Context,
        method: &http::Method,
        upstream: &str,
        url: &http::Uri,
        headers: &mut HeaderMap,
    ) -> Context {
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.as_str().to_owned()),
            KeyValue::new("server.address", upstream.to_owned()),
            KeyValue::new("url.full", url.to_string()),
        ];
        if let Some(port) = url.port_u16() {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        let span = self
            .tracer
            .span_builder(method.as_str().to_owned())
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, parent);
        let cx = parent.with_span(span);
        self.propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
        cx
    }

    /// A finished child span under `parent` that took `spent` up to now
    /// (a filter's time over its callbacks).
    pub fn child_done(&self, parent: &Context, name: String, spent: std::time::Duration) {
        let end = SystemTime::now();
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(end.checked_sub(spent).unwrap_or(end))
            .start_with_context(&self.tracer, parent);
        span.end_with_timestamp(end);
    }
}

/// The trace ID of a request's span, when it has one (for logs).
pub fn trace_id(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Adds `key = value` to the request's span, if it is traced.
pub fn note<B>(request: &Request<B>, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if let Some(RequestSpan { cx, .. }) = request.extensions().get::<RequestSpan>() {
        let span = cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(key, value.into()));
        }
    }
}

/// Ends a span with the response's status (and the refusal's reason).
pub fn end(cx: &Context, status: u16, reason: Option<&str>, server: bool) {
    let span = cx.span();
    if span.is_recording() {
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(reason) = reason {
            span.set_attribute(KeyValue::new("tollgate.reason", reason.to_owned()));
        }
        // Server spans: 5xx is an error, 4xx the client's; client spans:
        // any 4xx/5xx (semantic conventions).
        if status >= 500 || (!server && status >= 400) {
            span.set_status(Status::error(reason.unwrap_or("").to_owned()));
        }
    }
    span.end();
}

/// Ends a client span whose call failed before any response.
pub fn end_failed(cx: &Context, error: &str) {
    let span = cx.span();
    if span.is_recording() {
        span.set_attribute(KeyValue::new("error.type", error.to_owned()));
        span.set_status(Status::error(error.to_owned()));
    }
    span.end();
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Names the request's span for its route (`METHOD pathPrefix`) and adds
/// `http.route`.
pub fn route<B>(request: &Request<B>, path_prefix: &str) {
    if let Some(RequestSpan { cx, .. }) = request.extensions().get::<RequestSpan>() {
        let span = cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.route", path_prefix.to_owned()));
            span.update_name(format!("{} {path_prefix}", request.method()));
        }
    }
}

/// The trace ID a request's `traceparent` names, for the access log when
/// tracing is off (the header passes through unchanged then).
pub fn incoming_trace_id(headers: &HeaderMap) -> Option<String> {
    headers.get("traceparent")?;
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    trace_id(&cx)
}
