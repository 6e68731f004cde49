#!/usr/bin/env bash
# Fuzz every target for SECONDS each (default 25) with libFuzzer + AddressSanitizer.
#   fuzz/run.sh                    # all targets, 25 s each
#   SECONDS_PER_TARGET=600 fuzz/run.sh c_abi
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the
# stable toolchain, so no nightly is needed. Findings go to fuzz/artifacts/.
# The build, corpus and logs live in the project's target folder
# ($CARGO_TARGET_DIR, default target/) under fuzz/: instrumented builds
# cannot share artifacts with the others, but the folder is the same.
set -euo pipefail
cd "$(dirname "$0")"
source ../scripts/progress.sh
SECS="${SECONDS_PER_TARGET:-25}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target}/fuzz"
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(agent_descriptor connection_info message_framing c_abi agent_load)
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  step "cargo install cargo-fuzz 0.13.2 (a few minutes, once)" cargo install --quiet --locked cargo-fuzz --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
export LSAN_OPTIONS="suppressions=$PWD/../scripts/stress/lsan.supp:print_suppressions=0"
export KVX_LOG=error
step "build the fuzz targets with ASan (minutes on a fresh target folder)" \
  cargo fuzz build --release --target-dir "$TARGET_DIR"
status=0
for t in "${TARGETS[@]}"; do
  corpus="$TARGET_DIR/corpus/$t"
  log="$TARGET_DIR/fuzz-$t.log"
  mkdir -p "$corpus"
  echo "==== fuzz $t for ${SECS}s"
  # agent_load's children are real UCX/NIXL loads: what crashes them is counted
  # (and kept here), not a finding; its KVX-FUZZ lines give the counts.
  export KVX_FUZZ_COUNTED_DIR="$TARGET_DIR/counted/$t"
  if cargo fuzz run --release --target-dir "$TARGET_DIR" "$t" "$corpus" seeds/"$t" -- -max_total_time="$SECS" \
      -rss_limit_mb=4096 -print_final_stats=1 > "$log" 2>&1; then
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    grep '^KVX-FUZZ' "$log" || true
    echo "KVX-CHECK ok fuzz $t: ${runs:-?} runs, 0 crashes"
  else
    status=1
    tail -n 60 "$log"
    echo "KVX-CHECK FAILED fuzz $t: crash (input saved under fuzz/artifacts/$t)"
  fi
done
exit $status
