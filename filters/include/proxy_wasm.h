/*
 * A small C SDK for proxy-wasm ABI 0.2.1 filters (Tollgate, Envoy, ...).
 *
 * - The host functions (imports from module "env") with the spec's
 *   signatures, and the status / enum values.
 * - PW_EXPORT(name) marks a callback the host calls (proxy_on_*).
 * - A heap (pw_malloc / pw_free) that also backs proxy_on_memory_allocate,
 *   so memory the host returns is freed with pw_free.
 * - Helpers: headers, buffers, properties, logging, a minimal JSON reader.
 *
 * Build with filters/build.sh (clang --target=wasm32, no libc).
 */
#ifndef TOLLGATE_PROXY_WASM_H
#define TOLLGATE_PROXY_WASM_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define PW_IMPORT(name) __attribute__((import_module("env"), import_name(#name)))
#define PW_EXPORT(name) __attribute__((export_name(#name)))

/* proxy_status_t */
enum {
  PW_OK = 0,
  PW_NOT_FOUND = 1,
  PW_BAD_ARGUMENT = 2,
  PW_SERIALIZATION_FAILURE = 3,
  PW_PARSE_FAILURE = 4,
  PW_INVALID_MEMORY_ACCESS = 6,
  PW_EMPTY = 7,
  PW_CAS_MISMATCH = 8,
  PW_INTERNAL_FAILURE = 10,
  PW_UNIMPLEMENTED = 12,
};

/* proxy_action_t */
enum { PW_CONTINUE = 0, PW_PAUSE = 1 };

/* proxy_log_level_t */
enum { PW_TRACE = 0, PW_DEBUG = 1, PW_INFO = 2, PW_WARN = 3, PW_ERROR = 4, PW_CRITICAL = 5 };

/* proxy_buffer_type_t */
enum {
  PW_HTTP_REQUEST_BODY = 0,
  PW_HTTP_RESPONSE_BODY = 1,
  PW_VM_CONFIGURATION = 6,
  PW_PLUGIN_CONFIGURATION = 7,
};

/* proxy_map_type_t */
enum {
  PW_HTTP_REQUEST_HEADERS = 0,
  PW_HTTP_REQUEST_TRAILERS = 1,
  PW_HTTP_RESPONSE_HEADERS = 2,
  PW_HTTP_RESPONSE_TRAILERS = 3,
};

/* proxy_stream_type_t */
enum { PW_STREAM_HTTP_REQUEST = 0, PW_STREAM_HTTP_RESPONSE = 1 };

/* proxy_metric_type_t */
enum { PW_METRIC_COUNTER = 0, PW_METRIC_GAUGE = 1, PW_METRIC_HISTOGRAM = 2 };

/* ---- host functions (ABI 0.2.1) ---- */
PW_IMPORT(proxy_log) uint32_t proxy_log(uint32_t level, const char *data, size_t size);
PW_IMPORT(proxy_get_log_level) uint32_t proxy_get_log_level(uint32_t *level);
PW_IMPORT(proxy_get_buffer_bytes)
uint32_t proxy_get_buffer_bytes(uint32_t type, size_t start, size_t max, uint8_t **data, size_t *size);
PW_IMPORT(proxy_get_buffer_status)
uint32_t proxy_get_buffer_status(uint32_t type, size_t *size, uint32_t *flags);
PW_IMPORT(proxy_set_buffer_bytes)
uint32_t proxy_set_buffer_bytes(uint32_t type, size_t start, size_t size, const uint8_t *data, size_t len);
PW_IMPORT(proxy_get_header_map_pairs)
uint32_t proxy_get_header_map_pairs(uint32_t type, uint8_t **data, size_t *size);
PW_IMPORT(proxy_set_header_map_pairs)
uint32_t proxy_set_header_map_pairs(uint32_t type, const uint8_t *data, size_t size);
PW_IMPORT(proxy_get_header_map_size) uint32_t proxy_get_header_map_size(uint32_t type, size_t *size);
PW_IMPORT(proxy_get_header_map_value)
uint32_t proxy_get_header_map_value(uint32_t type, const char *key, size_t key_size, uint8_t **value,
                                    size_t *value_size);
PW_IMPORT(proxy_add_header_map_value)
uint32_t proxy_add_header_map_value(uint32_t type, const char *key, size_t key_size, const char *value,
                                    size_t value_size);
PW_IMPORT(proxy_replace_header_map_value)
uint32_t proxy_replace_header_map_value(uint32_t type, const char *key, size_t key_size,
                                        const char *value, size_t value_size);
