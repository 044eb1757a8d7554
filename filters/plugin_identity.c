/* Test filter: reports what identifies it, and fails where its root id
 * says (issue #21).
 *
 * Each request gets `x-plugin-name`, `x-plugin-root-id`, `x-plugin-vm-id`
 * and `x-node-id` (the `plugin_*` and `node.id` properties; a header is
 * absent when its property is NOT_FOUND).
 *
 * Like SDKs that pick a root context by Envoy's root_id (AssemblyScript,
 * Go), it reads `plugin_root_id` in proxy_on_context_create of the root
 * context, and with these root ids it fails on purpose:
 *   exit-on-root-create    proc_exit(255) creating the root context
 *   trap-on-root-create    `unreachable` there
 *   exit-on-context-create proc_exit(3) creating each stream context
 *   refuse-vm-start        proxy_on_vm_start returns false
 * and the plugin configuration "refuse" makes proxy_on_configure return
 * false. */
#include "proxy_wasm.h"

__attribute__((import_module("wasi_snapshot_preview1"), import_name("proc_exit")))
void proc_exit(uint32_t code);

static pw_str root_id;

static bool root_id_is(const char *s) { return pw_str_eq(root_id, pw_cstr(s)); }

PW_EXPORT(proxy_on_context_create)
void proxy_on_context_create(uint32_t ctx, uint32_t root) {
  (void)ctx;
  if (root == 0) {
    static const char path[] = "plugin_root_id";
    if (!pw_get_property(path, sizeof(path) - 1, &root_id)) root_id = pw_cstr("");
    if (root_id_is("exit-on-root-create")) proc_exit(255);
    if (root_id_is("trap-on-root-create")) __builtin_trap();
    return;
  }
  if (root_id_is("exit-on-context-create")) proc_exit(3);
}

PW_EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t root, size_t size) {
  (void)root, (void)size;
  return root_id_is("refuse-vm-start") ? 0 : 1;
}

PW_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root, size_t size) {
  (void)root;
  pw_str config;
  uint32_t ok = 1;
  if (size > 0 && pw_get_buffer(PW_PLUGIN_CONFIGURATION, &config)) {
    if (pw_str_eq(config, pw_cstr("refuse"))) ok = 0;
    pw_free((void *)config.ptr);
  }
  return ok;
}

static void report(const char *path, size_t path_size, const char *header) {
  pw_str v;
  if (!pw_get_property(path, path_size, &v)) return;
  pw_replace_header(PW_HTTP_REQUEST_HEADERS, pw_cstr(header), v);
  pw_free((void *)v.ptr);
}

#define REPORT(path, header) report(path, sizeof(path) - 1, header)

PW_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, size_t n, uint32_t end_of_stream) {
  (void)ctx, (void)n, (void)end_of_stream;
  REPORT("plugin_name", "x-plugin-name");
  REPORT("plugin_root_id", "x-plugin-root-id");
  REPORT("plugin_vm_id", "x-plugin-vm-id");
  REPORT("node\0id", "x-node-id");
  REPORT("request\0useragent", "x-request-useragent");
  REPORT("connection\0tls_version", "x-connection-tls-version");
  return PW_CONTINUE;
}
