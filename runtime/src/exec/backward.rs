//! A layer's backward: each op's gradient, in reverse program order, reading (or recomputing)
//! the activations it needs; parameter gradients accumulate in [`Grads`].

use super::*;
use modelspec_dsl::ir::Weighting;

impl<T: Float> Grads<T> {
    pub(super) fn take(&mut self, name: &str) -> Vec<T> {
        std::mem::take(
            self.params
                .get_mut(name)
                .unwrap_or_else(|| panic!("gradient `{name}` missing"))
                .vec_mut(),
        )
    }
    pub(super) fn take_opt(&mut self, name: &str, present: bool) -> Option<Vec<T>> {
        present.then(|| self.take(name))
    }
    pub(super) fn put(&mut self, name: &str, v: Vec<T>) {
        *self
            .params
            .get_mut(name)
            .unwrap_or_else(|| panic!("gradient `{name}` missing"))
            .vec_mut() = v;
    }
    pub(super) fn put_opt(&mut self, name: &str, v: Option<Vec<T>>) {
        if let Some(v) = v {
            self.put(name, v);
        }
    }

    /// Linear backward for parameter prefix `prefix`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear(
        &mut self,
        params: &dyn ParamSource<T>,
        prefix: &str,
        bias: bool,
        x: &[T],
        dy: &[T],
        rows: usize,
        in_dim: usize,
        out_dim: usize,
        dx: Option<&mut [T]>,
    ) {
        let wn = format!("{prefix}.weight");
        let bn = format!("{prefix}.bias");
        let mut dw = self.take(&wn);
        let mut db = self.take_opt(&bn, bias);
        linear::backward(
            x,
            dy,
            rows,
            in_dim,
            out_dim,
            p(params, &wn),
            dx,
            &mut dw,
            db.as_deref_mut(),
        );
        self.put(&wn, dw);
        self.put_opt(&bn, db);
    }

    /// Norm backward for parameter prefix `prefix`, applied to `width`-rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn norm(
        &mut self,
        params: &dyn ParamSource<T>,
        prefix: &str,
        n: &Norm,
        width: usize,
        x: &[T],
        dy: &[T],
        dx: &mut [T],
    ) {
        let wn = format!("{prefix}.weight");
        let bn = format!("{prefix}.bias");
        let (w, _) = norm_params(params, prefix, n);
        let mut dw = self.take_opt(&wn, n.weight);
        let mut db = self.take_opt(&bn, n.bias);
        norm::backward(x, dy, width, n, w, dx, dw.as_deref_mut(), db.as_deref_mut());
        self.put_opt(&wn, dw);
        self.put_opt(&bn, db);
    }

    /// MLP backward for parameter prefix `prefix`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mlp(
        &mut self,
        m: &MlpRef<'_, T>,
        prefix: &str,
        bias: bool,
        x: &[T],
        gate: Option<&[T]>,
        up: &[T],
        act: &[T],
        dout: &[T],
        rows: usize,
        dx: &mut [T],
    ) {
        let names = |s: &str| (format!("{prefix}.{s}.weight"), format!("{prefix}.{s}.bias"));
        let (gw, gb) = names("gate");
        let (uw, ub) = names("up");
        let (dwn, dbn) = names("down");
        let gated = m.kind.is_gated();
        let mut g_w = self.take_opt(&gw, gated);
        let mut g_b = self.take_opt(&gb, gated && bias);
        let mut u_w = self.take(&uw);
        let mut u_b = self.take_opt(&ub, bias);
        let mut d_w = self.take(&dwn);
        let mut d_b = self.take_opt(&dbn, bias);
        let grads = MlpGrad {
            gate: g_w.as_deref_mut().map(|w| (w, g_b.as_deref_mut())),
            up: (&mut u_w, u_b.as_deref_mut()),
            down: (&mut d_w, d_b.as_deref_mut()),
        };
        mlp::backward(m, x, gate, up, act, dout, rows, grads, dx);
        self.put_opt(&gw, g_w);
        self.put_opt(&gb, g_b);
        self.put(&uw, u_w);
        self.put_opt(&ub, u_b);
        self.put(&dwn, d_w);
        self.put_opt(&dbn, d_b);
    }
}

