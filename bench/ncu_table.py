#!/usr/bin/env python3
"""Per-kernel GPU time from an `ncu --csv --metrics gpu__time_duration.sum` log: one row per
kernel family (cuBLASLt's and cuDNN's generated names grouped), launches, total ms, ms per step
and share. Steps are counted by the launches of a kernel that runs once per step (`--per-step`,
default `adamw`). Usage: python3 bench/ncu_table.py ncu.csv [--per-step adamw] [--json out.json]"""
import csv
import json
import re
import sys

UNIT = {"nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3}


def family(name):
    n = name.split("(")[0].strip()
    if n.startswith("nvjet") or "gemm" in n.lower() or n.startswith("sm90_xmma"):
        return "cuBLASLt GEMMs"
    if "splitKreduce" in n or "reduce_kernel" in n.lower():
        return "cuBLASLt split-K reduce"
    if "sdpa" in n or "cudnn" in n.lower() or n.startswith("cudnn_"):
        return "cuDNN SDPA"
    return re.sub(r"_(bf16|f32)$", "", n)


def main():
    args = sys.argv[1:]
    path = args[0]
    per_step = args[args.index("--per-step") + 1] if "--per-step" in args else "adamw"
    out_json = args[args.index("--json") + 1] if "--json" in args else None
    rows = {}
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        ms = float(r["Metric Value"].replace(",", "")) * UNIT.get(r["Metric Unit"], 1e-6)
        fam = family(r["Kernel Name"])
        c, t = rows.get(fam, (0, 0.0))
        rows[fam] = (c + 1, t + ms)
    total = sum(t for _, t in rows.values())
    steps = sum(c for k, (c, _) in rows.items() if k.startswith(per_step)) or 1
    table = sorted(rows.items(), key=lambda kv: -kv[1][1])
    print(f"{steps} steps (launches of {per_step}*), {total:.2f} ms of GPU time, {total / steps:.2f} ms a step")
    print("| kernel | launches | ms | ms/step | share |")
    print("|---|---|---|---|---|")
    for k, (c, t) in table:
        print(f"| {k} | {c} | {t:.2f} | {t / steps:.3f} | {100 * t / total:.1f}% |")
    if out_json:
        json.dump({"steps": steps, "total_ms": total,
                   "kernels": [{"kernel": k, "launches": c, "ms": t, "ms_per_step": t / steps}
                               for k, (c, t) in table]}, open(out_json, "w"), indent=1)


if __name__ == "__main__":
    main()
