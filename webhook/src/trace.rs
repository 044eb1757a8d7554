//! Distributed tracing of admission requests (docs/observability.md):
//! when the webhook's config has `tracing:`, a review that arrives with a
//! `traceparent` (kube-apiserver sends one when its own tracing is on)
//! continues that trace; spans for decode, the namespace lookup, the
//! policies and the patch hang under the request's server span.
//!
//! With no `tracing:` nothing is started: [`tracer`] is `None` and every
//! helper here returns at once. Spans never hold up a decision: export is
//! `tollgate-otel`'s bounded batch queue.

use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Turns tracing on for this process (`serve`, once).
pub fn install(provider: &opentelemetry_sdk::trace::SdkTracerProvider) {
    use opentelemetry::trace::TracerProvider as _;
    let _ = TRACER.set(provider.tracer("tollgate-webhook"));
}

/// The tracer, when tracing is on.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// The server span of an admission request, continuing the trace in
/// `headers` when there is one.
pub fn server_span(headers: &http::HeaderMap, method: &str, path: &str) -> Option<Context> {
    let tracer = tracer()?;
    let parent =
        TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    let span = tracer
        .span_builder(format!("{method} {path}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method.to_owned()),
            KeyValue::new("http.route", path.to_owned()),
        ])
        .start_with_context(tracer, &parent);
    Some(parent.with_span(span))
}

/// A child of `parent` starting now; end it with [`end`].
pub fn child(parent: &Context, name: &'static str) -> Option<Context> {
    let tracer = tracer()?;
    if !parent.span().is_recording() {
        return None;
    }
    let span = tracer.start_with_context(name, parent);
    Some(parent.with_span(span))
}

/// Ends the span of `cx`, with `attributes` added.
pub fn end(cx: Option<Context>, attributes: impl IntoIterator<Item = KeyValue>) {
    if let Some(cx) = cx {
        let span = cx.span();
        span.set_attributes(attributes);
        span.end();
    }
}

/// A finished child span of the current context (the request's, while
/// `Admission::decide` runs under it), from `start` to `end`.
pub fn record_current(name: String, start: SystemTime, end: SystemTime, attributes: Vec<KeyValue>) {
    let Some(tracer) = tracer() else { return };
    let parent = Context::current();
    if !parent.span().is_recording() {
        return;
    }
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    span.end_with_timestamp(end);
}

/// Like [`record_current`], returning the span's context (still open
/// until `end_at`) so that children can be recorded under it.
pub fn open_current(
    name: &'static str,
    start: SystemTime,
    attributes: Vec<KeyValue>,
) -> Option<Context> {
    let tracer = tracer()?;
    let parent = Context::current();
    if !parent.span().is_recording() {
        return None;
    }
    let span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    Some(parent.with_span(span))
}

/// A finished child of `parent` from `start` to `end`.
pub fn record_under(
    parent: &Context,
    name: String,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
) {
    let Some(tracer) = tracer() else { return };
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    span.end_with_timestamp(end);
}

/// The trace ID of the current context, when it has a valid one (the
/// decision log line's `trace_id`).
pub fn current_trace_id() -> Option<String> {
    tracer()?;
    let cx = Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}
