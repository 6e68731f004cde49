#!/usr/bin/env python3
"""Markdown tables from scale-benchmark JSON files (scripts/bench_scale.sh):
   scripts/scale_table.py benches/results/DATE/scale-TIME/*.json"""
import json
import sys

COLUMNS = {
    "agents": [("total_s", "total s", 3), ("per_peer_ms", "ms/peer", 3), ("p50_ms", "p50 ms", 3),
               ("p99_ms", "p99 ms", 3), ("hub_cpu_ms_per_peer", "hub CPU ms/peer", 3),
               ("fds_per_peer", "fds/peer", 2), ("threads_added", "threads +", 0),
               ("rss_kib_per_peer", "KiB/peer", 1), ("fds_after_invalidate_worst", "fds left", 0)],
    "storm-cold": [("last_done_ms", "all done ms", 0), ("p50_ms", "p50 ms", 1), ("p99_ms", "p99 ms", 1),
                   ("failures", "failed", 0), ("listen_overflows", "overflows", 0),
                   ("hub_cpu_ms_per_peer", "hub CPU ms/peer", 3)],
    "managers": [("total_s", "total s", 3), ("per_peer_ms", "ms/peer", 3),
                 ("hub_cpu_ms_per_peer", "hub CPU ms/peer", 3), ("rtt_p50_ms", "RTT p50 ms", 3),
                 ("rtt_p99_ms", "RTT p99 ms", 3), ("fds_per_peer", "fds/peer", 2),
                 ("threads_added", "threads +", 0), ("rss_kib_per_peer", "KiB/peer", 1),
                 ("first_conn_ms", "first connection ms", 1)],
}
COLUMNS["storm"] = COLUMNS["storm-cold"]


def cell(v, digits):
    return "-" if v is None else f"{v:.{digits}f}"


for path in sys.argv[1:]:
    run = json.load(open(path))
    print(f"\n### {run['backend'].upper()}, UCX_TLS={run['ucx_tls']}\n")
    for scenario, cols in COLUMNS.items():
        rows = [r for r in run["rows"] if r["scenario"] == scenario]
        if not rows:
            continue
        print(f"{scenario}:\n")
        print("| N | " + " | ".join(c[1] for c in cols) + " |")
        print("|---:|" + "---:|" * len(cols))
        for r in rows:
            print(f"| {r['n']} | " + " | ".join(cell(r.get(k), d) for k, _, d in cols) + " |")
        print()
    idle = [r for r in run["rows"] if r["scenario"] == "idle"]
    if idle:
        print("idle (256 handles): " + "; ".join(
            f"{r['what']}: {r['core_percent_per_handle']:.4f}% of a core per handle" for r in idle) + "\n")
    print("| goal | verdict | measured |\n|---|---|---|")
    for g in run["goals"]:
        print(f"| {g['goal']} | {'MET' if g['met'] else 'NOT MET'} | {g['measured']} |")
