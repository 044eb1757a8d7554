/* Fault filter: grows its memory page by page until the host's cap stops
 * it, in proxy_on_request_headers (see fault.h). */
#include "fault.h"

PW_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, size_t n, uint32_t end_of_stream) {
  (void)ctx, (void)n, (void)end_of_stream;
  if (should_fault()) {
    for (;;) {
      size_t old = __builtin_wasm_memory_grow(0, 16);
      if (old == (size_t)-1) __builtin_trap(); /* a host that refuses quietly */
      ((volatile uint8_t *)(old * 65536))[0] = 1;
    }
  }
  return PW_CONTINUE;
}
