//! Each layer's own configuration for the GPU, read once from its IR row: sizes, attention
//! options, position encoding, which block norms exist, norms and FFN. The one place that reads a
//! layer's IR row for the GPU trainer ([`super::train`]) and decoder ([`super::decode`]); nothing
//! here assumes that layers agree.

use super::error::{CudaError, Result};
use super::gpu::{Gpu, GpuBuf};
use super::ops::{Act, NormKind};
use modelspec_dsl::ModelSpec;
use modelspec_dsl::ir::{Ffn, Layer, Norm, Position, QkNormScope, QueryTemperature, Rope};
use modelspec_dsl::program::{Act as PAct, Fusion, Kernel, LayerProgram};

/// A norm's kind and constants.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NormCfg {
    pub kind: NormKind,
    pub eps: f32,
    pub offset: f32,
}

impl NormCfg {
    pub fn new(n: &Norm) -> NormCfg {
        NormCfg {
            kind: n.kind,
            eps: n.eps as f32,
            offset: n.offset as f32,
        }
    }
}

/// qk-norm of one layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QkCfg {
    /// Per head (rows of head_dim) rather than over the whole projection.
    pub per_head: bool,
    pub norm: NormCfg,
    /// Applied to the rotated queries and keys (Llama 4) instead of before RoPE.
    pub after_rope: bool,
}

/// Latent attention's sizes (DeepSeek-V2/V3): the query latent's rank (`None`: a direct query
/// projection), the joint latent's rank, the per-head widths and the latents' norm.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MlaCfg {
    pub q_rank: Option<usize>,
    pub kv_rank: usize,
    /// Heads and per-head widths: `nope` + `rope` for queries and keys, `v` for values.
    pub dims: crate::ops::mla::MlaDims,
    pub norm: NormCfg,
}

impl MlaCfg {
    /// `heads·(nope + v)`: the width of the joint latent's up-projection `kv`.
    pub fn kv_width(&self) -> usize {
        self.dims.heads * (self.dims.nope + self.dims.v)
    }
}

/// The feed-forward block of one layer.
/// The GEMM of one projection kernel of a layer's program: the parameter it reads
/// (`{prefix}.weight`, and `{prefix}.bias` where the spec has one) and its widths,
/// `y[n, out] = x[n, inp] W[out, inp]^T (+ bias)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Projection {
    pub prefix: &'static str,
    pub out: usize,
    pub inp: usize,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum FfnCfg {
    /// A dense MLP: `hidden` wide, `[gate; up]` (`hw = 2 hidden`) when gated.
    Dense { act: Act, hidden: usize, hw: usize },
    /// A mixture-of-experts block (run by `cuda::moe`).
    Moe,
}

/// Everything the GPU trainer and decoder need to size and run layer `i`, from `spec.layers[i]`
/// and its program alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerCfg {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// `heads * head_dim`.
    pub qd: usize,
    /// `kv_heads * head_dim`.
    pub kvd: usize,
    /// `heads * v_head_dim`: the attention output's width (`qd`, except in latent attention).
    pub od: usize,
    /// `qd + kvd + kv_heads * v_head_dim` (`qd + 2 kvd` but in latent attention): the fused
    /// `[q; k; v]` row.
    pub width: usize,
    /// Latent attention (its q/k/v come from latents, not from `[q; k; v]`'s own GEMM).
    pub mla: Option<MlaCfg>,
    pub scale: f32,
    /// 0 = none.
    pub softcap: f32,
    /// 0 = none.
    pub window: usize,
    /// Chunked attention's chunk (Llama 4); 0 = none.
    pub chunk: usize,
    /// Per-head sink logits (`layers.{i}.attn.sinks`, GPT-OSS).
    pub sinks: bool,
    /// The query temperature of Llama 4's NoPE layers.
    pub temperature: Option<QueryTemperature>,
    pub qk: Option<QkCfg>,
    /// Index into the caller's distinct RoPE tables (`None`: learned, NoPE or ALiBi).
    pub rope: Option<usize>,
    /// ALiBi slopes of this layer's head count (index into the caller's slope buffers).
    pub alibi: Option<usize>,
    /// Which of the block's norms exist, read from the layer's program (they size the arena's
    /// norm buffers; the wiring itself is the program's): the attention norm, the MLP's own norm
    /// (absent without pre-norms and in a parallel block sharing one norm), the post-norms.
    pub attn_norm: bool,
    pub mlp_norm: bool,
    pub post: bool,
    pub norm: NormCfg,
    pub ffn: FfnCfg,
}

