//! Mixture of experts: routing, dispatch (gather), combine, and Mixtral's load-balancing loss.
//!
//! Router, per token with logits `l: [experts]`:
//! - softmax→top-k: `p = softmax(l)`, take the `k` largest `p`; renormalise them to sum 1 when the
//!   spec says so (Mixtral, Qwen-MoE `norm_topk_prob`).
//! - top-k→softmax: take the `k` largest `l`, softmax over those `k`.
//! - sigmoid→top-k (DeepSeek-V3, GLM-4.5, Llama 4): `s = sigmoid(l)`; choose on `s + b` with the
//!   correction bias `b` when the spec has one (else on `l`, which orders like `s`), within the
//!   best groups when routing is group-limited (a group scores the sum of its two best choice
//!   values; ties go to the lower group); the weights are the chosen `s`, renormalised as
//!   `s / (Σ s + 1e-20)` when the spec says so.
//!
//! Every router then multiplies its weights by `routed_scale`. The weights multiply either each
//! expert's output (the usual) or its input row (`Weighting::Input`, Llama 4), see [`gather_weighted`].
//!
//! Ties go to the lower expert index. Tokens are then dispatched in expert order: the rows routed
//! to expert 0 first (by token), then expert 1, ... (`expert_in: [tokens·k, d]`); each expert runs
//! its MLP on its contiguous block; the output of a token is `Σ_s w_s · expert_out[slot s]`
//! (slots in top-k order), plus the shared experts (optionally scaled by `sigmoid(x · w_gate)`).
//!
//! Load-balancing loss (HF's `load_balancing_loss_func`, over the router logits of all MoE layers
//! concatenated, `M` rows): `aux = E · Σ_e (count_e / M) · (Σ_rows softmax(l)_e / M)` where
//! `count_e` is how often expert `e` is among a row's top k. Its gradient flows through the
//! softmax only.
//!
//! The folder holds the whole op: this file (the CPU reference) and `cuda/` with `moe.cu`: the
//! GPU's forward and backward ([`cuda::MoeLayer`]), which compile as their own NVRTC module
//! ([`cuda::kernel_source`]). The executors reach the GPU side as `crate::cuda::moe`.

use modelspec_dsl::ir::{Moe, RouterOrder};

use crate::ops::activation::sigmoid;

use crate::tensor::Float;

pub mod cuda;

/// The routing decision of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// Experts.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// `[tokens·k]`: the expert of each (token, slot), slots in descending order.
    pub expert: Vec<usize>,
    /// `[tokens·k]`: the row of each (token, slot) in the dispatched (expert-sorted) order.
    pub row: Vec<usize>,
    /// `[experts + 1]`: expert `e` owns dispatched rows `offsets[e]..offsets[e + 1]`.
    pub offsets: Vec<usize>,
    /// `[tokens·k]`: the (token, slot) index `n·k + s` of each dispatched row.
    pub slot_of_row: Vec<usize>,
}

fn softmax_into<T: Float>(x: &[T], out: &mut [T]) {
    let max = x.iter().copied().fold(T::NEG_INF, T::max);
    let mut sum = T::ZERO;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - max).exp();
        sum += *o;
    }
    let inv = T::ONE / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// Indices of the `k` largest values, descending, ties to the lower index.
