#!/usr/bin/env bash
# Builds (or reuses) the real control plane the end-to-end tests and
# benches/webhook-apiserver.sh run against: kube-apiserver,
# kube-controller-manager and kubectl from the Kubernetes release pinned in
# go.mod beside this script, and etcd from etcd's own server module at the
# version that release requires. Go modules only, through the Go module
# proxy; nothing from them is kept in the repository.
#
# The binaries are cached under
#   ${TOLLGATE_CACHE:-~/.cache/tollgate}/control-plane/<recipe>/bin
# where <recipe> is a hash of go.mod, go.sum, etcd/main.go and this script:
# changing any of them builds again, and older recipes are removed.
# Prints the bin directory on the last line of stdout; everything else goes
# to stderr.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/control-plane"
recipe=$(cat "$here/go.mod" "$here/go.sum" "$here/etcd/main.go" "$here/tools.go" "$0" | sha256sum | cut -c1-16)
bin="$root/$recipe/bin"
wanted=(kube-apiserver kube-controller-manager kubectl etcd)

log() { echo "control-plane: $*" >&2; }

complete() {
  local b
  for b in "${wanted[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}

if ! complete; then
  if ! command -v go >/dev/null; then
    log "needs Go 1.26 or newer on PATH to build the control plane (the machine image has it; see README.md)"
    exit 1
  fi
  # The release in go.mod, for the binaries' own version (kubectl version,
  # /version, and the webhook's native-sidecar detection read it).
  release=$(cd "$here" && GOFLAGS=-mod=readonly GOTOOLCHAIN=local go list -m -f '{{.Version}}' k8s.io/kubernetes)
  [[ "$release" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || { log "no k8s.io/kubernetes vX.Y.Z require in go.mod"; exit 1; }
  minor=${BASH_REMATCH[1]}
  pkg=k8s.io/component-base/version
  ldflags="-s -w -X $pkg.gitVersion=$release -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  log "building kube-apiserver, kube-controller-manager, kubectl ($release) and etcd from Go modules ($(go env GOVERSION)); about 10 minutes on 2 cores the first time"
  mkdir -p "$root"
  # The build cache is only worth keeping until the binaries exist.
  gocache=$(mktemp -d "$root/gocache.XXXXXX")
  out="$root/$recipe.partial"
  rm -rf "$out"
  started=$SECONDS
  (
    cd "$here"
    export GOCACHE="$gocache" GOFLAGS=-mod=readonly CGO_ENABLED=0 GOTOOLCHAIN=local
    go build -trimpath -ldflags "$ldflags" -o "$out/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl \
      ./etcd
  ) >&2
  rm -rf "$gocache"
  "$out/kube-apiserver" --version >&2
  # Only a complete set replaces what was there.
  rm -rf "$root/$recipe"
  mkdir -p "$root/$recipe"
  mv "$out" "$bin"
  log "built in $((SECONDS - started)) s"
  # Binaries of older recipes.
  for old in "$root"/*/; do
    [[ "$old" == "$root/$recipe/" ]] || rm -rf "$old"
  done
fi
echo "$bin"
