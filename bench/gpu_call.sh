#!/usr/bin/env bash
# The device calls of the ninth session and after. Usage on the device:
#   OUT=<dir> bash bench/gpu_call.sh [1|2|3|4]
# 1: the own GEMM's parity and bench on any GPU, then on an H200 the rows of
#    bench/results/h200.json (attention, gpt2, mixtral-small, llama, budget(0.5)); elsewhere the
#    gpt2 step variants.
# 2: on an H200, issue 10's rows (gpt2, mixtral-small, llama beside PyTorch, ~375 s); elsewhere
#    as 4.
# 3: on any GPU, the ping-pong GEMM's parity and bench, which cuDNN the probe takes and its
#    parity, attention and gpt2 beside PyTorch, gpt2 with the own GEMM `on` and twice `auto`.
# 4: a shorter call (~420 s): 3's kernel checks and benches, gpt2 with and without the overlapped
#    AdamW and the own GEMM, then gpt2 beside torch.compile.
# 5: the norm/AdamW parity and bench, and `overlap`. 6 (~150 s): `overlap` (the parity of the
#    overlapped AdamW and the weight-gradient branch, gpt2 with each, both and neither) and
#    `fold_check` (the residual adds in the GEMMs' epilogues: parity, gpt2 with and without).
# 7 (~660 s on an H100: too long for one call): on an H200 every row of bench/results/h200.json;
#    elsewhere llama beside compile. 8 (~230 s): on an H200 attention, gpt2, gpt2 budget(0.5);
#    elsewhere the ping-pong GEMM's parity and bench (~25 s). 9 (~430 s): on an H200 llama and
#    mixtral-small beside PyTorch; elsewhere `overlap` and `fold_check`. 7, 8 and 9 check the streams' parity
#    first on an H200 and measure on one stream if it fails.
# 10: stage 8 on an H200, nothing elsewhere (a cheap try for an H200). 11: the own GEMM's
#    staged epilogues: parity, bench, gpt2 with and without (~150 s, any Hopper GPU). 12: ncu's
#    full set on the own ping-pong kernels (plain, GELU, DGELU) at gpt2's fc shape (~90 s).
#    13 and 14: stage 9 in halves on an H200 (llama; mixtral-small), for a short budget.
#    23: stage 8 on an H200; elsewhere cuDNN's parity against f64 (~30 s). 24: issue 10's
#    acceptance on any GPU: the user crate on the GPU, then bench/gpu_verify.sh (~400 s).
#    25: cuDNN at the D64 shapes on the dense, fused and head-major layouts, three runs (~90 s).
#    26: the own Hopper attention forward: parity against f64 and cuDNN's, then the attention
#    rows (hopper, mma, cudnn, hopper+cudnn) at the four shapes, three runs (~250 s). 27: its
#    second call: parity, the rows at D64 twice and D128 once, ncu on the D64 kernels (~250 s).
# Stages 4 and 5 also run `overlap`; 2 on an H200 does not (the rows fill its call).
set -u
R=$OUT; mkdir -p $R/v $R/s $R/b
# The device brings back few files: the logs of v/ go back as one archive (a call killed at its
# limit skips this and brings back what it can).
trap 'tar czf $R/v.tgz -C $R v && rm -rf $R/v' EXIT
B=/tmp/msbin; mkdir -p $B; tar xzf .gpu/bins.tgz -C $B
export MODELSPEC_KERNEL_CACHE=/tmp/modelspec-kernels
h200() { nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; }
# The own GEMM's parity under a short limit (a kernel never run before may hang on a barrier);
# sets hg, its exit status: no own-GEMM bench or step runs after a failure.
own_parity() {  # LIMIT_S GREP_PATTERN LINES
    timeout $1 $B/cuda_hopper_gemm --test-threads=1 --nocapture --include-ignored > $R/v/cuda_hopper_gemm.log 2>&1
    hg=$?; echo "cuda_hopper_gemm exit $hg"; grep -E "$2" $R/v/cuda_hopper_gemm.log | head -$3
}
# The own GEMM's bench rows (after a passing parity) and the norm bench.
kernel_benches() {
    [ $hg = 0 ] && timeout 60 $B/cuda_bench hopper 2>&1 | grep -E "3072x768|768x3072|8192" | tee $R/v/bench_hopper.jsonl
    timeout 60 $B/cuda_bench norm 2>&1 | tee $R/v/bench_norm.jsonl | grep -E "768" | cut -c1-200
}
# ncu's full set (speed of light, warp states, per-instruction stall samples) on the third launch
# of kernel KERNEL in `cuda_bench ARGS...`: the report, its details and SASS pages as text in
# $R/v/NAME*, the headline figures printed. Usage: ncu_one NAME KERNEL ARGS...
ncu_one() {
    local name=$1 kernel=$2; shift 2
    timeout 150 ncu --clock-control none --set full --import-source no -k "regex:^${kernel}\$" \
        --launch-skip 2 --launch-count 1 -f -o $R/v/$name $B/cuda_bench "$@" > $R/v/$name.log 2>&1
    echo "ncu $name exit $?"
    ncu -i $R/v/$name.ncu-rep --page details > $R/v/${name}_details.txt 2>&1
    ncu -i $R/v/$name.ncu-rep --page source --print-source sass --csv > $R/v/${name}_sass.csv 2>&1
    grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|L2 Hit Rate|Issue Slots Busy|No Eligible|Registers Per|Executed Ipc A|Block Size|Grid Size|Dynamic Shared Memory Per|Tensor|Achieved Occupancy" $R/v/${name}_details.txt | head -20
}
# A cuda_train_bench line's step time, loss, which GEMMs ran on the own kernels and how AdamW ran.
summ() { grep '"model"' | python3 -c 'import json,sys; [print({k: d.get(k) for k in ("ms", "loss", "gemm", "adamw", "wgrad")}) for d in map(json.loads, sys.stdin)]'; }
# AdamW overlapped with the backward (eleventh session) and the weight gradients on a second
# stream (twelfth; both never run before): their parity against one stream (equal or within 1e-5
# normwise, apart, together, graph and eager, with recomputation), then gpt2 plain, overlapped,
# branched and both, twice each, alternating.
streams_parity() {
    timeout 150 $B/cuda_train_state --include-ignored overlapped --nocapture > $R/v/overlap.log 2>&1; ov=$?
    echo "streams parity exit $ov"; grep -E "PARITY|panicked|test result" $R/v/overlap.log | head -24
}
# Before rows are measured: the twelfth session's default-path changes never run on a GPU (the
# embedding backward in a fixed order, the head's weight gradient on the branch) against f64 and
# the CPU (~30 s; a failure stops the call: no rows from a wrong step), then the streams' parity
# (~20 s); if that fails, the rows run on one stream (and say so in their "adamw" and "wgrad").
# PyTorch's cuDNN wheel on the loader's path (as gpu_bench.sh does).
cudnn_env() {
    local d; d=$(python3 -c "import nvidia.cudnn as c; print(list(c.__path__)[0])" 2>/dev/null)
    [ -n "$d" ] && export CUDNN_PATH="$d" LD_LIBRARY_PATH="$d/lib:${LD_LIBRARY_PATH:-}"
}
new_parity() {
    timeout 60 $B/cuda_kernels --include-ignored embedding > $R/v/embed.log 2>&1; e1=$?
    timeout 90 $B/cuda_train --include-ignored gpu_step_matches_cpu_gpt2_like gpu_step_matches_cpu_llama_like > $R/v/train_parity.log 2>&1; e2=$?
    # Reported, not gating: two identical bf16 runs give the same bits (nothing sums in arrival
    # order any more).
    timeout 60 $B/cuda_train_state --include-ignored bf16_steps_are_bit_reproducible --nocapture > $R/v/repro.log 2>&1; e3=$?
    # cuDNN attention against f64 on every engine config the timing chooses (fourteenth session:
    # configs chosen by timing, persisted in the kernel cache), and the choice read back.
    ( cudnn_env; MODELSPEC_REQUIRE_CUDNN=1 timeout 240 $B/cuda_cudnn --include-ignored --nocapture > $R/v/cudnn.log 2>&1 ); e4=$?
    echo "embedding kernel exit $e1, gpt2/llama-like step vs CPU exit $e2, bit-reproducible bf16 steps exit $e3, cuDNN vs f64 exit $e4"
    grep -E "panicked|test result|REPRODUCIBLE" $R/v/embed.log $R/v/train_parity.log $R/v/repro.log $R/v/cudnn.log | head -12
    grep -E "^timed:|^configs:" $R/v/cudnn.log | cut -c1-220 | head -6
}
# A guard that passed on this machine (same binaries) is not run again by a later call while the
# machine stays warm: its verdict waits in /tmp, keyed by the binaries' checksum.
streams_guard() {
    local mark=/tmp/ms_guard_$(md5sum .gpu/bins.tgz | cut -c1-12)
    if [ -f $mark ]; then echo "guard passed earlier on this machine: $(cat $mark)"; . $mark.env; return; fi
    new_parity
    if [ $e1 != 0 ] || [ $e2 != 0 ] || [ $e4 != 0 ]; then echo "PARITY FAILED: no rows"; exit 1; fi
    streams_parity
    : > $mark.env
    if [ $ov != 0 ]; then
        echo "STREAMS PARITY FAILED: the rows run on one stream"
        export MODELSPEC_ADAMW_OVERLAP=off MODELSPEC_WGRAD_BRANCH=off
        echo "export MODELSPEC_ADAMW_OVERLAP=off MODELSPEC_WGRAD_BRANCH=off" > $mark.env
    fi
    echo "parity exit $e1/$e2, streams parity exit $ov" > $mark
}
overlap() {
    streams_parity
    [ $ov = 0 ] || return
    for i in 1 2; do
        for v in "MODELSPEC_ADAMW_OVERLAP=off MODELSPEC_WGRAD_BRANCH=off" "MODELSPEC_WGRAD_BRANCH=off" "MODELSPEC_ADAMW_OVERLAP=off" ""; do
            echo "gpt2 ${v:-both on (the default)}"
            env $v timeout 60 $B/cuda_train_bench gpt2 specs 2>&1 | tee -a $R/v/streams_gpt2.jsonl | summ
        done
    done
}
# The residual adds folded into the projections' GEMMs (twelfth session, never run before): parity
# against the CPU (sequential, recomputing, and specs that keep some adds apart), then gpt2 with
# and without, twice each, alternating.
fold_check() {
    timeout 120 $B/cuda_train --include-ignored residual_adds_folded --nocapture > $R/v/fold.log 2>&1; fo=$?
    echo "fold parity exit $fo"; grep -E "PARITY|panicked|test result" $R/v/fold.log | head -30
    [ $fo = 0 ] || return
    for i in 1 2; do
        for v in "MODELSPEC_RESIDUAL_EPILOGUE=off" "MODELSPEC_RESIDUAL_EPILOGUE=on"; do
            echo "gpt2 $v"
            env $v timeout 60 $B/cuda_train_bench gpt2 specs 2>&1 | tee -a $R/v/fold_gpt2.jsonl | summ
        done
    done
}
stage=${1:-1}
if [ "$stage" = 2 ] && h200; then
    # AdamW's vectors (never run before) checked first: the rows' losses depend on them.
    timeout 60 $B/cuda_kernels --include-ignored adamw 2>&1 | grep -E "test result|panicked"
    OUT=$R/b TRAIN="gpt2 mixtral_small llama1b" bash bench/gpu_bench.sh 2>&1 | tail -80
    exit