fn top_k<T: Float>(x: &[T], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| {
        x[b].partial_cmp(&x[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

/// Routes `logits: [tokens, experts]` without a correction bias; see [`route_with`].
pub fn route<T: Float>(moe: &Moe, logits: &[T]) -> (Routing, Vec<T>) {
    route_with(moe, logits, None)
}

/// The experts a `sigmoid_topk` router picks from one row: `choice` values (bias-corrected
/// scores, or logits), limited to the best groups when the spec has groups. Descending, ties to
/// the lower index.
fn sigmoid_choice<T: Float>(moe: &Moe, choice: &mut [T]) -> Vec<usize> {
    let k = moe.top_k as usize;
    if let Some(groups) = &moe.groups {
        let count = groups.count as usize;
        let size = choice.len() / count.max(1);
        let group_scores: Vec<T> = choice
            .chunks_exact(size)
            .map(|g| {
                let best = top_k(g, 2);
                best.iter().map(|&i| g[i]).sum()
            })
            .collect();
        let keep = top_k(&group_scores, groups.top as usize);
        for (gi, g) in choice.chunks_exact_mut(size).enumerate() {
            if !keep.contains(&gi) {
                g.fill(T::NEG_INF);
            }
        }
    }
    top_k(choice, k)
}

/// Routes `logits: [tokens, experts]`; returns the routing and the weights `[tokens, k]`.
/// `correction` is the `sigmoid_topk` router's per-expert selection bias, when the spec has one.
pub fn route_with<T: Float>(
    moe: &Moe,
    logits: &[T],
    correction: Option<&[T]>,
) -> (Routing, Vec<T>) {
    let e = moe.experts as usize;
    let k = moe.top_k as usize;
    let tokens = logits.len() / e;
    let mut expert = Vec::with_capacity(tokens * k);
    let mut weights = Vec::with_capacity(tokens * k);
    let mut probs = vec![T::ZERO; e];
    let scale = T::from_f64(moe.routed_scale);
    for l in logits.chunks_exact(e) {
        let first = weights.len();
        match moe.router {
            RouterOrder::SoftmaxTopk => {
                softmax_into(l, &mut probs);
                let idx = top_k(&probs, k);
                let sum: T = idx.iter().map(|&i| probs[i]).sum();
                for &i in &idx {
                    weights.push(if moe.renormalize {
                        probs[i] / sum
                    } else {
                        probs[i]
                    });
                }
                expert.extend(idx);
            }
            RouterOrder::TopkSoftmax => {
                let idx = top_k(l, k);
                let picked: Vec<T> = idx.iter().map(|&i| l[i]).collect();
                let mut w = vec![T::ZERO; k];
                softmax_into(&picked, &mut w);
                weights.extend(w);
                expert.extend(idx);
            }
            RouterOrder::SigmoidTopk => {
                for (p, &v) in probs.iter_mut().zip(l) {
                    *p = sigmoid(v);
                }
                let mut choice: Vec<T> = match correction {
                    Some(b) => probs.iter().zip(b).map(|(&p, &b)| p + b).collect(),
                    None => l.to_vec(),
                };
                let idx = sigmoid_choice(moe, &mut choice);
                let sum = idx.iter().map(|&i| probs[i]).sum::<T>() + T::from_f64(1e-20);
                for &i in &idx {
                    weights.push(if moe.renormalize {
                        probs[i] / sum
                    } else {
                        probs[i]
                    });
                }
                expert.extend(idx);
            }
        }
        if moe.routed_scale != 1.0 {
            for w in &mut weights[first..] {
                *w *= scale;
            }
        }
    }
    let mut counts = vec![0usize; e];
    for &x in &expert {
        counts[x] += 1;
    }
    let mut offsets = vec![0usize; e + 1];
    for i in 0..e {
        offsets[i + 1] = offsets[i] + counts[i];
    }
    let mut next = offsets.clone();
    let mut row = vec![0usize; expert.len()];
    let mut slot_of_row = vec![0usize; expert.len()];
    for (slot, &x) in expert.iter().enumerate() {
        row[slot] = next[x];
        slot_of_row[next[x]] = slot;
        next[x] += 1;
    }
    (
        Routing {
            experts: e,
            top_k: k,
            expert,
            row,
            offsets,
            slot_of_row,
        },
        weights,
    )
}

/// Accumulates `dlogits` from the gradient of the weights (`dweights: [tokens, k]`) and, when
/// given, the aux-loss gradient on the full softmax probabilities (`aux_dprobs: [experts]`, the
/// same for every row).
pub fn route_backward<T: Float>(
    moe: &Moe,
    logits: &[T],
    routing: &Routing,
    dweights: &[T],
    aux_dprobs: Option<&[T]>,
    dlogits: &mut [T],
) {
    let e = routing.experts;
    let k = routing.top_k;
    let mut probs = vec![T::ZERO; e];
    let mut dprobs = vec![T::ZERO; e];
    for (n, (l, dl)) in logits
        .chunks_exact(e)
        .zip(dlogits.chunks_exact_mut(e))
        .enumerate()
    {
        let idx = &routing.expert[n * k..(n + 1) * k];
        let scaled: Vec<T>;
        let dw = if moe.routed_scale != 1.0 {
            let scale = T::from_f64(moe.routed_scale);
            scaled = dweights[n * k..(n + 1) * k]
                .iter()
                .map(|&d| d * scale)
                .collect();
            &scaled[..]
        } else {
            &dweights[n * k..(n + 1) * k]
        };
        if moe.router == RouterOrder::SigmoidTopk {
            // w_s = s_s (/ (Σs + ε) when renormalised), s = sigmoid(l); the choice (with its bias
            // and groups) is piecewise constant, so no gradient flows through it.
            let s: Vec<T> = idx.iter().map(|&i| sigmoid(l[i])).collect();
            let ds: Vec<T> = if moe.renormalize {
                let sum = s.iter().copied().sum::<T>() + T::from_f64(1e-20);
                let dot: T = s.iter().zip(dw).map(|(&si, &d)| d * si / sum).sum();
                dw.iter().map(|&d| (d - dot) / sum).collect()
            } else {
                dw.to_vec()
            };
            for ((&i, &si), &dsi) in idx.iter().zip(&s).zip(&ds) {
                dl[i] += dsi * si * (T::ONE - si);
            }
            continue;
        }
        softmax_into(l, &mut probs);
        dprobs.fill(T::ZERO);
        match moe.router {
            RouterOrder::SoftmaxTopk => {
                if moe.renormalize {
                    let sum: T = idx.iter().map(|&i| probs[i]).sum();
                    // w_s = p_s / Σp  ⇒  dp_s = (dw_s − Σ_t dw_t w_t) / Σp
                    let dot: T = idx.iter().zip(dw).map(|(&i, &d)| d * probs[i] / sum).sum();
                    for (&i, &d) in idx.iter().zip(dw) {
                        dprobs[i] += (d - dot) / sum;
                    }
                } else {
                    for (&i, &d) in idx.iter().zip(dw) {
                        dprobs[i] += d;
                    }
                }
            }
            RouterOrder::TopkSoftmax => {
                let picked: Vec<T> = idx.iter().map(|&i| l[i]).collect();
                let mut w = vec![T::ZERO; k];
                softmax_into(&picked, &mut w);
                let dot: T = w.iter().zip(dw).map(|(&a, &b)| a * b).sum();
                for s in 0..k {
                    dl[idx[s]] += w[s] * (dw[s] - dot);
                }
            }
            RouterOrder::SigmoidTopk => unreachable!("handled above"),
        }
        if let Some(aux) = aux_dprobs {
            for (d, &a) in dprobs.iter_mut().zip(aux) {
                *d += a;
            }
        }
        let dot: T = probs.iter().zip(&dprobs).map(|(&p, &d)| p * d).sum();
        for j in 0..e {
            dl[j] += probs[j] * (dprobs[j] - dot);
        }
    }
}

/// `expert_in[row(n, s)] = x[n]`: dispatch the tokens in expert order.
pub fn gather<T: Float>(routing: &Routing, x: &[T], d: usize, expert_in: &mut [T]) {
    for (r, &slot) in routing.slot_of_row.iter().enumerate() {
        let n = slot / routing.top_k;
        expert_in[r * d..(r + 1) * d].copy_from_slice(&x[n * d..(n + 1) * d]);
    }
}

/// `expert_in[row(n, s)] = w[n, s] · x[n]`: dispatch with the router weights on the inputs
/// (`Weighting::Input`, Llama 4); the experts' outputs are then summed with weight 1.
pub fn gather_weighted<T: Float>(
    routing: &Routing,
    weights: &[T],
    x: &[T],
    d: usize,
    expert_in: &mut [T],
) {
    for (r, &slot) in routing.slot_of_row.iter().enumerate() {
        let n = slot / routing.top_k;
        let w = weights[slot];
        for (o, &v) in expert_in[r * d..(r + 1) * d]
            .iter_mut()
            .zip(&x[n * d..(n + 1) * d])
        {
            *o = v * w;
        }
    }
}

/// Backward of [`gather_weighted`]: `dx[n] += Σ_s w[n, s] · dexpert_in[row(n, s)]` and
/// `dweights[n, s] += dexpert_in[row(n, s)] · x[n]`.
pub fn gather_weighted_backward<T: Float>(
    routing: &Routing,
    weights: &[T],
    x: &[T],
    dexpert_in: &[T],
    d: usize,
    dx: &mut [T],
    dweights: &mut [T],
) {
    for (slot, &r) in routing.row.iter().enumerate() {
        let n = slot / routing.top_k;
        let w = weights[slot];
        let g = &dexpert_in[r * d..(r + 1) * d];
        let xr = &x[n * d..(n + 1) * d];
        dweights[slot] += g.iter().zip(xr).map(|(&a, &b)| a * b).sum::<T>();
        for (o, &v) in dx[n * d..(n + 1) * d].iter_mut().zip(g) {
            *o += w * v;
        }
    }
}

/// `dx[n] += Σ_s dexpert_in[row(n, s)]` (slots in order).
pub fn gather_backward<T: Float>(routing: &Routing, dexpert_in: &[T], d: usize, dx: &mut [T]) {
    for (slot, &r) in routing.row.iter().enumerate() {
        let n = slot / routing.top_k;
        for (g, &v) in dx[n * d..(n + 1) * d]
            .iter_mut()
            .zip(&dexpert_in[r * d..(r + 1) * d])
        {
            *g += v;
        }
    }
}

/// `out[n] = Σ_s w[n, s] · expert_out[row(n, s)]` (overwrites `out: [tokens, d]`).
pub fn combine<T: Float>(
    routing: &Routing,
    weights: &[T],
    expert_out: &[T],
    d: usize,
    out: &mut [T],
) {
    let k = routing.top_k;
    for (n, o) in out.chunks_exact_mut(d).enumerate() {
        o.fill(T::ZERO);
        for s in 0..k {
            let w = weights[n * k + s];
            let r = routing.row[n * k + s];
            for (v, &e) in o.iter_mut().zip(&expert_out[r * d..(r + 1) * d]) {
                *v += w * e;
            }
        }
    }
}

/// Backward of [`combine`]: accumulates `dexpert_out` and `dweights`.
pub fn combine_backward<T: Float>(
    routing: &Routing,
    weights: &[T],
    expert_out: &[T],
    dout: &[T],
    d: usize,
    dexpert_out: &mut [T],
    dweights: &mut [T],
) {
    let k = routing.top_k;
    for (n, g) in dout.chunks_exact(d).enumerate() {
        for s in 0..k {
            let w = weights[n * k + s];
            let r = routing.row[n * k + s];
            let eo = &expert_out[r * d..(r + 1) * d];
            dweights[n * k + s] += g.iter().zip(eo).map(|(&a, &b)| a * b).sum::<T>();
            for (de, &a) in dexpert_out[r * d..(r + 1) * d].iter_mut().zip(g) {
                *de += w * a;
            }
        }
    }
}

/// Statistics of the load-balancing loss gathered over layers: per-expert selection counts and
/// per-expert probability sums, and the number of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct AuxStats {
    /// Σ over rows of the top-k one-hot, per expert.
    pub counts: Vec<f64>,
    /// Σ over rows of softmax(logits), per expert.
    pub prob_sums: Vec<f64>,
    /// Rows seen.
    pub rows: usize,
}

impl AuxStats {
    /// Empty statistics for `experts`.
    pub fn new(experts: usize) -> Self {
        AuxStats {
            counts: vec![0.0; experts],
            prob_sums: vec![0.0; experts],
            rows: 0,
        }
    }

    /// Adds one layer's router logits and routing.
    pub fn add<T: Float>(&mut self, logits: &[T], routing: &Routing) {
        let e = routing.experts;
        let mut probs = vec![T::ZERO; e];
        for l in logits.chunks_exact(e) {
            softmax_into(l, &mut probs);
            for (s, &p) in self.prob_sums.iter_mut().zip(&probs) {
                *s += p.to_f64();
            }
            self.rows += 1;
        }
        for &x in &routing.expert {
            self.counts[x] += 1.0;
        }
    }

    /// `E · Σ_e (count_e / M) · (prob_sum_e / M)`.
    pub fn loss(&self) -> f64 {
        if self.rows == 0 {
            return 0.0;
        }
        let m = self.rows as f64;
        let e = self.counts.len() as f64;
        e * self
            .counts
            .iter()
            .zip(&self.prob_sums)
            .map(|(c, p)| (c / m) * (p / m))
            .sum::<f64>()
    }

    /// `coef · ∂aux/∂p_e = coef · E · count_e / M²`, the same for every row.
    pub fn dprobs<T: Float>(&self, coef: f64) -> Vec<T> {
        let m = self.rows.max(1) as f64;
        let e = self.counts.len() as f64;
        self.counts
            .iter()
            .map(|c| T::from_f64(coef * e * c / (m * m)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use modelspec_dsl::ir::{ExpertGroups, Weighting};

    use super::*;

    fn sigmoid_moe() -> Moe {
        Moe {
            experts: 8,
            top_k: 2,
            router: RouterOrder::SigmoidTopk,
            renormalize: true,
            correction_bias: true,
            groups: Some(ExpertGroups { count: 4, top: 2 }),
            routed_scale: 2.5,
            ..Default::default()
        }
    }

    /// Groups {0,1} {2,3} {4,5} {6,7}; the bias moves the choice, never the weights.
    #[test]
    fn sigmoid_router_picks_within_the_best_groups_on_corrected_scores() {
        let m = sigmoid_moe();
        let logits = [2.0f64, -3.0, 0.5, 0.4, 1.0, 1.5, -1.0, 0.0];
        // Without the bias the group sums pick groups 2 and 1, so expert 0, the best single
        // score, is out: experts 5 and 4.
        let (r, w) = route_with(&m, &logits, Some(&[0.0; 8]));
        assert_eq!(r.expert, vec![5, 4]);
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let sum = s(1.5) + s(1.0);
        assert!((w[0] - 2.5 * s(1.5) / sum).abs() < 1e-12);
        // A bias on expert 3 makes group 1 the best and picks expert 3 itself.
        let bias = [0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0];
        let (r, w) = route_with(&m, &logits, Some(&bias));
        assert_eq!(r.expert, vec![3, 5]);
        let sum = s(0.4) + s(1.5);
        assert!((w[0] - 2.5 * s(0.4) / sum).abs() < 1e-12);
    }

    /// route_backward of the sigmoid router against central differences of the weights.
    #[test]
    fn sigmoid_router_backward_matches_finite_differences() {
        for renormalize in [true, false] {
            let m = Moe {
                renormalize,
                ..sigmoid_moe()
            };
            let logits = [0.3f64, -0.2, 1.1, 0.7, -0.5, 0.9, 0.1, -1.0];
            let bias = [0.1, 0.0, -0.2, 0.0, 0.3, 0.0, 0.0, 0.05];
            let dw = [0.7, -1.3];
            let (r, _) = route_with(&m, &logits, Some(&bias));
            let mut dl = [0.0; 8];
            route_backward(&m, &logits, &r, &dw, None, &mut dl);
            let h = 1e-6;
            for j in 0..8 {
                let mut lp = logits;
                let mut lm = logits;
                lp[j] += h;
                lm[j] -= h;
                let (rp, wp) = route_with(&m, &lp, Some(&bias));
                let (_, wm) = route_with(&m, &lm, Some(&bias));
                assert_eq!(rp.expert, r.expert, "the choice is fixed near these logits");
                let fd: f64 = (0..2).map(|s| (wp[s] - wm[s]) / (2.0 * h) * dw[s]).sum();
                assert!(
                    (fd - dl[j]).abs() < 1e-6,
                    "renorm {renormalize} j {j}: {} vs {fd}",
                    dl[j]
                );
            }
        }
    }

    /// Input-side weighting: its backward against central differences of `Σ dy · w·x`.
    #[test]
    fn gather_weighted_backward_matches_finite_differences() {
        let m = Moe {
            experts: 3,
            top_k: 2,
            weighting: Weighting::Input,
            ..Default::default()
        };
        let (r, w) = route(&m, &[0.2f64, 1.0, -0.4, 0.5, -1.0, 0.8]);
        let d = 2;
        let x = [0.3, -0.7, 1.2, 0.4];
        let dy: Vec<f64> = (0..8).map(|i| 0.1 * i as f64 - 0.3).collect();
        let mut dx = [0.0; 4];
        let mut dwt = [0.0; 4];
        gather_weighted_backward(&r, &w, &x, &dy, d, &mut dx, &mut dwt);
        let loss = |w: &[f64], x: &[f64]| {
            let mut y = vec![0.0; 8];
            gather_weighted(&r, w, x, d, &mut y);
            y.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>()
        };
        let h = 1e-6;
        for i in 0..4 {
            let (mut xp, mut xm) = (x, x);
            xp[i] += h;
            xm[i] -= h;
            let fd = (loss(&w, &xp) - loss(&w, &xm)) / (2.0 * h);
            assert!((fd - dx[i]).abs() < 1e-8, "dx[{i}]");
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[i] += h;
            wm[i] -= h;
            let fd = (loss(&wp, &x) - loss(&wm, &x)) / (2.0 * h);
            assert!((fd - dwt[i]).abs() < 1e-8, "dw[{i}]");
        }
    }
}
