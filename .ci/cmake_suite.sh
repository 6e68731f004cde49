#!/usr/bin/env bash
# Whole CMake flow: build + install kvxfer (cargo driven by CMake), run the
# GoogleTest suites against the installed package (tests/cpp: the C ABI;
# tests/trtllm: TensorRT-LLM's scenarios through the installed wrappers), build
# and run the example consumer with CMake and with pkg-config, and the README's
# two-agent example (checked to be examples/two_agents/two_agents.c verbatim).
# Checks that are not CTest tests print "KVX-CHECK ok|FAILED <what>" for
# scripts/test.sh's summary.
#
#   .ci/cmake_suite.sh                 # everything
#   BUILD_ROOT=/tmp/kvx .ci/cmake_suite.sh
#   CTEST_ARGS="-R api" .ci/cmake_suite.sh
#   KVXFER_TEST_UCX_TLS="tcp,self" .ci/cmake_suite.sh   # UCX_TLS variants to register
#   KVXFER_TEST_NIXL=OFF .ci/cmake_suite.sh    # NIXL runs of tests/trtllm: AUTO (default), ON, OFF
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_ROOT="${BUILD_ROOT:-$ROOT/build}"
PREFIX="${PREFIX:-$BUILD_ROOT/_install}"
JOBS="${JOBS:-2}"
CTEST_ARGS="${CTEST_ARGS:-}"
GENERATOR_ARGS=()
if command -v ninja >/dev/null 2>&1; then GENERATOR_ARGS=(-G Ninja); fi

# The suite must not depend on the caller's library path: RPATHs do the work.
unset LD_LIBRARY_PATH

source "$ROOT/scripts/progress.sh"
section() { printf '\n==== %s\n' "$*"; }

section "configure + build + install kvxfer into $PREFIX"
# Cargo builds in the shared target folder (CMakeLists.txt: $CARGO_TARGET_DIR, else target/).
# Every TensorRT-LLM release line's wrappers, side by side in lib/trtllm/<line>/.
LINES="${LINES:-1.1;1.2;1.3;1.4}"
cmake -S "$ROOT" -B "$BUILD_ROOT/cmake" "${GENERATOR_ARGS[@]}" \
  -DCMAKE_INSTALL_PREFIX="$PREFIX" -DKVXFER_CARGO_PROFILE="${KVXFER_CARGO_PROFILE:-release}" \
  -DKVXFER_TRTLLM_LINES="$LINES"
step "cmake --build (cargo build --lib --profile ${KVXFER_CARGO_PROFILE:-release}, the wrappers)" \
  cmake --build "$BUILD_ROOT/cmake" -j "$JOBS"
rm -rf "$PREFIX"
cmake --install "$BUILD_ROOT/cmake"

section "check the installed tree"
lib="$PREFIX/lib"
version="$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\([0-9.]*\)".*/\1/p' "$ROOT/Cargo.toml" | head -n1)"
major="${version%%.*}"
test -f "$lib/libkvxfer.so.$version"
test "$(readlink "$lib/libkvxfer.so.$major")" = "libkvxfer.so.$version"
test "$(readlink "$lib/libkvxfer.so")" = "libkvxfer.so.$major"
soname="$(readelf -d "$lib/libkvxfer.so.$version" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')"
test "$soname" = "libkvxfer.so.$major" || { echo "SONAME is '$soname', expected libkvxfer.so.$major" >&2; exit 1; }
test -f "$PREFIX/include/kvxfer.h"
cmp "$PREFIX/include/kvxfer.h" "$ROOT/include/kvxfer.h"
test -f "$lib/cmake/kvxfer/kvxferConfig.cmake"
test -f "$lib/cmake/kvxfer/kvxferConfigVersion.cmake"
test -f "$lib/pkgconfig/kvxfer.pc"
if grep -q "$PREFIX" "$lib/cmake/kvxfer/kvxferConfig.cmake" "$lib/pkgconfig/kvxfer.pc"; then
  echo "installed package files hard-code $PREFIX (not relocatable)" >&2
  exit 1
fi
echo "KVX-CHECK ok installed tree: libkvxfer.so.$version, SONAME $soname, relocatable config + pkg-config"