fi
if [ "$stage" = 6 ]; then new_parity; overlap; fold_check; exit; fi
if [ "$stage" = 11 ]; then
    # The own GEMM (thirteenth session: staged epilogues, then the 2-block cluster schedule,
    # never run before; ~120 s on any Hopper GPU): its parity (a hang stops at 60 s), its bench
    # rows beside cuBLASLt, the gpt2-like step against the CPU with the GELU GEMMs on it, then
    # gpt2 without, with the ping-pong and with the cluster form, twice each.
    own_parity 60 "DIAG|panicked|test result" 20
    [ $hg = 0 ] || exit 1
    timeout 60 $B/cuda_bench hopper 2>&1 | grep -E "3072x768|768x3072|8192" | tee $R/v/bench_hopper.jsonl | cut -c1-220
    MODELSPEC_OWN_GEMM=on timeout 90 $B/cuda_train --include-ignored gpu_step_matches_cpu_gpt2_like --nocapture > $R/v/own_train.log 2>&1
    echo "gpt2-like step vs CPU with the own GEMM exit $?"; grep -E "PARITY|panicked|test result" $R/v/own_train.log | head -8
    for i in 1 2; do
        for v in off on cluster; do
            echo "gpt2 MODELSPEC_OWN_GEMM=$v"
            MODELSPEC_OWN_GEMM=$v timeout 60 $B/cuda_train_bench gpt2 specs 2>&1 | tee -a $R/v/own_gpt2.jsonl | summ
        done
    done
    exit
