//! [`MoeLayer::backward`]: every gradient of one MoE layer, in this order: the combine (d routing
//! weights and d expert outputs), the shared experts and their gate, the routed experts (down,
//! activation, gate/up, weight gradients accumulated in f32 by cuBLASLt with beta 1), the routing
//! weights' gradient when they scaled the inputs, the router (softmax, top-k or sigmoid, the aux
//! loss's gradient, its bias) and finally `moe_dx`, which adds the dispatched rows' gradients back
//! per token in slot order.

use super::MoeLayer;
use super::layout::at;
use super::mlp::{MlpParams, MlpRows, Mm, need};
use crate::cuda::error::Result;
use crate::cuda::gemm::Gemm;
use crate::cuda::ops::{act_bwd, act_fwd};
use crate::cuda::{Act, DevPtr, ReduceScratch};

impl MoeLayer {
    /// dout: `[rows, d_model]`; writes dx (`[rows, d_model]`, overwritten) and accumulates (+=)
    /// the f32 gradients through `g(name)` (f32 pointers, same names; 0 skips that gradient).
    /// Includes the aux loss's gradient (from the statistics of the step's forward). `x` and
    /// `saved` are those of this layer's forward. The correction bias (a buffer) gets none.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        gemm: &Gemm,
        w: &dyn Fn(&str) -> DevPtr,
        g: &dyn Fn(&str) -> DevPtr,
        x: DevPtr,
        dout: DevPtr,
        saved: DevPtr,
        scratch: DevPtr,
        dx: DevPtr,
    ) -> Result<()> {
        self.check_regions(&[
            ("x", x),
            ("dout", dout),
            ("saved", saved),
            ("scratch", scratch),
            ("dx", dx),
        ])?;
        let (dims, dt, k, i) = (&self.dims, self.dt, &self.kernels, self.layer);
        let (n, d, e, topk) = (dims.rows, dims.d, dims.experts, dims.top_k);
        let sv = |off| at(saved, off);
        let bw = |off| at(scratch, off);
        let mm = Mm { gemm, dt, k };
        let red = ReduceScratch::new(bw(self.bwd.reduce), self.bwd.reduce_bytes);
        let colsum = |out: DevPtr, x: DevPtr, rows: usize, c: usize, ld: usize| {
            k.colsum(dt, out, x, rows, c, ld, red)
        };
        let (start, count) = self.read_offsets(saved)?;
        let used = Self::used_rows(&start, &count);
        let (row, weight) = (sv(self.saved.row), sv(self.saved.weight));
        let input_weighted = self.input_weighted();
        let (in_w, out_w) = if input_weighted {
            (weight, 0)
        } else {
            (0, weight)
        };
        let expert_in = bw(self.bwd.expert_in);
        k.gather(dt, expert_in, x, row, in_w, dims.slots, topk, d)?;
        let shape = self.expert_shape();
        let (proj, act) = (sv(self.saved.proj), bw(self.bwd.act));
        self.expert_act(proj, act, used)?;
        // Combine: d weights (when they scaled the outputs), d expert outputs, and the shared
        // gate's part.
        let gate = dims.shared_gate;
        let d_eo = bw(self.bwd.d_expert_out);
        let d_weight = bw(self.bwd.d_weight);
        let (d_so, d_gl) = if gate {
            (bw(self.bwd.d_shared_out), bw(self.bwd.d_gate_logit))
        } else {
            (0, 0)
        };
        let (so, gl) = if gate {
            (sv(self.saved.shared_out), sv(self.saved.gate_logit))
        } else {
            (0, 0)
        };
        k.combine_bwd(
            dt,
            if input_weighted { 0 } else { d_weight },
            d_eo,
            dout,
            sv(self.saved.expert_out),
            out_w,
            row,
            n,
            topk,
            d,
            [d_so, d_gl, so, gl],
        )?;
        // Shared experts: the first part of dx's f32 accumulator.
        let dx_f32 = bw(self.bwd.dx_f32);
        let mut wg = 0;
        if dims.has_shared() {
            let kind = Act::from(self.moe.expert.activation);
            let sh = self.shared_shape();
            let p = sh.params(w, i, "moe.shared", dims.elem, true)?;
            let gp = sh.params(g, i, "moe.shared", 4, false)?;
            let rows = MlpRows {
                r0: 0,
                rows: n,
                x,
                proj: sv(self.saved.shared_proj),
                act: bw(self.bwd.shared_act),
                out: if gate { d_so } else { dout },
            };
            let (sgin, suin) = sh.act_inputs(rows.proj, dt);
            let (sw, sld) = (dims.shared_hidden, dims.shared_halves.ld);
            act_fwd(k.launcher(), dt, kind, rows.act, sgin, suin, n, sw, sld)?;
            let d_sact = bw(self.bwd.d_shared_act);
            sh.down_backward(&mm, &colsum, &p, &gp, &rows, d_sact)?;
            let d_sproj = bw(self.bwd.d_shared_proj);
            let (dg, du) = sh.act_inputs(d_sproj, dt);
            act_bwd(
                k.launcher(),
                dt,
                kind,
                dg,
                du,
                d_sact,
                sgin,
                suin,
                n,
                sw,
                sld,
            )?;
            let back = MlpRows {
                proj: d_sproj,
                ..rows
            };
            sh.project_backward(&mm, &colsum, &p, &gp, &back, dx_f32, true, false)?;
            if gate {
                wg = need(w, i, "moe.shared_gate.weight")?;
                mm.wgrad(1, d, n, d_gl, 1, x, d, g("moe.shared_gate.weight"))?;
            }
        }
        // Routed experts: down projections, activation, gate/up; each expert's d input
        // overwrites its (consumed) d output rows.
        let mut weights: Vec<(MlpParams, MlpParams)> = Vec::with_capacity(e);
        for ex in 0..e {
            let prefix = format!("moe.experts.{ex}");
            weights.push((
                shape.params(w, i, &prefix, dims.elem, true)?,
                shape.params(g, i, &prefix, 4, false)?,
            ));
        }
        let d_act = bw(self.bwd.d_act);
        let d_proj = bw(self.bwd.d_proj);
        let block = |ex: usize| MlpRows {
            r0: start[ex],
            rows: count[ex],
            x: expert_in,
            proj: d_proj,
            act,
            out: d_eo,
        };
        for (ex, (p, gp)) in weights.iter().enumerate() {
            if count[ex] > 0 {
                shape.down_backward(&mm, &colsum, p, gp, &block(ex), d_act)?;
            }
        }
        self.expert_act_bwd(d_proj, d_act, proj, used)?;
        for (ex, (p, gp)) in weights.iter().enumerate() {
            if count[ex] > 0 {
                shape.project_backward(&mm, &colsum, p, gp, &block(ex), d_eo, false, false)?;
            }
        }
        // With the weights on the inputs, their gradient comes from the d expert inputs.
        if input_weighted {
            k.dweight_in(dt, d_weight, d_eo, x, row, dims.slots, topk, d)?;
        }
        // Router: d logits (with the aux loss's gradient), its weight and bias gradients, dx's
        // router part.
        let (counts, scale) = match &self.aux {
            Some(a) => {
                let counts = bw(self.bwd.aux_counts);
                let stats = a.shared.stats.ptr();
                k.aux_loss(stats, a.layers.len(), e, a.scale, 0, counts)?;
                (counts, a.scale)
            }
            None => (0, 0.0),
        };
        let cfg = self.route_cfg(w)?;
        let d_logits = bw(self.bwd.d_logits);
        k.route_bwd(
            dt,
            &cfg,
            d_logits,
            sv(self.saved.logits),
            sv(self.saved.expert),
            d_weight,
            counts,
            scale,
            n,
            e,
            topk,
        )?;
        let wr = need(w, i, "moe.router.weight")?;
        mm.wgrad(e, d, n, d_logits, e, x, d, g("moe.router.weight"))?;
        if self.moe.router_bias {
            colsum(g("moe.router.bias"), d_logits, n, e, e)?;
        }
        let beta = if dims.has_shared() { 1.0 } else { 0.0 };
        mm.nn(n, d, e, d_logits, e, wr, d, dx_f32, d, beta, true)?;
        // dx = router and shared parts + Σ_s (w_s ·) d expert input rows + the shared gate's part.
        k.dx(dt, dx, dx_f32, d_eo, row, in_w, n, topk, d, d_gl, wg)
    }
}
