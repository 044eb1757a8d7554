#!/usr/bin/env bash
# The audit at scale (issue #19), two tables in one command:
#
# 1. `tollgate audit` over PODS Pods and DEPLOYMENTS Deployments created in
#    the real kube-apiserver (tests/control-plane), against the bundled
#    policies plus CONSTRAINTS Gatekeeper constraints, beside a bare list of
#    the same objects in the same run; wall time, the ratio, peak RSS
#    (benches/src/bin/audit-scale.rs explains the method).
# 2. Admission while the server audits: `tollgate serve` /validate at RATE
#    requests/s (open loop, `load`, HTTP/2 over TLS as the apiserver calls
#    it), with the in-server audit off and with it running back to back
#    (`audit.intervalSeconds: 1`, one worker, as deployed), over the same
#    cluster; p50/p99. Runs alternate off/on.
#
#   benches/audit.sh
#
# Environment (defaults in brackets):
#   PODS [10000]  DEPLOYMENTS [2000]  NAMESPACES [20]  CONSTRAINTS [30]
#   RUNS         runs per row; the median is reported [3]
#   WORKERS      tollgate audit --workers in part 1 [2]
#   RATE         part 2's rate, requests/s [500]
#   DURATION     measured seconds per part-2 run [10]
#   BUILD        0: use the release binaries already in target/ [1]
#
# Loopback only; every process started here is stopped on exit. The whole
# script is one { ... } block, so bash reads all of it before it runs any.
{
set -euo pipefail
source "$(dirname "$0")/lib.sh" audit.sh
PODS=${PODS:-10000}
DEPLOYMENTS=${DEPLOYMENTS:-2000}
NAMESPACES=${NAMESPACES:-20}
CONSTRAINTS=${CONSTRAINTS:-30}
RUNS=${RUNS:-3}
WORKERS=${WORKERS:-2}
RATE=${RATE:-500}
DURATION=${DURATION:-10}

need curl jq
[ -x /usr/bin/time ] || apt_install time
[ -x /usr/bin/time ] || die "/usr/bin/time is required (Debian package time)"
release_build -p tollgate-webhook -p tollgate-benches \
    --bin tollgate --bin audit-scale --bin load --bin noop-webhook
header=$(run_header)

# --- 1. audit against a bare list; the control plane stays up for part 2 -----
mkdir -p "$work/cp"
mkfifo "$work/hold"
log "part 1: creating $PODS Pods and $DEPLOYMENTS Deployments, then $RUNS list/audit runs"
TOLLGATE_BIN=$bin/tollgate "$bin/audit-scale" --pods "$PODS" --deployments "$DEPLOYMENTS" \
    --namespaces "$NAMESPACES" --constraints "$CONSTRAINTS" --runs "$RUNS" --workers "$WORKERS" \
    --keep-dir "$work/cp" <"$work/hold" >"$work/part1.md" 2>"$work/part1.log" &
audit_scale=$!
pids+=("$audit_scale")
exec 9>"$work/hold" # audit-scale keeps the control plane up until this closes
until [ -s "$work/cp/kubeconfig.path" ]; do
    kill -0 "$audit_scale" 2>/dev/null || die "audit-scale stopped: $(tail -5 "$work/part1.log")"
    sleep 2
done
echo
echo "## 1. tollgate audit against a bare list of the same objects"
echo
echo "benches/audit.sh part 1: $header; PODS=$PODS DEPLOYMENTS=$DEPLOYMENTS NAMESPACES=$NAMESPACES CONSTRAINTS=$CONSTRAINTS RUNS=$RUNS WORKERS=$WORKERS; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
cat "$work/part1.md"
grep "run [0-9]" "$work/part1.log" | sed 's/^/    /' || true

# --- 2. /validate at a fixed rate, audit off and running ----------------------
"$bin/noop-webhook" certs --dir "$work" >/dev/null
kubeconfig=$(cat "$work/cp/kubeconfig.path")
policies=$(cat "$work/cp/dirs.json")
td=$root/webhook/testdata
: >"$work/part2"
for r in $(seq "$RUNS"); do
    for mode in off on; do
        port=$(free_port)
        interval=0
        [ "$mode" = on ] && interval=1
        cat >"$work/tollgate-$mode.yaml" <<YAML
listen: "127.0.0.1:$port"
tls: { certFile: "$work/tls.crt", keyFile: "$work/tls.key" }
log: { format: json }
cluster: { kubeconfig: "$kubeconfig" }
ownNamespace: tollgate-system
policies: { dirs: $policies }
audit: { intervalSeconds: $interval, workers: 1, reports: false }
YAML
        RUST_LOG=warn "$bin/tollgate" serve --config "$work/tollgate-$mode.yaml" 2>"$work/serve-$mode.log" &
        serve=$!
        for _ in $(seq 100); do
            [ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$work/ca.pem" "https://127.0.0.1:$port/readyz" || true)" = 200 ] && break
            sleep 0.2
        done
        if [ "$mode" = on ]; then
            # The first pass starts a second after start-up; wait for its threads.
            for _ in $(seq 100); do
                grep -qs tollgate-audit /proc/"$serve"/task/*/comm && break
                sleep 0.1
            done
            grep -qs tollgate-audit /proc/"$serve"/task/*/comm || die "no audit pass started: $(tail -3 "$work/serve-$mode.log")"
        fi
        log "part 2, run $r/$RUNS: /validate at $RATE/s for ${DURATION}s, audit $mode"
        "$bin/load" --url "https://127.0.0.1:$port/validate" --method POST --body-file "$td/pod-compliant.json" \
            -H 'content-type: application/json' --ca "$work/ca.pem" --http2 -c 1 --concurrency 32 \
            --rate "$RATE" --duration "$DURATION" --warmup 2 --watch-pid "$serve" \
            --json "$work/$mode-$r.json" >"$work/load.out" 2>&1 || die "audit $mode: $(cat "$work/load.out")"
        running=no
        grep -qs tollgate-audit /proc/"$serve"/task/*/comm && running=yes
        [ "$mode" = on ] && [ "$running" = no ] && log "warning: the audit pass ended during the run"
        kill "$serve"
        wait "$serve" 2>/dev/null || true
        jq -r --arg m "$mode" --arg r "$r" --arg run "$running" \
            '[$m, $r, .achieved_rps, .latency_us.p50, .latency_us.p99, .cpu.other_pct, $run] | @tsv' \
            "$work/$mode-$r.json" >>"$work/part2"
    done
done
echo
echo "## 2. /validate at $RATE/s while the server audits"
echo
echo "benches/audit.sh part 2: $header; load --http2 -c 1 --concurrency 32 --rate $RATE --duration $DURATION --warmup 2, posting webhook/testdata/pod-compliant.json (the same review: the decision cache, on as deployed, answers most), the same policies as part 1; audit: intervalSeconds 1 (passes back to back), workers 1; median of $RUNS runs by p99"
echo
echo "| audit | held/s | p50 ms | p99 ms | each run: p99 ms (other CPU %, audit still running at the end) |"
echo "|---|---:|---:|---:|---|"
for mode in off on; do
    lines=$(awk -F'\t' -v m="$mode" '$1 == m' "$work/part2" | sort -t$'\t' -k5,5n)
    n=$(wc -l <<<"$lines")
    mid=$(sed -n "$(((n + 1) / 2))p" <<<"$lines")
    IFS=$'\t' read -r _ _ held p50 p99 _ _ <<<"$mid"
    each=$(awk -F'\t' '{ printf "%s%.3f (%.0f, %s)", (NR > 1 ? ", " : ""), $5 / 1000, $6, $7 }' <<<"$(sort -t$'\t' -k2,2n <<<"$lines")")
    awk -v m="$mode" -v h="$held" -v a="$p50" -v b="$p99" -v e="$each" \
        'BEGIN { printf "| %s | %.0f | %.3f | %.3f | %s |\n", m, h, a / 1000, b / 1000, e }'
done
# audit-scale stops its control plane once the pipe closes; the signal
# the exit trap sends would leave etcd and kube-apiserver behind.
exec 9>&-
wait "$audit_scale" || true
}
