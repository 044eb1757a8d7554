#!/usr/bin/env bash
# Builds (or reuses) an admission peer that benches/peers-admission.sh
# measures Tollgate against, from the release its directory's go.mod pins:
#
#   benches/peers-admission/build.sh gatekeeper   # Gatekeeper's manager (webhook + audit) and gator
#   benches/peers-admission/build.sh kyverno      # Kyverno's admission controller and its CLI
#
# Every `tool` of PEER/go.mod is built, named as `go build` names it
# (gatekeeper, gator, kyverno, kubectl-kyverno), with the version stamped
# as the peer's own Makefile stamps it. Peers only: the product never runs
# them. Go modules only, through the Go module proxy; nothing from them is
# kept in the repository. Where a peer's own go.mod has `replace`
# directives, PEER/go.mod repeats them (a replace applies only in the main
# module).
#
# The binaries are cached under
#   ${TOLLGATE_CACHE:-~/.cache/tollgate}/peers/PEER/<recipe>/
# where <recipe> is a hash of PEER/go.mod, PEER/go.sum and this script:
# changing any of them builds again, and older recipes are removed. The
# build time is written beside them (BUILD_SECONDS), and the version
# (VERSION). Prints the directory on the last line of stdout; everything
# else goes to stderr.
set -euo pipefail

peer=${1:?usage: build.sh gatekeeper|kyverno}
here="$(cd "$(dirname "$0")" && pwd)/$peer"
case $peer in
gatekeeper) module=github.com/open-policy-agent/gatekeeper/v3 stamp=pkg/version.Version ;;
kyverno) module=github.com/kyverno/kyverno stamp=pkg/version.BuildVersion ;;
*) echo "build.sh: no peer $peer (gatekeeper, kyverno)" >&2; exit 2 ;;
esac
root="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/peers/$peer"
recipe=$(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum | cut -c1-16)
dir="$root/$recipe"

log() { echo "$peer: $*" >&2; }

if [[ ! -s "$dir/VERSION" ]]; then
  if ! command -v go >/dev/null; then
    log "needs Go 1.26 or newer on PATH (the machine image has it)"
    exit 1
  fi
  cd "$here"
  export GOFLAGS=-mod=readonly GOTOOLCHAIN=local
  version=$(go list -m -f '{{.Version}}' "$module")
  mapfile -t tools < <(go mod edit -json | jq -r '.Tool[].Path')
  log "building ${tools[*]##*/} from $module $version ($(go env GOVERSION)); minutes on 2 cores the first time"
  mkdir -p "$root"
  # The build cache is only worth keeping until the binaries exist.
  gocache=$(mktemp -d "$root/gocache.XXXXXX")
  out="$root/$recipe.partial"
  rm -rf "$out"
  mkdir -p "$out"
  started=$SECONDS
  GOCACHE="$gocache" CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X $module/$stamp=$version" -o "$out/" "${tools[@]}" >&2 ||
      { rm -rf "$gocache" "$out"; exit 1; }
  rm -rf "$gocache"
  echo "$((SECONDS - started))" >"$out/BUILD_SECONDS"
  echo "$version" >"$out/VERSION"
  rm -rf "$dir"
  mv "$out" "$dir"
  log "built in $((SECONDS - started)) s"
  for old in "$root"/*/; do
    [[ "$old" == "$dir/" ]] || rm -rf "$old"
  done
fi
echo "$dir"
