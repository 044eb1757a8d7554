#!/usr/bin/env bash
# Builds the test filters written against SDKs we did not write, from
# source, with the SDK and compiler versions pinned by each filter's
# lockfile (issue #21):
#
#   filters/third-party/build.sh [out-dir]   # default: target/filters
#
#   assemblyscript/  → <out>/as_header.wasm, as_auth.wasm, as_logger.wasm
#                      (@solo-io/proxy-runtime and the AssemblyScript
#                      compiler its own lockfile names)
#
# Needs node and npm (Debian: apt-get install -y nodejs npm). Packages come
# from the npm registry with `npm ci` (the lockfile, nothing else) into
#   ${TOLLGATE_CACHE:-~/.cache/tollgate}/npm/<recipe>/
# outside the clone, where <recipe> hashes package.json, package-lock.json
# and this script: changing any of them installs again, older recipes are
# removed. Nothing is vendored or committed but the sources and lockfiles.
# A rebuild is skipped when the sources, this script and the recipe are
# unchanged (a stamp in <out>/.third-party-stamp). Progress goes to stderr;
# the one line printed when installing says what and why.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/target/filters}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

log() { echo "filters/third-party/build.sh: $*" >&2; }

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    log "$tool not found; install it with: apt-get install -y nodejs npm"
    exit 127
  fi
done

src="$here/assemblyscript"
recipe=$(cat "$src/package.json" "$src/package-lock.json" "$0" | sha256sum | cut -c1-16)
cache_root="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/npm"
work="$cache_root/$recipe"

stamp="$( { echo "$recipe"; node --version; cat "$src"/assembly/*.ts; } | sha256sum | cut -d' ' -f1)"
if [[ -f "$out/.third-party-stamp" && "$(cat "$out/.third-party-stamp")" == "$stamp" &&
  -f "$out/as_header.wasm" && -f "$out/as_auth.wasm" && -f "$out/as_logger.wasm" ]]; then
  exit 0
fi

mkdir -p "$cache_root"
# One installer at a time (test binaries may build at once).
exec 9>"$cache_root/.lock"
flock 9

if [[ ! -x "$work/node_modules/.bin/asc" ]]; then
  version=$(node -e 'const l=require(process.argv[1]);console.log(["@solo-io/proxy-runtime","assemblyscript"].map(n=>n+"@"+l.packages["node_modules/"+n].version).join(" "))' "$src/package-lock.json")
  log "installing $version (npm ci, pinned by filters/third-party/assemblyscript/package-lock.json): the AssemblyScript SDK test filter is built from source"
  partial="$work.partial"
  rm -rf "$partial"
  mkdir -p "$partial"
  cp "$src/package.json" "$src/package-lock.json" "$partial/"
  (cd "$partial" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) >&2 ||
    { rm -rf "$partial"; log "npm ci failed; is the npm registry reachable?"; exit 1; }
  rm -rf "$work"
  mv "$partial" "$work"
  for old in "$cache_root"/*/; do
    [[ "$old" == "$work/" ]] || rm -rf "$old"
  done
fi

# asc resolves packages from node_modules beside the sources: compile a
# copy of them in the recipe's directory.
build="$(mktemp -d "$work/build.XXXXXX")"
trap 'rm -rf "$build"' EXIT
cp -r "$src/assembly" "$build/assembly"
ln -s "$work/node_modules" "$build/node_modules"
for entry in index:as_header auth:as_auth logger:as_logger; do
  (cd "$build" && node node_modules/assemblyscript/bin/asc "assembly/${entry%%:*}.ts" \
    --binaryFile "$out/${entry#*:}.wasm.tmp" --use abort=abort_proc_exit --optimize) >&2
  mv "$out/${entry#*:}.wasm.tmp" "$out/${entry#*:}.wasm"
done
echo "$stamp" >"$out/.third-party-stamp"
