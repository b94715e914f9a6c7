#!/usr/bin/env bash
# Registers, spills and shared memory of every kernel of the library instantiated for a spec, for
# sm_90, without a GPU: NVRTC compiles it (runtime/examples/kernel_ptx.rs), ptxas assembles it.
# ptxas comes from the `nvidia-cuda-nvcc` wheel when no CUDA toolkit is installed:
#   pip download --no-deps nvidia-cuda-nvcc -d /tmp/nvcc && unzip -q /tmp/nvcc/*.whl -d /tmp/nvcc/x
# Usage: bash bench/ptxas_report.sh specs/gpt2-124m.mspec [kernel-name-regex]
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:?usage: ptxas_report.sh SPEC [REGEX]}
pattern=${2:-.}
PTXAS=${PTXAS:-$(command -v ptxas || ls /tmp/nvcc/x/nvidia/cu*/bin/ptxas 2>/dev/null | head -1)}
[ -x "$PTXAS" ] || { echo "no ptxas: set PTXAS or unpack the nvidia-cuda-nvcc wheel (see the header)" >&2; exit 1; }
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
    nvrtc=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))" 2>/dev/null || true)
    [ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$nvrtc"
fi
ptx=$(mktemp /tmp/kernel_ptx.XXXX.ptx)
cargo run -q --release -p modelspec-runtime --example kernel_ptx -- "$spec" "$ptx" > /dev/null
# One line a kernel: name, registers, spill stores/loads, shared memory.
"$PTXAS" -arch=sm_90 -v "$ptx" -o /dev/null 2>&1 | awk -v pat="$pattern" '
    /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); name = substr($0, RSTART + 1, RLENGTH - 2); spill = "" }
    /spill stores/ { spill = $5 "/" $9 }
    /Used [0-9]+ registers/ {
        match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
        smem = "0"; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
        if (name ~ pat) printf "%-44s %4s regs  spill %-9s smem %s\n", name, regs, spill, smem
    }'
rm -f "$ptx"
