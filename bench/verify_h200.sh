#!/usr/bin/env bash
# A short device run re-measuring what changed after the full bench: the planner's checkpoint
# memory for auto and budget(0.5) (gpt2-124m, llama-3.2-1b), `train --device cuda` on the tiny
# spec, and the data-parallel test over NCCL with one rank. Binaries in .gpu/ (release builds).
set -u
FINAL=${OUT:-/tmp/out}; mkdir -p "$FINAL"
export MODELSPEC_KERNEL_CACHE=/tmp/modelspec-kernels
t0=$(date +%s)
for m in gpt2 llama1b; do
  for p in auto 'budget(0.5)'; do
    timeout 75 .gpu/cuda_train_bench "$m" specs "$p" >> "$FINAL/ckpt.jsonl" 2>> "$FINAL/ckpt.err"
    echo "ms $m $p exit $? ($(( $(date +%s) - t0 )) s)"
  done
done
cat "$FINAL/ckpt.jsonl"; tail -3 "$FINAL/ckpt.err"
for m in gpt2-124m:16:1024 llama-3.2-1b:8:2048; do
  IFS=: read s b t <<< "$m"
  for p in auto 'budget(0.5)'; do
    echo "plan $s $p $(.gpu/modelspec plan specs/$s.mspec --batch $b --seq $t --checkpoint "$p" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["activation_bytes"])')"
  done
done
B=.gpu/modelspec; A="specs/tiny.mspec --steps 20 --batch 8 --seq 64 --seed 5"
timeout 60 $B train $A --device cuda --sample-tokens 16 --save "$FINAL/bf16" 2>&1 | tail -4
timeout 60 $B train $A --device cuda --dtype f32 --stop-after 3 --sample-tokens 0 --save "$FINAL/f32" 2>&1 | tail -2
timeout 60 $B train $A --device cpu --stop-after 3 --sample-tokens 0 --save "$FINAL/cpu" 2>&1 | tail -2
timeout 60 $B train specs/mixtral-8x7b.mspec --device cuda --steps 1 --save "$FINAL/moe" 2>&1 | tail -2; echo "moe rc=${PIPESTATUS[0]}"
echo "train done ($(( $(date +%s) - t0 )) s)"
N=$(find / -name 'libnccl.so.2' 2>/dev/null | head -1)
mkdir -p /tmp/nccl && ln -sf "$N" /tmp/nccl/libnccl.so
LD_LIBRARY_PATH=/tmp/nccl:${LD_LIBRARY_PATH:-} timeout 120 .gpu/dist/dist-test --test-threads=1 --nocapture 2>&1 | grep -E "^test |loss|rank|result|panicked" | tail -30
echo "all done ($(( $(date +%s) - t0 )) s)"
rm -rf "$FINAL/bf16" "$FINAL/f32" "$FINAL/cpu" "$FINAL/moe"