PW_IMPORT(proxy_remove_header_map_value)
uint32_t proxy_remove_header_map_value(uint32_t type, const char *key, size_t key_size);
PW_IMPORT(proxy_get_property)
uint32_t proxy_get_property(const char *path, size_t path_size, uint8_t **value, size_t *value_size);
PW_IMPORT(proxy_set_property)
uint32_t proxy_set_property(const char *path, size_t path_size, const char *value, size_t value_size);
PW_IMPORT(proxy_send_local_response)
uint32_t proxy_send_local_response(uint32_t status_code, const char *details, size_t details_size,
                                   const char *body, size_t body_size, const uint8_t *headers,
                                   size_t headers_size, int32_t grpc_status);
PW_IMPORT(proxy_continue_stream) uint32_t proxy_continue_stream(uint32_t stream_type);
PW_IMPORT(proxy_close_stream) uint32_t proxy_close_stream(uint32_t stream_type);
PW_IMPORT(proxy_define_metric)
uint32_t proxy_define_metric(uint32_t type, const char *name, size_t name_size, uint32_t *id);
PW_IMPORT(proxy_increment_metric) uint32_t proxy_increment_metric(uint32_t id, int64_t delta);
PW_IMPORT(proxy_record_metric) uint32_t proxy_record_metric(uint32_t id, uint64_t value);
PW_IMPORT(proxy_get_metric) uint32_t proxy_get_metric(uint32_t id, uint64_t *value);
PW_IMPORT(proxy_get_shared_data)
uint32_t proxy_get_shared_data(const char *key, size_t key_size, uint8_t **value, size_t *value_size,
                               uint32_t *cas);
PW_IMPORT(proxy_set_shared_data)
uint32_t proxy_set_shared_data(const char *key, size_t key_size, const uint8_t *value,
                               size_t value_size, uint32_t cas);
PW_IMPORT(proxy_get_current_time_nanoseconds) uint32_t proxy_get_current_time_nanoseconds(uint64_t *t);

/* ---- heap ---- */
void *pw_malloc(size_t size);
void pw_free(void *ptr);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* ---- strings ---- */
typedef struct {
  const char *ptr;
  size_t len;
} pw_str;

static inline pw_str pw_cstr(const char *s) { return (pw_str){s, strlen(s)}; }
static inline bool pw_str_eq(pw_str a, pw_str b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}
/* ASCII case-insensitive equality (header names). */
bool pw_str_ieq(pw_str a, pw_str b);

/* A growable byte buffer on the heap. */
typedef struct {
  char *ptr;
  size_t len, cap;
} pw_buf;
bool pw_buf_push(pw_buf *b, const char *data, size_t len);
void pw_buf_free(pw_buf *b);

/* ---- helpers ---- */
void pw_log(uint32_t level, const char *msg);
/* Header value into *out (heap, pw_free it); false when absent. */
bool pw_get_header(uint32_t map, pw_str name, pw_str *out);
uint32_t pw_replace_header(uint32_t map, pw_str name, pw_str value);
uint32_t pw_add_header(uint32_t map, pw_str name, pw_str value);
uint32_t pw_remove_header(uint32_t map, pw_str name);
/* Property by path segments joined with NUL ("jwt\0claims\0team"). */
bool pw_get_property(const char *path, size_t path_size, pw_str *out);
/* The whole buffer (plugin configuration, body): heap, pw_free it. */
bool pw_get_buffer(uint32_t type, pw_str *out);
/* Sends a local response with no extra headers. grpc_status -1: derived. */
uint32_t pw_send_response(uint32_t status, const char *details, pw_str body, int32_t grpc_status);

/* ---- a minimal JSON reader (RFC 8259 syntax, values as spans) ---- */
typedef enum { PW_JSON_ERROR = 0, PW_JSON_OBJECT, PW_JSON_ARRAY, PW_JSON_STRING,
               PW_JSON_NUMBER, PW_JSON_TRUE, PW_JSON_FALSE, PW_JSON_NULL } pw_json_kind;
typedef struct {
  pw_json_kind kind;
  const char *ptr; /* the value's text, quotes included for strings */
  size_t len;
} pw_json;

/* Parses one value starting at text (whitespace skipped). *end: past it. */
pw_json pw_json_parse(const char *text, size_t len, size_t *end);
/* Iterates an object: call with *pos = 0; returns false at the end or on
 * a syntax error (then *pos is SIZE_MAX). key is the raw string text
 * (quotes included). */
bool pw_json_next_member(pw_json object, size_t *pos, pw_json *key, pw_json *value);
/* Iterates an array likewise. */
bool pw_json_next_element(pw_json array, size_t *pos, pw_json *value);
/* A member by (unescaped-equal) key; kind ERROR when missing. */
pw_json pw_json_get(pw_json object, const char *key);
/* A string value unescaped into the heap (pw_free it). \uXXXX is decoded to
 * UTF-8. false if v is not a string or malformed. */
bool pw_json_string(pw_json v, pw_str *out);

#endif
