#!/usr/bin/env bash
# The batched-copy kernels apart from the host's listing, on a GPU machine:
# `kvxfer-gpu kernels` (kernel rate with the list on the device, with its
# upload, read from pinned host memory, one warp or one block per entry; the
# batch layer's submit from a ready list and from descriptor pairs merged into
# runs, as a request lists them; the request checks; the listing
# pool's hand-off) with the committed PTX, then with nvcc builds of
# copy_kernel.cu at other unroll depths. Uses the bundle scripts/gpu/bundle.sh
# made, as run.sh does; logs under $OUT.
#
#   OUT=/tmp/k UNROLLS="4 16" bash scripts/gpu/kernels.sh
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${OUT:-/tmp/kvx-gpu-out}
root=/tmp/kvx-gpu
mkdir -p "$out"
if [ ! -x "$root/bin/kvxfer-gpu" ]; then
    mkdir -p "$root" && tar -C "$root" -xJf "${KVX_GPU_BUNDLE:-$repo/.gpu_bundle/kvxfer-gpu.tar.xz}" ||
        { echo "kernels.sh: cannot unpack the bundle" >&2; exit 1; }
fi
export LD_LIBRARY_PATH=$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
iters=${KVX_BENCH_ITERS:-5}
echo "=== committed PTX"
timeout -k 5 120 "$root/bin/kvxfer-gpu" kernels --iters "$iters" 2>&1 | tee "$out/kernels.log"
for unroll in ${UNROLLS-4 16}; do
    ptx=$out/copy_kernel-unroll$unroll.ptx
    NVCC_FLAGS="-DUNROLL=$unroll" timeout 60 bash "$here/build_ptx.sh" "$repo/src/cuda/copy_kernel.cu" "$ptx" >/dev/null || continue
    echo "=== nvcc build, UNROLL=$unroll"
    KVX_COPY_KERNEL_PTX=$ptx timeout -k 5 120 "$root/bin/kvxfer-gpu" kernels --iters "$iters" 2>&1 |
        tee "$out/kernels-unroll$unroll.log"
    rm -f "$ptx"
done
