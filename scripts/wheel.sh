#!/usr/bin/env bash
# Build the kvxfer wheel: libkvxfer + the TensorRT-LLM wrappers through CMake
# (installed into the Python package as its prefix: lib/, include/,
# lib/cmake/kvxfer, lib/pkgconfig), then the Python extension with maturin.
#
#   scripts/wheel.sh                   # wheel into build/wheel/
#   WHEEL_DIR=/tmp/w PYTHON=python3.12 scripts/wheel.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEEL_DIR="${WHEEL_DIR:-$ROOT/build/wheel}"
BUILD="${BUILD_ROOT:-$ROOT/build}/wheel-cmake"
JOBS="${JOBS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
pkg="$ROOT/python/kvxfer"
version="$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\([0-9.]*\)".*/\1/p' "$ROOT/Cargo.toml" | head -n1)"
major="${version%%.*}"
step() { printf '\n==== %s\n' "$*"; }

"$PYTHON" -m pip install -q "maturin>=1.5,<2"
GENERATOR_ARGS=()
if command -v ninja >/dev/null 2>&1; then GENERATOR_ARGS=(-G Ninja); fi

step "libkvxfer + wrappers (CMake) into $pkg"
rm -rf "$pkg/lib" "$pkg/include" "$pkg"/tensorrt_llm_transfer_agent_binding*.so "$pkg"/_native*.so
cmake -S "$ROOT" -B "$BUILD" "${GENERATOR_ARGS[@]}" -DCMAKE_INSTALL_PREFIX="$pkg" -DCMAKE_INSTALL_LIBDIR=lib \
  -DKVXFER_CARGO_TARGET_DIR="$CARGO_TARGET_DIR" -DCMAKE_BUILD_TYPE=Release -DKVXFER_TRTLLM_LINES="1.1;1.2;1.3;1.4"
cmake --build "$BUILD" -j "$JOBS"
cmake --install "$BUILD"
# A wheel holds no symlinks. libkvxfer.so.$major (the SONAME) is the one file every
# loader maps; the link-time names become stripped copies nothing loads at run time.
(
  cd "$pkg/lib"
  cp --remove-destination "libkvxfer.so.$version" "libkvxfer.so.$major"
  strip --strip-unneeded "libkvxfer.so.$version"
  cp --remove-destination "libkvxfer.so.$version" libkvxfer.so
)

export KVXFER_LIB_DIR="$pkg/lib"
maturin_build() {
  rm -rf "$WHEEL_DIR" && mkdir -p "$WHEEL_DIR"
  (cd "$ROOT/python" && "$PYTHON" -m maturin build --release --interpreter "$PYTHON" --auditwheel skip \
    --out "$WHEEL_DIR")
}

step "Python extension (maturin)"
maturin_build
# The same binary also exports PyInit_tensorrt_llm_transfer_agent_binding: ship it under that
# name too (a second build of the same code would only cost time), then pack again.
suffix="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
"$PYTHON" - "$WHEEL_DIR" "$pkg/tensorrt_llm_transfer_agent_binding$suffix" <<'PY'
import glob, sys, zipfile
wheel, = glob.glob(sys.argv[1] + "/kvxfer-*.whl")
with zipfile.ZipFile(wheel) as z:
    native = [n for n in z.namelist() if n.startswith("kvxfer/_native") and n.endswith(".so")]
    assert len(native) == 1, native
    with open(sys.argv[2], "wb") as out:
        out.write(z.read(native[0]))
PY
maturin_build
wheel="$(ls "$WHEEL_DIR"/kvxfer-*.whl)"
step "check the wheel"
"$PYTHON" - "$wheel" "$major" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = [f"kvxfer/lib/libkvxfer.so.{sys.argv[2]}", "kvxfer/lib/libtensorrt_llm_ucx_wrapper.so",
        "kvxfer/lib/libtensorrt_llm_nixl_wrapper.so", "kvxfer/include/kvxfer.h",
        "kvxfer/lib/cmake/kvxfer/kvxferConfig.cmake", "kvxfer/lib/pkgconfig/kvxfer.pc",
        "kvxfer/__init__.py", "kvxfer/_native.pyi", "kvxfer/py.typed"]
# Every release line's wrappers, for `kvxfer trtllm install` to choose from.
need += [f"kvxfer/lib/trtllm/{line}/libtensorrt_llm_{w}_wrapper.so" for line in ("1.1", "1.2", "1.3", "1.4")
         for w in ("ucx", "nixl")]
missing = [n for n in need if n not in names]
if not any(n.startswith("kvxfer/tensorrt_llm_transfer_agent_binding") for n in names):
    missing.append("kvxfer/tensorrt_llm_transfer_agent_binding*.so")
if any("ucp" in n or "nixl_capi" in n for n in names):
    sys.exit("the wheel bundles UCX or NIXL")
if missing:
    sys.exit(f"{sys.argv[1]} lacks {missing}")
print(f"ok: {sys.argv[1]}")
PY
echo "$wheel"