fi
if [ "$stage" = 12 ]; then
    # ncu on the own GEMM's ping-pong kernels at gpt2's fc shape (~90 s, any Hopper GPU): the
    # full set (speed of light, warp states, per-instruction stall samples) for the plain, GELU
    # and DGELU epilogues; details and the SASS source page as text beside each report.
    # KERNS picks the kernels (default: the three ping-pong ones); the parity runs first.
    own_parity 60 "DIAG|panicked|test result" 20
    [ $hg = 0 ] || exit 1
    for kern in ${KERNS:-pp_bf16 pp_gelu_aux_bf16 pp_dgelu_bf16}; do
        ncu_one $kern hopper_gemm_$kern hopper
    done
    exit
fi
if [ "$stage" = 13 ] || [ "$stage" = 14 ]; then
    # Stage 9 in halves, for a budget that cannot hold it whole: 13 llama beside torch.compile,
    # 14 mixtral-small beside HF eager and torch.compile (on an H200 only; the guard as in 8).
    h200 || { nvidia-smi --query-gpu=name --format=csv,noheader; exit; }
    streams_guard
    m=llama1b; [ "$stage" = 14 ] && m=mixtral_small
    OUT=$R/b TRAIN="$m" bash bench/gpu_bench.sh 2>&1 | grep -v "^ " | grep -v "gemm tuned" | tail -30
    exit
