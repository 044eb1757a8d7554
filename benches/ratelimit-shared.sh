#!/usr/bin/env bash
# What a shared rate limit (rateLimit.shared, in Redis) costs against the
# local one, in one run: three tollgate-proxy instances in front of the same
# app, identical but for the route's limit (none, local, shared), each
# loaded in turn by the same open-loop generator (`load`, HTTP/1.1 over
# mTLS, a fixed rate below the limit: the steady state). Reports latency
# p50/p99 from each request's intended send time, the proxy's CPU per
# request, the shared limit's added latency over the local one, and Redis
# round trips per 1,000 requests (INFO commandstats on the real
# redis-server, Debian's package). Then the limiter's own cost per check,
# in-process, local against shared (`ratelimit-cost`), which isolates the
# few microseconds at stake from the TLS and HTTP around them.
#
#   benches/ratelimit-shared.sh
#
# Environment (defaults in brackets):
#   RATE      requests per second [2000]
#   DURATION  measured seconds per run [10]
#   RUNS      runs per target, interleaved; the median by p50 is reported [3]
#   PIN       1: generator and Redis on CPU 0, app and proxies (the pod) on
#             CPU 1 [1 if >= 2 CPUs]
#   BUILD     0: use the release binaries already in target/ [1]
#
# Loopback only; every process started here is stopped on exit.
{
set -euo pipefail
source "$(dirname "$0")/lib.sh" ratelimit-shared.sh
RATE=${RATE:-2000}
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
if [ "$(nproc)" -ge 2 ]; then PIN=${PIN:-1}; else PIN=0; fi
need redis-server:redis-server redis-cli:redis-tools python3 curl taskset:util-linux

release_build -p tollgate-proxy -p tollgate-benches \
    --bin tollgate-proxy --bin load --bin proxy-upstream --bin proxy-load --bin ratelimit-cost
pod=() gen=()
if [ "$PIN" = 1 ]; then pod=(taskset -c 1); gen=(taskset -c 0); fi

"$bin/proxy-load" certs "$work/certs"
redis_port=$(free_port)
"${gen[@]}" redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
wait_port "$redis_port" || die "redis-server did not start: $(cat "$work/redis.log")"
rcli() { redis-cli -h 127.0.0.1 -p "$redis_port" "$@"; }
redis_calls() {
    rcli INFO commandstats | tr -d '\r' |
        awk -F'[:=,]' '/^cmdstat_(evalsha|eval):/ {n += $3} END {print n + 0}'
}

app_port=$(free_port)
"${pod[@]}" "$bin/proxy-upstream" --listen "127.0.0.1:$app_port" &
pids+=($!)

# The limit: far above RATE (the steady state is what is measured), one
# key (the client's x-user header), burst large enough for full batches.
declare -A inbound admin proxy_pid
for target in none local shared; do
    inbound[$target]=$(free_port); admin[$target]=$(free_port)
    case $target in
        none) limit="" ;;
        local) limit=", rateLimit: {requestsPerSecond: 100000, burst: 10000, key: {header: x-user}}" ;;
        shared) limit=", rateLimit: {requestsPerSecond: 100000, burst: 10000, key: {header: x-user}, shared: true}" ;;
    esac
    cat >"$work/$target.yaml" <<EOF
listeners:
  inbound: {address: 127.0.0.1, port: ${inbound[$target]}, clientAuth: required}
  outbound: {enabled: false}
  admin: {address: 127.0.0.1, port: ${admin[$target]}}
app: {port: $app_port, protocol: http1}
certs: {dir: $work/certs/proxy}
rateLimit:
  shared: {url: "redis://127.0.0.1:$redis_port", expectedReplicas: 1}
routes:
  - {name: bench, pathPrefix: /$limit}
EOF
    RUST_LOG=warn "${pod[@]}" "$bin/tollgate-proxy" --config "$work/$target.yaml" 2>"$work/$target.log" &
    proxy_pid[$target]=$!
    pids+=($!)
