//! The `filters` section of `proxy.yaml` (or of the file it names).
//!
//! ```yaml
//! filters:
//!   # file: /etc/tollgate-proxy/filters/filters.yaml   # the rest of this section, watched
//!   memoryLimitBytes: 33554432    # per instance (linear memory), default 32 MiB
//!   maxInstances: 256             # live instances, all filters together
//!   callbackTimeoutMs: 50         # CPU bound of one callback
//!   epochTickMs: 10               # granularity of that bound
//!   reloadIntervalMs: 1000        # how often module files and `file` are checked
//!   maxBufferedBodyBytes: 1048576 # body a paused filter may hold
//!   minTickPeriodMs: 100          # shortest proxy_on_tick period granted
//!   maxCalloutsInFlight: 64       # proxy_http_call calls in flight per filter
//!   maxQueueDepth: 1024           # items per shared queue (queue.rs)
//!   maxGuestMetrics: 100          # metrics one filter may define
//!   maxSharedDataKeys: 10000      # shared-data keys one filter may create
//!   maxSharedDataValueBytes: 65536 # the largest shared-data value
//!   clusters:                     # what proxy_http_call may call (callout.rs)
//!     auth: {address: 127.0.0.1:9001, timeoutMs: 1000}
//!   chains:                       # by name; a route's `filters` names one (route.rs)
//!     web:
//!       - name: headers
//!         module: /etc/tollgate-proxy/filters/header_transform.wasm
//!         sha256: "…"             # optional: refuse any other module
//!         failure: closed         # closed (503) | open (skip the filter)
//!         config: {request: {set: {x-env: prod}}}   # to proxy_on_configure (JSON)
//!         vmConfig: ""            # to proxy_on_vm_start
//!         rootId: ""              # Envoy's root_id (`plugin_root_id`)
//!         vmId: ""                # Envoy's vm_id (`plugin_vm_id`)
//! routes:
//!   - {pathPrefix: /, filters: web}
//! ```
//!
//! The chains reload with the section (or its `file`); which route runs
//! which chain is fixed with the route table. A route naming a chain the
//! current load lacks fails closed (503).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FiltersConfig {
    /// A YAML or JSON file holding the rest of this section; when set, the
    /// section's other keys must be absent and the file is watched.
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub memory_limit_bytes: Option<usize>,
    #[serde(default)]
    pub max_instances: Option<u32>,
    #[serde(default)]
    pub callback_timeout_ms: Option<u64>,
    #[serde(default)]
    pub epoch_tick_ms: Option<u64>,
    #[serde(default)]
    pub reload_interval_ms: Option<u64>,
    #[serde(default)]
    pub max_buffered_body_bytes: Option<usize>,
    /// The shortest tick period a filter gets (`proxy_set_tick_period_milliseconds`
    /// asking for less is raised to it).
    #[serde(default)]
    pub min_tick_period_ms: Option<u64>,
    /// The upstreams filters may call with `proxy_http_call`, by name
    /// (Envoy's clusters).
    #[serde(default)]
    pub clusters: BTreeMap<String, super::callout::ClusterConfig>,
    /// Calls one filter may have in flight (all its instances together);
    /// one more gets `INTERNAL_FAILURE` and is counted
    /// (`reason="callout-limit"`).
    #[serde(default)]
    pub max_callouts_in_flight: Option<usize>,
    /// Items one shared queue may hold; one more gets `INTERNAL_FAILURE`
    /// and is counted (`reason="queue-full"`).
    #[serde(default)]
    pub max_queue_depth: Option<usize>,
    /// Metrics one filter may define (`proxy_define_metric`).
    #[serde(default)]
    pub max_guest_metrics: Option<usize>,
    /// Shared-data keys one filter may create.
    #[serde(default)]
    pub max_shared_data_keys: Option<usize>,
    /// The largest shared-data value a filter may set.
    #[serde(default)]
    pub max_shared_data_value_bytes: Option<usize>,
    /// Filter chains by name, each run in order.
    #[serde(default)]
    pub chains: BTreeMap<String, Vec<FilterConfig>>,
    /// The per-section table of earlier versions: refused, with the
    /// equivalent top-level `routes` in the message (`route::legacy`).
    #[serde(default)]
    pub routes: Vec<RouteFilters>,
}

