"""Joins one bench/gpu_bench.sh run (its working folder) into rows, each modelspec beside its
baseline measured in the same call:
- attention-fwdbwd-*: modelspec's best path (cuDNN through modelspec on the fused layout the
  trainer uses, or the own mma kernels) against the best SDPA backend (default, FA2, cuDNN,
  efficient) in fwd+bwd TFLOP/s; forward alone reported too; with several rounds (gpu_bench.sh's
  ATTN_ROUNDS) each path and backend counts with its median over the rounds;
- train-*: cuda_train_bench against torch_train_bench.py (torch.compile; for mixtral_small also
  HF eager): step time ratio, peak memory, MFU over active parameters against the GEMM ceiling
  measured in the same call (cuda_bench gemm), and which attention and GEMM paths the trainer ran."""
import json, os, statistics, sys

import jsonl

w = sys.argv[1]

def lines(name):
    return jsonl.rows(w, name)

gpu = open(os.path.join(w, "gpu.txt")).read().split(",")[0].strip() if os.path.exists(os.path.join(w, "gpu.txt")) else None
gemm = lines("ms_gemm.jsonl")
ceiling = gemm[-1].get("TFLOPs") if gemm else None
rows = []
names = {(16, 12, 12, 1024, 64): "attention-fwdbwd-d64-t1024", (8, 32, 8, 2048, 64): "attention-fwdbwd-d64-t2048-gqa",
         (4, 32, 8, 4096, 128): "attention-fwdbwd-d128-t4096-gqa", (8, 16, 16, 2048, 128): "attention-fwdbwd-d128-t2048"}
key = lambda r: (r.get("B"), r.get("H"), r.get("KV"), r.get("T"), r.get("D"))


def rounds(name, who):
    """`name`'s rows over every round (`name` and `name` with `_r2`, `_r3`, ...) merged into one row
    per shape and `who` (path/layout, or backend): the median of each TFLOP/s figure, with the
    fwd+bwd samples kept in `fwdbwd_TFLOPs_rounds`."""
    stem = name[:-len(".jsonl")]
    files = [name] + sorted(f for f in os.listdir(w) if f.startswith(stem + "_r") and f.endswith(".jsonl"))
    groups = {}
    for f in files:
        for r in lines(f):
            if "fwdbwd_TFLOPs" in r:
                groups.setdefault((key(r), who(r)), []).append(r)
    out = []
    for rs in groups.values():
        row = dict(rs[0])
        for k in ("fwd_TFLOPs", "fwdbwd_TFLOPs"):
            row[k] = statistics.median(r[k] for r in rs)
        row["fwdbwd_TFLOPs_rounds"] = [r["fwdbwd_TFLOPs"] for r in rs]
        out.append(row)
    return out


ms = rounds("ms_cudnn.jsonl", lambda r: (r.get("path"), r.get("layout")))
sd = rounds("sdpa_backends.jsonl", lambda r: r.get("backend"))
for shape, work in names.items():
    # The head-major rows are an experiment (PyTorch's layout; the trainer's tensors are
    # token-major): reported beside the row, never its figure.
    head_major = [r for r in ms if key(r) == shape and r.get("layout") == "head-major"]
    ours = [r for r in ms if key(r) == shape and r.get("layout") != "head-major"]
    theirs = [r for r in sd if key(r) == shape]
    if not ours and not theirs:
        continue
    fused = [r for r in ours if r.get("path") == "cudnn" and r.get("layout") == "fused"]
    own = [r for r in ours if r.get("path") != "cudnn"]
    best_ours = max(ours, key=lambda r: r["fwdbwd_TFLOPs"]) if ours else None
    best = max(theirs, key=lambda r: r["fwdbwd_TFLOPs"]) if theirs else None
    best_fwd = max(theirs, key=lambda r: r["fwd_TFLOPs"]) if theirs else None
    row = {"work": work, "device": gpu,
           "modelspec_path": best_ours and f"{best_ours.get('path')} ({best_ours.get('layout')})",
           "modelspec_fwdbwd_TFLOPs": best_ours and best_ours["fwdbwd_TFLOPs"],
           "modelspec_fwd_TFLOPs": best_ours and best_ours["fwd_TFLOPs"],
           "modelspec_cudnn_fused_fwdbwd_TFLOPs": fused[0]["fwdbwd_TFLOPs"] if fused else None,
           "modelspec_own_fwdbwd_TFLOPs": max((r["fwdbwd_TFLOPs"] for r in own), default=None),
           "modelspec_cudnn_head_major_fwdbwd_TFLOPs": head_major[0]["fwdbwd_TFLOPs"] if head_major else None,
           "baseline": best and f"torch SDPA best backend ({best['backend']})",
           "baseline_fwdbwd_TFLOPs": best and best["fwdbwd_TFLOPs"],
           "baseline_fwd_TFLOPs": best_fwd and best_fwd["fwd_TFLOPs"],
           "sdpa_backends_fwdbwd_TFLOPs": {r["backend"]: r["fwdbwd_TFLOPs"] for r in theirs},
           "rounds": max((len(r["fwdbwd_TFLOPs_rounds"]) for r in ours + theirs), default=0),
           "modelspec_fwdbwd_TFLOPs_rounds": best_ours and best_ours["fwdbwd_TFLOPs_rounds"],
           "baseline_fwdbwd_TFLOPs_rounds": best and best["fwdbwd_TFLOPs_rounds"]}
    if best_ours and best:
        row["throughput_ratio"] = round(best_ours["fwdbwd_TFLOPs"] / best["fwdbwd_TFLOPs"], 3)
        row["fwd_throughput_ratio"] = round(best_ours["fwd_TFLOPs"] / best_fwd["fwd_TFLOPs"], 3)
    rows.append(row)
