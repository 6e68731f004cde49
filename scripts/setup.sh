#!/usr/bin/env bash
# Installs everything kvxfer needs on a fresh Debian machine: build tools
# from apt, UCX and NIXL from their PyPI wheels (not Debian's old
# libucx-dev), and the Rust crates (fetched by cargo). Safe to run again.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_apt=()
for pkg in cmake g++ pkg-config libgtest-dev binutils valgrind iproute2 clang-format; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# UCX 1.22 with CUDA support, from the wheel (libucp is found at run time).
if ! python3 -c 'import libucx' 2>/dev/null; then
  python3 -m pip install --quiet --no-deps "libucx-cu12>=1.19"
fi

# NIXL 1.5.1 (C API, UCX plugin, its own bundled UCX), from the wheel: only the
# shared libraries are used, so --no-deps keeps torch and friends out.
if ! python3 -m pip show --quiet nixl-cu12 >/dev/null 2>&1 && ! python3 -m pip show --quiet nixl-cu13 >/dev/null 2>&1; then
  python3 -m pip install --quiet --no-deps "nixl-cu12==1.5.1"
fi

command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 1; }
cargo fetch --quiet
