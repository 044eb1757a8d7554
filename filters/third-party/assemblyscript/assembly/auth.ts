// An auth filter written against the AssemblyScript proxy-wasm SDK
// (@solo-io/proxy-runtime), as a user would write it for Envoy: each
// request waits while the filter asks an auth service (`proxy_http_call`
// to the cluster its configuration names), then goes on or is refused.
//
// Configuration: the cluster's name. Root id: `as_auth`.
//
// - The call: GET /check on the cluster, `:authority: auth`, carrying the
//   request's `authorization` header.
// - 200: the request continues, with `x-auth-user: <the answer's body>`.
// - Any other status: 403, the answer's body as the reason.
// - No answer (the service is down, slow past the cluster's timeout, or
//   the call was refused): 503 "auth service unavailable".
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  GrpcStatusValues,
  WasmResultValues,
  HeaderPair,
  Headers,
  stream_context,
  send_local_response,
  continue_request,
} from "@solo-io/proxy-runtime";
import { get_buffer_bytes, BufferTypeValues } from "@solo-io/proxy-runtime/runtime";

function pair(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

function refuse(status: u32, details: string, body: string): void {
  send_local_response(status, details, String.UTF8.encode(body), [], GrpcStatusValues.Unknown);
}

class AuthRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Auth(context_id, this);
  }
}

class Auth extends Context {
  constructor(context_id: u32, root_context: AuthRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const call: Headers = [];
    call.push(pair(":method", "GET"));
    call.push(pair(":path", "/check"));
    call.push(pair(":authority", "auth"));
    const authorization = stream_context.headers.request.get("authorization");
    if (authorization.length > 0) {
      call.push(pair("authorization", authorization));
    }
    const result = this.root_context.httpCall(
      this.root_context.getConfiguration(),
      call,
      new ArrayBuffer(0),
      [],
      1000,
      this,
      (origin: Context, headers: u32, body_size: usize, trailers: u32): void => {
        if (headers == 0) {
          refuse(503, "auth-unavailable", "auth service unavailable\n");
          return;
        }
        const status = stream_context.headers.http_callback.get(":status");
        const body = String.UTF8.decode(
          get_buffer_bytes(BufferTypeValues.HttpCallResponseBody, 0, body_size as u32)
        );
        if (status == "200") {
          stream_context.headers.request.add("x-auth-user", body);
          continue_request();
        } else {
          refuse(403, "auth-denied", body);
        }
      }
    );
    if (result != WasmResultValues.Ok) {
      refuse(503, "auth-unavailable", "auth call refused: " + result.toString() + "\n");
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.StopIteration;
  }
}

registerRootContext((context_id: u32) => {
  return new AuthRoot(context_id);
}, "as_auth");