section "check the installed TensorRT-LLM wrappers (lib/ and every line in lib/trtllm/)"
# dir:RUNPATH, the RUNPATH reaching libkvxfer.so.0 from there.
wrapper_dirs=("$lib:\$ORIGIN")
IFS=';' read -r -a lines <<<"$LINES"
for line in "${lines[@]}"; do wrapper_dirs+=("$lib/trtllm/$line:\$ORIGIN:\$ORIGIN/../.."); done
for entry in "${wrapper_dirs[@]}"; do
  dir="${entry%%:*}" runpath="${entry#*:}"
  for w in ucx nixl; do
    f="$dir/libtensorrt_llm_${w}_wrapper.so"
    test -f "$f" || { echo "$f is missing" >&2; exit 1; }
    dyn="$(readelf -d "$f")"
    # SONAME = file name: a preloaded copy satisfies TensorRT-LLM's dlopen by name.
    grep -q "Library soname: \[libtensorrt_llm_${w}_wrapper.so\]" <<<"$dyn" || { echo "$f: bad SONAME" >&2; exit 1; }
    # TensorRT-LLM dlcloses before destroying objects whose code lives here.
    grep -q "Flags: .*NODELETE" <<<"$dyn" || { echo "$f: not linked -z nodelete" >&2; exit 1; }
    if grep -q "Shared library: \[libtensorrt_llm.so\]" <<<"$dyn"; then echo "$f: DT_NEEDED on libtensorrt_llm.so" >&2; exit 1; fi
    grep -q "Shared library: \[libkvxfer.so.$major\]" <<<"$dyn" || { echo "$f: not linked to libkvxfer.so.$major" >&2; exit 1; }
    grep -qF "Library runpath: [$runpath]" <<<"$dyn" || grep -qF "Library rpath: [$runpath]" <<<"$dyn" \
      || { echo "$f: RUNPATH is not $runpath" >&2; exit 1; }
  done
  for export in ucx:makeUcxConnectionManager nixl:createNixlTransferAgent nixl:createNixlLoopbackAgent; do
    nm -D --defined-only "$dir/libtensorrt_llm_${export%%:*}_wrapper.so" | grep -qw "T ${export#*:}" \
      || { echo "$dir/libtensorrt_llm_${export%%:*}_wrapper.so does not export ${export#*:}" >&2; exit 1; }
  done
done
echo "KVX-CHECK ok installed wrappers (lib/ and lib/trtllm/{${LINES//;/,}}/): SONAME = file name, NODELETE, RUNPATH to libkvxfer, no libtensorrt_llm.so, their factories"

# Configures, builds and runs one GoogleTest project against the installed
# package; a failure is remembered in tests_rc so the consumer checks still run.
tests_rc=0
run_suite() {
  local src="$1" build="$2"
  shift 2
  cmake -S "$ROOT/$src" -B "$BUILD_ROOT/$build" "${GENERATOR_ARGS[@]}" -DCMAKE_PREFIX_PATH="$PREFIX" "$@"
  cmake --build "$BUILD_ROOT/$build" -j "$JOBS"
  # shellcheck disable=SC2086
  (cd "$BUILD_ROOT/$build" && ctest --output-on-failure -j "$JOBS" $CTEST_ARGS) || tests_rc=$?
}

section "the shim vtable check fails on headers that gain one defaulted virtual"
# A copy of the compat headers whose BaseTransferAgent gains one virtual with a
# default body (as a public fork's drainContextKvTransferFailureEventIds): it
# compiles, so only the check can refuse it, naming the shim and the count.
proof="$BUILD_ROOT/vtable_proof"
rm -rf "$proof"
mkdir -p "$proof"
cp -r "$ROOT/wrappers/compat/include" "$proof/include"
python3 - "$proof/include/tensorrt_llm/executor/transferAgent.h" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
start = text.index("class BaseTransferAgent")
end = text.index("};", start)
extra = "    virtual std::vector<std::string> drainContextKvTransferFailureEventIds()\n    {\n        return {};\n    }\n"
open(path, "w").write(text[:end] + extra + text[end:])
PY
if cmake -S "$ROOT" -B "$proof/build" -DTRTLLM_INCLUDE_DIR="$proof/include" >"$proof/configure.log" 2>&1; then
  echo "configure accepted headers with an unhandled defaulted virtual" >&2
  exit 1