impl LayerCfg {
    /// The configuration of layer `l`, whose program (or structure: only its nodes are read) the
    /// caller lowered as `lp`; `rope` and `alibi` index the caller's tables.
    pub fn new(
        l: &Layer,
        lp: &LayerProgram,
        rope: Option<usize>,
        alibi: Option<usize>,
    ) -> LayerCfg {
        let a = &l.attention;
        let (heads, kv_heads, head_dim) =
            (a.heads as usize, a.kv_heads as usize, a.head_dim as usize);
        let v_head_dim = a.v_head_dim() as usize;
        let mla = a.mla.as_ref().map(|m| MlaCfg {
            q_rank: m.q_rank.map(|r| r as usize),
            kv_rank: m.kv_rank as usize,
            dims: crate::ops::mla::MlaDims {
                heads,
                nope: m.nope_dim as usize,
                rope: m.rope_dim as usize,
                v: m.v_dim as usize,
            },
            norm: NormCfg::new(&m.norm),
        });
        let ffn = match &l.ffn {
            Ffn::Mlp(m) => {
                let hidden = m.hidden as usize;
                let gated = m.activation.is_gated();
                FfnCfg::Dense {
                    act: Act::from(m.activation),
                    hidden,
                    hw: if gated { 2 * hidden } else { hidden },
                }
            }
            Ffn::Moe(_) => FfnCfg::Moe,
        };
        LayerCfg {
            heads,
            kv_heads,
            head_dim,
            qd: heads * head_dim,
            kvd: kv_heads * head_dim,
            od: heads * v_head_dim,
            width: (heads + kv_heads) * head_dim + kv_heads * v_head_dim,
            mla,
            scale: a.scale as f32,
            softcap: a.softcap.unwrap_or(0.0) as f32,
            window: a.window.unwrap_or(0) as usize,
            chunk: a.chunk.unwrap_or(0) as usize,
            sinks: a.sinks,
            temperature: a.temperature,
            qk: a.qk_norm.as_ref().map(|q| QkCfg {
                per_head: q.scope == QkNormScope::Head,
                norm: NormCfg::new(&q.norm),
                // The program's order: its q-norm reads the rotated queries (Llama 4).
                after_rope: lp
                    .node(PAct::QNormed)
                    .is_some_and(|n| n.inputs == [PAct::QRope]),
            }),
            rope,
            alibi,
            attn_norm: lp.node(PAct::AttnNorm).is_some(),
            mlp_norm: lp.node(PAct::MlpNorm).is_some(),
            post: lp.node(PAct::AttnPostNorm).is_some() || lp.node(PAct::MlpPostNorm).is_some(),
            norm: NormCfg::new(&l.block.norm),
            ffn,
        }
    }

    /// `(rows, width)` of the q and k norms over `n` token rows: per head, rows of head_dim.
    pub fn qk_rows(&self, n: usize) -> ((usize, usize), (usize, usize)) {
        match self.qk {
            Some(QkCfg { per_head: true, .. }) => (
                (n * self.heads, self.head_dim),
                (n * self.kv_heads, self.head_dim),
            ),
            _ => ((n, self.qd), (n, self.kvd)),
        }
    }

    /// The widest row of this layer's latent attention buffers (the latents, `kv`), 0 without.
    pub fn mla_widest(&self) -> usize {
        self.mla.map_or(0, |m| {
            (m.kv_rank + m.dims.rope)
                .max(m.q_rank.unwrap_or(0))
                .max(m.kv_width())
        })
    }

