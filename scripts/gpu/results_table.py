#!/usr/bin/env python3
"""Markdown table of a `kvxfer-gpu bench --json` file: one row per workload
and direction, each system's GB/s with its share of the peer-copy ceiling,
and the batched path's ratio to kvxfer-nixl."""
import json
import sys

data = json.load(open(sys.argv[1]))
ceiling = {"WRITE": data["ceiling_gbps_0_to_1"], "READ": data["ceiling_gbps_1_to_0"]}
systems = ["kvxfer-ucx (batched IPC)", "kvxfer-ucx (transport)", "kvxfer-nixl"]
rows = {}
for r in data["results"]:
    rows.setdefault((r["workload"], r["op"]), {})[r["system"]] = r
print(f"Ceiling (cuMemcpyPeer, 1.25 GiB): GPU0->GPU1 {ceiling['WRITE']:.1f} GB/s, GPU1->GPU0 {ceiling['READ']:.1f} GB/s.\n")
print("| workload | op | " + " | ".join(f"{s} GB/s (of ceiling)" for s in systems) + " | batched / nixl |")
print("|---|---|" + "---|" * (len(systems) + 1))
for (workload, op), by in rows.items():
    cells = []
    for s in systems:
        r = by.get(s)
        if r is None:
            cells.append("not run")
        elif r["status"] != "verified":
            cells.append(f"failed ({r['status']})")
        else:
            cells.append(f"{r['gbps']:.1f} ({100 * r['gbps'] / ceiling[op]:.0f}%)")
    b, n = by.get(systems[0]), by.get(systems[2])
    x = b["gbps"] / n["gbps"] if b and n and n["gbps"] > 0 else None
    ratio = "-" if x is None else (f"{x:.1f}x" if x < 10 else f"{x:.0f}x")
    print(f"| {workload} | {op} | " + " | ".join(cells) + f" | {ratio} |")
