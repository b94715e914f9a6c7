//! One expert MLP on a block of rows through cuBLASLt: its weights (gate and up fused into one
//! GEMM when they are adjacent in memory), the projections, the down projection and their
//! backward. The routed experts run it once per expert on that expert's contiguous dispatched
//! rows; the shared experts run it once on all rows.

use super::kernels::MoeKernels;
use super::layout::Halves;
use crate::cuda::error::{CudaError, Result};
use crate::cuda::gemm::{Gemm, RowMajorGemm};
use crate::cuda::{DevPtr, Dtype};

/// Looks up a required parameter pointer.
pub(crate) fn need(f: &dyn Fn(&str) -> DevPtr, layer: usize, name: &str) -> Result<DevPtr> {
    match f(name) {
        0 => Err(CudaError::BadLaunch {
            kernel: "moe".into(),
            why: format!("parameter `layers.{layer}.{name}` has no device pointer"),
        }),
        p => Ok(p),
    }
}

/// The weights (compute dtype) or gradients (f32) of one MLP: `{prefix}.{gate,up,down}.{weight,bias}`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MlpParams {
    pub gate: DevPtr,
    pub up: DevPtr,
    pub down: DevPtr,
    pub gate_bias: DevPtr,
    pub up_bias: DevPtr,
    pub down_bias: DevPtr,
    /// `up` (and its bias) directly follows `gate` (and its bias): one `[2 hidden, d]` matrix.
    pub fused: bool,
}

/// The shape of one MLP: widths, activation structure and where its projections live.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MlpShape {
    pub d: usize,
    pub hidden: usize,
    pub gated: bool,
    pub bias: bool,
    pub halves: Halves,
}

impl MlpShape {
    /// Resolves `{prefix}.*` through `f`: weights in the compute dtype (`elem` bytes, required),
    /// or gradients in f32 (`elem` 4, each optional: 0 skips that gradient).
    pub(crate) fn params(
        &self,
        f: &dyn Fn(&str) -> DevPtr,
        layer: usize,
        prefix: &str,
        elem: usize,
        required: bool,
    ) -> Result<MlpParams> {
        let get = |part: &str, wanted: bool| -> Result<DevPtr> {
            let name = format!("{prefix}.{part}");
            match (wanted, required) {
                (false, _) => Ok(0),
                (true, true) => need(f, layer, &name),
                (true, false) => Ok(f(&name)),
            }
        };
        let (g, b) = (self.gated, self.bias);
        let p = MlpParams {
            gate: get("gate.weight", g)?,
            up: get("up.weight", true)?,
            down: get("down.weight", true)?,
            gate_bias: get("gate.bias", g && b)?,
            up_bias: get("up.bias", b)?,
            down_bias: get("down.bias", b)?,
            fused: false,
        };
        let step = |n: usize| (n * elem) as u64;
        let fused = g
            && self.halves.interleaved
            && p.gate != 0
            && p.up == p.gate + step(self.hidden * self.d)
            && (!b || (p.gate_bias != 0 && p.up_bias == p.gate_bias + step(self.hidden)));
        Ok(MlpParams { fused, ..p })
    }

    /// Element offsets of row `r`'s gate and up halves in a projection buffer.
    fn gate_at(&self, base: DevPtr, r: usize, elem: usize) -> DevPtr {
        base + (r * self.halves.ld * elem) as u64
    }
    fn up_at(&self, base: DevPtr, r: usize, elem: usize) -> DevPtr {
        base + ((self.halves.up + r * self.halves.ld) * elem) as u64
    }
}

/// GEMMs in one compute dtype, row-major (see [`RowMajorGemm`]), and the MoE kernels for a bias
/// the GEMM epilogue cannot take.
pub(crate) struct Mm<'a> {
    pub gemm: &'a Gemm,
    pub dt: Dtype,
    pub k: &'a MoeKernels,
}

