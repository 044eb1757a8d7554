#!/usr/bin/env python3
"""Writes the committed seed inputs of the fuzz targets (fuzz/seeds/<target>/).

The seeds are real inputs: the webhook's AdmissionReview fixtures and the
repository's manifests, tokens signed with the fixture's HS256 secret
(fuzz/src/jwt.rs), request heads as clients send them, and host-call
sequences for the proxy-wasm host. Re-run after changing a fixture or the
host's import list (the wasm seeds name imports by their sorted index):

    python3 fuzz/seeds/generate.py
"""

import base64
import hashlib
import hmac
import json
import pathlib
import re
import struct

import yaml

FUZZ = pathlib.Path(__file__).resolve().parent.parent
ROOT = FUZZ.parent
SEEDS = FUZZ / "seeds"

SECRET = b"tollgate-fuzz-shared-secret-0123456789"  # fuzz/src/jwt.rs SECRET
FAR = 4102444800  # 2100-01-01: seeds stay unexpired


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def manifests(*globs):
    for pattern in globs:
        for path in sorted(ROOT.glob(pattern)):
            for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
                if isinstance(doc, dict) and doc.get("kind"):
                    yield f"{path.stem}-{i}", doc


def review_for(obj, operation="CREATE"):
    api = obj.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    gvk = {"group": group, "version": version, "kind": obj["kind"]}
    meta = obj.get("metadata", {})
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "f00dfeed-0000-4000-8000-000000000001",
            "kind": gvk,
            "requestKind": gvk,
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", "app-ml-team"),
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["developers"]},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
        },
    }


def admission_review():
    for path in sorted((ROOT / "webhook/testdata").glob("*.json")):
        write("admission_review", path.name, path.read_bytes())
    for name, obj in manifests(
        "tests/fixtures/*.yaml",
        "tests/fixtures/mutation/*.yaml",
        "tests/fixtures/sidecar/*.yaml",
        "tests/fixtures/review/manifests.yaml",
        "webhook/testdata/mutate/*.yaml",
    ):
        write("admission_review", f"{name}.json", json.dumps(review_for(obj), indent=1))
    # A Pod UPDATE and an exempt namespace.
    for name, obj in manifests("tests/fixtures/pod-compliant.yaml"):
        write("admission_review", f"{name}-update.json", json.dumps(review_for(obj, "UPDATE")))
        obj = json.loads(json.dumps(obj))
        obj.setdefault("metadata", {})["namespace"] = "kube-system"
        write("admission_review", f"{name}-kube-system.json", json.dumps(review_for(obj)))


def pod_patch():
    # Control byte: bit 0 UPDATE, bit 1 native sidecar, bit 2 team label on
    # the namespace, bit 3 workspace label, bit 4 admin, bits 5-6 namespace.
    controls = {"create": 0x00, "native-ns": 0x62, "workspace": 0x08, "update-admin": 0x11}
    for name, obj in manifests(
        "webhook/testdata/mutate/*.yaml",
        "tests/fixtures/mutation/*.yaml",
        "tests/fixtures/sidecar/*.yaml",
        "tests/fixtures/*.yaml",
    ):
        for label, control in controls.items():
            write("pod_patch", f"{name}-{label}", bytes([control]) + json.dumps(obj).encode())


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(header, claims):
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(SECRET, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(sig)}"


SHARED = {"iss": "https://shared.example", "sub": "bob", "team": "ml", "exp": FAR}
MAIN = {"iss": "https://issuer.example", "aud": "flyteadmin", "sub": "alice",
        "team": "ml", "groups": ["a", "b"], "exp": FAR}


ALG_NONE = json.dumps({"alg": "none"}).encode()


