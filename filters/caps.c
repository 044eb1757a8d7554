/* Test filter: per request, defines the metric named by `x-metric` and
 * sets the shared-data key `x-key` to `x-size` bytes, reporting the
 * statuses as request headers x-status-metric and x-status-set (per-filter
 * caps: maxGuestMetrics, maxSharedDataKeys, maxSharedDataValueBytes). */
#include "proxy_wasm.h"

static uint8_t value[70000];

static void report(const char *name, uint32_t status) {
  char v[4] = {(char)('0' + status / 10), (char)('0' + status % 10), 0, 0};
  pw_replace_header(PW_HTTP_REQUEST_HEADERS, pw_cstr(name), (pw_str){v, 2});
}

static size_t to_size(pw_str s) {
  size_t n = 0;
  for (size_t i = 0; i < s.len; i++) n = n * 10 + (size_t)(s.ptr[i] - '0');
  return n;
}

PW_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, size_t n, uint32_t end_of_stream) {
  (void)ctx, (void)n, (void)end_of_stream;
  pw_str metric = {0, 0}, key = {0, 0}, size_header = {0, 0};
  if (pw_get_header(PW_HTTP_REQUEST_HEADERS, pw_cstr("x-metric"), &metric)) {
    uint32_t id = 0;
    report("x-status-metric", proxy_define_metric(0, metric.ptr, metric.len, &id));
  }
  if (pw_get_header(PW_HTTP_REQUEST_HEADERS, pw_cstr("x-key"), &key)) {
    pw_get_header(PW_HTTP_REQUEST_HEADERS, pw_cstr("x-size"), &size_header);
    size_t size = to_size(size_header);
    if (size > sizeof value) size = sizeof value;
    report("x-status-set", proxy_set_shared_data(key.ptr, key.len, value, size, 0));
  }
  return PW_CONTINUE;
}