fi
# 21 (~230 s, for a budget near its end): on an H200 the guard, then gpt2 beside torch.compile;
#    elsewhere only the wide cuDNN search at T1024 D64 (16's second half).
if [ "$stage" = 21 ]; then
    if h200; then
        streams_guard
        OUT=$R/b TRAIN=gpt2 bash bench/gpu_bench.sh 2>&1 | grep -v "^ " | grep -v "gemm tuned" | tail -12
    else
        nvidia-smi --query-gpu=name --format=csv,noheader
        cudnn_env
        MODELSPEC_CUDNN_TUNE=wide timeout 200 $B/cuda_bench cudnn 1024/64 > $R/v/wide.jsonl 2> $R/v/wide.err; echo "wide exit $?"
        grep -E '"fused"|cudnn_tuned' $R/v/wide.jsonl | cut -c1-300
        grep -E "cuDNN engine" $R/v/wide.err | sort -u | head -8
        grep -E "cuDNN config" $R/v/wide.err | cut -c1-110 | head -120
    fi
    exit
fi
# 17: stage 8 on an H200, else 16 (a probe for an H200 that does 16's work elsewhere).
if [ "$stage" = 17 ]; then h200 && stage=8 || stage=16; fi
if [ "$stage" = 16 ]; then
    # cuDNN's configs one knob away from the heuristics' (fourteenth session; any GPU, ~160 s
    # with WIDE_SHAPES=1024/64 on an H100 at a 32-value knob limit, now 128: longer): the
    # attention rows with the heuristics' configs timed (the default) beside PyTorch's backends,
    # then `cuda_bench cudnn` with MODELSPEC_CUDNN_TUNE=wide (each engine's knob ranges and
    # every config's time in wide.err; its rows use the fastest).
    OUT=$R/b ATTN=1 bash bench/gpu_bench.sh 2>&1 | grep '"work"' | cut -c1-400
    cudnn_env
    MODELSPEC_CUDNN_TUNE=wide timeout 400 $B/cuda_bench cudnn ${WIDE_SHAPES:-1024/64 2048/64} > $R/v/wide.jsonl 2> $R/v/wide.err; echo "wide exit $?"
    grep -E '"fused"|cudnn_tuned' $R/v/wide.jsonl | cut -c1-300
    grep -E "cuDNN engine" $R/v/wide.err | sort -u | head -8
    grep -E "cuDNN config" $R/v/wide.err | grep -E "dims: \[16, 1024" | cut -c1-160 | head -120
    grep -cE "cuDNN config" $R/v/wide.err
    exit
