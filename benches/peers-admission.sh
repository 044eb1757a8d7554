#!/usr/bin/env bash
# Admission peers side by side (issue #25): Tollgate against Gatekeeper,
# gator and OPA, built from their Go modules at pinned releases, in one run
# on the same work. Not CI: a benchmark script. Four parts:
#
# compute   The same 5 fixture templates and 30 constraints
#           (tollgate_benches::constraints) and the same two Pods (one
#           compliant, one privileged): `gator bench --engine rego` against
#           Tollgate's in-process evaluation (`constraint-eval`), 1 and 2
#           threads: per review p50/p99 and reviews/s. (The templates carry
#           no CEL, so gator's CEL engine has nothing to run.) Then the
#           native Pod Security set (policies/pod_security): `opa bench`
#           against constraint-eval on the same files and input.
# apiserver Pod creates through the real kube-apiserver (tests/control-plane)
#           with no webhook, with Gatekeeper's manager (`--operation=webhook`,
#           a process on loopback: its CRDs applied, cert rotation off, its
#           own serving certificate, registered by URL) and with `tollgate
#           serve`, each the validating webhook with the same 30 constraints
#           and registered alike (benches/src/bin/webhook-apiserver.rs):
#           creates/s, added p50/p99, webhook CPU per create, webhook RSS
#           idle and peak. In the same run, Kyverno's admission controller
#           with the Pod Security Standards' baseline level as one
#           ValidatingPolicy (benches/peers-admission/kyverno/
#           pss-baseline.yaml) against `tollgate serve` with
#           policies/pod_security at `enforce: baseline`, registered alike.
# audit     The same 10,000 Pods and 2,000 Deployments (audit-scale) audited
#           against the same 30 constraints by `tollgate audit` and by
#           Gatekeeper's audit (`--operation=audit`, passes back to back):
#           time per pass and peak RSS, and the violations each found.
# tools     `tollgate test` against `opa test` over policies/ and the v0
#           repository fixture, and `tollgate verify` against `gator verify`
#           over the same Suites: wall time (median of RUNS) and the results.
#
# Before measuring, each peer must deny the same violating Pod and admit
# the same compliant one (compute: the verdicts compared; apiserver: a
# server-side dry run through each webhook); a peer that does not fails the
# run. Kyverno (`benches/peers-admission/build.sh kyverno`) is measured when
# it builds; when it does not, the run says so and goes on without it.
#
#   benches/peers-admission.sh
#
# Environment (defaults in brackets):
#   PARTS        any of "compute apiserver audit tools" [all four]
#   RUNS         runs per row; medians are reported [3]
#   ITERATIONS   rounds over the two Pods per compute run [2000]
#   PODS         Pods created per measured apiserver run [2000]
#   CONCURRENCY  creates in flight, comma-separated [1,8]
#   AUDIT_PODS [10000]  AUDIT_DEPLOYMENTS [2000]
#   CONSTRAINTS  [30]
#   BUILD        0: use the release binaries already built [1]
#
# Loopback only; every process started here is stopped on exit. The whole
# script is one { ... } block, so bash reads all of it before it runs any.
{
set -euo pipefail
source "$(dirname "$0")/lib.sh" peers-admission.sh
PARTS=${PARTS:-"compute apiserver audit tools"}
RUNS=${RUNS:-3}
ITERATIONS=${ITERATIONS:-2000}
PODS=${PODS:-2000}
CONCURRENCY=${CONCURRENCY:-1,8}
AUDIT_PODS=${AUDIT_PODS:-10000}
AUDIT_DEPLOYMENTS=${AUDIT_DEPLOYMENTS:-2000}
CONSTRAINTS=${CONSTRAINTS:-30}
part() { [[ " $PARTS " == *" $1 "* ]]; }

need curl jq
[ -x /usr/bin/time ] || apt_install time
release_build -p tollgate-webhook -p tollgate-benches --bin tollgate --bin noop-webhook \
    --bin webhook-apiserver --bin audit-scale --bin constraint-eval
# Tollgate as the images ship it (the `dist` profile: fat LTO), about 10
# minutes to link the first time.
[ "$BUILD" = 0 ] || { log "building tollgate with the dist profile"; cargo build --profile dist --quiet -p tollgate-webhook --bin tollgate; }
tollgate=${CARGO_TARGET_DIR:-$root/target}/dist/tollgate
[ -x "$tollgate" ] || die "$tollgate is missing (run without BUILD=0)"
gk=$(benches/peers-admission/build.sh gatekeeper | tail -1)
opa=$(tests/opa/build.sh | tail -1)
kyverno=$(benches/peers-admission/build.sh kyverno | tail -1) || kyverno=""
gk_version=$(cat "$gk/VERSION")
gk_module=$(cd benches/peers-admission/gatekeeper && GOFLAGS=-mod=readonly GOTOOLCHAIN=local \
    go list -m -f '{{.Dir}}' github.com/open-policy-agent/gatekeeper/v3)
header=$(run_header)
tollgate_version=$("$tollgate" --version)
echo "# Admission peers side by side"
echo
echo "benches/peers-admission.sh: $header; RUNS=$RUNS; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "- $tollgate_version (the dist profile, as the images ship it: release with fat LTO)"
echo "- Gatekeeper $gk_version: manager and gator, built from github.com/open-policy-agent/gatekeeper/v3@$gk_version ($(go env GOVERSION), $(cat "$gk/BUILD_SECONDS") s to build here); $("$gk/gator" --version 2>&1 | head -1)"
echo "- OPA $("$opa" version | awk '/^Version:/ { print $2 }'), built from github.com/open-policy-agent/opa (tests/opa/go.mod)"
if [ -n "$kyverno" ]; then
    kyverno_module=$(cd benches/peers-admission/kyverno && GOFLAGS=-mod=readonly GOTOOLCHAIN=local \
        go list -m -f '{{.Dir}}' github.com/kyverno/kyverno)
    echo "- Kyverno $(cat "$kyverno/VERSION"): admission controller and CLI built from github.com/kyverno/kyverno in $(cat "$kyverno/BUILD_SECONDS") s"
else
    echo "- Kyverno: the build failed (benches/peers-admission/build.sh kyverno)"
fi

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# Go durations (1m2.5s, 812.3ms, 950µs) in seconds.
go_seconds() {
    awk '{ s = $0; t = 0
        if (match(s, /^[0-9.]+m[0-9]/)) { t += substr(s, 1, index(s, "m") - 1) * 60; s = substr(s, index(s, "m") + 1) }
        if (s ~ /ms$/) t += s / 1000; else if (s ~ /µs$|us$/) t += s / 1e6; else if (s ~ /ns$/) t += s / 1e9; else t += s
        printf "%.6f\n", t }'
}

