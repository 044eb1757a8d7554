#!/usr/bin/env bash
# Builds (or reuses) the Jaeger v2 all-in-one binary (`cmd/jaeger`) the
# tracing tests export to, from the Jaeger release pinned in go.mod beside
# this script. Go modules only, through the Go module proxy; nothing from
# them is kept in the repository.
#
# The binary is cached under
#   ${TOLLGATE_CACHE:-~/.cache/tollgate}/jaeger/<recipe>/bin/jaeger
# where <recipe> is a hash of go.mod, go.sum, tools.go and this script:
# changing any of them builds again, and older recipes are removed.
# Prints the bin directory on the last line of stdout; everything else goes
# to stderr. Callers serialise it with a file lock (tests/src/binaries.rs).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/jaeger"
recipe=$(cat "$here/go.mod" "$here/go.sum" "$here/tools.go" "$0" | sha256sum | cut -c1-16)
bin="$root/$recipe/bin"

log() { echo "jaeger: $*" >&2; }

if ! [[ -x "$bin/jaeger" ]]; then
  if ! command -v go >/dev/null; then
    log "needs Go 1.26 or newer on PATH to build Jaeger (the machine image has it)"
    exit 1
  fi
  release=$(cd "$here" && GOFLAGS=-mod=readonly GOTOOLCHAIN=local go list -m -f '{{.Version}}' github.com/jaegertracing/jaeger)
  log "building cmd/jaeger from github.com/jaegertracing/jaeger $release ($(go env GOVERSION)); several minutes on 2 cores the first time"
  mkdir -p "$root"
  gocache=$(mktemp -d "$root/gocache.XXXXXX")
  out="$root/$recipe.partial"
  rm -rf "$out"
  started=$SECONDS
  (
    cd "$here"
    export GOCACHE="$gocache" GOFLAGS=-mod=readonly CGO_ENABLED=0 GOTOOLCHAIN=local
    go build -trimpath -ldflags "-s -w" -o "$out/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger
  ) >&2
  rm -rf "$gocache"
  "$out/jaeger" version >&2 || true
  rm -rf "$root/$recipe"
  mkdir -p "$root/$recipe"
  mv "$out" "$bin"
  log "built in $((SECONDS - started)) s"
  for old in "$root"/*/; do
    [[ "$old" == "$root/$recipe/" ]] || rm -rf "$old"
  done
fi
echo "$bin"
