#!/usr/bin/env bash
# tollgate-proxy against HAProxy and nginx (Debian's) and a direct
# connection, doing the same work in each scenario, on loopback, in one run:
# the same app (proxy-upstream), the same client (`load`), the same
# certificates and TLS parameters (TLS 1.3, TLS_AES_256_GCM_SHA384, X25519;
# checked per target), HTTP/1.1 keep-alive and h2 from the client, HTTP/1.1
# keep-alive to the app. Prints the versions, the configs and markdown
# tables. Issue #12, item 1.
#
#   benches/peers.sh                         # installs haproxy, nginx (apt) if missing
#
# Scenarios (configs in benches/peers/, rendered with this run's ports):
#   a        TLS termination + forward            direct, haproxy, nginx, tollgate
#   b        (a) + client certificates (mTLS)     direct, haproxy, nginx, tollgate
#   c-rs256  (b) + JWT verification, RS256        direct, haproxy, tollgate (token
#   c-es256  (b) + JWT verification, ES256          cache on, the default, and off)
#   d        (c-rs256) + a rate limit per `sub`   direct, haproxy, tollgate (cache on, off)
#   e        (d) + 1 and 3 WASM filters           direct, tollgate (d), tollgate + 1, + 3
# nginx: no JWT in Debian's build, so no (c) or (d). (e): no peer has an
# equivalent; Tollgate (d) is its reference.
#
# Per target and protocol, two measurements:
#   max   closed loop: CONNECTIONS requests in flight (HTTP/1.1: CONNECTIONS
#         connections; h2: CONNECTIONS streams over H2_CONNECTIONS
#         connections), requests/s
#   rate  open loop at RATE requests/s over the same connections: latency
#         percentiles from each request's intended send time (corrected for
#         coordinated omission), CPU seconds of the proxy per 100k requests
# plus the proxy's peak RSS (VmRSS sampled every 100 ms; nginx: master +
# worker).
#
# Environment (defaults in brackets):
#   DURATION        measured seconds per measurement [5]
#   WARMUP          unmeasured seconds before each [1]
#   RATE            offered requests/s of the open-loop measurements [2000]
#   CONNECTIONS     requests in flight, and HTTP/1.1 connections [16]
#   H2_CONNECTIONS  h2 connections [2]
#   RUNS            runs of everything; per-metric medians are reported [1]
#   SCENARIOS       ["a b c-rs256 c-es256 d e"]
#   PROTOCOLS       ["h1 h2"]
#   MAX_OTHER       % of one CPU that other processes may use during a
#                   measurement before it is repeated (twice at most; the
#                   least disturbed attempt is kept) [10]
#   PIN             1: the load generator on CPU 0; the app and the proxy
#                   (the "pod") on CPU 1, so every proxy runs one thread or
#                   worker [1 if >= 2 CPUs]
#   NICE            niceness of the load generator, the app and the proxies:
#                   on a machine shared with builds, -10 gives them about 90 %
#                   of a CPU that one nice-0 process competes for, and quick
#                   wake-ups; disturbance is still measured [-10 as root, else 0]
#   BUILD           0: use the release binaries already in target/ [1]
#   KEEP            1: keep the work directory (configs, JSON results) [0]
#   TOLLGATE        the tollgate-proxy binary measured [the release build]
#   BEFORE          a second tollgate-proxy binary (an earlier build): each
#                   Tollgate target also runs on it, as "…, before", in the
#                   same run, for before-and-after figures []
#   BEFORE_REV      what BEFORE was built from, for the tables [BEFORE's path]
#   SKIP            targets left out, by name ("nginx": the goals of issue 23
#                   compare with HAProxy only) []
#
# About 11 minutes with the defaults, after the build. Loopback only; every
# process started here is stopped on exit.
# The whole script is one { ... } block, so bash reads all of it before it
# runs any: editing this file during a run does not change that run.
{
set -euo pipefail
source "$(dirname "$0")/lib.sh" peers.sh
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
RATE=${RATE:-2000}
CONNECTIONS=${CONNECTIONS:-16}
H2_CONNECTIONS=${H2_CONNECTIONS:-2}
RUNS=${RUNS:-1}
SCENARIOS=${SCENARIOS:-"a b c-rs256 c-es256 d e"}
PROTOCOLS=${PROTOCOLS:-"h1 h2"}
MAX_OTHER=${MAX_OTHER:-10}
if [ "$(nproc)" -ge 2 ]; then PIN=${PIN:-1}; else PIN=0; fi
if [ "$(id -u)" = 0 ]; then NICE=${NICE:--10}; else NICE=${NICE:-0}; fi
tollgate_proxy=${TOLLGATE:-$bin/tollgate-proxy}
BEFORE=${BEFORE:-}
BEFORE_REV=${BEFORE_REV:-$BEFORE}
SKIP=${SKIP:-}
[ -z "$BEFORE" ] || [ -x "$BEFORE" ] || die "BEFORE=$BEFORE: not an executable"
started=$(date +%s)

# --- peers, tools, binaries ----------------------------------------------------
need haproxy nginx clang openssl python3 curl taskset:util-linux
command -v wasm-ld-14 >/dev/null || need wasm-ld:lld
release_build -p tollgate-proxy -p tollgate-benches \
    --bin tollgate-proxy --bin load --bin proxy-load --bin proxy-upstream

mkdir -p "$work/conf" "$work/res" "$work/nginx-tmp"
bash filters/build.sh "$work/filters"
"$bin/proxy-load" certs "$work/certs"
"$bin/proxy-load" jwt "$work/jwt"
cat "$work/certs/proxy/tls.crt" "$work/certs/proxy/tls.key" >"$work/haproxy.pem"

pod=(nice -n "$NICE") gen=(nice -n "$NICE")
if [ "$PIN" = 1 ]; then pod+=(taskset -c 1); gen+=(taskset -c 0); fi

app_port=$(free_port)
"${pod[@]}" "$bin/proxy-upstream" --listen "127.0.0.1:$app_port" &
app_pid=$!
pids+=("$app_pid")

# --- targets -------------------------------------------------------------------
# Each scenario's targets: "name kind template JWT_ALG JWT_CACHE", without
# SKIP's, and with each Tollgate target twice when BEFORE is set.
targets() {
    local name kind rest skip
    while read -r name kind rest; do
        for skip in $SKIP; do [ "$name" = "$skip" ] && continue 2; done
        echo "$name $kind $rest"
        if [ -n "$BEFORE" ] && [ "$kind" = tollgate ]; then echo "$name-before tollgate-before $rest"; fi
    done < <(all_targets "$1")
}
all_targets() {
    case $1 in
    a | b) printf '%s\n' "direct direct - - -" "haproxy haproxy haproxy-$1.cfg - -" \
        "nginx nginx nginx-$1.conf - -" "tollgate tollgate tollgate-$1.yaml - -" ;;
    c-rs256 | c-es256)
        local alg=${1#c-}
        alg=${alg^^}
        printf '%s\n' "direct direct - - -" "haproxy haproxy haproxy-c.cfg $alg -" \
            "tollgate tollgate tollgate-c.yaml $alg 10000" \
            "tollgate-nocache tollgate tollgate-c.yaml $alg 0" ;;
    d) printf '%s\n' "direct direct - - -" "haproxy haproxy haproxy-d.cfg RS256 -" \
        "tollgate tollgate tollgate-d.yaml RS256 10000" \
        "tollgate-nocache tollgate tollgate-d.yaml RS256 0" ;;
    e) printf '%s\n' "direct direct - - -" "tollgate-d tollgate tollgate-d.yaml RS256 10000" \
        "tollgate-1-filter tollgate tollgate-e1.yaml RS256 10000" \
        "tollgate-3-filters tollgate tollgate-e3.yaml RS256 10000" ;;
    *) die "unknown scenario $1" ;;
    esac
}