    /// The GEMM of a projection kernel of layer `index` over rows of `d` (d_model): a
    /// [`Fusion::Linear`] into `attn_out` (`attn.o`) or `mlp_out` (`mlp.down`), or the dense MLP's
    /// input projection of a [`Fusion::GateUp`] / [`Fusion::LinearAct`] (`[gate; up]`, named by
    /// `mlp.gate`, or `mlp.up` alone, `hw` wide). The one place the GPU executors (training,
    /// recomputation, backward, decoding) learn which weight a projection kernel multiplies by.
    pub fn projection(&self, index: usize, kn: &Kernel, d: usize) -> Result<Projection> {
        let fail = |why: String| CudaError::BadLaunch {
            kernel: format!("layer {index}: {:?}", kn.fusion),
            why,
        };
        let (hidden, hw) = self.mlp_widths();
        Ok(match (kn.fusion, kn.outputs[0]) {
            (Fusion::Linear, PAct::AttnOut) => Projection {
                prefix: "attn.o",
                out: d,
                inp: self.od,
            },
            (Fusion::Linear, PAct::MlpOut) if hidden > 0 => Projection {
                prefix: "mlp.down",
                out: d,
                inp: hidden,
            },
            (Fusion::GateUp | Fusion::LinearAct, first @ (PAct::Gate | PAct::Up)) if hw > 0 => {
                Projection {
                    prefix: if first == PAct::Gate {
                        "mlp.gate"
                    } else {
                        "mlp.up"
                    },
                    out: hw,
                    inp: d,
                }
            }
            (_, first) => {
                return Err(fail(format!(
                    "no projection writes `{}` in this layer (a dense MLP's or attention's only)",
                    first.name()
                )));
            }
        })
    }

    /// The dense MLP's activation and widths `(act, hidden, hw)`, or an error naming layer
    /// `index` and `what` needed one (a mixture-of-experts layer has none).
    pub fn dense(&self, index: usize, what: &str) -> Result<(Act, usize, usize)> {
        match self.ffn {
            FfnCfg::Dense { act, hidden, hw } => Ok((act, hidden, hw)),
            FfnCfg::Moe => Err(CudaError::BadLaunch {
                kernel: format!("layer {index}: {what}"),
                why: "the layer has no dense MLP (mixture-of-experts)".into(),
            }),
        }
    }

    /// Whether the layer has a gated dense MLP (`[gate; up]`).
    pub fn gated(&self) -> bool {
        matches!(self.ffn, FfnCfg::Dense { act, .. } if act.is_gated())
    }

    /// The dense MLP's `(hidden, hw)` (0 for a MoE layer).
    pub fn mlp_widths(&self) -> (usize, usize) {
        match self.ffn {
            FfnCfg::Dense { hidden, hw, .. } => (hidden, hw),
            FfnCfg::Moe => (0, 0),
        }
    }
}

/// The position tables a spec's layers share: its distinct RoPEs (by value, in order of first
/// use: Gemma-3's local and global layers differ) and one ALiBi slope buffer per distinct head
/// count, with each layer's index into them (the `rope` and `alibi` of [`LayerCfg::new`]).
pub(crate) struct PositionTables {
    /// The distinct RoPEs; the caller builds one cos/sin table for each.
    pub ropes: Vec<Rope>,
    /// Each layer's index into `ropes` (`None`: learned, NoPE or ALiBi).
    pub rope_of: Vec<Option<usize>>,
    /// f32 ALiBi slopes `[heads]` on the device, one buffer per distinct head count.
    pub alibi: Vec<GpuBuf<f32>>,
    /// Each layer's index into `alibi` (`None`: not ALiBi).
    pub alibi_of: Vec<Option<usize>>,
}

