#!/usr/bin/env bash
# Benchmarks `tollgate serve` against a no-op HTTPS webhook (the baseline:
# same TLS and HTTP stack, no admission work) in one run, with the same load
# generator and parameters, and prints a markdown table.
#
#   benches/webhook.sh
#
# Environment (defaults in brackets):
#   DURATION     seconds per measured wrk run [10]
#   CONNECTIONS  wrk connections (keep-alive), space-separated list ["1 16"]
#   RUNS         runs per scenario and connection count; the median run (by
#                requests/s) is reported [3]
#   PIN          1: wrk on CPU 0, the server under test on CPU 1 [1 if >= 2 CPUs]
#   MAX_OTHER    % of one CPU that other processes may use during a run
#                before it is repeated (twice at most) [10]
#   BUILD        0: use the release binaries already in target/ [1]
#   TOLLGATE     the tollgate binary measured [the release build]
#
# Scenarios, interleaved run by run so that drift hits all of them alike:
#   noop      noop-webhook, posting webhook/testdata/pod-compliant.json
#   allowed   tollgate /validate, pod-compliant.json (admitted)
#   denied    tollgate /validate, pod-privileged.json (denied by policy)
#   mutate    tollgate /mutate, pod-compliant.json (admitted with a JSON Patch)
#   deploy-mutate    tollgate /mutate, deployment-compliant.json (patched)
#   deploy-validate  tollgate /validate, deployment-compliant.json (allowed):
#             with deploy-mutate, the two calls the apiserver makes for a
#             Deployment
# Loopback only; every process started here is stopped on exit.
# The whole script is one { ... } block, so bash reads all of it before it
# runs any: editing this file during a run does not change that run.
{
set -euo pipefail
source "$(dirname "$0")/lib.sh" webhook.sh
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-"1 16"}
RUNS=${RUNS:-3}
MAX_OTHER=${MAX_OTHER:-10}
if [ "$(nproc)" -ge 2 ]; then PIN=${PIN:-1}; else PIN=0; fi


# --- build and tools ---------------------------------------------------------
release_build -p tollgate-webhook -p tollgate-benches --bins
need wrk curl

if [ "$PIN" = 1 ]; then
    load_cpu=(taskset -c 0)
    server_cpu=(taskset -c 1)
else
    load_cpu=()
    server_cpu=()
fi

# --- processes ---------------------------------------------------------------
wait_up() { # name pid url
    for _ in $(seq 100); do
        kill -0 "$2" 2>/dev/null || die "$1 exited; its log: $(cat "$work/$1.log")"
        code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$work/ca.pem" "$3" || true)
        [ "$code" != 000 ] && return
        sleep 0.1
    done
    die "$1 did not answer on $3"
}

"$bin/noop-webhook" certs --dir "$work"
noop_port=$(free_port)
tollgate_port=$(free_port)
# The same review is posted every time: the decision cache (on by default)
# would answer all but the first. policy-eval has the cached row.
cat >"$work/tollgate.yaml" <<EOF
listen: "127.0.0.1:$tollgate_port"
tls: { certFile: "$work/tls.crt", keyFile: "$work/tls.key" }
log: { format: json }
policies: { $(decision_cache_off) }
EOF

# RUST_LOG=warn: no per-decision log line, so logging I/O is not measured.
RUST_LOG=warn "${server_cpu[@]}" "$bin/noop-webhook" --listen "127.0.0.1:$noop_port" \
    --cert "$work/tls.crt" --key "$work/tls.key" 2>"$work/noop.log" &
pids+=($!)
noop_pid=$!
RUST_LOG=warn "${server_cpu[@]}" "$tollgate" serve --config "$work/tollgate.yaml" \
    2>"$work/tollgate.log" &
pids+=($!)
tollgate_pid=$!
noop_url=https://127.0.0.1:$noop_port/validate
tollgate_url=https://127.0.0.1:$tollgate_port/validate
mutate_url=https://127.0.0.1:$tollgate_port/mutate
wait_up noop "$noop_pid" "$noop_url"
wait_up tollgate "$tollgate_pid" "https://127.0.0.1:$tollgate_port/healthz"

