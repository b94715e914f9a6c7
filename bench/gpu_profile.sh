#!/usr/bin/env bash
# ncu's per-kernel GPU time of modelspec training steps (cuda_train_bench), grouped by kernel
# family with bench/ncu_table.py. Expects .gpu/bins.tgz (bench/gpu_pack.sh). Usage on the device:
#   OUT=<dir> MODEL=gpt2 SKIP=2100 COUNT=1600 bash bench/gpu_profile.sh
# SKIP/COUNT are kernel launches (a gpt2-124m step is ~520): skip the warm-up steps, keep a few.
set -u
FINAL=${OUT:-/tmp/out}; mkdir -p "$FINAL"
B=/tmp/msbin; mkdir -p "$B"; [ -x "$B/cuda_train_bench" ] || tar xzf .gpu/bins.tgz -C "$B"
export MODELSPEC_KERNEL_CACHE=/tmp/modelspec-kernels
CUDNN_DIR=$(python3 -c "import nvidia.cudnn as c; print(list(c.__path__)[0])" 2>/dev/null)
[ -n "$CUDNN_DIR" ] && export CUDNN_PATH="$CUDNN_DIR" LD_LIBRARY_PATH="$CUDNN_DIR/lib:${LD_LIBRARY_PATH:-}"
MODEL=${MODEL:-gpt2}
timeout 400 ncu --clock-control none --metrics gpu__time_duration.sum \
    --launch-skip "${SKIP:-2100}" --launch-count "${COUNT:-1600}" --csv \
    "$B/cuda_train_bench" "$MODEL" specs > "$FINAL/ncu_$MODEL.csv" 2> "$FINAL/ncu_$MODEL.err"
echo "ncu exit $?"
python3 bench/ncu_table.py "$FINAL/ncu_$MODEL.csv" --json "$FINAL/ncu_$MODEL.json" | tee "$FINAL/ncu_$MODEL.md"
tail -3 "$FINAL/ncu_$MODEL.err"
