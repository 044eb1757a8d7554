#!/usr/bin/env bash
# What tracing costs the proxy, in one run: four tollgate-proxy instances in
# front of the same app, identical but for `tracing:` - off, sampling 1 %,
# sampling 100 % (both exporting OTLP/HTTP to a real Jaeger v2, built from
# its Go module by tests/jaeger/build.sh), and 100 % to a collector that is
# down (nothing listening: every export fails, every span is dropped and
# counted). Each is loaded in turn by the same open-loop generator (`load`,
# HTTP/1.1 over mTLS, a fixed rate, no traceparent: the proxy starts the
# traces). Reports latency p50/p99 from each request's intended send time,
# the proxy's CPU per request and added CPU against tracing off, its RSS
# (peak during the runs, and the high-water mark), and the spans exported
# and dropped.
#
#   benches/proxy-tracing.sh
#
# Environment (defaults in brackets):
#   RATE      requests per second [2000]
#   DURATION  measured seconds per run [10]
#   RUNS      runs per target, interleaved; the median by p50 is reported [3]
#   PIN       1: generator and Jaeger on CPU 0, app and proxies (the pod) on
#             CPU 1 [1 if >= 2 CPUs]
#   BUILD     0: use the release binaries already in target/ [1]
#
# Loopback only; every process started here is stopped on exit.
{
set -euo pipefail
source "$(dirname "$0")/lib.sh" proxy-tracing.sh
RATE=${RATE:-2000}
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
if [ "$(nproc)" -ge 2 ]; then PIN=${PIN:-1}; else PIN=0; fi
need python3 curl taskset:util-linux

release_build -p tollgate-proxy -p tollgate-benches \
    --bin tollgate-proxy --bin load --bin proxy-upstream --bin proxy-load
jaeger_bin=$(bash "$root/tests/jaeger/build.sh")/jaeger
pod=() gen=()
if [ "$PIN" = 1 ]; then pod=(taskset -c 1); gen=(taskset -c 0); fi

"$bin/proxy-load" certs "$work/certs"

otlp=$(free_port) otlp_grpc=$(free_port) query=$(free_port) query_grpc=$(free_port) health=$(free_port)
cat >"$work/jaeger.yaml" <<EOF
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}
  telemetry: {metrics: {level: none}}
extensions:
  jaeger_query: {storage: {traces: mem}, http: {endpoint: "127.0.0.1:$query"}, grpc: {endpoint: "127.0.0.1:$query_grpc"}}
  jaeger_storage: {backends: {mem: {memory: {max_traces: 100000}}}}
  healthcheckv2: {use_v2: true, http: {endpoint: "127.0.0.1:$health"}}
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:$otlp_grpc"}, http: {endpoint: "127.0.0.1:$otlp"}}}
processors: {batch: {}}
exporters: {jaeger_storage_exporter: {trace_storage: mem}}
EOF
"${gen[@]}" "$jaeger_bin" --config "$work/jaeger.yaml" >"$work/jaeger.log" 2>&1 &
pids+=($!)
wait_port "$otlp" || die "jaeger did not start: $(tail -20 "$work/jaeger.log")"
down=$(free_port) # nothing listens here

app_port=$(free_port)
"${pod[@]}" "$bin/proxy-upstream" --listen "127.0.0.1:$app_port" &
pids+=($!)

targets=(off 1pct 100pct 100pct-down)
declare -A inbound admin proxy_pid
for target in "${targets[@]}"; do
    inbound[$target]=$(free_port); admin[$target]=$(free_port)
    case $target in
        off) tracing="" ;;
        1pct) tracing="tracing: {otlp: \"http://127.0.0.1:$otlp/v1/traces\", sampling: 0.01}" ;;
        100pct) tracing="tracing: {otlp: \"http://127.0.0.1:$otlp/v1/traces\", sampling: 1.0}" ;;
        100pct-down) tracing="tracing: {otlp: \"http://127.0.0.1:$down/v1/traces\", sampling: 1.0}" ;;
    esac
    cat >"$work/$target.yaml" <<EOF
listeners:
  inbound: {address: 127.0.0.1, port: ${inbound[$target]}, clientAuth: required}
  outbound: {enabled: false}
  admin: {address: 127.0.0.1, port: ${admin[$target]}}
app: {port: $app_port, protocol: http1}
certs: {dir: $work/certs/proxy}
accessLog: {enabled: false}
routes:
  - {name: bench, pathPrefix: /}