/// A `filters.routes` entry of earlier versions (refused).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteFilters {
    #[serde(default = "root")]
    pub path_prefix: String,
    #[serde(default)]
    pub chain: Vec<FilterConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterConfig {
    /// Names the filter in metrics and logs; unique within a chain.
    pub name: String,
    /// The `.wasm` file.
    pub module: PathBuf,
    /// Hex sha256 the module must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default)]
    pub failure: FailureMode,
    /// Passed to `proxy_on_configure`: a string as is, anything else as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// Passed to `proxy_on_vm_start` likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<serde_json::Value>,
    /// Envoy's `root_id`: answered as `plugin_root_id`. SDKs that host
    /// several root contexts in one module (AssemblyScript, Go) pick theirs
    /// by it. Default empty, as in Envoy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_id: String,
    /// Envoy's `vm_config.vm_id`: answered as `plugin_vm_id`. Default
    /// empty, as in Envoy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vm_id: String,
}

/// What a request gets when its filter fails (traps, runs past its CPU
/// bound, exceeds its memory, cannot be instantiated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// 503 (gRPC: UNAVAILABLE) with `x-tollgate-reason: filter-failed`.
    #[default]
    Closed,
    /// The filter is skipped for the rest of that request.
    Open,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Closed => "closed",
            FailureMode::Open => "open",
        }
    }
}

fn root() -> String {
    "/".into()
}

/// The limits the engine is built with (fixed for the process: changing
/// them needs a restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    pub memory_limit_bytes: usize,
    pub max_instances: u32,
    pub epoch_tick_ms: u64,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            memory_limit_bytes: 32 << 20,
            max_instances: 256,
            epoch_tick_ms: 10,
        }
    }
}

/// Per-load settings (may change on reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    pub callback_timeout_ms: u64,
    pub max_buffered_body_bytes: usize,
    pub reload_interval_ms: u64,
    pub min_tick_period_ms: u64,
    pub max_queue_depth: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            callback_timeout_ms: 50,
            max_buffered_body_bytes: 1 << 20,
            reload_interval_ms: 1000,
            min_tick_period_ms: 100,
            max_queue_depth: super::queue::DEFAULT_MAX_DEPTH,
        }
    }
}

impl FiltersConfig {
    pub fn engine_limits(&self) -> EngineLimits {
        let d = EngineLimits::default();
        EngineLimits {
            memory_limit_bytes: self.memory_limit_bytes.unwrap_or(d.memory_limit_bytes),
            max_instances: self.max_instances.unwrap_or(d.max_instances),
            epoch_tick_ms: self.epoch_tick_ms.unwrap_or(d.epoch_tick_ms).max(1),
        }
    }

    pub fn run_limits(&self) -> RunLimits {
        let d = RunLimits::default();
        RunLimits {
            callback_timeout_ms: self.callback_timeout_ms.unwrap_or(d.callback_timeout_ms),
            max_buffered_body_bytes: self
                .max_buffered_body_bytes
                .unwrap_or(d.max_buffered_body_bytes),
            reload_interval_ms: self
                .reload_interval_ms
                .unwrap_or(d.reload_interval_ms)
                .max(10),
            min_tick_period_ms: self
                .min_tick_period_ms
                .unwrap_or(d.min_tick_period_ms)
                .max(1),
            max_queue_depth: self.max_queue_depth.unwrap_or(d.max_queue_depth).max(1),
        }
    }

    /// The per-filter caps on guest-defined state.
    pub fn guest_limits(&self) -> super::host::GuestLimits {
        let d = super::host::GuestLimits::default();
        super::host::GuestLimits {
            max_guest_metrics: self.max_guest_metrics.unwrap_or(d.max_guest_metrics),
            max_shared_data_keys: self.max_shared_data_keys.unwrap_or(d.max_shared_data_keys),
            max_shared_data_value_bytes: self
                .max_shared_data_value_bytes
                .unwrap_or(d.max_shared_data_value_bytes),
        }
    }

    /// Whether no filter is configured at all.
    pub fn is_empty(&self) -> bool {
        self.file.is_none()
            && self.routes.is_empty()
            && self.chains.values().all(|chain| chain.is_empty())
    }