# --- the answers must be the real ones before anything is measured -----------
compliant=$root/webhook/testdata/pod-compliant.json
privileged=$root/webhook/testdata/pod-privileged.json
deployment=$root/webhook/testdata/deployment-compliant.json
expect() { # url body expected-substring
    local out code
    out=$(curl -sS --cacert "$work/ca.pem" -H 'Content-Type: application/json' \
        --data-binary @"$2" -w '\n%{http_code}' "$1")
    code=${out##*$'\n'}
    [ "$code" = 200 ] || die "$1 answered $code: $out"
    grep -qF "$3" <<<"$out" || die "$1 answered without $3: $out"
}
expect "$noop_url" "$compliant" '"allowed":true'
expect "$tollgate_url" "$compliant" '"allowed":true'
expect "$tollgate_url" "$privileged" '"allowed":false'
expect "$mutate_url" "$compliant" '"patchType":"JSONPatch"'
expect "$mutate_url" "$deployment" '"patchType":"JSONPatch"'
expect "$tollgate_url" "$deployment" '"allowed":true'
log "answers checked: noop allows; tollgate allows pod-compliant, denies pod-privileged, patches on /mutate"

# --- load --------------------------------------------------------------------
# wrk's summary: requests/s, p50 and p99 in ms, completed requests, and the
# count of non-2xx/3xx responses and socket errors (both must be 0).
parse() {
    awk '
    function ms(v) {
        if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
        if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
        if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
        if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
        return v
    }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    / requests in / { n = $1 }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { bad += $NF }
    /Socket errors:/ { for (i = 3; i <= NF; i += 2) { v = $(i + 1); gsub(/,/, "", v); bad += v } }
    END { printf "%s %.3f %.3f %d %d\n", rps, p50, p99, n, bad }' "$1"
}

declare -A url=([noop]=$noop_url [allowed]=$tollgate_url [denied]=$tollgate_url [mutate]=$mutate_url
    [deploy-mutate]=$mutate_url [deploy-validate]=$tollgate_url)
declare -A body=([noop]=$compliant [allowed]=$compliant [denied]=$privileged [mutate]=$compliant
    [deploy-mutate]=$deployment [deploy-validate]=$deployment)
declare -A sent=([allowed]=0 [denied]=0 [mutate]=0 [deploy-mutate]=0 [deploy-validate]=0)
scenarios=(noop allowed denied mutate deploy-mutate deploy-validate)

run_wrk() { # scenario connections seconds outfile
    BODY=${body[$1]} "${load_cpu[@]}" wrk -t1 -c"$2" -d"$3"s --latency \
        -s "$root/benches/post.lua" "${url[$1]}" >"$4" 2>"$4.err"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for s in "${scenarios[@]}"; do
    log "warm-up: $s"
    run_wrk "$s" 16 2 "$work/warmup.txt"
    read -r _ _ _ n bad <<<"$(parse "$work/warmup.txt")"
    [ "$bad" = 0 ] || die "warm-up of $s: $bad errors or non-2xx responses: $(cat "$work/warmup.txt")"
    [ "$s" = noop ] || sent[$s]=$((sent[$s] + n))
done
: >"$work/results"
rss() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
rss_warm=$(rss "$tollgate_pid")
# CPU time that neither wrk nor the server under test used during a run (other
# processes, steal), as % of one CPU. A run above MAX_OTHER is repeated (up
# to twice) after a pause; the figure is reported beside every run.
hz=$(getconf CLK_TCK)
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
proc_cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
declare -A pid=([noop]=$noop_pid [allowed]=$tollgate_pid [denied]=$tollgate_pid [mutate]=$tollgate_pid
    [deploy-mutate]=$tollgate_pid [deploy-validate]=$tollgate_pid)
for c in $CONNECTIONS; do
    for r in $(seq "$RUNS"); do
        for s in "${scenarios[@]}"; do
            out=$work/wrk-$s-$c-$r.txt
            for attempt in 1 2 3; do
                log "run $r/$RUNS: $s, $c connection(s), ${DURATION}s"
                b0=$(busy)
                p0=$(proc_cpu "${pid[$s]}")
                TIMEFORMAT='%U %S'
                { time run_wrk "$s" "$c" "$DURATION" "$out"; } 2>"$work/time"
                b1=$(busy)
                p1=$(proc_cpu "${pid[$s]}")
                read -r rps p50 p99 n bad <<<"$(parse "$out")"
                [ "$bad" = 0 ] || die "$s: $bad errors or non-2xx responses: $(cat "$out")"
                [ "$s" = noop ] || sent[$s]=$((sent[$s] + n))
                read -r other server_pct wrk_pct <<<"$(awk -v b="$((b1 - b0))" -v p="$((p1 - p0))" -v hz="$hz" -v d="$DURATION" '{
                    w = ($1 + $2) * hz; o = (b - p - w) / (d * hz) * 100
                    printf "%.0f %.0f %.0f", o < 0 ? 0 : o, p / (d * hz) * 100, w / (d * hz) * 100 }' "$work/time")"
                [ "$other" -le "$MAX_OTHER" ] && break
                log "other processes used ${other}% of a CPU during that run; repeating it"
                sleep 5
            done
            echo "$s $c $r $rps $p50 $p99 $other $server_pct $wrk_pct" >>"$work/results"
        done
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
rss_end=$(rss "$tollgate_pid")

# tollgate's own count: every request wrk completed was a 200 with the
# expected decision (the server may have answered a few that wrk cut off).
metrics=$(curl -sS --cacert "$work/ca.pem" "https://127.0.0.1:$tollgate_port/metrics")
count() { awk -v re="$1" '$0 ~ re { s += $NF } END { print s + 0 }' <<<"$metrics"; }
allowed=$(count '^tollgate_admission_requests_total[{]endpoint="validate".*decision="allow"')
denied=$(count '^tollgate_admission_requests_total[{]endpoint="validate".*decision="deny"')
mutated=$(count '^tollgate_admission_requests_total[{]endpoint="mutate".*decision="allow"')
not_ok=$(count '^tollgate_http_responses_total[{]code="[^2]')
[ "$not_ok" = 0 ] || die "tollgate answered $not_ok non-2xx responses"
want_allowed=$((sent[allowed] + sent[deploy-validate]))
want_mutated=$((sent[mutate] + sent[deploy-mutate]))
[ "$allowed" -ge "$want_allowed" ] || die "tollgate allowed $allowed, expected >= $want_allowed"
[ "$denied" -ge "${sent[denied]}" ] || die "tollgate denied $denied, expected >= ${sent[denied]}"
[ "$mutated" -ge "$want_mutated" ] || die "tollgate /mutate allowed $mutated, expected >= $want_mutated"

# --- report ------------------------------------------------------------------
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "## webhook.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "- machine: $(nproc) CPUs, $cpu, Linux $(uname -r)"
echo "- source: $(source_rev)"
echo "- load generator: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), -t1, HTTP/1.1 keep-alive over TLS, ${DURATION}s per run, $RUNS runs per row; the row shows the median run by requests/s (the lower middle one of an even count) among the runs that other processes left alone (all runs if none did); every run's requests/s in the last column"
if [ "$PIN" = 1 ]; then
    echo "- pinning: wrk on CPU 0 (taskset -c 0), server under test on CPU 1 (taskset -c 1, so one tokio worker)"
else
    echo "- pinning: none"
fi
echo "- servers run with RUST_LOG=warn (no per-decision log line)"
echo "- load average before/after: $load_before / $load_after; \"CPU: server, wrk\" is the CPU time each used during the median run, and \"other CPU\" the CPU time neither used during a run (other processes, steal), all in % of one CPU; runs with other CPU above ${MAX_OTHER}% were repeated, up to twice"
echo "- tollgate resident memory: $rss_warm MiB after the warm-up, $rss_end MiB at the end"
echo "- checked: every wrk response 2xx, no socket errors; before the runs, one curl each: noop allows, tollgate /validate allows pod-compliant and denies pod-privileged, /mutate answers a JSONPatch; after them, tollgate's metrics count $allowed /validate allows, $denied /validate denies and $mutated /mutate allows for $want_allowed, ${sent[denied]} and $want_mutated requests that wrk completed (warm-ups included), and no non-2xx response"
echo
echo "| connections | server | review | requests/s | p50 ms | p99 ms | tollgate/noop (rps, p50, p99) | CPU: server, wrk | each run: requests/s (other CPU) |"
echo "|---:|---|---|---:|---:|---:|---|---|---|"
# The median run by requests/s of scenario $1 at $2 connections, among the
# runs with other CPU <= MAX_OTHER (all runs if there are none).
median_run() {
    local runs
    runs=$(awk -v s="$1" -v c="$2" -v m="$MAX_OTHER" '$1 == s && $2 == c && $7 <= m' "$work/results")
    [ -n "$runs" ] || runs=$(awk -v s="$1" -v c="$2" '$1 == s && $2 == c' "$work/results")
    sort -k4,4g <<<"$runs" | sed -n "$((($(wc -l <<<"$runs") + 1) / 2))p"
}
for c in $CONNECTIONS; do
    read -r _ _ _ nrps np50 np99 _ _ _ <<<"$(median_run noop "$c")"
    for s in "${scenarios[@]}"; do
        read -r _ _ _ rps p50 p99 _ server_pct wrk_pct <<<"$(median_run "$s" "$c")"
        all=$(awk -v s="$s" -v c="$c" '$1 == s && $2 == c { printf "%s%.0f (%d%%)", sep, $4, $7; sep = ", " }' "$work/results")
        case $s in
        noop) server="noop-webhook" review="pod-compliant" ratio="–" ;;
        allowed) server="tollgate /validate" review="pod-compliant (allowed)" ;;
        denied) server="tollgate /validate" review="pod-privileged (denied)" ;;
        mutate) server="tollgate /mutate" review="pod-compliant (patched)" ;;
        deploy-mutate) server="tollgate /mutate" review="deployment-compliant (patched)" ;;
        deploy-validate) server="tollgate /validate" review="deployment-compliant (allowed)" ;;
        esac
        if [ "$s" != noop ]; then
            ratio=$(awk -v a="$rps" -v b="$nrps" -v c="$p50" -v d="$np50" -v e="$p99" -v f="$np99" \
                'BEGIN { printf "%.2f×, %.2f×, %.2f×", a / b, c / d, e / f }')
        fi
        printf '| %s | %s | %s | %.0f | %.3f | %.3f | %s | %s%%, %s%% | %s |\n' \
            "$c" "$server" "$review" "$rps" "$p50" "$p99" "$ratio" "$server_pct" "$wrk_pct" "$all"
    done
done
echo
for c in $CONNECTIONS; do
    read -r _ _ _ _ np50 np99 _ _ _ <<<"$(median_run noop "$c")"
    read -r _ _ _ _ mp50 mp99 _ _ _ <<<"$(median_run deploy-mutate "$c")"
    read -r _ _ _ _ vp50 vp99 _ _ _ <<<"$(median_run deploy-validate "$c")"
    awk -v c="$c" -v n50="$np50" -v n99="$np99" -v m50="$mp50" -v m99="$mp99" -v v50="$vp50" -v v99="$vp99" 'BEGIN {
        printf "- %d connection(s): a Deployment through /mutate then /validate takes p50 %.3f ms (p99 %.3f ms, the sum of the two calls'"'"' p99s), against %.3f ms (%.3f ms) for two calls to the no-op\n", c, m50 + v50, m99 + v99, 2 * n50, 2 * n99 }'
done
exit
}
