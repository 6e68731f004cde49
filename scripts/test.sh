#!/usr/bin/env bash
# Every test, as CI runs it (.ci/run): the Rust unit and integration tests on
# both backends (real UCX and NIXL between threads and processes, over shared
# memory and TCP), the fault tests between processes, the CMake package with
# the C++ GoogleTest suites and the examples, the wheel and the Python suite
# in fresh virtual environments, bounded fuzzing, ASan, UBSan, valgrind and
# Miri, after the lint gates (rustfmt, clippy, clang-format). Ends with one
# table and the line "N passed, N failed, N skipped"; exits 1 when anything
# failed.
#
#   scripts/test.sh                               # every suite
#   SUITES="rust faults" scripts/test.sh          # only these (names from the list below)
#
# Every suite runs even when an earlier one failed. Its output is shown as it
# runs and kept in $TEST_LOGS/<suite>.log, from which scripts/test_summary.py
# counts the results (see there for what it reads).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/progress.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
TEST_LOGS="${TEST_LOGS:-$CARGO_TARGET_DIR/test-logs}"

# Integration tests besides the fault tests, which are their own suite.
RUST_TESTS="$(for f in tests/*.rs; do n="$(basename "$f" .rs)"; [[ $n == faults ]] || printf -- '--test %s ' "$n"; done)"
# Tests run again with NIXL selected the way TensorRT-LLM selects it (the backend contract).
NIXL_TESTS="--test file_copy --test agent_basic --test connection_manager --test two_process --test c_abi --test coalesced_transfers --test load --test observability --test scale"
# Tests that kill, refuse or abandon a peer on purpose, so UCX and NIXL log
# ERROR and WARN lines for what they provoke: they run in the peer-loss suites
# with the transports' own logging at fatal (their assertions check the
# outcome), and everywhere else a transport error line is news.
PROVOKING="bad_requests_fail_before_posting send_that_times_out_closes_the_connection killed_peer_fails_pending_and_later_transfers"
QUIET="env UCX_LOG_LEVEL=fatal NIXL_LOG_LEVEL=FATAL"
SKIP_PROVOKING="$(for t in $PROVOKING; do printf -- '--skip %s ' "$t"; done)"
export RUST_TESTS NIXL_TESTS PROVOKING QUIET SKIP_PROVOKING

# One line per suite: its name, then a bash command that exits 0 when it passes.
SUITE_LIST='
lint            scripts/lint.sh
rust            cargo test --no-fail-fast --lib --bins $RUST_TESTS -- $SKIP_PROVOKING
rust-nixl       TRTLLM_USE_NIXL_KVCACHE=1 cargo test --no-fail-fast $NIXL_TESTS -- $SKIP_PROVOKING
scale-tcp       UCX_TLS=tcp,self cargo test --no-fail-fast --test scale && UCX_TLS=tcp,self TRTLLM_USE_NIXL_KVCACHE=1 cargo test --no-fail-fast --test scale
peer-loss       $QUIET cargo test --no-fail-fast $RUST_TESTS -- --exact $PROVOKING
peer-loss-nixl  $QUIET TRTLLM_USE_NIXL_KVCACHE=1 cargo test --no-fail-fast $NIXL_TESTS -- --exact $PROVOKING
faults          $QUIET cargo test --no-fail-fast --test faults
cmake           .ci/cmake_suite.sh
python          KVX_SKIP_SETUP=1 scripts/test_python.sh
fuzz            SECONDS_PER_TARGET=20 fuzz/run.sh
asan            STEPS=asan scripts/stress/sanitizers.sh
ubsan           STEPS=ubsan scripts/stress/sanitizers.sh
valgrind        STEPS=valgrind scripts/stress/sanitizers.sh
miri            STEPS=miri scripts/stress/sanitizers.sh
'

step "set up (apt, pip, cargo fetch)" scripts/setup.sh
# The library itself first: c_abi checks its exports, and a failed build is clearer alone.
step "build the library (the first build takes minutes)" cargo build --quiet --lib

mkdir -p "$TEST_LOGS"
results="$TEST_LOGS/results.tsv"
: > "$results"
while read -r name command; do
  [[ -n $name ]] || continue
  if [[ -n ${SUITES:-} && " $SUITES " != *" $name "* ]]; then continue; fi
  log="$TEST_LOGS/$name.log"
  start=$SECONDS
  rc=0
  step "suite $name: $command" bash -o pipefail -c "$command 2>&1 | tee '$log'" || rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - start)) "$log" >> "$results"
done <<< "$SUITE_LIST"

# The summary's exit status is the run's: 1 when any suite or test failed.
exec python3 scripts/test_summary.py "$results"