# render TEMPLATE OUT PORT ADMIN_PORT ALG CACHE
render() {
    local alg=$5 key=-
    [ "$alg" = - ] || key=$(echo "$alg" | tr 'A-Z' 'a-z').pub.pem
    sed -e "s|@DIR@|$work|g" -e "s|@PORT@|$3|g" -e "s|@ADMIN_PORT@|$4|g" \
        -e "s|@APP_PORT@|$app_port|g" -e "s|@JWT_ALG@|$alg|g" -e "s|@JWT_KEY@|$key|g" \
        -e "s|@JWT_CACHE@|$6|g" "benches/peers/$1" >"$2"
    if grep -q '@[A-Z_]*@' "$2"; then die "$2: a placeholder is left"; fi
}


# Starts a scenario's servers. Sets url[name], watch[name] (the proxy's pids,
# space-separated), server_pids.
declare -A url watch
server_pids=()
start_servers() {
    local scenario=$1 name kind template alg cache port admin conf pid
    server_pids=()
    while read -r name kind template alg cache; do
        [ "$kind" = direct ] && { url[$name]="http://127.0.0.1:$app_port/"; watch[$name]=""; continue; }
        port=$(free_port)
        admin=$(free_port)
        conf="$work/conf/$scenario-$name-${template}"
        render "$template" "$conf" "$port" "$admin" "$alg" "$cache"
        url[$name]="https://localhost:$port/"
        case $kind in
        haproxy)
            "${pod[@]}" haproxy -db -f "$conf" </dev/null 2>"$work/$scenario-$name.log" &
            pid=$!
            watch[$name]=$pid ;;
        nginx)
            "${pod[@]}" nginx -c "$conf" -p "$work" -e stderr </dev/null 2>"$work/$scenario-$name.log" &
            pid=$! ;;
        tollgate | tollgate-before)
            local proxy=$tollgate_proxy
            [ "$kind" = tollgate ] || proxy=$BEFORE
            RUST_LOG=warn "${pod[@]}" "$proxy" --config "$conf" </dev/null 2>"$work/$scenario-$name.log" &
            pid=$!
            watch[$name]=$pid ;;
        esac
        pids+=("$pid")
        server_pids+=("$pid")
        wait_port "$port" || { cat "$work/$scenario-$name.log" >&2; die "$name ($scenario) did not start"; }
        if [ "${kind%-before}" = tollgate ]; then
            for _ in $(seq 100); do
                curl -sf "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && break
                sleep 0.1
            done
            curl -sf "http://127.0.0.1:$admin/ready" >/dev/null ||
                { cat "$work/$scenario-$name.log" >&2; die "$name ($scenario) is not ready"; }
        fi
        if [ "$kind" = nginx ]; then
            # The master and its worker.
            for _ in $(seq 50); do pgrep -P "$pid" >/dev/null && break; sleep 0.1; done
            watch[$name]="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
        fi
    done < <(targets "$scenario")
}
stop_servers() {
    local p
    for p in "${server_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${server_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

# The client's arguments for a scenario's target.
client_args() {
    local scenario=$1 name=$2 args=()
    if [ "$name" != direct ]; then
        args+=(--ca "$work/certs/client/ca.crt")
        [ "$scenario" = a ] || args+=(--cert "$work/certs/client/tls.crt" --key "$work/certs/client/tls.key")
    fi
    case $scenario in
    c-es256) args+=(-H "authorization: Bearer $(cat "$work/jwt/es256.token")") ;;
    c-rs256 | d | e) args+=(-H "authorization: Bearer $(cat "$work/jwt/rs256.token")") ;;
    esac
    [ ${#args[@]} = 0 ] || printf '%s\n' "${args[@]}"
}
proto_args() {
    if [ "$1" = h2 ]; then
        echo "--http2 -c $H2_CONNECTIONS --concurrency $CONNECTIONS"
    else
        echo "-c $CONNECTIONS"
    fi
}

# --- checks: every target answers 200, enforces what it should, and
# negotiates the same TLS ---------------------------------------------------------
check() {
    local scenario=$1 name=$2 proto=$3 out=$work/check.json
    local -a args
    mapfile -t args < <(client_args "$scenario" "$name")
    # shellcheck disable=SC2046
    "$bin/load" --url "${url[$name]}" "${args[@]}" $(proto_args "$proto") -d 0.3 --warmup 0 \
        --json "$out" >/dev/null || { cat "$out" >&2; die "$name ($scenario, $proto) did not answer 200"; }
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tls"] or "-")' "$out" \
        >>"$work/tls-$proto"
    [ "$name" = direct ] && return 0
    local -a base=(--url "${url[$name]}" --ca "$work/certs/client/ca.crt" -d 0.2 --warmup 0)
    local -a cert=(--cert "$work/certs/client/tls.crt" --key "$work/certs/client/tls.key")
    if [ "$scenario" != a ]; then
        # No client certificate: refused (in or right after the handshake).
        if "$bin/load" "${base[@]}" >/dev/null 2>&1; then die "$name ($scenario) let a client without a certificate in"; fi
    fi
    case $scenario in c-* | d | e) ;; *) return 0 ;; esac
    # One request each with curl (HAProxy closes the connection after a
    # refusal, so a keep-alive client would see I/O errors).
    local token status
    token=$(cat "$work/jwt/${scenario#c-}.token" 2>/dev/null || cat "$work/jwt/rs256.token")
    local -a curl_args=(-s -o /dev/null -w '%{http_code}' --cacert "$work/certs/client/ca.crt"
        --cert "$work/certs/client/tls.crt" --key "$work/certs/client/tls.key")
    status=$(curl "${curl_args[@]}" "${url[$name]}")
    [ "$status" = 401 ] || die "$name ($scenario) answered $status without a token, not 401"
    # The signature's middle character changed.
    local sig=${token##*.} bad r=A
    [ "${sig:20:1}" = A ] && r=B
    bad="${token%.*}.${sig:0:20}$r${sig:21}"
    status=$(curl "${curl_args[@]}" -H "authorization: Bearer $bad" "${url[$name]}")
    [ "$status" = 401 ] || die "$name ($scenario) answered $status to a bad signature, not 401"
    status=$(curl "${curl_args[@]}" -H "authorization: Bearer $token" "${url[$name]}")
    [ "$status" = 200 ] || die "$name ($scenario) answered $status to a good token, not 200"
}