fi
if [ "$stage" = 15 ]; then
    # Fourteenth session: stage 8 on an H200; elsewhere (~150 s) the guard's parity (cuDNN's
    # engine configs chosen by timing, never run before, against f64) and the attention rows
    # beside PyTorch's backends.
    if ! h200; then
        nvidia-smi --query-gpu=name --format=csv,noheader
        new_parity
        OUT=$R/b ATTN=1 bash bench/gpu_bench.sh 2>&1 | grep -v "^ " | tail -12
        tar xzf $R/b/bench_logs.tgz -O ./ms_cudnn.jsonl | grep -E "cudnn_tuned|\"fused\"" | cut -c1-300
        exit
    fi
    stage=8
fi
if [ "$stage" = 24 ]; then
    # Issue 10's acceptance on any GPU (~400 s on an H100): the user crate's `model_file!` model
    # on Device::cuda(0) (load_hf, logits against the CPU, five steps, generate), then every GPU
    # test binary (bench/gpu_verify.sh: eval --device cuda against the CPU on every HF fixture,
    # train/bench of MoE and mixed-layer specs, the generated models, decoding, cuDNN, ...).
    nvidia-smi --query-gpu=name --format=csv,noheader
    ( cudnn_env; timeout 100 .gpu/modelspec-user-crate tests/fixtures/llama > $R/v/user_crate.log 2>&1; echo "user crate exit $?" )
    tail -14 $R/v/user_crate.log | cut -c1-200
    OUT=$R/b timeout ${VERIFY_S:-440} bash bench/gpu_verify.sh 2>&1 | tail -40 | cut -c1-220
    exit
fi
if [ "$stage" = 25 ]; then
    # The head-major question (~90 s, any GPU): cuDNN at T1024 D64 and T2048 D64 GQA on the
    # dense, fused and head-major layouts, three runs, to see whether PyTorch's [B,H,T,D] layout
    # alone is faster.
    nvidia-smi --query-gpu=name --format=csv,noheader
    for i in 1 2 3; do
        ( cudnn_env; timeout 120 $B/cuda_bench cudnn 1024/64 2048/64 > $R/v/hm$i.jsonl 2> $R/v/hm$i.err ); echo "run $i exit $?"
        grep -E '"path"' $R/v/hm$i.jsonl | grep -oE '"path": "[a-z]+", "layout": "[a-z-]+"|"fwd_ms": [0-9.]+|"fwdbwd_ms": [0-9.]+|"warm_fwdbwd_ms": [0-9.]+|"engines": \[[0-9, ]+\]' | paste -sd' ' | sed 's/"path"/\n"path"/g'
    done
    exit
