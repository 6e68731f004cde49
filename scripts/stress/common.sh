# Sourced by the stress scripts: build one integration test and print its binary.
test_binary() {
  local bin
  bin="$(cargo test --test "$1" --no-run 2>&1 | sed -n "s/.*(\([^()]*\/$1-[0-9a-f]*\)).*/\1/p" | tail -n1)"
  test -x "$bin" || { echo "could not build tests/$1.rs" >&2; return 1; }
  echo "$bin"
}
