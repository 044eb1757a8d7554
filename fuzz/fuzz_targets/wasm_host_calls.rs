//! Every proxy-wasm host call with guest-chosen pointers and lengths.
//!
//! At start the harness reads the proxy's own `filters::host::linker()`
//! and builds a guest module (wasm-encoder) that imports every host
//! function it provides and exports one trampoline per import, forwarding
//! its arguments. The module is compiled by the proxy's `Runtime` (the
//! engine the proxy uses: pooling allocator, epoch interruption, explicit
//! memory reservation) and each input gets a fresh instance with a
//! one-page (64 KiB) memory that cannot grow, and the request state of a
//! callback in progress (headers, trailers, bodies).
//!
//! Input: a byte `n`, then `16 * n` bytes of initial guest memory (at 0),
//! then calls: an import index, a choice of what the guest allocator
//! returns, and one argument choice per parameter (in bounds, at the end
//! of memory, past it, negative, small, or raw bits).
//!
//! Invariants, per call:
//! - the host never panics and never traps, except `proc_exit` (whose
//!   trap is `ProcExit`, deliberately);
//! - the result is a status the ABI defines (`proxy_*`) or a WASI errno;
//!   unsupported calls return `UNIMPLEMENTED`;
//! - `OK` only when every region the call reads or writes is in bounds;
//!   `INVALID_MEMORY_ACCESS` (WASI: `FAULT`) only when one is not (or the
//!   guest allocator returned null or an out-of-bounds block);
//! - the host writes guest memory only inside the call's output regions
//!   and the block the allocator gave it;
//! - a buffer handed over (`ptr_ptr`/`size_ptr`) is the allocator's block.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::Reader;
use tollgate_proxy::filters::abi::{Status, errno};
use tollgate_proxy::filters::callout::Clusters;
use tollgate_proxy::filters::config::EngineLimits;
use tollgate_proxy::filters::host::{
    self, CallState, FilterShared, GuestLimits, Headers, HostState, ProcExit, SharedData,
};
use tollgate_proxy::filters::metrics::FilterMetrics;
use tollgate_proxy::filters::module::{Prepared, Runtime};
use tollgate_proxy::filters::properties::RequestProps;
use tollgate_proxy::filters::queue::SharedQueues;
use wasm_encoder::{
    CodeSection, ConstExpr, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    GlobalSection, GlobalType, ImportSection, MemorySection, MemoryType, Module, TypeSection,
    ValType as EncType,
};
use wasmtime::{Extern, Func, Store, Val, ValType};

const PAGE: u64 = 64 << 10;
const MAX_CALLS: usize = 48;

/// Where a call's arguments point, by parameter index.
#[derive(Clone, Copy, Debug)]
enum Region {
    /// Read: `(ptr, len)`.
    In(usize, usize),
    /// Written: `(ptr)` and a fixed size.
    Out(usize, u64),
    /// Written: `(ptr, len)` (`random_get`).
    OutBuf(usize, usize),
    /// A buffer handed over: `(ptr_ptr, size_ptr)`, plus the allocator's block.
    Give(usize, usize),
    /// WASI iovecs: `(iovs, iovs_len)`, each 8 bytes, each pointing at a read.
    Iovs(usize, usize),
}

use Region::*;

