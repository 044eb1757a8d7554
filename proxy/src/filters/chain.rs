//! Filter chains: a [`Filter`] (a prepared module with its configuration,
//! failure mode and a pool of live instances), a [`Chain`] per route, and
//! [`Run`]: one request going through a chain.
//!
//! Request callbacks run in chain order, response callbacks in reverse.
//! A filter that fails (trap, CPU bound, memory cap, instantiation) fails
//! the request with 503 (`failure: closed`; gRPC: UNAVAILABLE) or is
//! skipped for the rest of the request (`open`); its instance is dropped
//! and the pool instantiates a fresh one next time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, header};

use super::abi::Action;
use super::callout::{Answer, Callout, Clusters};
use super::config::{FailureMode, RunLimits};
use super::host::{FilterShared, Headers, LocalResponse};
use super::instance::{Callback, Failed, Failure, FilterInstance, Phase};
use super::metrics::{FilterLabels, FilterMetrics};
use super::module::{Caps, Prepared};
use super::properties::RequestProps;
use crate::body::{self, ProxyBody};

/// The header naming why the proxy answered itself.
pub const REASON_HEADER: &str = "x-tollgate-reason";

/// One configured filter and its instance pool.
pub struct Filter {
    pub name: String,
    pub failure: FailureMode,
    pub prepared: Prepared,
    pub shared: Arc<FilterShared>,
    pool: Mutex<Vec<FilterInstance>>,
    max_idle: usize,
    max_memory: usize,
    timeout: Duration,
    tick: Duration,
    metrics: FilterMetrics,
    /// The instance whose root context gets `proxy_on_tick`, when the
    /// filter asked for ticks (never serves requests).
    ticker: Mutex<Option<FilterInstance>>,
}

