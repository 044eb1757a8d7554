#!/usr/bin/env bash
# Builds (or reuses) psa-fixtures (main.go): the writer of Pod Security
# Admission's pass and fail pods, from the k8s.io/pod-security-admission
# release pinned in go.mod beside this script (v0.37.2, the release of the
# e2e control plane's Kubernetes v1.37.2). Go modules only, through the Go
# module proxy; nothing from them is kept in the repository.
#
# The binary is cached under
#   ${TOLLGATE_CACHE:-~/.cache/tollgate}/pod-security/<recipe>/psa-fixtures
# where <recipe> is a hash of go.mod, go.sum and main.go: changing any of
# them builds again, and older recipes are removed. Prints the binary's path
# on the last line of stdout; everything else goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/pod-security"
recipe=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-16)
bin="$root/$recipe/psa-fixtures"

log() { echo "pod-security: $*" >&2; }

if [[ ! -x "$bin" ]]; then
  if ! command -v go >/dev/null; then
    log "needs Go 1.26 or newer on PATH to build the PSA fixture generator (the machine image has it; see README.md)"
    exit 1
  fi
  log "building psa-fixtures from k8s.io/pod-security-admission ($(go env GOVERSION)); about 2 minutes on 2 cores the first time"
  mkdir -p "$root"
  gocache=$(mktemp -d "$root/gocache.XXXXXX")
  out="$root/$recipe.partial"
  rm -rf "$out"
  (
    cd "$here"
    export GOCACHE="$gocache" GOFLAGS=-mod=readonly CGO_ENABLED=0 GOTOOLCHAIN=local
    go build -trimpath -o "$out/psa-fixtures" .
  ) >&2 || { rm -rf "$gocache" "$out"; exit 1; }
  rm -rf "$gocache"
  rm -rf "$root/$recipe"
  mv "$out" "$root/$recipe"
  for old in "$root"/*/; do
    [[ "$old" == "$root/$recipe/" ]] || rm -rf "$old"
  done
fi
echo "$bin"
