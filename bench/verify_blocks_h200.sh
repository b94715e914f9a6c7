#!/usr/bin/env bash
# A short device run for the GPU trainer's block structures (parallel residual with one or two
# norms, post- and sandwich norms, qk-norm per head and over the whole projection, per-layer RoPE
# tables): the trainer against the CPU executor on small specs (f32, bf16, and f32 under `full`
# checkpointing), `modelspec eval --device cuda` against `--device cpu` on every HF fixture, the
# checkpoint tests, and one gpt2-124m step-time row to see that the dense path did not slow down.
# Expects in .gpu/ (release builds): cuda_train cuda_checkpoint cuda_eval (test executables),
# cuda_train_bench (example), modelspec. Usage on the device: OUT=<dir> bash bench/verify_blocks_h200.sh
set -u
FINAL=${OUT:-/tmp/out}; mkdir -p "$FINAL"
export MODELSPEC_KERNEL_CACHE=/tmp/modelspec-kernels
t0=$(date +%s)
timeout 90 .gpu/cuda_train --test-threads=1 --nocapture > "$FINAL/train_tests.log" 2>&1; echo "cuda_train exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "^PARITY|panicked|above|test result" "$FINAL/train_tests.log"
MODELSPEC_BIN=.gpu/modelspec timeout 100 .gpu/cuda_eval --nocapture > "$FINAL/eval_fixtures.log" 2>&1; echo "cuda_eval exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "^PARITY|^UNSUPPORTED|^FAILED|^GPU eval|panicked|test result" "$FINAL/eval_fixtures.log"
timeout 50 .gpu/cuda_checkpoint --test-threads=1 --nocapture > "$FINAL/ckpt_tests.log" 2>&1; echo "cuda_checkpoint exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "^CKPT|panicked|test result" "$FINAL/ckpt_tests.log"
timeout 40 .gpu/cuda_train_bench gpt2 specs none > "$FINAL/gpt2_none.jsonl" 2> "$FINAL/gpt2_none.err"; echo "bench exit $? ($(( $(date +%s) - t0 )) s)"
cat "$FINAL/gpt2_none.jsonl"; tail -2 "$FINAL/gpt2_none.err"
