//! The named fusions: a layer's program grouped into the kernels an executor launches.
//!
//! Fusion is a rewrite of the program, not a second description of the block: each [`Kernel`]
//! covers adjacent nodes of [`LayerProgram::nodes`] (its `outputs`, in forward order) and reads
//! the activations listed in `inputs`. The CUDA trainer walks these kernels forward (and again,
//! for what a layer did not keep, at the start of its backward) and in reverse for the backward;
//! which activations exist, what feeds what and what is kept all come from the program.
//!
//! | fusion | nodes | one launch sequence |
//! |---|---|---|
//! | [`Fusion::Norm`] | a norm | `y = norm(x)`; a layer's first norm also takes the residual add of the layer below (`x = stream + branch`) |
//! | [`Fusion::ResidualNorm`] | `resid_mid` (+ the `mlp_norm` reading it) | `s = x + branch; y = norm(s)` |
//! | [`Fusion::QkvRope`] | `q`, `k`, `v` (+ qk-norms, RoPE) | one GEMM into `[q; k; v]`, qk-norm and RoPE in place |
//! | [`Fusion::MlaQ`] | `q_latent`, `q_latent_norm`, `q` (or `q` alone) | latent attention's queries: the query latent's GEMM and norm, the up-projection into `[q; k; v]`'s query columns |
//! | [`Fusion::MlaKv`] | `kv_latent`, `kv_latent_norm`, `kv` | the joint latent's GEMM (latent and rotary key), its norm, the up-projection `kv` |
//! | [`Fusion::MlaSplit`] | `q_rope`, `k_rope`, `k`, `v` (or `k`, `v`) | the per-head keys and values from `kv` and the shared rotary key, RoPE on the rope columns of every query and key head |
//! | [`Fusion::Attention`] | `attn` | flash attention (softcap, window, ALiBi, GQA) |
//! | [`Fusion::Linear`] | `attn_out` or a dense `mlp_out` | one GEMM (+ bias) |
//! | [`Fusion::GateUp`] | `gate` and `up` | one GEMM into `[gate; up]` |
//! | [`Fusion::LinearAct`] | `up` and `act` (an ungated MLP) | one GEMM whose epilogue applies the activation and keeps `up`, where the executor has one (cuBLASLt's GELU-tanh), else a GEMM and one activation pass |
//! | [`Fusion::Activation`] | `act` | activation and gate in one pass |
//! | [`Fusion::Moe`] | `router_logits` .. `mlp_out` | a mixture-of-experts block |
//!
//! A layer's output, `stream + mlp_branch` (plus `attn_branch` in a parallel block, where the
//! stream is the layer input), is not a node: it is the next layer's input, and executors fuse
//! the add into whatever reads it first (the next layer's first norm, or the final norm).

use super::{Act, LayerProgram, OpKind};

/// A named fusion (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fusion {
    /// One norm.
    Norm,
    /// A residual add and the norm that reads the sum (or the add alone).
    ResidualNorm,
    /// The q/k/v projections as one GEMM, the qk-norms and RoPE.
    QkvRope,
    /// Latent attention's queries: the query latent (GEMM and norm, when the layer has one) and
    /// the up-projection `q`.
    MlaQ,
    /// Latent attention's joint latent: its GEMM, its norm and the up-projection `kv`.
    MlaKv,
    /// Latent attention's per-head keys and values from `kv` and the shared rotary key, and RoPE
    /// on the queries' and keys' rope columns.
    MlaSplit,
    /// Attention.
    Attention,
    /// One projection.
    Linear,
    /// The dense MLP's input projections as one GEMM.
    GateUp,
    /// An ungated MLP's input projection and its activation (`up`, then `act`): one GEMM with
    /// the activation in its epilogue where the executor has one.
    LinearAct,
    /// The MLP activation (with its gate).
    Activation,
    /// A mixture-of-experts block.
    Moe,
}

