//! The proxy-wasm filter host (ABI 0.2.1, and 0.2.0 modules) on wasmtime.
//!
//! - [`abi`]: status codes, enums, the map serialization.
//! - [`host`]: the per-store state and the linker (every `proxy_*` import,
//!   the WASI preview1 basics under both module names).
//! - [`module`]: the engine (epoch interruption, pooling allocator with
//!   small explicit limits) and the sha256-keyed module cache.
//! - [`instance`]: one live instance and the callback life cycle.
//! - [`chain`]: filters with instance pools, chains per route, a request's
//!   run through a chain, failure modes.
//! - [`reload`]: the host: loading, atomic swaps, status.
//! - [`layer`]: the tower layer.
//! - [`properties`], [`metrics`], [`config`].
//!
//! `docs/filters.md` is the user's guide.

pub mod abi;
pub mod callout;
pub mod chain;
pub mod config;
pub mod host;
pub mod instance;
pub mod layer;
pub mod metrics;
pub mod module;
pub mod properties;
pub mod queue;
pub mod reload;

#[cfg(test)]
mod tests;

pub use chain::{Chain, ChainSet, Dir, Run};
pub use config::{FailureMode, FiltersConfig};
pub use layer::{Filters, FiltersLayer};
pub use metrics::FilterMetrics;
pub use reload::{FilterHost, LoadStatus};

use std::sync::{Arc, Mutex, Weak};

impl FiltersConfig {
    /// Reads the `filters` section of `proxy.yaml`: absent, null, `[]` and
    /// `{}` mean no filters. `Err((path, message))` names the offending
    /// value.
    pub fn from_section(
        section: &serde_json::Value,
    ) -> Result<Option<FiltersConfig>, (String, String)> {
        let empty = match section {
            serde_json::Value::Null => true,
            serde_json::Value::Array(a) => a.is_empty(),
            serde_json::Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if empty {
            return Ok(None);
        }
        let config: FiltersConfig = serde_path_to_error::deserialize(section).map_err(|e| {
            let path = e.path().to_string();
            (format!("filters.{path}"), e.into_inner().to_string())
        })?;
        config.check().map_err(|m| ("filters".to_owned(), m))?;
        Ok(Some(config))
    }
}

/// `tollgate-proxy --check`: the `filters` section loaded as a start
/// would load it, every filter instantiated once and configured
/// ([`FilterHost::check`]). `Err((path, message))`: the path of the filter
/// that failed (`filters.chains.web[0]`) and why, naming the filter.
pub fn check_section(section: &serde_json::Value) -> Result<(), (String, String)> {
    let Some(config) = FiltersConfig::from_section(section)? else {
        return Ok(());
    };
    FilterHost::check(&config).map_err(|e| match e.filter {
        Some(f) => (f.at, f.detail),
        None => ("filters".to_owned(), e.message),
    })
}

fn claims_of(ext: &http::Extensions) -> Option<Arc<dyn properties::Claims>> {
    if let Some(verified) = ext.get::<Arc<crate::jwt::Verified>>() {
        return Some(verified.clone() as Arc<dyn properties::Claims>);
    }
    ext.get::<properties::FilterClaims>().map(|c| c.0.clone())
}

fn peer_of(ext: &http::Extensions) -> layer::Peer {
    let Some(conn) = ext.get::<Arc<crate::listener::ConnInfo>>() else {
        return layer::Peer::default();
    };
    layer::Peer {
        source: Some(conn.peer),
        principal: conn.identity.clone(),
        conn: properties::Conn {
            local: conn.facts.local,
            id: Some(conn.facts.id),
            tls: conn.facts.tls_version.is_some(),
            server_name: conn.facts.server_name.clone(),
            tls_version: conn.facts.tls_version,
        },
    }
}

impl properties::Claims for crate::jwt::Verified {
    fn claim(&self, name: &str) -> Option<&serde_json::Value> {
        self.claims.get(name)
    }
    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.claims.clone())
    }
}

/// The hosts this process runs, by configuration (the inbound and
/// outbound stacks of one config share one).
type Hosts = Mutex<Vec<(FiltersConfig, Weak<FilterHost>)>>;

fn hosts() -> &'static Hosts {
    static HOSTS: std::sync::OnceLock<Hosts> = std::sync::OnceLock::new();
    HOSTS.get_or_init(|| Mutex::new(Vec::new()))
}

/// The layer for the proxy's `filters` section: a host started (and
/// watched for changes) once per configuration, its metrics in
/// [`FilterMetrics::global`]. `identity`: the workload's, for `mtls`
/// clusters.
pub fn layer_for(
    section: Option<&serde_json::Value>,
    identity: Option<Arc<tollgate_certs::reload::IdentityStore>>,
) -> FiltersLayer {
    let config = match section.map(FiltersConfig::from_section) {
        None | Some(Ok(None)) => return FiltersLayer::disabled(),
        Some(Ok(Some(c))) => c,
        Some(Err((path, message))) => {
            // Config::check refuses this at load; reaching here means the
            // section changed shape afterwards. Fail closed.
            tracing::error!(target: "filter", %path, %message, "invalid filters section");
            // (Every route naming a chain finds none: 503.)
            FiltersConfig {
                chains: [(
                    "invalid-config".to_owned(),
                    vec![config::FilterConfig {
                        name: "invalid-config".into(),
                        module: std::path::PathBuf::from("/nonexistent"),
                        sha256: None,
                        failure: FailureMode::Closed,
                        config: None,
                        vm_config: None,
                        root_id: String::new(),
                        vm_id: String::new(),
                    }],
                )]
                .into(),
                ..FiltersConfig::default()
            }
        }
    };
    let host = {
        let mut hosts = match hosts().lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        hosts.retain(|(_, weak)| weak.strong_count() > 0);
        match hosts
            .iter()
            .find(|(c, _)| *c == config)
            .and_then(|(_, w)| w.upgrade())
        {
            Some(host) => host,
            None => {
                let host = FilterHost::start(&config, FilterMetrics::global().clone(), identity);
                host.watch();
                hosts.push((config, Arc::downgrade(&host)));
                host
            }
        }
    };
    FiltersLayer::new(host)
        .with_claims(claims_of)
        .with_peer(peer_of)
}

/// The load status of every filter host of the process (for `/ready`
/// details): `None` when filters are not configured.
pub fn status() -> Option<Vec<LoadStatus>> {
    let hosts = hosts().lock().ok()?;
    let list: Vec<LoadStatus> = hosts
        .iter()
        .filter_map(|(_, w)| w.upgrade())
        .map(|h| h.status())
        .collect();
    (!list.is_empty()).then_some(list)
}