#[allow(clippy::too_many_arguments)]
impl Mm<'_> {
    /// `C[m, n] = A[m, k] W[n, k]^T (+ bias)`, C in the compute dtype. A bias that is not
    /// 16-byte aligned (the epilogue's requirement) is added by `moe_add_bias` after the GEMM.
    pub(crate) fn linear(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        lda: usize,
        w: DevPtr,
        bias: DevPtr,
        c: DevPtr,
        ldc: usize,
    ) -> Result<()> {
        let g = RowMajorGemm {
            lda,
            ldc,
            ..RowMajorGemm::linear(m, n, k)
        };
        // SAFETY: the operands are the caller's parameters and MoeLayer's regions, sized for
        // these shapes by its layouts.
        unsafe {
            if bias != 0 && bias.is_multiple_of(16) {
                return self.gemm.run_bias(self.dt, &g, a, w, c, bias);
            }
            self.gemm.run(self.dt, &g, a, w, c, 1.0, 0.0)?;
        }
        if bias != 0 {
            self.k.add_bias(self.dt, c, bias, m, n, ldc)?;
        }
        Ok(())
    }

    /// `C[m, n] = A[m, k] W[n, k]^T` with C in f32 (rows of A and W contiguous).
    pub(crate) fn linear_f32(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        w: DevPtr,
        c: DevPtr,
    ) -> Result<()> {
        let g = RowMajorGemm::linear(m, n, k);
        // SAFETY: as in `linear`.
        unsafe { self.gemm.run_f32_out(self.dt, &g, a, w, c, 1.0, 0.0) }
    }

    /// `C[m, n] = A[m, k] B[k, n] + beta C`, C in the compute dtype or (`c_f32`) in f32.
    pub(crate) fn nn(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        lda: usize,
        b: DevPtr,
        ldb: usize,
        c: DevPtr,
        ldc: usize,
        beta: f32,
        c_f32: bool,
    ) -> Result<()> {
        let g = RowMajorGemm::plain(m, n, k, lda, ldb, ldc);
        // SAFETY: as in `linear`.
        unsafe {
            if c_f32 {
                self.gemm.run_f32_out(self.dt, &g, a, b, c, 1.0, beta)
            } else {
                self.gemm.run(self.dt, &g, a, b, c, 1.0, beta)
            }
        }
    }

    /// Weight gradient `G[m, n] += dY[k, m]^T X[k, n]` in f32 (skipped when `grad` is 0).
    pub(crate) fn wgrad(
        &self,
        m: usize,
        n: usize,
        k: usize,
        dy: DevPtr,
        lddy: usize,
        x: DevPtr,
        ldx: usize,
        grad: DevPtr,
    ) -> Result<()> {
        if grad == 0 || k == 0 {
            return Ok(());
        }
        let g = RowMajorGemm::weight_grad(m, n, k, lddy, ldx);
        // SAFETY: as in `linear`; `grad` is the caller's f32 gradient of shape [m, n].
        unsafe { self.gemm.run_f32_out(self.dt, &g, dy, x, grad, 1.0, 1.0) }
    }
}

/// Buffers of one MLP run over `rows` rows starting at row `r0` of its buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MlpRows {
    pub r0: usize,
    pub rows: usize,
    /// Input `[*, d]`.
    pub x: DevPtr,
    /// Projections (see [`Halves`]).
    pub proj: DevPtr,
    /// Activations `[*, hidden]`.
    pub act: DevPtr,
    /// Output `[*, d]`.
    pub out: DevPtr,
}

impl MlpShape {
    /// gate/up projections of the rows (one GEMM when fused).
    pub(crate) fn project(&self, mm: &Mm<'_>, w: &MlpParams, b: &MlpRows) -> Result<()> {
        let e = elem(mm.dt);
        let (d, h) = (self.d, self.hidden);
        let x = b.x + (b.r0 * d * e) as u64;
        let ld = self.halves.ld;
        if w.fused {
            let gate = self.gate_at(b.proj, b.r0, e);
            return mm.linear(b.rows, 2 * h, d, x, d, w.gate, w.gate_bias, gate, ld);
        }
        if self.gated {
            let gate = self.gate_at(b.proj, b.r0, e);
            mm.linear(b.rows, h, d, x, d, w.gate, w.gate_bias, gate, ld)?;
        }
        let up = self.up_at(b.proj, b.r0, e);
        mm.linear(b.rows, h, d, x, d, w.up, w.up_bias, up, ld)
    }