def jwt_token():
    good = hs256({"alg": "HS256", "typ": "JWT"}, SHARED)
    raw = {
        "hs256-valid": good,
        "hs256-expired": hs256({"alg": "HS256"}, {**SHARED, "exp": 1000}),
        "hs256-nbf-future": hs256({"alg": "HS256"}, {**SHARED, "nbf": FAR}),
        "hs256-for-main": hs256({"alg": "HS256"}, MAIN),
        "tampered": good[:-4] + "AAAA",
        "alg-none": f"{b64(ALG_NONE)}.{b64(json.dumps(MAIN).encode())}.",
        "two-parts": "eyJhbGciOiJIUzI1NiJ9.e30",
        "garbage": "not a token",
    }
    for name, token in raw.items():
        write("jwt_token", f"raw-{name}", b"\x00" + token.encode())
    signed = {
        "es256": ({"alg": "ES256", "kid": "e1"}, MAIN),
        "eddsa": ({"alg": "EdDSA", "kid": "d1"}, MAIN),
        "eddsa-no-kid": ({"alg": "EdDSA"}, MAIN),
        "es256-unknown-kid": ({"alg": "ES256", "kid": "zz"}, MAIN),
        "es256-aud-list": ({"alg": "ES256", "kid": "e1"}, {**MAIN, "aud": ["x", "flyteadmin"]}),
        "es256-nbf": ({"alg": "ES256", "kid": "e1"}, {**MAIN, "nbf": 1000, "iat": 1000}),
        "eddsa-no-sub": ({"alg": "EdDSA", "kid": "d1"}, {k: v for k, v in MAIN.items() if k != "sub"}),
        "es256-nbf-string": ({"alg": "ES256", "kid": "e1"}, {**MAIN, "nbf": str(FAR)}),
        "es256-no-aud": ({"alg": "ES256", "kid": "e1"}, {k: v for k, v in MAIN.items() if k != "aud"}),
        "hs256-shared": ({"alg": "HS256"}, SHARED),
        "hs256-confusion": ({"alg": "HS256", "kid": "e1"}, MAIN),
    }
    for name, (header, claims) in signed.items():
        write("jwt_token", f"signed-{name}",
              b"\x01" + json.dumps(header).encode() + b"\n" + json.dumps(claims).encode())


def request_head():
    token = hs256({"alg": "HS256"}, SHARED)
    heads = {
        "get-bearer": f"GET /api/v1/projects HTTP/1.1\r\nHost: flyteadmin.flyte.svc:81\r\n"
                      f"Authorization: Bearer {token}\r\nAccept: */*\r\n\r\n",
        "shared-cookie": f"POST /shared/run?x=1 HTTP/1.1\r\nHost: app\r\nCookie: a=1; tg={token}\r\n"
                         f"Content-Length: 0\r\nX-Tollgate-Sub: mallory\r\n\r\n",
        "query-token": f"GET /api/x?access_token={token}&y=2 HTTP/1.1\r\nHost: app\r\n\r\n",
        "spoofed-claims": "GET / HTTP/1.1\r\nHost: app\r\nX-Tollgate-Sub: root\r\n"
                          "x-tollgate-team: admins\r\n\r\n",
        "websocket": "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, Upgrade\r\n"
                     "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\nOrigin: https://app\r\n\r\n",
        "hop-by-hop": "GET /x HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, x-secret, TE\r\n"
                      "Keep-Alive: timeout=5\r\nX-Secret: 1\r\nTE: gzip, trailers\r\n"
                      "Proxy-Connection: keep-alive\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\n\r\n",
        "grpc": "POST /pkg.Service/Method HTTP/1.1\r\nHost: app\r\nContent-Type: application/grpc\r\n"
                "TE: trailers\r\n\r\n",
        "forwarded": "GET /healthz HTTP/1.1\r\nHost: app\r\n"
                     "X-Forwarded-For: 203.0.113.9, 10.1.2.3\r\nX-Forwarded-For: ::1\r\n\r\n",
        "admin": "DELETE /admin/users HTTP/1.1\r\nHost: app\r\n\r\n",
        "http10": "GET /api HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "absolute-form": "GET http://app.example:8080/api?q HTTP/1.1\r\n"
                         "Flyte-Authorization: bearer abc.def.ghi\r\n\r\n",
    }
    for name, head in heads.items():
        write("request_head", name, head)


