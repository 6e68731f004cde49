#!/usr/bin/env bash
# Every test: Rust unit and integration tests (real UCX between threads and
# processes, over shared memory and TCP), then the CMake package, the C++
# GoogleTest suite through find_package(kvxfer), and the consumer examples.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --quiet --lib
cargo test --no-fail-fast
.ci/cmake_suite.sh