# --- measurements ------------------------------------------------------------------
: >"$work/cells"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# measure SCENARIO NAME PROTO MODE RUN
measure() {
    local scenario=$1 name=$2 proto=$3 mode=$4 run=$5 attempt best="" best_other=""
    local -a args watch_args=()
    mapfile -t args < <(client_args "$scenario" "$name")
    local p
    for p in ${watch[$name]} $app_pid; do watch_args+=(--watch-pid "$p"); done
    [ "$mode" = rate ] && args+=(--rate "$RATE")
    for attempt in 1 2 3; do
        local out=$work/res/$scenario.$name.$proto.$mode.$run.$attempt.json
        # shellcheck disable=SC2046
        "${gen[@]}" "$bin/load" --url "${url[$name]}" "${args[@]}" $(proto_args "$proto") \
            -d "$DURATION" --warmup "$WARMUP" --window "$DURATION" "${watch_args[@]}" \
            --json "$out" >/dev/null || { cat "$out" >&2 || true; die "$name ($scenario, $proto, $mode): errors"; }
        local other
        other=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["cpu"]["other_pct"] or 0))' "$out")
        if [ -z "$best" ] || [ "$other" -lt "$best_other" ]; then best=$out best_other=$other; fi
        log "run $run: $scenario $name $proto $mode: $(python3 -c '
