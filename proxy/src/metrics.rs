//! The proxy's Prometheus metrics, in one registry (served on the admin
//! port's `/metrics`). Each series carries `direction="inbound|outbound"`.
//!
//! | metric | type |
//! |---|---|
//! | `tollgate_proxy_requests_total{direction}` | counter |
//! | `tollgate_proxy_responses_total{direction,class}` | counter, `class` = `1xx`..`5xx` |
//! | `tollgate_proxy_request_duration_seconds{direction}` | histogram, request to response headers |
//! | `tollgate_proxy_active_connections{direction}` | gauge |
//! | `tollgate_proxy_upgraded_connections{direction}` | gauge, WebSocket and other upgrades open |
//! | `tollgate_proxy_tls_handshake_failures_total{direction}` | counter |
//! | `tollgate_proxy_request_bytes_total{direction}` | counter, request body bytes |
//! | `tollgate_proxy_response_bytes_total{direction}` | counter, response body bytes |
//!
//! plus `tollgate_authz_decisions_total{route,decision,rule}` (`authz`),
//! `tollgate_trace_spans_exported_total` and `tollgate_trace_spans_dropped_total` (`trace/`),
//! the JWT and rate-limit series, and the certificate metrics of `tollgate_certs::metrics`.
//!
//! The series are resolved once per direction ([`DirectionMetrics`]), so
//! the request path only touches atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tollgate_certs::metrics::CertMetrics;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub direction: &'static str,
    pub class: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn duration_histogram() -> Histogram {
    // 100 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_1, 2.0, 19))
}

type HistogramFamily = Family<DirectionLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub certs: CertMetrics,
    pub jwt: crate::jwt::JwtMetrics,
    pub rate_limit: crate::ratelimit::RateLimitMetrics,
    pub authz: crate::authz::AuthzMetrics,
    pub trace: crate::trace::TraceMetrics,
    pub inbound: DirectionMetrics,
    pub outbound: DirectionMetrics,
}

/// One direction's series, resolved once.
#[derive(Clone, Debug)]
pub struct DirectionMetrics {
    pub requests: Counter,
    responses: [Counter; 5],
    pub duration: Histogram,
    pub active_connections: Gauge,
    pub upgraded_connections: Gauge,
    pub tls_handshake_failures: Counter,
    pub request_bytes: Counter,
    pub response_bytes: Counter,
}

impl DirectionMetrics {
    /// Counts a response by status class.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // Prefixed `tollgate`, as the certificate metrics expect.
        let mut registry = Registry::with_prefix("tollgate");
        let certs = CertMetrics::register(&mut registry);
        let jwt = crate::jwt::JwtMetrics::register(&mut registry);
        let rate_limit = crate::ratelimit::RateLimitMetrics::register(&mut registry);
        let authz = crate::authz::AuthzMetrics::register(&mut registry);
        let trace = crate::trace::TraceMetrics::register(&mut registry);
        crate::filters::FilterMetrics::global().register(&mut registry);
        let requests = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "proxy_requests",
            "Requests received, by direction",
            requests.clone(),
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "proxy_responses",
            "Responses sent, by direction and status class",
            responses.clone(),
        );
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        registry.register(
            "proxy_request_duration_seconds",
            "Time from a request's head to its response's head",
            duration.clone(),
        );
        let active = Family::<DirectionLabels, Gauge>::default();
        registry.register(
            "proxy_active_connections",
            "Client connections open",
            active.clone(),
        );
        let upgraded = Family::<DirectionLabels, Gauge>::default();
        registry.register(
            "proxy_upgraded_connections",
            "Upgraded connections (WebSocket) open",
            upgraded.clone(),
        );
        let handshakes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "proxy_tls_handshake_failures",
            "TLS handshakes that failed or timed out (inbound: clients; outbound: upstreams)",
            handshakes.clone(),
        );
        let request_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "proxy_request_bytes",
            "Request body bytes forwarded (and client-to-app bytes of upgraded connections)",
            request_bytes.clone(),
        );
        let response_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "proxy_response_bytes",
            "Response body bytes forwarded (and app-to-client bytes of upgraded connections)",
            response_bytes.clone(),
        );
        let resolve = |direction: Direction| {
            let direction = direction.as_str();
            let labels = DirectionLabels { direction };
            DirectionMetrics {
                requests: requests.get_or_create(&labels).clone(),
                responses: CLASSES.map(|class| {
                    responses
                        .get_or_create(&ResponseLabels { direction, class })
                        .clone()
                }),
                duration: duration.get_or_create(&labels).clone(),
                active_connections: active.get_or_create(&labels).clone(),
                upgraded_connections: upgraded.get_or_create(&labels).clone(),
                tls_handshake_failures: handshakes.get_or_create(&labels).clone(),
                request_bytes: request_bytes.get_or_create(&labels).clone(),
                response_bytes: response_bytes.get_or_create(&labels).clone(),
            }
        };
        Metrics {
            inbound: resolve(Direction::Inbound),
            outbound: resolve(Direction::Outbound),
            registry,
            certs,
            jwt,
            rate_limit,
            authz,
            trace,
        }
    }

    pub fn direction(&self, direction: Direction) -> &DirectionMetrics {
        match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_classes() {
        let m = Metrics::new();
        m.inbound.requests.inc();
        m.inbound.response(503);
        m.outbound.response(101);
        m.inbound.duration.observe(0.01);
        let text = m.encode();
        for want in [
            "proxy_requests_total{direction=\"inbound\"} 1",
            "proxy_responses_total{direction=\"inbound\",class=\"5xx\"} 1",
            "proxy_responses_total{direction=\"outbound\",class=\"1xx\"} 1",
            "proxy_request_duration_seconds_count{direction=\"inbound\"} 1",
            "proxy_active_connections{direction=\"outbound\"} 0",
            "proxy_tls_handshake_failures_total{direction=\"inbound\"} 0",
            "proxy_request_bytes_total{direction=\"inbound\"} 0",
            "tollgate_cert_rotations_total 0",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }
}
