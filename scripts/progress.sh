# Sourced by the build and test scripts: progress lines for steps that take
# minutes, so a long silence always has a line saying what runs.
#   step "first build" cargo build --lib     # prints a timestamped line, runs, prints the seconds
# The lines go to stderr, so they show where a step's own output is discarded.
step() {
  local what="$1" start=$SECONDS rc=0
  shift
  printf '[%s] step: %s\n' "$(date -u +%H:%M:%S)" "$what" >&2
  "$@" || rc=$?
  if [[ $rc -eq 0 ]]; then
    printf '[%s] done: %s (%d s)\n' "$(date -u +%H:%M:%S)" "$what" $((SECONDS - start)) >&2
  else
    printf '[%s] FAILED: %s (exit %d after %d s)\n' "$(date -u +%H:%M:%S)" "$what" "$rc" $((SECONDS - start)) >&2
  fi
  return $rc
}
