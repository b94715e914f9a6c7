#!/usr/bin/env python3
"""Forward+backward tokens/s of a spec on the CPU: modelspec against PyTorch, same machine, same config.

    python3 bench/cpu_train_bench.py [--spec FILE] [--batch 16] [--seq 64] [--iters 20] [--threads N]

The Rust side is `modelspec train [FILE] --bench`, which prints JSON with its median time of one
forward+backward (loss and every parameter's gradient) and the model's shape. This script rebuilds
the same model in PyTorch from that shape (pre-norm blocks: RMSNorm or LayerNorm, RoPE / learned /
no positions, MHA/GQA, dense MLPs of every kind, tied or untied head), times the same
forward+backward with the same thread count, and prints both and their ratio.

On a machine shared with other work (a 2-core CI box), OpenMP threads that spin while waiting
collapse PyTorch's multi-threaded speed (measured here: 540 to 2,650 tokens/s at 2 threads, against
about 5,000 with passive waiting), so the script sets OMP_WAIT_POLICY=PASSIVE unless it is set.

PyTorch comes from PyPI: when `import torch` fails, the script runs `pip install torch` (a large
download; this is why the benchmark is not part of CI).
"""

import argparse
import json
import os
import subprocess
import sys
import time


def ensure_torch():
    # Read by the OpenMP runtime when torch loads it: set it before the import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch is not installed; installing it from PyPI (pip install torch)...", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "torch"])
    import torch

    return torch