fi
grep -q "KvxTransferAgent: 1 virtual(s) not overridden: .*drainContextKvTransferFailureEventIds" "$proof/configure.log" \
  || { cat "$proof/configure.log" >&2; echo "the refusal does not name the shim, the count and the virtual" >&2; exit 1; }
echo "ok: refused, naming KvxTransferAgent and the 1 unhandled virtual"

section "the line of TensorRT-LLM's own headers is read from what they declare"
# Each line's compat headers with the other lines' declarations taken out (as
# that release's own headers are): configured with TRTLLM_INCLUDE_DIR, the build
# must name that line, and refuse a KVXFER_TRTLLM_LINE that contradicts it.
for line in "${lines[@]}"; do
  headers="$BUILD_ROOT/line_headers/$line"
  rm -rf "$headers"
  python3 "$ROOT/.ci/trtllm_line_headers.py" "$ROOT/wrappers/compat/include" "$line" "$headers"
  log="$BUILD_ROOT/line_headers/$line.log"
  cmake -S "$ROOT" -B "$BUILD_ROOT/line_headers/$line.build" -DTRTLLM_INCLUDE_DIR="$headers" >"$log" 2>&1 \
    || { cat "$log" >&2; echo "configure with the $line line's headers failed" >&2; exit 1; }
  grep -qF "(the $line line)" "$log" || { cat "$log" >&2; echo "the $line line's headers were not detected as such" >&2; exit 1; }
  grep -qF "kvxfer wrappers ($line line): shims override every interface virtual" "$log" \
    || { cat "$log" >&2; echo "the vtable check did not pass on the $line line's headers" >&2; exit 1; }
  wrong=1.4
  [[ "$line" != 1.4 ]] || wrong=1.1
  if cmake -S "$ROOT" -B "$BUILD_ROOT/line_headers/$line.build" -DTRTLLM_INCLUDE_DIR="$headers" \
      -DKVXFER_TRTLLM_LINE="$wrong" >"$log" 2>&1; then
    echo "configure accepted KVXFER_TRTLLM_LINE=$wrong with the $line line's headers" >&2
    exit 1
  fi
  grep -qF "are of the $line line" "$log" || { cat "$log" >&2; echo "the refusal does not name the $line line" >&2; exit 1; }
  rm -rf "$BUILD_ROOT/line_headers/$line.build"
done
echo "KVX-CHECK ok TensorRT-LLM headers of lines ${LINES//;/, } detected as such, with every virtual overridden"

section "build + run the GoogleTest suite (tests/cpp) against the installed package"
test_args=()
if [[ -n "${KVXFER_TEST_UCX_TLS:-}" ]]; then test_args+=("-DKVXFER_TEST_UCX_TLS=$KVXFER_TEST_UCX_TLS"); fi
run_suite tests/cpp tests "${test_args[@]}"

section "build + run TensorRT-LLM's scenarios (tests/trtllm) through the installed wrappers"
trtllm_args=()
if [[ -n "${KVXFER_TEST_NIXL:-}" ]]; then trtllm_args+=("-DKVXFER_TEST_NIXL=$KVXFER_TEST_NIXL"); fi
run_suite tests/trtllm trtllm "${trtllm_args[@]}"
# The other lines' wrappers (lib/trtllm/<line>/) under the same suite, compiled
# on that line's interfaces; the way of loading is the same for every line, so
# they run found by file name only, and the device-memory cases (which need a
# GPU, and run on the GPU machine for the default line) are left out.
for line in "${lines[@]}"; do
  [[ "$line" != 1.4 ]] || continue
  CTEST_ARGS="${CTEST_ARGS:-} -R ,path\\]|header -E DeviceMemory" run_suite tests/trtllm "trtllm-$line" "${trtllm_args[@]}" \
    -DKVXFER_TRTLLM_LINE="$line"
done

