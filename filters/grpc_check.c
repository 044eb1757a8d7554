/* Test filter: a unary proxy_grpc_call per request (issue #21).
 *
 * Config: {"cluster": "<name>", "timeoutMs": N}. A request carrying
 * `x-check: <text>` waits while the filter calls the test service's
 * `tollgate.test.Echo/Unary` on the cluster with the message
 * {n: 41, text: <text>} (protobuf, written here) and the metadata
 * `x-from: grpc-check`; requests without the header pass.
 *
 * - status OK: the request goes on with `x-grpc-reply: <n>:<text>` from the
 *   answer, `x-grpc-metadata: <count>` (entries of its metadata) and
 *   `x-grpc-content-type` (read from that metadata);
 * - DEADLINE_EXCEEDED or UNAVAILABLE (the host's statuses for a call that
 *   timed out or reached nothing): 503 `grpc check unavailable: <code> <message>`;
 * - any other status: 403 `grpc check denied: <code> <message>`, the
 *   status and message read back with proxy_get_status;
 * - a call the host refuses: 500 `grpc call refused: <status>`. */
#include "proxy_wasm.h"

enum { GRPC_RECEIVE_INITIAL_METADATA = 4, GRPC_RECEIVE_BUFFER = 5 };
enum { GRPC_DEADLINE_EXCEEDED = 4, GRPC_UNAVAILABLE = 14 };

PW_IMPORT(proxy_grpc_call)
uint32_t proxy_grpc_call(const char *service, size_t service_size, const char *service_name,
                         size_t service_name_size, const char *method, size_t method_size,
                         const uint8_t *metadata, size_t metadata_size, const uint8_t *message,
                         size_t message_size, uint32_t timeout_ms, uint32_t *token);
PW_IMPORT(proxy_get_status)
uint32_t proxy_get_status(uint32_t *code, uint8_t **message, size_t *message_size);
PW_IMPORT(proxy_set_effective_context) uint32_t proxy_set_effective_context(uint32_t context);

static pw_str cluster;
static uint32_t timeout_ms = 1000;
static uint32_t waiting_context;
static size_t metadata_count;
static pw_buf reply;
static pw_buf content_type;

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

static bool push_u32le(pw_buf *b, uint32_t v) {
  char le[4] = {(char)v, (char)(v >> 8), (char)(v >> 16), (char)(v >> 24)};
  return pw_buf_push(b, le, 4);
}

/* A protobuf varint. */
static bool push_varint(pw_buf *b, uint64_t v) {
  char c;
  do {
    c = (char)(v & 0x7f);
    v >>= 7;
    if (v) c |= (char)0x80;
    if (!pw_buf_push(b, &c, 1)) return false;
  } while (v);
  return true;
}

static bool read_varint(const uint8_t *p, size_t len, size_t *at, uint64_t *out) {
  *out = 0;
  for (unsigned shift = 0; *at < len && shift < 64; shift += 7) {
    uint8_t c = p[(*at)++];
    *out |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) return true;
  }
  return false;
}

PW_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root, size_t size) {
  (void)root;
  pw_str config;
  if (size == 0 || !pw_get_buffer(PW_PLUGIN_CONFIGURATION, &config)) return 0;
  pw_json doc = pw_json_parse(config.ptr, config.len, 0);
  bool ok = pw_json_string(pw_json_get(doc, "cluster"), &cluster) && cluster.len > 0;
  pw_json ms = pw_json_get(doc, "timeoutMs");
  if (ms.kind == PW_JSON_NUMBER) {
    timeout_ms = 0;
    for (size_t i = 0; i < ms.len && ms.ptr[i] >= '0' && ms.ptr[i] <= '9'; i++)
      timeout_ms = timeout_ms * 10 + (uint32_t)(ms.ptr[i] - '0');
  }
  pw_free((void *)config.ptr);
  if (!ok) pw_log(PW_ERROR, "grpc_check: config needs {\"cluster\": \"<name>\"}");
  return ok;
}