# --- compute -------------------------------------------------------------------------
if part compute; then
    log "compute: gator bench against constraint-eval"
    "$bin/constraint-eval" write --dir "$work/compute" --constraints "$CONSTRAINTS"
    # The same verdicts first: the compliant Pod admitted, the privileged one denied.
    "$bin/constraint-eval" --dir "$work/compute/gatekeeper" --objects "$work/compute/objects.yaml" \
        --iterations 1 --warmup 0 --threads 1 >"$work/verdicts.all"
    head -2 "$work/verdicts.all" >"$work/verdicts.json"
    ours=$(jq -r '"\(.object)=\(if .denied then "denied(\(.denied_by | length))" else "admitted" end)"' "$work/verdicts.json" | paste -sd' ')
    # gator test: exit 1 with the violations of the objects given.
    theirs=""
    for o in compliant violating; do
        awk -v o="$o" 'BEGIN { RS = "---\n" } $0 ~ "name: " o "\n" { printf "%s", $0 }' "$work/compute/objects.yaml" >"$work/compute/$o.yaml"
        n=$("$gk/gator" test -f "$work/compute/gatekeeper" -f "$work/compute/$o.yaml" -o json 2>/dev/null | jq 'length' || true)
        [ -n "$n" ] || n=0
        if [ "$n" -gt 0 ]; then theirs+="$o=denied($n) "; else theirs+="$o=admitted "; fi
    done
    theirs=${theirs% }
    [ "$ours" = "$theirs" ] || die "verdicts differ: tollgate $ours, gator $theirs"
    [ "$ours" = "compliant=admitted violating=denied(6)" ] || die "unexpected verdicts: $ours"
    : >"$work/compute.tsv"
    for r in $(seq "$RUNS"); do
        for c in 1 2; do
            log "compute, run $r/$RUNS: $c thread(s)"
            (cd "$work/compute" && "$gk/gator" bench -f gatekeeper -f objects.yaml --engine rego \
                -n "$ITERATIONS" -c "$c" -o json 2>/dev/null) >"$work/gator-$c-$r.json"
            jq -r --arg c "$c" '.[0] | ["gator", $c, .latencies.p50, .latencies.p99, .reviewsPerSecond] | @tsv' \
                "$work/gator-$c-$r.json" | while IFS=$'\t' read -r who t p50 p99 rps; do
                printf '%s\t%s\t%s\t%s\t%s\n' "$who" "$t" "$(go_seconds <<<"$p50")" "$(go_seconds <<<"$p99")" "$rps"
            done >>"$work/compute.tsv"
            "$bin/constraint-eval" --dir "$work/compute/gatekeeper" --objects "$work/compute/objects.yaml" \
                --iterations "$ITERATIONS" --threads "$c" | tail -1 |
                jq -r '["tollgate", .threads, (.p50_us / 1e6), (.p99_us / 1e6), .reviews_per_s] | @tsv' >>"$work/compute.tsv"
        done
    done
    echo
    echo "## Compute only: $CONSTRAINTS constraints over 5 templates, 2 Pods"
    echo
    echo "Verdicts, the same from both before measuring: $ours (gator test and constraint-eval). gator bench --engine rego -n $ITERATIONS -c T against constraint-eval --iterations $ITERATIONS --threads T (a review: one Pod against every constraint, each timed alone); median of $RUNS runs by reviews/s."
    echo
    echo "| threads | engine | p50 µs | p99 µs | reviews/s | Tollgate/gator: p50, reviews/s |"
    echo "|---:|---|---:|---:|---:|---|"
    for c in 1 2; do
        declare -A row=()
        for who in gator tollgate; do
            row[$who]=$(awk -F'\t' -v w="$who" -v c="$c" '$1 == w && $2 == c' "$work/compute.tsv" | sort -t$'\t' -k5,5g |
                awk '{ l[NR] = $0 } END { print l[int((NR + 1) / 2)] }')
        done
        IFS=$'\t' read -r _ _ g50 g99 grps <<<"${row[gator]}"
        IFS=$'\t' read -r _ _ t50 t99 trps <<<"${row[tollgate]}"
        awk -v c="$c" -v a="$g50" -v b="$g99" -v r="$grps" -v v="$gk_version" \
            'BEGIN { printf "| %s | gator %s (Rego) | %.1f | %.1f | %.0f | – |\n", c, v, a * 1e6, b * 1e6, r }'
        awk -v c="$c" -v a="$t50" -v b="$t99" -v r="$trps" -v ga="$g50" -v gr="$grps" \
            'BEGIN { printf "| %s | Tollgate (regorus, in-process) | %.1f | %.1f | %.0f | %.2f×, %.2f× |\n", c, a * 1e6, b * 1e6, r, a / ga, r / gr }'
        unset row
    done

    # Native policies: the Pod Security Standards set (policies/pod_security
    # and the library it imports), the same files for both, no namespace
    # (baseline enforced). opa bench runs one query over every policy's
    # violations, so OPA shares the library's values across the policies
    # within a review; it runs on one thread.
    log "compute: opa bench against constraint-eval, policies/pod_security"
    pss=(policies/pod_security policies/lib)
    query='[v | some p; v := data.tollgate[p].violation[_]]'
    "$bin/constraint-eval" inputs --objects "$work/compute/objects.yaml" >"$work/compute/inputs.jsonl"
    ours="" theirs=""
    for o in compliant violating; do
        jq -c --arg o "$o" 'select(.name == $o) | .input' "$work/compute/inputs.jsonl" >"$work/compute/$o-input.json"
        n=$("$opa" eval "${pss[@]/#/--data=}" -i "$work/compute/$o-input.json" --format json "$query" |
            jq '.result[0].expressions[0].value | length')
        theirs+="$o=$n "
        n=$("$bin/constraint-eval" --dir "${pss[@]}" --objects "$work/compute/$o.yaml" --iterations 1 --warmup 0 --threads 1 |
            jq -s '.[0].findings')
        ours+="$o=$n "
    done
    [ "$ours" = "$theirs" ] || die "policies/pod_security verdicts differ: tollgate $ours, opa $theirs"
    [ "$ours" = "compliant=0 violating=1 " ] || die "unexpected policies/pod_security verdicts: $ours"
    : >"$work/native.tsv"
    for r in $(seq "$RUNS"); do
        log "compute, run $r/$RUNS: policies/pod_security"
        "$opa" bench "${pss[@]/#/--data=}" -i "$work/compute/compliant-input.json" --format json "$query" |
            jq -r '["opa", (.Extra["histogram_timer_rego_query_eval_ns_median"] / 1e9),
                (.Extra["histogram_timer_rego_query_eval_ns_99%"] / 1e9), (.N / .T * 1e9)] | @tsv' >>"$work/native.tsv"
        "$bin/constraint-eval" --dir "${pss[@]}" --objects "$work/compute/compliant.yaml" \
            --iterations "$ITERATIONS" --threads 1 | tail -1 |
            jq -r '["tollgate", (.p50_us / 1e6), (.p99_us / 1e6), .reviews_per_s] | @tsv' >>"$work/native.tsv"
    done
    opa_version=$("$opa" version | awk '/^Version:/ { print $2 }')
    echo
    echo "## Compute only: native policies, policies/pod_security (17 checks and their library), the compliant Pod"
    echo
    echo "Verdicts, the same from both before measuring: $ours(findings: opa eval of every policy's violations, constraint-eval). opa bench of one query over every policy's violations (p50, p99: its query-eval histogram; reviews/s: N/T) against constraint-eval --iterations $ITERATIONS --threads 1; one thread; median of $RUNS runs by reviews/s."
    echo
    echo "| engine | p50 µs | p99 µs | reviews/s | Tollgate/OPA: p50, reviews/s |"
    echo "|---|---:|---:|---:|---|"
    for who in opa tollgate; do
        awk -F'\t' -v w="$who" '$1 == w' "$work/native.tsv" | sort -t$'\t' -k4,4g |
            awk '{ l[NR] = $0 } END { print l[int((NR + 1) / 2)] }' >"$work/native-$who"
    done
    IFS=$'\t' read -r _ o50 o99 orps <"$work/native-opa"
    IFS=$'\t' read -r _ t50 t99 trps <"$work/native-tollgate"
    awk -v a="$o50" -v b="$o99" -v r="$orps" -v v="$opa_version" \
        'BEGIN { printf "| OPA %s (`opa bench`, one query) | %.1f | %.1f | %.0f | – |\n", v, a * 1e6, b * 1e6, r }'
    awk -v a="$t50" -v b="$t99" -v r="$trps" -v oa="$o50" -v orr="$orps" \
        'BEGIN { printf "| Tollgate (regorus, in-process) | %.1f | %.1f | %.0f | %.2f×, %.2f× |\n", a * 1e6, b * 1e6, r, a / oa, r / orr }'
