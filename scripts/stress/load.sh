#!/usr/bin/env bash
# Load and soak (tests/load.rs): 16 threads on shared agents and managers
# mixing WRITE+READ-back, notifications, tagged messages, connection calls and
# registrations, every byte compared; once per backend.
#   scripts/stress/load.sh                # per backend: 16 x 10,000 operations, then a 10-minute soak
#   OPS=2000 SOAK_SECONDS=60 BACKENDS=nixl scripts/stress/load.sh
# The soak prints resident memory every 30 s and fails if it keeps growing.
set -euo pipefail
cd "$(dirname "$0")/../.."
OPS="${OPS:-10000}"
SOAK_SECONDS="${SOAK_SECONDS:-600}"
BACKENDS="${BACKENDS:-ucx nixl}"
LOG="${LOG:-target/stress-load.log}"
source scripts/stress/common.sh
bin="$(test_binary load)"
: > "$LOG"
for backend in $BACKENDS; do
  # Chosen the way TensorRT-LLM chooses it.
  case "$backend" in
    ucx) select=(env -u TRTLLM_USE_NIXL_KVCACHE TRTLLM_USE_UCX_KVCACHE=1) ;;
    nixl) select=(env -u TRTLLM_USE_UCX_KVCACHE TRTLLM_USE_NIXL_KVCACHE=1) ;;
    *) echo "unknown backend $backend" >&2; exit 2 ;;
  esac
  echo "==== $backend load: 16 threads x $OPS operations" | tee -a "$LOG"
  "${select[@]}" KVX_LOAD_OPS="$OPS" "$bin" --nocapture 2>&1 | grep --line-buffered -E 'operations|writes=|panicked|^test result' | tee -a "$LOG"
  [[ ${PIPESTATUS[0]} -eq 0 ]]
  if [[ "$SOAK_SECONDS" -gt 0 ]]; then
    echo "==== $backend soak: 16 threads for $SOAK_SECONDS s, resident memory every 30 s" | tee -a "$LOG"
    "${select[@]}" KVX_LOAD_SECONDS="$SOAK_SECONDS" "$bin" --nocapture 2>&1 | grep --line-buffered -E '^rss|operations|writes=|panicked|^test result' | tee -a "$LOG"
    [[ ${PIPESTATUS[0]} -eq 0 ]]
  fi
done
