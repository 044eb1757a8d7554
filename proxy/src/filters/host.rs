//! The host side of the ABI: the per-store state and the [`Linker`] with
//! every `proxy_*` import SDKs declare and the WASI preview1 basics (under
//! both `wasi_snapshot_preview1` and `wasi_unstable`).
//!
//! Every guest pointer is bounds-checked: a bad one gets
//! `INVALID_MEMORY_ACCESS` (WASI: `FAULT`), never a host panic.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use wasmtime::{Caller, Linker, Memory, ResourceLimiter, TypedFunc};

use super::abi::{self, BufferType, LogLevel, MapType, MetricType, Status, StreamType, errno};
use super::callout::{CallKind, CallResponse, Callout, Cluster, Clusters, InFlight};
use super::metrics::{FilterMetrics, GuestMetric};
use super::properties::{self, RequestProps};
use super::queue::{EnqueueError, SharedQueues};

/// What one filter's instances share: its name and configuration, the
/// metrics, the process's shared data.
pub struct FilterShared {
    pub name: String,
    /// The filter's identity for `plugin_*` and `node.*` properties.
    pub plugin: properties::Plugin,
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    pub metrics: FilterMetrics,
    pub shared_data: Arc<SharedData>,
    /// What `proxy_http_call` may call.
    pub clusters: Arc<Clusters>,
    /// This filter's calls in flight (all its instances).
    pub in_flight: Arc<AtomicUsize>,
    /// The process's shared queues, and the depth each may reach.
    pub queues: Arc<SharedQueues>,
    pub max_queue_depth: usize,
    /// Caps on what the filter may define and store.
    pub limits: GuestLimits,
}

/// Per-filter caps on guest-defined state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    /// Metrics it may define (`proxy_define_metric`).
    pub max_guest_metrics: usize,
    /// Shared-data keys it may create.
    pub max_shared_data_keys: usize,
    /// The largest shared-data value it may set.
    pub max_shared_data_value_bytes: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            max_guest_metrics: 100,
            max_shared_data_keys: 10_000,
            max_shared_data_value_bytes: 64 << 10,
        }
    }
}

/// `proxy_{get,set}_shared_data`: one key-value store for the process,
/// with compare-and-swap versions.
#[derive(Default)]
pub struct SharedData {
    entries: Mutex<SharedEntries>,
}

/// Key → (value, compare-and-swap version), and the keys each filter
/// created (bounded by `maxSharedDataKeys`).
#[derive(Default)]
struct SharedEntries {
    map: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    created: HashMap<String, usize>,
}

/// A header map as callbacks see it: pseudo-headers (`:method`, `:path`,
/// `:authority`, `:scheme`; `:status`) first, then the real ones.
#[derive(Default, Debug, Clone)]
pub struct Headers {
    pub pseudo: Vec<(String, String)>,
    pub map: HeaderMap,
}

impl Headers {
    pub fn len(&self) -> usize {
        self.pseudo.len() + self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pseudo(&self, name: &str) -> Option<&str> {
        self.pseudo
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn serialize(&self) -> Vec<u8> {
        let pairs: Vec<(&[u8], &[u8])> = self
            .pseudo
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .chain(
                self.map
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
            )
            .collect();
        abi::serialize_map(&pairs)
    }

    fn get(&self, name: &[u8]) -> Option<Vec<u8>> {
        if name.starts_with(b":") {
            return self
                .pseudo
                .iter()
                .find(|(k, _)| k.as_bytes() == name)
                .map(|(_, v)| v.as_bytes().to_vec());
        }
        let name = HeaderName::from_bytes(name).ok()?;
        let mut values = self.map.get_all(&name).iter();
        let mut out = values.next()?.as_bytes().to_vec();
        for v in values {
            out.push(b',');
            out.extend_from_slice(v.as_bytes());
        }
        Some(out)
    }

    fn set_pseudo(&mut self, name: &[u8], value: &[u8]) -> Status {
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            return Status::BadArgument;
        };
        match self.pseudo.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value.to_owned(),
            None => self.pseudo.push((name.to_owned(), value.to_owned())),
        }
        Status::Ok
    }

    fn put(&mut self, name: &[u8], value: &[u8], append: bool) -> Status {
        if name.starts_with(b":") {
            return self.set_pseudo(name, value);
        }
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            return Status::BadArgument;
        };
        if append {
            self.map.append(name, value);
        } else {
            self.map.insert(name, value);
        }
        Status::Ok
    }

    fn remove(&mut self, name: &[u8]) -> Status {
        if name.starts_with(b":") {
            // Pseudo-headers cannot be removed, as in Envoy.
            return Status::Ok;
        }
        if let Ok(name) = HeaderName::from_bytes(name) {
            self.map.remove(name);
        }
        Status::Ok
    }

    fn replace_all(&mut self, pairs: &[(&[u8], &[u8])]) -> Status {
        let mut next = Headers {
            pseudo: self.pseudo.clone(),
            map: HeaderMap::with_capacity(pairs.len()),
        };
        for (k, v) in pairs {
            if next.put(k, v, true) != Status::Ok {
                return Status::BadArgument;
            }
        }
        *self = next;
        Status::Ok
    }
}

/// A response a filter asked for with `proxy_send_local_response`.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: u16,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `None` when the guest passed -1: derived from the HTTP status.
    pub grpc_status: Option<u32>,
}

/// The state of the callback in progress (and of the request whose
/// context it runs in).
#[derive(Default)]
pub struct CallState {
    pub request_headers: Option<Headers>,
    pub request_trailers: Option<Headers>,
    pub response_headers: Option<Headers>,
    pub response_trailers: Option<Headers>,
    pub request_body: Option<Vec<u8>>,
    pub response_body: Option<Vec<u8>>,
    /// The request headers as forwarded, for `request.headers.*` lookups
    /// in response callbacks.
    pub forwarded_request_headers: Option<Arc<HeaderMap>>,
    pub props: Option<Arc<RequestProps>>,
    pub local_response: Option<LocalResponse>,
    pub continue_requested: bool,
    pub close_requested: bool,
    pub context_id: u32,
    /// Whether `proxy_http_call` may be used now (the chain can wait for
    /// the answer: request headers, call responses, ticks).
    pub callouts_allowed: bool,
    /// The calls this callback made, sent when it returns.
    pub callouts: Vec<Callout>,
    /// The answer `proxy_on_http_call_response` (or the `proxy_on_grpc_*`
    /// callbacks) is delivering.
    pub call_response: Option<CallResponse>,
    /// The stream context waiting on a call (`proxy_set_effective_context`
    /// may switch to it from the root context).
    pub stream_context: u32,
}