# The host's imports, as `filters::host::linker` provides them, sorted by
# (module, name): a call names its import by index in this list.
ENV = """proxy_log proxy_get_log_level proxy_get_current_time_nanoseconds
proxy_set_tick_period_milliseconds proxy_get_configuration proxy_get_buffer_bytes
proxy_get_buffer_status proxy_set_buffer_bytes proxy_get_header_map_pairs
proxy_set_header_map_pairs proxy_get_header_map_size proxy_get_header_map_value
proxy_add_header_map_value proxy_replace_header_map_value proxy_remove_header_map_value
proxy_get_property proxy_set_property proxy_send_local_response proxy_continue_stream
proxy_close_stream proxy_continue_request proxy_continue_response proxy_clear_route_cache
proxy_done proxy_set_effective_context proxy_get_shared_data proxy_set_shared_data
proxy_define_metric proxy_increment_metric proxy_record_metric proxy_get_metric
proxy_register_shared_queue proxy_resolve_shared_queue proxy_enqueue_shared_queue
proxy_dequeue_shared_queue proxy_http_call proxy_grpc_call proxy_grpc_stream
proxy_grpc_send proxy_grpc_cancel proxy_grpc_close proxy_get_status
proxy_call_foreign_function""".split()
WASI = """fd_write fd_read fd_seek fd_close fd_fdstat_get fd_prestat_get fd_prestat_dir_name
path_open environ_sizes_get environ_get args_sizes_get args_get clock_time_get random_get
proc_exit sched_yield poll_oneoff""".split()
IMPORTS = sorted([("env", n) for n in ENV]
                 + [(m, n) for m in ("wasi_snapshot_preview1", "wasi_unstable") for n in WASI])
I64_PARAMS = {("proxy_increment_metric", 1), ("proxy_record_metric", 1),
              ("clock_time_get", 1), ("fd_seek", 1), ("path_open", 5), ("path_open", 6)}


def check_imports():
    """The list above must match host.rs's linker (names, not order)."""
    text = (ROOT / "proxy/src/filters/host.rs").read_text()
    linked = set(re.findall(r'func_wrap\(\s*(?:env|wasi),\s*"(\w+)"', text))
    listed = set(ENV) | set(WASI)
    if linked != listed:
        raise SystemExit(f"update IMPORTS: linked but not listed {sorted(linked - listed)}, "
                         f"listed but not linked {sorted(listed - linked)}")


def small(v):
    """An i32 argument chosen as a small value (selector 3), or an in-bounds
    offset (selector 0) when it does not fit a byte."""
    if 0 <= v < 256:
        return bytes([3, v])
    if 0 <= v < 65536:
        return bytes([0]) + struct.pack("<H", v)
    return bytes([2]) + struct.pack("<I", v & 0xFFFFFFFF)


def call(name, *args, module="env", block=0x100):
    index = IMPORTS.index((module, name))
    out = bytes([index, 0]) + struct.pack("<H", block)  # allocator: 0x8000 + block
    for i, a in enumerate(args):
        if (name, i) in I64_PARAMS:
            out += bytes([0, a])
        else:
            out += small(a) if isinstance(a, int) else a
    return out


def serialized_map(pairs):
    out = struct.pack("<I", len(pairs))
    for k, v in pairs:
        out += struct.pack("<II", len(k), len(v))
    for k, v in pairs:
        out += k + b"\0" + v + b"\0"
    return out


