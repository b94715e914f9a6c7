#!/usr/bin/env bash
# One device run on the H200: modelspec's CUDA kernels (parity tests, attention and GEMM
# benchmarks, training steps when built) side by side with the PyTorch references, then
# bench/results/h200.json. Expects binaries in .gpu/ (built on the dev machine):
#   .gpu/cuda_kernels .gpu/cuda_compile .gpu/cuda_train  (cargo test --release --no-run, from target/release/deps)
#   .gpu/cuda_bench .gpu/cuda_train_bench (cargo build --release --example ...)
#   .gpu/cuda_checkpoint .gpu/cuda_eval .gpu/modelspec (checkpoint and eval parity; see run_ckpt_h200.sh)
#   .gpu/anchors/*.py                     (copies of shared/anchors, in case shared/ is elsewhere)
# Usage on the device: OUT=<dir> bash bench/run_h200.sh
set -u
FINAL=${OUT:-/tmp/out}
OUT=$(mktemp -d /tmp/msbench.XXXX)   # intermediates; only a few files go back to $FINAL
mkdir -p "$FINAL"
export MODELSPEC_KERNEL_CACHE=/tmp/modelspec-kernels
ANCH=.gpu/anchors
for d in shared/anchors ../shared/anchors /work/shared/anchors; do
    if [ -f "$d/attn_bench.py" ]; then ANCH=$d; break; fi
done
echo "anchors: $ANCH"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv
export PYTHONUNBUFFERED=1

# 1. parity tests (each prints PARITY lines with the relative error)
if [ -x .gpu/cuda_kernels ]; then
    .gpu/cuda_compile --test-threads=1 --nocapture 2>&1 | tail -5
    .gpu/cuda_kernels --test-threads=1 --nocapture > "$OUT/parity.log" 2>&1
    echo "kernel parity tests exit $?"
    [ -x .gpu/cuda_train ] && { .gpu/cuda_train --test-threads=1 --nocapture >> "$OUT/parity.log" 2>&1; echo "train parity tests exit $?"; }
    grep -E "panicked|test result|FAILED" "$OUT/parity.log" | head -40
fi

# 2. attention and GEMM: modelspec, then SDPA in the same run
.gpu/cuda_bench gemm 2>&1 | tee "$OUT/ms_gemm.jsonl"
.gpu/cuda_bench attention > "$OUT/ms_attn.jsonl" 2> "$OUT/ms_attn.err"; echo "cuda_bench exit $?"; cat "$OUT/ms_attn.err" "$OUT/ms_attn.jsonl"
python3 "$ANCH/attn_bench.py" > "$OUT/sdpa.jsonl" 2> "$OUT/sdpa.err"; echo "attn_bench exit $?"; cat "$OUT/sdpa.jsonl"

# 3. training steps (modelspec's GPU executor when built; torch.compile reference)
for m in ${MODELS:-gpt2 llama1b}; do
    if [ -x .gpu/cuda_train_bench ]; then
        timeout 240 .gpu/cuda_train_bench "$m" specs > "$OUT/ms_train_$m.jsonl" 2> "$OUT/ms_train_$m.err"; echo "ms train $m exit $?"; tail -3 "$OUT/ms_train_$m.err"; cat "$OUT/ms_train_$m.jsonl"
        [ -n "${SKIP_TORCH_TRAIN:-}" ] || timeout 300 python3 "$ANCH/torch_train_bench.py" "$m" compile > "$OUT/torch_train_$m.jsonl" 2> "$OUT/torch_train_$m.err"; echo "torch $m exit $?"; cat "$OUT/torch_train_$m.jsonl"
    fi
done

# 3b. eval parity on the fixtures, checkpoint policies (memory vs the planner, step times) and
# torch.compile with activation_memory_budget=0.5: bench/run_ckpt_h200.sh, rows merged below.
if [ -x .gpu/cuda_checkpoint ] && [ -z "${SKIP_CKPT:-}" ]; then
    OUT="$OUT/ckpt" bash bench/run_ckpt_h200.sh
fi

# 4. results table
python3 bench/collect.py "$OUT" > "$OUT/h200.json" && mkdir -p bench/results && cp "$OUT/h200.json" bench/results/h200.json
[ -f "$OUT/ckpt/ckpt_logs.tgz" ] && mkdir -p "$OUT/ckptw" && tar xzf "$OUT/ckpt/ckpt_logs.tgz" -C "$OUT/ckptw" && python3 bench/collect_ckpt.py "$OUT/ckptw" --merge "$OUT/h200.json" > /dev/null
cp "$OUT/h200.json" "$FINAL/h200.json"
cp "$OUT/parity.log" "$FINAL/parity.log" 2>/dev/null
tar czf "$FINAL/logs.tgz" -C "$OUT" .
echo "== parity summary"; grep -c PARITY "$OUT/parity.log"; grep -E "PARITY" "$OUT/parity.log" | awk "{print \$NF, \$0}" | sort -g | tail -25 | cut -d" " -f2-
cat "$OUT/h200.json"