impl PositionTables {
    /// The tables of `spec`'s layers, the slopes uploaded to `gpu`.
    pub(crate) fn new(gpu: &Gpu, spec: &ModelSpec) -> Result<PositionTables> {
        let mut t = PositionTables {
            ropes: Vec::new(),
            rope_of: Vec::with_capacity(spec.layers.len()),
            alibi: Vec::new(),
            alibi_of: Vec::with_capacity(spec.layers.len()),
        };
        let mut alibi_heads: Vec<usize> = Vec::new();
        for l in &spec.layers {
            let rope = match &l.position {
                Position::Rope(r) => Some(first_index(&mut t.ropes, r)),
                _ => None,
            };
            let alibi = match l.position {
                Position::Alibi => {
                    let heads = l.attention.heads as usize;
                    let j = first_index(&mut alibi_heads, &heads);
                    if j == t.alibi.len() {
                        let s: Vec<f32> = crate::ops::attention::alibi_slopes(heads)
                            .into_iter()
                            .map(|x| x as f32)
                            .collect();
                        t.alibi.push(gpu.upload(&s)?);
                    }
                    Some(j)
                }
                _ => None,
            };
            t.rope_of.push(rope);
            t.alibi_of.push(alibi);
        }
        Ok(t)
    }
}

/// The index of `x` in `seen`, appended first when absent.
fn first_index<T: PartialEq + Clone>(seen: &mut Vec<T>, x: &T) -> usize {
    match seen.iter().position(|s| s == x) {
        Some(j) => j,
        None => {
            seen.push(x.clone());
            seen.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LayerCfg, first_index};
    use modelspec_dsl::program::{Fusion, LayerProgram};

    /// Every projection kernel of every bundled spec's layers multiplies by a weight of the
    /// parameter table, of shape `[out, inp]`; a MoE layer's MLP kernels (none but `Moe`) and
    /// a layer without a dense MLP asking for one are errors, not guesses.
    #[test]
    fn projections_name_parameters_of_the_table_with_their_shapes() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../specs");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "mspec") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let spec = modelspec_dsl::mspec::parse(&text, &path.display().to_string()).unwrap();
            let params = modelspec_dsl::params::parameters(&spec);
            let d = spec.d_model as usize;
            for (i, layer) in spec.layers.iter().enumerate() {
                let lp = LayerProgram::structure(layer);
                let cfg = LayerCfg::new(layer, &lp, None, None);
                for kn in lp.kernels() {
                    if !matches!(
                        kn.fusion,
                        Fusion::Linear | Fusion::GateUp | Fusion::LinearAct
                    ) {
                        continue;
                    }
                    let pj = cfg.projection(i, &kn, d).unwrap();
                    let shape = |prefix: &str| -> Vec<usize> {
                        let name = format!("layers.{i}.{prefix}.weight");
                        let p = params.iter().find(|p| p.name == name).unwrap_or_else(|| {
                            panic!("{}: {name} is not a parameter", path.display())
                        });
                        p.shape.iter().map(|&x| x as usize).collect()
                    };
                    // `[gate; up]` is one GEMM over the two tables' weights, which the GPU's
                    // parameter layout keeps adjacent.
                    let rows = if pj.prefix == "mlp.gate" {
                        assert_eq!(shape("mlp.gate"), shape("mlp.up"));
                        2 * shape("mlp.gate")[0]
                    } else {
                        shape(pj.prefix)[0]
                    };
                    let what = format!("{} layer {i} {}", path.display(), pj.prefix);
                    assert_eq!([rows, shape(pj.prefix)[1]], [pj.out, pj.inp], "{what}");
                    checked += 1;
                }
                if matches!(cfg.ffn, super::FfnCfg::Moe) {
                    assert!(cfg.dense(i, "a test").is_err());
                    assert_eq!(cfg.mlp_widths(), (0, 0));
                }
            }
        }
        assert!(checked > 100, "only {checked} projections checked");
    }

    #[test]
    fn first_index_numbers_distinct_values_in_order_of_first_use() {
        let mut seen = Vec::new();
        let got: Vec<usize> = [4, 8, 4, 2, 8]
            .iter()
            .map(|x| first_index(&mut seen, x))
            .collect();
        assert_eq!(got, [0, 1, 0, 2, 1]);
        assert_eq!(seen, [4, 8, 2]);
    }
}
