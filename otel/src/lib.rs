//! Span export shared by `tollgate serve` and `tollgate-proxy`: the
//! `tracing:` section both configs take ([`TracingConfig`]), and the
//! tracer provider behind it ([`provider`]): a parent-based ratio sampler,
//! OpenTelemetry's batch span processor behind a bound that counts every
//! span it drops, OTLP/HTTP protobuf posted through hyper.
//!
//! What it must never do: make a request wait for the collector, or pull a
//! second HTTP/TLS stack or a gRPC stack into the proxy. Spans themselves
//! (which, with what attributes) belong to each server.

pub mod config;
pub mod export;

pub use config::TracingConfig;
pub use export::{TraceMetrics, provider};
