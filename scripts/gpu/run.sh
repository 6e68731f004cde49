#!/usr/bin/env bash
# Run kvxfer's GPU tests and the GPU measurement on a GPU machine (two GPUs
# for the two-process checks), from the bundle scripts/gpu/bundle.sh made:
#
#   (build machine) scripts/gpu/bundle.sh [DEST]     # -> DEST/.gpu_bundle/kvxfer-gpu.tar.xz
#   (GPU machine)   bash scripts/gpu/run.sh          # with .gpu_bundle/ copied into the tree
# The bundle carries this script too, so a tree without scripts/gpu runs it with
#   mkdir -p /tmp/kvx-gpu && tar -C /tmp/kvx-gpu -xJf .gpu_bundle/kvxfer-gpu.tar.xz && bash /tmp/kvx-gpu/run.sh
#
# Steps (each bounded by `timeout`, logs under $OUT): GPU facts; nvcc's PTX of
# the copy kernels (KVX_NVCC_PTX=1: built there and used, to compare with the
# committed one); the GPU tests on UCX and on NIXL; `kvxfer-gpu bench` (UCX
# batched IPC path, UCX transport path, NIXL; one request, 8 concurrent
# requests, the gather-transfer-scatter baseline; ratios to cuMemcpyPeer, or
# to cuMemcpy on one GPU, measured in the same run; every goal with its
# verdict; bench.json); then, on one GPU, the staging READ/WRITE of the UCX
# transport and NIXL again with UCX's own cuda_ipc GET setting
# (UCX_CUDA_IPC_ENABLE_GET_ZCOPY=auto), which shows what kvxfer's default fixes.
# `--tests-only` / `--bench-only` run one half.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-/tmp/kvx-gpu-out}
mode=${1:-all}
mkdir -p "$out"
if [ -x "$here/bin/kvxfer-gpu" ]; then
    root=$here # running from an unpacked bundle (the bundle carries this script)
else
    repo=$(cd "$here/../.." && pwd)
    bundle=${KVX_GPU_BUNDLE:-$repo/.gpu_bundle/kvxfer-gpu.tar.xz}
    root=/tmp/kvx-gpu
    rm -rf "$root" && mkdir -p "$root"
    tar -C "$root" -xJf "$bundle" || { echo "run.sh: cannot unpack $bundle" >&2; exit 1; }
fi

export KVX_UCX_LIB=$root/ucx/libucx/lib/libucp.so.0
export KVX_NIXL_LIB=$root/nixl/.nixl_cu13.mesonpy.libs/libnixl_capi.so
export KVX_GPU_TOOL=$root/bin/kvxfer-gpu
export LD_LIBRARY_PATH=$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# NIXL's GDS plugins need the machine's cuFile and CUDA runtime (the wheel carries neither).
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib; do [ -d "$d" ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d; done
# Explicit transports on both sides (a wrong guess must fail, not wait).
export UCX_TLS=${UCX_TLS:-cuda_copy,cuda_ipc,sm,self,tcp}
export KVX_TIMEOUT_MS=${KVX_TIMEOUT_MS:-60000}
# NVLink multicast stays off on these shared hosts.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n "${TAIL:-30}" "$out/$name.log"
    echo "=== $name rc=$rc"
    return 0
}

{
    date -u
    nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
    nvidia-smi topo -m
    echo "UCX_TLS=$UCX_TLS"
    echo "cuFile: $(ls /usr/local/cuda/lib64/libcufile.so* /usr/local/cuda/targets/*/lib/libcufile.so* 2>/dev/null | head -1)"
} >"$out/facts.log" 2>&1
cat "$out/facts.log"
# KVX_NVCC_PTX=1: build the copy kernel with this machine's nvcc and use that
# build (KVX_COPY_KERNEL_PTX) instead of the committed PTX; it comes back in $OUT.
if [ "${KVX_NVCC_PTX:-0}" = 1 ] && command -v nvcc >/dev/null; then
    if timeout 60 bash "$root/build_ptx.sh" "$root/copy_kernel.cu" "$out/copy_kernel.ptx"; then
        export KVX_COPY_KERNEL_PTX=$out/copy_kernel.ptx
        echo "copy kernel: nvcc build in use ($(nvcc --version | tail -1))"
    fi
fi
if [ "$mode" != "--bench-only" ]; then
    step tests-ucx 100 env TRTLLM_USE_UCX_KVCACHE=1 TRTLLM_USE_NIXL_KVCACHE=0 "$root/bin/gpu_transfers" --test-threads=1 --nocapture
    step tests-nixl 100 env TRTLLM_USE_NIXL_KVCACHE=1 TRTLLM_USE_UCX_KVCACHE=0 "$root/bin/gpu_transfers" --test-threads=1 --nocapture
fi
if [ "$mode" != "--tests-only" ]; then
    TAIL=80 step bench 360 "$root/bin/kvxfer-gpu" bench --iters "${KVX_BENCH_ITERS:-3}" --systems "${KVX_BENCH_SYSTEMS:-ipc,transport,nixl}" --json "$out/bench.json"
    if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" = 1 ]; then
        TAIL=30 step bench-get-auto 120 env UCX_CUDA_IPC_ENABLE_GET_ZCOPY=auto "$root/bin/kvxfer-gpu" bench --iters 3 \
            --systems transport,nixl --workloads staging --json "$out/bench-get-auto.json"
    fi
fi
