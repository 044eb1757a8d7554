#!/usr/bin/env bash
# The webhook through the real control plane (issue #12 item 2), two tables
# in one command:
#
# 1. Pod creates through kube-apiserver (the e2e harness's control
#    plane; built and cached by tests/control-plane/build.sh on first use)
#    with no webhook, with two no-op webhooks (noop-webhook as mutating and
#    validating) and with tollgate (mutating + validating, bundled policies):
#    creates/s, p50/p90/p99 per create, the latency tollgate adds, the
#    throughput ratio, and CPU per create of each process
#    (benches/src/bin/webhook-apiserver.rs explains the method).
# 2. The webhook alone at fixed rates, open loop (`load --rate`, latency
#    from each request's intended send time), HTTP/2 over TLS as the
#    apiserver calls it: tollgate /validate and /mutate against
#    noop-webhook (same TLS and HTTP stack, no admission work), each server
#    pinned to CPU 1 and the generator to CPU 0.
#
#   benches/webhook-apiserver.sh
#
# Environment (defaults in brackets):
#   PODS         Pods created per measured run [2000]
#   CONCURRENCY  creates in flight, comma-separated [1,8]
#   RUNS         runs per row, both parts; the median is reported [3]
#   RATES        fixed rates of part 2, requests/s, space-separated ["500 1000 2000"]
#   DURATION     measured seconds per part-2 run [10]
#   MAX_OTHER    % of one CPU other processes may use during a run before it
#                is repeated (twice at most) [25]
#   PARTS        "1 2", "1" or "2" ["1 2"]
#   BUILD        0: use the release binaries already in target/ [1]
#   TOLLGATE     the tollgate binary measured [the release build]
#
# Loopback only; every process started here is stopped on exit.
# The whole script is one { ... } block, so bash reads all of it before it
# runs any: editing this file during a run does not change that run.
{
set -euo pipefail
source "$(dirname "$0")/lib.sh" webhook-apiserver.sh
PODS=${PODS:-2000}
CONCURRENCY=${CONCURRENCY:-1,8}
RUNS=${RUNS:-3}
RATES=${RATES:-"500 1000 2000"}
DURATION=${DURATION:-10}
MAX_OTHER=${MAX_OTHER:-25}
PARTS=${PARTS:-"1 2"}
if [ "$(nproc)" -ge 2 ]; then PIN=${PIN:-1}; else PIN=0; fi

need curl jq taskset:util-linux
release_build -p tollgate-webhook -p tollgate-benches \
    --bin tollgate --bin noop-webhook --bin load --bin webhook-apiserver
header=$(run_header)

# --- 1. through kube-apiserver ------------------------------------------------------
if [[ " $PARTS " == *" 1 "* ]]; then
    log "part 1: Pod creates through kube-apiserver (control plane from tests/control-plane/build.sh)"
    # RUST_LOG=warn: tollgate logs no line per decision (log I/O is not measured).
    RUST_LOG=warn TOLLGATE_BIN=$tollgate "$bin/webhook-apiserver" --pods "$PODS" \
        --concurrency "$CONCURRENCY" --runs "$RUNS" --max-other "$MAX_OTHER" >"$work/part1.md"
    echo
    echo "## 1. Pod creates through kube-apiserver"
    echo
    echo "benches/webhook-apiserver.sh part 1: $header; PODS=$PODS CONCURRENCY=$CONCURRENCY RUNS=$RUNS, unpinned (the control plane uses both CPUs)"
    cat "$work/part1.md"
fi

# --- 2. the webhook alone at fixed rates ---------------------------------------------
if [[ " $PARTS " == *" 2 "* ]]; then
    gen=() srv=()
    if [ "$PIN" = 1 ]; then gen=(taskset -c 0); srv=(taskset -c 1); fi
    "$bin/noop-webhook" certs --dir "$work" >/dev/null
    noop_port=$(free_port) tollgate_port=$(free_port)
    # Part 2 posts the same review every time: the decision cache (on by
    # default) would answer all but the first.
    cat >"$work/tollgate.yaml" <<EOF
listen: "127.0.0.1:$tollgate_port"
tls: { certFile: "$work/tls.crt", keyFile: "$work/tls.key" }
log: { format: json }
policies: { $(decision_cache_off) }
EOF
    RUST_LOG=warn "${srv[@]}" "$bin/noop-webhook" --listen "127.0.0.1:$noop_port" \
        --cert "$work/tls.crt" --key "$work/tls.key" --echo-uid 2>"$work/noop.log" &
    noop_pid=$!
    pids+=("$noop_pid")
    RUST_LOG=warn "${srv[@]}" "$tollgate" serve --config "$work/tollgate.yaml" 2>"$work/tollgate.log" &
    tollgate_pid=$!
    pids+=("$tollgate_pid")
    for url in "https://127.0.0.1:$noop_port/validate" "https://127.0.0.1:$tollgate_port/readyz"; do
        for _ in $(seq 100); do
            code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$work/ca.pem" "$url" || true)
            [ "$code" != 000 ] && break
            sleep 0.1
        done
    done
    td=$root/webhook/testdata
    post() { curl -sS --cacert "$work/ca.pem" -H 'Content-Type: application/json' --data-binary @"$2" "$1"; }
    post "https://127.0.0.1:$noop_port/validate" "$td/pod-compliant.json" | grep -qF '"allowed":true' || die "the no-op did not allow"
    post "https://127.0.0.1:$tollgate_port/validate" "$td/pod-compliant.json" | grep -qF '"allowed":true' || die "/validate did not allow pod-compliant.json"
    post "https://127.0.0.1:$tollgate_port/mutate" "$td/pod-compliant.json" | grep -qF '"patchType":"JSONPatch"' || die "/mutate did not patch pod-compliant.json"
    declare -A url=([noop]="https://127.0.0.1:$noop_port/validate" [validate]="https://127.0.0.1:$tollgate_port/validate"
        [mutate]="https://127.0.0.1:$tollgate_port/mutate")
    declare -A pid=([noop]=$noop_pid [validate]=$tollgate_pid [mutate]=$tollgate_pid)
    scenarios=(noop validate mutate)
    : >"$work/part2"
    for r in $(seq "$RUNS"); do
        for rate in $RATES; do
            for s in "${scenarios[@]}"; do
                out=$work/$s-$rate-$r.json
                for attempt in 1 2 3; do
                    log "part 2, run $r/$RUNS: $s at $rate/s for ${DURATION}s"
                    "${gen[@]}" "$bin/load" --url "${url[$s]}" --method POST --body-file "$td/pod-compliant.json" \
                        -H 'content-type: application/json' --ca "$work/ca.pem" --http2 -c 1 --concurrency 32 \
                        --rate "$rate" --duration "$DURATION" --warmup 2 --watch-pid "${pid[$s]}" \
                        --json "$out" >"$work/load.out" 2>&1 || die "$s at $rate/s: errors: $(cat "$work/load.out")"
                    other=$(jq '.cpu.other_pct | floor' "$out")
                    [ "$other" -le "$MAX_OTHER" ] && break
                    log "other processes used ${other}% of a CPU during that run; repeating it"
                    sleep 5
                done
                jq -r --arg s "$s" --arg r "$r" --arg rate "$rate" \
                    '[$s, $rate, $r, .achieved_rps, .latency_us.p50, .latency_us.p99, .latency_us.p99_9,
                      (.cpu_s / .requests * 1e6), .cpu.other_pct] | @tsv' "$out" >>"$work/part2"
            done
        done
    done
    echo
    echo "## 2. The webhook alone at fixed rates, against the no-op"
    echo
    echo "benches/webhook-apiserver.sh part 2: $header; load --http2 -c 1 --concurrency 32 --rate R --duration $DURATION --warmup 2, posting webhook/testdata/pod-compliant.json; PIN=$PIN; median run of $RUNS by p99"
    echo
    echo "| rate/s | server | held/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/request | tollgate/noop p50, p99 | each run: p99 ms (other CPU) |"
    echo "|---:|---|---:|---:|---:|---:|---:|---|---|"
    for rate in $RATES; do
        declare -A med=()
        for s in "${scenarios[@]}"; do
            lines=$(awk -F'\t' -v s="$s" -v rt="$rate" '$1 == s && $2 == rt' "$work/part2" | sort -t$'\t' -k6,6n)
            n=$(wc -l <<<"$lines")
            mid=$(sed -n "$(((n + 1) / 2))p" <<<"$lines")
            IFS=$'\t' read -r _ _ _ held p50 p99 p999 cpu _ <<<"$mid"
            each=$(awk -F'\t' '{ printf "%s%.3f (%.0f%%)", (NR > 1 ? ", " : ""), $6 / 1000, $9 }' <<<"$(sort -t$'\t' -k3,3n <<<"$lines")")
            med[$s]="$p50 $p99"
            case $s in
            noop) name="noop-webhook" ratio="–" ;;
            validate) name="tollgate /validate (allowed)" ;;
            mutate) name="tollgate /mutate (patched)" ;;
            esac
            if [ "$s" != noop ]; then
                read -r np50 np99 <<<"${med[noop]}"
                ratio=$(awk -v a="$p50" -v b="$np50" -v c="$p99" -v d="$np99" 'BEGIN { printf "%.1f×, %.1f×", a / b, c / d }')
            fi
            awk -v rt="$rate" -v nm="$name" -v h="$held" -v a="$p50" -v b="$p99" -v c="$p999" -v u="$cpu" -v ra="$ratio" -v e="$each" \
                'BEGIN { printf "| %s | %s | %.0f%s | %.3f | %.3f | %.3f | %.0f | %s | %s |\n", rt, nm, h, (h < 0.98 * rt ? " (not held)" : ""), a / 1000, b / 1000, c / 1000, u, ra, e }'
        done
        unset med
    done
fi
exit 0
}