    /// The activation's (gate, up) input pointers at row 0 of a projection buffer: gated kinds
    /// read both halves, the others only `up` (passed as the kernel's first input).
    pub(crate) fn act_inputs(&self, proj: DevPtr, dt: Dtype) -> (DevPtr, DevPtr) {
        let e = elem(dt);
        let up = self.up_at(proj, 0, e);
        if self.gated {
            (self.gate_at(proj, 0, e), up)
        } else {
            (up, up)
        }
    }

    /// The down projection of the rows' activations.
    pub(crate) fn down(&self, mm: &Mm<'_>, w: &MlpParams, b: &MlpRows) -> Result<()> {
        let e = elem(mm.dt);
        let (d, h) = (self.d, self.hidden);
        let act = b.act + (b.r0 * h * e) as u64;
        let out = b.out + (b.r0 * d * e) as u64;
        mm.linear(b.rows, d, h, act, h, w.down, w.down_bias, out, d)
    }

    /// Backward of [`MlpShape::down`]: `d_act = d_out Wd` (written), `gWd += d_out^T act`,
    /// `gbd += Σ d_out`. `b.out` is d_out here, `b.proj` unused, `d_act` has `act`'s layout.
    pub(crate) fn down_backward(
        &self,
        mm: &Mm<'_>,
        colsum: &dyn Fn(DevPtr, DevPtr, usize, usize, usize) -> Result<()>,
        w: &MlpParams,
        g: &MlpParams,
        b: &MlpRows,
        d_act: DevPtr,
    ) -> Result<()> {
        let e = elem(mm.dt);
        let (d, h, m) = (self.d, self.hidden, b.rows);
        let dout = b.out + (b.r0 * d * e) as u64;
        let act = b.act + (b.r0 * h * e) as u64;
        let d_act = d_act + (b.r0 * h * e) as u64;
        mm.nn(m, h, d, dout, d, w.down, h, d_act, h, 0.0, false)?;
        mm.wgrad(d, h, m, dout, d, act, h, g.down)?;
        colsum(g.down_bias, dout, m, d, d)
    }

    /// Backward of [`MlpShape::project`] given d projections (`b.proj` is d_proj here):
    /// `gW += d_proj^T x`, bias sums, and `dx = d_proj W` into `dx` (row `b.r0` on; rows of `d`,
    /// f32 when `dx_f32`), added to what is there when `accumulate`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn project_backward(
        &self,
        mm: &Mm<'_>,
        colsum: &dyn Fn(DevPtr, DevPtr, usize, usize, usize) -> Result<()>,
        w: &MlpParams,
        g: &MlpParams,
        b: &MlpRows,
        dx: DevPtr,
        dx_f32: bool,
        accumulate: bool,
    ) -> Result<()> {
        let e = elem(mm.dt);
        let (d, h, m, ld) = (self.d, self.hidden, b.rows, self.halves.ld);
        let x = b.x + (b.r0 * d * e) as u64;
        let dgate = self.gate_at(b.proj, b.r0, e);
        let dup = self.up_at(b.proj, b.r0, e);
        let grads_fused = self.gated
            && self.halves.interleaved
            && g.gate != 0
            && g.up == g.gate + (h * d * 4) as u64;
        if grads_fused {
            mm.wgrad(2 * h, d, m, dgate, ld, x, d, g.gate)?;
        } else {
            if self.gated {
                mm.wgrad(h, d, m, dgate, ld, x, d, g.gate)?;
            }
            mm.wgrad(h, d, m, dup, ld, x, d, g.up)?;
        }
        if self.gated {
            colsum(g.gate_bias, dgate, m, h, ld)?;
        }
        colsum(g.up_bias, dup, m, h, ld)?;
        let dx = dx + (b.r0 * d * if dx_f32 { 4 } else { e }) as u64;
        let beta = if accumulate { 1.0 } else { 0.0 };
        if w.fused {
            return mm.nn(m, d, 2 * h, dgate, ld, w.gate, d, dx, d, beta, dx_f32);
        }
        if self.gated {
            mm.nn(m, d, h, dgate, ld, w.gate, d, dx, d, beta, dx_f32)?;
            mm.nn(m, d, h, dup, ld, w.up, d, dx, d, 1.0, dx_f32)
        } else {
            mm.nn(m, d, h, dup, ld, w.up, d, dx, d, beta, dx_f32)
        }
    }
}

fn elem(dt: Dtype) -> usize {
    crate::cuda::DtypeExt::bytes(dt)
}
