//! The filter host: builds the [`ChainSet`] from the configuration, swaps
//! it atomically (arc-swap) when module files or the filters file change,
//! and keeps the previous chains when a new module fails to compile,
//! link, instantiate or configure — reporting why in [`LoadStatus`] and
//! the logs.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::callout::Clusters;
use super::chain::{Chain, ChainSet, Filter, Unavailable};
use super::config::{FilterConfig, FiltersConfig, RunLimits, config_bytes};
use super::host::{FilterShared, SharedData};
use super::instance::{Failed, Failure, Phase};
use super::metrics::FilterMetrics;
use super::module::Runtime;
use super::properties::{Node, Plugin};
use super::queue::SharedQueues;

/// The outcome of the last load, for `/ready` details and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadStatus {
    /// Increases with every successful load.
    pub generation: u64,
    /// Whether a chain set was ever loaded.
    pub loaded: bool,
    /// The error of the last attempt, when it failed (the previous chains
    /// stay in use).
    pub last_error: Option<String>,
    /// `name@sha256-prefix` of every loaded filter.
    pub filters: Vec<String>,
}

/// Per watched file: size, mtime, inode and ctime. The inode catches a
/// kubelet symlink swap and a rename-into-place even when size and mtime
/// match; ctime catches an in-place rewrite within one mtime tick.
type Stamp = Vec<(PathBuf, Option<(u64, SystemTime, u64, i64, i64)>)>;

/// A filter is reused across reloads when its identity (name, root and
/// VM ids), module sha256, plugin and VM configuration are all unchanged.
type FilterKey = (Plugin, String, Vec<u8>, Vec<u8>);

/// Why a load failed: the message (naming the chain, the filter and its
/// module) and, when one filter failed, its configured name and failure.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub message: String,
    /// When one filter failed: which, and how.
    pub filter: Option<Box<FilterLoadError>>,
}

/// The filter a load failed on.
#[derive(Debug, Clone)]
pub struct FilterLoadError {
    /// Its configured name.
    pub name: String,
    pub failed: Failed,
    /// Its place in the configuration (`filters.chains.web[0]`).
    pub at: String,
    /// The message without `at`.
    pub detail: String,
}

impl From<String> for LoadError {
    fn from(message: String) -> LoadError {
        LoadError {
            message,
            filter: None,
        }
    }
}

pub struct FilterHost {
    source: FiltersConfig,
    runtime: Result<Arc<Runtime>, String>,
    current: ArcSwap<ChainSet>,
    status: Mutex<LoadStatus>,
    last_seen: Mutex<Option<(FiltersConfig, Stamp)>>,
    metrics: FilterMetrics,
    shared_data: Arc<SharedData>,
    shared_queues: Arc<SharedQueues>,
    /// The workload identity, for `mtls` clusters.
    identity: Option<Arc<tollgate_certs::reload::IdentityStore>>,
    /// `--check`: no identity is loaded, and `mtls` clusters are only
    /// checked, never called.
    checking: bool,
}

fn stamp_of(config: &FiltersConfig) -> Stamp {
    let mut paths: Vec<PathBuf> = config
        .chains
        .values()
        .flat_map(|chain| chain.iter().map(|f| f.module.clone()))
        .collect();
    if let Some(file) = &config.file {
        paths.push(file.clone());
    }
    paths
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok().and_then(|m| {
                use std::os::unix::fs::MetadataExt as _;
                Some((
                    m.len(),
                    m.modified().ok()?,
                    m.ino(),
                    m.ctime(),
                    m.ctime_nsec(),
                ))
            });
            (p, meta)
        })
        .collect()
}

impl FilterHost {
    /// Creates the host and loads the chains. Never fails: a first load
    /// that fails leaves chains that answer 503 for closed filters (and
    /// skip open ones) until a reload succeeds; [`FilterHost::status`]
    /// says why.
    pub fn start(
        source: &FiltersConfig,
        metrics: FilterMetrics,
        identity: Option<Arc<tollgate_certs::reload::IdentityStore>>,
    ) -> Arc<FilterHost> {
        let engine_limits = source
            .resolve()
            .map(|c| c.engine_limits())
            .unwrap_or_else(|_| source.engine_limits());
        let runtime = Runtime::new(engine_limits);
        let host = Arc::new(FilterHost {
            source: source.clone(),
            runtime,
            current: ArcSwap::from_pointee(ChainSet::empty(metrics.clone())),
            status: Mutex::new(LoadStatus::default()),
            last_seen: Mutex::new(None),
            metrics,
            shared_data: Arc::new(SharedData::default()),
            shared_queues: Arc::default(),
            identity,
            checking: false,
        });
        let _ = host.reload();
        host
    }

