/* Shared by the fault filters (tests only): they misbehave in
 * proxy_on_request_headers when the request has an `x-fault` header, or on
 * every request with the configuration {"always": true}. Otherwise they add
 * `x-fault-instance-requests: <n>`, the requests this instance has seen, so
 * tests can tell a fresh instance from a reused one. */
#include "proxy_wasm.h"

static bool always;
static uint32_t seen;

PW_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root, size_t size) {
  (void)root;
  pw_str config;
  if (size > 0 && pw_get_buffer(PW_PLUGIN_CONFIGURATION, &config)) {
    pw_json doc = pw_json_parse(config.ptr, config.len, 0);
    always = pw_json_get(doc, "always").kind == PW_JSON_TRUE;
    pw_free((void *)config.ptr);
  }
  return 1;
}

static bool should_fault(void) {
  pw_str v;
  if (always) return true;
  if (pw_get_header(PW_HTTP_REQUEST_HEADERS, pw_cstr("x-fault"), &v)) {
    pw_free((void *)v.ptr);
    return true;
  }
  char digits[12];
  size_t n = 0;
  uint32_t x = ++seen;
  char rev[12];
  do {
    rev[n++] = (char)('0' + x % 10);
    x /= 10;
  } while (x);
  for (size_t i = 0; i < n; i++) digits[i] = rev[n - 1 - i];
  pw_replace_header(PW_HTTP_REQUEST_HEADERS, pw_cstr("x-fault-instance-requests"),
                    (pw_str){digits, n});
  return false;
}