fi

# --- apiserver -----------------------------------------------------------------------
if part apiserver; then
    modes=none,gatekeeper,tollgate-constraints
    peers=(--gatekeeper "$gk" --gatekeeper-crds "$gk_module/charts/gatekeeper/crds")
    if [ -n "$kyverno" ]; then
        modes+=,kyverno,tollgate-pss
        peers+=(--kyverno "$kyverno" --kyverno-crds "$kyverno_module/config/crds")
    fi
    log "apiserver: Pod creates, modes $modes"
    RUST_LOG=warn TOLLGATE_BIN=$tollgate "$bin/webhook-apiserver" --pods "$PODS" --concurrency "$CONCURRENCY" \
        --runs "$RUNS" --modes "$modes" --constraints "$CONSTRAINTS" "${peers[@]}" \
        --json "$work/apiserver.json" >"$work/apiserver.md" 2>"$work/apiserver.log" ||
        die "webhook-apiserver failed: $(tail -20 "$work/apiserver.log")"
    echo
    echo "## Through kube-apiserver: Gatekeeper and Tollgate as the validating webhook, $CONSTRAINTS constraints each; Kyverno and Tollgate, the PSS baseline level each"
    echo
    grep -h "admits the compliant Pod and denies" "$work/apiserver.log" | awk '!seen[$0]++' |
        sed 's/^webhook-apiserver: /Checked before measuring (at every switch): /; s/$/\n/' || true
    cat "$work/apiserver.md"
