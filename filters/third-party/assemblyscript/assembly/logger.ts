// A request logger written against the AssemblyScript proxy-wasm SDK
// (@solo-io/proxy-runtime), as a user would write it for Envoy: request
// contexts put one line per request on a shared queue; the root context,
// told by proxy_on_queue_ready that lines are waiting, drains the queue on
// its next tick and ships the batch to a collector with proxy_http_call.
//
// Configuration: `<cluster>` or `<cluster>,<tick ms>` (default 100 ms).
// Root id: `as_logger`. Each line: `<method> <path>`; a batch: lines joined
// by "\n", POSTed to /logs on the cluster.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  HeaderPair,
  Headers,
  LogLevelValues,
  WasmResultValues,
  log,
  stream_context,
} from "@solo-io/proxy-runtime";
import {
  Reference,
  register_shared_queue,
  enqueue_shared_queue,
  set_tick_period_milliseconds,
} from "@solo-io/proxy-runtime/runtime";
import { proxy_dequeue_shared_queue } from "@solo-io/proxy-runtime/imports";

// The SDK's own dequeue_shared_queue does not compile with the
// AssemblyScript its lockfile names (TS2564: DequeueSharedQueueResult.data
// has no initializer), so the import is called directly. `null`: empty.
function dequeue(queue: u32): ArrayBuffer | null {
  const ptr = new Reference<usize>();
  const size = new Reference<usize>();
  if (proxy_dequeue_shared_queue(queue, ptr.ptr(), size.ptr()) != WasmResultValues.Ok) {
    return null;
  }
  const item = new ArrayBuffer(size.data as i32);
  memory.copy(changetype<usize>(item), ptr.data, size.data);
  return item;
}

function pair(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

class LoggerRoot extends RootContext {
  queue: u32 = 0;
  cluster: string = "";
  ready: bool = false;

  createContext(context_id: u32): Context {
    return new Logger(context_id, this);
  }

  onConfigure(configuration_size: u32): bool {
    super.onConfigure(configuration_size);
    const parts = this.getConfiguration().split(",");
    this.cluster = parts[0];
    let tick: u32 = 100;
    if (parts.length > 1) {
      tick = U32.parseInt(parts[1]);
    }
    const id = new Reference<u32>();
    if (register_shared_queue("request-log", id.ptr() as u32) != WasmResultValues.Ok) {
      return false;
    }
    this.queue = id.data;
    set_tick_period_milliseconds(tick);
    return true;
  }

  onQueueReady(token: u32): void {
    this.ready = true;
  }

  onTick(): void {
    if (!this.ready) {
      return;
    }
    this.ready = false;
    let batch = "";
    let lines = 0;
    while (lines < 1000) {
      const item = dequeue(this.queue);
      if (item === null) {
        break;
      }
      if (lines > 0) {
        batch += "\n";
      }
      batch += String.UTF8.decode(item as ArrayBuffer);
      lines++;
    }
    if (lines == 0) {
      return;
    }
    const call: Headers = [];
    call.push(pair(":method", "POST"));
    call.push(pair(":path", "/logs"));
    call.push(pair(":authority", "collector"));
    call.push(pair("content-type", "text/plain"));
    this.httpCall(
      this.cluster,
      call,
      String.UTF8.encode(batch),
      [],
      1000,
      this,
      (origin: Context, headers: u32, body_size: usize, trailers: u32): void => {
        if (headers == 0) {
          log(LogLevelValues.warn, "the collector did not answer");
        }
      }
    );
  }
}

class Logger extends Context {
  constructor(context_id: u32, root_context: LoggerRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const root = this.root_context as LoggerRoot;
    const line =
      stream_context.headers.request.get(":method") + " " + stream_context.headers.request.get(":path");
    enqueue_shared_queue(root.queue, String.UTF8.encode(line));
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => {
  return new LoggerRoot(context_id);
}, "as_logger");
