#!/usr/bin/env bash
# TensorRT-LLM's device-memory scenarios (tests/trtllm: LoopbackAgent.*,
# TransferAgent.DeviceMemory*, ConnectionManager.DeviceMemory*) on the GPU
# machine, through the installed wrappers, with UCX_TLS unset (kvxfer's default).
#   scripts/gpu/trtllm.sh bundle   # here: build + install into /tmp/kvxvram, pack .gpu_bundle/trtllm.tar.xz
#   scripts/gpu/trtllm.sh run      # there, after scripts/gpu/bundle.sh's bundle is carried too
# The test binary names its peer program by absolute path, so both sides use /tmp/kvxvram.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
build=/tmp/kvxvram
case "${1:-}" in
bundle)
    rm -rf "$build"
    BUILD_ROOT=$build CTEST_ARGS="-R Loopback" bash "$repo/.ci/cmake_suite.sh" >"$build.log" 2>&1 ||
        { tail -30 "$build.log"; exit 1; }
    mkdir -p "$repo/.gpu_bundle"
    (cd "$build" && tar -cJf "$repo/.gpu_bundle/trtllm.tar.xz" _install/lib trtllm/kvxfer_trtllm_test trtllm/trtllm_peer \
        trtllm-1.*/kvxfer_trtllm_test trtllm-1.*/trtllm_peer)
    echo "trtllm.sh: $repo/.gpu_bundle/trtllm.tar.xz"
    ;;
run)
    root=/tmp/kvx-gpu
    out=${OUT:-/tmp/kvx-gpu-out}
    mkdir -p "$root" "$build" "$out"
    tar -C "$root" -xJf "$repo/.gpu_bundle/kvxfer-gpu.tar.xz"
    tar -C "$build" -xJf "$repo/.gpu_bundle/trtllm.tar.xz"
    export KVX_UCX_LIB=$root/ucx/libucx/lib/libucp.so.0
    export KVX_NIXL_LIB=$root/nixl/.nixl_cu13.mesonpy.libs/libnixl_capi.so
    export LD_LIBRARY_PATH=$root/lib KVX_TIMEOUT_MS=${KVX_TIMEOUT_MS:-60000}
    # NIXL's GDS plugins need the machine's cuFile and CUDA runtime (the wheel carries neither).
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib; do [ -d "$d" ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d; done
    unset UCX_TLS
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    status=0
    # The default line (1.4, wrappers in lib/) and every other line's own test
    # build against its wrappers in lib/trtllm/<line>/.
    for suite in "$build"/trtllm "$build"/trtllm-1.*; do
        line=${suite##*/trtllm-}
        [ "$suite" != "$build/trtllm" ] || line=1.4
        wrappers=$build/_install/lib
        [ "$line" = 1.4 ] || wrappers=$wrappers/trtllm/$line
        for backend in nixl ucx; do
            echo "=== tests/trtllm, line $line, on $backend"
            KVX_TRTLLM_RUN=$backend:path:$wrappers timeout -k 5 150 "$suite/kvxfer_trtllm_test" \
                --gtest_filter='LoopbackAgent.*:TransferAgent.DeviceMemory*:ConnectionManager.DeviceMemory*' \
                >"$out/trtllm-$line-$backend.log" 2>&1 || status=1
            grep -E '^\[ *(OK|FAILED|SKIPPED|PASSED) *\]|LoopbackAgent copies' "$out/trtllm-$line-$backend.log"
        done
    done
    exit $status
    ;;
*)
    echo "usage: scripts/gpu/trtllm.sh bundle|run" >&2
    exit 2
    ;;
esac