def mfu(m):
    """A cuda_train_bench row's active-parameter TFLOP/s over this call's GEMM ceiling."""
    return (m.get("TFLOPs_active") and ceiling) and round(m["TFLOPs_active"] / ceiling, 3)

for model, work in [("gpt2", "train-gpt2-124m"), ("llama1b", "train-llama-3.2-1b"), ("mixtral_small", "train-mixtral-small")]:
    m = lines(f"ms_train_{model}.jsonl")
    m = m[-1] if m else {}
    for mode in ("compile", "eager"):
        t = lines(f"torch_train_{model}_{mode}.jsonl")
        if not t:
            continue
        t = t[-1] if t else {}
        a, b = m.get("ms"), t.get("ms_step")
        rows.append({"work": work, "device": gpu, "modelspec_ms": a,
                     "baseline": f"torch_train_bench.py {model} {mode}", "baseline_ms": b,
                     "time_ratio": (a and b) and round(a / b, 3),
                     "modelspec_peak_gib": m.get("peak_gib"), "baseline_peak_gib": t.get("peak_GiB"),
                     "modelspec_TFLOPs_active": m.get("TFLOPs_active"),
                     "modelspec_MFU_vs_gemm_ceiling": mfu(m),
                     "gemm_ceiling_TFLOPs_same_call": ceiling, "modelspec_attention": m.get("attention"),
                     "modelspec_gemm": m.get("gemm"), "modelspec_cuda_graph": m.get("cuda_graph"),
                     "modelspec_adamw": m.get("adamw"), "modelspec_wgrad": m.get("wgrad"),
                     "modelspec_loss": m.get("loss"), "baseline_loss": t.get("loss")})
# gpt2-124m under budget(0.5): issue 11 asks for peak memory at most torch.compile budget 0.5's
# and a step no slower than torch.compile without checkpointing (both from this call).
m = lines("ms_train_gpt2_budget50.jsonl")
t = lines("torch_train_gpt2_compile_budget50.jsonl")
nc = lines("torch_train_gpt2_compile.jsonl")
if m or t:
    m, t, nc = (m[-1] if m else {}), (t[-1] if t else {}), (nc[-1] if nc else {})
    a, b, c = m.get("ms"), t.get("ms_step"), nc.get("ms_step")
    pa, pb = m.get("peak_gib"), t.get("peak_GiB")
    rows.append({"work": "train-gpt2-124m-budget50", "device": gpu, "checkpoint": "budget(0.5)",
                 "modelspec_ms": a, "modelspec_peak_gib": pa,
                 "baseline": "torch_train_bench.py gpt2 compile_budget50", "baseline_ms": b, "baseline_peak_gib": pb,
                 "time_ratio": (a and b) and round(a / b, 3),
                 "memory_ratio": (pa and pb) and round(pa / pb, 3),
                 "torch_compile_no_ac_ms": c, "time_ratio_vs_compile_no_ac": (a and c) and round(a / c, 3),
                 "modelspec_TFLOPs_active": m.get("TFLOPs_active"),
                 "modelspec_MFU_vs_gemm_ceiling": mfu(m),
                 "gemm_ceiling_TFLOPs_same_call": ceiling,
                 "modelspec_loss": m.get("loss"), "baseline_loss": t.get("loss")})
print(json.dumps(rows, indent=1))