impl<'a, T: Float> LayerCtx<'a, T> {
    /// Backward through the layer: returns d loss / d input, accumulating parameter gradients.
    pub(super) fn backward(
        &self,
        store: &mut Store<T>,
        dy: &[T],
        grads: &mut Grads<T>,
        aux_dprobs: Option<&[T]>,
    ) -> Vec<T> {
        let Shape { rows, d, .. } = self.shape;
        let lp = self.lp;
        let layer = self.layer;
        let att = &layer.attention;
        let (heads, kv_heads, hd) = (
            att.heads as usize,
            att.kv_heads as usize,
            att.head_dim as usize,
        );
        let (qd, kvd) = (heads * hd, kv_heads * hd);
        let (od, kvvd) = (
            heads * att.v_head_dim() as usize,
            kv_heads * att.v_head_dim() as usize,
        );
        let block_norm = layer.block.norm;
        let params = self.params;
        let zeros = |n: usize| vec![T::ZERO; n];

        let mut d_input = zeros(rows * d);
        // Output = stream + drop(mlp_branch) [+ drop(attn_branch) when parallel].
        let mut d_mlp_branch = zeros(rows * d);
        match &self.drop_mlp_branch {
            Some(drop) => drop.backward_acc(dy, &mut d_mlp_branch),
            None => d_mlp_branch.copy_from_slice(dy),
        }
        let mut d_attn_branch = zeros(rows * d);
        let mut d_resid_mid = zeros(rows * d);
        if lp.parallel {
            add_into(&mut d_input, dy);
            match &self.drop_attn_branch {
                Some(drop) => drop.backward_acc(dy, &mut d_attn_branch),
                None => d_attn_branch.copy_from_slice(dy),
            }
        } else {
            d_resid_mid.copy_from_slice(dy);
        }

        // FFN branch.
        let d_mlp_out = if lp.mlp_branch == Act::MlpPostNorm {
            self.ensure(store, Act::MlpOut);
            let mut g = zeros(rows * d);
            grads.norm(
                params,
                &self.prefix("mlp_post_norm"),
                &block_norm,
                d,
                store.get(Act::MlpOut),
                &d_mlp_branch,
                &mut g,
            );
            g
        } else {
            d_mlp_branch
        };
        let mut d_mlp_in = zeros(rows * d);
        match &layer.ffn {
            Ffn::Mlp(m) => {
                let gated = m.activation.is_gated();
                let mut need = vec![lp.mlp_in, Act::Up, Act::ActOut];
                if gated {
                    need.push(Act::Gate);
                }
                self.ensure_all(store, &need);
                let r = self.dense_ref();
                grads.mlp(
                    &r,
                    &self.prefix("mlp"),
                    m.bias,
                    store.get(lp.mlp_in),
                    gated.then(|| store.get(Act::Gate)),
                    store.get(Act::Up),
                    store.get(Act::ActOut),
                    &d_mlp_out,
                    rows,
                    &mut d_mlp_in,
                );
            }
            Ffn::Moe(moe) => {
                self.moe_backward(store, moe, &d_mlp_out, grads, aux_dprobs, &mut d_mlp_in)
            }
        }
        match lp.mlp_in {
            Act::MlpNorm => {
                let src = if lp.parallel {
                    Act::Input
                } else {
                    Act::ResidMid
                };
                self.ensure(store, src);
                let dst = if lp.parallel {
                    &mut d_input
                } else {
                    &mut d_resid_mid
                };
                grads.norm(
                    params,
                    &self.prefix("mlp_norm"),
                    &block_norm,
                    d,
                    store.get(src),
                    &d_mlp_in,
                    dst,
                );
            }
            Act::ResidMid => add_into(&mut d_resid_mid, &d_mlp_in),
            Act::Input => add_into(&mut d_input, &d_mlp_in),
            // Shared norm: folded into the attention input's gradient below.
            _ => {}
        }
        if !lp.parallel {
            add_into(&mut d_input, &d_resid_mid);
            match &self.drop_attn_branch {
                Some(drop) => drop.backward_acc(&d_resid_mid, &mut d_attn_branch),
                None => add_into(&mut d_attn_branch, &d_resid_mid),
            }
        }

        // Attention branch.
        let d_attn_out = if lp.attn_branch == Act::AttnPostNorm {
            self.ensure(store, Act::AttnOut);
            let mut g = zeros(rows * d);
            grads.norm(
                params,
                &self.prefix("attn_post_norm"),
                &block_norm,
                d,
                store.get(Act::AttnOut),
                &d_attn_branch,
                &mut g,
            );
            g
        } else {
            d_attn_branch
        };
        self.ensure(store, Act::Attn);
        let mut d_attn = zeros(rows * od);
        grads.linear(
            params,
            &self.prefix("attn.o"),
            att.out_bias,
            store.get(Act::Attn),
            &d_attn_out,
            rows,
            od,
            d,
            Some(&mut d_attn),
        );
        self.ensure_all(store, &[lp.q_final, lp.k_final, Act::V]);
        let mut dq_f = zeros(rows * qd);
        let mut dk_f = zeros(rows * kvd);
        let mut dv = zeros(rows * kvvd);
        let sinks = self.prefix("attn.sinks");
        let mut dsinks = grads.take_opt(&sinks, att.sinks);
        attention::backward_with_sinks(
            &self.attn,
            store.get(lp.q_final),
            store.get(lp.k_final),
            store.get(Act::V),
            &d_attn,
            &mut dq_f,
            &mut dk_f,
            &mut dv,
            dsinks.as_deref_mut(),
        );
        grads.put_opt(&sinks, dsinks);
        let mut d_attn_in = if att.mla.is_some() {
            self.mla_backward(store, grads, dq_f, &dk_f, &dv)
        } else {
            self.qkv_backward(store, grads, dq_f, dk_f, &dv)
        };
        if lp.mlp_in == Act::AttnNorm {
            add_into(&mut d_attn_in, &d_mlp_in);
        }
        if lp.attn_in == Act::AttnNorm {
            grads.norm(
                params,
                &self.prefix("attn_norm"),
                &block_norm,
                d,
                store.get(Act::Input),
                &d_attn_in,
                &mut d_input,
            );
        } else {
            add_into(&mut d_input, &d_attn_in);
        }
        d_input
    }