/// The memory cap of one instance. Refusing a growth traps (rather than
/// `memory.grow` returning -1), so the failure is attributed.
pub struct MemoryLimiter {
    pub max_bytes: usize,
    pub hit: bool,
}

/// A guest asked for more linear memory than its cap.
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {max} bytes exceeded (asked for {desired})")]
pub struct MemoryCapExceeded {
    pub max: usize,
    pub desired: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                max: self.max_bytes,
                desired,
            }));
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.hit = true;
        Err(error)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A guest called `proc_exit`: that call fails, the proxy does not exit.
#[derive(Debug, thiserror::Error)]
#[error("the filter called proc_exit({0})")]
pub struct ProcExit(pub i32);

/// The data of every store.
pub struct HostState {
    pub limiter: MemoryLimiter,
    pub shared: Arc<FilterShared>,
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<i32, i32>>,
    pub call: CallState,
    /// What the root context asked with `proxy_set_tick_period_milliseconds`
    /// (0: no ticks).
    pub tick_period_ms: u32,
    /// The last `proxy_http_call` token given.
    pub next_token: u32,
}

impl HostState {
    pub fn new(shared: Arc<FilterShared>, max_memory: usize) -> HostState {
        HostState {
            limiter: MemoryLimiter {
                max_bytes: max_memory,
                hit: false,
            },
            shared,
            memory: None,
            alloc: None,
            call: CallState::default(),
            tick_period_ms: 0,
            next_token: 0,
        }
    }

    fn map(&mut self, map: MapType) -> Option<&mut Headers> {
        match map {
            MapType::RequestHeaders => self.call.request_headers.as_mut(),
            MapType::RequestTrailers => self.call.request_trailers.as_mut(),
            MapType::ResponseHeaders => self.call.response_headers.as_mut(),
            MapType::ResponseTrailers => self.call.response_trailers.as_mut(),
            MapType::HttpCallResponseHeaders | MapType::GrpcInitialMetadata => {
                self.call.call_response.as_mut().map(|r| &mut r.headers)
            }
            MapType::HttpCallResponseTrailers | MapType::GrpcTrailingMetadata => {
                self.call.call_response.as_mut().map(|r| &mut r.trailers)
            }
        }
    }

    fn buffer(&mut self, buffer: BufferType) -> Option<&mut Vec<u8>> {
        match buffer {
            BufferType::HttpRequestBody => self.call.request_body.as_mut(),
            BufferType::HttpResponseBody => self.call.response_body.as_mut(),
            BufferType::HttpCallResponseBody | BufferType::GrpcCallMessage => {
                self.call.call_response.as_mut().map(|r| &mut r.body)
            }
            _ => None,
        }
    }
}

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<i32>;

const OK: i32 = 0;

fn code(s: Status) -> i32 {
    s.code()
}

fn range(ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    Some(start..end)
}

/// Copies `len` bytes at `ptr` out of the guest.
fn read(caller: &C<'_>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let memory = caller.data().memory?;
    memory
        .data(caller)
        .get(range(ptr, len)?)
        .map(<[u8]>::to_vec)
}

fn write(caller: &mut C<'_>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(memory) = caller.data().memory else {
        return false;
    };
    let Some(r) = range(ptr, bytes.len() as i32) else {
        return false;
    };
    match memory.data_mut(caller).get_mut(r) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

fn write_u32(caller: &mut C<'_>, ptr: i32, value: u32) -> bool {
    write(caller, ptr, &value.to_le_bytes())
}

fn write_u64(caller: &mut C<'_>, ptr: i32, value: u64) -> bool {
    write(caller, ptr, &value.to_le_bytes())
}

fn writable(caller: &C<'_>, ptr: i32, len: usize) -> bool {
    let Some(memory) = caller.data().memory else {
        return false;
    };
    range(ptr, len as i32).is_some_and(|r| r.end <= memory.data_size(caller))
}

/// Hands `bytes` to the guest: memory from its allocator, the pointer and
/// size written at `ptr_ptr` and `size_ptr`. A trap in the allocator is the
/// caller's trap.
fn give(caller: &mut C<'_>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> R {
    if !writable(caller, ptr_ptr, 4) || !writable(caller, size_ptr, 4) {
        return Ok(code(Status::InvalidMemoryAccess));
    }
    let Some(alloc) = caller.data().alloc.clone() else {
        return Ok(code(Status::InternalFailure));
    };
    let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    let ptr = alloc.call(&mut *caller, len)?;
    if ptr == 0 && !bytes.is_empty() {
        return Ok(code(Status::InvalidMemoryAccess));
    }
    if !write(caller, ptr, bytes) {
        return Ok(code(Status::InvalidMemoryAccess));
    }
    if !write_u32(caller, ptr_ptr, ptr as u32) || !write_u32(caller, size_ptr, len as u32) {
        return Ok(code(Status::InvalidMemoryAccess));
    }
    Ok(OK)
}

fn log_message(level: LogLevel, filter: &str, message: &str) {
    match level {
        LogLevel::Trace => tracing::trace!(target: "filter", filter, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "filter", filter, "{message}"),
        LogLevel::Info => tracing::info!(target: "filter", filter, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "filter", filter, "{message}"),
        LogLevel::Error | LogLevel::Critical => {
            tracing::error!(target: "filter", filter, "{message}")
        }
    }
}

fn current_log_level() -> u32 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        LevelFilter::ERROR => 4,
        _ => 5,
    }
}

fn started() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// ---- logging, time ----

