#!/usr/bin/env bash
# Builds the GPU test executables and binaries here (release, no debug info) and packs them into
# .gpu/bins.tgz, and the user crate's binary as .gpu/modelspec-user-crate, for a device call
# (`carry: [".gpu"]`): the device machine has no cargo.
# Usage: bash bench/gpu_pack.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
tests=(cuda_compile cuda_kernels cuda_reduce cuda_epilogue cuda_train cuda_train_state cuda_moe cuda_cudnn cuda_checkpoint cuda_decode cuda_walk cuda_hopper_gemm)
root_tests=(cuda_eval cli_train_cuda generated_cuda generated_model_cuda cli_sample_cuda)
args=()
for t in "${tests[@]}"; do [ -f "runtime/tests/$t.rs" ] && args+=(--test "$t"); done
cargo test --release -p modelspec-runtime --no-run "${args[@]}" --message-format=json 2>/dev/null > .gpu/runtime.json
args=()
for t in "${root_tests[@]}"; do [ -f "tests/$t.rs" ] && args+=(--test "$t"); done
cargo test --release -p modelspec --no-run "${args[@]}" --message-format=json 2>/dev/null > .gpu/root.json
cargo build --release -p modelspec --bin modelspec
cargo build --release -p modelspec-runtime --example cuda_bench --example cuda_train_bench
# The user crate (examples/user_crate, a crate of its own) in the workspace's target directory, so
# it reuses the compiled dependencies; gpu_call.sh 24 runs it on the GPU.
(cd examples/user_crate && CARGO_TARGET_DIR=../../target cargo build --release)
cp target/release/modelspec-user-crate .gpu/ && strip .gpu/modelspec-user-crate
stage=$(mktemp -d)
python3 - "$stage" <<'EOF'
import json, shutil, sys
stage = sys.argv[1]
for f in (".gpu/runtime.json", ".gpu/root.json"):
    for line in open(f):
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
            shutil.copy(m["executable"], f"{stage}/{m['target']['name']}")
EOF
cp target/release/modelspec target/release/examples/cuda_bench target/release/examples/cuda_train_bench "$stage/"
strip "$stage"/* 2>/dev/null || true
tar czf .gpu/bins.tgz -C "$stage" .
rm -rf "$stage" .gpu/runtime.json .gpu/root.json
mkdir -p .gpu/anchors && cp ../shared/anchors/*.py .gpu/anchors/ 2>/dev/null || true
ls -la .gpu/bins.tgz
tar tzf .gpu/bins.tgz