    /// Back from the gradients of the queries and keys attention read (`dq`, `dk`) and of the
    /// values (`dv`) through RoPE, the qk-norms and the q/k/v projections: d loss / d attention
    /// input.
    fn qkv_backward(
        &self,
        store: &mut Store<T>,
        grads: &mut Grads<T>,
        dq: Vec<T>,
        dk: Vec<T>,
        dv: &[T],
    ) -> Vec<T> {
        let Shape { rows, d, .. } = self.shape;
        let lp = self.lp;
        let att = &self.layer.attention;
        let (heads, kv_heads, hd) = (
            att.heads as usize,
            att.kv_heads as usize,
            att.head_dim as usize,
        );
        let (qd, kvd) = (heads * hd, kv_heads * hd);
        let params = self.params;
        let zeros = |n: usize| vec![T::ZERO; n];
        let (mut dq, mut dk) = (dq, dk);
        // Back through the query and key chains (RoPE and qk-norm, in the program's order).
        let (mut aq, mut ak) = (lp.q_final, lp.k_final);
        while aq != Act::Q {
            let (sq, sk) = (self.source(aq), self.source(ak));
            match (aq, &self.rope, &att.qk_norm) {
                (Act::QRope, Some(table), _) => {
                    let mut g = zeros(rows * qd);
                    rope::backward(table, &dq, heads, hd, &mut g);
                    dq = g;
                    let mut g = zeros(rows * kvd);
                    rope::backward(table, &dk, kv_heads, hd, &mut g);
                    dk = g;
                }
                (Act::QNormed, _, Some(qk)) => {
                    self.ensure_all(store, &[sq, sk]);
                    let (qw, kw) = match qk.scope {
                        QkNormScope::Head => (hd, hd),
                        QkNormScope::Full => (qd, kvd),
                    };
                    let mut g = zeros(rows * qd);
                    grads.norm(
                        params,
                        &self.prefix("attn.q_norm"),
                        &qk.norm,
                        qw,
                        store.get(sq),
                        &dq,
                        &mut g,
                    );
                    dq = g;
                    let mut g = zeros(rows * kvd);
                    grads.norm(
                        params,
                        &self.prefix("attn.k_norm"),
                        &qk.norm,
                        kw,
                        store.get(sk),
                        &dk,
                        &mut g,
                    );
                    dk = g;
                }
                _ => unreachable!("layer {}: `{}` in the query chain", lp.index, aq.name()),
            }
            (aq, ak) = (sq, sk);
        }
        self.ensure(store, lp.attn_in);
        let x = store.get(lp.attn_in);
        let mut d_attn_in = zeros(rows * d);
        grads.linear(
            params,
            &self.prefix("attn.q"),
            att.qkv_bias,
            x,
            &dq,
            rows,
            d,
            qd,
            Some(&mut d_attn_in),
        );
        grads.linear(
            params,
            &self.prefix("attn.k"),
            att.qkv_bias,
            x,
            &dk,
            rows,
            d,
            kvd,
            Some(&mut d_attn_in),
        );
        grads.linear(
            params,
            &self.prefix("attn.v"),
            att.qkv_bias,
            x,
            dv,
            rows,
            d,
            kvd,
            Some(&mut d_attn_in),
        );
        d_attn_in
    }

