#!/usr/bin/env bash
# Issue 22's goals, before and after, in one run: the webhook of commit
# BEFORE (the last before issue 22's work) against this tree's, each goal
# measured by the benchmark that states it, one after the other on the same
# machine, and printed as the raw tables those benchmarks print (the summary
# in benches/README.md is read from them).
#
#   benches/webhook-speed.sh
#
# Environment (defaults in brackets):
#   BEFORE     the "before" commit [dfd8c17]
#   RUNS       runs per served row, the median reported [3]
#   DURATION   measured seconds per served run [10]
#   PODS       Pod creates per run through kube-apiserver [2000]
#   BATCHES    batches per in-process row [10]
#   STEPS      which of "inproc constraints https scale apiserver profile" to
#              run; empty: only build [all]
#   BUILD      0: use binaries already built (target's release, and the
#              "before" ones under target/webhook-speed-before/) [1]
#
# "Before" is built from a git worktree of BEFORE in the same target
# directory (the dependencies are shared; only what changed is compiled);
# its `tollgate`, `policy-eval` and `policy-scale`, and the worktree, are
# kept under target/webhook-speed-before/. "After" is this tree: `tollgate`
# as it ships (mimalloc), and `policy-eval` built with `--features mimalloc`
# to match.
# Loopback only; every process started here is stopped on exit.
# The whole script is one { ... } block, so bash reads all of it before it
# runs any: editing this file during a run does not change that run.
{
set -euo pipefail
source "$(dirname "$0")/lib.sh" webhook-speed.sh
BEFORE=${BEFORE:-dfd8c17}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
PODS=${PODS:-2000}
BATCHES=${BATCHES:-10}
STEPS=${STEPS-"inproc constraints https scale apiserver profile"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
before=$CARGO_TARGET_DIR/webhook-speed-before
step() { [[ " $STEPS " == *" $1 "* ]]; }

need curl jq wrk taskset:util-linux
if [ "$BUILD" = 1 ]; then
    log "building the before binaries ($BEFORE) in a worktree"
    # Kept beside the binaries: policy-scale reads the policies of the
    # source it was built from.
    if [ -d "$before/src" ]; then git worktree remove --force "$before/src"; fi
    git worktree prune
    mkdir -p "$before"
    git worktree add --quiet --detach "$before/src" "$BEFORE"
    (cd "$before/src" && cargo build --release --quiet --locked \
        -p tollgate-webhook -p tollgate-benches --bin tollgate --bin policy-eval --bin policy-scale)
    cp "$bin/tollgate" "$bin/policy-eval" "$bin/policy-scale" "$before/"
    log "building the after binaries"
    cargo build --release --quiet --locked -p tollgate-benches --features mimalloc --bin policy-eval
    cp "$bin/policy-eval" "$work/policy-eval-mimalloc"
    cargo build --release --quiet --locked -p tollgate-webhook -p tollgate-benches --bins
else
    cp "$bin/policy-eval" "$work/policy-eval-mimalloc"
fi
# Each side's binaries.
declare -A tollgate_of=([before]=$before/tollgate [after]=$bin/tollgate)
declare -A policy_eval_of=([before]=$before/policy-eval [after]=$work/policy-eval-mimalloc)
declare -A policy_scale_of=([before]=$before/policy-scale [after]=$bin/policy-scale)
after_rev=$(source_rev)
before_rev=$(git rev-parse --short "$BEFORE")
echo "# Issue 22, before ($before_rev) and after ($after_rev)"
echo
echo "$(run_header); load average $(cut -d' ' -f1-3 /proc/loadavg) at the start"

if step inproc; then
    log "in process: policy-eval, before and after"
    for side in before after; do
        echo
        echo "## In process, $side: policy-eval --batches $BATCHES --batch-ms 1000 --threads 1"
        echo
        taskset -c 1 "${policy_eval_of[$side]}" --batches "$BATCHES" --batch-ms 1000 --threads 1
    done
fi

if step constraints; then
    log "in process: 30 Gatekeeper constraints, policy-scale before and after, constraint-eval after"
    for side in before after; do
        echo
        echo "## In process, $side: policy-scale --runs 15 --sweep '' (no sweep)"
        echo
        # Of its rows, the one of 30 Gatekeeper constraints is the goal's.
        taskset -c 1 "${policy_scale_of[$side]}" --runs 15 --sweep ""
    done
    "$bin/constraint-eval" write --dir "$work/compute" --constraints 30 >/dev/null
    echo
    echo "## In process, after: constraint-eval, 30 constraints of five templates, a compliant and a violating Pod in turn"
    echo
    echo '```'
    taskset -c 1 "$bin/constraint-eval" --dir "$work/compute/gatekeeper" \
        --objects "$work/compute/objects.yaml" --iterations 3000 --threads 1
    echo '```'
fi

for side in before after; do
    tg=${tollgate_of[$side]}
    if step https; then
        log "over HTTPS against the no-op, $side"
        echo
        echo "## Over HTTPS, $side: webhook.sh, 1 connection"
        echo
        TOLLGATE=$tg BUILD=0 CONNECTIONS=1 RUNS=$RUNS DURATION=$DURATION benches/webhook.sh
    fi
    if step scale; then
        log "100 native policies over HTTPS, $side"
        echo
        echo "## 100 native policies over HTTPS, $side: policy-scale.sh"
        echo
        TOLLGATE=$tg BUILD=0 COUNTS=100 KINDS=native SWEEP=0 RUNS=$RUNS DURATION=$DURATION \
            benches/policy-scale.sh
    fi
    if step apiserver; then
        log "through kube-apiserver, $side"
        echo
        echo "## Through kube-apiserver, $side: webhook-apiserver.sh part 1, 1 in flight"
        echo
        TOLLGATE=$tg BUILD=0 PARTS=1 CONCURRENCY=1 RUNS=$RUNS PODS=$PODS benches/webhook-apiserver.sh
    fi
    if step profile; then
        log "the served path's profile, $side"
        echo
        echo "## The served path's profile, $side: webhook-profile.sh"
        echo
        TOLLGATE=$tg BUILD=0 benches/webhook-profile.sh
    fi
done
echo
echo "Load average $(cut -d' ' -f1-3 /proc/loadavg) at the end."
}