fi
if [ "$stage" = 26 ]; then
    # The own Hopper attention forward (eighteenth session; never run before, so short limits: a
    # kernel that hangs on a barrier is killed). Its parity against f64 beside the mma.sync
    # forward; cuDNN's parity, whose own-kernel comparisons now run the Hopper forward (and
    # cuDNN's backward from its o and lse); then the attention rows at attn_bench.py's four
    # shapes, three runs (~250 s on any Hopper GPU).
    nvidia-smi --query-gpu=name --format=csv,noheader
    timeout 60 $B/cuda_compile --include-ignored hopper_attention > $R/v/compile.log 2>&1; echo "compile exit $?"
    timeout 150 $B/cuda_kernels --include-ignored --nocapture --test-threads=1 attention > $R/v/attn.log 2>&1
    echo "attention kernels vs f64 exit $?"; grep -E "PARITY.*hopper|panicked|test result" $R/v/attn.log | cut -c1-160 | head -40
    ( cudnn_env; MODELSPEC_REQUIRE_CUDNN=1 timeout 150 $B/cuda_cudnn --include-ignored --nocapture > $R/v/cudnn.log 2>&1 ); echo "cuDNN vs f64 exit $?"
    grep -E "panicked|test result|cudnn-vs-own|from-own" $R/v/cudnn.log | cut -c1-160 | head -16
    for i in 1 2 3; do
        ( cudnn_env; timeout 150 $B/cuda_bench cudnn 1024/64 2048/64 4096/128 2048/128 > $R/v/ab$i.jsonl 2> $R/v/ab$i.err ); echo "run $i exit $?"
        grep -E '"path"' $R/v/ab$i.jsonl | grep -oE '"path": "[a-z+]+", "layout": "[a-z-]+"|"T": [0-9]+|"D": [0-9]+|"fwd_ms": [0-9.]+|"fwdbwd_ms": [0-9.]+|"error": .{0,120}' | paste -sd' ' | sed 's/"path"/\n"path"/g'
    done
    exit
fi
if [ "$stage" = 27 ]; then
    # The Hopper attention forward's second call (~250 s, any Hopper GPU): its parity (both
    # schedules and mma.sync), the attention rows at D64 twice and at D128 once, then ncu's full
    # set on the D64 kernels (overlapped and plain) at T1024: details and SASS pages beside each.
    nvidia-smi --query-gpu=name --format=csv,noheader
    timeout 180 $B/cuda_kernels --include-ignored --nocapture --test-threads=1 attention_hopper > $R/v/attn.log 2>&1
    rc=$?; echo "hopper attention vs f64 exit $rc"; grep -E "PARITY.*(\] o |bwd hopper)|panicked|test result" $R/v/attn.log | cut -c1-150 | head -60
    # A failed or hung parity run (the forward's and the backward's) leaves the launches not yet
    # proven out of the bench rows.
    [ $rc = 0 ] || export CUDA_BENCH_SKIP="hopper-pingpong,hopper-m192,hopper+hopper-bwd"
    # RUNS: the bench runs, each a comma-separated list of T/D shapes.
    for shapes in ${RUNS:-1024/64,2048/64 1024/64,2048/64 4096/128,2048/128}; do
        ( cudnn_env; timeout 150 $B/cuda_bench cudnn ${shapes//,/ } > $R/v/ab.jsonl 2> $R/v/ab.err ); echo "bench $shapes exit $?"
        cat $R/v/ab.jsonl >> $R/v/ab_all.jsonl
        grep -E '"path"' $R/v/ab.jsonl | grep -oE '"path": "[a-z+-]+", "layout": "[a-z-]+"|"T": [0-9]+|"D": [0-9]+|"fwd_ms": [0-9.]+|"fwdbwd_ms": [0-9.]+|"error": .{0,120}' | paste -sd' ' | sed 's/"path"/\n"path"/g'
    done
    # KERNS: the Hopper kernels' name parts (plain_d64, ...), or cudnn_fprop / cudnn_bprop for
    # cuDNN's own kernels at the same shape (their launch shape, registers, shared memory and
    # stalls beside ours).
    for kern in ${KERNS:-d64 plain_d64}; do
        case $kern in
            cudnn_fprop|cudnn_bprop) regex="cudnn_generated_fort_native_sdpa_sm90_flash_${kern#cudnn_}.*" ;;
            *) regex=attn_hopper_fwd_$kern ;;
        esac
        ( cudnn_env; ncu_one $kern "$regex" cudnn 1024/64 )
    done
    exit
