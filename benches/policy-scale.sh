#!/usr/bin/env bash
# Webhook latency against the number of loaded policies (issue #12 item 3),
# in one run:
#
# 1. in-process: `policy-scale --only-sweep` (one Pod review against N
#    native Rego policies and against N Gatekeeper templates; compile time
#    and µs per review);
# 2. over HTTPS: `tollgate serve` loading each generated set
#    (`policy-scale write`, `policies.dirs: [DIR]`), beside the bundled
#    default and noop-webhook (the same TLS and HTTP stack, no admission
#    work): start-up time (spawn to /readyz 200, polled with curl every
#    10 ms, so within about 15 ms), requests/s and p50/p99 of
#    /validate with webhook/testdata/pod-compliant.json at one request in
#    flight (`load` closed loop, h2 over TLS as the apiserver calls), and
#    resident memory. Every server runs at once (idle but for its turn),
#    and the runs go round them RUNS times, so drift hits all alike.
#
#   benches/policy-scale.sh
#
# Environment (defaults in brackets):
#   COUNTS    policy counts ["1 10 50 100"]
#   RUNS      rounds; the median run (by p50) is reported [3]
#   DURATION  measured seconds per run [10]
#   MAX_OTHER % of one CPU other processes may use during a run before it
#             is repeated (twice at most) [25]
#   PIN       1: the generator on CPU 0, the servers on CPU 1 [1 if >= 2 CPUs]
#   BUILD     0: use the release binaries already in target/ [1]
#   TOLLGATE  the tollgate binary served [the release build]
#   KINDS     the generated sets served, "native templates" or one of them
#             ["native templates"]
#   SWEEP     0: no in-process sweep (part 1), the servers only [1]
#
# Loopback only; every process started here is stopped on exit.
# The whole script is one { ... } block, so bash reads all of it before it
# runs any: editing this file during a run does not change that run.
{
set -euo pipefail
source "$(dirname "$0")/lib.sh" policy-scale.sh
COUNTS=${COUNTS:-"1 10 50 100"}
KINDS=${KINDS:-"native templates"}
SWEEP=${SWEEP:-1}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
MAX_OTHER=${MAX_OTHER:-25}
if [ "$(nproc)" -ge 2 ]; then PIN=${PIN:-1}; else PIN=0; fi

need curl jq taskset:util-linux
release_build -p tollgate-webhook -p tollgate-benches \
    --bin tollgate --bin noop-webhook --bin load --bin policy-scale
gen=() srv=()
if [ "$PIN" = 1 ]; then gen=(taskset -c 0); srv=(taskset -c 1); fi

header="$(run_header), $("$tollgate" --version 2>/dev/null) ($tollgate)"

# --- 1. in-process -------------------------------------------------------------------
if [ "$SWEEP" = 1 ]; then
    log "in-process sweep (policy-scale --only-sweep)"
    "${srv[@]}" "$bin/policy-scale" --only-sweep --runs 7 --sweep "$(tr ' ' ',' <<<"$COUNTS")" >"$work/inproc.md"
fi

# --- 2. over HTTPS -------------------------------------------------------------------
"$bin/noop-webhook" certs --dir "$work" >/dev/null
declare -A port=() pid=() startup=() label=()
servers=(noop bundled)
for kind in $KINDS; do
    for n in $COUNTS; do servers+=("$kind-$n"); done
done
now_ms() { date +%s%3N; }
for s in "${servers[@]}"; do
    port[$s]=$(free_port)
    if [ "$s" = noop ]; then
        label[$s]="noop-webhook"
        RUST_LOG=warn "${srv[@]}" "$bin/noop-webhook" --listen "127.0.0.1:${port[$s]}" \
            --cert "$work/tls.crt" --key "$work/tls.key" --echo-uid 2>"$work/$s.log" &
        pid[$s]=$!
        pids+=("${pid[$s]}")
        ready=https://127.0.0.1:${port[$s]}/validate
    else
        # The same review every time: the decision cache would answer it.
        policies="policies: { $(decision_cache_off) }"
        if [ "$s" = bundled ]; then
            label[$s]="tollgate, the bundled library (8 policies, 7 for a Pod)"
        else
            kind=${s%-*} n=${s##*-}
            "$bin/policy-scale" write --kind "$kind" --count "$n" --dir "$work/set-$s"
            policies="policies: { dirs: [\"$work/set-$s\"]$(decision_cache_off ", ") }"
            if [ "$kind" = native ]; then
                label[$s]="tollgate, $n native Rego $([ "$n" = 1 ] && echo policy || echo policies)"
            else
                label[$s]="tollgate, $n Gatekeeper $([ "$n" = 1 ] && echo template || echo templates)"
            fi
        fi
        cat >"$work/$s.yaml" <<EOF
listen: "127.0.0.1:${port[$s]}"
tls: { certFile: "$work/tls.crt", keyFile: "$work/tls.key" }
log: { format: json }
$policies
EOF
        t0=$(now_ms)
        RUST_LOG=warn "${srv[@]}" "$tollgate" serve --config "$work/$s.yaml" 2>"$work/$s.log" &
        pid[$s]=$!
        pids+=("${pid[$s]}")
        ready=https://127.0.0.1:${port[$s]}/readyz
    fi
    for _ in $(seq 3000); do
        kill -0 "${pid[$s]}" 2>/dev/null || die "$s exited: $(cat "$work/$s.log")"
        code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$work/ca.pem" "$ready" || true)
        if [ "$s" = noop ]; then [ "$code" != 000 ] && break; else [ "$code" = 200 ] && break; fi
        sleep 0.01
    done
    [ "$s" = noop ] || startup[$s]=$(($(now_ms) - t0))
    out=$(curl -sS --cacert "$work/ca.pem" -H 'Content-Type: application/json' \
        --data-binary @"$root/webhook/testdata/pod-compliant.json" "https://127.0.0.1:${port[$s]}/validate")
    grep -qF '"response"' <<<"$out" || die "$s did not answer a review: $out"
    log "$s ready${startup[$s]:+ in ${startup[$s]} ms}"
done

: >"$work/results"
for r in $(seq "$RUNS"); do
    for s in "${servers[@]}"; do
        out=$work/$s-$r.json
        for attempt in 1 2 3; do
            log "run $r/$RUNS: $s, ${DURATION}s"
            "${gen[@]}" "$bin/load" --url "https://127.0.0.1:${port[$s]}/validate" --method POST \
                --body-file "$root/webhook/testdata/pod-compliant.json" -H 'content-type: application/json' \
                --ca "$work/ca.pem" --http2 -c 1 --duration "$DURATION" --warmup 2 \
                --watch-pid "${pid[$s]}" --json "$out" >"$work/load.out" 2>&1 ||
                die "$s: errors: $(cat "$work/load.out")"
            other=$(jq '.cpu.other_pct | floor' "$out")
            [ "$other" -le "$MAX_OTHER" ] && break
            log "other processes used ${other}% of a CPU during that run; repeating it"
            sleep 5
        done
        jq -r --arg s "$s" --arg r "$r" '[$s, $r, .achieved_rps, .latency_us.p50, .latency_us.p99,
            .rss_kib.end, .cpu.other_pct] | @tsv' "$out" >>"$work/results"
    done
done

echo "benches/policy-scale.sh: $header"
echo
if [ "$SWEEP" = 1 ]; then
    echo "### In-process"
    cat "$work/inproc.md"
    echo
fi
echo "### Over HTTPS"
echo
echo "load --http2 -c 1 (closed loop, one request in flight) --duration $DURATION --warmup 2, POST /validate with webhook/testdata/pod-compliant.json; PIN=$PIN; median run of $RUNS by p50"
echo
echo "| server | start-up ms | requests/s | p50 ms | p99 ms | p50 × 1 policy | p50 − noop ms | RSS MiB | each run: p50 ms (other CPU) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
declare -A p50=()
for s in "${servers[@]}"; do
    lines=$(awk -F'\t' -v s="$s" '$1 == s' "$work/results" | sort -t$'\t' -k4,4n)
    n=$(wc -l <<<"$lines")
    IFS=$'\t' read -r _ _ rps med99 <<<"$(sed -n "$(((n + 1) / 2))p" <<<"$lines" | cut -f1-3,5)"
    IFS=$'\t' read -r _ _ _ med50 _ rss _ <<<"$(sed -n "$(((n + 1) / 2))p" <<<"$lines")"
    p50[$s]=$med50
    each=$(sort -t$'\t' -k2,2n <<<"$lines" | awk -F'\t' '{ printf "%s%.3f (%.0f%%)", (NR > 1 ? ", " : ""), $4 / 1000, $7 }')
    x1="–" minus="–"
    case $s in
    native-* | templates-*) x1=$(awk -v a="$med50" -v b="${p50[${s%-*}-$(awk '{print $1}' <<<"$COUNTS")]}" 'BEGIN { printf "%.1f×", a / b }') ;;
    esac
    [ "$s" = noop ] || minus=$(awk -v a="$med50" -v b="${p50[noop]}" 'BEGIN { printf "%+.3f", (a - b) / 1000 }')
    awk -v l="${label[$s]}" -v st="${startup[$s]:-–}" -v r="$rps" -v a="$med50" -v b="$med99" -v x="$x1" -v m="$minus" -v rss="$rss" -v e="$each" \
        'BEGIN { printf "| %s | %s | %.0f | %.3f | %.3f | %s | %s | %.1f | %s |\n", l, st, r, a / 1000, b / 1000, x, m, rss / 1024, e }'
done
exit 0
}
