#!/usr/bin/env bash
# Runs every fuzz target (libFuzzer, through cargo-fuzz) for a while; fails on any crash,
# timeout or out-of-memory. Usage: fuzz/run.sh [seconds per target, default 60].
#
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
# Each target starts from its seed corpus in fuzz/corpus/<target> (read only: new inputs go to
# $FUZZ_WORK_DIR/<target>). A crash leaves its input in fuzz/artifacts/<target>/.
#
# Environment: FUZZ_TARGET_DIR (build directory, default fuzz/target), FUZZ_WORK_DIR (corpus
# grown by the runs, default $FUZZ_TARGET_DIR/corpus), FUZZ_ARGS (more libFuzzer flags).
set -euo pipefail
seconds="${1:-60}"
cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
target_dir="${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
work="${FUZZ_WORK_DIR:-$target_dir/corpus}"

cargo fuzz build --target-dir "$target_dir"
for target in $(cargo fuzz list); do
  mkdir -p "$work/$target"
  echo "== fuzz $target for ${seconds}s"
  log="$work/$target.log"
  # shellcheck disable=SC2086
  if ! cargo fuzz run --target-dir "$target_dir" "$target" "$work/$target" "fuzz/corpus/$target" \
    -- -max_total_time="$seconds" -timeout=20 -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1; then
    tail -n 80 "$log"
    echo "fuzz $target: FAILED (whole log: $log; the input is in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|#[0-9]+ *DONE)' "$log"
done