/// The regions of each host call, as the spec and WASI define them.
fn regions(module: &str, name: &str) -> &'static [Region] {
    if module != "env" {
        return match name {
            "fd_write" => &[Iovs(1, 2), Out(3, 4)],
            "fd_fdstat_get" => &[Out(1, 24)],
            "environ_sizes_get" | "args_sizes_get" => &[Out(0, 4), Out(1, 4)],
            "clock_time_get" => &[Out(2, 8)],
            "random_get" => &[OutBuf(0, 1)],
            _ => &[],
        };
    }
    match name {
        "proxy_log" => &[In(1, 2)],
        "proxy_get_log_level" => &[Out(0, 4)],
        "proxy_get_current_time_nanoseconds" => &[Out(0, 8)],
        "proxy_get_configuration" => &[Give(0, 1)],
        "proxy_get_buffer_bytes" => &[Give(3, 4)],
        "proxy_get_buffer_status" => &[Out(1, 4), Out(2, 4)],
        "proxy_set_buffer_bytes" => &[In(3, 4)],
        "proxy_get_header_map_pairs" => &[Give(1, 2)],
        "proxy_set_header_map_pairs" => &[In(1, 2)],
        "proxy_get_header_map_size" => &[Out(1, 4)],
        "proxy_get_header_map_value" => &[In(1, 2), Give(3, 4)],
        "proxy_add_header_map_value" | "proxy_replace_header_map_value" => &[In(1, 2), In(3, 4)],
        "proxy_remove_header_map_value" => &[In(1, 2)],
        "proxy_get_property" => &[In(0, 1), Give(2, 3)],
        "proxy_set_property" => &[In(0, 1), In(2, 3)],
        "proxy_send_local_response" => &[In(1, 2), In(3, 4), In(5, 6)],
        "proxy_get_shared_data" => &[In(0, 1), Out(4, 4), Give(2, 3)],
        "proxy_set_shared_data" => &[In(0, 1), In(2, 3)],
        "proxy_define_metric" => &[In(1, 2), Out(3, 4)],
        "proxy_get_metric" => &[Out(1, 8)],
        "proxy_register_shared_queue" => &[In(0, 1), Out(2, 4)],
        "proxy_resolve_shared_queue" => &[In(0, 1), In(2, 3), Out(4, 4)],
        "proxy_enqueue_shared_queue" => &[In(1, 2)],
        "proxy_dequeue_shared_queue" => &[Give(1, 2)],
        // Request trailers are not sent, so not read (docs/filters.md).
        "proxy_http_call" => &[In(0, 1), In(2, 3), In(4, 5), Out(9, 4)],
        "proxy_grpc_call" => &[In(0, 1), In(2, 3), In(4, 5), In(6, 7), In(8, 9), Out(11, 4)],
        "proxy_get_status" => &[Out(0, 4), Give(1, 2)],
        _ => &[],
    }
}

/// Linked so SDK-built modules instantiate; these answer `UNIMPLEMENTED`.
const UNIMPLEMENTED: [&str; 5] = [
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_call_foreign_function",
];

const STATUSES: [Status; 10] = [
    Status::Ok,
    Status::NotFound,
    Status::BadArgument,
    Status::SerializationFailure,
    Status::ParseFailure,
    Status::InvalidMemoryAccess,
    Status::Empty,
    Status::CasMismatch,
    Status::InternalFailure,
    Status::Unimplemented,
];
const ERRNOS: [i32; 6] = [
    errno::SUCCESS,
    errno::BADF,
    errno::FAULT,
    errno::INVAL,
    errno::NOSYS,
    errno::NOTSUP,
];

struct Import {
    module: String,
    name: String,
    params: Vec<ValType>,
    results: usize,
}

struct Harness {
    runtime: Arc<Runtime>,
    prepared: Prepared,
    imports: Vec<Import>,
}

fn harness() -> &'static Mutex<Harness> {
    static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = Runtime::new(EngineLimits::default()).expect("the proxy's WASM runtime");
        let linker = host::linker(runtime.engine()).expect("the proxy's linker");
        let mut store = Store::new(runtime.engine(), HostState::new(shared(), PAGE as usize));
        let linked: Vec<(String, String, Extern)> = linker
            .iter(&mut store)
            .map(|(module, name, item)| (module.to_owned(), name.to_owned(), item))
            .collect();
        let mut imports: Vec<Import> = linked
            .into_iter()
            .filter_map(|(module, name, item)| match item {
                Extern::Func(f) => {
                    let ty = f.ty(&store);
                    Some(Import {
                        module,
                        name,
                        params: ty.params().collect(),
                        results: ty.results().len(),
                    })
                }
                _ => None,
            })
            .collect();
        // The linker's order is a hash map's: sort, so an input means the
        // same calls in every run.
        imports.sort_by(|a, b| (&a.module, &a.name).cmp(&(&b.module, &b.name)));
        assert!(!imports.is_empty(), "the linker provides no host functions");
        let bytes = guest_module(&imports);
        let prepared = runtime
            .prepare(&bytes, None)
            .unwrap_or_else(|e| panic!("the generated guest module does not load: {e}"));
        Mutex::new(Harness {
            runtime,
            prepared,
            imports,
        })
    })
}

fn shared() -> Arc<FilterShared> {
    Arc::new(FilterShared {
        name: "fuzz".into(),
        plugin: Default::default(),
        plugin_config: br#"{"deny": ["/admin"]}"#.to_vec(),
        vm_config: b"vm".to_vec(),
        metrics: FilterMetrics::new(),
        shared_data: Arc::new(SharedData::default()),
        // No clusters: every `proxy_http_call` is refused before it
        // could leave the process.
        clusters: Arc::new(Clusters::default()),
        in_flight: Default::default(),
        // A shallow queue, so inputs reach the full-queue refusal.
        queues: Arc::new(SharedQueues::default()),
        max_queue_depth: 4,
        limits: GuestLimits::default(),
    })
}

