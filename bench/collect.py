"""Joins the JSON lines of one bench/run_h200.sh run into bench/results/h200.json rows:
{"work", "modelspec_ms", "baseline", "baseline_ms", "modelspec_peak_gib", "baseline_peak_gib", ...}."""
import json, sys, os

import jsonl

out = sys.argv[1]

def lines(name):
    return jsonl.rows(out, name)

rows = []
ms = {(r["B"], r["H"], r["KV"], r["T"], r["D"]): r for r in lines("ms_attn.jsonl")}
sd = {(r["B"], r["H"], r["KV"], r["T"], r["D"]): r for r in lines("sdpa.jsonl")}
names = {(16, 12, 12, 1024, 64): "attention-fwdbwd-d64-t1024", (8, 32, 8, 2048, 64): "attention-fwdbwd-d64-t2048-gqa",
         (4, 32, 8, 4096, 128): "attention-fwdbwd-d128-t4096-gqa", (8, 16, 16, 2048, 128): "attention-fwdbwd-d128-t2048"}
for key, work in names.items():
    m, s = ms.get(key), sd.get(key)
    if not m and not s:
        continue
    rows.append({"work": work, "modelspec_ms": m and m["fwdbwd_ms"], "baseline": "torch SDPA (flash) fwd+bwd, bf16",
                 "baseline_ms": s and s["fwdbwd_ms"], "modelspec_peak_gib": m and m["peak_gib"], "baseline_peak_gib": None,
                 "modelspec_TFLOPs": m and m["fwdbwd_TFLOPs"], "baseline_TFLOPs": s and s["fwdbwd_TFLOPs"],
                 "throughput_ratio": (m and s) and round(m["fwdbwd_TFLOPs"] / s["fwdbwd_TFLOPs"], 3),
                 "modelspec_fwd_ms": m and m["fwd_ms"], "baseline_fwd_ms": s and s["fwd_ms"]})
for model, work in [("gpt2", "train-gpt2-124m"), ("llama1b", "train-llama-3.2-1b")]:
    m = lines(f"ms_train_{model}.jsonl")
    t = lines(f"torch_train_{model}.jsonl")
    if not m and not t:
        continue
    m = m[-1] if m else {}
    t = t[-1] if t else {}
    ms_, bl = m.get("ms"), t.get("ms_step")
    rows.append({"work": work, "modelspec_ms": ms_, "baseline": "torch.compile (torch_train_bench.py MODEL compile)",
                 "baseline_ms": bl, "modelspec_peak_gib": m.get("peak_gib"), "baseline_peak_gib": t.get("peak_GiB"),
                 "time_ratio": (ms_ and bl) and round(ms_ / bl, 3), "modelspec_MFU_vs_800": m.get("MFU_vs_800"),
                 "modelspec_loss": m.get("loss"), "baseline_loss": t.get("loss")})
g = lines("ms_gemm.jsonl")
for r in rows:
    r["device"] = "NVIDIA H200"
    r["gemm_bf16_8192_TFLOPs_same_run"] = g[-1]["TFLOPs"] if g else None
print(json.dumps(rows, indent=1))
