//! The engine and the module cache: one [`wasmtime::Engine`] per host with
//! epoch interruption and the pooling allocator (explicit, small limits:
//! no 4 GiB reservations per slot), modules compiled once and cached by
//! sha256, and the ticker thread that advances the epoch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig,
};

use super::abi;
use super::config::EngineLimits;
use super::host::{self, HostState};

/// Which callbacks a module exports (the host skips the rest, and streams
/// bodies through untouched unless a body callback exists).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub request_headers: bool,
    pub request_body: bool,
    pub request_trailers: bool,
    pub response_headers: bool,
    pub response_body: bool,
    pub response_trailers: bool,
}

impl Caps {
    fn of(module: &Module) -> Caps {
        let has = |name: &str| module.exports().any(|e| e.name() == name);
        Caps {
            request_headers: has("proxy_on_request_headers"),
            request_body: has("proxy_on_request_body"),
            request_trailers: has("proxy_on_request_trailers"),
            response_headers: has("proxy_on_response_headers"),
            response_body: has("proxy_on_response_body"),
            response_trailers: has("proxy_on_response_trailers"),
        }
    }

    pub fn union(self, other: Caps) -> Caps {
        Caps {
            request_headers: self.request_headers || other.request_headers,
            request_body: self.request_body || other.request_body,
            request_trailers: self.request_trailers || other.request_trailers,
            response_headers: self.response_headers || other.response_headers,
            response_body: self.response_body || other.response_body,
            response_trailers: self.response_trailers || other.response_trailers,
        }
    }
}

/// A compiled, linked module.
#[derive(Clone)]
pub struct Prepared {
    pub pre: InstancePre<HostState>,
    pub caps: Caps,
    pub sha256: String,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("sha256", &self.sha256)
            .field("caps", &self.caps)
            .finish()
    }
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Mutex<HashMap<String, Prepared>>,
    pub limits: EngineLimits,
    ticker: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.store(true, Ordering::Relaxed);
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Runtime {
    pub fn new(limits: EngineLimits) -> Result<Arc<Runtime>, String> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(limits.max_instances)
            .total_memories(limits.max_instances)
            .total_tables(limits.max_instances)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .table_elements(20_000)
            .max_memory_size(limits.memory_limit_bytes)
            .max_unused_warm_slots(limits.max_instances.min(64))
            .linear_memory_keep_resident(64 << 10);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Reserve only the cap (plus a guard), not 4 GiB per slot:
            // bounds are checked explicitly.
            .memory_reservation(limits.memory_limit_bytes as u64)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0)
            .max_wasm_stack(512 << 10);
        let engine = Engine::new(&config).map_err(|e| format!("creating the WASM engine: {e}"))?;
        let linker = host::linker(&engine).map_err(|e| format!("linking host functions: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop.clone();
            let tick = Duration::from_millis(limits.epoch_tick_ms);
            std::thread::Builder::new()
                .name("tollgate-wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| format!("starting the epoch ticker: {e}"))?;
        }
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache: Mutex::new(HashMap::new()),
            limits,
            ticker: stop,
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles and links `bytes` (or finds them compiled). `expected`: a
    /// hex sha256 the bytes must have.
    pub fn prepare(&self, bytes: &[u8], expected: Option<&str>) -> Result<Prepared, String> {
        let sha = sha256_hex(bytes);
        if let Some(expected) = expected
            && !expected.eq_ignore_ascii_case(&sha)
        {
            return Err(format!("sha256 is {sha}, expected {expected}"));
        }
        if let Ok(cache) = self.cache.lock()
            && let Some(p) = cache.get(&sha)
        {
            return Ok(p.clone());
        }
        let module = Module::new(&self.engine, bytes).map_err(|e| format!("compiling: {e}"))?;
        if !abi::ABI_MARKERS
            .iter()
            .any(|m| module.exports().any(|e| e.name() == *m))
        {
            let found = module
                .exports()
                .map(|e| e.name())
                .find(|n| n.starts_with("proxy_abi_version_"));
            return Err(match found {
                Some(v) => format!("unsupported ABI {v}: 0.2.0 and 0.2.1 are supported"),
                None => {
                    "not a proxy-wasm module: no proxy_abi_version_0_2_1 (or _0_2_0) export".into()
                }
            });
        }
        if !module.exports().any(|e| e.name() == "memory") {
            return Err("the module exports no memory".into());
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| format!("linking: {e}"))?;
        let prepared = Prepared {
            pre,
            caps: Caps::of(&module),
            sha256: sha.clone(),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(sha, prepared.clone());
        }
        Ok(prepared)
    }

    /// Drops cached modules not in `keep` (after a reload).
    pub fn retain(&self, keep: &HashSet<String>) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|sha, _| keep.contains(sha));
        }
    }
}
