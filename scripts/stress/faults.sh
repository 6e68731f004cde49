#!/usr/bin/env bash
# Repeat every fault scenario of tests/faults.rs ROUNDS times (default 50)
# between real processes and report counts per scenario:
#   scripts/stress/faults.sh                 # all scenarios, 50 rounds each
#   ROUNDS=5 TESTS=sigkill_mid scripts/stress/faults.sh
# Output: one line per round (timings, fds/threads/RSS of the survivor) and a
# "N passed, N failed" line per scenario; the log goes to $LOG too.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${ROUNDS:-50}"
TESTS="${TESTS:-sigkill_mid_transfer sigkill_during_connection_setup sigkill_while_receiver_waits sigstop_peer network_cut forged_descriptors descriptor_of_an_exited invalidate_racing}"
LOG="${LOG:-target/stress-faults.log}"
source scripts/stress/common.sh
bin="$(test_binary faults)"
# A private copy: rebuilding while the stress run goes on must not swap the peers' binary.
copy="$(mktemp -d)/faults"
cp "$bin" "$copy"
: > "$LOG"
status=0
for t in $TESTS; do
  echo "==== $t x $ROUNDS" | tee -a "$LOG"
  start=$(date +%s)
  set +e
  KVX_FAULT_ROUNDS="$ROUNDS" "$copy" "$t" --nocapture --test-threads=1 2>&1 \
    | grep -E '^round |passed, [0-9]+ failed|SKIPPED|KNOWN NIXL GAP|panicked|^test result' | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  set -e
  [[ $rc -eq 0 ]] || status=1
  echo "($t: $(( $(date +%s) - start )) s)" | tee -a "$LOG"
done
echo "==== summary" | tee -a "$LOG"
grep -E 'passed, [0-9]+ failed' "$LOG" | tee "$LOG.summary"
rm -rf "$(dirname "$copy")"
exit $status