    /// The chains new requests use.
    pub fn current(&self) -> Arc<ChainSet> {
        self.current.load_full()
    }

    pub fn status(&self) -> LoadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn metrics(&self) -> &FilterMetrics {
        &self.metrics
    }

    /// The reload interval configured (for the watcher).
    fn interval(&self) -> Duration {
        let limits = self
            .source
            .resolve()
            .map(|c| c.run_limits())
            .unwrap_or_else(|_| self.source.run_limits());
        Duration::from_millis(limits.reload_interval_ms)
    }

    /// Checks the files; on a change, builds and swaps in new chains.
    /// `Ok(true)`: swapped; `Ok(false)`: nothing changed; `Err`: the new
    /// configuration failed and the previous chains stay.
    pub fn reload(&self) -> Result<bool, String> {
        let resolved = match self.source.resolve().and_then(|c| c.check().map(|()| c)) {
            Ok(c) => c,
            Err(e) => return Err(self.failed(e.into(), None)),
        };
        let stamp = stamp_of(&FiltersConfig {
            file: self.source.file.clone(),
            ..resolved.clone()
        });
        let seen = (resolved.clone(), stamp);
        if let Ok(last) = self.last_seen.lock()
            && last.as_ref() == Some(&seen)
        {
            return Ok(false);
        }
        if let Ok(mut last) = self.last_seen.lock() {
            *last = Some(seen);
        }
        let runtime = match &self.runtime {
            Ok(r) => r.clone(),
            Err(e) => return Err(self.failed(e.clone().into(), Some(&resolved))),
        };
        let previous = self.current();
        match self.build(&runtime, &resolved, &previous) {
            Ok(set) => {
                let mut filters = Vec::new();
                let mut keep = HashSet::new();
                for chain in set.chains.values() {
                    for f in &chain.filters {
                        filters.push(format!("{}@{}", f.name, &f.prepared.sha256[..12]));
                        keep.insert(f.prepared.sha256.clone());
                    }
                }
                let generation = set.generation;
                self.current.store(Arc::new(set));
                runtime.retain(&keep);
                if let Ok(mut status) = self.status.lock() {
                    *status = LoadStatus {
                        generation,
                        loaded: true,
                        last_error: None,
                        filters: filters.clone(),
                    };
                }
                tracing::info!(target: "filter", generation, filters = ?filters, "filter chains loaded");
                Ok(true)
            }
            Err(e) => Err(self.failed(e, Some(&resolved))),
        }
    }

    /// Records a failed load; with nothing loaded yet, installs chains
    /// that fail closed, naming the filter that failed.
    fn failed(&self, load: LoadError, config: Option<&FiltersConfig>) -> String {
        let error = load.message.clone();
        match &load.filter {
            Some(f) => tracing::error!(
                target: "filter",
                filter = %f.name,
                reason = f.failed.failure.reason(),
                phase = %f.failed.phase,
                error = %error,
                "filter chains not loaded; keeping the previous ones"
            ),
            None => {
                tracing::error!(target: "filter", error = %error, "filter chains not loaded; keeping the previous ones")
            }
        }
        let loaded = self.status().loaded;
        if let Ok(mut status) = self.status.lock() {
            status.last_error = Some(error.clone());
        }
        if !loaded {
            let config = config.cloned().unwrap_or_else(|| self.source.clone());
            let chains = config
                .chains
                .iter()
                .filter(|(_, chain)| !chain.is_empty())
                .map(|(name, chain)| {
                    let mode = if chain
                        .iter()
                        .any(|f| f.failure == super::config::FailureMode::Closed)
                    {
                        super::config::FailureMode::Closed
                    } else {
                        super::config::FailureMode::Open
                    };
                    let unavailable = match &load.filter {
                        Some(failing) if chain.iter().any(|f| f.name == failing.name) => {
                            Unavailable {
                                filter: failing.name.clone(),
                                failed: failing.failed.clone(),
                                mode,
                            }
                        }
                        _ => Unavailable {
                            filter: chain
                                .iter()
                                .find(|f| f.failure == super::config::FailureMode::Closed)
                                .unwrap_or(&chain[0])
                                .name
                                .clone(),
                            failed: Failed::new(Phase::Load, Failure::Load(error.clone())),
                            mode,
                        },
                    };
                    let chain = Chain {
                        filters: Vec::new(),
                        caps: Default::default(),
                        unavailable: Some(unavailable),
                    };
                    (name.clone(), Arc::new(chain))
                })
                .collect();
            self.current.store(Arc::new(ChainSet {
                chains,
                limits: config.run_limits(),
                metrics: self.metrics.clone(),
                generation: 0,
                clusters: Arc::default(),
                clusters_config: Default::default(),
            }));
        }
        error
    }

