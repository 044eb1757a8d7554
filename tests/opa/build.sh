#!/usr/bin/env bash
# Builds (or reuses) `opa`, the reference implementation of Rego, from the
# github.com/open-policy-agent/opa release pinned in go.mod beside this
# script (a `tool` requirement). It is the oracle of
# webhook/tests/opa_parity.rs: `tollgate test` must give the same pass/fail
# per test as `opa test`. A test tool only; the product never runs it. Go
# modules only, through the Go module proxy; nothing from them is kept in
# the repository.
#
# The binary is cached under
#   ${TOLLGATE_CACHE:-~/.cache/tollgate}/opa/<recipe>/opa
# where <recipe> is a hash of go.mod, go.sum and this script: changing any
# of them builds again, and older recipes are removed. Callers that may run
# at once (test binaries) hold ${TOLLGATE_CACHE}/opa.lock around it.
# Prints the binary's path on the last line of stdout; everything else goes
# to stderr.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/opa"
recipe=$(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum | cut -c1-16)
bin="$root/$recipe/opa"

log() { echo "opa: $*" >&2; }

if [[ ! -x "$bin" ]]; then
  if ! command -v go >/dev/null; then
    log "needs Go 1.26 or newer on PATH to build opa (the machine image has it; see tests/control-plane/README.md)"
    exit 1
  fi
  version=$(cd "$here" && GOFLAGS=-mod=readonly GOTOOLCHAIN=local go list -m -f '{{.Version}}' github.com/open-policy-agent/opa)
  log "building opa $version from its Go module ($(go env GOVERSION)); about 4 minutes on 2 cores the first time"
  mkdir -p "$root"
  # The build cache is only worth keeping until the binary exists.
  gocache=$(mktemp -d "$root/gocache.XXXXXX")
  out="$root/$recipe.partial"
  rm -rf "$out"
  started=$SECONDS
  (
    cd "$here"
    export GOCACHE="$gocache" GOFLAGS=-mod=readonly CGO_ENABLED=0 GOTOOLCHAIN=local
    go build -trimpath -ldflags "-s -w" -o "$out/opa" github.com/open-policy-agent/opa
  ) >&2 || { rm -rf "$gocache" "$out"; exit 1; }
  rm -rf "$gocache"
  "$out/opa" version >&2
  rm -rf "$root/$recipe"
  mv "$out" "$root/$recipe"
  log "built in $((SECONDS - started)) s"
  for old in "$root"/*/; do
    [[ "$old" == "$root/$recipe/" ]] || rm -rf "$old"
  done
fi
echo "$bin"