fn enc(t: &ValType) -> EncType {
    if t.is_i64() {
        EncType::I64
    } else {
        EncType::I32
    }
}

/// A module importing every host function, exporting `t<i>` forwarding to
/// import `i`, one page of memory, and an allocator that returns the
/// `next_alloc` global (recording the size asked in `alloc_size` and
/// counting calls in `alloc_calls`).
fn guest_module(imports: &[Import]) -> Vec<u8> {
    const NO_LOCALS: [(u32, EncType); 0] = [];
    let n = imports.len() as u32;
    let mut types = TypeSection::new();
    let mut import_section = ImportSection::new();
    for (i, imp) in imports.iter().enumerate() {
        let results = if imp.results == 1 {
            vec![EncType::I32]
        } else {
            Vec::new()
        };
        types
            .ty()
            .function(imp.params.iter().map(enc).collect::<Vec<_>>(), results);
        import_section.import(&imp.module, &imp.name, EntityType::Function(i as u32));
    }
    types.ty().function([EncType::I32], [EncType::I32]);
    types.ty().function([], []);

    let mut functions = FunctionSection::new();
    let mut code = CodeSection::new();
    for (i, imp) in imports.iter().enumerate() {
        functions.function(i as u32);
        let mut f = Function::new(NO_LOCALS);
        let mut sink = f.instructions();
        for p in 0..imp.params.len() as u32 {
            sink.local_get(p);
        }
        sink.call(i as u32).end();
        code.function(&f);
    }
    functions.function(n);
    let mut alloc = Function::new(NO_LOCALS);
    alloc
        .instructions()
        .local_get(0)
        .global_set(1)
        .global_get(2)
        .i32_const(1)
        .i32_add()
        .global_set(2)
        .global_get(0)
        .end();
    code.function(&alloc);
    functions.function(n + 1);
    let mut marker = Function::new(NO_LOCALS);
    marker.instructions().end();
    code.function(&marker);

    let mut memory = MemorySection::new();
    memory.memory(MemoryType {
        minimum: 1,
        maximum: Some(1),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut globals = GlobalSection::new();
    for _ in 0..3 {
        globals.global(
            GlobalType {
                val_type: EncType::I32,
                mutable: true,
                shared: false,
            },
            &ConstExpr::i32_const(0),
        );
    }
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    for i in 0..n {
        exports.export(&format!("t{i}"), ExportKind::Func, n + i);
    }
    exports.export("proxy_on_memory_allocate", ExportKind::Func, 2 * n);
    exports.export("proxy_abi_version_0_2_1", ExportKind::Func, 2 * n + 1);
    for (i, name) in ["next_alloc", "alloc_size", "alloc_calls"]
        .iter()
        .enumerate()
    {
        exports.export(name, ExportKind::Global, i as u32);
    }

    let mut module = Module::new();
    module
        .section(&types)
        .section(&import_section)
        .section(&functions)
        .section(&memory)
        .section(&globals)
        .section(&exports)
        .section(&code);
    module.finish()
}

/// The state of a request-headers callback in progress.
fn call_state() -> CallState {
    let mut map = HeaderMap::new();
    map.insert("host", HeaderValue::from_static("app.example"));
    map.append("accept", HeaderValue::from_static("text/html"));
    map.append("accept", HeaderValue::from_static("*/*"));
    let pseudo = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let claims = match serde_json::json!({"sub": "alice", "team": "ml", "org": {"unit": [1, 2]}}) {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    let mut response = HeaderMap::new();
    response.insert("content-type", HeaderValue::from_static("text/plain"));
    CallState {
        request_headers: Some(Headers {
            pseudo: pseudo(&[
                (":method", "GET"),
                (":path", "/api/x?y=1"),
                (":authority", "app.example"),
                (":scheme", "https"),
            ]),
            map,
        }),
        response_headers: Some(Headers {
            pseudo: pseudo(&[(":status", "200")]),
            map: response,
        }),
        response_trailers: Some(Headers::default()),
        request_body: Some(b"hello body".to_vec()),
        props: Some(Arc::new(RequestProps {
            method: "GET".into(),
            path: "/api/x?y=1".into(),
            host: "app.example".into(),
            scheme: "https".into(),
            protocol: "HTTP/1.1",
            source: "10.0.0.7:40000".parse().ok(),
            principal: Some("spiffe://cluster.local/ns/web/sa/frontend".into()),
            claims: Some(Arc::new(claims)),
            ..RequestProps::default()
        })),
        context_id: 2,
        ..CallState::default()
    }
}

/// An i32 argument: the fuzzer picks the kind of value, then its bits.
fn arg_i32(r: &mut Reader<'_>) -> i32 {
    match r.u8() % 8 {
        0 => i32::from(r.u16()),
        1 => (PAGE as i32) - i32::from(r.u8()),
        2 => r.u32() as i32,
        3 => i32::from(r.u8()),
        4 => -i32::from(r.u8()),
        5 => (PAGE as i32) + i32::from(r.u16()),
        6 => i32::from(r.u16() & 0x0fff),
        _ => (0xffff_0000u32 | u32::from(r.u16())) as i32,
    }
}

fn arg_i64(r: &mut Reader<'_>) -> i64 {
    match r.u8() % 3 {
        0 => i64::from(r.u8()),
        1 => -i64::from(r.u8()),
        _ => r.u64() as i64,
    }
}

/// Whether `[ptr, ptr + len)` (both as the host reads them, unsigned) lies
/// in the memory.
fn in_bounds(ptr: i32, len: u64) -> bool {
    u64::from(ptr as u32) + len <= PAGE
}

fn le_u32(memory: &[u8], at: usize) -> Option<u32> {
    let b = memory.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn i32_arg(args: &[Val], i: usize) -> i32 {
    args[i].unwrap_i32()
}

fuzz_target!(|data: &[u8]| {
    let harness = harness().lock().unwrap_or_else(|e| e.into_inner());
    let engine = harness.runtime.engine();
    let mut store = Store::new(engine, HostState::new(shared(), PAGE as usize));
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(1 << 32);
    let instance = harness
        .prepared
        .pre
        .instantiate(&mut store)
        .unwrap_or_else(|e| panic!("instantiating the guest: {e}"));
    let memory = instance
        .get_memory(&mut store, "memory")
        .expect("the guest's memory");
    let alloc = instance
        .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
        .expect("the guest's allocator");
    let global = |store: &mut Store<HostState>, name: &str| {
        instance
            .get_global(&mut *store, name)
            .unwrap_or_else(|| panic!("the guest's {name} global"))
    };
    let next_alloc = global(&mut store, "next_alloc");
    let alloc_size = global(&mut store, "alloc_size");
    let alloc_calls = global(&mut store, "alloc_calls");
    let trampolines: Vec<Func> = (0..harness.imports.len())
        .map(|i| {
            instance
                .get_func(&mut store, &format!("t{i}"))
                .expect("a trampoline")
        })
        .collect();
    store.data_mut().memory = Some(memory);
    store.data_mut().alloc = Some(alloc);
    store.data_mut().call = call_state();

    let mut r = Reader::new(data);
    let fill = usize::from(r.u8()) * 16;
    let init = r.bytes(fill);
    memory.data_mut(&mut store)[..init.len()].copy_from_slice(init);

    for _ in 0..MAX_CALLS {
        if r.is_empty() {
            break;
        }
        let index = usize::from(r.u8()) % harness.imports.len();
        let import = &harness.imports[index];
        let what = format!("{}::{}", import.module, import.name);
        let block = match r.u8() % 4 {
            0 => 0x8000 + i32::from(r.u16() & 0x7fff),
            1 => (PAGE as i32) - i32::from(r.u8()),
            2 => 0,
            _ => r.u32() as i32,
        };
        let args: Vec<Val> = import
            .params
            .iter()
            .map(|t| {
                if t.is_i64() {
                    Val::I64(arg_i64(&mut r))
                } else {
                    Val::I32(arg_i32(&mut r))
                }
            })
            .collect();
        next_alloc
            .set(&mut store, Val::I32(block))
            .expect("setting next_alloc");
        alloc_calls
            .set(&mut store, Val::I32(0))
            .expect("resetting alloc_calls");
        let before = memory.data(&store).to_vec();
        let mut results = vec![Val::I32(0); import.results];
        let outcome = trampolines[index].call(&mut store, &args, &mut results);

        if import.name == "proc_exit" {
            let e = outcome.expect_err("proc_exit returned to the guest");
            assert!(
                e.downcast_ref::<ProcExit>().is_some(),
                "proc_exit failed with something else than ProcExit: {e:?}"
            );
            continue;
        }
        if let Err(e) = outcome {
            panic!("host call {what}{args:?} trapped: {e:?}");
        }
        let status = results[0].unwrap_i32();
        let wasi = import.module != "env";
        if wasi {
            assert!(
                ERRNOS.contains(&status),
                "{what}{args:?} returned {status}, not a WASI errno the host uses"
            );
        } else {
            assert!(
                STATUSES.iter().any(|s| s.code() == status),
                "{what}{args:?} returned {status}, not a proxy-wasm status"
            );
        }
        if UNIMPLEMENTED.contains(&import.name.as_str()) {
            assert_eq!(
                status,
                Status::Unimplemented.code(),
                "{what} is unsupported and must answer UNIMPLEMENTED"
            );
        }
        let (ok, bad_memory) = if wasi {
            (status == errno::SUCCESS, status == errno::FAULT)
        } else {
            (
                status == Status::Ok.code(),
                status == Status::InvalidMemoryAccess.code(),
            )
        };

        // What the call was entitled to touch, and whether all of it was
        // inside the memory.
        let allocated = alloc_calls.get(&mut store).unwrap_i32() > 0;
        let asked = alloc_size.get(&mut store).unwrap_i32();
        let after = memory.data(&store);
        let mut writable: Vec<(u64, u64)> = Vec::new();
        let mut all_in_bounds = true;
        let mut gave = None;
        for region in regions(&import.module, &import.name) {
            match *region {
                In(p, l) => {
                    let (ptr, len) = (i32_arg(&args, p), i32_arg(&args, l));
                    all_in_bounds &= in_bounds(ptr, u64::from(len as u32));
                }
                Out(p, size) => {
                    let ptr = i32_arg(&args, p);
                    all_in_bounds &= in_bounds(ptr, size);
                    writable.push((u64::from(ptr as u32), size));
                }
                OutBuf(p, l) => {
                    let (ptr, len) = (i32_arg(&args, p), u64::from(i32_arg(&args, l) as u32));
                    all_in_bounds &= in_bounds(ptr, len);
                    writable.push((u64::from(ptr as u32), len));
                }
                Give(pp, sp) => {
                    let (ptr_ptr, size_ptr) = (i32_arg(&args, pp), i32_arg(&args, sp));
                    all_in_bounds &= in_bounds(ptr_ptr, 4) && in_bounds(size_ptr, 4);
                    writable.push((u64::from(ptr_ptr as u32), 4));
                    writable.push((u64::from(size_ptr as u32), 4));
                    if allocated {
                        let size = u64::from(asked as u32);
                        all_in_bounds &= in_bounds(block, size) && (block != 0 || size == 0);
                        writable.push((u64::from(block as u32), size));
                    }
                    gave = Some((ptr_ptr, size_ptr));
                }
                Iovs(p, l) => {
                    let (iovs, count) = (i32_arg(&args, p), u64::from(i32_arg(&args, l) as u32));
                    if in_bounds(iovs, count * 8) {
                        for k in 0..count as usize {
                            let at = iovs as u32 as usize + 8 * k;
                            let ptr = le_u32(&before, at).unwrap_or(0) as i32;
                            let len = le_u32(&before, at + 4).unwrap_or(0);
                            all_in_bounds &= in_bounds(ptr, u64::from(len));
                        }
                    } else {
                        all_in_bounds = false;
                    }
                }
            }
        }
        if ok {
            assert!(
                all_in_bounds,
                "{what}{args:?} returned OK with an out-of-bounds region \
                 (allocator gave {block:#x} for {asked} bytes)"
            );
        }
        if bad_memory {
            assert!(
                !all_in_bounds,
                "{what}{args:?} reported an invalid memory access with every region in bounds \
                 (allocator gave {block:#x} for {asked} bytes)"
            );
        }
        if before[..] != after[..] {
            // Chunk by chunk (memcmp), then byte by byte where they differ.
            for (c, (was, now)) in before.chunks(64).zip(after.chunks(64)).enumerate() {
                if was == now {
                    continue;
                }
                for (i, (a, b)) in was.iter().zip(now).enumerate() {
                    let at = (c * 64 + i) as u64;
                    let inside = writable
                        .iter()
                        .any(|&(start, len)| at >= start && at < start + len);
                    assert!(
                        a == b || inside,
                        "{what}{args:?} wrote guest memory at {at:#x}, outside its output \
                         regions {writable:x?}"
                    );
                }
            }
        }
        if let (true, true, Some((ptr_ptr, size_ptr))) = (ok, allocated, gave) {
            // The host writes the block, then the pointer, then the size:
            // the size is always readable, the pointer unless the size
            // overwrote it.
            let size = le_u32(after, size_ptr as u32 as usize);
            assert_eq!(
                size,
                Some(asked as u32),
                "{what}{args:?} reported another size than it allocated"
            );
            if (ptr_ptr as u32).abs_diff(size_ptr as u32) >= 4 {
                let handed = le_u32(after, ptr_ptr as u32 as usize);
                assert_eq!(
                    handed,
                    Some(block as u32),
                    "{what}{args:?} handed over a buffer that is not the allocator's block"
                );
            }
        }
    }
});
