#!/usr/bin/env bash
# One device run for GPU eval parity and activation checkpointing (issues 5 and 6):
#   1. runtime tests: checkpoint policies vs none (bit-identity), trainer vs CPU executor;
#   2. `modelspec eval --device cuda` vs `--device cpu` on every supported HF fixture;
#   3. gpt2-124m B16 T1024 and llama-3.2-1b B8 T2048 training steps under none, auto, full and
#      budget(0.5): saved activation memory vs the planner's activation_bytes, step times;
#   4. torch.compile with activation_memory_budget=0.5 (and without checkpointing) on gpt2 in
#      the same call (the anchors).
# Expects in .gpu/ (built on the dev machine, release): cuda_checkpoint cuda_train cuda_eval
# (test executables from target/release/deps), cuda_train_bench (example), modelspec (binary),
# anchors/*.py. Usage on the device: OUT=<dir> bash bench/run_ckpt_h200.sh
set -u
FINAL=${OUT:-/tmp/out}
W=$(mktemp -d /tmp/msckpt.XXXX)
mkdir -p "$FINAL"
export MODELSPEC_KERNEL_CACHE=/tmp/modelspec-kernels PYTHONUNBUFFERED=1
ANCH=.gpu/anchors
for d in shared/anchors ../shared/anchors /work/shared/anchors; do
    if [ -f "$d/torch_train_bench.py" ]; then ANCH=$d; break; fi
done
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader
t0=$(date +%s)
# 1. runtime tests
timeout 120 .gpu/cuda_checkpoint --test-threads=1 --nocapture > "$W/ckpt_tests.log" 2>&1; echo "cuda_checkpoint exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "^CKPT|panicked|test result" "$W/ckpt_tests.log"
timeout 90 .gpu/cuda_train --test-threads=1 --nocapture > "$W/train_tests.log" 2>&1; echo "cuda_train exit $?"
grep -E "^PARITY|panicked|test result" "$W/train_tests.log"
# 2. eval parity on the fixtures
MODELSPEC_BIN=.gpu/modelspec timeout 200 .gpu/cuda_eval --nocapture > "$W/eval_fixtures.log" 2>&1; echo "cuda_eval exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "^PARITY|^UNSUPPORTED|^GPU eval|panicked|out of tolerance|test result" "$W/eval_fixtures.log"
# 3. checkpoint policies: memory and step time
for m in ${MODELS:-gpt2 llama1b}; do
    for p in none auto full 'budget(0.5)'; do
        timeout 90 .gpu/cuda_train_bench "$m" specs "$p" >> "$W/ms_ckpt.jsonl" 2>> "$W/ms_ckpt.err"; echo "ms $m $p exit $? ($(( $(date +%s) - t0 )) s)"
    done
done
cat "$W/ms_ckpt.jsonl"; tail -4 "$W/ms_ckpt.err"
# 4. torch.compile references in the same call
for mode in ${TORCH_MODES:-compile_budget50 compile}; do
    timeout 150 python3 "$ANCH/torch_train_bench.py" gpt2 "$mode" > "$W/torch_gpt2_$mode.jsonl" 2> "$W/torch_gpt2_$mode.err"; echo "torch gpt2 $mode exit $? ($(( $(date +%s) - t0 )) s)"
    cat "$W/torch_gpt2_$mode.jsonl"; tail -2 "$W/torch_gpt2_$mode.err"
done
tar czf "$FINAL/ckpt_logs.tgz" -C "$W" .
cp "$W/ms_ckpt.jsonl" "$W/eval_fixtures.log" "$W/ckpt_tests.log" "$FINAL/" 2>/dev/null
python3 bench/collect_ckpt.py "$W" > "$FINAL/ckpt_rows.json" && cat "$FINAL/ckpt_rows.json"