    /// Latent attention's [`Self::qkv_backward`]: back through the per-head key/value layout,
    /// RoPE on the queries' and the shared key's rotary parts, the latents' up-projections and
    /// norms, and the down-projections.
    fn mla_backward(
        &self,
        store: &mut Store<T>,
        grads: &mut Grads<T>,
        dq_rope: Vec<T>,
        dk: &[T],
        dv: &[T],
    ) -> Vec<T> {
        let Shape { rows, d, .. } = self.shape;
        let lp = self.lp;
        let att = &self.layer.attention;
        let (m, dims) = self.mla_dims();
        let hd = att.head_dim as usize;
        let qd = dims.heads * hd;
        let (kv_rank, rope) = (m.kv_rank as usize, dims.rope);
        let latent_w = kv_rank + rope;
        let kv_w = dims.heads * (dims.nope + dims.v);
        let params = self.params;
        let table = self.rope.as_ref().expect("latent attention without RoPE");
        // Keys and values back into `kv` and the rotated shared key.
        let mut d_kv = vec![T::ZERO; rows * kv_w];
        let mut d_k_rope = vec![T::ZERO; rows * rope];
        crate::ops::mla::backward(dims, dk, dv, &mut d_kv, &mut d_k_rope);
        let mut d_kv_latent = vec![T::ZERO; rows * latent_w];
        // The shared key's rotation, into the tail of the joint down-projection.
        let mut d_pe = vec![T::ZERO; rows * rope];
        rope::backward(table, &d_k_rope, 1, rope, &mut d_pe);
        crate::ops::mla::add_columns(&mut d_kv_latent, latent_w, kv_rank, &d_pe);
        // kv_b, then the latent's norm, into its head.
        self.ensure_all(store, &[Act::KvLatentNorm, Act::KvLatent, lp.attn_in]);
        let mut d_latent_norm = vec![T::ZERO; rows * kv_rank];
        grads.linear(
            params,
            &self.prefix("attn.kv_b"),
            false,
            store.get(Act::KvLatentNorm),
            &d_kv,
            rows,
            kv_rank,
            kv_w,
            Some(&mut d_latent_norm),
        );
        let latent = crate::ops::mla::columns(store.get(Act::KvLatent), latent_w, 0, kv_rank);
        let mut d_latent = vec![T::ZERO; rows * kv_rank];
        grads.norm(
            params,
            &self.prefix("attn.kv_a_norm"),
            &m.norm,
            kv_rank,
            &latent,
            &d_latent_norm,
            &mut d_latent,
        );
        crate::ops::mla::add_columns(&mut d_kv_latent, latent_w, 0, &d_latent);
        let mut d_attn_in = vec![T::ZERO; rows * d];
        grads.linear(
            params,
            &self.prefix("attn.kv_a"),
            att.qkv_bias,
            store.get(lp.attn_in),
            &d_kv_latent,
            rows,
            d,
            latent_w,
            Some(&mut d_attn_in),
        );
        // The queries: back through RoPE on each head's rotary part, then their projections.
        let mut dq = vec![T::ZERO; rows * qd];
        rope::backward_at(table, &dq_rope, dims.heads, hd, dims.nope, &mut dq);
        match m.q_rank {
            Some(r) => {
                let r = r as usize;
                self.ensure_all(store, &[Act::QLatent, Act::QLatentNorm]);
                let mut d_q_norm = vec![T::ZERO; rows * r];
                grads.linear(
                    params,
                    &self.prefix("attn.q_b"),
                    false,
                    store.get(Act::QLatentNorm),
                    &dq,
                    rows,
                    r,
                    qd,
                    Some(&mut d_q_norm),
                );
                let mut d_q_latent = vec![T::ZERO; rows * r];
                grads.norm(
                    params,
                    &self.prefix("attn.q_a_norm"),
                    &m.norm,
                    r,
                    store.get(Act::QLatent),
                    &d_q_norm,
                    &mut d_q_latent,
                );
                grads.linear(
                    params,
                    &self.prefix("attn.q_a"),
                    att.qkv_bias,
                    store.get(lp.attn_in),
                    &d_q_latent,
                    rows,
                    d,
                    r,
                    Some(&mut d_attn_in),
                );
            }
            None => grads.linear(
                params,
                &self.prefix("attn.q"),
                false,
                store.get(lp.attn_in),
                &dq,
                rows,
                d,
                qd,
                Some(&mut d_attn_in),
            ),
        }
        d_attn_in
    }

