#!/usr/bin/env bash
# Builds (or reuses) the real control plane the end-to-end tests run against:
# kube-apiserver and kube-controller-manager from Debian's `kubernetes` source
# package (bookworm, vendored), etcd from Debian's `etcd-server`.
#
# The binaries are cached under ${TOLLGATE_CACHE:-~/.cache/tollgate}/control-plane/bin
# so repeated runs on one machine skip the ~12 minute build.
# Prints the bin directory on the last line of stdout.
set -euo pipefail

cache="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/control-plane"
bin="$cache/bin"
mkdir -p "$bin"
here="$(cd "$(dirname "$0")" && pwd)"

# Bumped whenever the build changes (a source fix, a flag), so that cached
# binaries from an older recipe are rebuilt.
recipe=2
if [[ "$(cat "$bin/.recipe" 2>/dev/null)" != "$recipe" ]]; then
  rm -f "$bin/kube-apiserver" "$bin/kube-controller-manager" "$bin/kubectl"
fi

log() { echo "control-plane: $*" >&2; }

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
# kubectl comes with the machine image; where it does not, build it too.
targets="cmd/kube-apiserver cmd/kube-controller-manager"
wanted=(kube-apiserver kube-controller-manager)
if ! command -v kubectl >/dev/null; then
  targets="$targets cmd/kubectl"
  wanted+=(kubectl)
fi
missing() {
  local b
  for b in "${wanted[@]}"; do [[ -x "$bin/$b" ]] || return 0; done
  return 1
}

if missing; then
  command -v go >/dev/null || need_apt+=(golang-go)
  command -v rsync >/dev/null || need_apt+=(rsync)
  command -v jq >/dev/null || need_apt+=(jq)
  command -v dpkg-source >/dev/null || need_apt+=(dpkg-dev)
fi
if ((${#need_apt[@]})); then
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi

if missing; then
  src_list=/etc/apt/sources.list.d/tollgate-deb-src.sources
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    log "adding a deb-src entry for bookworm"
    cat >"$src_list" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq >&2
  fi
  work="$cache/src"
  if [[ ! -d "$work/kubernetes" ]]; then
    rm -rf "$work" && mkdir -p "$work"
    log "fetching the kubernetes source package"
    (cd "$work" && apt-get source -qq kubernetes >&2)
    srcdir=$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
    mv "$srcdir" "$work/kubernetes"
  fi
  root="$work/kubernetes"
  # Go >= 1.18 needs reflect2 v1.0.2's map iteration; 1.20 vendors v1.0.1,
  # with which kube-apiserver segfaults on a mutating webhook's patch.
  python3 "$here/reflect2/fix.py" "$root/vendor/github.com/modern-go/reflect2" >&2
  mkdir -p "$root/.go/src/k8s.io"
  ln -sfn "$root" "$root/.go/src/k8s.io/kubernetes"
  log "building ${wanted[*]} (about 12 minutes on 2 cores)"
  (
    cd "$root/.go/src/k8s.io/kubernetes"
    export GOPATH="$root/.go" GO111MODULE=off GOFLAGS=-mod=vendor CGO_ENABLED=0 GOCACHE="$cache/gocache"
    make WHAT="$targets" >&2
  )
  out="$root/_output/bin"
  [[ -x "$out/kube-apiserver" ]] || out="$root/_output/local/bin/linux/amd64"
  for b in "${wanted[@]}"; do install -m 0755 "$out/$b" "$bin/"; done
  echo "$recipe" >"$bin/.recipe"
  rm -rf "$work" "$cache/gocache"
fi
ln -sfn "$(command -v etcd)" "$bin/etcd"
echo "$bin"
