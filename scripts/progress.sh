# Sourced by the build and test scripts: progress lines for steps that take
# minutes, so a long silence always has a line saying what runs.
#   step "first build" cargo build --lib     # prints a timestamped line, runs, prints the seconds
step() {
  local what="$1" start=$SECONDS rc=0
  shift
  printf '[%s] step: %s\n' "$(date -u +%H:%M:%S)" "$what"
  "$@" || rc=$?
  if [[ $rc -eq 0 ]]; then
    printf '[%s] done: %s (%d s)\n' "$(date -u +%H:%M:%S)" "$what" $((SECONDS - start))
  else
    printf '[%s] FAILED: %s (exit %d after %d s)\n' "$(date -u +%H:%M:%S)" "$what" "$rc" $((SECONDS - start))
  fi
  return $rc
}
