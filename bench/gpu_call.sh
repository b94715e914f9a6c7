#!/usr/bin/env bash
# The ninth session's first call: the own GEMM's parity and bench on any GPU, then on an H200
# the rows of bench/results/h200.json (attention, gpt2, mixtral-small, llama, budget(0.5));
# elsewhere the step variants. Usage on the device: OUT=<dir> bash bench/gpu_call.sh
set -u
R=$OUT; mkdir -p $R/v $R/s $R/b
# A kernel never run before may hang on a barrier: a short limit, and no bench if it fails.
B=/tmp/msbin; mkdir -p $B; tar xzf .gpu/bins.tgz -C $B
export MODELSPEC_KERNEL_CACHE=/tmp/modelspec-kernels
timeout 90 $B/cuda_hopper_gemm --test-threads=1 --nocapture --include-ignored > $R/v/cuda_hopper_gemm.log 2>&1
hg=$?; echo "cuda_hopper_gemm exit $hg"; grep -E "^test |DIAG|panicked|PARITY" $R/v/cuda_hopper_gemm.log | head -40
OUT=$R/v TESTS="cuda_cudnn cuda_epilogue" bash bench/gpu_verify.sh 2>&1 | tail -8
[ $hg = 0 ] && OUT=$R/s ONLY="bench_hopper" bash bench/gpu_step_variants.sh 2>&1 | tail -25
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    OUT=$R/b ATTN=1 TRAIN="gpt2 mixtral_small llama1b" BUDGET=1 bash bench/gpu_bench.sh 2>&1 | tail -60
else
    mv $R/s/all.tgz $R/s/hopper.tgz
    OUT=$R/s ONLY="ms_gpt2_tl torch_gpt2_compile ms_gpt2_own_gemm ms_gpt2_wide ms_gpt2_wide2" bash bench/gpu_step_variants.sh 2>&1 | tail -40
fi
