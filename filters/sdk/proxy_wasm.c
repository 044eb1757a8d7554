/* The C SDK's implementation: heap, libc basics, helpers, JSON reader. */
#include "proxy_wasm.h"

/* Marks the module as a proxy-wasm ABI 0.2.1 plugin. */
PW_EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

/* ---- libc basics (lowered to bulk-memory instructions) ---- */
void *memcpy(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  while (n--) *d++ = *s++;
  return dst;
}
void *memmove(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  if (d < s) {
    while (n--) *d++ = *s++;
  } else {
    while (n--) d[n] = s[n];
  }
  return dst;
}
void *memset(void *dst, int c, size_t n) {
  unsigned char *d = dst;
  while (n--) *d++ = (unsigned char)c;
  return dst;
}
int memcmp(const void *a, const void *b, size_t n) {
  const unsigned char *x = a, *y = b;
  for (size_t i = 0; i < n; i++)
    if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
  return 0;
}
size_t strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

/* ---- heap: power-of-two size classes with free lists ---- */
extern unsigned char __heap_base;
#define PW_PAGE 65536u
#define PW_HDR 8u
static uint64_t heap_top;
static unsigned char *free_lists[32];

void *pw_malloc(size_t size) {
  uint64_t need = (uint64_t)size + PW_HDR;
  unsigned cls = 4;
  while (((uint64_t)1 << cls) < need) {
    if (++cls >= 31) return 0;
  }
  unsigned char *block = free_lists[cls];
  if (block) {
    free_lists[cls] = *(unsigned char **)(block + PW_HDR);
  } else {
    if (heap_top == 0) heap_top = ((uint64_t)(uintptr_t)&__heap_base + 15) & ~(uint64_t)15;
    uint64_t bsize = (uint64_t)1 << cls;
    uint64_t end = (uint64_t)__builtin_wasm_memory_size(0) * PW_PAGE;
    if (heap_top + bsize > end) {
      uint64_t pages = (heap_top + bsize - end + PW_PAGE - 1) / PW_PAGE;
      if (__builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) return 0;
    }
    block = (unsigned char *)(uintptr_t)heap_top;
    heap_top += bsize;
  }
  *(uint32_t *)block = cls;
  return block + PW_HDR;
}

void pw_free(void *ptr) {
  if (!ptr) return;
  unsigned char *block = (unsigned char *)ptr - PW_HDR;
  uint32_t cls = *(uint32_t *)block;
  if (cls < 4 || cls >= 31) return;
  *(unsigned char **)(block + PW_HDR) = free_lists[cls];
  free_lists[cls] = block;
}

/* Memory the host hands to the guest comes from here. */
PW_EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) {
  return pw_malloc(size);
}

/* ---- strings and buffers ---- */
static char lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

bool pw_str_ieq(pw_str a, pw_str b) {
  if (a.len != b.len) return false;
  for (size_t i = 0; i < a.len; i++)
    if (lower(a.ptr[i]) != lower(b.ptr[i])) return false;
  return true;
}

bool pw_buf_push(pw_buf *b, const char *data, size_t len) {
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + len) cap *= 2;
    char *p = pw_malloc(cap);
    if (!p) return false;
    if (b->len) memcpy(p, b->ptr, b->len);
    pw_free(b->ptr);
    b->ptr = p;
    b->cap = cap;
  }
  if (len) memcpy(b->ptr + b->len, data, len);
  b->len += len;
  return true;
}

void pw_buf_free(pw_buf *b) {
  pw_free(b->ptr);
  b->ptr = 0;
  b->len = b->cap = 0;
}

/* ---- helpers ---- */
void pw_log(uint32_t level, const char *msg) { proxy_log(level, msg, strlen(msg)); }

bool pw_get_header(uint32_t map, pw_str name, pw_str *out) {
  uint8_t *data = 0;
  size_t size = 0;
  if (proxy_get_header_map_value(map, name.ptr, name.len, &data, &size) != PW_OK) return false;
  out->ptr = (const char *)data;
  out->len = size;
  return true;
}

uint32_t pw_replace_header(uint32_t map, pw_str name, pw_str value) {
  return proxy_replace_header_map_value(map, name.ptr, name.len, value.ptr, value.len);
}
uint32_t pw_add_header(uint32_t map, pw_str name, pw_str value) {
  return proxy_add_header_map_value(map, name.ptr, name.len, value.ptr, value.len);
}
uint32_t pw_remove_header(uint32_t map, pw_str name) {
  return proxy_remove_header_map_value(map, name.ptr, name.len);
}

bool pw_get_property(const char *path, size_t path_size, pw_str *out) {
  uint8_t *data = 0;
  size_t size = 0;
  if (proxy_get_property(path, path_size, &data, &size) != PW_OK) return false;
  out->ptr = (const char *)data;
  out->len = size;
  return true;
}