    /// The section with `file` resolved: the file's content (YAML or JSON)
    /// read and parsed. Errors name the file and the path in it.
    pub fn resolve(&self) -> Result<FiltersConfig, String> {
        let Some(file) = &self.file else {
            return Ok(self.clone());
        };
        let inline = FiltersConfig {
            file: None,
            ..self.clone()
        };
        if inline != FiltersConfig::default() {
            return Err(format!(
                "filters: `file` ({}) and inline settings are exclusive",
                file.display()
            ));
        }
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("filters file {}: {e}", file.display()))?;
        let parsed = FiltersConfig::parse(&text, file)?;
        if parsed.file.is_some() {
            return Err(format!(
                "filters file {}: `file` cannot nest",
                file.display()
            ));
        }
        Ok(parsed)
    }

    /// Parses a filters file (YAML, which includes JSON).
    pub fn parse(text: &str, file: &Path) -> Result<FiltersConfig, String> {
        let de = yaml_serde::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            format!("{}: {path}: {}", file.display(), e.into_inner())
        })
    }

    /// Checks what serde cannot: no old `routes`, unique names per chain,
    /// sha256 syntax.
    pub fn check(&self) -> Result<(), String> {
        if !self.routes.is_empty() {
            let tables = crate::route::legacy::Tables {
                filters: &self.routes,
                ..Default::default()
            };
            return Err(format!(
                "filters.routes: {}",
                crate::route::legacy::message(&tables)
            ));
        }
        for (c, chain) in &self.chains {
            for (i, f) in chain.iter().enumerate() {
                let at = format!("filters.chains.{c}[{i}]");
                if f.name.is_empty() {
                    return Err(format!("{at}.name: must not be empty"));
                }
                if chain[..i].iter().any(|g| g.name == f.name) {
                    return Err(format!(
                        "{at}.name: {:?} appears twice in the chain",
                        f.name
                    ));
                }
                if let Some(sha) = &f.sha256
                    && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    return Err(format!("{at}.sha256: {sha:?} is not 64 hex digits"));
                }
            }
        }
        for (name, cluster) in &self.clusters {
            if crate::config::split_host_port(&cluster.address).is_none() {
                return Err(format!(
                    "filters.clusters.{name}.address: {:?} is not host:port",
                    cluster.address
                ));
            }
        }
        if self.max_queue_depth == Some(0) {
            return Err("filters.maxQueueDepth: must be at least 1".into());
        }
        if self.max_callouts_in_flight == Some(0) {
            return Err("filters.maxCalloutsInFlight: must be at least 1".into());
        }
        Ok(())
    }
}

/// The bytes a configuration value becomes: a string as is, anything else
/// as compact JSON, nothing as empty.
pub fn config_bytes(value: Option<&serde_json::Value>) -> Vec<u8> {
    match value {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
        Some(other) => other.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let text = r#"
memoryLimitBytes: 16777216
chains:
  api:
    - name: headers
      module: /x/header_transform.wasm
      failure: open
      config: {request: {set: {x-a: "1"}}}
      rootId: add_header
"#;
        let c = FiltersConfig::parse(text, Path::new("f.yaml")).unwrap();
        c.check().unwrap();
        assert_eq!(c.engine_limits().memory_limit_bytes, 16 << 20);
        assert_eq!(c.chains["api"][0].failure, FailureMode::Open);
        assert_eq!(c.chains["api"][0].root_id, "add_header");
        assert_eq!(c.chains["api"][0].vm_id, "", "Envoy's default");
        assert_eq!(
            config_bytes(c.chains["api"][0].config.as_ref()),
            br#"{"request":{"set":{"x-a":"1"}}}"#
        );
        let e =
            FiltersConfig::parse("chains: {c: [{name: a, modul: x}]}", Path::new("f")).unwrap_err();
        assert!(e.contains("chains.c[0]"), "{e}");
        let dup = FiltersConfig::parse(
            "chains: {c: [{name: a, module: x}, {name: a, module: y}]}",
            Path::new("f"),
        )
        .unwrap();
        assert!(dup.check().unwrap_err().contains("appears twice"));
    }
}
