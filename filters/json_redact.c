/*
 * json_redact: replaces the values of configured fields, at any depth, in
 * JSON response bodies (content-type containing "json").
 *
 *   {"fields": ["password", "token"], "replacement": "[REDACTED]"}
 *
 * "replacement" (default "[REDACTED]") is any JSON value; a string is
 * written as a JSON string. The body is buffered (PAUSE until end of
 * stream), rewritten compactly, and content-length is dropped. A body that
 * is not valid JSON passes unchanged (logged).
 */
#include "proxy_wasm.h"

static pw_str *fields;
static size_t n_fields;
static pw_str replacement = {"\"[REDACTED]\"", 12};

PW_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root, size_t size) {
  (void)root;
  pw_str config;
  if (size == 0 || !pw_get_buffer(PW_PLUGIN_CONFIGURATION, &config)) {
    pw_log(PW_ERROR, "json_redact: a configuration with \"fields\" is required");
    return 0;
  }
  pw_json doc = pw_json_parse(config.ptr, config.len, 0);
  pw_json list = pw_json_get(doc, "fields");
  if (doc.kind != PW_JSON_OBJECT || list.kind != PW_JSON_ARRAY) {
    pw_log(PW_ERROR, "json_redact: \"fields\" must be a list of field names");
    return 0;
  }
  pw_json v;
  size_t pos = 0, n = 0;
  while (pw_json_next_element(list, &pos, &v)) n++;
  fields = pw_malloc(sizeof(pw_str) * (n + 1));
  if (!fields) return 0;
  pos = 0;
  while (pw_json_next_element(list, &pos, &v)) {
    if (!pw_json_string(v, &fields[n_fields])) {
      pw_log(PW_ERROR, "json_redact: \"fields\" must be a list of strings");
      return 0;
    }
    n_fields++;
  }
  pw_json r = pw_json_get(doc, "replacement");
  if (r.kind != PW_JSON_ERROR) replacement = (pw_str){r.ptr, r.len}; /* raw JSON text */
  return 1; /* config text stays: replacement points into it */
}

/* Which stream contexts have a JSON response. */
#define SLOTS 64
static uint32_t json_ctx[SLOTS];

static void mark(uint32_t ctx, bool on) {
  for (int i = 0; i < SLOTS; i++) {
    if (on && json_ctx[i] == 0) {
      json_ctx[i] = ctx;
      return;
    }
    if (!on && json_ctx[i] == ctx) json_ctx[i] = 0;
  }
}
static bool marked(uint32_t ctx) {
  for (int i = 0; i < SLOTS; i++)
    if (json_ctx[i] == ctx) return true;
  return false;
}

static bool contains(pw_str hay, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = 0; i + n <= hay.len; i++) {
    size_t k = 0;
    while (k < n && (hay.ptr[i + k] | 0x20) == needle[k]) k++;
    if (k == n) return true;
  }
  return false;
}

PW_EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, size_t n, uint32_t end_of_stream) {
  (void)n;
  pw_str ct;
  if (end_of_stream || !pw_get_header(PW_HTTP_RESPONSE_HEADERS, pw_cstr("content-type"), &ct))
    return PW_CONTINUE;
  bool json = contains(ct, "json");
  pw_free((void *)ct.ptr);
  if (json) {
    mark(ctx, true);
    pw_remove_header(PW_HTTP_RESPONSE_HEADERS, pw_cstr("content-length"));
  }
  return PW_CONTINUE;
}

static bool redacted(pw_json key) {
  pw_str name;
  if (!pw_json_string(key, &name)) return false;
  bool hit = false;
  for (size_t i = 0; i < n_fields && !hit; i++) hit = pw_str_eq(name, fields[i]);
  pw_free((void *)name.ptr);
  return hit;
}

static bool emit(pw_buf *out, pw_json v) {
  if (v.kind == PW_JSON_OBJECT) {
    pw_json k, m;
    size_t pos = 0;
    bool first = true;
    if (!pw_buf_push(out, "{", 1)) return false;
    while (pw_json_next_member(v, &pos, &k, &m)) {
      if (!first && !pw_buf_push(out, ",", 1)) return false;
      first = false;
      if (!pw_buf_push(out, k.ptr, k.len) || !pw_buf_push(out, ":", 1)) return false;
      if (redacted(k)) {
        if (!pw_buf_push(out, replacement.ptr, replacement.len)) return false;
      } else if (!emit(out, m)) {
        return false;
      }
    }
    return pos != (size_t)-1 && pw_buf_push(out, "}", 1);
  }
  if (v.kind == PW_JSON_ARRAY) {
    pw_json e;
    size_t pos = 0;
    bool first = true;
    if (!pw_buf_push(out, "[", 1)) return false;
    while (pw_json_next_element(v, &pos, &e)) {
      if (!first && !pw_buf_push(out, ",", 1)) return false;
      first = false;
      if (!emit(out, e)) return false;
    }
    return pos != (size_t)-1 && pw_buf_push(out, "]", 1);
  }
  return pw_buf_push(out, v.ptr, v.len);
}

PW_EXPORT(proxy_on_response_body)
uint32_t proxy_on_response_body(uint32_t ctx, size_t size, uint32_t end_of_stream) {
  if (!marked(ctx)) return PW_CONTINUE;
  if (!end_of_stream) return PW_PAUSE; /* buffer until the whole document is here */
  if (size == 0) return PW_CONTINUE;
  uint8_t *data = 0;
  size_t got = 0;
  if (proxy_get_buffer_bytes(PW_HTTP_RESPONSE_BODY, 0, size, &data, &got) != PW_OK)
    return PW_CONTINUE;
  size_t end = 0;
  pw_json doc = pw_json_parse((const char *)data, got, &end);
  pw_buf out = {0};
  if (doc.kind == PW_JSON_ERROR) {
    pw_log(PW_WARN, "json_redact: response body is not valid JSON; passed unchanged");
  } else if (emit(&out, doc)) {
    proxy_set_buffer_bytes(PW_HTTP_RESPONSE_BODY, 0, got, (const uint8_t *)out.ptr, out.len);
  }
  pw_buf_free(&out);
  pw_free(data);
  return PW_CONTINUE;
}

PW_EXPORT(proxy_on_delete) void proxy_on_delete(uint32_t ctx) { mark(ctx, false); }