fn proxy_log(caller: C<'_>, level: i32, ptr: i32, len: i32) -> R {
    let Some(level) = LogLevel::from_raw(level) else {
        return Ok(code(Status::BadArgument));
    };
    let Some(bytes) = read(&caller, ptr, len) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    log_message(
        level,
        &caller.data().shared.name,
        &String::from_utf8_lossy(&bytes),
    );
    Ok(OK)
}

fn proxy_get_log_level(mut caller: C<'_>, ptr: i32) -> R {
    Ok(if write_u32(&mut caller, ptr, current_log_level()) {
        OK
    } else {
        code(Status::InvalidMemoryAccess)
    })
}

fn proxy_get_current_time_nanoseconds(mut caller: C<'_>, ptr: i32) -> R {
    Ok(if write_u64(&mut caller, ptr, now_nanos()) {
        OK
    } else {
        code(Status::InvalidMemoryAccess)
    })
}

/// Ticks belong to the root context: asked for while it runs (start-up,
/// `proxy_on_tick`); a stream context asking gets `BAD_ARGUMENT`. The
/// chain bounds the period from below (`minTickPeriodMs`).
fn proxy_set_tick_period_milliseconds(mut caller: C<'_>, period: i32) -> R {
    let context = caller.data().call.context_id;
    if context != 0 && context != super::instance::ROOT_CONTEXT {
        return Ok(code(Status::BadArgument));
    }
    let Ok(period) = u32::try_from(period) else {
        return Ok(code(Status::BadArgument));
    };
    caller.data_mut().tick_period_ms = period;
    Ok(OK)
}

// ---- buffers ----

fn proxy_get_configuration(mut caller: C<'_>, ptr_ptr: i32, size_ptr: i32) -> R {
    let shared = caller.data().shared.clone();
    give(&mut caller, &shared.plugin_config, ptr_ptr, size_ptr)
}

fn buffer_bytes(caller: &mut C<'_>, buffer: BufferType) -> Option<Vec<u8>> {
    match buffer {
        BufferType::VmConfiguration => Some(caller.data().shared.vm_config.clone()),
        BufferType::PluginConfiguration => Some(caller.data().shared.plugin_config.clone()),
        other => caller.data_mut().buffer(other).cloned(),
    }
}

fn buffer_len(caller: &mut C<'_>, buffer: BufferType) -> Option<usize> {
    match buffer {
        BufferType::VmConfiguration => Some(caller.data().shared.vm_config.len()),
        BufferType::PluginConfiguration => Some(caller.data().shared.plugin_config.len()),
        other => caller.data_mut().buffer(other).map(|b| b.len()),
    }
}

fn proxy_get_buffer_bytes(
    mut caller: C<'_>,
    buffer: i32,
    start: i32,
    max: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> R {
    let Some(buffer) = BufferType::from_raw(buffer) else {
        return Ok(code(Status::BadArgument));
    };
    let Some(bytes) = buffer_bytes(&mut caller, buffer) else {
        return Ok(code(Status::NotFound));
    };
    let start = start as u32 as usize;
    if start > bytes.len() {
        return Ok(code(Status::BadArgument));
    }
    let end = start.saturating_add(max as u32 as usize).min(bytes.len());
    give(&mut caller, &bytes[start..end], ptr_ptr, size_ptr)
}

fn proxy_get_buffer_status(mut caller: C<'_>, buffer: i32, size_ptr: i32, flags_ptr: i32) -> R {
    let Some(buffer) = BufferType::from_raw(buffer) else {
        return Ok(code(Status::BadArgument));
    };
    let Some(len) = buffer_len(&mut caller, buffer) else {
        return Ok(code(Status::NotFound));
    };
    if !write_u32(&mut caller, size_ptr, len as u32) || !write_u32(&mut caller, flags_ptr, 0) {
        return Ok(code(Status::InvalidMemoryAccess));
    }
    Ok(OK)
}

fn proxy_set_buffer_bytes(
    mut caller: C<'_>,
    buffer: i32,
    start: i32,
    size: i32,
    ptr: i32,
    len: i32,
) -> R {
    let Some(buffer) = BufferType::from_raw(buffer) else {
        return Ok(code(Status::BadArgument));
    };
    let Some(value) = read(&caller, ptr, len) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    let Some(target) = caller.data_mut().buffer(buffer) else {
        return Ok(code(Status::NotFound));
    };
    let start = (start as u32 as usize).min(target.len());
    let end = start.saturating_add(size as u32 as usize).min(target.len());
    target.splice(start..end, value);
    Ok(OK)
}

// ---- header maps ----

fn proxy_get_header_map_pairs(mut caller: C<'_>, map: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    let Some(map) = MapType::from_raw(map) else {
        return Ok(code(Status::BadArgument));
    };
    let bytes = match caller.data_mut().map(map) {
        Some(h) => h.serialize(),
        None => abi::serialize_map::<&[u8], &[u8]>(&[]),
    };
    give(&mut caller, &bytes, ptr_ptr, size_ptr)
}

fn proxy_set_header_map_pairs(mut caller: C<'_>, map: i32, ptr: i32, len: i32) -> R {
    let Some(map) = MapType::from_raw(map) else {
        return Ok(code(Status::BadArgument));
    };
    let Some(bytes) = read(&caller, ptr, len) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    let Some(pairs) = abi::deserialize_map(&bytes) else {
        return Ok(code(Status::BadArgument));
    };
    Ok(match caller.data_mut().map(map) {
        Some(h) => code(h.replace_all(&pairs)),
        None => code(Status::NotFound),
    })
}

fn proxy_get_header_map_size(mut caller: C<'_>, map: i32, size_ptr: i32) -> R {
    let Some(map) = MapType::from_raw(map) else {
        return Ok(code(Status::BadArgument));
    };
    let size = caller
        .data_mut()
        .map(map)
        .map_or(4, |h| h.serialize().len());
    Ok(if write_u32(&mut caller, size_ptr, size as u32) {
        OK
    } else {
        code(Status::InvalidMemoryAccess)
    })
}

