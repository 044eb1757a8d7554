#!/usr/bin/env bash
# Builds every filter in this directory (filters/*.c, each linked with the
# C SDK in sdk/) to <out>/<name>.wasm with Debian's clang and lld:
#
#   apt-get install -y clang lld
#   filters/build.sh [out-dir]        # default: target/filters
#
# A rebuild is skipped when the sources, this script and the compiler are
# unchanged (a stamp of their sha256 in <out>/.stamp), so tests can call
# it on every run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out="${1:-$root/target/filters}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

CC="${CC:-clang}"
if ! command -v "$CC" >/dev/null 2>&1; then
  echo "filters/build.sh: $CC not found; install it with: apt-get install -y clang lld" >&2
  exit 127
fi
if ! command -v wasm-ld >/dev/null 2>&1 && ! command -v wasm-ld-14 >/dev/null 2>&1; then
  echo "filters/build.sh: wasm-ld not found; install it with: apt-get install -y lld" >&2
  exit 127
fi

stamp="$( { "$CC" --version | head -1; cat "$here/build.sh" "$here"/*.c "$here"/*.h \
  "$here"/include/*.h "$here"/sdk/*.c; } | sha256sum | cut -d' ' -f1)"
if [[ -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" ]]; then
  exit 0
fi

CFLAGS=(
  --target=wasm32 -O2 -nostdlib -ffreestanding -std=c11
  -mbulk-memory -Wall -Wextra -Werror
  -I "$here/include"
)
LDFLAGS=(
  -Wl,--no-entry -Wl,--export-dynamic -Wl,--allow-undefined
  -Wl,--export=memory -Wl,--strip-all -Wl,-z,stack-size=65536
)

for src in "$here"/*.c; do
  name="$(basename "$src" .c)"
  "$CC" "${CFLAGS[@]}" "${LDFLAGS[@]}" -o "$out/$name.wasm.tmp" "$src" "$here/sdk/proxy_wasm.c"
  mv "$out/$name.wasm.tmp" "$out/$name.wasm"
done
echo "$stamp" > "$out/.stamp"
