//! Filter metrics, registered into the proxy's registry (prefix
//! `tollgate`):
//!
//! | metric | type |
//! |---|---|
//! | `tollgate_filter_failures_total{filter,reason,phase}` | counter; `reason` = `timeout`, `trap`, `oom`, `proc-exit`, `instantiate`, `configure`, `buffer-limit`, `abi`; `phase` = the callback or start-up step ([`super::instance::Phase`]) |
//! | `tollgate_filter_duration_seconds{filter}` | histogram, time spent in a filter's callbacks per request |
//! | `tollgate_filter_instances_created_total{filter}` | counter, instantiations (a trapped instance is replaced, not reused) |
//! | `tollgate_filter_callouts_total{filter,cluster,outcome}` | counter, `proxy_http_call` calls: `outcome` = `ok` (an answer, any status), `failed` (refused, reset, over the size cap), `timeout`, `cancelled` (the request ended first), `limit` (refused: `maxCalloutsInFlight`) |
//! | `tollgate_filter_counter_total{filter,name}` | guest counters (`proxy_define_metric` COUNTER) |
//! | `tollgate_filter_gauge{filter,name}` | guest gauges |
//! | `tollgate_filter_histogram{filter,name}` | guest histograms |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::abi::MetricType;
use super::instance::{Failed, Phase};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterLabels {
    pub filter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub filter: String,
    pub reason: &'static str,
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CalloutLabels {
    pub filter: String,
    pub cluster: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuestLabels {
    pub filter: String,
    pub name: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 µs .. ~0.5 s
    Histogram::new(exponential_buckets(0.000_001, 2.0, 20))
}

fn guest_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 24))
}

/// A metric a guest defined.
#[derive(Clone)]
pub enum GuestMetric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// The filter metric families; clones share the series.
#[derive(Clone)]
pub struct FilterMetrics {
    pub failures: Family<FailureLabels, Counter>,
    pub duration: HistogramFamily<FilterLabels>,
    pub instances: Family<FilterLabels, Counter>,
    pub callouts: Family<CalloutLabels, Counter>,
    guest_counters: Family<GuestLabels, Counter>,
    guest_gauges: Family<GuestLabels, Gauge>,
    guest_histograms: HistogramFamily<GuestLabels>,
    guest: Arc<Mutex<GuestTable>>,
}

#[derive(Default)]
struct GuestTable {
    by_key: HashMap<(String, String, MetricType), u32>,
    metrics: Vec<GuestMetric>,
}

impl Default for FilterMetrics {
    fn default() -> Self {
        FilterMetrics::new()
    }
}

impl FilterMetrics {
    pub fn new() -> FilterMetrics {
        FilterMetrics {
            failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            instances: Family::default(),
            callouts: Family::default(),
            guest_counters: Family::default(),
            guest_gauges: Family::default(),
            guest_histograms: Family::new_with_constructor(guest_histogram),
            guest: Arc::new(Mutex::new(GuestTable::default())),
        }
    }

    /// The process-wide families the proxy's filters use.
    pub fn global() -> &'static FilterMetrics {
        static GLOBAL: OnceLock<FilterMetrics> = OnceLock::new();
        GLOBAL.get_or_init(FilterMetrics::new)
    }

    /// Adds the families to `registry` (whose prefix is `tollgate`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "filter_failures",
            "WASM filter failures (the request failed closed or skipped the filter), by cause",
            self.failures.clone(),
        );
        registry.register(
            "filter_duration_seconds",
            "Time spent in a WASM filter's callbacks, per request",
            self.duration.clone(),
        );
        registry.register(
            "filter_instances_created",
            "WASM filter instances created (pool growth and replacements of failed instances)",
            self.instances.clone(),
        );
        registry.register(
            "filter_callouts",
            "proxy_http_call calls made by WASM filters, by cluster and outcome",
            self.callouts.clone(),
        );
        registry.register(
            "filter_counter",
            "Counters defined by WASM filters",
            self.guest_counters.clone(),
        );
        registry.register(
            "filter_gauge",
            "Gauges defined by WASM filters",
            self.guest_gauges.clone(),
        );
        registry.register(
            "filter_histogram",
            "Histograms defined by WASM filters",
            self.guest_histograms.clone(),
        );
    }

    /// The families alone, as Prometheus text (for tests and tools).
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix("tollgate");
        self.register(&mut registry);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Counts one failure of `filter`'s (its configured name).
    pub fn failure(&self, filter: &str, failed: &Failed) {
        self.failures
            .get_or_create(&FailureLabels {
                filter: filter.to_owned(),
                reason: failed.failure.reason(),
                phase: failed.phase.as_str(),
            })
            .inc();
    }

    /// Counts one `proxy_http_call` call by how it ended.
    pub fn callout(&self, filter: &str, cluster: &str, outcome: &'static str) {
        self.callouts
            .get_or_create(&CalloutLabels {
                filter: filter.to_owned(),
                cluster: cluster.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn failures_of(&self, filter: &str, reason: &'static str, phase: Phase) -> u64 {
        self.failures
            .get_or_create(&FailureLabels {
                filter: filter.to_owned(),
                reason,
                phase: phase.as_str(),
            })
            .get()
    }

    /// How many metrics `filter` defined.
    pub fn defined_by(&self, filter: &str) -> usize {
        self.guest
            .lock()
            .map(|t| t.by_key.keys().filter(|(f, _, _)| f == filter).count())
            .unwrap_or(0)
    }

    /// Whether `filter` defined `name` of `kind` already.
    pub fn is_defined(&self, filter: &str, name: &str, kind: MetricType) -> bool {
        self.guest
            .lock()
            .map(|t| {
                t.by_key
                    .contains_key(&(filter.to_owned(), name.to_owned(), kind))
            })
            .unwrap_or(false)
    }

    /// Defines (or finds) a guest metric; its id is stable for the process.
    pub fn define(&self, filter: &str, name: &str, kind: MetricType) -> Option<u32> {
        let mut table = self.guest.lock().ok()?;
        let key = (filter.to_owned(), name.to_owned(), kind);
        if let Some(id) = table.by_key.get(&key) {
            return Some(*id);
        }
        let labels = GuestLabels {
            filter: filter.to_owned(),
            name: name.to_owned(),
        };
        let metric = match kind {
            MetricType::Counter => {
                GuestMetric::Counter(self.guest_counters.get_or_create(&labels).clone())
            }
            MetricType::Gauge => {
                GuestMetric::Gauge(self.guest_gauges.get_or_create(&labels).clone())
            }
            MetricType::Histogram => {
                GuestMetric::Histogram(self.guest_histograms.get_or_create(&labels).clone())
            }
        };
        table.metrics.push(metric);
        let id = u32::try_from(table.metrics.len()).ok()?;
        table.by_key.insert(key, id);
        Some(id)
    }

    pub fn guest_metric(&self, id: u32) -> Option<GuestMetric> {
        let table = self.guest.lock().ok()?;
        table.metrics.get((id as usize).checked_sub(1)?).cloned()
    }
}
