#!/usr/bin/env bash
# Where the webhook's CPU goes when it is served (issue 22): `tollgate serve`
# under a closed loop of /validate reviews (a compliant Pod, 1 connection,
# the decision cache off so that every review is evaluated), measured with
# `perf stat` (CPU, system calls and context switches per review) and
# sampled with `perf record` (cpu-clock, DWARF call graphs). Prints the
# per-review figures, the share of samples by part of the path, and the
# top symbols, as markdown.
#
#   benches/webhook-profile.sh
#
# Environment (defaults in brackets):
#   SECONDS_STAT    seconds of `perf stat` [6]
#   SECONDS_RECORD  seconds of `perf record`; 0: none, the figures only [5]
#   HTTP2           1: the load speaks h2, as kube-apiserver does [1]
#   LOG             the server's RUST_LOG: info writes the decision log line
#                   of every review, as served [info]
#   TOLLGATE        the `tollgate` binary to profile [target's release build]
#   BUILD           0: use the release binaries already in target/ [1]
# Loopback only; every process started here is stopped on exit.
{
set -euo pipefail
source "$(dirname "$0")/lib.sh" webhook-profile.sh
SECONDS_STAT=${SECONDS_STAT:-6}
SECONDS_RECORD=${SECONDS_RECORD:-5}
HTTP2=${HTTP2:-1}
LOG=${LOG:-info}

release_build -p tollgate-webhook -p tollgate-benches --bins
need perf:linux-perf curl
[ "$(nproc)" -ge 2 ] && load_cpu=(taskset -c 0) server_cpu=(taskset -c 1) || load_cpu=() server_cpu=()

"$bin/noop-webhook" certs --dir "$work"
port=$(free_port)
cat >"$work/tollgate.yaml" <<EOF
listen: "127.0.0.1:$port"
tls: { certFile: "$work/tls.crt", keyFile: "$work/tls.key" }
log: { format: json }
policies: { $(decision_cache_off) }
EOF
RUST_LOG=$LOG "${server_cpu[@]}" "$tollgate" serve --config "$work/tollgate.yaml" \
    2>"$work/tollgate.log" >/dev/null &
pids+=($!)
server=$!
for _ in $(seq 100); do
    curl -sf -o /dev/null --cacert "$work/ca.pem" "https://127.0.0.1:$port/healthz" && break
    kill -0 "$server" 2>/dev/null || die "tollgate exited: $(cat "$work/tollgate.log")"
    sleep 0.1
done
body=$root/webhook/testdata/pod-compliant.json
curl -sS --cacert "$work/ca.pem" -H 'Content-Type: application/json' \
    --data-binary @"$body" "https://127.0.0.1:$port/validate" | grep -qF '"allowed":true' ||
    die "/validate did not admit the compliant Pod"

rss() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$server/status"; }
sleep 1
rss_idle=$(rss VmRSS)
h2=()
[ "$HTTP2" = 1 ] && h2=(--http2)
load() { # seconds json
    "${load_cpu[@]}" "$bin/load" --url "https://127.0.0.1:$port/validate" --method POST \
        --body-file "$body" -H 'Content-Type: application/json' --ca "$work/ca.pem" \
        "${h2[@]}" -c 1 --warmup 1 -d "$1" --json "$2" >/dev/null
}

log "perf stat: ${SECONDS_STAT}s"
load $((SECONDS_STAT + 2)) "$work/stat.json" &
sleep 1.5
perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p "$server" \
    -o "$work/stat.csv" -- sleep "$SECONDS_STAT"
wait $!
if [ "$SECONDS_RECORD" != 0 ]; then
    log "perf record: ${SECONDS_RECORD}s"
    load $((SECONDS_RECORD + 2)) "$work/record.json" &
    sleep 1.5
    perf record -q -e cpu-clock -F 1999 -g --call-graph dwarf,65528 -p "$server" \
        -o "$work/perf.data" -- sleep "$SECONDS_RECORD" 2>/dev/null
    wait $!
fi
rss_end=$(rss VmRSS) rss_peak=$(rss VmHWM)

rps=$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
if r["ok"] == 0 or r["requests"] != r["ok"]:
    print("the load saw errors:", r["errors"], file=sys.stderr)
    sys.exit(1)
print(r["achieved_rps"])' "$work/stat.json") || die "the load failed"
echo
echo "webhook-profile.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), source $(git -C "$root" rev-parse --short HEAD), $(nproc) CPUs, HTTP2=$HTTP2 RUST_LOG=$LOG, load average $(cut -d' ' -f1-3 /proc/loadavg), binary $tollgate"
echo
echo "| per /validate review | value |"
echo "|---|---:|"
echo "| reviews/s during perf stat | $rps |"
awk -F, -v rps="$rps" -v secs="$SECONDS_STAT" '
    $3 == "task-clock" { printf "| CPU (task-clock) | %.1f µs |\n", $1 * 1000 / (rps * secs) }
    $3 == "context-switches" { printf "| context switches | %.2f |\n", $1 / (rps * secs) }
    $3 == "raw_syscalls:sys_enter" { printf "| system calls | %.2f |\n", $1 / (rps * secs) }
' "$work/stat.csv"
echo "| RSS idle, after the first review | $rss_idle KiB |"
echo "| RSS after the load; peak | $rss_end KiB; $rss_peak KiB |"
[ "$SECONDS_RECORD" != 0 ] || exit 0
# The server is not measured any more: stop it before the reports.
kill "$server"
echo
perf report -i "$work/perf.data" --no-children --no-inline --sort sym --stdio -q -g none 2>/dev/null |
    sed -n 's/^ *\([0-9.]*\)% *\[\(.\)\] *\(.*\)$/\1\t\2\t\3/p' >"$work/symbols.tsv"
# The part of the path each symbol belongs to, by its name: the first
# pattern that matches wins.
echo "| part of the path | share of samples |"
echo "|---|---:|"
awk -F'\t' '
    function part(kind, s) {
        if (kind == "k") return "kernel (TCP, epoll, scheduler)"
        if (s ~ /regorus/) return "Rego evaluation (regorus)"
        if (s ~ /malloc|free|realloc|calloc|_int_|arena|tcache|memmove|memcpy|memset/) return "malloc, free and memcpy (all callers)"
        if (s ~ /rustls|ring::|aws_lc|sha2|aes|gcm|chacha|poly1305|x25519|p256|bignum/) return "TLS (rustls and its crypto)"
        if (s ~ /h2::|hyper|http::|httparse|bytes::/) return "HTTP (hyper, h2)"
        if (s ~ /serde|json/) return "JSON (serde_json) and the review decode/encode"
        if (s ~ /tracing|log|fmt|Display|Write/) return "logging and formatting"
        if (s ~ /tokio|mio|parking|futures/) return "tokio (tasks, wake-ups, I/O)"
        if (s ~ /tollgate/) return "tollgate (its own code)"
        return "other"
    }
    { share[part($2, $3)] += $1 }
    END { for (p in share) printf "| %s | %.1f %% |\n", p, share[p] }
' "$work/symbols.tsv" | sort -t'|' -k3 -rn
echo
# Inclusive shares: each part of the served path with everything it calls
# (samples whose stack was too deep to unwind count in none of them).
perf report -i "$work/perf.data" --children --no-inline --sort sym --stdio -q -g none 2>/dev/null |
    sed -n 's/^ *\([0-9.]*\)% *[0-9.]*% *\[.\] *\(.*\)$/\1\t\2/p' >"$work/children.tsv"
echo "| part of the served path, with what it calls | share of samples |"
echo "|---|---:|"
awk -F'\t' '
    BEGIN {
        n = split("Rego evaluation (Engine::eval_rule)|regorus::engine::Engine::eval_rule$;" \
            "decoding the review (Request::decode)|tollgate_webhook::review::Request::decode$;" \
            "the namespace lookup (NamespacePolicy::input and the cache)|tollgate_webhook::pod_security::NamespacePolicy::input$;" \
            "the decision log line (tracing-subscriber JSON)|Subscriber<N,E,F,W> as tracing_core::subscriber::Subscriber>::event$;" \
            "TLS records (rustls)|rustls::;" \
            "h2 framing (h2::proto::Connection::poll)|h2::proto::connection::Connection<T,P,B>::poll$;" \
            "system calls (kernel, do_syscall_64)|^do_syscall_64$", rows, ";")
        for (i = 1; i <= n; i++) { split(rows[i], kv, "|"); name[i] = kv[1]; sub(/^[^|]*\|/, "", rows[i]); re[i] = rows[i] }
    }
    { for (i = 1; i <= n; i++) if (!(i in got) && $2 ~ re[i]) { got[i] = $1 } }
    END { for (i = 1; i <= n; i++) printf "| %s | %.1f %% |\n", name[i], got[i] + 0 }
' "$work/children.tsv"
echo
echo "| top symbols | share of samples |"
echo "|---|---:|"
head -25 "$work/symbols.tsv" | awk -F'\t' '{ s = $3; if (length(s) > 110) s = substr(s, 1, 107) "..."; gsub(/\|/, "\\|", s); printf "| `%s` | %.1f %% |\n", s, $1 }'
}
