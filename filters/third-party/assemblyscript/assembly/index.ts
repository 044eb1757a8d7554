// A header filter written against the AssemblyScript proxy-wasm SDK
// (@solo-io/proxy-runtime), as a user would write it for Envoy. The SDK
// creates the root context registered under the name Envoy passes as
// `root_id` (the `plugin_root_id` property): Tollgate's `rootId`. With any
// other root id the SDK aborts (proc_exit(255)) in proxy_on_context_create.
//
// Request: adds `x-as-header: <configuration>`.
// Response: adds `x-as-filter: as_header`.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  stream_context,
} from "@solo-io/proxy-runtime";

class AsHeaderRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new AsHeader(context_id, this);
  }
}

class AsHeader extends Context {
  constructor(context_id: u32, root_context: AsHeaderRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.request.add("x-as-header", this.root_context.getConfiguration());
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-filter", "as_header");
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => {
  return new AsHeaderRoot(context_id);
}, "as_header");
