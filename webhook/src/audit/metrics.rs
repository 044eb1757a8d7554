//! The audit's Prometheus metrics: what the last complete pass found, and
//! when it ran.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::tally::Tally;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditViolationLabels {
    pub policy: String,
    pub enforcement: &'static str,
    /// Empty for objects no team owns.
    pub team: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// `success` or `failure` (the last good figures stay).
    pub result: &'static str,
}

#[derive(Clone, Default)]
pub struct AuditMetrics {
    pub violations: Family<AuditViolationLabels, Gauge>,
    pub last_run: Gauge<f64, AtomicU64>,
    pub duration: Gauge<f64, AtomicU64>,
    pub objects: Gauge,
    pub runs: Family<RunLabels, Counter>,
}

impl AuditMetrics {
    pub fn register(registry: &mut Registry) -> AuditMetrics {
        let m = AuditMetrics::default();
        registry.register(
            "audit_violations",
            "Existing objects violating each policy at the last complete audit pass, by team",
            m.violations.clone(),
        );
        registry.register(
            "audit_last_run_timestamp_seconds",
            "When the last complete audit pass ended (Unix time)",
            m.last_run.clone(),
        );
        registry.register(
            "audit_duration_seconds",
            "How long the last complete audit pass took",
            m.duration.clone(),
        );
        registry.register(
            "audit_objects",
            "Objects judged by the last complete audit pass",
            m.objects.clone(),
        );
        registry.register(
            "audit_runs",
            "Audit passes, by result: success, or failure (the API server went away; the last \
             good figures and reports stay)",
            m.runs.clone(),
        );
        m
    }

    /// The figures of a complete pass, replacing the last one's.
    pub fn record_pass(&self, tally: &Tally, seconds: f64, ended_unix: f64) {
        self.violations.clear();
        for ((policy, enforcement, team), count) in tally.per_team() {
            self.violations
                .get_or_create(&AuditViolationLabels {
                    policy,
                    enforcement,
                    team,
                })
                .set(count as i64);
        }
        self.objects.set(tally.judged as i64);
        self.duration.set(seconds);
        self.last_run.set(ended_unix);
        self.runs
            .get_or_create(&RunLabels { result: "success" })
            .inc();
    }

    pub fn record_failure(&self) {
        self.runs
            .get_or_create(&RunLabels { result: "failure" })
            .inc();
    }
}
