#!/usr/bin/env bash
# Benchmarks tollgate-proxy's added latency and throughput: the same load
# generator (proxy-load: HTTP/1.1 keep-alive, GET) against the same app
# (proxy-upstream, plaintext on loopback) directly, and through the proxy's
# inbound listener over mTLS, interleaved in one run. Also reports the
# proxy's resident memory idle and its peak under load. Prints a markdown
# table.
#
#   benches/proxy.sh
#
# Environment (defaults in brackets):
#   DURATION     measured seconds per run [10]
#   CONNECTIONS  keep-alive connections, space-separated ["1 16"]
#   RUNS         runs per target and connection count; the median run (by
#                requests/s) is reported [3]
#   PIN          1: the load generator on CPU 0, the app and the proxy (the
#                "pod") on CPU 1 [1 if >= 2 CPUs]
#   BUILD        0: use the release binaries already in target/ [1]
#
# wrk cannot present a client certificate, so proxy-load
# (benches/src/bin/proxy-load.rs) is the load generator for both targets.
# Loopback only; every process started here is stopped on exit.
# The whole script is one { ... } block, so bash reads all of it before it
# runs any: editing this file during a run does not change that run.
{
set -euo pipefail
source "$(dirname "$0")/lib.sh" proxy.sh
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-"1 16"}
RUNS=${RUNS:-3}
if [ "$(nproc)" -ge 2 ]; then PIN=${PIN:-1}; else PIN=0; fi

release_build -p tollgate-proxy -p tollgate-benches \
    --bin tollgate-proxy --bin proxy-load --bin proxy-upstream
pod=() gen=()
if [ "$PIN" = 1 ]; then pod=(taskset -c 1); gen=(taskset -c 0); fi

"$bin/proxy-load" certs "$work/certs"
app_port=$(free_port); inbound=$(free_port); admin=$(free_port); outbound=$(free_port)
"${pod[@]}" "$bin/proxy-upstream" --listen "127.0.0.1:$app_port" &
pids+=($!)
cat >"$work/proxy.yaml" <<EOF
listeners:
  inbound: {address: 127.0.0.1, port: $inbound, clientAuth: required}
  outbound: {port: $outbound}
  admin: {address: 127.0.0.1, port: $admin}
app: {port: $app_port, protocol: http1}
certs: {dir: $work/certs/proxy}
EOF
# RUST_LOG=warn: no access log line per request, so log I/O is not measured.
RUST_LOG=warn "${pod[@]}" "$bin/tollgate-proxy" --config "$work/proxy.yaml" 2>"$work/proxy.log" &
proxy_pid=$!
pids+=($proxy_pid)
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$admin/ready" >/dev/null || { cat "$work/proxy.log"; exit 1; }

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
sleep 2
idle_rss=$(rss "$proxy_pid")
log "proxy ready (pid $proxy_pid), idle RSS ${idle_rss} KiB; checking both targets answer"
"$bin/proxy-load" --url "http://127.0.0.1:$app_port/" -d 1 --warmup 0 | grep -q ' errors=0 '
"$bin/proxy-load" --url "https://localhost:$inbound/" --certs "$work/certs/client" -d 1 --warmup 0 | grep -q ' errors=0 '

results="$work/results"
: >"$results"
for run in $(seq "$RUNS"); do
    for c in $CONNECTIONS; do
        for target in direct proxy; do
            if [ "$target" = direct ]; then
                args=(--url "http://127.0.0.1:$app_port/")
            else
                args=(--url "https://localhost:$inbound/" --certs "$work/certs/client")
            fi
            line=$("${gen[@]}" "$bin/proxy-load" "${args[@]}" -c "$c" -d "$DURATION" --warmup 2 --watch-pid "$proxy_pid")
            log "run $run, $c connections, $target: $line"
            echo "$c $target $line" >>"$results"
        done
    done
done
end_rss=$(rss "$proxy_pid")

echo
echo "benches/proxy.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), source $(source_rev), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), DURATION=$DURATION RUNS=$RUNS PIN=$PIN"
echo "proxy RSS: idle ${idle_rss} KiB, at the end ${end_rss} KiB"
echo
echo "| connections | target | requests/s | p50 ms | p99 ms | added p50 ms | added p99 ms | proxy/direct rps | proxy peak RSS KiB | each run: requests/s |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
for c in $CONNECTIONS; do
    declare -A med=()
    for target in direct proxy; do
        # The median run by requests/s.
        lines=$(grep "^$c $target " "$results")
        all=$(echo "$lines" | field rps | paste -sd, - | sed 's/,/, /g')
        n=$(echo "$lines" | wc -l)
        mid=$(echo "$lines" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^rps=/) { r = $i; sub(/^rps=/, "", r) } print r, $0 }' \
            | sort -n | sed -n "$(( (n + 1) / 2 ))p" | cut -d' ' -f2-)
        rps=$(echo "$mid" | field rps); p50=$(echo "$mid" | field p50_ms); p99=$(echo "$mid" | field p99_ms)
        errors=$(echo "$lines" | field errors | paste -sd+ - | bc)
        peak=$(echo "$lines" | field peak_rss_kib | sort -n | tail -1)
        med[$target]="$rps $p50 $p99"
        if [ "$target" = direct ]; then
            echo "| $c | direct (plaintext) | $rps | $p50 | $p99 | – | – | – | – | $all |"
        else
            read -r drps dp50 dp99 <<<"${med[direct]}"
            added50=$(echo "$p50 - $dp50" | bc -l | awk '{printf "%.3f", $1}')
            added99=$(echo "$p99 - $dp99" | bc -l | awk '{printf "%.3f", $1}')
            ratio=$(echo "$rps / $drps" | bc -l | awk '{printf "%.2f×", $1}')
            echo "| $c | tollgate-proxy (mTLS) | $rps | $p50 | $p99 | $added50 | $added99 | $ratio | $peak | $all |"
        fi
        [ "$errors" = 0 ] || log "warning: $errors failed requests for $target at $c connections"
    done
done
exit 0
}
