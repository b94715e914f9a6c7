//! AdamW with decoupled weight decay and bias correction (Loshchilov & Hutter), as
//! `torch.optim.AdamW` computes it.
//!
//! One step of parameter `p` with gradient `g` at step `t` (counted from 1), learning rate `lr`:
//! ```text
//! p ← p · (1 − lr·λ)                       decoupled decay, only where `decays(name, shape)`
//! m ← β₁ m + (1 − β₁) g
//! v ← β₂ v + (1 − β₂) g²
//! p ← p − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
//! ```
//! The scalars are formed in f64 and applied in f32, element by element in index order, so a step is
//! a pure function of its inputs: resuming from saved moments continues bit for bit.
//!
//! **Which parameters decay.** Weight decay is for the matrices that map activations, so the rule
//! is: a parameter decays when it has two or more dimensions and is not an embedding table. Norm
//! weights and biases (one dimension) and the token and position embeddings (`embed.weight`,
//! `pos_embed.weight`, also when the head is tied to the embedding) never decay; `lm_head.weight`
//! of an untied head, the attention, MLP, expert and router matrices do. See [`decays`].
//!
//! The folder holds the whole op: this file (the configuration, the step scalars and the host
//! loop), `cuda.rs` (the launcher, [`Kernels::adamw`](crate::cuda::Kernels::adamw)) and
//! `adamw.cu` (the fused kernel over a parameter arena, the host's arithmetic in the host's
//! order). The training code reaches it as `crate::train::optim`.

use std::collections::BTreeMap;

use crate::Params;
use crate::train::TrainError;

pub mod cuda;

