"""Rows for bench/results/h200.json from one bench/run_ckpt_h200.sh run: one per model and
checkpoint policy, {"work", "modelspec_ms", "baseline", "baseline_ms", "modelspec_peak_gib",
"baseline_peak_gib", ...} plus the saved-activation memory against the planner's prediction.
With --merge FILE, replaces the rows of the same "work" in FILE (a JSON list) and writes it."""
import json, os, sys

import jsonl

src = sys.argv[1]


def lines(name):
    return jsonl.rows(src, name)


torch = {m: (lines(f"torch_gpt2_{m}.jsonl") or [{}])[-1] for m in ("compile_budget50", "compile")}
tags = {"none": "none", "auto": "auto", "full": "full", "budget(0.5)": "budget50"}
names = {"gpt2": "train-gpt2-124m", "llama1b": "train-llama-3.2-1b"}
rows = []
for r in lines("ms_ckpt.jsonl"):
    work = f"{names[r['model']]}-{tags.get(r['policy'], r['policy'])}"
    row = {"work": work, "modelspec_ms": r["ms"], "modelspec_peak_gib": r["peak_gib"],
           "checkpoint": r["policy"], "B": r["B"], "T": r["T"],
           "saved_activation_gib": r["saved_activation_gib"],
           "predicted_activation_gib": r["predicted_activation_gib"],
           "activation_ratio_vs_planner": r["act_ratio"],
           "mapped_prediction_gib": r["mapped_prediction_gib"],
           "activation_ratio_vs_mapped": r["mapped_ratio"],
           "recompute_buffer_gib": r["recompute_buffer_gib"],
           "mem_delta_gib": r["mem_delta_gib"], "modelspec_MFU_vs_800": r["MFU_vs_800"],
           "modelspec_loss": r["loss"], "baseline": None, "baseline_ms": None, "baseline_peak_gib": None}
    if r["model"] == "gpt2" and r["policy"] == "budget(0.5)":
        t, c = torch["compile_budget50"], torch["compile"]
        row.update({"baseline": "torch.compile, activation_memory_budget=0.5 (torch_train_bench.py gpt2 compile_budget50)",
                    "baseline_ms": t.get("ms_step"), "baseline_peak_gib": t.get("peak_GiB"),
                    "time_ratio": (t.get("ms_step") and round(r["ms"] / t["ms_step"], 3)),
                    "torch_compile_no_ac_ms": c.get("ms_step"), "torch_compile_no_ac_peak_gib": c.get("peak_GiB"),
                    "time_ratio_vs_compile_no_ac": (c.get("ms_step") and round(r["ms"] / c["ms_step"], 3))})
    if r["model"] == "gpt2" and r["policy"] == "none" and torch["compile"]:
        c = torch["compile"]
        row.update({"baseline": "torch.compile (torch_train_bench.py gpt2 compile)", "baseline_ms": c.get("ms_step"),
                    "baseline_peak_gib": c.get("peak_GiB"), "time_ratio": round(r["ms"] / c["ms_step"], 3)})
    row["device"] = "NVIDIA H200"
    rows.append(row)

if len(sys.argv) > 3 and sys.argv[2] == "--merge":
    path = sys.argv[3]
    old = json.load(open(path))
    new = {r["work"] for r in rows}
    merged = [r for r in old if r["work"] not in new] + rows
    with open(path, "w") as f:
        json.dump(merged, f, indent=1)
        f.write("\n")
print(json.dumps(rows, indent=1))