import json,sys; r=json.load(open(sys.argv[1])); l=r["latency_us"]
print("%.0f req/s p50 %s p99 %s µs, other CPU %s%%" % (r["achieved_rps"], l["p50"], l["p99"], r["cpu"]["other_pct"]))' "$out")"
        [ "$other" -le "$MAX_OTHER" ] && break
        [ "$attempt" = 3 ] || { log "other processes used ${other}% of a CPU; repeating"; sleep 3; }
    done
    echo "$scenario $name $proto $mode $run $best" >>"$work/cells"
}

for scenario in $SCENARIOS; do
    log "scenario $scenario: starting servers"
    start_servers "$scenario"
    names=$(targets "$scenario" | cut -d' ' -f1)
    for proto in $PROTOCOLS; do
        for name in $names; do check "$scenario" "$name" "$proto"; done
    done
    for run in $(seq "$RUNS"); do
        for proto in $PROTOCOLS; do
            for name in $names; do
                for mode in max rate; do measure "$scenario" "$name" "$proto" "$mode" "$run"; done
            done
        done
    done
    stop_servers
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report --------------------------------------------------------------------------
for proto in $PROTOCOLS; do
    n=$(sort -u "$work/tls-$proto" | grep -vc '^-$' || true)
    [ "$n" = 1 ] || die "targets negotiated different TLS parameters over $proto: $(sort -u "$work/tls-$proto" | tr '\n' ';')"
