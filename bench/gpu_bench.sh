#!/usr/bin/env bash
# One device call of speed measurements, each beside its PyTorch baseline in the same call:
#   ATTN=1: attention fwd and fwd+bwd on attn_bench.py's four shapes: the own mma kernels and
#           cuDNN through modelspec (cuda_bench cudnn), and every SDPA backend (attn_backends.py);
#           ATTN_ROUNDS=n (default 3) alternates the two n times, rows take each side's median;
#           CUDNN_CONFIGS="1 2" also times cuDNN's later engine configs (MODELSPEC_CUDNN_CONFIG);
#   TRAIN="gpt2 llama1b mixtral_small": a training step of modelspec's GPU trainer
#           (cuda_train_bench) and torch_train_bench.py in TORCH_MODES (default: compile; plus
#           eager for mixtral_small);
#   TUNE_OFF=1: each TRAIN model's step again without the timed GEMM algorithm choice;
#   BUDGET=1: gpt2-124m under budget(0.5) beside torch.compile's activation_memory_budget=0.5
#           (its row also compares with torch.compile without checkpointing, from TRAIN=gpt2);
# then bench/collect_session.py joins them into rows (session.json). Expects .gpu/bins.tgz
# (bench/gpu_pack.sh) and .gpu/anchors/. Usage on the device: OUT=<dir> ATTN=1 TRAIN=... BUDGET=1 bash bench/gpu_bench.sh
# The GEMM ceiling (cuda_bench gemm) is measured in every call.
set -u
FINAL=${OUT:-/tmp/out}; mkdir -p "$FINAL"
W=$(mktemp -d /tmp/msbench.XXXX)
B=/tmp/msbin; mkdir -p "$B"; tar xzf .gpu/bins.tgz -C "$B"
export MODELSPEC_KERNEL_CACHE=/tmp/modelspec-kernels PYTHONUNBUFFERED=1
CUDNN_DIR=$(python3 -c "import nvidia.cudnn as c; print(list(c.__path__)[0])" 2>/dev/null)
[ -n "$CUDNN_DIR" ] && export CUDNN_PATH="$CUDNN_DIR" LD_LIBRARY_PATH="$CUDNN_DIR/lib:${LD_LIBRARY_PATH:-}"
ANCH=.gpu/anchors
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv,noheader | tee "$W/gpu.txt"
t0=$(date +%s)
el() { echo "($(( $(date +%s) - t0 )) s)"; }
# The raw files are packed after each measurement, so a call cut short still brings them back
# (bench/collect_session.py can then join them here).
pk() { tar czf "$FINAL/bench_logs.tgz.tmp" -C "$W" . && mv "$FINAL/bench_logs.tgz.tmp" "$FINAL/bench_logs.tgz"; }
# The GEMM ceiling every row's MFU is measured against, in this call.
timeout 120 "$B/cuda_bench" gemm > "$W/ms_gemm.jsonl" 2>> "$W/err.log"; echo "gemm exit $? $(el)"; pk
if [ -n "${ATTN:-}" ]; then
    # ATTN_ROUNDS=n (default 3): ours and PyTorch's backends alternately, n times each (~35 s a
    # round); each side's row is its median over the rounds, so one slow or fast sample of a
    # kernel both sides run (cuDNN's) does not decide the ratio.
    for r in $(seq 2 "${ATTN_ROUNDS:-3}"); do
        timeout 180 "$B/cuda_bench" cudnn > "$W/ms_cudnn_r$r.jsonl" 2>> "$W/err.log"; echo "cuda_bench cudnn round $r exit $? $(el)"
        timeout 180 python3 "$ANCH/attn_backends.py" > "$W/sdpa_backends_r$r.jsonl" 2>> "$W/err.log"; echo "attn_backends round $r exit $? $(el)"; pk
    done
    timeout 180 "$B/cuda_bench" cudnn > "$W/ms_cudnn.jsonl" 2>> "$W/err.log"; echo "cuda_bench cudnn exit $? $(el)"; pk
    # cuDNN's other engine configs, shape by shape (rows with "config": k; not in session.json).
    for k in ${CUDNN_CONFIGS:-}; do
        MODELSPEC_CUDNN_CONFIG=$k timeout 180 "$B/cuda_bench" cudnn > "$W/ms_cudnn_config$k.jsonl" 2>> "$W/err.log"; echo "cuda_bench cudnn config $k exit $? $(el)"; pk
    done
    timeout 180 python3 "$ANCH/attn_backends.py" > "$W/sdpa_backends.jsonl" 2>> "$W/err.log"; echo "attn_backends exit $? $(el)"; pk
fi
for m in ${TRAIN:-}; do
    timeout 150 "$B/cuda_train_bench" "$m" specs > "$W/ms_train_$m.jsonl" 2>> "$W/err.log"; echo "ms $m exit $? $(el)"; pk
    modes=${TORCH_MODES:-compile}
    [ "$m" = mixtral_small ] && modes="eager $modes"
    # TUNE_OFF=1: the step again on cuBLASLt's first-pick GEMM algorithms (MODELSPEC_GEMM_TUNE=off).
    if [ -n "${TUNE_OFF:-}" ]; then
        MODELSPEC_GEMM_TUNE=off timeout 150 "$B/cuda_train_bench" "$m" specs > "$W/tuneoff_train_$m.jsonl" 2>> "$W/err.log"; echo "ms $m tune off exit $? $(el)"; pk
    fi
    for mode in $modes; do
        timeout 240 python3 "$ANCH/torch_train_bench.py" "$m" "$mode" > "$W/torch_train_${m}_$mode.jsonl" 2>> "$W/err.log"; echo "torch $m $mode exit $? $(el)"; pk
    done
done
if [ -n "${BUDGET:-}" ]; then
    timeout 150 "$B/cuda_train_bench" gpt2 specs "budget(0.5)" > "$W/ms_train_gpt2_budget50.jsonl" 2>> "$W/err.log"; echo "ms gpt2 budget(0.5) exit $? $(el)"; pk
    timeout 240 python3 "$ANCH/torch_train_bench.py" gpt2 compile_budget50 > "$W/torch_train_gpt2_compile_budget50.jsonl" 2>> "$W/err.log"; echo "torch gpt2 compile_budget50 exit $? $(el)"; pk
fi
python3 bench/collect_session.py "$W" > "$FINAL/session.json"
tar czf "$FINAL/bench_logs.tgz" -C "$W" .
tail -20 "$W/err.log"
# One row a line (callers filter indented lines out of the console).
python3 -c 'import json, sys; [print(json.dumps(r)) for r in json.load(open(sys.argv[1]))]' "$FINAL/session.json"