fn proxy_get_header_map_value(
    mut caller: C<'_>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> R {
    let Some(map) = MapType::from_raw(map) else {
        return Ok(code(Status::BadArgument));
    };
    let Some(key) = read(&caller, key_ptr, key_len) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    let value = caller.data_mut().map(map).and_then(|h| h.get(&key));
    match value {
        Some(v) => give(&mut caller, &v, ptr_ptr, size_ptr),
        None => Ok(code(Status::NotFound)),
    }
}

fn put_header(
    mut caller: C<'_>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
    value_ptr: i32,
    value_len: i32,
    append: bool,
) -> R {
    let Some(map) = MapType::from_raw(map) else {
        return Ok(code(Status::BadArgument));
    };
    let (Some(key), Some(value)) = (
        read(&caller, key_ptr, key_len),
        read(&caller, value_ptr, value_len),
    ) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    Ok(match caller.data_mut().map(map) {
        Some(h) => code(h.put(&key, &value, append)),
        None => code(Status::NotFound),
    })
}

fn proxy_add_header_map_value(caller: C<'_>, map: i32, k: i32, kl: i32, v: i32, vl: i32) -> R {
    put_header(caller, map, k, kl, v, vl, true)
}

fn proxy_replace_header_map_value(caller: C<'_>, map: i32, k: i32, kl: i32, v: i32, vl: i32) -> R {
    put_header(caller, map, k, kl, v, vl, false)
}

fn proxy_remove_header_map_value(mut caller: C<'_>, map: i32, key_ptr: i32, key_len: i32) -> R {
    let Some(map) = MapType::from_raw(map) else {
        return Ok(code(Status::BadArgument));
    };
    let Some(key) = read(&caller, key_ptr, key_len) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    Ok(match caller.data_mut().map(map) {
        Some(h) => code(h.remove(&key)),
        None => code(Status::NotFound),
    })
}

// ---- properties ----

fn proxy_get_property(
    mut caller: C<'_>,
    path_ptr: i32,
    path_len: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> R {
    let Some(path) = read(&caller, path_ptr, path_len) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    let segments = abi::split_property_path(&path);
    let state = caller.data();
    let props = state.call.props.clone().unwrap_or_default();
    let call = &state.call;
    let maps = properties::Maps {
        request_headers: call
            .request_headers
            .as_ref()
            .map(|h| &h.map)
            .or(call.forwarded_request_headers.as_deref()),
        response_headers: call.response_headers.as_ref().map(|h| &h.map),
        response_status: call
            .response_headers
            .as_ref()
            .and_then(|h| h.pseudo(":status"))
            .and_then(|s| s.parse().ok()),
        response_trailers: call.response_trailers.as_ref().map(|h| &h.map),
    };
    let value = properties::lookup(&props, &state.shared.plugin, &segments, maps);
    match value {
        Some(v) => give(&mut caller, &v, ptr_ptr, size_ptr),
        None => Ok(code(Status::NotFound)),
    }
}

fn proxy_set_property(caller: C<'_>, path_ptr: i32, path_len: i32, ptr: i32, len: i32) -> R {
    if read(&caller, path_ptr, path_len).is_none() || read(&caller, ptr, len).is_none() {
        return Ok(code(Status::InvalidMemoryAccess));
    }
    Ok(code(Status::NotFound))
}

// ---- stream control ----

#[allow(clippy::too_many_arguments)]
fn proxy_send_local_response(
    mut caller: C<'_>,
    status: i32,
    details_ptr: i32,
    details_len: i32,
    body_ptr: i32,
    body_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    grpc_status: i32,
) -> R {
    let (Some(details), Some(body), Some(headers)) = (
        read(&caller, details_ptr, details_len),
        read(&caller, body_ptr, body_len),
        read(&caller, headers_ptr, headers_len),
    ) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    let Some(pairs) = abi::deserialize_map(&headers) else {
        return Ok(code(Status::BadArgument));
    };
    let status = match u16::try_from(status) {
        Ok(s @ 200..=599) => s,
        _ => return Ok(code(Status::BadArgument)),
    };
    let mut list = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        match (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) {
            (Ok(k), Ok(v)) => list.push((k, v)),
            _ => return Ok(code(Status::BadArgument)),
        }
    }
    caller.data_mut().call.local_response = Some(LocalResponse {
        status,
        details: String::from_utf8_lossy(&details).into_owned(),
        body,
        headers: list,
        grpc_status: u32::try_from(grpc_status).ok(),
    });
    Ok(OK)
}

fn proxy_continue_stream(mut caller: C<'_>, stream: i32) -> R {
    Ok(match StreamType::from_raw(stream) {
        Some(StreamType::HttpRequest | StreamType::HttpResponse) => {
            caller.data_mut().call.continue_requested = true;
            OK
        }
        Some(_) => code(Status::Unimplemented),
        None => code(Status::BadArgument),
    })
}

fn proxy_close_stream(mut caller: C<'_>, stream: i32) -> R {
    Ok(match StreamType::from_raw(stream) {
        Some(StreamType::HttpRequest | StreamType::HttpResponse) => {
            caller.data_mut().call.close_requested = true;
            OK
        }
        Some(_) => code(Status::Unimplemented),
        None => code(Status::BadArgument),
    })
}

fn proxy_continue_request(mut caller: C<'_>) -> R {
    caller.data_mut().call.continue_requested = true;
    Ok(OK)
}

fn proxy_clear_route_cache(_caller: C<'_>) -> R {
    Ok(OK)
}

fn proxy_done(_caller: C<'_>) -> R {
    // Contexts are never kept pending: nothing awaits proxy_done.
    Ok(code(Status::NotFound))
}

fn proxy_set_effective_context(caller: C<'_>, context: i32) -> R {
    let call = &caller.data().call;
    let current = call.context_id;
    Ok(
        if context as u32 == current
            || context == super::instance::ROOT_CONTEXT as i32
            || (call.stream_context != 0 && context as u32 == call.stream_context)
        {
            OK
        } else {
            code(Status::BadArgument)
        },
    )
}

// ---- callouts ----

