/*
 * header_transform: adds, sets, removes and renames request and response
 * headers, as its JSON configuration says:
 *
 *   {
 *     "request":  {"rename": {"x-old": "x-new"}, "remove": ["x-drop"],
 *                  "set": {"x-env": "prod"}, "add": {"x-via": "tollgate"}},
 *     "response": {"set": {"cache-control": "no-store"}}
 *   }
 *
 * Each section and each operation is optional. They apply in the order
 * rename, remove, set (replace or create), add (append another value).
 * Names are case-insensitive (the host lowercases them).
 */
#include "proxy_wasm.h"

typedef struct {
  pw_str *names;
  pw_str *values;
  size_t n;
} pairs;

typedef struct {
  pairs rename, set, add;
  pw_str *remove;
  size_t n_remove;
} ops;

static ops request_ops, response_ops;

static bool load_pairs(pw_json obj, pairs *out) {
  pw_json k, v;
  size_t pos = 0, n = 0;
  if (obj.kind == PW_JSON_ERROR) return true;
  if (obj.kind != PW_JSON_OBJECT) return false;
  while (pw_json_next_member(obj, &pos, &k, &v)) n++;
  out->names = pw_malloc(sizeof(pw_str) * (n + 1));
  out->values = pw_malloc(sizeof(pw_str) * (n + 1));
  if (!out->names || !out->values) return false;
  pos = 0;
  out->n = 0;
  while (pw_json_next_member(obj, &pos, &k, &v)) {
    if (!pw_json_string(k, &out->names[out->n])) return false;
    if (!pw_json_string(v, &out->values[out->n])) return false;
    out->n++;
  }
  return pos != (size_t)-1;
}

static bool load_ops(pw_json section, ops *out) {
  if (section.kind == PW_JSON_ERROR) return true;
  if (section.kind != PW_JSON_OBJECT) return false;
  if (!load_pairs(pw_json_get(section, "rename"), &out->rename)) return false;
  if (!load_pairs(pw_json_get(section, "set"), &out->set)) return false;
  if (!load_pairs(pw_json_get(section, "add"), &out->add)) return false;
  pw_json remove = pw_json_get(section, "remove");
  if (remove.kind == PW_JSON_ERROR) return true;
  if (remove.kind != PW_JSON_ARRAY) return false;
  pw_json v;
  size_t pos = 0, n = 0;
  while (pw_json_next_element(remove, &pos, &v)) n++;
  out->remove = pw_malloc(sizeof(pw_str) * (n + 1));
  if (!out->remove) return false;
  pos = 0;
  while (pw_json_next_element(remove, &pos, &v)) {
    if (!pw_json_string(v, &out->remove[out->n_remove])) return false;
    out->n_remove++;
  }
  return true;
}

PW_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root, size_t size) {
  (void)root;
  pw_str config;
  if (size == 0) return 1; /* no configuration: nothing to do */
  if (!pw_get_buffer(PW_PLUGIN_CONFIGURATION, &config)) return 0;
  pw_json doc = pw_json_parse(config.ptr, config.len, 0);
  if (doc.kind != PW_JSON_OBJECT) {
    pw_log(PW_ERROR, "header_transform: the configuration must be a JSON object");
    return 0;
  }
  if (!load_ops(pw_json_get(doc, "request"), &request_ops) ||
      !load_ops(pw_json_get(doc, "response"), &response_ops)) {
    pw_log(PW_ERROR, "header_transform: request/response sections: "
                     "rename/set/add must map strings to strings, remove must list strings");
    return 0;
  }
  pw_free((void *)config.ptr); /* the parsed strings are copies */
  return 1;
}

static void apply(uint32_t map, const ops *o) {
  for (size_t i = 0; i < o->rename.n; i++) {
    pw_str value;
    if (pw_get_header(map, o->rename.names[i], &value)) {
      pw_remove_header(map, o->rename.names[i]);
      pw_replace_header(map, o->rename.values[i], value);
      pw_free((void *)value.ptr);
    }
  }
  for (size_t i = 0; i < o->n_remove; i++) pw_remove_header(map, o->remove[i]);
  for (size_t i = 0; i < o->set.n; i++) pw_replace_header(map, o->set.names[i], o->set.values[i]);
  for (size_t i = 0; i < o->add.n; i++) pw_add_header(map, o->add.names[i], o->add.values[i]);
}

PW_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, size_t n, uint32_t end_of_stream) {
  (void)ctx, (void)n, (void)end_of_stream;
  apply(PW_HTTP_REQUEST_HEADERS, &request_ops);
  return PW_CONTINUE;
}

PW_EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, size_t n, uint32_t end_of_stream) {
  (void)ctx, (void)n, (void)end_of_stream;
  apply(PW_HTTP_RESPONSE_HEADERS, &response_ops);
  return PW_CONTINUE;
}