fi
if [ "$stage" = 23 ]; then
    # Stage 8 on an H200; elsewhere (~30 s) cuDNN attention against f64 (its mask graphs share one
    # builder since the sixteenth session, which ran this parity on an H200 before landing it).
    if ! h200; then
        nvidia-smi --query-gpu=name --format=csv,noheader
        ( cudnn_env; MODELSPEC_REQUIRE_CUDNN=1 timeout 240 $B/cuda_cudnn --include-ignored --nocapture > $R/v/cudnn.log 2>&1 ); echo "cuDNN vs f64 exit $?"
        grep -E "panicked|test result|^timed:|^configs:" $R/v/cudnn.log | cut -c1-220 | head -8
        exit
    fi
    stage=8
fi
if [ "$stage" = 10 ]; then
    # A try for an H200 that costs next to nothing elsewhere: stage 8 on an H200, else the
    # card's name and out.
    h200 || { nvidia-smi --query-gpu=name --format=csv,noheader; exit; }
    stage=8
fi
if [ "$stage" = 8 ]; then
    # Issue 11's H200 rows for a nearly spent budget (~230 s): attention, gpt2 beside
    # torch.compile, gpt2 under budget(0.5). Nothing elsewhere (FORCE=1: on any GPU).
    if h200 || [ -n "${FORCE:-}" ]; then
        streams_guard
        OUT=$R/b ATTN=1 BUDGET=1 TRAIN="gpt2" bash bench/gpu_bench.sh 2>&1 | grep -v "^ " | grep -v "gemm tuned" | tail -30
    else
        # Elsewhere: the ping-pong GEMM's parity and bench rows (~25 s; passed on an H100 in
        # the twelfth session).
        own_parity 60 "DIAG|panicked|test result" 20
        [ $hg = 0 ] && timeout 60 $B/cuda_bench hopper 2>&1 | grep -E "3072x768|768x3072|8192" | tee $R/v/bench_hopper.jsonl | cut -c1-220
    fi
    exit
fi
if [ "$stage" = 9 ]; then
    # The rest of h200.json on an H200 (~430 s): llama beside torch.compile, mixtral-small beside
    # HF eager and torch.compile. Elsewhere `overlap` (the streams' parity and gpt2 variants).
    if h200; then
        streams_guard
        OUT=$R/b TRAIN="llama1b mixtral_small" bash bench/gpu_bench.sh 2>&1 | grep -v "^ " | grep -v "gemm tuned" | tail -30
    else
        new_parity
        overlap
        fold_check
    fi
    exit
fi
if [ "$stage" = 7 ]; then
    # Every row of bench/results/h200.json on an H200 (~500 s): attention, gpt2, llama,
    # mixtral-small beside PyTorch, gpt2 under budget(0.5); elsewhere llama beside torch.compile.
    if h200; then
        streams_guard
        OUT=$R/b ATTN=1 BUDGET=1 TRAIN="gpt2 llama1b mixtral_small" bash bench/gpu_bench.sh 2>&1 | grep -v "^ " | tail -30
    else
        OUT=$R/b TRAIN="llama1b" bash bench/gpu_bench.sh 2>&1 | grep -v "^ " | tail -30
    fi
    exit
