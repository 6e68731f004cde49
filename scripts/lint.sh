#!/usr/bin/env bash
# Style and lint gates: rustfmt and clippy (warnings are errors) over the crate,
# the fuzz workspace and the Python extension, clang-format over the C and C++.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
(cd fuzz && cargo fmt --check)
(cd python && cargo fmt --check)
cargo clippy --quiet --all-targets -- -D warnings
(cd fuzz && cargo clippy --quiet --all-targets -- -D warnings)
(cd python && cargo clippy --quiet --all-targets -- -D warnings)
git ls-files '*.c' '*.cpp' '*.hpp' '*.cu' 'wrappers/*.h' 'tests/*.h' | xargs clang-format --dry-run --Werror
echo "lint: rustfmt, clippy and clang-format clean"