done
for target in none local shared; do
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:${admin[$target]}/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:${admin[$target]}/ready" >/dev/null || { cat "$work/$target.log"; die "$target proxy not ready"; }
done
curl -s "http://127.0.0.1:${admin[shared]}/ready" | grep -q "connected to" ||
    die "the shared proxy is not connected to Redis: $(curl -s "http://127.0.0.1:${admin[shared]}/ready")"
log "proxies ready (none ${proxy_pid[none]}, local ${proxy_pid[local]}, shared ${proxy_pid[shared]}), Redis on $redis_port"

load_args=(--ca "$work/certs/client/ca.crt" --cert "$work/certs/client/tls.crt" --key "$work/certs/client/tls.key"
    -H "x-user: bench" -c 4 --rate "$RATE" -d "$DURATION" --warmup 2)
: >"$work/results"
uptime | sed 's/.*load average: //' >"$work/load-before"
for run in $(seq "$RUNS"); do
    for target in none local shared; do
        before=$(redis_calls)
        out="$work/$run-$target.json"
        "${gen[@]}" "$bin/load" --url "https://localhost:${inbound[$target]}/" "${load_args[@]}" \
            --watch-pid "${proxy_pid[$target]}" --json "$out" >/dev/null
        after=$(redis_calls)
        echo "$run $target $out $((after - before))" >>"$work/results"
        log "run $run, $target: $(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("ok=%s errors=%s p50=%sus p99=%sus redis calls=%s" % (r["ok"], r["errors"]["total"],
      r["latency_us"]["p50"], r["latency_us"]["p99"], sys.argv[2]))
' "$out" "$((after - before))")"
    done
done

log "in-process: the limiter's own cost per check (ratelimit-cost)"
"${gen[@]}" "$bin/ratelimit-cost" --redis "redis://127.0.0.1:$redis_port" >"$work/cost.md"

echo
echo "benches/ratelimit-shared.sh: $(run_header)"
echo "RATE=$RATE DURATION=$DURATION RUNS=$RUNS PIN=$PIN; load average (1/5/15 min) before: $(cat "$work/load-before"), after: $(uptime | sed 's/.*load average: //')"
echo
python3 - "$work/results" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    run, target, path, calls = line.split()
    r = json.load(open(path))
    cpu = r.get("cpu_s")
    rows.setdefault(target, []).append({
        "p50": r["latency_us"]["p50"], "p99": r["latency_us"]["p99"],
        "requests": r["requests"], "ok": r["ok"], "errors": r["errors"]["total"],
        "sent": r["requests"] + round(r["rate"] * r["warmup_s"]),
        "cpu_us": (cpu / r["requests"] * 1e6) if cpu and r["requests"] else float("nan"),
        "other_pct": r["cpu"]["other_pct"], "calls": int(calls),
        "statuses": r["status_counts"],
    })
def median(runs):
    return sorted(runs, key=lambda x: x["p50"])[len(runs) // 2]
print("| limit | p50 µs | p99 µs | proxy CPU µs/request | added p50 µs (vs local) | added p99 µs (vs local) | Redis calls per 1,000 requests | each run: p50 / p99 µs | errors, non-200 |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
local = median(rows["local"])
for target in ["none", "local", "shared"]:
    runs = rows[target]
    m = median(runs)
    # Redis was called during the warm-up too: count its requests.
    calls = sum(x["calls"] for x in runs) / max(1, sum(x["sent"] for x in runs)) * 1000
    added = "–" if target != "shared" else f"{m['p50'] - local['p50']:+.0f}"
    added99 = "–" if target != "shared" else f"{m['p99'] - local['p99']:+.0f}"
    each = ", ".join(f"{x['p50']:.0f} / {x['p99']:.0f}" for x in runs)
    bad = sum(x["errors"] for x in runs) + sum(n for x in runs for s, n in x["statuses"].items() if s != "200")
    print(f"| {target} | {m['p50']:.0f} | {m['p99']:.0f} | {m['cpu_us']:.1f} | {added} | {added99} | "
          f"{calls:.2f} | {each} | {bad} |")
PY
echo
cat "$work/cost.md"
exit 0
}
