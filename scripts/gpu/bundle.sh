#!/usr/bin/env bash
# Build kvxfer here (release) and pack what the GPU machine needs into ONE
# .tar.xz (at most 60 MiB) to copy to a GPU machine that has neither network
# access nor a Rust toolchain: libkvxfer.so, the kvxfer-gpu tool, the GPU test binary, CUDA UCX
# from the libucx-cu13 wheel and NIXL (C API + UCX plugin) from the nixl-cu13
# wheel, each library only if something needed links it (DT_NEEDED closure),
# all stripped. scripts/gpu/run.sh unpacks and runs it on the GPU machine.
#
#   scripts/gpu/bundle.sh [DEST]   # bundle goes to DEST/.gpu_bundle/kvxfer-gpu.tar.xz
#                                  # (default: this repository's root)
# Wheels come from KVX_WHEEL_DIR (default /tmp/whl13), downloaded with
# `pip download --no-deps` when missing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dest=${1:-$repo}
wheels=${KVX_WHEEL_DIR:-/tmp/whl13}
ucx_wheel_spec="libucx-cu13==1.22.0"
nixl_wheel_spec="nixl-cu13==1.5.1"
limit_bytes=$((60 << 20))

mkdir -p "$wheels"
if ! ls "$wheels"/libucx_cu13-*.whl >/dev/null 2>&1; then
    python3 -m pip download --no-deps --only-binary=:all: -d "$wheels" "$ucx_wheel_spec"
fi
if ! ls "$wheels"/nixl_cu13-*.whl >/dev/null 2>&1; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.11 -d "$wheels" "$nixl_wheel_spec"
fi

cd "$repo"
cargo build --release --lib --bins -j2
test_exe=$(cargo test --release --no-run -j2 --test gpu_transfers --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="gpu_transfers" and m.get("executable"): print(m["executable"])' | tail -1)
[ -x "$test_exe" ] || { echo "bundle: gpu_transfers test binary not found" >&2; exit 1; }

stage=$(mktemp -d /tmp/kvx-gpu-bundle.XXXXXX)
trap 'rm -rf "$stage" "$stage.wheels"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage.wheels"
cp target/release/kvxfer-gpu target/release/kvxfer-demo "$stage/bin/"
cp "$test_exe" "$stage/bin/gpu_transfers"
cp target/release/libkvxfer.so "$stage/lib/libkvxfer.so.0"
cp src/cuda/copy_kernel.cu "$stage/"
cp scripts/gpu/run.sh "$stage/run.sh"
cp scripts/gpu/build_ptx.sh "$stage/build_ptx.sh"
unzip -q "$wheels"/libucx_cu13-*.whl -d "$stage.wheels/ucx"
unzip -q "$wheels"/nixl_cu13-*.whl -d "$stage.wheels/nixl"

# Roots: what kvxfer dlopens (libucp, NIXL's C API and UCX plugin) and the UCX
# modules each UCX copy loads for CUDA and shared memory. Their DT_NEEDED
# closure inside the wheels is copied with the wheels' folder layout, so
# RUNPATH ($ORIGIN-relative) and UCX's module folder keep working.
python3 - "$stage.wheels" "$stage" <<'PY'
import os, shutil, subprocess, sys
src, out = sys.argv[1], sys.argv[2]
roots = [
    "ucx/libucx/lib/libucp.so.0",
    "ucx/libucx/lib/ucx/libuct_cuda.so.0", "ucx/libucx/lib/ucx/libucm_cuda.so.0", "ucx/libucx/lib/ucx/libuct_cma.so.0",
    "nixl/.nixl_cu13.mesonpy.libs/libnixl_capi.so", "nixl/.nixl_cu13.mesonpy.libs/plugins/libplugin_UCX.so",
    # The storage plugins of the loopback agent; cuFile and the CUDA runtime come from the machine.
    "nixl/.nixl_cu13.mesonpy.libs/plugins/libplugin_POSIX.so", "nixl/.nixl_cu13.mesonpy.libs/plugins/libplugin_GDS.so",
    "nixl/.nixl_cu13.mesonpy.libs/plugins/libplugin_GDS_MT.so",
    "nixl/nixl_cu13.libs/ucx/libuct_cuda.so.0.0.0", "nixl/nixl_cu13.libs/ucx/libucm_cuda.so.0.0.0", "nixl/nixl_cu13.libs/ucx/libuct_cma.so.0.0.0",
]
def dyn(path):
    text = subprocess.run(["readelf", "-d", path], capture_output=True, text=True).stdout
    needed, paths = [], []
    for line in text.splitlines():
        if "(NEEDED)" in line:
            needed.append(line.split("[", 1)[1].rstrip("]"))
        elif "(RUNPATH)" in line or "(RPATH)" in line:
            paths += line.split("[", 1)[1].rstrip("]").split(":")
    return needed, paths
seen, todo = set(), [os.path.join(src, r) for r in roots]
while todo:
    f = os.path.normpath(todo.pop())
    if f in seen:
        continue
    seen.add(f)
    needed, paths = dyn(f)
    here = os.path.dirname(f)
    dirs = [p.replace("$ORIGIN", here) for p in paths] + [here]
    for n in needed:
        for d in dirs:
            cand = os.path.join(d, n)
            if os.path.exists(cand) and os.path.normpath(cand).startswith(src):
                todo.append(cand)
                break
# Copy each file, and recreate the soname links that point at it.
for f in sorted(seen):
    rel = os.path.relpath(os.path.realpath(f), src)
    dst = os.path.join(out, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(os.path.realpath(f), dst)
    if os.path.islink(f) or os.path.realpath(f) != f:
        link = os.path.join(out, os.path.relpath(f, src))
        if not os.path.exists(link):
            os.symlink(os.path.basename(dst), link)
print(f"bundle: {len(seen)} libraries from the wheels")
PY
for d in "$stage.wheels/nixl/nixl_cu13.libs/ucx"; do
    for m in libuct_cuda libucm_cuda libuct_cma; do cp "$d/$m.la" "$stage/nixl/nixl_cu13.libs/ucx/" 2>/dev/null || true; done
done
# UCX modules are found by name pattern libuct_*.so / libucm_*.so beside each UCX copy.
for d in "$stage/ucx/libucx/lib/ucx" "$stage/nixl/nixl_cu13.libs/ucx"; do
    (cd "$d" && for f in *.so.0.0.0; do b=${f%.0.0}; [ -e "$b" ] || ln -s "$f" "$b"; [ -e "${b%.0}" ] || ln -s "$f" "${b%.0}"; done)
done
find "$stage" -type f \( -name '*.so*' -o -path '*/bin/*' \) -exec strip --strip-unneeded {} + 2>/dev/null || true
mkdir -p "$dest/.gpu_bundle"
tar -C "$stage" -cJf "$dest/.gpu_bundle/kvxfer-gpu.tar.xz" .
size=$(stat -c %s "$dest/.gpu_bundle/kvxfer-gpu.tar.xz")
echo "bundle: $dest/.gpu_bundle/kvxfer-gpu.tar.xz, $((size >> 20)) MiB ($size bytes)"
if [ "$size" -gt "$limit_bytes" ]; then
    echo "bundle: larger than $((limit_bytes >> 20)) MiB; too large to copy comfortably" >&2
    exit 1
fi
