/* Fault filter: spins forever in proxy_on_request_headers (see fault.h). */
#include "fault.h"

PW_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, size_t n, uint32_t end_of_stream) {
  (void)ctx, (void)n, (void)end_of_stream;
  if (should_fault()) {
    volatile uint64_t spins = 0;
    for (;;) spins++;
  }
  return PW_CONTINUE;
}