fi
if [ "$stage" = 5 ]; then
    # The shortest call (~170 s, any GPU): the norm/AdamW parity, the norm bench, the overlapped
    # AdamW's parity and gpt2 with and without it.
    timeout 90 $B/cuda_kernels --include-ignored norm adamw > $R/v/cuda_kernels.log 2>&1; echo "cuda_kernels norm adamw exit $?"
    grep -E "test result|panicked" $R/v/cuda_kernels.log | head -5
    timeout 60 $B/cuda_bench norm 2>&1 | tee $R/v/bench_norm.jsonl | grep -E "768" | cut -c1-200
    overlap
    exit
fi
# Elsewhere than on an H200, 2 is 4: the rows of issue 10 need an H200, and 4 leaves budget.
[ "$stage" = 2 ] && stage=4
if [ "$stage" = 4 ]; then
    # A shorter call (any GPU): the ping-pong's parity and bench, the norm/AdamW parity and the
    # norm bench, the overlapped AdamW, gpt2 with the own GELU GEMMs, gpt2 beside torch.compile.
    own_parity 60 "DIAG|panicked" 20
    timeout 90 $B/cuda_kernels --include-ignored norm adamw > $R/v/cuda_kernels.log 2>&1; echo "cuda_kernels norm adamw exit $?"
    grep -E "test result|panicked" $R/v/cuda_kernels.log | head -5
    kernel_benches
    overlap
    [ $hg = 0 ] && MODELSPEC_OWN_GEMM=on timeout 60 $B/cuda_train_bench gpt2 specs 2>&1 | summ
    OUT=$R/b TRAIN="gpt2" bash bench/gpu_bench.sh 2>&1 | tail -30
    exit
fi
if [ "$stage" = 2 ] || [ "$stage" = 3 ]; then
    # The ping-pong GEMM (never run before: a short limit), then this session's other kernel
    # changes (the norm backward's dres prefetch, AdamW's vectors) and which cuDNN the probe takes.
    own_parity 60 "DIAG|panicked" 20
    OUT=$R/v TESTS="cuda_cudnn cuda_kernels cuda_train_state" bash bench/gpu_verify.sh 2>&1 | tail -4
    tar xzf $R/v/verify_logs.tgz -O ./cuda_cudnn.log | grep -m2 "cuDNN 9"
    kernel_benches
    # Attention only on an H200 (h200.json's rows); gpt2 beside torch.compile everywhere.
    if h200; then OUT=$R/b ATTN=1 TRAIN="gpt2" bash bench/gpu_bench.sh 2>&1 | tail -60
    else OUT=$R/b TRAIN="gpt2" bash bench/gpu_bench.sh 2>&1 | tail -30; fi
    if [ $hg = 0 ]; then
        MODELSPEC_OWN_GEMM=on timeout 60 $B/cuda_train_bench gpt2 specs 2>&1 | summ
        # auto: the first run times own against cuBLASLt per GEMM, the second reads the choice.
        for i in 1 2; do MODELSPEC_OWN_GEMM=auto timeout 90 $B/cuda_train_bench gpt2 specs 2>$R/v/auto$i.err | summ; grep -F "|own [" $R/v/auto$i.err | cut -c1-220; done
    fi
    exit
fi
own_parity 90 "^test |DIAG|panicked|PARITY" 40
OUT=$R/v TESTS="cuda_cudnn cuda_epilogue" bash bench/gpu_verify.sh 2>&1 | tail -8
[ $hg = 0 ] && OUT=$R/s ONLY="bench_hopper" bash bench/gpu_step_variants.sh 2>&1 | tail -25
if h200; then
    OUT=$R/b ATTN=1 TRAIN="gpt2 mixtral_small llama1b" BUDGET=1 bash bench/gpu_bench.sh 2>&1 | tail -60
else
    mv $R/s/all.tgz $R/s/hopper.tgz
    OUT=$R/s ONLY="ms_gpt2_tl torch_gpt2_compile ms_gpt2_own_gemm ms_gpt2_wide ms_gpt2_wide2" bash bench/gpu_step_variants.sh 2>&1 | tail -40
fi
