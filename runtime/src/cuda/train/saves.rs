//! What a layer keeps from forward to backward: the planner's saved units, one buffer each.

use modelspec_dsl::ModelSpec;
use modelspec_dsl::plan::Plan;
use modelspec_dsl::program::{Act, Kernel, LayerProgram, N_ACTS};

/// Which of a layer's buffers the trainer keeps from forward to backward; the others are
/// recomputed at the start of that layer's backward into one set of buffers shared by all layers.
/// The layer input (the residual stream entering the layer) is always kept.
///
/// Each field is one unit of the layer's program (`LayerProgram::unit_of`), which the planner
/// saves or recomputes whole, so the trainer keeps exactly the bytes the plan lists (the planner
/// counts a norm's f32 statistics with the tensor they are kept beside):
/// - `attn_norm` -> `attn_norm` (+ its statistics);
/// - `q_raw`, `k_raw` -> the qk-norms' inputs, under qk-norm (+ their statistics): `q`, `k` as
///   projected, or `q_rope`, `k_rope` under a qk-norm after RoPE (Llama 4);
/// - `qkv` -> the unit of `v`: one `[q; k; v]` buffer as attention reads it (qk-norm and RoPE
///   applied in place): `q_rope`, `k_rope`, `v` (or `q_normed`, `k_normed`, `v`; or `q`, `k`, `v`);
/// - `attn` -> `attn` (+ its f32 log-sum-exp);
/// - `attn_out` -> `attn_out` under post-norm (the post-norm's input and statistics);
/// - `resid_mid` -> `resid_mid`;
/// - `mlp_norm` -> `mlp_norm` (+ its statistics);
/// - `mlp_in` -> `gate` and `up` (one buffer) of a dense MLP;
/// - `act` -> `act` of a dense MLP;
/// - `mlp_out` -> `mlp_out` under post-norm (the post-norm's input and statistics);
/// - `moe` -> the unit of `router_logits`: a mixture-of-experts block's routed state
///   (`MoeLayer::saved_bytes`);
/// - `q_latent`, `q_latent_norm` (+ its statistics), `kv_latent`, `kv_latent_norm` (+ its
///   statistics) -> latent attention's tensors of those names. Its `q`, `kv` and `k_rope` are
///   never kept (only a layout move or RoPE reads them: recomputing the `[q; k; v]` unit re-runs
///   them); `q_rope`, `k` and `v` are the `[q; k; v]` unit.
///
/// Tensors that no backward op reads are never kept (`attn_out` and `mlp_out` under pre-norm:
/// they are folded into the next residual add; the post-norms' outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSaves {
    /// The attention norm's output and statistics.
    pub attn_norm: bool,
    /// The q-norm's input (the query projection, rotated under a qk-norm after RoPE) and its
    /// statistics.
    pub q_raw: bool,
    /// The k-norm's input (the key projection, rotated under a qk-norm after RoPE) and its
    /// statistics.
    pub k_raw: bool,
    /// The `[q; k; v]` buffer attention reads.
    pub qkv: bool,
    /// The attention output and its log-sum-exp.
    pub attn: bool,
    /// The output projection under post-norm, and the post-norm's statistics.
    pub attn_out: bool,
    /// The residual stream after the attention branch.
    pub resid_mid: bool,
    /// The MLP norm's output and statistics.
    pub mlp_norm: bool,
    /// The dense MLP's input projection(s), before the activation.
    pub mlp_in: bool,
    /// The dense MLP activation's output.
    pub act: bool,
    /// The FFN output under post-norm, and the post-norm's statistics.
    pub mlp_out: bool,
    /// A mixture-of-experts block's saved state (routing, expert activations).
    pub moe: bool,
    /// Latent attention's query latent.
    pub q_latent: bool,
    /// Latent attention's normalised query latent and its statistics.
    pub q_latent_norm: bool,
    /// Latent attention's joint latent (with the rotary key before RoPE).
    pub kv_latent: bool,
    /// Latent attention's normalised joint latent and its statistics.
    pub kv_latent_norm: bool,
}

/// One kept buffer of [`LayerSaves`]: its field, and the unit of a layer's program it holds
/// (named by the unit's first member, as `LayerProgram::unit_of` names units), or `None` in a
/// layer without that buffer.
struct Buffer {
    field: fn(&mut LayerSaves) -> &mut bool,
    unit: fn(&LayerProgram) -> Option<Act>,
}