    pub(super) fn moe_backward(
        &self,
        store: &mut Store<T>,
        moe: &Moe,
        d_mlp_out: &[T],
        grads: &mut Grads<T>,
        aux_dprobs: Option<&[T]>,
        d_mlp_in: &mut [T],
    ) {
        let Shape { rows, d, .. } = self.shape;
        let lp = self.lp;
        let params = self.params;
        let gated = moe.expert.activation.is_gated();
        // Shared experts.
        if let Some(shared) = &moe.shared {
            let mut need = vec![lp.mlp_in, Act::SharedUp, Act::SharedAct, Act::SharedOut];
            if gated {
                need.push(Act::SharedGate);
            }
            self.ensure_all(store, &need);
            let x = store.get(lp.mlp_in);
            let so = store.get(Act::SharedOut);
            let mut d_shared_out = vec![T::ZERO; rows * d];
            if shared.gate {
                let (w, _) = proj(params, &self.prefix("moe.shared_gate"), false);
                let mut g = vec![T::ZERO; rows];
                linear::forward(x, rows, d, w, None, 1, &mut g);
                let mut d_logit = vec![T::ZERO; rows];
                for n in 0..rows {
                    let s = sigmoid(g[n]);
                    let dyr = &d_mlp_out[n * d..(n + 1) * d];
                    let sor = &so[n * d..(n + 1) * d];
                    let dot: T = dyr.iter().zip(sor).map(|(&a, &b)| a * b).sum();
                    d_logit[n] = dot * s * (T::ONE - s);
                    for (o, &v) in d_shared_out[n * d..(n + 1) * d].iter_mut().zip(dyr) {
                        *o = v * s;
                    }
                }
                grads.linear(
                    params,
                    &self.prefix("moe.shared_gate"),
                    false,
                    x,
                    &d_logit,
                    rows,
                    d,
                    1,
                    Some(&mut *d_mlp_in),
                );
            } else {
                d_shared_out.copy_from_slice(d_mlp_out);
            }
            let r = self.shared_ref();
            grads.mlp(
                &r,
                &self.prefix("moe.shared"),
                moe.expert.bias,
                x,
                gated.then(|| store.get(Act::SharedGate)),
                store.get(Act::SharedUp),
                store.get(Act::SharedAct),
                &d_shared_out,
                rows,
                d_mlp_in,
            );
        }
        // Routed experts.
        // The router's weight gradient (and input-side weighting) reads the FFN input.
        let mut need = vec![
            lp.mlp_in,
            Act::RouterLogits,
            Act::RouterWeights,
            Act::ExpertIn,
            Act::Up,
            Act::ActOut,
            Act::ExpertOut,
        ];
        if gated {
            need.push(Act::Gate);
        }
        self.ensure_all(store, &need);
        let routing = store.routing.as_ref().expect("routing");
        let k = routing.top_k;
        let slots = rows * k;
        let mut d_expert_out = vec![T::ZERO; slots * d];
        let mut d_weights = vec![T::ZERO; slots];
        let input_weighted = moe.weighting == Weighting::Input;
        // With the weights on the inputs, the outputs are summed with weight 1 and the weights'
        // gradient comes from the dispatch instead (below).
        let ones = if input_weighted {
            vec![T::ONE; slots]
        } else {
            Vec::new()
        };
        let mut d_ones = vec![T::ZERO; if input_weighted { slots } else { 0 }];
        moe::combine_backward(
            routing,
            if input_weighted {
                &ones
            } else {
                store.get(Act::RouterWeights)
            },
            store.get(Act::ExpertOut),
            d_mlp_out,
            d,
            &mut d_expert_out,
            if input_weighted {
                &mut d_ones
            } else {
                &mut d_weights
            },
        );
        let hidden = moe.expert.hidden as usize;
        let mut d_expert_in = vec![T::ZERO; slots * d];
        let (xin, up, act) = (
            store.get(Act::ExpertIn),
            store.get(Act::Up),
            store.get(Act::ActOut),
        );
        let gate = gated.then(|| store.get(Act::Gate));
        for e in 0..routing.experts {
            let (r0, r1) = (routing.offsets[e], routing.offsets[e + 1]);
            if r0 == r1 {
                continue;
            }
            let r = self.expert_ref(e);
            let (h0, h1) = (r0 * hidden, r1 * hidden);
            grads.mlp(
                &r,
                &self.prefix(&format!("moe.experts.{e}")),
                moe.expert.bias,
                &xin[r0 * d..r1 * d],
                gate.map(|g| &g[h0..h1]),
                &up[h0..h1],
                &act[h0..h1],
                &d_expert_out[r0 * d..r1 * d],
                r1 - r0,
                &mut d_expert_in[r0 * d..r1 * d],
            );
        }
        if input_weighted {
            moe::gather_weighted_backward(
                routing,
                store.get(Act::RouterWeights),
                store.get(lp.mlp_in),
                &d_expert_in,
                d,
                d_mlp_in,
                &mut d_weights,
            );
        } else {
            moe::gather_backward(routing, &d_expert_in, d, d_mlp_in);
        }
        let mut d_logits = vec![T::ZERO; rows * moe.experts as usize];
        moe::route_backward(
            moe,
            store.get(Act::RouterLogits),
            routing,
            &d_weights,
            aux_dprobs,
            &mut d_logits,
        );
        grads.linear(
            params,
            &self.prefix("moe.router"),
            moe.router_bias,
            store.get(lp.mlp_in),
            &d_logits,
            rows,
            d,
            moe.experts as usize,
            Some(d_mlp_in),
        );
    }
}