/// `proxy_http_call`: checks the call and queues it; the chain sends it
/// when the callback returns and delivers the answer to the root context.
/// An unknown cluster or a request without `:method`, `:path` and
/// `:authority` is `BAD_ARGUMENT` (as in Envoy); a call where no answer
/// could be waited for, or past `maxCalloutsInFlight`, is
/// `INTERNAL_FAILURE` (the latter counted).
#[allow(clippy::too_many_arguments)]
fn proxy_http_call(
    mut caller: C<'_>,
    upstream_ptr: i32,
    upstream_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    body_ptr: i32,
    body_len: i32,
    _trailers_ptr: i32,
    _trailers_len: i32,
    timeout_ms: i32,
    token_ptr: i32,
) -> R {
    let (Some(upstream), Some(headers), Some(body)) = (
        read(&caller, upstream_ptr, upstream_len),
        read(&caller, headers_ptr, headers_len),
        read(&caller, body_ptr, body_len),
    ) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    if !writable(&caller, token_ptr, 4) {
        return Ok(code(Status::InvalidMemoryAccess));
    }
    let shared = caller.data().shared.clone();
    let Some(cluster) = std::str::from_utf8(&upstream)
        .ok()
        .and_then(|name| shared.clusters.get(name))
    else {
        return Ok(code(Status::BadArgument));
    };
    let Some(pairs) = abi::deserialize_map(&headers) else {
        return Ok(code(Status::BadArgument));
    };
    let headers: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    let has = |name: &str| headers.iter().any(|(k, v)| k == name && !v.is_empty());
    if !has(":method") || !has(":path") || !has(":authority") {
        return Ok(code(Status::BadArgument));
    }
    let timeout = std::time::Duration::from_millis(timeout_ms as u32 as u64);
    push_call(
        &mut caller,
        CallKind::Http,
        cluster,
        headers,
        body,
        timeout,
        token_ptr,
    )
}

/// Takes a place among the filter's calls in flight and queues the call
/// (sent when the callback returns), writing its token. Refused
/// (`INTERNAL_FAILURE`) where the chain cannot wait for it, or, counted
/// (phase `http_call`, reason `callout-limit`), over
/// `maxCalloutsInFlight`.
fn push_call(
    caller: &mut C<'_>,
    kind: CallKind,
    cluster: Arc<Cluster>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: std::time::Duration,
    token_ptr: i32,
) -> R {
    let shared = caller.data().shared.clone();
    if !caller.data().call.callouts_allowed {
        return Ok(code(Status::InternalFailure));
    }
    let Some(place) = InFlight::take(&shared.in_flight, shared.clusters.max_in_flight) else {
        let failed = super::instance::Failed::new(
            super::instance::Phase::HttpCall,
            super::instance::Failure::CalloutLimit(shared.clusters.max_in_flight),
        );
        shared.metrics.failure(&shared.name, &failed);
        shared.metrics.callout(&shared.name, &cluster.name, "limit");
        tracing::warn!(target: "filter", filter = %shared.name, cluster = %cluster.name, kind = ?kind, error = %failed.failure, "call refused");
        return Ok(code(Status::InternalFailure));
    };
    let data = caller.data_mut();
    data.next_token = data.next_token.wrapping_add(1).max(1);
    let token = data.next_token;
    data.call.callouts.push(Callout {
        token,
        kind,
        cluster,
        headers,
        body,
        timeout,
        _place: place,
    });
    write_u32(caller, token_ptr, token);
    Ok(OK)
}

/// `proxy_grpc_call` (unary): `service` names a cluster (as Envoy takes a
/// cluster name there), `service_name`/`method` make the `:path`, the
/// metadata is a serialised map, the message the guest's protobuf.
#[allow(clippy::too_many_arguments)]
fn proxy_grpc_call(
    mut caller: C<'_>,
    service_ptr: i32,
    service_len: i32,
    service_name_ptr: i32,
    service_name_len: i32,
    method_ptr: i32,
    method_len: i32,
    metadata_ptr: i32,
    metadata_len: i32,
    message_ptr: i32,
    message_len: i32,
    timeout_ms: i32,
    token_ptr: i32,
) -> R {
    let (Some(service), Some(service_name), Some(method), Some(metadata), Some(message)) = (
        read(&caller, service_ptr, service_len),
        read(&caller, service_name_ptr, service_name_len),
        read(&caller, method_ptr, method_len),
        read(&caller, metadata_ptr, metadata_len),
        read(&caller, message_ptr, message_len),
    ) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    if !writable(&caller, token_ptr, 4) {
        return Ok(code(Status::InvalidMemoryAccess));
    }
    let shared = caller.data().shared.clone();
    let Some(cluster) = std::str::from_utf8(&service)
        .ok()
        .and_then(|name| shared.clusters.get(name))
    else {
        return Ok(code(Status::BadArgument));
    };
    let (Ok(service_name), Ok(method)) = (
        std::str::from_utf8(&service_name),
        std::str::from_utf8(&method),
    ) else {
        return Ok(code(Status::BadArgument));
    };
    if service_name.is_empty() || method.is_empty() {
        return Ok(code(Status::BadArgument));
    }
    let pairs = if metadata.is_empty() {
        Vec::new()
    } else {
        let Some(pairs) = abi::deserialize_map(&metadata) else {
            return Ok(code(Status::BadArgument));
        };
        pairs
    };
    let mut headers = vec![(":path".to_owned(), format!("/{service_name}/{method}"))];
    headers.extend(pairs.iter().map(|(k, v)| {
        (
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        )
    }));
    let timeout = std::time::Duration::from_millis(timeout_ms as u32 as u64);
    push_call(
        &mut caller,
        CallKind::Grpc,
        cluster,
        headers,
        message,
        timeout,
        token_ptr,
    )
}

/// `proxy_get_status`: the status of the gRPC call being closed
/// (`proxy_on_grpc_close`); `NOT_FOUND` elsewhere.
fn proxy_get_status(mut caller: C<'_>, code_ptr: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    let Some(status) = caller
        .data()
        .call
        .call_response
        .as_ref()
        .and_then(|r| r.grpc_status.clone())
    else {
        return Ok(code(Status::NotFound));
    };
    if !write_u32(&mut caller, code_ptr, status.code) {
        return Ok(code(Status::InvalidMemoryAccess));
    }
    give(&mut caller, status.message.as_bytes(), ptr_ptr, size_ptr)
}