def run_modelspec(args):
    cmd = args.modelspec.split() + ["train"]
    if args.spec:
        cmd.append(args.spec)
    cmd += ["--bench", "--batch", str(args.batch), "--seq", str(args.seq), "--bench-iters", str(args.iters)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    print("running:", " ".join(cmd), file=sys.stderr)
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def build_model(torch, cfg):
    nn = torch.nn
    F = torch.nn.functional
    layer = cfg["layer"]
    att, pos, block, ffn = layer["attention"], layer["position"], layer["block"], layer["ffn"]
    if ffn["kind"] != "mlp":
        raise SystemExit("this benchmark rebuilds dense MLPs only (the spec has a mixture of experts)")
    if block["placement"] != "pre" or block["parallel_residual"]:
        raise SystemExit("this benchmark rebuilds sequential pre-norm blocks only")
    if att["qk_norm"] or att["softcap"] or att["window"]:
        raise SystemExit("this benchmark does not rebuild qk-norm, softcapping or sliding windows")
    d, heads, kv_heads, hd = cfg["d_model"], att["heads"], att["kv_heads"], att["head_dim"]
    vp = cfg["vocab_padded"]

    def make_norm(spec):
        if spec["kind"] == "rms":
            return nn.RMSNorm(d, eps=spec["eps"], elementwise_affine=spec["weight"])
        return nn.LayerNorm(d, eps=spec["eps"], elementwise_affine=spec["weight"], bias=spec["bias"])

    act = {
        "gelu": lambda x: F.gelu(x),
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "relu_squared": lambda x: F.relu(x) ** 2,
        "swiglu": F.silu,
        "geglu": lambda x: F.gelu(x),
        "gelu_tanh_gated": lambda x: F.gelu(x, approximate="tanh"),
    }
    kind = ffn["activation"]
    gated = kind in ("swiglu", "geglu", "geglu_tanh")
    act_fn = act["gelu_tanh_gated" if kind == "geglu_tanh" else kind]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_norm = make_norm(block["norm"])
            self.q = nn.Linear(d, heads * hd, bias=att["qkv_bias"])
            self.k = nn.Linear(d, kv_heads * hd, bias=att["qkv_bias"])
            self.v = nn.Linear(d, kv_heads * hd, bias=att["qkv_bias"])
            self.o = nn.Linear(heads * hd, d, bias=att["out_bias"])
            self.mlp_norm = make_norm(block["norm"])
            if gated:
                self.gate = nn.Linear(d, ffn["hidden"], bias=ffn["bias"])
            self.up = nn.Linear(d, ffn["hidden"], bias=ffn["bias"])
            self.down = nn.Linear(ffn["hidden"], d, bias=ffn["bias"])

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            h = self.attn_norm(x)
            q = self.q(h).view(b, t, heads, hd).transpose(1, 2)
            k = self.k(h).view(b, t, kv_heads, hd).transpose(1, 2)
            v = self.v(h).view(b, t, kv_heads, hd).transpose(1, 2)
            if cos is not None:
                q, k = rope(q, cos, sin), rope(k, cos, sin)
            if kv_heads != heads:
                k = k.repeat_interleave(heads // kv_heads, dim=1)
                v = v.repeat_interleave(heads // kv_heads, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=att["scale"])
            x = x + self.o(a.transpose(1, 2).reshape(b, t, heads * hd))
            h = self.mlp_norm(x)
            m = act_fn(self.gate(h)) * self.up(h) if gated else act_fn(self.up(h))
            return x + self.down(m)

    def rope(x, cos, sin):
        r = cos.shape[-1] * 2
        x_rot, x_pass = x[..., :r], x[..., r:]
        x1, x2 = x_rot[..., : r // 2], x_rot[..., r // 2 :]
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return torch.cat([rotated, x_pass], dim=-1)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vp, d)
            self.pos = nn.Embedding(cfg["context"], d) if pos["kind"] == "learned" else None
            self.blocks = nn.ModuleList([Block() for _ in range(cfg["layers"])])
            self.final_norm = make_norm(cfg["final_norm"]) if cfg["final_norm"] else nn.Identity()
            self.head = None if cfg["tied"] else nn.Linear(d, vp, bias=False)

        def forward(self, tokens):
            b, t = tokens.shape
            x = self.embed(tokens)
            if self.pos is not None:
                x = x + self.pos(torch.arange(t))
            cos = sin = None
            if pos["kind"] == "rope":
                if pos["style"] != "half_split" or pos["scaling"]["type"] != "none":
                    raise SystemExit("this benchmark rebuilds plain half-split RoPE only")
                r = pos["rotary_dims"]
                inv = 1.0 / (pos["theta"] ** (torch.arange(0, r, 2, dtype=torch.float32) / r))
                ang = torch.outer(torch.arange(t, dtype=torch.float32), inv)
                cos, sin = ang.cos(), ang.sin()
            for blk in self.blocks:
                x = blk(x, cos, sin)
            x = self.final_norm(x)
            logits = x @ self.embed.weight.T if self.head is None else self.head(x)
            return F.cross_entropy(logits[:, :-1].reshape(-1, vp), tokens[:, 1:].reshape(-1))

    return Model()


def bench_torch(torch, cfg, batch, seq, iters, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(torch, cfg)
    params = sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, min(cfg["vocab"], 256), (batch, seq))
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        model(tokens).backward()
    times = []
    for _ in range(iters):
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        model(tokens).backward()
        times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    return {"params": params, "median_s": median, "tokens_per_s": batch * seq / median, "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", help="spec file (default: the bundled tiny spec)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--modelspec", default="cargo run --release -q --", help="how to run the modelspec CLI")
    args = ap.parse_args()

    rust = run_modelspec(args)
    torch = ensure_torch()
    py = bench_torch(torch, rust["config"], args.batch, args.seq, args.iters, args.threads)
    if py["params"] != rust["params"]:
        print(f"warning: parameter counts differ: modelspec {rust['params']}, torch {py['params']}", file=sys.stderr)
    ratio = rust["tokens_per_s"] / py["tokens_per_s"]
    print(json.dumps({
        "spec": rust["spec"],
        "batch": args.batch,
        "seq": args.seq,
        "threads": args.threads,
        "params": rust["params"],
        "modelspec_tokens_per_s": round(rust["tokens_per_s"], 1),
        "torch_tokens_per_s": round(py["tokens_per_s"], 1),
        "torch_version": py["torch"],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "ratio_modelspec_over_torch": round(ratio, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
