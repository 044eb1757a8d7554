//! One live instance of a filter: its store, its resolved callbacks, and
//! the life cycle the spec prescribes — `_initialize` (or `_start`), root
//! context create → `proxy_on_vm_start` → `proxy_on_configure`; per
//! request a stream context: create → callbacks → `proxy_on_done` →
//! `proxy_on_log` → `proxy_on_delete`.
//!
//! Every call runs under an epoch deadline (the CPU bound) and the memory
//! cap; a call that fails leaves the instance `poisoned`: it is dropped,
//! never reused.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Store, Trap, TypedFunc};

use super::abi::Action;
use super::callout::CallKind;
use super::host::{CallState, FilterShared, HostState, MemoryCapExceeded, ProcExit};
use super::module::Prepared;

/// The root (plugin) context's id.
pub const ROOT_CONTEXT: u32 = 1;

/// Why a filter failed; `reason()` labels the failure metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("callback exceeded its CPU bound of {0:?}")]
    Timeout(Duration),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("exceeded its memory cap: {0}")]
    Oom(String),
    #[error("called proc_exit({0})")]
    ProcExit(i32),
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    #[error("configuration refused: {0}")]
    Configure(String),
    #[error("buffered body exceeds {0} bytes")]
    BufferLimit(usize),
    #[error("broke the ABI: {0}")]
    Abi(String),
    #[error("could not be loaded: {0}")]
    Load(String),
    #[error("has {0} proxy_http_call calls in flight already (maxCalloutsInFlight)")]
    CalloutLimit(usize),
    #[error("left the request paused with no call in flight to resume it")]
    Stalled,
    #[error("enqueued onto a full shared queue ({0} items, maxQueueDepth)")]
    QueueFull(usize),
    #[error("defined more than {0} metrics (maxGuestMetrics)")]
    MetricLimit(usize),
    #[error("shared data refused: {0}")]
    SharedDataLimit(String),
}

impl Failure {
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::Trap(_) => "trap",
            Failure::Oom(_) => "oom",
            Failure::ProcExit(_) => "proc-exit",
            Failure::Instantiate(_) => "instantiate",
            Failure::Configure(_) => "configure",
            Failure::BufferLimit(_) => "buffer-limit",
            Failure::Abi(_) => "abi",
            Failure::Load(_) => "load",
            Failure::CalloutLimit(_) => "callout-limit",
            Failure::Stalled => "stalled",
            Failure::QueueFull(_) => "queue-full",
            Failure::MetricLimit(_) => "metric-limit",
            Failure::SharedDataLimit(_) => "shared-data-limit",
        }
    }
}

/// Where a failure happened: the callback (or start-up step) that failed.
/// Labels the failure metric as `phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Reading, compiling or linking the module (at load).
    Load,
    /// Instantiation (pool slots, memory, exports).
    Instantiate,
    /// `_initialize` / `main` / `_start`.
    Initialize,
    /// `proxy_on_context_create` for the root context.
    RootContextCreate,
    VmStart,
    Configure,
    /// `proxy_on_context_create` for a request's stream context.
    ContextCreate,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    Done,
    Log,
    Delete,
    /// `proxy_on_tick` on the root context.
    Tick,
    /// `proxy_http_call` (a call refused by a bound).
    HttpCall,
    /// `proxy_on_http_call_response` on the root context.
    HttpCallResponse,
    /// `proxy_on_grpc_receive*` / `proxy_on_grpc_close` on the root
    /// context.
    GrpcCallResponse,
    /// `proxy_enqueue_shared_queue` (an item refused by a bound).
    SharedQueue,
    /// `proxy_on_queue_ready` on the root context.
    QueueReady,
    /// A host call refused by a per-filter cap (metrics, shared data).
    Limit,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::Instantiate => "instantiate",
            Phase::Initialize => "initialize",
            Phase::RootContextCreate => "root_context_create",
            Phase::VmStart => "vm_start",
            Phase::Configure => "configure",
            Phase::ContextCreate => "context_create",
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBody => "request_body",
            Phase::RequestTrailers => "request_trailers",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
            Phase::ResponseTrailers => "response_trailers",
            Phase::Done => "done",
            Phase::Log => "log",
            Phase::Delete => "delete",
            Phase::Tick => "tick",
            Phase::HttpCall => "http_call",
            Phase::HttpCallResponse => "http_call_response",
            Phase::GrpcCallResponse => "grpc_call_response",
            Phase::SharedQueue => "shared_queue",
            Phase::QueueReady => "queue_ready",
            Phase::Limit => "limit",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure and where it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{failure} (in {phase})")]
