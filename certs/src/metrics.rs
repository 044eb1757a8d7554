//! The certificate metrics both servers export:
//! `tollgate_cert_expiry_timestamp_seconds{cert}`,
//! `tollgate_cert_rotations_total` and `tollgate_cert_rotation_failures_total`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::reload::Identity;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabel {
    pub cert: String,
}

/// Cheap to clone: clones share the same series.
#[derive(Clone, Debug, Default)]
pub struct CertMetrics {
    expiry: Family<CertLabel, Gauge>,
    rotations: Counter,
    failures: Counter,
}

impl CertMetrics {
    /// Creates the metrics and registers them in `registry`, which must be
    /// prefixed `tollgate` (`Registry::with_prefix("tollgate")`) as both
    /// servers' registries are.
    pub fn register(registry: &mut Registry) -> CertMetrics {
        let metrics = CertMetrics::default();
        registry.register(
            "cert_expiry_timestamp_seconds",
            "When each certificate in use expires (Unix time)",
            metrics.expiry.clone(),
        );
        registry.register(
            "cert_rotations",
            "Certificates replaced while serving",
            metrics.rotations.clone(),
        );
        registry.register(
            "cert_rotation_failures",
            "Certificate replacements that failed (the previous certificate kept serving)",
            metrics.failures.clone(),
        );
        metrics
    }

    /// Records the expiry of the identity now serving as `cert`.
    pub fn observe(&self, cert: &str, identity: &Identity) {
        self.set_expiry(cert, identity.leaf.not_after.unix_timestamp());
    }

    /// Records `cert`'s expiry (Unix seconds), for certificates that are
    /// not served directly (a CA).
    pub fn set_expiry(&self, cert: &str, unix_seconds: i64) {
        self.expiry
            .get_or_create(&CertLabel {
                cert: cert.to_owned(),
            })
            .set(unix_seconds);
    }

    pub fn rotated(&self) {
        self.rotations.inc();
    }

    pub fn failed(&self) {
        self.failures.inc();
    }

    /// Replacements refused so far.
    pub fn failures(&self) -> u64 {
        self.failures.get()
    }
}