# TensorRT-LLM's own layout: the wrappers replace the files in tensorrt_llm/libs/
# and find libkvxfer next to them ($ORIGIN).
libs="$BUILD_ROOT/trtllm/tensorrt_llm/libs"
rm -rf "$libs" && mkdir -p "$libs"
cp "$lib"/libtensorrt_llm_*_wrapper.so "$lib/libkvxfer.so.$major" "$libs/"
if KVX_TRTLLM_RUN="ucx:path:$libs" "$BUILD_ROOT/trtllm/kvxfer_trtllm_test" \
  --gtest_filter='LoadMode.*:TransferAgent.Basic:ConnectionManager.Basic'; then
  echo "KVX-CHECK ok wrappers from a tensorrt_llm/libs/ layout"
else
  tests_rc=$?
  echo "KVX-CHECK FAILED wrappers from a tensorrt_llm/libs/ layout"
fi

section "example consumer: CMake (find_package(kvxfer) -> kvxfer::kvxfer)"
cmake -S "$ROOT/examples/consumer" -B "$BUILD_ROOT/consumer" "${GENERATOR_ARGS[@]}" -DCMAKE_PREFIX_PATH="$PREFIX"
cmake --build "$BUILD_ROOT/consumer" -j "$JOBS"
"$BUILD_ROOT/consumer/kvxfer_consumer"
echo "KVX-CHECK ok example consumer through find_package"

section "example consumer: pkg-config"
export PKG_CONFIG_PATH="$lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
pc_libdir="$(pkg-config --variable=libdir kvxfer)"
# shellcheck disable=SC2046
cc -std=c99 -Wall -Wextra -pedantic -Werror -o "$BUILD_ROOT/consumer/kvxfer_consumer_pc" \
  "$ROOT/examples/consumer/main.c" $(pkg-config --cflags --libs kvxfer) -Wl,-rpath,"$pc_libdir"
"$BUILD_ROOT/consumer/kvxfer_consumer_pc"
echo "KVX-CHECK ok example consumer through pkg-config"

section "README example: examples/two_agents/two_agents.c, verbatim, built with find_package and run"
# The README's C block after the line naming the file must be the file itself.
readme_block="$(awk '/^<!-- examples\/two_agents\/two_agents.c/ {grab = 1; next}
  grab && /^```c$/ {inside = 1; next}
  inside && /^```$/ {exit}
  inside {print}' "$ROOT/README.md")"
if [[ "$readme_block" != "$(cat "$ROOT/examples/two_agents/two_agents.c")" ]]; then
  echo "README.md's two-agent example differs from examples/two_agents/two_agents.c:" >&2
  diff <(printf '%s\n' "$readme_block") "$ROOT/examples/two_agents/two_agents.c" >&2 || true
  exit 1
fi
echo "KVX-CHECK ok README example equals examples/two_agents/two_agents.c"
cmake -S "$ROOT/examples/two_agents" -B "$BUILD_ROOT/two_agents" "${GENERATOR_ARGS[@]}" -DCMAKE_PREFIX_PATH="$PREFIX"
cmake --build "$BUILD_ROOT/two_agents" -j "$JOBS"
"$BUILD_ROOT/two_agents/two_agents"
echo "KVX-CHECK ok README example: two agents, one WRITE, data and sync message verified"

section "relocated install tree still works"
moved="$BUILD_ROOT/_install_moved"
rm -rf "$moved" "$BUILD_ROOT/consumer_moved"
cp -a "$PREFIX" "$moved"
cmake -S "$ROOT/examples/consumer" -B "$BUILD_ROOT/consumer_moved" "${GENERATOR_ARGS[@]}" -DCMAKE_PREFIX_PATH="$moved"
cmake --build "$BUILD_ROOT/consumer_moved" -j "$JOBS"
"$BUILD_ROOT/consumer_moved/kvxfer_consumer"
echo "KVX-CHECK ok relocated install tree"
rm -rf "$moved" "$BUILD_ROOT/consumer_moved"

if [[ $tests_rc -ne 0 ]]; then
  echo "ctest failed (exit $tests_rc): see the failures above" >&2
  exit "$tests_rc"
fi
echo "all good"
