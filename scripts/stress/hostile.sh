#!/usr/bin/env bash
# Repeat the hostile-peer suite (tests/hostile.rs) ROUNDS times (default 5)
# with KVX_HOSTILE_CASES forgeries per kind (default 48), including the
# measurement of agents without a key, and print the summed counts per case
# kind: cases, refused, loaded, crashes, hangs.
#   scripts/stress/hostile.sh
#   ROUNDS=1 KVX_HOSTILE_CASES=12 KVX_HOSTILE_BACKENDS=ucx scripts/stress/hostile.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${ROUNDS:-5}"
export KVX_HOSTILE_CASES="${KVX_HOSTILE_CASES:-48}"
LOG="${LOG:-target/stress-hostile.log}"
source scripts/stress/common.sh
bin="$(test_binary hostile)"
# A private copy: rebuilding while the stress run goes on must not swap the children's binary.
copy="$(mktemp -d)/hostile"
cp "$bin" "$copy"
: > "$LOG"
status=0
for round in $(seq 1 "$ROUNDS"); do
  echo "==== round $round of $ROUNDS (KVX_HOSTILE_CASES=$KVX_HOSTILE_CASES)" | tee -a "$LOG"
  set +e
  "$copy" --include-ignored --skip hostile_child --nocapture --test-threads=1 2>&1 \
    | grep -E '^HOSTILE |HOSTILE |SKIPPED|panicked|^test result' | sed 's/^test [a-z_]* \.\.\. //' | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  set -e
  [[ $rc -eq 0 ]] || status=1
done
echo "==== summary over $ROUNDS rounds" | tee -a "$LOG"
grep -o 'HOSTILE .*: cases=.*' "$LOG" | awk '
  {
    split($0, parts, ": cases=")
    kind = substr(parts[1], 9)
    sub(/ \([0-9.]+ s\)/, "", kind)
    n = split(parts[2], f, /[ =]/)
    cases[kind] += f[1]
    for (i = 2; i < n; i += 2) { if (f[i] == "refused") refused[kind] += f[i+1]; if (f[i] == "loaded") loaded[kind] += f[i+1]; if (f[i] == "crashes") crashes[kind] += f[i+1]; if (f[i] == "hangs") hangs[kind] += f[i+1] }
    if (!(kind in seen)) { seen[kind] = 1; order[++k] = kind }
  }
  END { for (j = 1; j <= k; j++) { x = order[j]; printf "%s: cases=%d refused=%d loaded=%d crashes=%d hangs=%d\n", x, cases[x], refused[x], loaded[x], crashes[x], hangs[x] } }
' | tee "$LOG.summary"
rm -rf "$(dirname "$copy")"
exit $status