fi

# --- audit ---------------------------------------------------------------------------
if part audit; then
    log "audit: creating $AUDIT_PODS Pods and $AUDIT_DEPLOYMENTS Deployments"
    mkdir -p "$work/cp"
    mkfifo "$work/hold"
    # audit-scale's own table (bundled policies + the constraints) is #19's.
    TOLLGATE_BIN=$tollgate "$bin/audit-scale" --pods "$AUDIT_PODS" --deployments "$AUDIT_DEPLOYMENTS" \
        --constraints "$CONSTRAINTS" --runs 1 --keep-dir "$work/cp" <"$work/hold" >"$work/audit-scale.md" 2>"$work/audit-scale.log" &
    audit_scale=$!
    pids+=("$audit_scale")
    exec 9>"$work/hold"
    until [ -s "$work/cp/kubeconfig.path" ]; do
        kill -0 "$audit_scale" 2>/dev/null || die "audit-scale stopped: $(tail -5 "$work/audit-scale.log")"
        sleep 2
    done
    kubeconfig=$(cat "$work/cp/kubeconfig.path")
    kubectl=$(tests/control-plane/build.sh 2>/dev/null | tail -1)/kubectl
    k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }
    # Tollgate: the constraints only, as Gatekeeper has them.
    cat >"$work/tollgate-audit.yaml" <<YAML
