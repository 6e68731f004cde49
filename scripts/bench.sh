#!/usr/bin/env bash
# The standard comparison on this machine (a few minutes on 2 cores):
# kvxfer on UCX and on NIXL against raw ucx_perftest and NIXL used directly,
# host memory, shared-memory transports. Writes bench-results/results.{json,csv},
# the printed report (report.txt) and the plot (bandwidth.png).
#
#   scripts/bench.sh                 # standard comparison
#   scripts/bench.sh --smoke         # a few seconds: checks the benchmark runs
#   scripts/bench.sh -- ARGS...      # extra kvxfer-bench options (see --help)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${KVX_BENCH_OUT:-bench-results}
mode=standard
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) mode=smoke ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: $0 [--smoke] [-- kvxfer-bench options]"; exit 2 ;;
  esac
  shift
done

scripts/setup.sh
# Baseline: NIXL's C API comes from its wheel (the Python package is not needed).
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -e "$site/.nixl_cu12.mesonpy.libs/libnixl_capi.so" ] || python3 -m pip install --quiet --no-deps "nixl-cu12==1.5.1"
mkdir -p "$out"

if [ "$mode" = smoke ]; then
  cargo build --quiet --bin kvxfer-bench
  bin=target/debug/kvxfer-bench
  args=(--layouts raw,paged --sizes 64k --counts 1,32 --models llama3-8b --tp 8 --prompts 1k
        --time 0.05 --latency-iters 200 --reg-count 100 --reg-large 4m --pool 32m)
else
  cargo build --quiet --release --bin kvxfer-bench
  bin=target/release/kvxfer-bench
  args=(--sizes 4k,16k,64k,256k,1m,4m,16m,64m --counts 1,32,1024
        --models llama3-8b,llama3-70b,deepseek-v3 --tp 8 --tokens-per-block 16 --prompts 1k,4k
        --blocks random,contiguous --time 0.2 --rounds 3 --pool 256m)
fi
"$bin" "${args[@]}" "${extra[@]}" --json "$out/results.json" --csv "$out/results.csv" | tee "$out/report.txt"

if [ "$mode" = standard ]; then
  python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib
  python3 scripts/bench_plot.py "$out/results.csv" "$out/bandwidth.png"
fi