done
lockver() { awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock; }
echo
echo "## benches/peers.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $(( ($(date +%s) - started) / 60 )) min"
echo
echo "- machine: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), Linux $(uname -r); load average before/after: $load_before / $load_after"
echo "- source $(source_rev); tollgate-proxy: rustls $(lockver rustls), hyper $(lockver hyper), tokio $(lockver tokio), wasmtime $(lockver wasmtime); $(rustc --version)"
echo "- $(haproxy -v | head -1); $(haproxy -vv 2>/dev/null | grep -E '^(Built with|Running on) OpenSSL' | tr '\n' ';' | sed 's/;$//')"
echo "- $(nginx -v 2>&1 | head -1); $(nginx -V 2>&1 | grep -i 'built with openssl' | head -1)"
echo "- TLS as the client saw it (the same for every target): HTTP/1.1: $(grep -v '^-$' "$work/tls-h1" 2>/dev/null | sort -u | head -1); h2: $(grep -v '^-$' "$work/tls-h2" 2>/dev/null | sort -u | head -1)"
echo "- load: DURATION=${DURATION}s after WARMUP=${WARMUP}s per measurement; max: closed loop, $CONNECTIONS requests in flight (HTTP/1.1: $CONNECTIONS connections; h2: $H2_CONNECTIONS connections); rate: open loop at RATE=$RATE requests/s on the same connections, latency from each request's intended send time; RUNS=$RUNS (per-metric medians); PIN=$PIN (load on CPU 0; app and proxy on CPU 1); NICE=$NICE"
echo "- checked before measuring: every target answers 200; (b)–(e) refuse a client without a certificate; (c)–(e) answer 401 without a token and to a token with a bad signature; every measurement had no error"
echo
[ -z "$BEFORE" ] || echo "- \"before\": tollgate-proxy built from $BEFORE_REV, run on the same configs"
echo
python3 - "$work/cells" "$app_pid" "$MAX_OTHER" <<'PY'
import json, statistics, sys
cells_file, app_pid, max_other = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
cells = {}
order = []
for line in open(cells_file):
    scenario, name, proto, mode, run, path = line.split()
    key = (scenario, proto, name)
    if key not in order:
        order.append(key)
    cells.setdefault(key, {}).setdefault(mode, []).append(json.load(open(path)))

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def proxy_cpu(r):
    w = [x for x in r.get("watched", []) if x["pid"] != app_pid]
    if not w:  # direct: the app's
        w = [x for x in r.get("watched", []) if x["pid"] == app_pid]
    return sum(x["cpu_s"] or 0 for x in w)

def proxy_peak(r):
    w = [x for x in r.get("watched", []) if x["pid"] != app_pid]
    if not w:
        w = [x for x in r.get("watched", []) if x["pid"] == app_pid]
    return sum(x["rss_kib"]["peak"] or 0 for x in w)

def summary(key):
    c = cells[key]
    mx, rt = c["max"], c["rate"]
    return {
        "rps": med([r["achieved_rps"] for r in mx]),
        "cpu_max": med([proxy_cpu(r) / r["requests"] * 1e5 for r in mx if r["requests"]]),
        "p50": med([r["latency_us"]["p50"] for r in rt]),
        "p90": med([r["latency_us"]["p90"] for r in rt]),
        "p99": med([r["latency_us"]["p99"] for r in rt]),
        "p999": med([r["latency_us"]["p99_9"] for r in rt]),
        "cpu_rate": med([proxy_cpu(r) / r["requests"] * 1e5 for r in rt if r["requests"]]),
        "rss": max(proxy_peak(r) for r in mx + rt) / 1024,
        "other": max(r["cpu"]["other_pct"] or 0 for r in mx + rt),
        "delay": max(r["send_delay_us"]["p99"] for r in rt),
    }