/// AdamW hyper-parameters, with `torch.optim.AdamW`'s names and defaults: `betas` (0.9, 0.999),
/// `eps` 1e-8, `weight_decay` 0.01. The learning rate is not among them: it is an argument of
/// every step ([`AdamW::step`]), as a schedule sets it step by step.
///
/// This is the one AdamW configuration of the crate: the host optimizer, ZeRO-1 shards and the
/// training options (and so checkpoints) all hold it.
///
/// Serialised as `{"betas": [b1, b2], "eps": .., "weight_decay": ..}`; the older form with
/// `beta1` and `beta2` is still read.
///
/// ```
/// use modelspec_runtime::train::optim::AdamWConfig;
/// let c = AdamWConfig::default();
/// assert_eq!((c.betas, c.eps, c.weight_decay), ((0.9, 0.999), 1e-8, 0.01));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "AdamWConfigRepr")]
pub struct AdamWConfig {
    /// Decay rates (β₁, β₂) of the first and second moments.
    pub betas: (f64, f64),
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay λ, applied as `p ← p·(1 − lr·λ)` to parameters that [`decays`] picks.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults: β (0.9, 0.999), ε 1e-8, λ 0.01.
    fn default() -> Self {
        Self {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// What a saved [`AdamWConfig`] may look like: `betas`, or the older `beta1` and `beta2`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdamWConfigRepr {
    #[serde(default)]
    betas: Option<(f64, f64)>,
    #[serde(default)]
    beta1: Option<f64>,
    #[serde(default)]
    beta2: Option<f64>,
    eps: f64,
    weight_decay: f64,
}

impl From<AdamWConfigRepr> for AdamWConfig {
    fn from(r: AdamWConfigRepr) -> Self {
        let default = AdamWConfig::default().betas;
        let betas = r
            .betas
            .unwrap_or((r.beta1.unwrap_or(default.0), r.beta2.unwrap_or(default.1)));
        AdamWConfig {
            betas,
            eps: r.eps,
            weight_decay: r.weight_decay,
        }
    }
}

/// The f32 scalars of one AdamW step, formed in f64 from the configuration, the step number and
/// the learning rate: what the host loop ([`AdamW::step`]) and the GPU's fused kernel both apply,
/// element by element, as
/// ```text
/// m ← β₁·m + (1−β₁)·g        v ← β₂·v + (1−β₂)·g·g
/// p ← p·decay − step_size·m / (√v · inv_bias2_sqrt + ε)       (decay = 1 where `decays` is false)
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepScalars {
    /// β₁.
    pub beta1: f32,
    /// β₂.
    pub beta2: f32,
    /// 1 − β₁, rounded from f64 (not `1.0 - beta1` in f32).
    pub one_minus_beta1: f32,
    /// 1 − β₂, rounded from f64.
    pub one_minus_beta2: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
    /// `1 / √(1 − β₂ᵗ)`.
    pub inv_bias2_sqrt: f32,
    /// ε.
    pub eps: f32,
    /// `1 − lr·λ`, the factor of decaying parameters.
    pub decay: f32,
}

impl StepScalars {
    /// The ten f32 that `adamw_dev` reads from the device, in its order: β₁, β₂, 1−β₁, 1−β₂,
    /// step_size, inv_bias2_sqrt, ε, decay, then the two gradient scales (as
    /// [`Kernels::adamw`](crate::cuda::Kernels::adamw)'s `grad_scales`).
    pub fn words(&self, grad_scales: [f32; 2]) -> [f32; 10] {
        [
            self.beta1,
            self.beta2,
            self.one_minus_beta1,
            self.one_minus_beta2,
            self.step_size,
            self.inv_bias2_sqrt,
            self.eps,
            self.decay,
            grad_scales[0],
            grad_scales[1],
        ]
    }
}

impl AdamWConfig {
    /// The scalars of step `t` (counted from 1) at learning rate `lr`.
    ///
    /// ```
    /// use modelspec_runtime::train::optim::AdamWConfig;
    /// let s = AdamWConfig::default().scalars(1, 0.1);
    /// assert!((s.step_size - 1.0).abs() < 1e-6); // 0.1 / (1 - 0.9)
    /// assert_eq!(s.decay, (1.0 - 0.1 * 0.01f64) as f32);
    /// ```
    pub fn scalars(&self, t: u64, lr: f64) -> StepScalars {
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        let (beta1, beta2) = self.betas;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        StepScalars {
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            step_size: (lr / bias1) as f32,
            inv_bias2_sqrt: (1.0 / bias2_sqrt) as f32,
            eps: self.eps as f32,
            decay: (1.0 - lr * self.weight_decay) as f32,
        }
    }
}

/// Whether weight decay applies to the parameter `name` of shape `shape` (the rule in the module
/// docs: matrices decay, embeddings, norms and biases don't).
///
/// ```
/// use modelspec_runtime::train::optim::decays;
/// assert!(decays("layers.0.attn.q.weight", &[64, 64]));
/// assert!(!decays("layers.0.attn_norm.weight", &[64]));
/// assert!(!decays("layers.0.mlp.up.bias", &[256]));
/// assert!(!decays("embed.weight", &[256, 64]));
/// ```
pub fn decays(name: &str, shape: &[usize]) -> bool {
    shape.len() >= 2 && !matches!(name, "embed.weight" | "pos_embed.weight")
}

/// The two moment buffers of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    /// First moment (running mean of gradients).
    pub m: Vec<f32>,
    /// Second moment (running mean of squared gradients).
    pub v: Vec<f32>,
}

/// One parameter and its gradient, as the optimizer updates it.
pub struct ParamGrad<'a> {
    /// Canonical name (decides weight decay and keys the moments).
    pub name: &'a str,
    /// Shape (decides weight decay).
    pub shape: &'a [usize],
    /// The values, updated in place.
    pub value: &'a mut [f32],
    /// The gradient, same length as `value`.
    pub grad: &'a [f32],
}

/// The AdamW optimizer: hyper-parameters, the step count and the per-parameter moments.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Steps taken so far (the `t` of the bias correction is `step + 1` during the next step).
    pub step: u64,
    /// Moments by canonical name, created (zeroed) on a parameter's first update.
    pub moments: BTreeMap<String, Moments>,
}

