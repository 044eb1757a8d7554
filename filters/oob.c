/* Test filter: hands the host out-of-bounds pointers and reports the
 * statuses it got back as request headers x-status-<call>. */
#include "proxy_wasm.h"

#define BAD ((void *)0xFFFFFFF0u)

static void report(const char *name, uint32_t status) {
  char v[4] = {(char)('0' + status / 10), (char)('0' + status % 10), 0, 0};
  pw_replace_header(PW_HTTP_REQUEST_HEADERS, pw_cstr(name), (pw_str){v, 2});
}

PW_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, size_t n, uint32_t end_of_stream) {
  (void)ctx, (void)n, (void)end_of_stream;
  size_t size = 0;
  report("x-status-log", proxy_log(PW_INFO, BAD, 64));
  report("x-status-pairs", proxy_get_header_map_pairs(PW_HTTP_REQUEST_HEADERS, BAD, &size));
  report("x-status-size", proxy_get_header_map_size(PW_HTTP_REQUEST_HEADERS, BAD));
  report("x-status-replace", proxy_replace_header_map_value(PW_HTTP_REQUEST_HEADERS, "x-a", 3, BAD, 1000));
  report("x-status-set-pairs", proxy_set_header_map_pairs(PW_HTTP_REQUEST_HEADERS, BAD, 0x7fffffff));
  report("x-status-property", proxy_get_property(BAD, 8, BAD, BAD));
  report("x-status-bad-map", proxy_get_header_map_size(99, &size));
  report("x-status-time", proxy_get_current_time_nanoseconds(BAD));
  return PW_CONTINUE;
}
