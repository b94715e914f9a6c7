# A short device call (~200 s, any GPU): the new cuDNN loader's parity, attention through the newest cuDNN found and through the system copy, PyTorch's SDPA backends beside them, then gpt2 with wide GEMM tuning if time is left.
# Usage on the device: OUT=<dir> bash bench/gpu_short.sh   (expects .gpu/bins.tgz from bench/gpu_pack.sh and .gpu/anchors/)
t0=$(date +%s); el() { echo "($(( $(date +%s) - t0 )) s)"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; P=$(python3 -c "import nvidia.cudnn as c; print(list(c.__path__)[0])"); SYS=$(ldconfig -p | grep "libcudnn.so " | head -1 | awk '{print $NF}'); echo "pip $P system $SYS"; ls $P/lib | head -3
B=/tmp/msbin; mkdir -p $B $OUT/c; tar xzf .gpu/bins.tgz -C $B; export MODELSPEC_KERNEL_CACHE=/tmp/modelspec-kernels
timeout 40 $B/cuda_cudnn --test-threads=1 --nocapture --include-ignored > $OUT/c/cuda_cudnn.log 2>&1; echo "cuda_cudnn exit $? $(el)"; grep -E "cuDNN 9|test result" $OUT/c/cuda_cudnn.log | sort | uniq -c
timeout 50 $B/cuda_bench cudnn > $OUT/c/ms_cudnn.jsonl 2>>$OUT/c/err.log; echo "cudnn newest exit $? $(el)"
timeout 70 python3 .gpu/anchors/attn_backends.py > $OUT/c/sdpa_backends.jsonl 2>>$OUT/c/err.log; echo "sdpa exit $? $(el)"
[ -n "$SYS" ] && MODELSPEC_CUDNN_LIB=$SYS timeout 50 $B/cuda_bench cudnn > $OUT/c/ms_cudnn_sys.jsonl 2>>$OUT/c/err.log; echo "cudnn sys exit $? $(el)"
python3 - $OUT/c <<'PY'
import json,sys,os
d=sys.argv[1]
def rows(f):
    out=[]
    for l in open(os.path.join(d,f)):
        try: out.append(json.loads(l))
        except: pass
    return out
for f in ["ms_cudnn.jsonl","ms_cudnn_sys.jsonl"]:
    if not os.path.exists(os.path.join(d,f)): continue
    for r in rows(f):
        if "cudnn_version" in r: print(f, r)
        if r.get("path")=="cudnn" and r.get("layout")=="fused": print(f, r["T"], r["D"], r["KV"], "fwd", r.get("fwd_ms"), "fb", r.get("fwdbwd_ms"))
for r in rows("sdpa_backends.jsonl"):
    if r.get("backend") in ("default","cudnn","flash") and "fwd_ms" in r: print("torch", r["backend"], r["T"], r["D"], r["KV"], "fwd", r["fwd_ms"], "fb", r["fwdbwd_ms"])
PY
left=$(( 200 - ($(date +%s) - t0) )); echo "left $left s"
[ $left -gt 30 ] && MODELSPEC_GEMM_TUNE=wide timeout $left $B/cuda_train_bench gpt2 specs > $OUT/c/wide_gpt2.jsonl 2> $OUT/c/wide_err.log; echo "wide exit $? $(el)"; grep -v timeline $OUT/c/wide_gpt2.jsonl | cut -c1-160 | head -2; grep "gemm tuned" $OUT/c/wide_err.log | sed 's/RowMajorGemm //' | cut -c30-230