policies: { dirs: ["$work/cp/gatekeeper"] }
cluster: { kubeconfig: "$kubeconfig" }
YAML
    : >"$work/audit.tsv"
    for r in $(seq "$RUNS"); do
        log "audit, run $r/$RUNS: tollgate audit"
        /usr/bin/time -f '%e %M' -o "$work/time.txt" "$tollgate" audit --format json \
            --config "$work/tollgate-audit.yaml" >"$work/tollgate-audit.json" 2>"$work/tollgate-audit.err" || true
        read -r secs kib < <(tail -1 "$work/time.txt")
        found=$(jq '[.policies[].violations] | add' "$work/tollgate-audit.json")
        found="$found (constraint, object) pairs"
        judged=$(jq '.judged' "$work/tollgate-audit.json")
        printf 'tollgate\t%s\t%s\t%s\t%s\n' "$r" "$secs" "$((kib / 1024))" "$found" >>"$work/audit.tsv"
    done
    log "audit: Gatekeeper's CRDs, templates and constraints"
    k apply --server-side -f "$gk_module/charts/gatekeeper/crds" >/dev/null
    k create namespace gatekeeper-system >/dev/null
    # Gatekeeper reads its own Pod (POD_NAME): one stands in for it.
    k run gatekeeper-audit-0 -n gatekeeper-system --image=openpolicyagent/gatekeeper --restart=Never >/dev/null
    health=$(free_port) metrics=$(free_port)
    # Passes back to back: the interval is shorter than a pass. The page
    # size is tollgate audit's (500); only the kinds the constraints match.
    # As its chart runs the audit (`generate` makes the constraint CRDs),
    # out of the cluster: its client certificate files and a directory for
    # the objects it lists.
    mkdir -p "$work/gk-certs" "$work/gk-api-cache"
    "$bin/noop-webhook" certs --dir "$work/gk-certs" >/dev/null
    POD_NAMESPACE=gatekeeper-system POD_NAME=gatekeeper-audit-0 KUBECONFIG=$kubeconfig \
        "$gk/gatekeeper" --operation=generate --operation=audit --operation=status --audit-interval=1 \
        --audit-match-kind-only=true --audit-chunk-size=500 --constraint-violations-limit=20 \
        --api-cache-dir="$work/gk-api-cache" --disable-cert-rotation --cert-dir="$work/gk-certs" \
        --health-addr="127.0.0.1:$health" --prometheus-port="$metrics" >"$work/gatekeeper-audit.log" 2>&1 &
    gk_audit=$!
    pids+=("$gk_audit")
    for f in "$work"/cp/gatekeeper/*-template.yaml; do k apply -f "$f" >/dev/null; done
    for f in "$work"/cp/gatekeeper/constraint-*.yaml; do
        for _ in $(seq 120); do k apply -f "$f" >/dev/null 2>&1 && break; sleep 1; done
        k get -f "$f" >/dev/null || die "Gatekeeper made no CRD for $f"
    done
    # Counted passes start after every constraint is in Gatekeeper's
    # client (its ConstraintPodStatus says enforced), and not with the pass
    # running then.
    deadline=$((SECONDS + 300))
    until [ "$(k get constraintpodstatuses -n gatekeeper-system -o json |
        jq '[.items[] | select(.status.enforced == true)] | length')" -ge "$CONSTRAINTS" ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "Gatekeeper did not enforce the $CONSTRAINTS constraints in 5 minutes"
        sleep 1
    done
    passes=$(($(grep -ac '"auditing is complete"' "$work/gatekeeper-audit.log" || true) + 1 + RUNS))
    log "audit: Gatekeeper's audit until pass $passes (the last $RUNS counted)"
    deadline=$((SECONDS + 1800))
    while [ "$(grep -ac '"auditing is complete"' "$work/gatekeeper-audit.log" || true)" -lt "$passes" ]; do
        kill -0 "$gk_audit" 2>/dev/null || die "Gatekeeper's audit stopped: $(tail -5 "$work/gatekeeper-audit.log")"
        [ "$SECONDS" -lt "$deadline" ] || die "Gatekeeper's audit did not finish $passes passes in 30 minutes"
        sleep 2
    done
    gk_hwm=$(awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$gk_audit/status")
    gk_rss=$(awk '/VmRSS/ { print int($2 / 1024) }' "/proc/$gk_audit/status")
    kill "$gk_audit"
    grep -a '"auditing is complete"' "$work/gatekeeper-audit.log" | jq -r '[.audit_id, .duration] | @tsv' |
        tail -n "$RUNS" >"$work/gk-passes.tsv"
    r=0
    while IFS=$'\t' read -r id duration; do
        r=$((r + 1))
        found=$(grep -a '"constraint_audited"' "$work/gatekeeper-audit.log" | jq -r --arg id "$id" 'select(.audit_id == $id)
            | .constraint_violations' | awk '{ s += $1 } END { print s + 0 }')
        printf 'gatekeeper\t%s\t%s\t%s\t%s\n' "$r" "$(go_seconds <<<"$duration")" "$gk_hwm" "$found messages" >>"$work/audit.tsv"
    done <"$work/gk-passes.tsv"
    # The same findings? Per constraint, violation messages (Gatekeeper's
    # totalViolations unit), from an uncapped tollgate audit and
    # Gatekeeper's last counted pass.
    "$tollgate" audit --format json --limit 1000000 --config "$work/tollgate-audit.yaml" >"$work/tollgate-audit-all.json" 2>/dev/null || true
    jq -r '.policies[] | select(.violations > 0) | "\(.policy) \([.listed[].message | split("; ") | length] | add)"' \
        "$work/tollgate-audit-all.json" | sort >"$work/findings-tollgate"
    last=$(tail -1 "$work/gk-passes.tsv" | cut -f1)
    grep -a '"constraint_audited"' "$work/gatekeeper-audit.log" | jq -r --arg id "$last" \
        'select(.audit_id == $id and .constraint_violations != "0") | "\(.constraint_name) \(.constraint_violations)"' |
        sort >"$work/findings-gatekeeper"
    if cmp -s "$work/findings-tollgate" "$work/findings-gatekeeper"; then
        findings="the same: $(wc -l <"$work/findings-tollgate") constraints with violations, $(awk '{ s += $2 } END { print s }' "$work/findings-tollgate") violation messages, equal per constraint"
    else
        findings="DIFFERENT per constraint (tollgate < > Gatekeeper): $(diff "$work/findings-tollgate" "$work/findings-gatekeeper" | grep '^[<>]' | head -6 | paste -sd' ' || true)"
    fi
    # audit-scale stops its control plane once the pipe closes; a signal
    # would leave etcd and kube-apiserver behind.
    exec 9>&-
    wait "$audit_scale" || true
    echo
    echo "## Audit: $AUDIT_PODS Pods and $AUDIT_DEPLOYMENTS Deployments in kube-apiserver, the same $CONSTRAINTS constraints"
    echo
    echo "tollgate audit --format json with the constraints only (a process per run; /usr/bin/time: wall time and peak RSS), judged $judged objects; Gatekeeper $gk_version --operation=audit --audit-interval=1 --audit-match-kind-only=true --audit-chunk-size=500 --constraint-violations-limit=20 (one process, passes back to back: the time of a pass is its own \"auditing is complete\" duration; peak RSS is the process's VmHWM after $passes passes, the last $RUNS counted, resident $gk_rss MiB at the end). Median of $RUNS."
    echo
    echo "| auditor | seconds per pass | peak RSS (MiB) | violations (each its own unit) | each run: seconds |"
    echo "|---|---:|---:|---:|---|"
    for who in gatekeeper tollgate; do
        secs=$(awk -F'\t' -v w="$who" '$1 == w { print $3 }' "$work/audit.tsv" | median)
        rss=$(awk -F'\t' -v w="$who" '$1 == w { print $4 }' "$work/audit.tsv" | median)
        found=$(awk -F'\t' -v w="$who" '$1 == w { print $5 }' "$work/audit.tsv" | sort -u | paste -sd/ -)
        each=$(awk -F'\t' -v w="$who" '$1 == w { printf "%s%.2f", (n++ ? ", " : ""), $3 }' "$work/audit.tsv")
        name="Gatekeeper $gk_version audit"
        [ "$who" = tollgate ] && name="tollgate audit"
        printf '| %s | %.2f | %s | %s | %s |\n' "$name" "$secs" "$rss" "$found" "$each"
    done
    g=$(awk -F'\t' '$1 == "gatekeeper" { print $3 }' "$work/audit.tsv" | median)
    t=$(awk -F'\t' '$1 == "tollgate" { print $3 }' "$work/audit.tsv" | median)
    gr=$(awk -F'\t' '$1 == "gatekeeper" { print $4 }' "$work/audit.tsv" | median)
    tr=$(awk -F'\t' '$1 == "tollgate" { print $4 }' "$work/audit.tsv" | median)
    awk -v g="$g" -v t="$t" -v gr="$gr" -v tr="$tr" 'BEGIN { printf "\nTollgate/Gatekeeper: time %.2f×, peak RSS %.2f×.\n", t / g, tr / gr }'
    echo
    echo "Findings: $findings."
    echo
    echo "audit-scale's own table in the same run (bundled policies and the constraints, against a bare list):"
    echo
    cat "$work/audit-scale.md"
fi

# --- tools ---------------------------------------------------------------------------
if part tools; then
    log "tools: tollgate test against opa test, tollgate verify against gator verify"
    # wall seconds of "$@", median of RUNS (5 at least: these are short)
    wall() {
        local i n=$((RUNS < 5 ? 5 : RUNS))
        for i in $(seq "$n"); do
            local s=$EPOCHREALTIME
            "$@" >/dev/null 2>&1 || true
            awk -v a="$s" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.4f\n", b - a }'
        done | median
    }
    echo
    echo "## Policy authors' tools: wall time (median of $((RUNS < 5 ? 5 : RUNS)) runs, a process each) and results"
    echo
    echo "| suite | Tollgate | peer | Tollgate s | peer s | Tollgate/peer | results |"
    echo "|---|---|---|---:|---:|---:|---|"
    for suite in policies tests/fixtures/gatekeeper-repo; do
        flags=()
        [ "$suite" = policies ] || flags=(--v0-compatible)
        mapfile -t files < <(find "$suite" -name '*.rego' | sort)
        ours=$("$tollgate" test "${flags[@]}" --format json "${files[@]}" 2>/dev/null |
            jq -r '.results | map("\(.group).\(.name)=\(.status)") | sort | .[]' || true)
        theirs=$("$opa" test "${flags[@]}" --format json "${files[@]}" 2>/dev/null |
            jq -r 'map("\(.package).\(.name)=\(if .error then "error" elif .fail then "fail" else "pass" end)") | sort | .[]' || true)
        same="equal: $(grep -c =pass <<<"$ours") passed, $(grep -c =fail <<<"$ours" || true) failed, each test alike"
        [ "$ours" = "$theirs" ] || same="DIFFER: $(diff <(echo "$ours") <(echo "$theirs") | grep '^[<>]' | head -5 | paste -sd' ' || true)"
        t=$(wall "$tollgate" test "${flags[@]}" "${files[@]}")
        o=$(wall "$opa" test "${flags[@]}" "${files[@]}")
        awk -v s="$suite ($(wc -l <<<"$ours") tests)" -v f="${flags[*]}" -v t="$t" -v o="$o" -v r="$same" \
            'BEGIN { printf "| %s | `tollgate test %s` | `opa test %s` | %.3f | %.3f | %.2f× | %s |\n", s, f, f, t, o, t / o, r }'
    done
    for suite in tests/fixtures/gatekeeper tests/fixtures/gatekeeper-repo; do
        ours=$("$tollgate" verify --format json "$suite" 2>/dev/null |
            jq -r '.results | group_by(.file) | map("\(.[0].file)=\(if all(.status == "pass") then "ok" else "FAIL" end)") | .[]' || true)
        theirs=$("$gk/gator" verify "$suite/..." 2>/dev/null | awk -F'\t' 'NF >= 2 && ($1 == "ok" || $1 == "FAIL") { print $2 "=" $1 }' | sort || true)
        same="equal: $(grep -c =ok <<<"$ours") Suites pass, $(grep -c =FAIL <<<"$ours" || true) fail, each alike"
        [ "$ours" = "$theirs" ] || same="DIFFER: $(diff <(echo "$ours") <(echo "$theirs") | grep '^[<>]' | paste -sd' ' || true)"
        t=$(wall "$tollgate" verify "$suite")
        g=$(wall "$gk/gator" verify "$suite/...")
        awk -v s="$suite ($(wc -l <<<"$ours") Suites)" -v t="$t" -v g="$g" -v r="$same" \
            'BEGIN { printf "| %s | `tollgate verify` | `gator verify` | %.3f | %.3f | %.2f× | %s |\n", s, t, g, t / g, r }'
    done
fi
echo
echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit 0
}
