#!/usr/bin/env bash
# Fuzz every target for SECONDS each (default 25) with libFuzzer + AddressSanitizer.
#   fuzz/run.sh                    # all targets, 25 s each
#   SECONDS_PER_TARGET=600 fuzz/run.sh c_abi
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the
# stable toolchain, so no nightly is needed. Findings go to fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")"
SECS="${SECONDS_PER_TARGET:-25}"
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(agent_descriptor connection_info message_framing c_abi)
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --quiet --locked cargo-fuzz --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
export LSAN_OPTIONS="suppressions=$PWD/../scripts/stress/lsan.supp:print_suppressions=0"
export KVX_LOG=error
cargo fuzz build --release
status=0
for t in "${TARGETS[@]}"; do
  corpus="target/corpus/$t"
  mkdir -p "$corpus"
  echo "==== fuzz $t for ${SECS}s"
  if cargo fuzz run --release "$t" "$corpus" seeds/"$t" -- -max_total_time="$SECS" -rss_limit_mb=4096 \
      -print_final_stats=1 > "target/fuzz-$t.log" 2>&1; then
    grep -E "^stat::number_of_executed_units|^Done" "target/fuzz-$t.log" | tr '\n' ' '; echo
    echo "fuzz $t: 0 crashes"
  else
    status=1
    tail -n 60 "target/fuzz-$t.log"
    echo "fuzz $t: CRASH (input saved under fuzz/artifacts/$t)"
  fi
done
exit $status