/// A guest call refused by a per-filter cap: counted (phase `limit`),
/// logged, `INTERNAL_FAILURE` to the guest.
fn guest_limit(shared: &FilterShared, failure: super::instance::Failure) -> i32 {
    let failed = super::instance::Failed::new(super::instance::Phase::Limit, failure);
    shared.metrics.failure(&shared.name, &failed);
    tracing::warn!(target: "filter", filter = %shared.name, error = %failed.failure, "host call refused by a cap");
    code(Status::InternalFailure)
}

// ---- shared queues ----

fn proxy_register_shared_queue(mut caller: C<'_>, name_ptr: i32, name_len: i32, id_ptr: i32) -> R {
    let Some(name) = read(&caller, name_ptr, name_len) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    let shared = caller.data().shared.clone();
    let name = String::from_utf8_lossy(&name);
    let Some(id) = shared
        .queues
        .register(&shared.plugin.vm_id, &name, &shared.name)
    else {
        return Ok(code(Status::InternalFailure));
    };
    Ok(if write_u32(&mut caller, id_ptr, id) {
        OK
    } else {
        code(Status::InvalidMemoryAccess)
    })
}

fn proxy_resolve_shared_queue(
    mut caller: C<'_>,
    vm_ptr: i32,
    vm_len: i32,
    name_ptr: i32,
    name_len: i32,
    id_ptr: i32,
) -> R {
    let (Some(vm_id), Some(name)) = (
        read(&caller, vm_ptr, vm_len),
        read(&caller, name_ptr, name_len),
    ) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    let shared = caller.data().shared.clone();
    let found = shared.queues.resolve(
        &String::from_utf8_lossy(&vm_id),
        &String::from_utf8_lossy(&name),
    );
    let Some(id) = found else {
        return Ok(code(Status::NotFound));
    };
    Ok(if write_u32(&mut caller, id_ptr, id) {
        OK
    } else {
        code(Status::InvalidMemoryAccess)
    })
}

fn proxy_enqueue_shared_queue(caller: C<'_>, id: i32, ptr: i32, len: i32) -> R {
    let Some(value) = read(&caller, ptr, len) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    let shared = caller.data().shared.clone();
    Ok(
        match shared
            .queues
            .enqueue(id as u32, value, shared.max_queue_depth)
        {
            Ok(()) => OK,
            Err(EnqueueError::NotFound) => code(Status::NotFound),
            Err(EnqueueError::Full) => {
                let failed = super::instance::Failed::new(
                    super::instance::Phase::SharedQueue,
                    super::instance::Failure::QueueFull(shared.max_queue_depth),
                );
                shared.metrics.failure(&shared.name, &failed);
                tracing::warn!(target: "filter", filter = %shared.name, queue = id, error = %failed.failure, "proxy_enqueue_shared_queue refused");
                code(Status::InternalFailure)
            }
        },
    )
}

fn proxy_dequeue_shared_queue(mut caller: C<'_>, id: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    let shared = caller.data().shared.clone();
    match shared.queues.dequeue(id as u32) {
        Ok(value) => give(&mut caller, &value, ptr_ptr, size_ptr),
        Err(status) => Ok(code(status)),
    }
}

// ---- shared data ----

fn proxy_get_shared_data(
    mut caller: C<'_>,
    key_ptr: i32,
    key_len: i32,
    ptr_ptr: i32,
    size_ptr: i32,
    cas_ptr: i32,
) -> R {
    let Some(key) = read(&caller, key_ptr, key_len) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    let entry = {
        let shared = caller.data().shared.shared_data.clone();
        let Ok(entries) = shared.entries.lock() else {
            return Ok(code(Status::InternalFailure));
        };
        entries.map.get(&key).cloned()
    };
    let Some((value, cas)) = entry else {
        return Ok(code(Status::NotFound));
    };
    if !write_u32(&mut caller, cas_ptr, cas) {
        return Ok(code(Status::InvalidMemoryAccess));
    }
    give(&mut caller, &value, ptr_ptr, size_ptr)
}

fn proxy_set_shared_data(
    caller: C<'_>,
    key_ptr: i32,
    key_len: i32,
    ptr: i32,
    len: i32,
    cas: i32,
) -> R {
    let (Some(key), Some(value)) = (read(&caller, key_ptr, key_len), read(&caller, ptr, len))
    else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    let filter = caller.data().shared.clone();
    let limits = filter.limits;
    if value.len() > limits.max_shared_data_value_bytes {
        return Ok(guest_limit(
            &filter,
            super::instance::Failure::SharedDataLimit(format!(
                "a value of {} bytes (maxSharedDataValueBytes {})",
                value.len(),
                limits.max_shared_data_value_bytes
            )),
        ));
    }
    let shared = filter.shared_data.clone();
    let Ok(mut entries) = shared.entries.lock() else {
        return Ok(code(Status::InternalFailure));
    };
    let cas = cas as u32;
    if !entries.map.contains_key(&key) {
        let created = entries.created.get(&filter.name).copied().unwrap_or(0);
        if created >= limits.max_shared_data_keys {
            drop(entries);
            return Ok(guest_limit(
                &filter,
                super::instance::Failure::SharedDataLimit(format!(
                    "{created} keys already (maxSharedDataKeys)"
                )),
            ));
        }
        *entries.created.entry(filter.name.clone()).or_insert(0) += 1;
    }
    let entry = entries.map.entry(key).or_insert((Vec::new(), 0));
    if cas != 0 && entry.1 != cas {
        return Ok(code(Status::CasMismatch));
    }
    entry.0 = value;
    entry.1 = entry.1.wrapping_add(1).max(1);
    Ok(OK)
}

// ---- metrics ----