/// `a`, in a layer that computes `present`.
fn with(lp: &LayerProgram, present: Act, a: Act) -> Option<Act> {
    lp.node(present).map(|_| a)
}

/// The input of the norm computing `norm` (a qk-norm's: `q` or `k`, or the rotated `q_rope` or
/// `k_rope` under a qk-norm after RoPE), in a layer that has that norm.
fn norm_input(lp: &LayerProgram, norm: Act) -> Option<Act> {
    lp.node(norm).and_then(|n| n.inputs.first().copied())
}

/// `a`, in a layer with a dense MLP.
fn dense(lp: &LayerProgram, a: Act) -> Option<Act> {
    lp.node(Act::RouterLogits).is_none().then(|| lp.unit_of(a))
}

/// The one table between the planner's units and the trainer's buffers, which
/// [`LayerSaves::from_keep`] reads one way and [`LayerSaves::keep`] the other: the dense groups
/// in layout order ([`LayerSaves::groups`]), then `moe`. The special cases live here once: a
/// qk-norm's input (the query or key before the norm: before or after RoPE, as the layer orders
/// them) is its own buffer only under qk-norm (else it is in `[q; k; v]`), an
/// output projection only under post-norm (under pre-norm no backward reads it), `[gate; up]`
/// and the activation only in a dense MLP (a mixture-of-experts block keeps them in its unit).
const BUFFERS: [Buffer; GROUPS + 1] = [
    Buffer {
        field: |s| &mut s.attn_norm,
        unit: |_| Some(Act::AttnNorm),
    },
    Buffer {
        field: |s| &mut s.q_raw,
        unit: |lp| norm_input(lp, Act::QNormed),
    },
    Buffer {
        field: |s| &mut s.k_raw,
        unit: |lp| norm_input(lp, Act::KNormed),
    },
    Buffer {
        field: |s| &mut s.qkv,
        unit: |lp| Some(lp.q_final),
    },
    Buffer {
        field: |s| &mut s.attn,
        unit: |_| Some(Act::Attn),
    },
    Buffer {
        field: |s| &mut s.attn_out,
        unit: |lp| with(lp, Act::AttnPostNorm, Act::AttnOut),
    },
    Buffer {
        field: |s| &mut s.resid_mid,
        unit: |_| Some(Act::ResidMid),
    },
    Buffer {
        field: |s| &mut s.mlp_norm,
        unit: |_| Some(Act::MlpNorm),
    },
    Buffer {
        field: |s| &mut s.mlp_in,
        unit: |lp| dense(lp, Act::Up),
    },
    Buffer {
        field: |s| &mut s.act,
        unit: |lp| dense(lp, Act::ActOut),
    },
    Buffer {
        field: |s| &mut s.mlp_out,
        unit: |lp| with(lp, Act::MlpPostNorm, Act::MlpOut),
    },
    Buffer {
        field: |s| &mut s.q_latent,
        unit: |_| Some(Act::QLatent),
    },
    Buffer {
        field: |s| &mut s.q_latent_norm,
        unit: |_| Some(Act::QLatentNorm),
    },
    Buffer {
        field: |s| &mut s.kv_latent,
        unit: |_| Some(Act::KvLatent),
    },
    Buffer {
        field: |s| &mut s.kv_latent_norm,
        unit: |_| Some(Act::KvLatentNorm),
    },
    Buffer {
        field: |s| &mut s.moe,
        unit: |_| Some(Act::RouterLogits),
    },
];

impl LayerSaves {
    /// Keep everything (policy `none`).
    pub const ALL: LayerSaves = LayerSaves::filled(true);
    /// Keep only the layer input (policy `full`).
    pub const INPUT_ONLY: LayerSaves = LayerSaves::filled(false);

    /// Every buffer kept (`true`) or none.
    const fn filled(v: bool) -> LayerSaves {
        LayerSaves {
            attn_norm: v,
            q_raw: v,
            k_raw: v,
            qkv: v,
            attn: v,
            attn_out: v,
            resid_mid: v,
            mlp_norm: v,
            mlp_in: v,
            act: v,
            mlp_out: v,
            moe: v,
            q_latent: v,
            q_latent_norm: v,
            kv_latent: v,
            kv_latent_norm: v,
        }
    }