/// One kernel (or fixed launch sequence) of a layer: a [`Fusion`] over adjacent program nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// Which fusion.
    pub fusion: Fusion,
    /// The activations it computes (program nodes, in forward order).
    pub outputs: Vec<Act>,
    /// The activations it reads that other kernels (or the layer input) produce.
    pub inputs: Vec<Act>,
}

impl Kernel {
    /// The activation whose kept unit also keeps this kernel's norm statistics, if it runs a
    /// norm: the norm's output for `attn_norm`/`mlp_norm`, its input for a post-norm (whose output
    /// no backward reads) and for the qk-norms (`q`, `k`; the cost model counts them there).
    pub fn stats_with(&self, lp: &LayerProgram) -> Vec<Act> {
        match self.fusion {
            Fusion::Norm => match self.outputs[0] {
                Act::AttnPostNorm | Act::MlpPostNorm => self.inputs.clone(),
                out => vec![out],
            },
            Fusion::ResidualNorm => self
                .outputs
                .iter()
                .copied()
                .filter(|&a| a == Act::MlpNorm)
                .collect(),
            Fusion::QkvRope => [Act::QNormed, Act::KNormed]
                .iter()
                .filter_map(|&a| lp.node(a).map(|n| n.inputs[0]))
                .collect(),
            Fusion::MlaQ => self
                .outputs
                .iter()
                .copied()
                .filter(|&a| a == Act::QLatentNorm)
                .collect(),
            Fusion::MlaKv => vec![Act::KvLatentNorm],
            _ => Vec::new(),
        }
    }
}

impl Kernel {
    /// What re-running this kernel reads, given what the layer kept: its inputs, except that a
    /// residual add whose sum was kept re-runs only the norm that reads the sum.
    pub fn recompute_inputs(&self, keep: &[bool]) -> Vec<Act> {
        match (self.fusion, self.outputs.first()) {
            (Fusion::ResidualNorm, Some(&sum)) if keep[sum as usize] => vec![sum],
            _ => self.inputs.clone(),
        }
    }
}

impl LayerProgram {
    /// The layer's kernels in forward order: every node in exactly one kernel.
    pub fn kernels(&self) -> Vec<Kernel> {
        let mut out: Vec<Kernel> = Vec::new();
        let nodes = &self.nodes;
        let mla = self.node(Act::KvLatent).is_some();
        let mut i = 0;
        while i < nodes.len() {
            let node = &nodes[i];
            // How many nodes from i this kernel takes, and which fusion it is.
            let (fusion, take) = match (node.op, node.output) {
                // Latent attention: the query side, the joint latent, the per-head layout.
                (OpKind::Matmul, Act::QLatent) => (Fusion::MlaQ, 3),
                (OpKind::Matmul, Act::Q) if mla => (Fusion::MlaQ, 1),
                (OpKind::Matmul, Act::KvLatent) => (Fusion::MlaKv, 3),
                (OpKind::Rope | OpKind::Split, _) if mla => {
                    let n = nodes[i..]
                        .iter()
                        .take_while(|n| {
                            matches!(n.output, Act::QRope | Act::KRope | Act::K | Act::V)
                        })
                        .count();
                    (Fusion::MlaSplit, n)
                }
                (OpKind::Matmul, Act::Q) => {
                    let n = nodes[i..]
                        .iter()
                        .take_while(|n| {
                            matches!(
                                n.output,
                                Act::Q
                                    | Act::K
                                    | Act::V
                                    | Act::QNormed
                                    | Act::KNormed
                                    | Act::QRope
                                    | Act::KRope
                            )
                        })
                        .count();
                    (Fusion::QkvRope, n)
                }
                (OpKind::Residual, _) => {
                    let norm_reads_sum = nodes.get(i + 1).is_some_and(|n| {
                        n.op == OpKind::Norm
                            && n.inputs == [node.output]
                            && n.output == Act::MlpNorm
                    });
                    (Fusion::ResidualNorm, 1 + usize::from(norm_reads_sum))
                }
                (OpKind::Norm, _) => (Fusion::Norm, 1),
                (OpKind::Attention, _) => (Fusion::Attention, 1),
                (OpKind::Matmul, Act::RouterLogits) => {
                    let n = nodes[i..]
                        .iter()
                        .position(|n| n.output == Act::MlpOut)
                        .map_or(nodes.len() - i, |p| p + 1);
                    (Fusion::Moe, n)
                }
                (OpKind::Matmul, Act::Gate) => {
                    let up = nodes.get(i + 1).is_some_and(|n| n.output == Act::Up);
                    (Fusion::GateUp, 1 + usize::from(up))
                }
                (OpKind::Matmul, Act::Up) => {
                    let act = nodes
                        .get(i + 1)
                        .is_some_and(|n| n.op == OpKind::Activation && n.inputs == [Act::Up]);
                    if act {
                        (Fusion::LinearAct, 2)
                    } else {
                        (Fusion::GateUp, 1)
                    }
                }
                (OpKind::Activation, _) => (Fusion::Activation, 1),
                _ => (Fusion::Linear, 1),
            };
            let group = &nodes[i..i + take];
            let outputs: Vec<Act> = group.iter().map(|n| n.output).collect();
            let mut inputs: Vec<Act> = Vec::new();
            for n in group {
                for &a in &n.inputs {
                    if !outputs.contains(&a) && !inputs.contains(&a) {
                        inputs.push(a);
                    }
                }
            }
            out.push(Kernel {
                fusion,
                outputs,
                inputs,
            });
            i += take;
        }
        out
    }