fn proxy_define_metric(
    mut caller: C<'_>,
    kind: i32,
    name_ptr: i32,
    name_len: i32,
    id_ptr: i32,
) -> R {
    let Some(kind) = MetricType::from_raw(kind) else {
        return Ok(code(Status::BadArgument));
    };
    let Some(name) = read(&caller, name_ptr, name_len) else {
        return Ok(code(Status::InvalidMemoryAccess));
    };
    let shared = caller.data().shared.clone();
    let name = String::from_utf8_lossy(&name);
    let defined = shared.metrics.defined_by(&shared.name);
    if defined >= shared.limits.max_guest_metrics
        && !shared.metrics.is_defined(&shared.name, &name, kind)
    {
        return Ok(guest_limit(
            &shared,
            super::instance::Failure::MetricLimit(shared.limits.max_guest_metrics),
        ));
    }
    let Some(id) = shared.metrics.define(&shared.name, &name, kind) else {
        return Ok(code(Status::InternalFailure));
    };
    Ok(if write_u32(&mut caller, id_ptr, id) {
        OK
    } else {
        code(Status::InvalidMemoryAccess)
    })
}

fn proxy_increment_metric(caller: C<'_>, id: i32, delta: i64) -> R {
    Ok(match caller.data().shared.metrics.guest_metric(id as u32) {
        Some(GuestMetric::Counter(c)) if delta >= 0 => {
            c.inc_by(delta as u64);
            OK
        }
        Some(GuestMetric::Gauge(g)) => {
            g.inc_by(delta);
            OK
        }
        Some(_) => code(Status::BadArgument),
        None => code(Status::NotFound),
    })
}

fn proxy_record_metric(caller: C<'_>, id: i32, value: i64) -> R {
    Ok(match caller.data().shared.metrics.guest_metric(id as u32) {
        Some(GuestMetric::Gauge(g)) => {
            g.set(value);
            OK
        }
        Some(GuestMetric::Histogram(h)) => {
            h.observe(value as u64 as f64);
            OK
        }
        Some(GuestMetric::Counter(c)) => {
            // Counters only go up: record raises to the value.
            let v = value as u64;
            let now = c.get();
            if v >= now {
                c.inc_by(v - now);
                OK
            } else {
                code(Status::BadArgument)
            }
        }
        None => code(Status::NotFound),
    })
}

fn proxy_get_metric(mut caller: C<'_>, id: i32, ptr: i32) -> R {
    let value = match caller.data().shared.metrics.guest_metric(id as u32) {
        Some(GuestMetric::Counter(c)) => c.get(),
        Some(GuestMetric::Gauge(g)) => g.get() as u64,
        Some(GuestMetric::Histogram(_)) => return Ok(code(Status::BadArgument)),
        None => return Ok(code(Status::NotFound)),
    };
    Ok(if write_u64(&mut caller, ptr, value) {
        OK
    } else {
        code(Status::InvalidMemoryAccess)
    })
}

// ---- WASI preview1 ----

fn fd_write(mut caller: C<'_>, fd: i32, iovs: i32, iovs_len: i32, written_ptr: i32) -> R {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return Ok(errno::BADF),
    };
    let Some(vec) = read(&caller, iovs, iovs_len.saturating_mul(8)) else {
        return Ok(errno::FAULT);
    };
    let mut message = Vec::new();
    for iov in vec.chunks_exact(8) {
        let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let Some(bytes) = read(&caller, ptr, len) else {
            return Ok(errno::FAULT);
        };
        message.extend_from_slice(&bytes);
    }
    if !write_u32(&mut caller, written_ptr, message.len() as u32) {
        return Ok(errno::FAULT);
    }
    let text = String::from_utf8_lossy(&message);
    let text = text.trim_end_matches('\n');
    if !text.is_empty() {
        log_message(level, &caller.data().shared.name, text);
    }
    Ok(errno::SUCCESS)
}

fn fd_fdstat_get(mut caller: C<'_>, fd: i32, ptr: i32) -> R {
    if !(0..=2).contains(&fd) {
        return Ok(errno::BADF);
    }
    // filetype CHARACTER_DEVICE (2), no flags, all rights.
    let mut stat = [0u8; 24];
    stat[0] = 2;
    stat[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    Ok(if write(&mut caller, ptr, &stat) {
        errno::SUCCESS
    } else {
        errno::FAULT
    })
}

fn zero_sizes(mut caller: C<'_>, count_ptr: i32, size_ptr: i32) -> R {
    Ok(
        if write_u32(&mut caller, count_ptr, 0) && write_u32(&mut caller, size_ptr, 0) {
            errno::SUCCESS
        } else {
            errno::FAULT
        },
    )
}

fn nothing_to_list(_caller: C<'_>, _a: i32, _b: i32) -> R {
    Ok(errno::SUCCESS)
}

fn clock_time_get(mut caller: C<'_>, clock: i32, _precision: i64, ptr: i32) -> R {
    let t = match clock {
        0 => now_nanos(),
        1 => started().elapsed().as_nanos() as u64,
        _ => return Ok(errno::NOTSUP),
    };
    Ok(if write_u64(&mut caller, ptr, t) {
        errno::SUCCESS
    } else {
        errno::FAULT
    })
}

fn random_get(mut caller: C<'_>, ptr: i32, len: i32) -> R {
    use ring::rand::SecureRandom;
    if len as u32 > 1 << 16 {
        return Ok(errno::INVAL);
    }
    let mut bytes = vec![0u8; len as u32 as usize];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return Ok(errno::INVAL);
    }
    Ok(if write(&mut caller, ptr, &bytes) {
        errno::SUCCESS
    } else {
        errno::FAULT
    })
}

fn unimplemented() -> R {
    Ok(code(Status::Unimplemented))
}

fn proc_exit(_caller: C<'_>, code: i32) -> wasmtime::Result<()> {
    Err(wasmtime::Error::new(ProcExit(code)))
}