    /// Whether `b` is kept.
    fn get(&self, b: &Buffer) -> bool {
        let mut s = *self;
        *(b.field)(&mut s)
    }

    /// The buffers of layer program `lp` that keep the activations `keep` marks (indexed by
    /// `Act as usize`, as `LayerProgram::save_set` returns them): a buffer is kept when the
    /// tensor naming its unit is, in a layer that has that buffer.
    pub fn from_keep(lp: &LayerProgram, keep: &[bool; N_ACTS]) -> LayerSaves {
        let mut s = LayerSaves::INPUT_ONLY;
        for b in &BUFFERS {
            *(b.field)(&mut s) =
                (b.unit)(lp).is_some_and(|u| lp.node(u).is_some() && keep[u as usize]);
        }
        s
    }

    /// The buffers that keep the tensors named in `saved` (a plan's saved list) of `layer`.
    pub fn from_saved(layer: &modelspec_dsl::ir::Layer, saved: &[&str]) -> LayerSaves {
        LayerSaves::from_names(&LayerProgram::structure(layer), saved)
    }

    /// As [`LayerSaves::from_saved`], for the layer whose program (or structure) is `lp`.
    pub fn from_names(lp: &LayerProgram, saved: &[&str]) -> LayerSaves {
        let mut keep = [false; N_ACTS];
        for node in &lp.nodes {
            keep[node.output as usize] = saved.contains(&node.output.owner().name());
        }
        LayerSaves::from_keep(lp, &keep)
    }

    /// One entry per layer of a resolved plan of `spec`.
    pub fn from_plan(spec: &ModelSpec, plan: &Plan) -> Vec<LayerSaves> {
        LayerSaves::from_programs(&structures(spec), plan)
    }

    /// As [`LayerSaves::from_plan`], for the layers whose programs (or structures) are `lps`.
    pub fn from_programs(lps: &[LayerProgram], plan: &Plan) -> Vec<LayerSaves> {
        lps.iter()
            .zip(&plan.layers)
            .map(|(lp, l)| LayerSaves::from_names(lp, &l.saved))
            .collect()
    }

    /// Which activations of layer program `lp` these buffers keep (indexed by `Act as usize`; the
    /// layer input always): each unit's members when its buffer is kept.
    pub fn keep(&self, lp: &LayerProgram) -> [bool; N_ACTS] {
        let mut unit_kept = [false; N_ACTS];
        for b in &BUFFERS {
            if let Some(u) = (b.unit)(lp) {
                unit_kept[u as usize] = self.get(b);
            }
        }
        let mut keep = [false; N_ACTS];
        keep[Act::Input as usize] = true;
        for node in &lp.nodes {
            keep[node.output as usize] = unit_kept[lp.unit_of(node.output) as usize];
        }
        keep
    }

    /// The dense groups in layout order (see `layout`).
    pub(super) fn groups(&self) -> [bool; GROUPS] {
        std::array::from_fn(|j| self.get(&BUFFERS[j]))
    }
}

/// Each layer's structure (`LayerProgram::structure`: its nodes and wiring, what the saves and
/// the sizes read, without the costs).
pub(super) fn structures(spec: &ModelSpec) -> Vec<LayerProgram> {
    spec.layers.iter().map(LayerProgram::structure).collect()
}

/// Number of dense groups (every field of [`LayerSaves`] but `moe`).
pub(super) const GROUPS: usize = 15;

/// One layer as the trainer runs it: its program, grouped into kernels (the named fusions), what
/// it keeps and which kernels it re-runs at the start of its backward.
pub(super) struct LayerRun {
    pub lp: LayerProgram,
    pub kernels: Vec<Kernel>,
    /// Kept activations, by `Act as usize`.
    pub keep: [bool; N_ACTS],
    /// Per kernel: re-run before the layer's backward.
    pub redo: Vec<bool>,
}

impl LayerRun {
    /// The layer lowered as `lp` (`LayerProgram::lower`: its costs say what a backward reads),
    /// keeping `saves`.
    pub fn new(lp: LayerProgram, saves: &LayerSaves) -> LayerRun {
        let kernels = lp.kernels();
        let keep = saves.keep(&lp);
        let mut needed = [false; N_ACTS];
        for t in lp.costs.iter().filter(|t| t.needed) {
            if let Some(a) = lp.act_named(t.name) {
                needed[a as usize] = true;
            }
        }
        let redo = lp.recompute(&kernels, &keep, &needed);
        LayerRun {
            lp,
            kernels,
            keep,
            redo,
        }
    }