impl AdamW {
    /// A fresh optimizer: step 0, no moments.
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// Takes one step with learning rate `lr` over every given parameter, then counts the step.
    pub fn step<'a>(
        &mut self,
        lr: f64,
        params: impl IntoIterator<Item = ParamGrad<'a>>,
    ) -> Result<(), TrainError> {
        let s = self.config.scalars(self.step + 1, lr);
        for p in params {
            if p.value.len() != p.grad.len() {
                return Err(TrainError::GradShape {
                    name: p.name.to_string(),
                    params: p.value.len(),
                    grads: p.grad.len(),
                });
            }
            let n = p.value.len();
            let moments = self
                .moments
                .entry(p.name.to_string())
                .or_insert_with(|| Moments {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                });
            if moments.m.len() != n {
                return Err(TrainError::GradShape {
                    name: p.name.to_string(),
                    params: n,
                    grads: moments.m.len(),
                });
            }
            let decay = if decays(p.name, p.shape) {
                s.decay
            } else {
                1.0
            };
            let Moments { m, v } = moments;
            for i in 0..n {
                let g = p.grad[i];
                let mi = s.beta1 * m[i] + s.one_minus_beta1 * g;
                let vi = s.beta2 * v[i] + s.one_minus_beta2 * g * g;
                m[i] = mi;
                v[i] = vi;
                let denom = vi.sqrt() * s.inv_bias2_sqrt + s.eps;
                p.value[i] = p.value[i] * decay - s.step_size * mi / denom;
            }
        }
        self.step += 1;
        Ok(())
    }
}