pub struct Failed {
    pub phase: Phase,
    pub failure: Failure,
}

impl Failed {
    pub fn new(phase: Phase, failure: Failure) -> Failed {
        Failed { phase, failure }
    }
}

type F2 = TypedFunc<(i32, i32), i32>;
type F3 = TypedFunc<(i32, i32, i32), i32>;
type F5 = TypedFunc<(i32, i32, i32, i32, i32), ()>;
type G3 = TypedFunc<(i32, i32, i32), ()>;

#[derive(Default)]
struct Callbacks {
    on_context_create: Option<TypedFunc<(i32, i32), ()>>,
    on_vm_start: Option<F2>,
    on_configure: Option<F2>,
    on_request_headers: Option<F3>,
    on_request_body: Option<F3>,
    on_request_trailers: Option<F2>,
    on_response_headers: Option<F3>,
    on_response_body: Option<F3>,
    on_response_trailers: Option<F2>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_delete: Option<TypedFunc<i32, ()>>,
    on_tick: Option<TypedFunc<i32, ()>>,
    on_http_call_response: Option<F5>,
    on_grpc_receive_initial_metadata: Option<G3>,
    on_grpc_receive: Option<G3>,
    on_grpc_receive_trailing_metadata: Option<G3>,
    on_grpc_close: Option<G3>,
    on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
}

/// The stream callbacks the chain drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Callback {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

impl Callback {
    pub fn phase(self) -> Phase {
        match self {
            Callback::RequestHeaders => Phase::RequestHeaders,
            Callback::RequestBody => Phase::RequestBody,
            Callback::RequestTrailers => Phase::RequestTrailers,
            Callback::ResponseHeaders => Phase::ResponseHeaders,
            Callback::ResponseBody => Phase::ResponseBody,
            Callback::ResponseTrailers => Phase::ResponseTrailers,
        }
    }
}

pub struct FilterInstance {
    store: Store<HostState>,
    callbacks: Callbacks,
    next_context: u32,
    deadline_ticks: u64,
    timeout: Duration,
    pub poisoned: bool,
}

impl FilterInstance {
    /// Instantiates and starts a filter: WASI initialization, the root
    /// context, `proxy_on_vm_start`, `proxy_on_configure`.
    pub fn new(
        prepared: &Prepared,
        shared: Arc<FilterShared>,
        max_memory: usize,
        timeout: Duration,
        tick: Duration,
    ) -> Result<FilterInstance, Failed> {
        let at = |phase: Phase| move |failure: Failure| Failed::new(phase, failure);
        let engine = prepared.pre.module().engine();
        let mut store = Store::new(engine, HostState::new(shared.clone(), max_memory));
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        // Ticks until the deadline: the bound rounded up, plus the tick in
        // progress.
        let deadline_ticks = (timeout.as_nanos() / tick.as_nanos().max(1)) as u64 + 1;
        store.set_epoch_deadline(deadline_ticks);
        let instance = prepared
            .pre
            .instantiate(&mut store)
            .map_err(|e| Failure::Instantiate(format!("{e}")))
            .map_err(at(Phase::Instantiate))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| Failure::Abi("no exported memory".into()))
            .map_err(at(Phase::Instantiate))?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .map_err(|_| Failure::Abi("exports neither proxy_on_memory_allocate nor malloc".into()))
            .map_err(at(Phase::Instantiate))?;
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = Some(alloc);

