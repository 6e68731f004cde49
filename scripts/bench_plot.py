#!/usr/bin/env python3
"""Plot kvxfer-bench results: bandwidth against descriptor size, one line per system.

usage: bench_plot.py RESULTS.csv OUT.png

Raw sweep, WRITE and READ side by side. For kvxfer and NIXL each point is
the request with the largest descriptor count <= 32 that fits the pool, the
closest match to ucx_perftest's window of 32 operations in flight; the median
over rounds when the run had several.
"""
import csv
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SYSTEMS = ["ucx_perftest", "kvxfer-ucx", "kvxfer-nixl", "nixl", "nixl-prep"]
STYLE = {"ucx_perftest": "k--o", "kvxfer-ucx": "C0-o", "kvxfer-nixl": "C1-s", "nixl": "C3-^", "nixl-prep": "C2-v"}


def main(src, out):
    rows = [r for r in csv.DictReader(open(src)) if r["kind"] == "transfer" and r["layout"] == "raw" and not r.get("error")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, op in zip(axes, ["WRITE", "READ"]):
        for system in SYSTEMS:
            runs = {}
            for r in rows:
                if r["system"] != system or r["op"] != op:
                    continue
                size, descs = int(r["desc_size"]), int(r["descs"])
                if system != "ucx_perftest" and descs > 32:
                    continue
                runs.setdefault(size, {}).setdefault(descs, []).append(float(r["gbps"]))
            best = {size: statistics.median(by[max(by)]) for size, by in runs.items()}
            if best:
                sizes = sorted(best)
                ax.plot(sizes, [best[s] for s in sizes], STYLE[system], label=system)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("descriptor size (bytes)")
        ax.set_title(f"{op}: bandwidth vs descriptor size")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("GB/s")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