    /// Which kernels a layer re-runs at the start of its backward, given what it kept (`keep`,
    /// indexed by `Act as usize`) and what a backward reads (`needed`): a kernel runs again when
    /// one of its outputs, or the norm statistics it keeps beside one, is read and was not kept,
    /// or when a kernel that runs again reads an output of it that was not kept. Re-running writes
    /// the same bits into whatever was kept.
    pub fn recompute(&self, kernels: &[Kernel], keep: &[bool], needed: &[bool]) -> Vec<bool> {
        let mut want = needed.to_vec();
        let mut redo = vec![false; kernels.len()];
        for (j, k) in kernels.iter().enumerate().rev() {
            let missing = |a: &Act| want[*a as usize] && !keep[*a as usize];
            let stats_lost = k.stats_with(self).iter().any(|a| !keep[*a as usize]);
            redo[j] = k.outputs.iter().any(missing) || stats_lost;
            if redo[j] {
                for a in k.recompute_inputs(keep) {
                    want[a as usize] = true;
                }
            }
        }
        redo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Format, load_str};

    fn kernels(src: &str) -> Vec<Vec<(Fusion, Vec<&'static str>)>> {
        let spec = load_str(src, "t.mspec", Format::Mspec).expect("valid");
        spec.layers
            .iter()
            .map(|l| {
                LayerProgram::structure(l)
                    .kernels()
                    .into_iter()
                    .map(|k| (k.fusion, k.outputs.iter().map(|a| a.name()).collect()))
                    .collect()
            })
            .collect()
    }

    /// The one layer of `src` lowered, its kernels, and which activations a backward reads.
    fn one_layer(src: &str) -> (LayerProgram, Vec<Kernel>, Vec<bool>) {
        let spec = load_str(src, "t.mspec", Format::Mspec).expect("valid");
        let lp = LayerProgram::lower(&spec, &spec.layers[0]);
        let ks = lp.kernels();
        let mut needed = vec![false; super::super::N_ACTS];
        for t in lp.costs.iter().filter(|t| t.needed) {
            needed[lp.act_named(t.name).unwrap() as usize] = true;
        }
        (lp, ks, needed)
    }

    /// The fusions of the kernels `redo` marks.
    fn marked(ks: &[Kernel], redo: &[bool]) -> Vec<Fusion> {
        ks.iter()
            .zip(redo)
            .filter(|(_, r)| **r)
            .map(|(k, _)| k.fusion)
            .collect()
    }

