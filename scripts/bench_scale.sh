#!/usr/bin/env bash
# Scale benchmark: one hub against N = 8 ... 512 peers on both backends and
# both transports (UCX_TLS=tcp,self and sm,self). Prints per-N tables and the
# goal verdicts of docs/scale.md, and keeps each run's output and JSON in
# benches/results/<date>/scale-<time>/.
#
#   scripts/bench_scale.sh                     # everything (about 15-25 minutes on 2 cores)
#   SIZES=8,64 BACKENDS=ucx TRANSPORTS=tcp,self scripts/bench_scale.sh
#   SCENARIOS=agents,storm scripts/bench_scale.sh
#
# Peers run in up to 16 processes (N/16 handles each at large N). The figures
# that matter most on a small or shared machine are the hub's own CPU time per
# peer: peer processes starving for CPU inflate wall times, not those.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-8,32,64,128,256,512}
BACKENDS=${BACKENDS:-ucx nixl}
TRANSPORTS=${TRANSPORTS:-tcp,self sm,self}
SCENARIOS=${SCENARIOS:-agents,storm,managers,idle}
CYCLES=${CYCLES:-3}
OUT=${OUT:-benches/results/$(date -u +%Y-%m-%d)/scale-$(date -u +%H%M)}
cargo build --release --quiet --bin kvxfer-scale
mkdir -p "$OUT"
# Room for 512 peers' descriptors in the hub and in each peer process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
{
    echo "host: $(nproc) CPUs, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "somaxconn: $(cat /proc/sys/net/core/somaxconn)"
} | tee "$OUT/host.txt"
for backend in $BACKENDS; do
    for tls in $TRANSPORTS; do
        tag="$backend-${tls%%,*}"
        echo "== $backend, UCX_TLS=$tls"
        UCX_TLS=$tls timeout 1800 target/release/kvxfer-scale --backend "$backend" --sizes "$SIZES" \
            --scenarios "$SCENARIOS" --cycles "$CYCLES" --json "$OUT/$tag.json" 2>"$OUT/$tag.log" \
            | tee "$OUT/$tag.txt" || echo "run $tag failed (exit $?): see $OUT/$tag.log"
    done
done
echo "results in $OUT"
