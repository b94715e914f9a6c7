#!/usr/bin/env bash
# One device call that checks the GPU side against the CPU: every GPU test binary (kernels, the
# per-layer trainer, MoE, cuDNN attention, checkpointing, KV-cached decoding, generated-model
# kernels), `sample --device cuda` against transformers' greedy ids, and
# `modelspec eval --device cuda` against `--device cpu` on every HF fixture (dense, MoE, ALiBi).
# Expects .gpu/bins.tgz (made by bench/gpu_pack.sh on the dev machine: release test executables
# and the modelspec binary). Usage on the device: OUT=<dir> bash bench/gpu_verify.sh [FILTER...]
# Prints a short table last; full logs go to $OUT.
set -u
FINAL=${OUT:-/tmp/out}; mkdir -p "$FINAL"
LOGS=$(mktemp -d /tmp/msverify.XXXX)   # every log; they go back as one archive (a call returns 8 files)
B=/tmp/msbin; mkdir -p "$B"; tar xzf .gpu/bins.tgz -C "$B"
export MODELSPEC_KERNEL_CACHE=/tmp/modelspec-kernels
CUDNN_DIR=$(python3 -c "import nvidia.cudnn as c; print(list(c.__path__)[0])" 2>/dev/null)
[ -n "$CUDNN_DIR" ] && export CUDNN_PATH="$CUDNN_DIR" LD_LIBRARY_PATH="$CUDNN_DIR/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader
t0=$(date +%s)
summary=()
run() {  # run NAME TIMEOUT CMD...: log to $FINAL/NAME.log, keep the exit code for the table
    local name=$1 limit=$2; shift 2
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    summary+=("$(printf '%-18s exit %3d  %4ds  %s' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$(grep -E '^test result' "$LOGS/$name.log" | tail -1)")")
    # Packed after every test, so a call cut short still brings back what ran.
    printf '%s\n' "${summary[@]}" > "$FINAL/summary.txt"
    tar czf "$FINAL/verify_logs.tgz.tmp" -C "$LOGS" . && mv "$FINAL/verify_logs.tgz.tmp" "$FINAL/verify_logs.tgz"
}
TESTS=${TESTS:-cuda_compile cuda_hopper_gemm cuda_kernels cuda_reduce cuda_epilogue cuda_train cuda_train_state cuda_moe cuda_cudnn cuda_checkpoint cuda_decode cuda_walk generated_cuda generated_model_cuda cuda_eval cli_train_cuda cli_sample_cuda}
for t in $TESTS; do
    [ -x "$B/$t" ] || continue
    case $t in
        cuda_eval|cli_train_cuda|cli_sample_cuda) MODELSPEC_BIN=$B/modelspec run "$t" 300 "$B/$t" --test-threads=1 --nocapture --include-ignored ;;
        *) run "$t" 240 "$B/$t" --test-threads=1 --nocapture --include-ignored ;;
    esac
done
echo "== failures and parity lines"
grep -hE "panicked|FAILED|^PARITY|^UNSUPPORTED|out of tolerance" "$LOGS"/*.log | sort | uniq -c | sort -rn | head -60
echo "== summary"
printf '%s\n' "${summary[@]}"
