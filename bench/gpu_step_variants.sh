#!/usr/bin/env bash
# One device call for issue 11's step work and the GPU side of the session's changes, most
# important first (whatever it wrote under $OUT comes back even when the call is cut short):
# parity of the kernels and the trainer (cuda_kernels, cuda_epilogue, cuda_train), the gpt2-124m
# step with its in-step timeline beside torch.compile's, the micro-benches (cuda_bench norm | xent | bgrad),
# the step on cuBLASLt's first-pick GEMM algorithms (MODELSPEC_GEMM_TUNE=off) and again tuned,
# the step with the bias-gradient epilogue on and the one-pass norm backward off, llama-3.2-1b
# beside torch.compile, the decoder and generated models (cuda_decode, generated_*), the user
# crate (.gpu/modelspec-user-crate, when packed), cuda_eval, cuda_train_state (graph),
# cuda_checkpoint, `modelspec bench` on the unpadded spec, gpt2 under budget(0.5) beside
# torch.compile's budget 0.5, and cuda_train with the one-pass norm backward off.
# Expects .gpu/bins.tgz (bench/gpu_pack.sh) and .gpu/anchors/. Usage on the device:
#   OUT=<dir> bash bench/gpu_step_variants.sh
# After a call cut short, FROM=<item> (a name of summary.txt, e.g. FROM=ms_gpt2_tl) starts the
# next call at that item; ONLY="<item> <item> ..." runs just those (in the script's order).
set -u
# Everything goes to $W and is packed into $OUT/all.tgz after each item: a call returns a limited
# number of files (8), and an archive refreshed as it goes survives a cut-short call.
OUT=${OUT:-/tmp/out}; W=/tmp/variants; mkdir -p "$OUT" $W
B=/tmp/msbin; mkdir -p $B; tar xzf .gpu/bins.tgz -C $B
export MODELSPEC_KERNEL_CACHE=/tmp/modelspec-kernels PYTHONUNBUFFERED=1
CUDNN_DIR=$(python3 -c "import nvidia.cudnn as c; print(list(c.__path__)[0])" 2>/dev/null); [ -n "$CUDNN_DIR" ] && export CUDNN_PATH="$CUDNN_DIR" LD_LIBRARY_PATH="$CUDNN_DIR/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,clocks.sm,memory.used --format=csv,noheader | tee $W/gpu.txt
t0=$(date +%s); el() { echo "($(( $(date +%s) - t0 )) s)"; }
pack() { tar czf $OUT/all.tgz.tmp -C $W . && mv $OUT/all.tgz.tmp $OUT/all.tgz; }
started=${FROM:+0}; started=${started:-1}
go() {
    if [ -n "${ONLY:-}" ]; then case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; fi
    [ "$started" = 1 ] || [ "$1" = "${FROM:-}" ] && started=1; [ "$started" = 1 ]
}
tst() { local t=$1 name=$2; shift 2; go "$name" || return 0; env "$@" timeout 150 $B/$t --test-threads=1 --nocapture --include-ignored > $W/$name.log 2>&1; echo "$name exit $? $(el) $(grep -E '^test result' $W/$name.log | tail -1 | cut -c1-60)" | tee -a $W/summary.txt; pack; }
run() { local name=$1; shift; go "$name" || return 0; echo "== $name $(el)"; "$@" > $W/$name.jsonl 2>> $W/err.log; echo "$name exit $? $(el)" | tee -a $W/summary.txt; grep -v '"timeline"' $W/$name.jsonl | cut -c1-330; pack; }
tst cuda_kernels cuda_kernels X=1
tst cuda_epilogue cuda_epilogue X=1
tst cuda_train cuda_train X=1
run ms_gpt2_tl env TIMELINE=1 timeout 100 $B/cuda_train_bench gpt2 specs
[ -f $W/ms_gpt2_tl.jsonl ] && grep '"timeline"' $W/ms_gpt2_tl.jsonl | tr -d '{}"' | tr '\n' ';'; echo
run torch_gpt2_compile timeout 200 python3 .gpu/anchors/torch_train_bench.py gpt2 compile
# The step on cuBLASLt's first-pick algorithms (the runs above chose by timing at their first
# step, persisted in the kernel cache's gemm-algos.tsv; err.log lists each choice).
run ms_gpt2_tune_off env MODELSPEC_GEMM_TUNE=off timeout 60 $B/cuda_train_bench gpt2 specs
run ms_gpt2_tuned timeout 60 $B/cuda_train_bench gpt2 specs
# Algorithms beyond the heuristic's list too (MODELSPEC_GEMM_TUNE=wide; err.log: "candidate j of n").
run ms_gpt2_wide env MODELSPEC_GEMM_TUNE=wide timeout 150 $B/cuda_train_bench gpt2 specs
run ms_gpt2_wide2 env MODELSPEC_GEMM_TUNE=wide timeout 60 $B/cuda_train_bench gpt2 specs
# The own Hopper GEMM (docs/hopper_gemm.md): its parity, its speed against cuBLASLt, and the step
# with the MLP's GELU-epilogue GEMMs on it (MODELSPEC_OWN_GEMM=on).
tst cuda_hopper_gemm cuda_hopper_gemm X=1
run bench_hopper timeout 90 $B/cuda_bench hopper
run ms_gpt2_own_gemm env MODELSPEC_OWN_GEMM=on timeout 60 $B/cuda_train_bench gpt2 specs
for b in norm xent bgrad; do run bench_$b timeout 60 $B/cuda_bench $b; done
# Where the norm backward (2.2 TB/s of ~3) loses time: ncu's throughput, memory and occupancy
# sections for its first launches in `cuda_bench norm` (text, not JSON).
run ncu_norm_bwd timeout 120 ncu --clock-control none --kernel-name regex:norm_bwd --launch-count 6 --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats $B/cuda_bench norm
run ms_gpt2_bgrad_on env MODELSPEC_BGRAD_EPILOGUE=on timeout 60 $B/cuda_train_bench gpt2 specs
run ms_gpt2_fused_dw_off env MODELSPEC_NORM_FUSED_DW=off timeout 60 $B/cuda_train_bench gpt2 specs
run ms_llama1b timeout 100 $B/cuda_train_bench llama1b specs
run torch_llama1b_compile timeout 200 python3 .gpu/anchors/torch_train_bench.py llama1b compile
run ms_llama1b_tune_off env MODELSPEC_GEMM_TUNE=off timeout 100 $B/cuda_train_bench llama1b specs
tst cuda_decode cuda_decode X=1
tst generated_model_cuda generated_model_cuda X=1
tst generated_cuda generated_cuda X=1
if [ -x .gpu/modelspec-user-crate ] && go user_crate; then
    timeout 120 .gpu/modelspec-user-crate tests/fixtures/llama > $W/user_crate.log 2>&1
    echo "user_crate exit $? $(el)" | tee -a $W/summary.txt; pack
fi
tst cuda_eval cuda_eval MODELSPEC_BIN=$B/modelspec
tst cuda_train_state cuda_train_state X=1
tst cuda_checkpoint cuda_checkpoint X=1
run cli_gpt2 timeout 60 $B/modelspec bench specs/gpt2-124m.mspec --device cuda --batch 16 --seq 1024
run ms_gpt2_budget50 timeout 60 $B/cuda_train_bench gpt2 specs "budget(0.5)"
run torch_gpt2_budget50 timeout 200 python3 .gpu/anchors/torch_train_bench.py gpt2 compile_budget50
tst cuda_train cuda_train_unfused MODELSPEC_NORM_FUSED_DW=off
grep -hE "panicked|FAILED|UNSUPPORTED" $W/*.log | sort | uniq -c | head -20
tail -3 $W/err.log
echo "== summary"; cat $W/summary.txt
