#!/usr/bin/env bash
# Builds the cargo-fuzz targets once, then runs each for SECONDS (default
# 60) from its committed seeds. Exits non-zero, naming the crash artifact,
# if any target finds a crash. See fuzz/README.md.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
shift || true
cargo_fuzz_version=0.13.2
cache="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}"
# Outside the clone, and apart from the main target directory: the fuzz
# build's RUSTFLAGS (coverage instrumentation) would rebuild everything there.
target_dir="$cache/fuzz-target"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if [[ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $cargo_fuzz_version" ]]; then
  echo "installing cargo-fuzz $cargo_fuzz_version"
  cargo install cargo-fuzz --locked --version "=$cargo_fuzz_version"
fi

# Stable Rust: no sanitizer (ASan needs nightly), which is enough for what
# the targets look for — panics, failed invariants, timeouts, memory growth.
# cargo fuzz builds in release with debug assertions and overflow checks.
flags=(--sanitizer none --target-dir "$target_dir")
# fuzz/Cargo.lock is the workspace's Cargo.lock, trimmed, plus libfuzzer-sys.
# When a crate's dependencies changed and it was not refreshed, refresh it
# the same way (the workspace's versions stay) rather than let cargo pick
# newer ones.
if ! cargo metadata --locked --format-version 1 >/dev/null 2>&1; then
  echo "fuzz/Cargo.lock is out of date with ../Cargo.lock; refreshing it (commit the result)"
  cp ../Cargo.lock Cargo.lock
  cargo metadata --format-version 1 >/dev/null
fi

if (($#)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

started=$SECONDS
cargo fuzz build "${flags[@]}"
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - started)) s"
# The binaries run directly: `cargo fuzz run` would rebuild first whenever a
# crate's source changed since, and the runs must fuzz what was built.
bin_dir="$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release"

failed=()
passed=0
for target in "${targets[@]}"; do
  # The working corpus starts from the seeds and is git-ignored; the
  # committed seeds are never written to.
  corpus="corpus/$target"
  mkdir -p "$corpus" "artifacts/$target"
  cp -n "seeds/$target/"* "$corpus/" 2>/dev/null || true
  log="artifacts/$target/last-run.log"
  echo "== fuzz $target (${seconds} s)"
  status=0
  "$bin_dir/$target" -artifact_prefix="$PWD/artifacts/$target/" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "$corpus" >"$log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)|^#[0-9]+ +DONE' "$log" || true
  if ((status == 0)); then
    passed=$((passed + 1))
  else
    tail -n 60 "$log"
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | awk '{print $NF}' | tail -n 1)
    echo "fuzz $target FAILED (exit $status); artifact: ${artifact:-none, see fuzz/$log}"
    if [[ -n "$artifact" ]]; then
      echo "reproduce: (cd fuzz && cargo fuzz run ${flags[*]} $target $artifact)"
    fi
    failed+=("$target")
  fi
done

echo "fuzz: ${passed} passed, ${#failed[@]} failed"
if ((${#failed[@]})); then
  echo "failed targets: ${failed[*]}"
  exit 1
fi
