#!/usr/bin/env bash
# Build src/cuda/copy_kernel.ptx from copy_kernel.cu with nvcc 13.0 (the GPU
# machine's, or here with the nvidia-cuda-nvcc, nvidia-nvvm, nvidia-cuda-crt
# and nvidia-cuda-runtime wheels of that version on PATH), lowering .version
# so CUDA 12 drivers load it too (the kernels use no newer instruction).
#
#   scripts/gpu/build_ptx.sh [SOURCE.cu] [OUT.ptx]   # defaults: src/cuda/copy_kernel.{cu,ptx}
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
src=${1:-$repo/src/cuda/copy_kernel.cu}
out=${2:-$repo/src/cuda/copy_kernel.ptx}
tmp=$(mktemp /tmp/kvx-ptx.XXXXXX)
trap 'rm -f "$tmp"' EXIT
# NVCC_FLAGS: extra options, for example -DUNROLL=16 to try another unroll depth.
nvcc -ptx -arch=compute_75 -O3 ${NVCC_FLAGS:-} "$src" -o "$tmp"
{
    echo "// nvcc output of copy_kernel.cu ($(nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/CUDA \1/p'), scripts/gpu/build_ptx.sh),"
    echo "// with .version lowered to 7.8 so CUDA 12 drivers load it too (it uses no newer"
    echo "// instruction; ptxas 12.9 -arch=sm_90 accepts it)."
    echo "//"
    sed 's/^\.version [0-9.]*$/.version 7.8/' "$tmp"
} >"$out"
echo "build_ptx: $out"
