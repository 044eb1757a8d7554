/* Test filter: ticks (issue #21). proxy_on_configure asks for a tick
 * period of {"tickMs": N} (0 or absent: none); each proxy_on_tick adds one
 * to the shared-data counter `ticker.ticks`; each request gets
 * `x-ticks: <counter>`. */
#include "proxy_wasm.h"

PW_IMPORT(proxy_set_tick_period_milliseconds)
uint32_t proxy_set_tick_period_milliseconds(uint32_t period);

static const char KEY[] = "ticker.ticks";

static uint32_t ticks(uint32_t *cas) {
  uint8_t *v = 0;
  size_t n = 0;
  uint32_t count = 0;
  *cas = 0;
  if (proxy_get_shared_data(KEY, sizeof(KEY) - 1, &v, &n, cas) == PW_OK && v) {
    for (size_t i = 0; i < n && i < 10; i++) count = count * 10 + (uint32_t)(v[i] - '0');
    pw_free(v);
  }
  return count;
}

static size_t digits(uint32_t x, char *out) {
  char rev[12];
  size_t n = 0;
  do {
    rev[n++] = (char)('0' + x % 10);
    x /= 10;
  } while (x);
  for (size_t i = 0; i < n; i++) out[i] = rev[n - 1 - i];
  return n;
}

PW_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root, size_t size) {
  (void)root;
  pw_str config;
  if (size > 0 && pw_get_buffer(PW_PLUGIN_CONFIGURATION, &config)) {
    pw_json doc = pw_json_parse(config.ptr, config.len, 0);
    pw_json ms = pw_json_get(doc, "tickMs");
    uint32_t period = 0;
    if (ms.kind == PW_JSON_NUMBER) {
      for (size_t i = 0; i < ms.len && ms.ptr[i] >= '0' && ms.ptr[i] <= '9'; i++)
        period = period * 10 + (uint32_t)(ms.ptr[i] - '0');
    }
    pw_free((void *)config.ptr);
    if (proxy_set_tick_period_milliseconds(period) != PW_OK) return 0;
  }
  return 1;
}

PW_EXPORT(proxy_on_tick) void proxy_on_tick(uint32_t root) {
  (void)root;
  uint32_t cas;
  uint32_t count = ticks(&cas) + 1;
  char out[12];
  size_t n = digits(count, out);
  proxy_set_shared_data(KEY, sizeof(KEY) - 1, (const uint8_t *)out, n, cas);
}

PW_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, size_t n, uint32_t end_of_stream) {
  (void)ctx, (void)n, (void)end_of_stream;
  uint32_t cas;
  char out[12];
  size_t len = digits(ticks(&cas), out);
  pw_replace_header(PW_HTTP_REQUEST_HEADERS, pw_cstr("x-ticks"), (pw_str){out, len});
  return PW_CONTINUE;
}