PW_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, size_t n, uint32_t end_of_stream) {
  (void)n, (void)end_of_stream;
  pw_str text;
  if (!pw_get_header(PW_HTTP_REQUEST_HEADERS, pw_cstr("x-check"), &text)) return PW_CONTINUE;
  /* tollgate.test.Echo's Msg: field 1 (n, varint), field 2 (text, bytes). */
  pw_buf message = {0};
  bool built = push_varint(&message, 1 << 3 | 0) && push_varint(&message, 41) &&
               push_varint(&message, 2 << 3 | 2) && push_varint(&message, text.len) &&
               pw_buf_push(&message, text.ptr, text.len);
  pw_free((void *)text.ptr);
  /* One metadata pair, serialised as the ABI's maps are. */
  static const char key[] = "x-from", value[] = "grpc-check";
  pw_buf metadata = {0};
  built = built && push_u32le(&metadata, 1) && push_u32le(&metadata, sizeof(key) - 1) &&
          push_u32le(&metadata, sizeof(value) - 1) &&
          pw_buf_push(&metadata, key, sizeof(key)) && pw_buf_push(&metadata, value, sizeof(value));
  if (!built) {
    pw_buf_free(&message);
    pw_buf_free(&metadata);
    return PW_CONTINUE;
  }
  static const char service[] = "tollgate.test.Echo", method[] = "Unary";
  uint32_t token = 0;
  uint32_t status = proxy_grpc_call(cluster.ptr, cluster.len, service, sizeof(service) - 1, method,
                                    sizeof(method) - 1, (const uint8_t *)metadata.ptr, metadata.len,
                                    (const uint8_t *)message.ptr, message.len, timeout_ms, &token);
  pw_buf_free(&message);
  pw_buf_free(&metadata);
  if (status != PW_OK) {
    char body[32] = "grpc call refused: ";
    size_t len = 19 + digits(status, body + 19);
    pw_send_response(500, "grpc_check", (pw_str){body, len}, -1);
    return PW_PAUSE;
  }
  waiting_context = ctx;
  metadata_count = 0;
  reply.len = 0;
  content_type.len = 0;
  return PW_PAUSE;
}

PW_EXPORT(proxy_on_grpc_receive_initial_metadata)
void proxy_on_grpc_receive_initial_metadata(uint32_t root, uint32_t token, uint32_t headers) {
  (void)root, (void)token;
  metadata_count = headers;
  pw_str type;
  if (pw_get_header(GRPC_RECEIVE_INITIAL_METADATA, pw_cstr("content-type"), &type)) {
    content_type.len = 0;
    pw_buf_push(&content_type, type.ptr, type.len);
    pw_free((void *)type.ptr);
  }
}

PW_EXPORT(proxy_on_grpc_receive)
void proxy_on_grpc_receive(uint32_t root, uint32_t token, uint32_t size) {
  (void)root, (void)token;
  pw_str answer;
  if (size == 0 || !pw_get_buffer(GRPC_RECEIVE_BUFFER, &answer)) return;
  const uint8_t *p = (const uint8_t *)answer.ptr;
  size_t at = 0;
  uint64_t tag, n = 0, len;
  while (at < answer.len && read_varint(p, answer.len, &at, &tag)) {
    if (tag == (1 << 3 | 0)) {
      if (!read_varint(p, answer.len, &at, &n)) break;
    } else if (tag == (2 << 3 | 2)) {
      if (!read_varint(p, answer.len, &at, &len) || len > answer.len - at) break;
      reply.len = 0;
      char num[12];
      pw_buf_push(&reply, num, digits((uint32_t)n, num));
      pw_buf_push(&reply, ":", 1);
      pw_buf_push(&reply, (const char *)p + at, (size_t)len);
      at += (size_t)len;
    } else {
      break;
    }
  }
  pw_free((void *)answer.ptr);
}

PW_EXPORT(proxy_on_grpc_close)
void proxy_on_grpc_close(uint32_t root, uint32_t token, uint32_t code) {
  (void)root, (void)token;
  proxy_set_effective_context(waiting_context);
  if (code == 0) {
    char count[12];
    pw_replace_header(PW_HTTP_REQUEST_HEADERS, pw_cstr("x-grpc-reply"),
                      (pw_str){reply.ptr ? reply.ptr : "", reply.len});
    pw_replace_header(PW_HTTP_REQUEST_HEADERS, pw_cstr("x-grpc-metadata"),
                      (pw_str){count, digits((uint32_t)metadata_count, count)});
    pw_replace_header(PW_HTTP_REQUEST_HEADERS, pw_cstr("x-grpc-content-type"),
                      (pw_str){content_type.ptr ? content_type.ptr : "", content_type.len});
    proxy_continue_stream(PW_STREAM_HTTP_REQUEST);
    return;
  }
  uint32_t status = 0;
  uint8_t *message = 0;
  size_t message_size = 0;
  proxy_get_status(&status, &message, &message_size);
  bool unavailable = code == GRPC_DEADLINE_EXCEEDED || code == GRPC_UNAVAILABLE;
  pw_buf body = {0};
  const char *what = unavailable ? "grpc check unavailable: " : "grpc check denied: ";
  char num[12];
  pw_buf_push(&body, what, strlen(what));
  pw_buf_push(&body, num, digits(status, num));
  pw_buf_push(&body, " ", 1);
  if (message) pw_buf_push(&body, (const char *)message, message_size);
  pw_send_response(unavailable ? 503 : 403, "grpc_check", (pw_str){body.ptr, body.len}, -1);
  pw_buf_free(&body);
  if (message) pw_free(message);
}
