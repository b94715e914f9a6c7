#!/usr/bin/env bash
# The second half of gpu_step_variants.sh for a call after one that was cut short: the gpt2
# step beside torch.compile, the trainer's GPU tests and the generated models, with everything
# under $OUT packed into one archive after each item ($OUT/all.tgz: the device returns a limited
# number of files, and an archive refreshed as it goes survives a cut-short call).
# Usage on the device: OUT=<dir> bash bench/gpu_step_rest.sh
set -u
OUT=${OUT:-/tmp/out}; W=/tmp/rest; mkdir -p "$OUT" $W
B=/tmp/msbin; mkdir -p $B; tar xzf .gpu/bins.tgz -C $B
export MODELSPEC_KERNEL_CACHE=/tmp/modelspec-kernels PYTHONUNBUFFERED=1
CUDNN_DIR=$(python3 -c "import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__))" 2>/dev/null); [ -n "$CUDNN_DIR" ] && export CUDNN_PATH="$CUDNN_DIR" LD_LIBRARY_PATH="$CUDNN_DIR/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,clocks.sm,memory.used --format=csv,noheader > $W/gpu.txt
t0=$(date +%s); el() { echo "($(( $(date +%s) - t0 )) s)"; }
pack() { tar czf $OUT/all.tgz.tmp -C $W . && mv $OUT/all.tgz.tmp $OUT/all.tgz; }
tst() { local t=$1 name=$2; shift 2; env "$@" timeout 150 $B/$t --test-threads=1 --nocapture --include-ignored > $W/$name.log 2>&1; echo "$name exit $? $(el) $(grep -E '^test result' $W/$name.log | tail -1 | cut -c1-60)" | tee -a $W/summary.txt; pack; }
run() { local name=$1; shift; "$@" > $W/$name.jsonl 2>> $W/err.log; echo "$name exit $? $(el)" | tee -a $W/summary.txt; grep -v '"timeline"' $W/$name.jsonl | cut -c1-330; pack; }
run ms_gpt2_tl env TIMELINE=1 timeout 100 $B/cuda_train_bench gpt2 specs
run torch_gpt2_compile timeout 200 python3 .gpu/anchors/torch_train_bench.py gpt2 compile
run ms_gpt2_fused_dw_off env MODELSPEC_NORM_FUSED_DW=off timeout 60 $B/cuda_train_bench gpt2 specs
tst cuda_train cuda_train X=1
tst generated_model_cuda generated_model_cuda X=1
tst generated_cuda generated_cuda X=1
if [ -x .gpu/modelspec-user-crate ]; then
    timeout 120 .gpu/modelspec-user-crate tests/fixtures/llama > $W/user_crate.log 2>&1
    echo "user_crate exit $? $(el)" | tee -a $W/summary.txt; pack
fi
tst cuda_train_state cuda_train_state X=1
run ms_gpt2_budget50 timeout 60 $B/cuda_train_bench gpt2 specs "budget(0.5)"
run torch_gpt2_budget50 timeout 200 python3 .gpu/anchors/torch_train_bench.py gpt2 compile_budget50
cat $W/summary.txt