$tracing
EOF
    RUST_LOG=warn "${pod[@]}" "$bin/tollgate-proxy" --config "$work/$target.yaml" 2>"$work/$target.log" &
    proxy_pid[$target]=$!
    pids+=($!)
done
for target in "${targets[@]}"; do
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:${admin[$target]}/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:${admin[$target]}/ready" >/dev/null || { cat "$work/$target.log"; die "$target proxy not ready"; }
done
log "proxies ready; Jaeger OTLP on $otlp; the down collector on $down"

metric() { curl -s "http://127.0.0.1:${admin[$1]}/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
load_args=(--ca "$work/certs/client/ca.crt" --cert "$work/certs/client/tls.crt" --key "$work/certs/client/tls.key"
    -c 4 --rate "$RATE" -d "$DURATION" --warmup 2)
: >"$work/results"
uptime | sed 's/.*load average: //' >"$work/load-before"
for run in $(seq "$RUNS"); do
    for target in "${targets[@]}"; do
        out="$work/$run-$target.json"
        "${gen[@]}" "$bin/load" --url "https://localhost:${inbound[$target]}/" "${load_args[@]}" \
            --watch-pid "${proxy_pid[$target]}" --json "$out" >/dev/null
        echo "$run $target $out" >>"$work/results"
        log "run $run, $target: $(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("ok=%s errors=%s p50=%sus p99=%sus" % (r["ok"], r["errors"]["total"], r["latency_us"]["p50"], r["latency_us"]["p99"]))
' "$out")"
    done
done
sleep 2 # the last batches
: >"$work/spans"
for target in "${targets[@]}"; do
    echo "$target $(metric "$target" tollgate_trace_spans_exported_total) $(metric "$target" tollgate_trace_spans_dropped_total)" >>"$work/spans"
done

echo
echo "benches/proxy-tracing.sh: $(run_header)"
echo "RATE=$RATE DURATION=$DURATION RUNS=$RUNS PIN=$PIN; load average (1/5/15 min) before: $(cat "$work/load-before"), after: $(uptime | sed 's/.*load average: //')"
echo
python3 - "$work/results" "$work/spans" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    run, target, path = line.split()
    r = json.load(open(path))
    cpu = r.get("cpu_s")
    w = r.get("watched") or [{}]
    rows.setdefault(target, []).append({
        "p50": r["latency_us"]["p50"], "p99": r["latency_us"]["p99"],
        "requests": r["requests"], "errors": r["errors"]["total"],
        "cpu_us": (cpu / r["requests"] * 1e6) if cpu and r["requests"] else float("nan"),
        "rss_peak": (r.get("rss_kib") or {}).get("peak", 0) or 0, "hwm": w[0].get("hwm_kib", 0) or 0,
        "statuses": r["status_counts"],
    })
spans = {}
for line in open(sys.argv[2]):
    parts = line.split()
    spans[parts[0]] = (parts[1:] + ["–", "–"])[:2]
def median(values):
    return sorted(values)[len(values) // 2]
off_p99 = median([x["p99"] for x in rows["off"]])
off_cpu = median([x["cpu_us"] for x in rows["off"]])
print("| tracing | p50 µs | p99 µs | p99 vs off | proxy CPU µs/request | added CPU µs/request | RSS peak / high-water MiB | spans exported / dropped | each run: p50 / p99 µs | errors, non-200 |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|---|")
for target in ["off", "1pct", "100pct", "100pct-down"]:
    runs = rows[target]
    p50 = median([x["p50"] for x in runs])
    p99 = median([x["p99"] for x in runs])
    cpu = median([x["cpu_us"] for x in runs])
    added = "–" if target == "off" else f"{cpu - off_cpu:+.1f}"
    vs = "–" if target == "off" else f"{(p99 / off_p99 - 1) * 100:+.0f} %"
    rss = max(x["rss_peak"] for x in runs) / 1024
    hwm = max(x["hwm"] for x in runs) / 1024
    each = ", ".join(f"{x['p50']:.0f} / {x['p99']:.0f}" for x in runs)
    bad = sum(x["errors"] for x in runs) + sum(n for x in runs for s, n in x["statuses"].items() if s != "200")
    exported, dropped = spans.get(target, ("–", "–"))
    print(f"| {target} | {p50:.0f} | {p99:.0f} | {vs} | {cpu:.1f} | {added} | {rss:.1f} / {hwm:.1f} | "
          f"{exported or '–'} / {dropped or '–'} | {each} | {bad} |")
PY
exit 0
}