    fn build(
        &self,
        runtime: &Arc<Runtime>,
        config: &FiltersConfig,
        previous: &ChainSet,
    ) -> Result<ChainSet, LoadError> {
        let limits: RunLimits = config.run_limits();
        let memory = config
            .memory_limit_bytes
            .unwrap_or(runtime.limits.memory_limit_bytes)
            .min(runtime.limits.memory_limit_bytes);
        let tick = Duration::from_millis(runtime.limits.epoch_tick_ms);
        let timeout = Duration::from_millis(limits.callback_timeout_ms);
        let min_tick = Duration::from_millis(limits.min_tick_period_ms);
        // Unchanged filters (same config, same module bytes) keep their
        // warm pools.
        let mut reusable: HashMap<FilterKey, Arc<Filter>> = HashMap::new();
        for chain in previous.chains.values() {
            for f in &chain.filters {
                reusable.insert(
                    (
                        f.shared.plugin.clone(),
                        f.prepared.sha256.clone(),
                        f.shared.plugin_config.clone(),
                        f.shared.vm_config.clone(),
                    ),
                    f.clone(),
                );
            }
        }
        let clusters_config = (config.clusters.clone(), config.max_callouts_in_flight);
        let clusters = if previous.clusters_config == clusters_config && previous.generation > 0 {
            previous.clusters.clone()
        } else {
            Arc::new(
                Clusters::build(
                    &config.clusters,
                    config.max_callouts_in_flight,
                    self.identity.as_ref(),
                    self.checking,
                )
                .map_err(LoadError::from)?,
            )
        };
        let idle = (runtime.limits.max_instances as usize / 4).clamp(1, 64);
        let mut chains = std::collections::BTreeMap::new();
        for (name, chain) in &config.chains {
            let mut filters = Vec::new();
            for (i, fc) in chain.iter().enumerate() {
                let at = format!("filters.chains.{name}[{i}]");
                let filter = self
                    .load_filter(
                        runtime,
                        fc,
                        (memory, timeout, tick, min_tick),
                        (idle, limits.max_queue_depth, config.guest_limits()),
                        &reusable,
                        &clusters,
                    )
                    .map_err(|failed| {
                        let detail = format!(
                            "filter {:?} (module {}): {} (in {})",
                            fc.name,
                            fc.module.display(),
                            failed.failure,
                            failed.phase
                        );
                        LoadError {
                            message: format!("{at}: {detail}"),
                            filter: Some(Box::new(FilterLoadError {
                                name: fc.name.clone(),
                                failed,
                                at: at.clone(),
                                detail,
                            })),
                        }
                    })?;
                filters.push(filter);
            }
            chains.insert(name.clone(), Arc::new(Chain::new(filters)));
        }
        Ok(ChainSet {
            chains,
            limits,
            metrics: self.metrics.clone(),
            generation: previous.generation + 1,
            clusters,
            clusters_config,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn load_filter(
        &self,
        runtime: &Arc<Runtime>,
        fc: &FilterConfig,
        (memory, timeout, tick, min_tick): (usize, Duration, Duration, Duration),
        (idle, max_queue_depth, guest_limits): (usize, usize, super::host::GuestLimits),
        reusable: &HashMap<FilterKey, Arc<Filter>>,
        clusters: &Arc<Clusters>,
    ) -> Result<Arc<Filter>, Failed> {
        let load = |m: String| Failed::new(Phase::Load, Failure::Load(m));
        let bytes = std::fs::read(&fc.module).map_err(|e| load(format!("reading: {e}")))?;
        let prepared = runtime
            .prepare(&bytes, fc.sha256.as_deref())
            .map_err(load)?;
        let plugin_config = config_bytes(fc.config.as_ref());
        let vm_config = config_bytes(fc.vm_config.as_ref());
        let plugin = Plugin {
            name: fc.name.clone(),
            root_id: fc.root_id.clone(),
            vm_id: fc.vm_id.clone(),
            node: Node::from_env(|k| std::env::var(k).ok()),
        };
        let key = (
            plugin.clone(),
            prepared.sha256.clone(),
            plugin_config.clone(),
            vm_config.clone(),
        );
        if let Some(f) = reusable.get(&key)
            && f.failure == fc.failure
            && Arc::ptr_eq(&f.shared.clusters, clusters)
            && f.shared.max_queue_depth == max_queue_depth
            && f.shared.limits == guest_limits
        {
            return Ok(f.clone());
        }
        let shared = Arc::new(FilterShared {
            name: fc.name.clone(),
            plugin,
            plugin_config,
            vm_config,
            metrics: self.metrics.clone(),
            shared_data: self.shared_data.clone(),
            clusters: clusters.clone(),
            in_flight: Default::default(),
            queues: self.shared_queues.clone(),
            max_queue_depth,
            limits: guest_limits,
        });
        let filter = Filter::new(
            fc.name.clone(),
            fc.failure,
            prepared,
            shared,
            memory,
            timeout,
            tick,
            idle,
        );
        // Start one instance now: it proves the module configures, and
        // warms the pool (or, when its root context asked for ticks,
        // becomes the one that ticks).
        let instance = filter.checkout()?;
        let filter = Arc::new(filter);
        if let Some(instance) = filter.start_ticks(instance, min_tick) {
            filter.checkin(instance);
        }
        Ok(filter)
    }

    /// What `tollgate-proxy --check` does with the `filters` section: the
    /// load a start would do — read, compile and link every module, start
    /// one instance of each filter (`proxy_on_vm_start`,
    /// `proxy_on_configure` with its configuration) — then nothing is kept.
    pub fn check(config: &FiltersConfig) -> Result<(), LoadError> {
        let resolved = config.resolve().and_then(|c| c.check().map(|()| c))?;
        let runtime = Runtime::new(resolved.engine_limits())?;
        let metrics = FilterMetrics::new();
        let host = FilterHost {
            source: resolved.clone(),
            runtime: Ok(runtime.clone()),
            current: ArcSwap::from_pointee(ChainSet::empty(metrics.clone())),
            status: Mutex::new(LoadStatus::default()),
            last_seen: Mutex::new(None),
            metrics,
            shared_data: Arc::new(SharedData::default()),
            shared_queues: Arc::default(),
            identity: None,
            checking: true,
        };
        let empty = host.current();
        host.build(&runtime, &resolved, &empty).map(|_| ())
    }

    /// Polls for changes on a background thread until the host is dropped.
    pub fn watch(self: &Arc<Self>) {
        let weak: Weak<FilterHost> = Arc::downgrade(self);
        let interval = self.interval();
        let spawned = std::thread::Builder::new()
            .name("tollgate-filter-reload".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(host) = weak.upgrade() else { return };
                    let _ = host.reload();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(target: "filter", error = %e, "could not start the filter reload watcher");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A module replaced by a rename of a same-size file carrying the same
    /// mtime (a kubelet symlink swap, a copy that preserves times) is still
    /// seen as changed.
    #[test]
    fn a_same_size_same_mtime_swap_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("f.wasm");
        let when = SystemTime::now() - Duration::from_secs(60);
        let write = |path: &std::path::Path, bytes: &[u8]| {
            std::fs::write(path, bytes).unwrap();
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        };
        write(&module, b"aaaa");
        let config = FiltersConfig {
            file: Some(module.clone()),
            ..FiltersConfig::default()
        };
        let before = stamp_of(&config);
        let aside = dir.path().join("g.wasm");
        write(&aside, b"bbbb");
        std::fs::rename(&aside, &module).unwrap();
        assert_ne!(stamp_of(&config), before);
    }
}