bool pw_get_buffer(uint32_t type, pw_str *out) {
  size_t size = 0;
  uint32_t flags = 0;
  out->ptr = 0;
  out->len = 0;
  if (proxy_get_buffer_status(type, &size, &flags) != PW_OK) return false;
  if (size == 0) return true;
  uint8_t *data = 0;
  size_t got = 0;
  if (proxy_get_buffer_bytes(type, 0, size, &data, &got) != PW_OK) return false;
  out->ptr = (const char *)data;
  out->len = got;
  return true;
}

uint32_t pw_send_response(uint32_t status, const char *details, pw_str body, int32_t grpc_status) {
  return proxy_send_local_response(status, details, strlen(details), body.ptr, body.len, 0, 0,
                                   grpc_status);
}

/* ---- JSON ---- */
#define PW_JSON_ERR ((size_t)-1)
#define PW_JSON_MAX_DEPTH 64

static size_t skip_ws(const char *s, size_t n, size_t i) {
  while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
  return i;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static size_t scan_string(const char *s, size_t n, size_t i) {
  i++; /* opening quote */
  while (i < n) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"') return i + 1;
    if (c < 0x20) return PW_JSON_ERR;
    if (c == '\\') {
      if (++i >= n) return PW_JSON_ERR;
      char e = s[i];
      if (e == 'u') {
        if (i + 4 >= n) return PW_JSON_ERR;
        for (int k = 1; k <= 4; k++)
          if (hexval(s[i + k]) < 0) return PW_JSON_ERR;
        i += 5;
      } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                 e == 'r' || e == 't') {
        i++;
      } else {
        return PW_JSON_ERR;
      }
      continue;
    }
    i++;
  }
  return PW_JSON_ERR;
}

static size_t scan_number(const char *s, size_t n, size_t i) {
  size_t start = i;
  if (i < n && s[i] == '-') i++;
  if (i >= n) return PW_JSON_ERR;
  if (s[i] == '0') {
    i++;
  } else if (s[i] >= '1' && s[i] <= '9') {
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
  } else {
    return PW_JSON_ERR;
  }
  if (i < n && s[i] == '.') {
    i++;
    if (i >= n || s[i] < '0' || s[i] > '9') return PW_JSON_ERR;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    if (i >= n || s[i] < '0' || s[i] > '9') return PW_JSON_ERR;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
  }
  return i > start ? i : PW_JSON_ERR;
}

static size_t scan_literal(const char *s, size_t n, size_t i, const char *lit) {
  size_t len = strlen(lit);
  if (i + len > n || memcmp(s + i, lit, len) != 0) return PW_JSON_ERR;
  return i + len;
}

static size_t scan_value(const char *s, size_t n, size_t i, int depth, pw_json_kind *kind) {
  if (depth > PW_JSON_MAX_DEPTH) return PW_JSON_ERR;
  i = skip_ws(s, n, i);
  if (i >= n) return PW_JSON_ERR;
  char c = s[i];
  pw_json_kind k;
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    k = c == '{' ? PW_JSON_OBJECT : PW_JSON_ARRAY;
    i = skip_ws(s, n, i + 1);
    if (i < n && s[i] == close) {
      *kind = k;
      return i + 1;
    }
    for (;;) {
      pw_json_kind inner;
      if (k == PW_JSON_OBJECT) {
        i = skip_ws(s, n, i);
        if (i >= n || s[i] != '"') return PW_JSON_ERR;
        i = scan_string(s, n, i);
        if (i == PW_JSON_ERR) return i;
        i = skip_ws(s, n, i);
        if (i >= n || s[i] != ':') return PW_JSON_ERR;
        i++;
      }
      i = scan_value(s, n, i, depth + 1, &inner);
      if (i == PW_JSON_ERR) return i;
      i = skip_ws(s, n, i);
      if (i >= n) return PW_JSON_ERR;
      if (s[i] == ',') {
        i++;
        continue;
      }
      if (s[i] == close) {
        *kind = k;
        return i + 1;
      }
      return PW_JSON_ERR;
    }
  }
  size_t e;
  if (c == '"') {
    k = PW_JSON_STRING;
    e = scan_string(s, n, i);
  } else if (c == 't') {
    k = PW_JSON_TRUE;
    e = scan_literal(s, n, i, "true");
  } else if (c == 'f') {
    k = PW_JSON_FALSE;
    e = scan_literal(s, n, i, "false");
  } else if (c == 'n') {
    k = PW_JSON_NULL;
    e = scan_literal(s, n, i, "null");
  } else {
    k = PW_JSON_NUMBER;
    e = scan_number(s, n, i);
  }
  if (e != PW_JSON_ERR) *kind = k;
  return e;
}

