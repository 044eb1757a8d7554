# What every benches/*.sh script needs before it measures anything; sourced,
# not run:
#
#   source "$(dirname "$0")/lib.sh" NAME
#
# It moves to the repository root and gives the script:
#   root               the repository root (also the working directory)
#   log MSG...         "NAME: HH:MM:SS MSG" on stderr; a failing command is
#                      logged with its line before the script exits
#   die MSG...         log "error: MSG" and exit 1
#   need TOOL[:PACKAGE]...
#                      install the Debian PACKAGE (default: TOOL) of every
#                      TOOL not on PATH; die if one is still missing
#   apt_install PKG... install Debian packages (through sudo unless root)
#   release_build ARGS...
#                      `cargo build --release ARGS` unless BUILD=0; sets bin
#   bin                the release binaries' directory (honours CARGO_TARGET_DIR)
#   tollgate           the `tollgate` binary measured: $TOLLGATE when set (an
#                      older build, as webhook-speed.sh's "before"), else $bin's
#   decision_cache_off [PREFIX]
#                      PREFIX + the `policies:` key that turns the decision
#                      cache off, for servers posted one review over and
#                      over; nothing for a tollgate older than the cache
#   work               a fresh directory under /tmp, removed on exit unless
#                      KEEP=1
#   pids               processes stopped (and waited for) on exit: pids+=("$!")
#   free_port          a loopback TCP port nothing listens on, not handed out
#                      before in this run
#   wait_port PORT     wait up to 10 s for a listener on 127.0.0.1:PORT
#   source_rev         the commit, and whether the tree has uncommitted changes
#   run_header         "date, source commit, CPUs, kernel, rustc": the first
#                      line of a printed table

bench_name=${1:?usage: source benches/lib.sh NAME}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
BUILD=${BUILD:-1}
KEEP=${KEEP:-0}

log() { echo "$bench_name: $(date -u +%H:%M:%S) $*" >&2; }
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
die() {
    log "error: $*"
    exit 1
}
need() {
    local spec missing=()
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null || missing+=("${spec#*:}")
    done
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null || die "${spec%%:*} is required (Debian package ${spec#*:})"
    done
}
apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    log "installing $* (apt-get)"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

bin=${CARGO_TARGET_DIR:-$root/target}/release
tollgate=${TOLLGATE:-$bin/tollgate}
decision_cache_off() {
    # serde names every config key in the binary's read-only data.
    if grep -qa decisionCacheEntries "$tollgate"; then echo "${1:-}decisionCacheEntries: 0"; fi
}
release_build() {
    if [ "$BUILD" = 1 ]; then
        log "building release binaries"
        cargo build --release --quiet "$@"
    fi
}

work=$(mktemp -d "/tmp/tollgate-${bench_name%.sh}.XXXXXX")
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "$KEEP" = 1 ]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 12000)) # below Linux's ephemeral range (32768-)
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && ! grep -qx "$port" "$work/ports" 2>/dev/null; then
            echo "$port" >>"$work/ports"
            echo "$port"
            return
        fi
    done
}
wait_port() {
    local _
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

source_rev() {
    local dirty
    dirty=$(git status --porcelain 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
    echo "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$dirty"
}
run_header() {
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), source $(source_rev), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), Linux $(uname -r), $(rustc --version 2>/dev/null || echo rustc unknown)"
}