titles = {
    "a": "(a) TLS termination + forward",
    "b": "(b) + client certificates (mTLS)",
    "c-rs256": "(c) + JWT verification, RS256",
    "c-es256": "(c) + JWT verification, ES256",
    "d": "(d) + rate limit per `sub` (JWT RS256)",
    "e": "(e) + WASM filters (Tollgate alone; its (d) is the reference)",
}
labels = {
    "direct": "direct (plaintext, no proxy)",
    "haproxy": "HAProxy",
    "nginx": "nginx",
    "tollgate": "Tollgate",
    "tollgate-nocache": "Tollgate, no token cache",
    "tollgate-d": "Tollgate (d)",
    "tollgate-1-filter": "Tollgate (d) + 1 filter",
    "tollgate-3-filters": "Tollgate (d) + 3 filters",
}
def label_of(name):
    if name.endswith("-before"):
        return labels.get(name[: -len("-before")], name) + ", before"
    return labels.get(name, name)

vs_haproxy = []
scenarios = []
for s, _, _ in order:
    if s not in scenarios:
        scenarios.append(s)
for s in scenarios:
    print(f"### {titles.get(s, s)}\n")
    print("| protocol | target | max req/s | ×direct | p50 µs | p90 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | CPU s/100k req at max / at rate | peak RSS MiB | other CPU % (max) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for proto in ["h1", "h2"]:
        keys = [k for k in order if k[0] == s and k[1] == proto]
        if not keys:
            continue
        sums = {k[2]: summary(k) for k in keys}
        d = sums.get("direct")
        for k in keys:
            m = sums[k[2]]
            if k[2] == "direct" or d is None:
                ratio = add50 = add99 = "–"
            else:
                ratio = f"{m['rps'] / d['rps']:.2f}×"
                add50 = f"{m['p50'] - d['p50']:.0f}"
                add99 = f"{m['p99'] - d['p99']:.0f}"
            label = label_of(k[2]) + (" (the app's CPU, RSS)" if k[2] == "direct" else "")
            p = "HTTP/1.1" if proto == "h1" else "h2"
            print(f"| {p} | {label} | {m['rps']:.0f} | {ratio} | {m['p50']:.0f} | {m['p90']:.0f} | {m['p99']:.0f} | {m['p999']:.0f} | {add50} | {add99} | {m['cpu_max']:.2f} / {m['cpu_rate']:.2f} | {m['rss']:.1f} | {m['other']:.0f} |")
        h = sums.get("haproxy")
        for t in ["tollgate", "tollgate-before", "tollgate-nocache", "tollgate-nocache-before"]:
            if h and t in sums:
                m = sums[t]
                vs_haproxy.append((s, proto, label_of(t), m["rps"] / h["rps"], m["p99"] - h["p99"], m["cpu_rate"] / h["cpu_rate"] if h["cpu_rate"] else float("nan"), m["p50"] - h["p50"], m["rss"]))
    print()
if vs_haproxy:
    print("### Tollgate against HAProxy (same run)\n")
    print("| scenario | protocol | Tollgate | max req/s, Tollgate/HAProxy | p50 at rate, Tollgate − HAProxy µs | p99 at rate, Tollgate − HAProxy µs | CPU per request at rate, Tollgate/HAProxy | peak RSS MiB | slower than HAProxy by >10 %? |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for s, proto, t, r, dp99, c, dp50, rss in vs_haproxy:
        p = "HTTP/1.1" if proto == "h1" else "h2"
        flag = "**yes**" if r < 0.9 else "no"
        print(f"| {s} | {p} | {t} | {r:.2f}× | {dp50:+.0f} | {dp99:+.0f} | {c:.2f}× | {rss:.1f} | {flag} |")
    print()
print(f"max req/s: closed loop; percentiles: open loop at the fixed rate, from each request's intended send time; added: against direct in the same run; CPU: the proxy's own user+system seconds per 100k requests (direct: the app's); peak RSS: the proxy's (nginx: master + worker), the largest 100 ms sample over all its measurements; other CPU: what neither the load generator nor the proxy nor the app used (other processes, steal), in % of one CPU, the most disturbed measurement of the row (each was repeated up to twice above {max_other:.0f} %). The generator's own send delay, p99 over the open-loop measurements: {max(summary(k)['delay'] for k in order)} µs at most.")
PY

echo
echo "### The configs of this run (benches/peers/, rendered)"
for f in "$work"/conf/*; do
    echo
    echo "#### $(basename "$f")"
    echo
    echo '```'
    grep -v '^ *#' "$f" | sed '/^$/d'
    echo '```'
done
exit 0
}