impl AdamW {
    /// One step over every tensor of `params` with the gradient of the same name in `grads`, in
    /// name order (what the trainers call). A parameter without a gradient is an error.
    pub fn step_params(
        &mut self,
        lr: f64,
        params: &mut Params,
        grads: &Params,
    ) -> Result<(), TrainError> {
        let mut pairs = Vec::with_capacity(params.tensors.len());
        for (name, value) in params.tensors.iter_mut() {
            let grad = grads
                .tensors
                .get(name)
                .ok_or_else(|| TrainError::GradShape {
                    name: name.clone(),
                    params: value.numel(),
                    grads: 0,
                })?;
            let shape = value.shape().to_vec();
            pairs.push((name.as_str(), shape, value.data_mut(), grad.data()));
        }
        self.step(
            lr,
            pairs
                .iter_mut()
                .map(|(name, shape, value, grad)| ParamGrad {
                    name,
                    shape,
                    value,
                    grad,
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The update of the module docs, computed in f64 from scratch.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        p: &mut [f64],
        m: &mut [f64],
        v: &mut [f64],
        g: &[f64],
        t: i32,
        lr: f64,
        c: AdamWConfig,
        decay: bool,
    ) {
        for i in 0..p.len() {
            if decay {
                p[i] -= lr * c.weight_decay * p[i];
            }
            let (beta1, beta2) = c.betas;
            m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
            v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
            let m_hat = m[i] / (1.0 - beta1.powi(t));
            let v_hat = v[i] / (1.0 - beta2.powi(t));
            p[i] -= lr * m_hat / (v_hat.sqrt() + c.eps);
        }
    }

    #[test]
    fn matches_an_f64_reference_over_several_steps() {
        let c = AdamWConfig {
            betas: (0.8, 0.9),
            eps: 1e-6,
            weight_decay: 0.3,
        };
        let mut opt = AdamW::new(c);
        let shapes: [(&str, Vec<usize>); 2] = [
            ("layers.0.mlp.up.weight", vec![2, 3]),
            ("layers.0.mlp.up.bias", vec![2]),
        ];
        let mut values: Vec<Vec<f32>> =
            vec![vec![0.5, -1.0, 2.0, 0.25, -0.125, 1.5], vec![0.3, -0.7]];
        let mut refs: Vec<Vec<f64>> = values
            .iter()
            .map(|v| v.iter().map(|&x| x as f64).collect())
            .collect();
        let mut ref_m: Vec<Vec<f64>> = values.iter().map(|v| vec![0.0; v.len()]).collect();
        let mut ref_v = ref_m.clone();
        for step in 0..5 {
            let lr = 0.01 * (step + 1) as f64;
            let grads: Vec<Vec<f32>> = values
                .iter()
                .map(|v| {
                    v.iter()
                        .enumerate()
                        .map(|(i, &x)| x * 0.5 - 0.1 * i as f32 + 0.05)
                        .collect()
                })
                .collect();
            for k in 0..2 {
                let g: Vec<f64> = grads[k].iter().map(|&x| x as f64).collect();
                let decay = decays(shapes[k].0, &shapes[k].1);
                reference(
                    &mut refs[k],
                    &mut ref_m[k],
                    &mut ref_v[k],
                    &g,
                    step + 1,
                    lr,
                    c,
                    decay,
                );
            }
            let items =
                values
                    .iter_mut()
                    .zip(&grads)
                    .zip(&shapes)
                    .map(|((value, grad), (name, shape))| ParamGrad {
                        name,
                        shape,
                        value,
                        grad,
                    });
            opt.step(lr, items).unwrap();
            // Keep the reference on the f32 trajectory so errors don't compound across steps.
            for k in 0..2 {
                for (i, &x) in values[k].iter().enumerate() {
                    assert!(
                        (x as f64 - refs[k][i]).abs() < 1e-6,
                        "step {step} {k}[{i}]: {x} vs {}",
                        refs[k][i]
                    );
                }
                refs[k] = values[k].iter().map(|&x| x as f64).collect();
            }
        }
        assert_eq!(opt.step, 5);
    }

    #[test]
    fn first_step_moves_each_weight_by_about_lr() {
        // With bias correction, step 1 is lr · g/|g| (up to ε) whatever the gradient's scale.
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        });
        let mut value = vec![1.0f32, 1.0, 1.0];
        let grad = vec![1e-3f32, -5.0, 300.0];
        opt.step(
            0.1,
            [ParamGrad {
                name: "final_norm.weight",
                shape: &[3],
                value: &mut value,
                grad: &grad,
            }],
        )
        .unwrap();
        for (x, expected) in value.iter().zip([0.9f32, 1.1, 0.9]) {
            assert!((x - expected).abs() < 1e-4, "{x} vs {expected}");
        }
    }

    #[test]
    fn decay_only_touches_matrices() {
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.5,
            ..AdamWConfig::default()
        });
        let zero = vec![0.0f32; 4];
        let (mut w, mut e, mut b) = (vec![2.0f32; 4], vec![2.0f32; 4], vec![2.0f32; 4]);
        opt.step(
            0.1,
            [
                ParamGrad {
                    name: "layers.0.attn.o.weight",
                    shape: &[2, 2],
                    value: &mut w,
                    grad: &zero,
                },
                ParamGrad {
                    name: "embed.weight",
                    shape: &[2, 2],
                    value: &mut e,
                    grad: &zero,
                },
                ParamGrad {
                    name: "layers.0.attn.o.bias",
                    shape: &[4],
                    value: &mut b,
                    grad: &zero,
                },
            ],
        )
        .unwrap();
        assert_eq!(w, vec![2.0 * (1.0 - 0.05); 4]);
        assert_eq!(e, vec![2.0; 4]);
        assert_eq!(b, vec![2.0; 4]);
    }

    #[test]
    fn config_reads_both_saved_forms() {
        let c = AdamWConfig {
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains("\"betas\":[0.9,0.95]"), "{text}");
        assert_eq!(serde_json::from_str::<AdamWConfig>(&text).unwrap(), c);
        let old = r#"{"beta1":0.9,"beta2":0.95,"eps":1e-8,"weight_decay":0.1}"#;
        assert_eq!(serde_json::from_str::<AdamWConfig>(old).unwrap(), c);
        assert!(serde_json::from_str::<AdamWConfig>(r#"{"betas":[0.9,0.95],"eps":1e-8}"#).is_err());
    }

    #[test]
    fn mismatched_gradient_is_an_error() {
        let mut opt = AdamW::new(AdamWConfig::default());
        let mut value = vec![0.0f32; 3];
        let err = opt
            .step(
                0.1,
                [ParamGrad {
                    name: "x",
                    shape: &[3],
                    value: &mut value,
                    grad: &[1.0],
                }],
            )
            .unwrap_err();
        assert!(matches!(err, TrainError::GradShape { .. }), "{err}");
    }
}