    #[test]
    fn every_node_is_in_one_kernel_in_order() {
        for file in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../specs")).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_none_or(|e| e != "mspec") {
                continue;
            }
            let (spec, _) = crate::load::load_file(&path).expect("spec loads");
            for layer in &spec.layers {
                let lp = LayerProgram::structure(layer);
                let flat: Vec<Act> = lp.kernels().into_iter().flat_map(|k| k.outputs).collect();
                let want: Vec<Act> = lp.nodes.iter().map(|n| n.output).collect();
                assert_eq!(flat, want, "{} layer {}", path.display(), layer.index);
            }
        }
    }

    #[test]
    fn llama_and_gemma_blocks_fuse_as_named() {
        use Fusion::*;
        let llama = kernels(
            "model t { vocab 64 d_model 32 layers 1 context 16 norm rms(eps = 1e-5)
               attention { heads 4 kv_heads 2 } position rope(theta = 10000) mlp swiglu(hidden = 48) }",
        );
        assert_eq!(
            llama[0],
            vec![
                (Norm, vec!["attn_norm"]),
                (QkvRope, vec!["q", "k", "v", "q_rope", "k_rope"]),
                (Attention, vec!["attn"]),
                (Linear, vec!["attn_out"]),
                (ResidualNorm, vec!["resid_mid", "mlp_norm"]),
                (GateUp, vec!["gate", "up"]),
                (Activation, vec!["act"]),
                (Linear, vec!["mlp_out"]),
            ]
        );
        let sandwich = kernels(
            "model t { vocab 64 d_model 32 layers 1 context 16 norm rms(eps = 1e-5) placement sandwich
               attention { heads 4 qk_norm rms(eps = 1e-6) } position rope(theta = 10000)
               mlp geglu_tanh(hidden = 48) }",
        );
        assert_eq!(
            sandwich[0],
            vec![
                (Norm, vec!["attn_norm"]),
                (
                    QkvRope,
                    vec!["q", "k", "v", "q_normed", "k_normed", "q_rope", "k_rope"]
                ),
                (Attention, vec!["attn"]),
                (Linear, vec!["attn_out"]),
                (Norm, vec!["attn_post_norm"]),
                (ResidualNorm, vec!["resid_mid", "mlp_norm"]),
                (GateUp, vec!["gate", "up"]),
                (Activation, vec!["act"]),
                (Linear, vec!["mlp_out"]),
                (Norm, vec!["mlp_post_norm"]),
            ]
        );
    }

    #[test]
    fn an_ungated_mlp_fuses_its_projection_and_activation() {
        use Fusion::*;
        let gpt2 = kernels(
            "model t { vocab 64 d_model 32 layers 1 context 16 norm layer(eps = 1e-5)
               attention { heads 4 bias } position learned mlp gelu_tanh(hidden = 128, bias = true) }",
        );
        assert_eq!(
            gpt2[0],
            vec![
                (Norm, vec!["attn_norm"]),
                (QkvRope, vec!["q", "k", "v"]),
                (Attention, vec!["attn"]),
                (Linear, vec!["attn_out"]),
                (ResidualNorm, vec!["resid_mid", "mlp_norm"]),
                (LinearAct, vec!["up", "act"]),
                (Linear, vec!["mlp_out"]),
            ]
        );
    }

    #[test]
    fn latent_attention_fuses_into_its_three_kernels() {
        use Fusion::*;
        let ks = kernels(
            "model t { vocab 64 d_model 32 layers 2 context 16 norm rms(eps = 1e-5)
               attention { heads 4 mla(q_rank = 12, kv_rank = 8, nope_dim = 6, rope_dim = 4, v_dim = 5) }
               position rope(theta = 10000) mlp swiglu(hidden = 48)
               layers[1] { attention { mla(kv_rank = 8, nope_dim = 6, rope_dim = 4, v_dim = 5) } } }",
        );
        let tail = [
            (Attention, vec!["attn"]),
            (Linear, vec!["attn_out"]),
            (ResidualNorm, vec!["resid_mid", "mlp_norm"]),
            (GateUp, vec!["gate", "up"]),
            (Activation, vec!["act"]),
            (Linear, vec!["mlp_out"]),
        ];
        let kv = (MlaKv, vec!["kv_latent", "kv_latent_norm", "kv"]);
        let split = (MlaSplit, vec!["q_rope", "k_rope", "k", "v"]);
        let mut want = vec![
            (Norm, vec!["attn_norm"]),
            (MlaQ, vec!["q_latent", "q_latent_norm", "q"]),
            kv.clone(),
            split.clone(),
        ];
        want.extend(tail.iter().cloned());
        assert_eq!(ks[0], want);
        let mut want = vec![(Norm, vec!["attn_norm"]), (MlaQ, vec!["q"]), kv, split];
        want.extend(tail.iter().cloned());
        assert_eq!(ks[1], want);
    }

    #[test]
    fn latent_attention_recomputes_only_what_it_lost() {
        let (lp, ks, needed) = one_layer(
            "model t { vocab 64 d_model 32 layers 1 context 16 norm rms(eps = 1e-5)
               attention { heads 4 mla(q_rank = 12, kv_rank = 8, nope_dim = 6, rope_dim = 4, v_dim = 5) }
               position rope(theta = 10000) mlp swiglu(hidden = 48) }",
        );
        // q, kv and k_rope only feed the per-head layout: no backward reads them.
        for a in [Act::Q, Act::Kv, Act::KRope] {
            assert!(!needed[a as usize], "{}", a.name());
        }
        let redo = |keep: &[bool]| marked(&ks, &lp.recompute(&ks, keep, &needed));
        // Everything kept but the joint latent's norm: only its kernel runs again.
        let mut keep = lp.save_set(&crate::ir::LayerCheckpoint::None).unwrap();
        keep[Act::KvLatentNorm as usize] = false;
        assert_eq!(redo(&keep), vec![Fusion::MlaKv]);
        // Losing the [q; k; v] unit re-runs the layout and both projections that feed it.
        let mut keep = lp.save_set(&crate::ir::LayerCheckpoint::None).unwrap();
        for a in [Act::QRope, Act::K, Act::V] {
            keep[a as usize] = false;
        }
        assert_eq!(
            redo(&keep),
            vec![Fusion::MlaQ, Fusion::MlaKv, Fusion::MlaSplit]
        );
    }

    #[test]
    fn recompute_follows_what_was_kept() {
        let (lp, ks, needed) = one_layer(
            "model t { vocab 64 d_model 32 layers 1 context 16 norm rms(eps = 1e-5) placement sandwich
               attention { heads 4 qk_norm rms(eps = 1e-6) } position rope(theta = 10000)
               mlp swiglu(hidden = 48) }",
        );
        let names = |redo: &[bool]| marked(&ks, redo);
        // Everything kept: nothing runs again.
        let all = lp.save_set(&crate::ir::LayerCheckpoint::None).unwrap();
        assert!(names(&lp.recompute(&ks, &all, &needed)).is_empty());
        // Only the input kept: every kernel whose output a backward reads runs again, and the
        // post-norms for their statistics; the MLP's last projection and its post-norm too (the
        // post-norm's input is read).
        let none = lp.save_set(&crate::ir::LayerCheckpoint::Full).unwrap();
        assert_eq!(lp.recompute(&ks, &none, &needed), vec![true; ks.len()]);
        // Keeping the attention output alone still re-runs the attention norm and q/k/v (read by
        // the projections' weight gradients), not attention.
        let mut keep = none;
        keep[Act::Attn as usize] = true;
        let redo = names(&lp.recompute(&ks, &keep, &needed));
        assert!(!redo.contains(&Fusion::Attention));
        assert!(redo.contains(&Fusion::QkvRope));
    }
}
