//! Prometheus metrics of the admission server, in one registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub endpoint: &'static str,
    pub operation: String,
    pub kind: String,
    /// `allow`, `deny` or `exempt`.
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    pub policy: String,
    pub enforcement: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SidecarLabels {
    /// `injected`, `skipped` or `denied`.
    pub result: &'static str,
    /// Why it was skipped or denied; empty when injected.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success`, `failure` (the last good set stays) or `watch_error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit` or `miss`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// Who answered a namespace lookup: `cache`, `api` (the API server,
    /// for a namespace not in a current cache), or `failed` (neither).
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterObjectLabels {
    /// `template` or `constraint`.
    pub object: &'static str,
    /// `ok` or `error` (as its status reports).
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub code: u16,
}

pub struct Metrics {
    registry: Registry,
    pub admission_requests: Family<DecisionLabels, Counter>,
    pub admission_duration: Histogram,
    pub policy_violations: Family<ViolationLabels, Counter>,
    pub http_responses: Family<HttpLabels, Counter>,
    pub policies_loaded: Gauge,
    pub policy_reloads: Family<ReloadLabels, Counter>,
    pub sidecar_injections: Family<SidecarLabels, Counter>,
    /// 1 while the namespace cache is current (a complete listing, its
    /// watch unbroken since), else 0.
    pub namespace_cache_current: Gauge,
    pub namespace_lookups: Family<LookupLabels, Counter>,
    /// Policy evaluations answered by the decision cache, or not.
    pub decision_cache: Family<CacheLabels, Counter>,
    /// Gatekeeper templates and constraints from the cluster, by state.
    pub cluster_gatekeeper_objects: Family<ClusterObjectLabels, Gauge>,
    /// 1 while Tollgate stands back because Gatekeeper's webhook is
    /// installed (or cannot tell), else 0.
    pub gatekeeper_standing_back: Gauge,
    /// Serving certificate expiry and rotations.
    pub certs: tollgate_certs::metrics::CertMetrics,
    /// `tollgate_trace_spans_{exported,dropped}_total`.
    pub trace: tollgate_otel::TraceMetrics,
    /// The periodic audit's findings.
    pub audit: crate::audit::metrics::AuditMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tollgate");
        let admission_requests = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission requests answered, by endpoint, operation, kind and decision",
            admission_requests.clone(),
        );
        // 25 µs .. ~0.8 s
        let admission_duration = Histogram::new(exponential_buckets(0.000_025, 2.0, 16));
        registry.register(
            "admission_duration_seconds",
            "Time from a decoded AdmissionReview to its answer",
            admission_duration.clone(),
        );
        let policy_violations = Family::<ViolationLabels, Counter>::default();
        registry.register(
            "policy_violations",
            "Violations found, by policy and enforcement (dryrun ones included)",
            policy_violations.clone(),
        );
        let http_responses = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_responses",
            "HTTP responses sent, by status code",
            http_responses.clone(),
        );
        let policies_loaded = Gauge::default();
        registry.register(
            "policies_loaded",
            "Policies in the active set",
            policies_loaded.clone(),
        );
        let policy_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy set reloads from watched sources, by result",
            policy_reloads.clone(),
        );
        let sidecar_injections = Family::<SidecarLabels, Counter>::default();
        registry.register(
            "sidecar_injections",
            "Pod CREATEs seen by sidecar injection, by result and reason",
            sidecar_injections.clone(),
        );
        let namespace_cache_current = Gauge::default();
        registry.register(
            "namespace_cache_current",
            "1 while the namespace cache holds a complete listing and its watch is unbroken; \
             0 before the first listing and after a watch error until it has listed again",
            namespace_cache_current.clone(),
        );
        let namespace_lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "namespace_lookups",
            "Namespace label lookups for admission requests, by what answered: the cache, \
             the API server, or neither (the request is refused)",
            namespace_lookups.clone(),
        );
        let decision_cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "decision_cache_lookups",
            "Policy evaluations looked up in the decision cache, by result: hit (answered \
             from the cache) or miss (evaluated, then kept)",
            decision_cache.clone(),
        );
        let cluster_gatekeeper_objects = Family::<ClusterObjectLabels, Gauge>::default();
        registry.register(
            "cluster_gatekeeper_objects",
            "Gatekeeper ConstraintTemplates and constraints taken over from the cluster, by \
             object and state: ok, or error (its status says why)",
            cluster_gatekeeper_objects.clone(),
        );
        let gatekeeper_standing_back = Gauge::default();
        registry.register(
            "gatekeeper_standing_back",
            "1 while policies.watchConstraintTemplates stands back because Gatekeeper's own \
             webhook is installed (or that cannot be told), else 0",
            gatekeeper_standing_back.clone(),
        );
        let certs = tollgate_certs::metrics::CertMetrics::register(&mut registry);
        let trace = tollgate_otel::TraceMetrics::register(&mut registry);
        let audit = crate::audit::metrics::AuditMetrics::register(&mut registry);
        Metrics {
            trace,
            cluster_gatekeeper_objects,
            gatekeeper_standing_back,
            audit,
            decision_cache,
            namespace_cache_current,
            namespace_lookups,
            registry,
            certs,
            policy_reloads,
            sidecar_injections,
            admission_requests,
            admission_duration,
            policy_violations,
            http_responses,
            policies_loaded,
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

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
