#!/usr/bin/env bash
# The Python suite (python/tests, pytest): builds the wheel, installs it into a
# fresh virtual environment holding only the wheel and its dependencies (+ pytest
# and numpy), and runs the suite on the UCX backend; then again in a second
# fresh environment that also holds the NIXL wheel (nixl-cu12 --no-deps: its
# own dependencies pull torch, which kvxfer does not need) with
# TRTLLM_USE_NIXL_KVCACHE=1, as the C ABI selects backends.
#
#   scripts/test_python.sh                    # both backends
#   BACKENDS=ucx scripts/test_python.sh       # one
#   PYTEST_ARGS="-k binding" scripts/test_python.sh
#   WHEEL=dist/kvxfer-...whl scripts/test_python.sh   # test a wheel built elsewhere
#   KVX_SKIP_SETUP=1 scripts/test_python.sh           # tools already installed (scripts/setup.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
BACKENDS="${BACKENDS:-ucx nixl}"
CUDA_FLAVOUR="${CUDA_FLAVOUR:-cu12}"
VENV_ROOT="${VENV_ROOT:-$ROOT/build/pyvenv}"
PYTEST_ARGS="${PYTEST_ARGS:-}"
step() { printf '\n==== %s\n' "$*"; }

# Build tools (apt), crates; the UCX / NIXL wheels it installs system-wide are not
# what the suite uses (each venv installs its own).
if [[ "${KVX_SKIP_SETUP:-0}" != 1 ]]; then "$ROOT/scripts/setup.sh"; fi
if ! "$PYTHON" -m venv --help >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3-venv
fi
if [[ -z "${WHEEL:-}" ]]; then
  step "build the wheel"
  WHEEL="$("$ROOT/scripts/wheel.sh" | tail -n1)"
fi
test -f "$WHEEL" || { echo "no wheel at '$WHEEL'" >&2; exit 1; }

rc=0
for backend in $BACKENDS; do
  venv="$VENV_ROOT-$backend"
  extra=""
  if [[ "$backend" == nixl ]]; then extra=" + nixl-$CUDA_FLAVOUR (--no-deps)"; fi
  step "fresh venv $venv: $(basename "$WHEEL")[$CUDA_FLAVOUR] + pytest numpy$extra"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "$WHEEL[$CUDA_FLAVOUR]" pytest numpy
  if [[ "$backend" == nixl ]]; then
    "$venv/bin/python" -m pip install -q --no-deps "nixl-$CUDA_FLAVOUR>=1.5"
  fi
  step "pytest on $backend"
  # Nothing from the caller's environment decides where libraries come from, and the
  # suite runs outside the source tree so `import kvxfer` is the installed wheel.
  # shellcheck disable=SC2086
  (
    cd "$VENV_ROOT-$backend"
    unset LD_LIBRARY_PATH LD_PRELOAD KVX_UCX_LIB KVX_NIXL_LIB PYTHONPATH TRTLLM_USE_UCX_KVCACHE TRTLLM_USE_NIXL_KVCACHE
    if [[ "$backend" == nixl ]]; then export TRTLLM_USE_NIXL_KVCACHE=1; fi
    export KVX_TEST_VENV="$venv" KVX_REPO_ROOT="$ROOT"
    timeout 900 "$venv/bin/python" -m pytest -p no:cacheprovider -q -ra "$ROOT/python/tests" $PYTEST_ARGS
  ) || rc=$?
done
exit "$rc"