        macro_rules! get {
            ($name:literal) => {
                match instance.get_func(&mut store, $name) {
                    None => None,
                    Some(f) => Some(
                        f.typed(&store)
                            .map_err(|e| {
                                Failure::Abi(format!("export {} has the wrong type: {e}", $name))
                            })
                            .map_err(at(Phase::Instantiate))?,
                    ),
                }
            };
        }
        let callbacks = Callbacks {
            on_context_create: get!("proxy_on_context_create"),
            on_vm_start: get!("proxy_on_vm_start"),
            on_configure: get!("proxy_on_configure"),
            on_request_headers: get!("proxy_on_request_headers"),
            on_request_body: get!("proxy_on_request_body"),
            on_request_trailers: get!("proxy_on_request_trailers"),
            on_response_headers: get!("proxy_on_response_headers"),
            on_response_body: get!("proxy_on_response_body"),
            on_response_trailers: get!("proxy_on_response_trailers"),
            on_done: get!("proxy_on_done"),
            on_log: get!("proxy_on_log"),
            on_delete: get!("proxy_on_delete"),
            on_tick: get!("proxy_on_tick"),
            on_http_call_response: get!("proxy_on_http_call_response"),
            on_grpc_receive_initial_metadata: get!("proxy_on_grpc_receive_initial_metadata"),
            on_grpc_receive: get!("proxy_on_grpc_receive"),
            on_grpc_receive_trailing_metadata: get!("proxy_on_grpc_receive_trailing_metadata"),
            on_grpc_close: get!("proxy_on_grpc_close"),
            on_queue_ready: get!("proxy_on_queue_ready"),
        };
        let initialize: Option<TypedFunc<(), ()>> = get!("_initialize");
        let main: Option<F2> = get!("main");
        let start: Option<TypedFunc<(), ()>> = get!("_start");
        let mut this = FilterInstance {
            store,
            callbacks,
            next_context: ROOT_CONTEXT + 1,
            deadline_ticks,
            timeout,
            poisoned: false,
        };
        if let Some(init) = initialize {
            this.guard(|s| init.call(s, ()))
                .map_err(at(Phase::Initialize))?;
            if let Some(main) = main {
                this.guard(|s| main.call(s, (0, 0)))
                    .map_err(at(Phase::Initialize))?;
            }
        } else if let Some(start) = start {
            // A command module's _start may end with proc_exit(0).
            match this.guard(|s| start.call(s, ())) {
                Ok(()) | Err(Failure::ProcExit(0)) => this.poisoned = false,
                Err(e) => return Err(Failed::new(Phase::Initialize, e)),
            }
        }
        if let Some(f) = this.callbacks.on_context_create.clone() {
            this.guard(|s| f.call(s, (ROOT_CONTEXT as i32, 0)))
                .map_err(at(Phase::RootContextCreate))?;
        }
        // proxy_on_vm_start with the VM's configuration, then
        // proxy_on_configure with the plugin's: either may refuse (false).
        let starts = [
            (
                this.callbacks.on_vm_start.clone(),
                shared.vm_config.len(),
                Phase::VmStart,
                "proxy_on_vm_start",
            ),
            (
                this.callbacks.on_configure.clone(),
                shared.plugin_config.len(),
                Phase::Configure,
                "proxy_on_configure",
            ),
        ];
        for (callback, len, phase, name) in starts {
            let Some(f) = callback else { continue };
            let accepted = this
                .guard(|s| f.call(s, (ROOT_CONTEXT as i32, len as i32)))
                .map_err(at(phase))?;
            if accepted == 0 {
                return Err(Failed::new(
                    phase,
                    Failure::Configure(format!("{name} returned false")),
                ));
            }
        }
        Ok(this)
    }

    /// Runs `f` under the CPU bound; classifies a failure and poisons the
    /// instance.
    fn guard<R>(
        &mut self,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        if self.poisoned {
            return Err(Failure::Abi("instance already failed".into()));
        }
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.store.data_mut().limiter.hit = false;
        match f(&mut self.store) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.poisoned = true;
                Err(self.classify(e))
            }
        }
    }

    fn classify(&self, e: wasmtime::Error) -> Failure {
        if let Some(exit) = e.downcast_ref::<ProcExit>() {
            return Failure::ProcExit(exit.0);
        }
        if let Some(cap) = e.downcast_ref::<MemoryCapExceeded>() {
            return Failure::Oom(cap.to_string());
        }
        if self.store.data().limiter.hit {
            return Failure::Oom(format!("{e}"));
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Failure::Timeout(self.timeout),
            Some(trap) => Failure::Trap(trap.to_string()),
            None => Failure::Trap(format!("{e}")),
        }
    }

    /// The per-call state (header maps, bodies, local response).
    pub fn state(&mut self) -> &mut CallState {
        &mut self.store.data_mut().call
    }

    /// Creates a stream context.
    pub fn create_context(&mut self) -> Result<u32, Failed> {
        let id = self.next_context;
        self.next_context = self.next_context.checked_add(1).unwrap_or(ROOT_CONTEXT + 1);
        self.state().context_id = id;
        if let Some(f) = self.callbacks.on_context_create.clone() {
            self.guard(|s| f.call(s, (id as i32, ROOT_CONTEXT as i32)))
                .map_err(|e| Failed::new(Phase::ContextCreate, e))?;
        }
        Ok(id)
    }

    /// Whether the module exports `callback`.
    pub fn has(&self, callback: Callback) -> bool {
        match callback {
            Callback::RequestHeaders => self.callbacks.on_request_headers.is_some(),
            Callback::RequestBody => self.callbacks.on_request_body.is_some(),
            Callback::RequestTrailers => self.callbacks.on_request_trailers.is_some(),
            Callback::ResponseHeaders => self.callbacks.on_response_headers.is_some(),
            Callback::ResponseBody => self.callbacks.on_response_body.is_some(),
            Callback::ResponseTrailers => self.callbacks.on_response_trailers.is_some(),
        }
    }

    /// Calls a stream callback: `a` is the header count or body size, `eos`
    /// the end-of-stream flag (ignored for trailers). Absent callbacks
    /// continue.
    pub fn call(
        &mut self,
        callback: Callback,
        context: u32,
        a: usize,
        eos: bool,
    ) -> Result<Action, Failure> {
        let ctx = context as i32;
        let a = i32::try_from(a).unwrap_or(i32::MAX);
        let eos = i32::from(eos);
        self.state().context_id = context;
        let three = |f: &Option<F3>| f.clone();
        let raw = match callback {
            Callback::RequestHeaders
            | Callback::RequestBody
            | Callback::ResponseHeaders
            | Callback::ResponseBody => {
                let f = match callback {
                    Callback::RequestHeaders => three(&self.callbacks.on_request_headers),
                    Callback::RequestBody => three(&self.callbacks.on_request_body),
                    Callback::ResponseHeaders => three(&self.callbacks.on_response_headers),
                    _ => three(&self.callbacks.on_response_body),
                };
                match f {
                    Some(f) => self.guard(|s| f.call(s, (ctx, a, eos)))?,
                    None => return Ok(Action::Continue),
                }
            }
            Callback::RequestTrailers | Callback::ResponseTrailers => {
                let f = if callback == Callback::RequestTrailers {
                    self.callbacks.on_request_trailers.clone()
                } else {
                    self.callbacks.on_response_trailers.clone()
                };
                match f {
                    Some(f) => self.guard(|s| f.call(s, (ctx, a)))?,
                    None => return Ok(Action::Continue),
                }
            }
        };
        Ok(Action::from_raw(raw))
    }

    /// The tick period the root context asks for, if any (and if the
    /// module exports `proxy_on_tick`).
    pub fn tick_period(&self) -> Option<Duration> {
        let ms = self.store.data().tick_period_ms;
        (ms > 0 && self.callbacks.on_tick.is_some()).then(|| Duration::from_millis(ms.into()))
    }

    /// `proxy_on_tick` on the root context.
    pub fn tick(&mut self) -> Result<(), Failed> {
        self.state().context_id = ROOT_CONTEXT;
        let Some(f) = self.callbacks.on_tick.clone() else {
            return Ok(());
        };
        self.guard(|s| f.call(s, ROOT_CONTEXT as i32))
            .map_err(|e| Failed::new(Phase::Tick, e))
    }

    /// A call's answer to the root context, which is in the call state
    /// (`call_response`): for HTTP, `proxy_on_http_call_response` with the
    /// counts of its headers and trailers and its body's size (all 0 for a
    /// failed call); for gRPC, as Envoy delivers a unary call:
    /// `proxy_on_grpc_receive_initial_metadata` (when there is metadata),
    /// `proxy_on_grpc_receive` (when the status is OK),
    /// `proxy_on_grpc_receive_trailing_metadata` (when there is some) and
    /// `proxy_on_grpc_close` with the status.
    pub fn call_response(&mut self, token: u32, kind: CallKind) -> Result<(), Failure> {
        self.state().context_id = ROOT_CONTEXT;
        let (headers, body, trailers, status) = match &self.state().call_response {
            Some(r) => (
                r.headers.len(),
                r.body.len(),
                r.trailers.len(),
                r.grpc_status.as_ref().map(|s| s.code),
            ),
            None => (0, 0, 0, None),
        };
        let n = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
        let (root, token) = (ROOT_CONTEXT as i32, token as i32);
        if kind == CallKind::Http {
            let Some(f) = self.callbacks.on_http_call_response.clone() else {
                return Ok(());
            };
            return self.guard(|s| f.call(s, (root, token, n(headers), n(body), n(trailers))));
        }
        let status = status.unwrap_or(crate::filters::callout::GRPC_UNAVAILABLE);
        let steps = [
            (
                self.callbacks.on_grpc_receive_initial_metadata.clone(),
                headers > 0,
                n(headers),
            ),
            (self.callbacks.on_grpc_receive.clone(), status == 0, n(body)),
            (
                self.callbacks.on_grpc_receive_trailing_metadata.clone(),
                trailers > 0,
                n(trailers),
            ),
            (self.callbacks.on_grpc_close.clone(), true, status as i32),
        ];
        for (f, due, arg) in steps {
            if let (Some(f), true) = (f, due) {
                self.guard(|s| f.call(s, (root, token, arg)))?;
            }
        }
        Ok(())
    }

    /// `proxy_on_queue_ready` on the root context.
    pub fn queue_ready(&mut self, queue: u32) -> Result<(), Failed> {
        self.state().context_id = ROOT_CONTEXT;
        let Some(f) = self.callbacks.on_queue_ready.clone() else {
            return Ok(());
        };
        self.guard(|s| f.call(s, (ROOT_CONTEXT as i32, queue as i32)))
            .map_err(|e| Failed::new(Phase::QueueReady, e))
    }

    /// Ends a stream context: `proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete`.
    pub fn finish_context(&mut self, context: u32) -> Result<(), Failed> {
        let ctx = context as i32;
        self.state().context_id = context;
        if let Some(f) = self.callbacks.on_done.clone() {
            self.guard(|s| f.call(s, ctx))
                .map_err(|e| Failed::new(Phase::Done, e))?;
        }
        if let Some(f) = self.callbacks.on_log.clone() {
            self.guard(|s| f.call(s, ctx))
                .map_err(|e| Failed::new(Phase::Log, e))?;
        }
        if let Some(f) = self.callbacks.on_delete.clone() {
            self.guard(|s| f.call(s, ctx))
                .map_err(|e| Failed::new(Phase::Delete, e))?;
        }
        Ok(())
    }
}
