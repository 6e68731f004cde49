#!/usr/bin/env bash
# Every test: Rust unit and integration tests (real UCX and NIXL between
# threads and processes, over shared memory and TCP), then the CMake package, the C++
# GoogleTest suite through find_package(kvxfer), and the consumer examples.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/lint.sh
cargo build --quiet --lib
cargo test --no-fail-fast
# The backend contract again on NIXL, chosen the way TensorRT-LLM chooses it.
TRTLLM_USE_NIXL_KVCACHE=1 cargo test --no-fail-fast --test agent_basic --test connection_manager --test two_process --test c_abi --test coalesced_transfers --test load --test scale
.ci/cmake_suite.sh
# The wheel, then the Python suite on both backends in fresh virtual environments.
KVX_SKIP_SETUP=1 scripts/test_python.sh
# Reliability (README, "Failure model"): bounded fuzzing under libFuzzer + ASan,
# the C++ suite under ASan and UBSan, the C programs under valgrind, the
# pure-Rust code under Miri.
SECONDS_PER_TARGET=20 fuzz/run.sh
STEPS="asan ubsan valgrind miri" scripts/stress/sanitizers.sh