    /// Whether the layer re-runs anything before its backward.
    pub fn recomputes(&self) -> bool {
        self.redo.iter().any(|&r| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelspec_dsl::ir::LayerCheckpoint;

    /// Every bundled spec (`specs/*.mspec`), in name order.
    fn bundled() -> Vec<ModelSpec> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../specs");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("specs folder")
            .map(|f| f.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "mspec"))
            .collect();
        files.sort();
        assert!(files.len() > 10, "{} specs", files.len());
        files
            .iter()
            .map(|p| modelspec_dsl::load::load_file(p).expect("spec loads").0)
            .collect()
    }

    /// The buffers `s` keeps, as bits in [`BUFFERS`] order.
    fn bits(s: &LayerSaves) -> u32 {
        (BUFFERS.iter().enumerate()).fold(0, |m, (j, b)| m | (u32::from(s.get(b)) << j))
    }

    /// The saves whose bits are `m` ([`BUFFERS`] order).
    fn from_bits(m: u32) -> LayerSaves {
        let mut s = LayerSaves::INPUT_ONLY;
        for (j, b) in BUFFERS.iter().enumerate() {
            *(b.field)(&mut s) = m >> j & 1 == 1;
        }
        s
    }

    #[test]
    fn the_table_covers_every_field_once() {
        // Each field is one bit: setting one sets exactly that one (a field listed twice, or one
        // missing, breaks this), and `groups` is the table less `moe`, in order.
        for j in 0..BUFFERS.len() {
            let s = from_bits(1 << j);
            assert_eq!(bits(&s), 1 << j);
            assert_eq!(
                s.groups().iter().filter(|&&g| g).count(),
                usize::from(j < GROUPS)
            );
        }
        assert_eq!(bits(&LayerSaves::ALL), (1 << BUFFERS.len()) - 1);
        assert_eq!(bits(&LayerSaves::INPUT_ONLY), 0);
        assert!(
            LayerSaves {
                moe: false,
                ..LayerSaves::ALL
            }
            .groups()
            .iter()
            .all(|&g| g)
        );
    }

    #[test]
    fn units_and_buffers_map_both_ways_on_every_bundled_layer() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for spec in bundled() {
            for layer in &spec.layers {
                let lp = LayerProgram::lower(&spec, layer);
                let what = format!("{} layer {}", spec.name, layer.index);
                // The buffers this layer has hold distinct units of its program.
                let units: Vec<Act> = (BUFFERS.iter())
                    .filter_map(|b| (b.unit)(&lp).filter(|&u| lp.node(u).is_some()))
                    .collect();
                for (j, u) in units.iter().enumerate() {
                    assert_eq!(lp.unit_of(*u), *u, "{what}: {u:?} names no unit");
                    assert!(!units[..j].contains(u), "{what}: two buffers hold {u:?}");
                }
                let has = bits(&LayerSaves::from_keep(&lp, &[true; N_ACTS]));
                assert_eq!(has.count_ones() as usize, units.len(), "{what}");
                // Buffers -> activations -> buffers gives back the buffers the layer has.
                let mut masks = vec![0, u32::MAX];
                for _ in 0..48 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    masks.push(seed as u32);
                }
                for m in masks {
                    let s = from_bits(m);
                    let back = LayerSaves::from_keep(&lp, &s.keep(&lp));
                    assert_eq!(bits(&back), m & has, "{what}: {s:?}");
                }
                // A plan's kept activations -> buffers -> activations: whole units, the plan's.
                for policy in [
                    LayerCheckpoint::None,
                    LayerCheckpoint::Full,
                    LayerCheckpoint::Auto,
                ] {
                    let keep = lp.save_set(&policy).expect("policy applies");
                    let again = LayerSaves::from_keep(&lp, &keep).keep(&lp);
                    for node in &lp.nodes {
                        let a = node.output;
                        let lost = keep[a as usize] && !again[a as usize];
                        assert!(!lost, "{what} {policy:?}: {a:?} lost");
                    }
                }
            }
        }
    }
}