def wasm_host_calls():
    check_imports()
    # Initial memory (at 0): strings and a serialized map the calls point at.
    mem = bytearray(512)
    strings = {0x00: b"x-custom", 0x10: b"fuzz value", 0x20: b":path",
               0x30: b"request\0path", 0x40: b"hello from the guest", 0x60: b"counter"}
    for at, s in strings.items():
        mem[at:at + len(s)] = s
    m = serialized_map([(b"x-a", b"1"), (b"x-b", b"22")])
    mem[0x80:0x80 + len(m)] = m
    struct.pack_into("<IIII", mem, 0x100, 0x40, 20, 0x10, 10)  # two iovecs
    prefix = bytes([len(mem) // 16]) + bytes(mem)
    end = bytes([1, 0])  # selector 1: 65536 - 0, the end of memory
    past = bytes([5, 0x10, 0])  # selector 5: 65536 + 16
    neg = bytes([4, 1])  # selector 4: -1
    seeds = {
        "log": [call("proxy_log", 2, 0x40, 20), call("proxy_log", 2, 0xFFF0, 0x20),
                call("proxy_log", 9, 0x40, 20)],
        "headers": [call("proxy_get_header_map_pairs", 0, 0x200, 0x204),
                    call("proxy_add_header_map_value", 0, 0x00, 8, 0x10, 10),
                    call("proxy_get_header_map_value", 0, 0x00, 8, 0x200, 0x204),
                    call("proxy_replace_header_map_value", 0, 0x20, 5, 0x10, 10),
                    call("proxy_remove_header_map_value", 0, 0x00, 8),
                    call("proxy_set_header_map_pairs", 2, 0x80, len(m)),
                    call("proxy_get_header_map_size", 2, end)],
        "bounds": [call("proxy_get_header_map_pairs", 0, end, 0x204),
                   call("proxy_get_header_map_value", 0, past, 8, 0x200, 0x204),
                   call("proxy_log", 2, 0x40, neg),
                   call("proxy_get_buffer_bytes", 0, 0, 100, 0x200, 0x204, block=0x7FFC)],
        "buffers": [call("proxy_get_buffer_status", 0, 0x200, 0x204),
                    call("proxy_get_buffer_bytes", 0, 2, 4, 0x200, 0x204),
                    call("proxy_set_buffer_bytes", 0, 0, 5, 0x40, 20),
                    call("proxy_get_configuration", 0x200, 0x204)],
        "properties": [call("proxy_get_property", 0x30, 12, 0x200, 0x204),
                       call("proxy_set_property", 0x30, 12, 0x10, 10),
                       call("proxy_send_local_response", 403, 0x40, 20, 0x10, 10, 0x80, len(m), 7)],
        "shared-data": [call("proxy_set_shared_data", 0x00, 8, 0x10, 10, 0),
                        call("proxy_get_shared_data", 0x00, 8, 0x200, 0x204, 0x208),
                        call("proxy_set_shared_data", 0x00, 8, 0x10, 10, 7)],
        "metrics": [call("proxy_define_metric", 0, 0x60, 7, 0x200),
                    call("proxy_increment_metric", 1, 5),
                    call("proxy_record_metric", 1, 3),
                    call("proxy_get_metric", 1, 0x208)],
        "wasi": [call("fd_write", 1, 0x100, 2, 0x200, module="wasi_snapshot_preview1"),
                 call("clock_time_get", 0, 1, 0x208, module="wasi_snapshot_preview1"),
                 call("random_get", 0x210, 16, module="wasi_unstable"),
                 call("environ_sizes_get", 0x200, 0x204, module="wasi_unstable"),
                 call("fd_fdstat_get", 1, 0x220, module="wasi_snapshot_preview1"),
                 call("proc_exit", 3, module="wasi_snapshot_preview1")],
        "unimplemented": [call("proxy_http_call", *([0x10] * 10)), call("proxy_grpc_close", 1),
                          call("proxy_set_tick_period_milliseconds", 100)],
    }
    for name, calls in seeds.items():
        write("wasm_host_calls", name, prefix + b"".join(calls))


if __name__ == "__main__":
    admission_review()
    pod_patch()
    jwt_token()
    request_head()
    wasm_host_calls()