/// Builds the linker every module is instantiated with.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut l: Linker<HostState> = Linker::new(engine);
    let env = "env";
    l.func_wrap(env, "proxy_log", proxy_log)?;
    l.func_wrap(env, "proxy_get_log_level", proxy_get_log_level)?;
    l.func_wrap(
        env,
        "proxy_get_current_time_nanoseconds",
        proxy_get_current_time_nanoseconds,
    )?;
    l.func_wrap(
        env,
        "proxy_set_tick_period_milliseconds",
        proxy_set_tick_period_milliseconds,
    )?;
    l.func_wrap(env, "proxy_get_configuration", proxy_get_configuration)?;
    l.func_wrap(env, "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    l.func_wrap(env, "proxy_get_buffer_status", proxy_get_buffer_status)?;
    l.func_wrap(env, "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    l.func_wrap(
        env,
        "proxy_get_header_map_pairs",
        proxy_get_header_map_pairs,
    )?;
    l.func_wrap(
        env,
        "proxy_set_header_map_pairs",
        proxy_set_header_map_pairs,
    )?;
    l.func_wrap(env, "proxy_get_header_map_size", proxy_get_header_map_size)?;
    l.func_wrap(
        env,
        "proxy_get_header_map_value",
        proxy_get_header_map_value,
    )?;
    l.func_wrap(
        env,
        "proxy_add_header_map_value",
        proxy_add_header_map_value,
    )?;
    l.func_wrap(
        env,
        "proxy_replace_header_map_value",
        proxy_replace_header_map_value,
    )?;
    l.func_wrap(
        env,
        "proxy_remove_header_map_value",
        proxy_remove_header_map_value,
    )?;
    l.func_wrap(env, "proxy_get_property", proxy_get_property)?;
    l.func_wrap(env, "proxy_set_property", proxy_set_property)?;
    l.func_wrap(env, "proxy_send_local_response", proxy_send_local_response)?;
    l.func_wrap(env, "proxy_continue_stream", proxy_continue_stream)?;
    l.func_wrap(env, "proxy_close_stream", proxy_close_stream)?;
    l.func_wrap(env, "proxy_continue_request", proxy_continue_request)?;
    l.func_wrap(env, "proxy_continue_response", proxy_continue_request)?;
    l.func_wrap(env, "proxy_clear_route_cache", proxy_clear_route_cache)?;
    l.func_wrap(env, "proxy_done", proxy_done)?;
    l.func_wrap(
        env,
        "proxy_set_effective_context",
        proxy_set_effective_context,
    )?;
    l.func_wrap(env, "proxy_get_shared_data", proxy_get_shared_data)?;
    l.func_wrap(env, "proxy_set_shared_data", proxy_set_shared_data)?;
    l.func_wrap(env, "proxy_define_metric", proxy_define_metric)?;
    l.func_wrap(env, "proxy_increment_metric", proxy_increment_metric)?;
    l.func_wrap(env, "proxy_record_metric", proxy_record_metric)?;
    l.func_wrap(env, "proxy_get_metric", proxy_get_metric)?;
    l.func_wrap(
        env,
        "proxy_register_shared_queue",
        proxy_register_shared_queue,
    )?;
    l.func_wrap(
        env,
        "proxy_resolve_shared_queue",
        proxy_resolve_shared_queue,
    )?;
    l.func_wrap(
        env,
        "proxy_enqueue_shared_queue",
        proxy_enqueue_shared_queue,
    )?;
    l.func_wrap(
        env,
        "proxy_dequeue_shared_queue",
        proxy_dequeue_shared_queue,
    )?;
    // Linked so SDK-built modules instantiate; not supported yet.
    l.func_wrap(env, "proxy_http_call", proxy_http_call)?;
    l.func_wrap(env, "proxy_grpc_call", proxy_grpc_call)?;
    l.func_wrap(
        env,
        "proxy_grpc_stream",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            unimplemented()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_grpc_send",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32| unimplemented(),
    )?;
    l.func_wrap(env, "proxy_grpc_cancel", |_: C<'_>, _: i32| unimplemented())?;
    l.func_wrap(env, "proxy_grpc_close", |_: C<'_>, _: i32| unimplemented())?;
    l.func_wrap(env, "proxy_get_status", proxy_get_status)?;
    l.func_wrap(
        env,
        "proxy_call_foreign_function",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| unimplemented(),
    )?;

    for wasi in ["wasi_snapshot_preview1", "wasi_unstable"] {
        l.func_wrap(wasi, "fd_write", fd_write)?;
        l.func_wrap(
            wasi,
            "fd_read",
            |_: C<'_>, _: i32, _: i32, _: i32, _: i32| Ok(errno::BADF),
        )?;
        l.func_wrap(
            wasi,
            "fd_seek",
            |_: C<'_>, _: i32, _: i64, _: i32, _: i32| Ok(errno::BADF),
        )?;
        l.func_wrap(wasi, "fd_close", |_: C<'_>, _: i32| Ok(errno::BADF))?;
        l.func_wrap(wasi, "fd_fdstat_get", fd_fdstat_get)?;
        l.func_wrap(wasi, "fd_prestat_get", |_: C<'_>, _: i32, _: i32| {
            Ok(errno::BADF)
        })?;
        l.func_wrap(
            wasi,
            "fd_prestat_dir_name",
            |_: C<'_>, _: i32, _: i32, _: i32| Ok(errno::BADF),
        )?;
        l.func_wrap(
            wasi,
            "path_open",
            |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| {
                Ok(errno::NOTSUP)
            },
        )?;
        l.func_wrap(wasi, "environ_sizes_get", zero_sizes)?;
        l.func_wrap(wasi, "environ_get", nothing_to_list)?;
        l.func_wrap(wasi, "args_sizes_get", zero_sizes)?;
        l.func_wrap(wasi, "args_get", nothing_to_list)?;
        l.func_wrap(wasi, "clock_time_get", clock_time_get)?;
        l.func_wrap(wasi, "random_get", random_get)?;
        l.func_wrap(wasi, "proc_exit", proc_exit)?;
        l.func_wrap(wasi, "sched_yield", |_: C<'_>| Ok(errno::SUCCESS))?;
        l.func_wrap(
            wasi,
            "poll_oneoff",
            |_: C<'_>, _: i32, _: i32, _: i32, _: i32| Ok(errno::NOSYS),
        )?;
    }
    Ok(l)
}
