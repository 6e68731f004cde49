#!/usr/bin/env bash
# The main job: set up, then a two-process host-memory transfer over UCX
# (the default backend) that verifies the data and prints its bandwidth.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet --bin kvxfer-demo
exec target/release/kvxfer-demo "$@"