pw_json pw_json_parse(const char *text, size_t len, size_t *end) {
  pw_json v = {PW_JSON_ERROR, text, 0};
  size_t start = skip_ws(text, len, 0);
  pw_json_kind kind = PW_JSON_ERROR;
  size_t e = scan_value(text, len, start, 0, &kind);
  if (end) *end = e;
  if (e == PW_JSON_ERR) return v;
  v.kind = kind;
  v.ptr = text + start;
  v.len = e - start;
  return v;
}

static bool next_in(pw_json c, size_t *pos, pw_json *key, pw_json *value) {
  if (*pos == PW_JSON_ERR) return false;
  const char *s = c.ptr;
  size_t n = c.len;
  size_t i = *pos == 0 ? 1 : *pos;
  i = skip_ws(s, n, i);
  if (i < n && s[i] == ',') i = skip_ws(s, n, i + 1);
  if (i >= n || s[i] == '}' || s[i] == ']') return false;
  if (key) {
    size_t ke = scan_string(s, n, i);
    if (ke == PW_JSON_ERR) goto fail;
    key->kind = PW_JSON_STRING;
    key->ptr = s + i;
    key->len = ke - i;
    i = skip_ws(s, n, ke);
    if (i >= n || s[i] != ':') goto fail;
    i++;
  }
  size_t vs = skip_ws(s, n, i);
  pw_json_kind kind = PW_JSON_ERROR;
  size_t ve = scan_value(s, n, vs, 1, &kind);
  if (ve == PW_JSON_ERR) goto fail;
  value->kind = kind;
  value->ptr = s + vs;
  value->len = ve - vs;
  *pos = ve;
  return true;
fail:
  *pos = PW_JSON_ERR;
  return false;
}

bool pw_json_next_member(pw_json object, size_t *pos, pw_json *key, pw_json *value) {
  if (object.kind != PW_JSON_OBJECT) return false;
  return next_in(object, pos, key, value);
}

bool pw_json_next_element(pw_json array, size_t *pos, pw_json *value) {
  if (array.kind != PW_JSON_ARRAY) return false;
  return next_in(array, pos, 0, value);
}

static void put_utf8(char *out, size_t *o, uint32_t cp) {
  if (cp < 0x80) {
    out[(*o)++] = (char)cp;
  } else if (cp < 0x800) {
    out[(*o)++] = (char)(0xC0 | (cp >> 6));
    out[(*o)++] = (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out[(*o)++] = (char)(0xE0 | (cp >> 12));
    out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[(*o)++] = (char)(0x80 | (cp & 0x3F));
  } else {
    out[(*o)++] = (char)(0xF0 | (cp >> 18));
    out[(*o)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[(*o)++] = (char)(0x80 | (cp & 0x3F));
  }
}

static uint32_t hex4(const char *p) {
  return (uint32_t)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

bool pw_json_string(pw_json v, pw_str *out) {
  if (v.kind != PW_JSON_STRING || v.len < 2) return false;
  const char *s = v.ptr + 1;
  size_t n = v.len - 2;
  char *buf = pw_malloc(n + 1);
  if (!buf) return false;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c != '\\') {
      buf[o++] = c;
      continue;
    }
    char e = s[++i];
    switch (e) {
      case 'b': buf[o++] = '\b'; break;
      case 'f': buf[o++] = '\f'; break;
      case 'n': buf[o++] = '\n'; break;
      case 'r': buf[o++] = '\r'; break;
      case 't': buf[o++] = '\t'; break;
      case 'u': {
        uint32_t cp = hex4(s + i + 1);
        i += 4;
        if (cp >= 0xD800 && cp < 0xDC00 && i + 6 < n && s[i + 1] == '\\' && s[i + 2] == 'u') {
          uint32_t lo = hex4(s + i + 3);
          if (lo >= 0xDC00 && lo < 0xE000) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            i += 6;
          }
        }
        put_utf8(buf, &o, cp);
        break;
      }
      default: buf[o++] = e; break;
    }
  }
  buf[o] = 0;
  out->ptr = buf;
  out->len = o;
  return true;
}

pw_json pw_json_get(pw_json object, const char *key) {
  pw_json k, v, none = {PW_JSON_ERROR, 0, 0};
  size_t pos = 0;
  pw_str want = pw_cstr(key);
  while (pw_json_next_member(object, &pos, &k, &v)) {
    pw_str got;
    if (!pw_json_string(k, &got)) continue;
    bool eq = pw_str_eq(got, want);
    pw_free((void *)got.ptr);
    if (eq) return v;
  }
  return none;
}
