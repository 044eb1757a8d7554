//! The `tracing:` section of proxy.yaml and of the webhook's config.
//! Absent: tracing is off, and the request path does not touch any of it.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL, e.g.
    /// `http://otel-collector.observability:4318/v1/traces` (protobuf).
    pub otlp: String,
    /// The share of new traces sampled, 0.0 to 1.0. A request that arrives
    /// with a `traceparent` follows its parent's sampled flag instead.
    #[serde(default = "default_sampling")]
    pub sampling: f64,
    /// Spans waiting for export at most; past it new spans are dropped and
    /// counted (`tollgate_trace_spans_dropped_total`), never waited for.
    #[serde(default = "default_max_queued_spans")]
    pub max_queued_spans: usize,
    /// Spans per OTLP request at most.
    #[serde(default = "default_max_batch_spans")]
    pub max_batch_spans: usize,
    /// How long spans wait for a batch to fill before they are sent.
    #[serde(default = "default_batch_delay_ms")]
    pub batch_delay_ms: u64,
    /// One export (retries included) gives up after this; its spans are
    /// dropped and counted.
    #[serde(default = "default_export_timeout_ms")]
    pub export_timeout_ms: u64,
    /// `service.name` of the spans; default the binary's name.
    #[serde(default)]
    pub service_name: Option<String>,
}

fn default_sampling() -> f64 {
    1.0
}
fn default_max_queued_spans() -> usize {
    1024
}
fn default_max_batch_spans() -> usize {
    512
}
fn default_batch_delay_ms() -> u64 {
    1000
}
fn default_export_timeout_ms() -> u64 {
    5000
}

impl TracingConfig {
    /// `Err((path below "tracing.", message))`.
    pub fn check(&self) -> Result<(), (String, String)> {
        match self.otlp.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {}
            Ok(_) => {
                return Err((
                    "otlp".into(),
                    format!(
                        "{:?} is not an http:// URL (OTLP/HTTP to a collector on the node or in the cluster; https is not supported yet)",
                        self.otlp
                    ),
                ));
            }
            Err(e) => return Err(("otlp".into(), format!("{:?}: {e}", self.otlp))),
        }
        if !(0.0..=1.0).contains(&self.sampling) {
            return Err((
                "sampling".into(),
                format!("{} is not a ratio from 0.0 to 1.0", self.sampling),
            ));
        }
        for (path, value) in [
            ("maxQueuedSpans", self.max_queued_spans as u64),
            ("maxBatchSpans", self.max_batch_spans as u64),
            ("batchDelayMs", self.batch_delay_ms),
            ("exportTimeoutMs", self.export_timeout_ms),
        ] {
            if value == 0 {
                return Err((path.into(), "must be greater than 0".into()));
            }
        }
        if self.max_batch_spans > self.max_queued_spans {
            return Err((
                "maxBatchSpans".into(),
                format!("must be at most maxQueuedSpans ({})", self.max_queued_spans),
            ));
        }
        if self
            .service_name
            .as_ref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(("serviceName".into(), "must not be empty".into()));
        }
        Ok(())
    }
}
