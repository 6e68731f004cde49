#!/usr/bin/env python3
"""Markdown tables of `kvxfer-gpu bench --json` files (one or more runs of the
same machine, merged): one row per case, workload and direction, each
system's GB/s with its share of its own run's ceiling (cuMemcpyPeer between
two GPUs, cuMemcpy on one), and, when the files carry them, the goals with verdicts.

    scripts/gpu/results_table.py RUN.json [MORE.json ...]
"""
import json
import sys

runs = [json.load(open(path)) for path in sys.argv[1:]]
first = runs[0]
name = first.get("ceiling", "cuMemcpyPeer")
systems = ["kvxfer-ucx (batched IPC)", "kvxfer-ucx (transport)", "kvxfer-nixl"]
rows = {}
def ceilings(run):
    return {
        "WRITE": run.get("ceiling_gbps_0_to_target", run.get("ceiling_gbps_0_to_1")),
        "READ": run.get("ceiling_gbps_target_to_0", run.get("ceiling_gbps_1_to_0")),
    }


for run in runs:
    for r in run["results"]:
        r["ceiling"] = ceilings(run)[r["op"]]
        rows.setdefault((r.get("case", "single"), r["workload"], r["op"]), {})[r["system"]] = r
present = [s for s in systems if any(s in by for by in rows.values())]
print("Ceiling (" + name + ", 1.25 GiB, measured in each run): " + "; ".join(
    f"{c['WRITE']:.1f} GB/s one way, {c['READ']:.1f} GB/s the other" for c in map(ceilings, runs)) + ".\n")
print("| case | workload | op | " + " | ".join(f"{s} GB/s (of ceiling)" for s in present) + " | request p50 / p99 ms (first system) |")
print("|---|---|---|" + "---|" * (len(present) + 1))
for (case, workload, op), by in rows.items():
    cells = []
    for s in present:
        r = by.get(s)
        if r is None:
            cells.append("-")
        elif r["status"] != "verified":
            cells.append(f"failed ({r['status']})")
        else:
            cells.append(f"{r['gbps']:.1f} ({100 * r['gbps'] / r['ceiling']:.0f}%)")
    lead = next((by[s] for s in present if s in by), None)
    lat = "-" if lead is None or lead.get("p50_ms") is None else f"{lead['p50_ms']:.2f} / {lead['p99_ms']:.2f}"
    print(f"| {case} | {workload} | {op} | " + " | ".join(cells) + f" | {lat} |")
goals = [g for run in runs for g in run.get("goals", []) if "not run" not in g["measured"]]
if goals:
    print("\n| goal | measured | verdict |\n|---|---|---|")
    seen = set()
    for g in goals:
        if g["goal"] in seen:
            continue
        seen.add(g["goal"])
        print(f"| {g['goal']} | {g['measured']} | **{g['verdict']}** |")