impl Filter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        failure: FailureMode,
        prepared: Prepared,
        shared: Arc<FilterShared>,
        max_memory: usize,
        timeout: Duration,
        tick: Duration,
        max_idle: usize,
    ) -> Filter {
        let metrics = shared.metrics.clone();
        Filter {
            name,
            failure,
            prepared,
            shared,
            pool: Mutex::new(Vec::new()),
            max_idle,
            max_memory,
            timeout,
            tick,
            metrics,
            ticker: Mutex::new(None),
        }
    }

    /// Takes `instance` (just started) as the ticking root context when it
    /// asked for ticks, and ticks it on a thread of its own every period
    /// (at least `min`) until the filter is dropped or the period set to
    /// 0. A failed tick is counted (phase `tick`) and its instance
    /// replaced by a fresh one at the next period. `Some(instance)`: no
    /// ticks asked; the instance is the caller's again.
    pub fn start_ticks(
        self: &Arc<Self>,
        instance: FilterInstance,
        min: Duration,
    ) -> Option<FilterInstance> {
        let Some(asked) = instance.tick_period() else {
            return Some(instance);
        };
        if let Ok(mut ticker) = self.ticker.lock() {
            *ticker = Some(instance);
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name(format!("tollgate-filter-tick-{}", self.name))
            .spawn(move || {
                let mut period = asked.max(min);
                loop {
                    std::thread::sleep(period);
                    let Some(filter) = weak.upgrade() else { return };
                    match filter.tick_once() {
                        Some(next) => period = next.max(min),
                        None => return,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(target: "filter", filter = %self.name, error = %e, "could not start the tick thread");
        }
        None
    }

    /// One tick; the next period (`None`: ticks turned off).
    fn tick_once(&self) -> Option<Duration> {
        let mut ticker = self.ticker.lock().ok()?;
        let mut instance = match ticker.take() {
            Some(i) => i,
            None => match self.checkout() {
                Ok(i) => i,
                Err(failed) => {
                    self.tick_failed(&failed);
                    return Some(self.tick);
                }
            },
        };
        let ticked = self.queues_ready(&mut instance).and_then(|()| {
            instance.state().callouts_allowed = self.shared.clusters.runtime.is_some();
            instance.tick()?;
            self.tick_calls(&mut instance)
        });
        match ticked {
            Ok(()) => {
                let next = instance.tick_period();
                if next.is_some() {
                    *ticker = Some(instance);
                }
                next
            }
            Err(failed) => {
                self.tick_failed(&failed);
                Some(self.tick)
            }
        }
    }

    /// `proxy_on_queue_ready` for each of the filter's queues that
    /// received items since the last tick (and the calls it makes).
    fn queues_ready(&self, instance: &mut FilterInstance) -> Result<(), Failed> {
        for queue in self.shared.queues.take_ready(&self.name) {
            instance.state().callouts_allowed = self.shared.clusters.runtime.is_some();
            instance.queue_ready(queue)?;
            self.tick_calls(instance)?;
        }
        Ok(())
    }

    /// The calls a tick made: sent on the proxy's runtime (this thread
    /// waits), each answer delivered to the root context, which may call
    /// again (at most 16 rounds a tick).
    fn tick_calls(&self, instance: &mut FilterInstance) -> Result<(), Failed> {
        let mut calls = std::mem::take(&mut instance.state().callouts);
        let Some(runtime) = self.shared.clusters.runtime.clone() else {
            return Ok(());
        };
        for _ in 0..16 {
            if calls.is_empty() {
                break;
            }
            let answers = runtime.block_on(futures_util::future::join_all(
                calls.drain(..).map(Callout::send),
            ));
            for answer in answers {
                self.metrics
                    .callout(&self.name, &answer.cluster, answer.outcome_label());
                let (token, kind) = (answer.token, answer.kind);
                let state = instance.state();
                state.call_response = answer.response();
                state.callouts_allowed = true;
                let delivered = instance.call_response(token, kind);
                let state = std::mem::take(instance.state());
                delivered.map_err(|f| Failed::new(kind.phase(), f))?;
                calls.extend(state.callouts);
            }
        }
        for call in &calls {
            self.metrics
                .callout(&self.name, &call.cluster.name, "cancelled");
        }
        Ok(())
    }

    fn tick_failed(&self, failed: &Failed) {
        self.metrics.failure(&self.name, failed);
        tracing::warn!(
            target: "filter",
            filter = %self.name,
            reason = failed.failure.reason(),
            phase = %failed.phase,
            error = %failed.failure,
            "filter failed"
        );
    }

    /// A live instance: an idle one, or a new one.
    pub fn checkout(&self) -> Result<FilterInstance, Failed> {
        if let Ok(mut pool) = self.pool.lock()
            && let Some(instance) = pool.pop()
        {
            return Ok(instance);
        }
        self.metrics
            .instances
            .get_or_create(&FilterLabels {
                filter: self.name.clone(),
            })
            .inc();
        FilterInstance::new(
            &self.prepared,
            self.shared.clone(),
            self.max_memory,
            self.timeout,
            self.tick,
        )
    }

    /// Returns a healthy instance to the pool (a failed one is dropped).
    pub fn checkin(&self, instance: FilterInstance) {
        if instance.poisoned {
            return;
        }
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < self.max_idle
        {
            pool.push(instance);
        }
    }

    pub fn idle(&self) -> usize {
        self.pool.lock().map(|p| p.len()).unwrap_or(0)
    }
}

/// The filters of one route.
pub struct Chain {
    pub filters: Vec<Arc<Filter>>,
    pub caps: Caps,
    /// Set when the chain could not be loaded (and nothing was loaded
    /// before): closed filters fail their requests with 503.
    pub unavailable: Option<Unavailable>,
}

/// Why a chain has no filters: the first load failed. Each request it
/// refuses (or passes, when every filter is open) counts the failure again
/// under the filter's name.
#[derive(Debug, Clone)]
pub struct Unavailable {
    /// The configured name of the filter that failed (or, for a chain
    /// whose own filters loaded but whose load was abandoned because
    /// another chain's filter failed, its first closed filter).
    pub filter: String,
    pub failed: Failed,
    pub mode: FailureMode,
}

impl Chain {
    pub fn new(filters: Vec<Arc<Filter>>) -> Chain {
        let caps = filters
            .iter()
            .fold(Caps::default(), |c, f| c.union(f.prepared.caps));
        Chain {
            filters,
            caps,
            unavailable: None,
        }
    }
}

/// Every chain, by name, as loaded at one time.
pub struct ChainSet {
    pub chains: std::collections::BTreeMap<String, Arc<Chain>>,
    pub limits: RunLimits,
    pub metrics: FilterMetrics,
    pub generation: u64,
    /// What the filters may call, and the configuration it was built from
    /// (a reload with the same keeps it, and its connection pools).
    pub clusters: Arc<Clusters>,
    pub clusters_config: ClustersConfig,
}

/// The `clusters` and `maxCalloutsInFlight` a [`Clusters`] was built from.
pub type ClustersConfig = (
    std::collections::BTreeMap<String, super::callout::ClusterConfig>,
    Option<usize>,
);

impl ChainSet {
    pub fn empty(metrics: FilterMetrics) -> ChainSet {
        ChainSet {
            chains: Default::default(),
            limits: RunLimits::default(),
            metrics,
            generation: 0,
            clusters: Arc::default(),
            clusters_config: Default::default(),
        }
    }

    /// The chain named `name` (a route's `filters`).
    pub fn chain(&self, name: &str) -> Option<&Arc<Chain>> {
        self.chains.get(name)
    }
}

/// Request or response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Request,
    Response,
}

struct Slot {
    filter: Arc<Filter>,
    instance: Option<FilterInstance>,
    context: u32,
    spent: Duration,
    paused: [Option<Vec<u8>>; 2],
}

/// What a header phase decided.
pub enum Verdict {
    Continue,
    /// Answer with this instead (local response or failure).
    Respond(Response<ProxyBody>),
    /// A filter paused the request on `proxy_http_call` calls: send these
    /// (the list may be empty: keep waiting on those sent before), and
    /// hand each answer to [`Run::answer`] (none left: [`Run::stalled`]).
    Wait(Vec<Callout>),
}

/// The request head while a filter waits on its calls.
struct Held {
    slot: usize,
    headers: Headers,
    original: Vec<(String, String)>,
    eos: bool,
}

/// One request through a chain. Dropping it ends every context
/// (`proxy_on_done`, `proxy_on_log`, `proxy_on_delete`) and returns the
/// instances to their pools.
pub struct Run {
    slots: Vec<Slot>,
    props: Arc<RequestProps>,
    grpc: bool,
    limits: RunLimits,
    metrics: FilterMetrics,
    forwarded: Option<Arc<HeaderMap>>,
    /// The request's span: each filter's time becomes a child of it.
    pub trace: Option<crate::trace::RequestSpan>,
    /// Set while a filter waits on its calls.
    held: Option<Held>,
}

fn idx(dir: Dir) -> usize {
    match dir {
        Dir::Request => 0,
        Dir::Response => 1,
    }
}

impl Run {
    /// Checks out an instance per filter and creates its stream context.
    /// A filter that cannot start fails the request (closed) or is left
    /// out (open).
    pub fn start(
        chain: &Chain,
        set: &ChainSet,
        props: Arc<RequestProps>,
        grpc: bool,
    ) -> Result<Run, Box<Response<ProxyBody>>> {
        if let Some(u) = &chain.unavailable {
            set.metrics.failure(&u.filter, &u.failed);
            tracing::warn!(
                target: "filter",
                filter = %u.filter,
                reason = u.failed.failure.reason(),
                phase = %u.failed.phase,
                failure = u.mode.as_str(),
                error = %u.failed.failure,
                "filter failed (its chain is not loaded)"
            );
            if u.mode == FailureMode::Closed {
                return Err(Box::new(failure_response(
                    &u.filter,
                    &u.failed.failure,
                    grpc,
                )));
            }
        }
        let mut run = Run {
            slots: Vec::with_capacity(chain.filters.len()),
            props,
            grpc,
            limits: set.limits,
            metrics: set.metrics.clone(),
            forwarded: None,
            trace: None,
            held: None,
        };
        for filter in &chain.filters {
            let started = Instant::now();
            let attempt = filter.checkout().and_then(|mut instance| {
                let context = instance.create_context();
                match context {
                    Ok(c) => Ok((instance, c)),
                    Err(e) => Err(e),
                }
            });
            let mut slot = Slot {
                filter: filter.clone(),
                instance: None,
                context: 0,
                spent: started.elapsed(),
                paused: [None, None],
            };
            match attempt {
                Ok((instance, context)) => {
                    slot.instance = Some(instance);
                    slot.context = context;
                    run.slots.push(slot);
                }
                Err(failure) => {
                    run.slots.push(slot);
                    let i = run.slots.len() - 1;
                    if let Some(response) = run.fail(i, failure) {
                        return Err(Box::new(response));
                    }
                }
            }
        }
        Ok(run)
    }

    /// The first `failure: closed` filter of the run, if any: what a run
    /// whose state was lost (its lock poisoned by a panic) must fail for.
    pub fn first_closed(&self) -> Option<&str> {
        self.slots
            .iter()
            .find(|s| s.filter.failure == FailureMode::Closed)
            .map(|s| s.filter.name.as_str())
    }

    /// The answer for a run whose state was lost: 503 (gRPC 14) naming
    /// the first closed filter; `None` when every filter is open.
    pub fn lost(&self) -> Option<Response<ProxyBody>> {
        let name = self.first_closed()?;
        let failure = Failure::Abi("the filter run's state was lost to a panic".into());
        Some(failure_response(name, &failure, self.grpc))
    }

    /// Counts a failure, drops the instance; `Some(response)` for closed.
    fn fail(&mut self, i: usize, failed: Failed) -> Option<Response<ProxyBody>> {
        let slot = &mut self.slots[i];
        slot.instance = None; // a failed instance is never reused
        slot.paused = [None, None];
        let name = slot.filter.name.clone();
        let mode = slot.filter.failure;
        self.metrics.failure(&name, &failed);
        tracing::warn!(
            target: "filter",
            filter = %name,
            reason = failed.failure.reason(),
            phase = %failed.phase,
            failure = mode.as_str(),
            error = %failed.failure,
            "filter failed"
        );
        match mode {
            FailureMode::Closed => Some(failure_response(&name, &failed.failure, self.grpc)),
            FailureMode::Open => None,
        }
    }

    fn order(&self, dir: Dir) -> Vec<usize> {
        match dir {
            Dir::Request => (0..self.slots.len()).collect(),
            Dir::Response => (0..self.slots.len()).rev().collect(),
        }
    }

    /// The response a header callback's outcome asks for, if any: the
    /// failure's (fail closed), the filter's local response, or a close.
    fn answer_of(
        &mut self,
        i: usize,
        phase: Phase,
        result: Result<Action, Failure>,
        state: &mut super::host::CallState,
    ) -> Option<Response<ProxyBody>> {
        match result {
            Err(failure) => self.fail(i, Failed::new(phase, failure)),
            Ok(_) => {
                if let Some(local) = state.local_response.take() {
                    return Some(local_response(local, self.grpc));
                }
                state
                    .close_requested
                    .then(|| closed_response(&self.slots[i].filter.name, self.grpc))
            }
        }
    }

    /// Runs `call` on slot `i`'s instance with the state `prepare` sets
    /// up; gives the state back. Times it. `None`: the slot has no
    /// instance (it failed earlier).
    fn invoke_with(
        &mut self,
        i: usize,
        prepare: impl FnOnce(&mut super::host::CallState),
        call: impl FnOnce(&mut FilterInstance, u32) -> Result<Action, Failure>,
    ) -> Option<(Result<Action, Failure>, super::host::CallState)> {
        let props = self.props.clone();
        let forwarded = self.forwarded.clone();
        let slot = &mut self.slots[i];
        let context = slot.context;
        let instance = slot.instance.as_mut()?;
        let started = Instant::now();
        let state = instance.state();
        state.props = Some(props);
        state.forwarded_request_headers = forwarded;
        state.local_response = None;
        state.continue_requested = false;
        state.close_requested = false;
        prepare(state);
        let result = call(instance, context);
        let state = std::mem::take(instance.state());
        slot.spent += started.elapsed();
        Some((result, state))
    }

    /// A stream callback on slot `i` (`None`: the module does not export
    /// it, or the slot has no instance).
    fn invoke(
        &mut self,
        i: usize,
        callback: Callback,
        a: usize,
        eos: bool,
        prepare: impl FnOnce(&mut super::host::CallState),
    ) -> Option<(Result<Action, Failure>, super::host::CallState)> {
        if !self.slots[i].instance.as_ref()?.has(callback) {
            return None;
        }
        self.invoke_with(i, prepare, |instance, context| {
            instance.call(callback, context, a, eos)
        })
    }

    /// Request headers, in chain order. `parts` is updated in place
    /// (headers, and `:path` / `:method` when a filter changed them) once
    /// the chain is through; on [`Verdict::Wait`] the head stays in the
    /// run until [`Run::answer`] resumes it.
    pub fn request_headers(&mut self, parts: &mut http::request::Parts, eos: bool) -> Verdict {
        let headers = Headers {
            pseudo: request_pseudo(parts),
            map: std::mem::take(&mut parts.headers),
        };
        let original = headers.pseudo.clone();
        self.request_headers_from(0, headers, original, eos, parts)
    }

    fn request_headers_from(
        &mut self,
        start: usize,
        mut headers: Headers,
        original: Vec<(String, String)>,
        eos: bool,
        parts: &mut http::request::Parts,
    ) -> Verdict {
        let mut verdict = Verdict::Continue;
        for i in start..self.slots.len() {
            let n = headers.len();
            let mut moved = Some(std::mem::take(&mut headers));
            let Some((result, mut state)) = self.invoke(i, Callback::RequestHeaders, n, eos, |s| {
                s.request_headers = moved.take();
                s.callouts_allowed = true;
            }) else {
                if let Some(h) = moved {
                    headers = h;
                }
                continue;
            };
            headers = state.request_headers.take().unwrap_or_default();
            let paused = matches!(result, Ok(Action::Pause));
            if let Some(response) = self.answer_of(i, Phase::RequestHeaders, result, &mut state) {
                verdict = Verdict::Respond(response);
                break;
            }
            if let Some(calls) = self.waits(i, paused, &mut state) {
                self.held = Some(Held {
                    slot: i,
                    headers,
                    original,
                    eos,
                });
                return Verdict::Wait(calls);
            }
        }
        apply_request_pseudo(parts, &original, &headers.pseudo);
        parts.headers = headers.map;
        verdict
    }

    /// The calls slot `i` waits on: it paused, did not continue, and made
    /// calls. Calls made by a filter that goes on without waiting are not
    /// sent (counted `cancelled`).
    fn waits(
        &mut self,
        i: usize,
        paused: bool,
        state: &mut super::host::CallState,
    ) -> Option<Vec<Callout>> {
        let calls = std::mem::take(&mut state.callouts);
        if paused && !state.continue_requested && !calls.is_empty() {
            return Some(calls);
        }
        for call in &calls {
            self.metrics
                .callout(&self.slots[i].filter.name, &call.cluster.name, "cancelled");
        }
        None
    }

    /// Hands a call's answer (or failure) to the waiting filter's root
    /// context (`proxy_on_http_call_response`). It may answer the request
    /// itself, continue it (the chain goes on with the next filter), make
    /// more calls, or keep waiting on others.
    pub fn answer(&mut self, answer: Answer, parts: &mut http::request::Parts) -> Verdict {
        let Some(held) = self.held.take() else {
            return Verdict::Continue;
        };
        let i = held.slot;
        let name = self.slots[i].filter.name.clone();
        if let Err(e) = &answer.outcome {
            tracing::debug!(target: "filter", filter = %name, cluster = %answer.cluster, kind = ?answer.kind, error = %e, "call failed");
        }
        self.metrics
            .callout(&name, &answer.cluster, answer.outcome_label());
        let context = self.slots[i].context;
        let (token, kind) = (answer.token, answer.kind);
        let mut moved = Some((held.headers, answer.response()));
        let delivered = self.invoke_with(
            i,
            |s| {
                if let Some((headers, response)) = moved.take() {
                    s.request_headers = Some(headers);
                    s.call_response = response;
                }
                s.callouts_allowed = true;
                s.stream_context = context;
            },
            |instance, _| instance.call_response(token, kind).map(|()| Action::Pause),
        );
        let Some((result, mut state)) = delivered else {
            let headers = moved.map(|(h, _)| h).unwrap_or_default();
            return self.request_headers_from(i + 1, headers, held.original, held.eos, parts);
        };
        let headers = state.request_headers.take().unwrap_or_default();
        let failed = result.is_err();
        if let Some(response) = self.answer_of(i, kind.phase(), result, &mut state) {
            return Verdict::Respond(response);
        }
        if failed || state.continue_requested {
            // An open filter that failed is skipped; a continued one is done.
            let _ = self.waits(i, false, &mut state);
            return self.request_headers_from(i + 1, headers, held.original, held.eos, parts);
        }
        let calls = std::mem::take(&mut state.callouts);
        self.held = Some(Held { headers, ..held });
        Verdict::Wait(calls)
    }

    /// No call is left and the waiting filter has not resumed the request:
    /// it fails (`stalled`), closed or open as configured.
    pub fn stalled(&mut self, parts: &mut http::request::Parts) -> Verdict {
        let Some(held) = self.held.take() else {
            return Verdict::Continue;
        };
        let i = held.slot;
        if let Some(response) = self.fail(i, Failed::new(Phase::HttpCallResponse, Failure::Stalled))
        {
            return Verdict::Respond(response);
        }
        self.request_headers_from(i + 1, held.headers, held.original, held.eos, parts)
    }

    /// Keeps the forwarded request headers for response-phase property
    /// lookups (only when a response callback may ask).
    pub fn remember_request_headers(&mut self, headers: &HeaderMap) {
        self.forwarded = Some(Arc::new(headers.clone()));
    }

    /// Response headers, in reverse chain order.
    pub fn response_headers(&mut self, parts: &mut http::response::Parts, eos: bool) -> Verdict {
        let mut headers = Headers {
            pseudo: vec![(":status".into(), parts.status.as_str().to_owned())],
            map: std::mem::take(&mut parts.headers),
        };
        let mut verdict = Verdict::Continue;
        for i in self.order(Dir::Response) {
            let n = headers.len();
            let mut moved = Some(std::mem::take(&mut headers));
            let Some((result, mut state)) =
                self.invoke(i, Callback::ResponseHeaders, n, eos, |s| {
                    s.response_headers = moved.take();
                })
            else {
                if let Some(h) = moved {
                    headers = h;
                }
                continue;
            };
            headers = state.response_headers.take().unwrap_or_default();
            if let Some(response) = self.answer_of(i, Phase::ResponseHeaders, result, &mut state) {
                verdict = Verdict::Respond(response);
                break;
            }
        }
        if let Some(status) = headers
            .pseudo(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
        {
            parts.status = status;
        }
        parts.headers = headers.map;
        verdict
    }

    /// One body chunk in direction `dir`. `Ok(Some(bytes))`: forward them;
    /// `Ok(None)`: a filter paused (the host buffers); `Err`: the stream
    /// fails (a closed filter failed, or asked for it).
    pub fn body(&mut self, dir: Dir, data: Bytes, eos: bool) -> Result<Option<Bytes>, String> {
        let callback = match dir {
            Dir::Request => Callback::RequestBody,
            Dir::Response => Callback::ResponseBody,
        };
        let mut data = data;
        for i in self.order(dir) {
            let slot = &mut self.slots[i];
            let Some(instance) = slot.instance.as_ref() else {
                continue;
            };
            if !instance.has(callback) {
                continue;
            }
            let buffer = match slot.paused[idx(dir)].take() {
                Some(mut held) => {
                    held.extend_from_slice(&data);
                    held
                }
                None => data.to_vec(),
            };
            if buffer.len() > self.limits.max_buffered_body_bytes {
                let failure = Failure::BufferLimit(self.limits.max_buffered_body_bytes);
                match self.fail(i, Failed::new(callback.phase(), failure)) {
                    Some(_) => {
                        return Err(format!(
                            "filter {} failed: buffer limit",
                            self.slots[i].filter.name
                        ));
                    }
                    None => {
                        data = Bytes::from(buffer);
                        continue;
                    }
                }
            }
            let len = buffer.len();
            let mut moved = Some(buffer);
            let Some((result, mut state)) = self.invoke(i, callback, len, eos, |s| match dir {
                Dir::Request => s.request_body = moved.take(),
                Dir::Response => s.response_body = moved.take(),
            }) else {
                continue;
            };
            let buffer = match dir {
                Dir::Request => state.request_body.take(),
                Dir::Response => state.response_body.take(),
            }
            .unwrap_or_default();
            match result {
                Err(failure) => {
                    let name = self.slots[i].filter.name.clone();
                    if self
                        .fail(i, Failed::new(callback.phase(), failure.clone()))
                        .is_some()
                    {
                        return Err(format!("filter {name} failed: {failure}"));
                    }
                    data = Bytes::from(buffer);
                }
                Ok(action) => {
                    if state.local_response.is_some() || state.close_requested {
                        return Err(format!(
                            "filter {} closed the stream during the body",
                            self.slots[i].filter.name
                        ));
                    }
                    if action == Action::Pause && !eos && !state.continue_requested {
                        self.slots[i].paused[idx(dir)] = Some(buffer);
                        return Ok(None);
                    }
                    data = Bytes::from(buffer);
                }
            }
        }
        Ok(Some(data))
    }

    /// Whether an active filter has body or trailer callbacks in `dir`.
    pub fn wants(&self, dir: Dir) -> bool {
        let (body, trailers) = match dir {
            Dir::Request => (Callback::RequestBody, Callback::RequestTrailers),
            Dir::Response => (Callback::ResponseBody, Callback::ResponseTrailers),
        };
        self.slots.iter().any(|s| {
            s.instance
                .as_ref()
                .is_some_and(|i| i.has(body) || i.has(trailers))
        })
    }

    /// Whether a filter holds paused body bytes in `dir`.
    pub fn has_paused(&self, dir: Dir) -> bool {
        self.slots.iter().any(|s| s.paused[idx(dir)].is_some())
    }

    /// Trailers in direction `dir`, changed in place.
    pub fn trailers(&mut self, dir: Dir, trailers: &mut HeaderMap) -> Result<(), String> {
        let callback = match dir {
            Dir::Request => Callback::RequestTrailers,
            Dir::Response => Callback::ResponseTrailers,
        };
        let mut headers = Headers {
            pseudo: Vec::new(),
            map: std::mem::take(trailers),
        };
        let mut outcome = Ok(());
        for i in self.order(dir) {
            let n = headers.len();
            let mut moved = Some(std::mem::take(&mut headers));
            let Some((result, mut state)) = self.invoke(i, callback, n, true, |s| match dir {
                Dir::Request => s.request_trailers = moved.take(),
                Dir::Response => s.response_trailers = moved.take(),
            }) else {
                if let Some(h) = moved {
                    headers = h;
                }
                continue;
            };
            headers = match dir {
                Dir::Request => state.request_trailers.take(),
                Dir::Response => state.response_trailers.take(),
            }
            .unwrap_or_default();
            if let Err(failure) = result {
                let name = self.slots[i].filter.name.clone();
                if self
                    .fail(i, Failed::new(callback.phase(), failure.clone()))
                    .is_some()
                {
                    outcome = Err(format!("filter {name} failed: {failure}"));
                    break;
                }
            }
        }
        *trailers = headers.map;
        outcome
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if let Some(mut instance) = slot.instance.take() {
                let started = Instant::now();
                let done = instance.finish_context(slot.context);
                slot.spent += started.elapsed();
                match done {
                    Ok(()) => slot.filter.checkin(instance),
                    Err(failed) => {
                        // The request is answered already: count, log, discard.
                        self.metrics.failure(&slot.filter.name, &failed);
                        tracing::warn!(
                            target: "filter",
                            filter = %slot.filter.name,
                            reason = failed.failure.reason(),
                            phase = %failed.phase,
                            error = %failed.failure,
                            "filter failed ending its context"
                        );
                    }
                }
            }
            self.metrics
                .duration
                .get_or_create(&FilterLabels {
                    filter: slot.filter.name.clone(),
                })
                .observe(slot.spent.as_secs_f64());
            if let Some(span) = &self.trace {
                span.child_done(format!("filter {}", slot.filter.name), slot.spent);
            }
        }
    }
}

fn request_pseudo(parts: &http::request::Parts) -> Vec<(String, String)> {
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_owned();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    let scheme = parts.uri.scheme_str().unwrap_or("http").to_owned();
    vec![
        (":authority".into(), authority),
        (":path".into(), path),
        (":method".into(), parts.method.as_str().to_owned()),
        (":scheme".into(), scheme),
    ]
}

/// Applies a changed `:path` or `:method` (other pseudo-headers are
/// informational).
fn apply_request_pseudo(
    parts: &mut http::request::Parts,
    before: &[(String, String)],
    after: &[(String, String)],
) {
    let get = |list: &[(String, String)], k: &str| {
        list.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    };
    if let Some(path) = get(after, ":path")
        && get(before, ":path").as_ref() != Some(&path)
    {
        let mut uri = http::uri::Parts::from(parts.uri.clone());
        if let Ok(pq) = path.parse() {
            uri.path_and_query = Some(pq);
            if let Ok(u) = Uri::from_parts(uri) {
                parts.uri = u;
            }
        }
    }
    if let Some(method) = get(after, ":method")
        && get(before, ":method").as_ref() != Some(&method)
        && let Ok(m) = Method::from_bytes(method.as_bytes())
    {
        parts.method = m;
    }
}

/// Whether a request is gRPC.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status for an HTTP status (gRPC's HTTP mapping).
pub fn grpc_status_for(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn grpc_response(code: u32, message: &str, reason: &str) -> Response<ProxyBody> {
    let mut response = Response::new(body::empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", v);
    }
    if let Ok(v) = HeaderValue::from_str(reason) {
        headers.insert(REASON_HEADER, v);
    }
    response
}

/// 503 (gRPC: 14 UNAVAILABLE) with `x-tollgate-reason: filter-failed`.
pub fn failure_response(filter: &str, failure: &Failure, grpc: bool) -> Response<ProxyBody> {
    let message = format!("filter {filter} failed: {failure}");
    if grpc {
        return grpc_response(14, &message, "filter-failed");
    }
    let mut response = Response::new(body::full(format!("{message}\n")));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(REASON_HEADER, HeaderValue::from_static("filter-failed"));
    response
}

fn closed_response(filter: &str, grpc: bool) -> Response<ProxyBody> {
    let message = format!("filter {filter} closed the stream");
    if grpc {
        return grpc_response(14, &message, "filter-closed-stream");
    }
    let mut response = Response::new(body::full(format!("{message}\n")));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        REASON_HEADER,
        HeaderValue::from_static("filter-closed-stream"),
    );
    response
}

/// A filter's `proxy_send_local_response`. gRPC requests get a
/// trailers-only gRPC answer: the filter's gRPC status, or one derived
/// from the HTTP status; the message is the body (or the details).
pub fn local_response(local: LocalResponse, grpc: bool) -> Response<ProxyBody> {
    let reason = if local.details.is_empty() {
        "filter-local-response".to_owned()
    } else {
        local.details.clone()
    };
    let mut response = if grpc {
        let code = local
            .grpc_status
            .unwrap_or_else(|| grpc_status_for(local.status));
        let body = String::from_utf8_lossy(&local.body);
        let message = if body.trim().is_empty() {
            local.details.clone()
        } else {
            body.trim().to_owned()
        };
        grpc_response(code, &message, &reason)
    } else {
        let mut r = Response::new(body::full(local.body));
        *r.status_mut() = StatusCode::from_u16(local.status).unwrap_or(StatusCode::FORBIDDEN);
        if let Ok(v) = HeaderValue::from_str(&reason) {
            r.headers_mut().insert(REASON_HEADER, v);
        }
        r
    };
    for (k, v) in local.headers {
        if k != HeaderName::from_static("grpc-status") || !grpc {
            response.headers_mut().append(k, v);
        }
    }
    response
}
