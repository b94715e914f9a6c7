//! The MLP activation's CUDA side: the kernels' [`Act`] kinds, the kernel source
//! (`activation.cu`), and its launches (`act_fwd` / `act_bwd`, and GPT-OSS's clamped SwiGLU
//! `act_clamped_fwd` / `act_clamped_bwd`, which only the MoE experts use), as free functions over
//! any module that links `activation.cu` (the kernel library and the MoE module) and as methods
//! of [`Kernels`].

use modelspec_dsl::codegen::act_code;
use modelspec_dsl::ir::{MlpKind, SwigluClamp};

use crate::cuda::Kernels;
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt};
use crate::cuda::launch::{BLOCK, Launcher, grid, int};
use crate::cuda_args;

/// The CUDA C of `activation.cu`, linked into the kernel library and the MoE module.
pub(crate) const SOURCE: &str = include_str!("activation.cu");

/// MLP activations of [`Kernels::act_fwd`] (values as the kernels' `kind`, taken from the one
/// definition of the codes, [`act_code`], which also gives the instance's `MS_ACT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Act {
    /// Exact (erf) GELU.
    Gelu = act_code(MlpKind::Gelu),
    /// tanh-approximated GELU.
    GeluTanh = act_code(MlpKind::GeluTanh),
    /// relu(x)^2.
    ReluSquared = act_code(MlpKind::ReluSquared),
    /// silu(gate) * up.
    Swiglu = act_code(MlpKind::Swiglu),
    /// gelu(gate) * up.
    Geglu = act_code(MlpKind::Geglu),
    /// gelu_tanh(gate) * up.
    GegluTanh = act_code(MlpKind::GegluTanh),
}

impl Act {
    /// Gated kinds read a second (up) input.
    pub fn is_gated(self) -> bool {
        matches!(self, Act::Swiglu | Act::Geglu | Act::GegluTanh)
    }
}

impl From<MlpKind> for Act {
    /// The kernels' activation for an IR MLP kind.
    fn from(k: MlpKind) -> Act {
        match k {
            MlpKind::Gelu => Act::Gelu,
            MlpKind::GeluTanh => Act::GeluTanh,
            MlpKind::ReluSquared => Act::ReluSquared,
            MlpKind::Swiglu => Act::Swiglu,
            MlpKind::Geglu => Act::Geglu,
            MlpKind::GegluTanh => Act::GegluTanh,
        }
    }
}

/// `act_fwd_{dtype}` in `module` (which must link `activation.cu`): out `[rows, hidden]` =
/// act(gate) (* up for gated kinds); gate/up rows have stride `ld`. No launch for zero rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn act_fwd(
    module: &Launcher,
    dt: Dtype,
    act: Act,
    out: DevPtr,
    gate: DevPtr,
    up: DevPtr,
    rows: usize,
    hidden: usize,
    ld: usize,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let (grid, [n_, h_, ld_, kind, vec]) =
        launch_shape(dt, act, rows, hidden, ld, &[out, gate, up]);
    // SAFETY: the locals match `act_fwd`'s C signature; the caller sizes out `[rows, hidden]` and
    // gate/up `[rows, ld]` (the kernel reads `rows * hidden` elements of each).
    unsafe {
        module.launch(
            &format!("act_fwd_{}", dt.suffix()),
            grid,
            (BLOCK, 1, 1),
            0,
            &mut cuda_args![out, gate, up, n_, h_, ld_, kind, vec],
        )
    }
}

/// `act_bwd_{dtype}` in `module`: dgate (and dup for gated kinds) from dout and the forward's
/// gate/up, rows of stride `ld`. No launch for zero rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn act_bwd(
    module: &Launcher,
    dt: Dtype,
    act: Act,
    dgate: DevPtr,
    dup: DevPtr,
    dout: DevPtr,
    gate: DevPtr,
    up: DevPtr,
    rows: usize,
    hidden: usize,
    ld: usize,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let (grid, [n_, h_, ld_, kind, vec]) =
        launch_shape(dt, act, rows, hidden, ld, &[dgate, dup, dout, gate, up]);
    // SAFETY: as in `act_fwd`; dgate/dup share the inputs' row stride `ld`.
    unsafe {
        module.launch(
            &format!("act_bwd_{}", dt.suffix()),
            grid,
            (BLOCK, 1, 1),
            0,
            &mut cuda_args![dgate, dup, dout, gate, up, n_, h_, ld_, kind, vec],
        )
    }
}

/// `act_clamped_fwd_{dtype}` in `module` (which must link `activation.cu`): GPT-OSS's clamped
/// SwiGLU (the CPU's [`forward_clamped`](super::forward_clamped)), out `[rows, hidden]` from
/// gate/up rows of stride `ld`. No launch for zero rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn act_clamped_fwd(
    module: &Launcher,
    dt: Dtype,
    clamp: &SwigluClamp,
    out: DevPtr,
    gate: DevPtr,
    up: DevPtr,
    rows: usize,
    hidden: usize,
    ld: usize,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let (n_, h_, ld_) = (int(rows), int(hidden), int(ld));
    let (alpha, limit) = (clamp.alpha as f32, clamp.limit as f32);
    // SAFETY: the locals match `act_clamped_fwd`'s C signature; the caller sizes out
    // `[rows, hidden]` and gate/up `[rows, ld]`.
    unsafe {
        module.launch(
            &format!("act_clamped_fwd_{}", dt.suffix()),
            grid(rows * hidden, BLOCK),
            (BLOCK, 1, 1),
            0,
            &mut cuda_args![out, gate, up, n_, h_, ld_, alpha, limit],
        )
    }
}

/// `act_clamped_bwd_{dtype}` in `module`: the backward of [`act_clamped_fwd`] (the CPU's
/// [`backward_clamped`](super::backward_clamped)), dgate and dup written with the inputs' row
/// stride `ld`. No launch for zero rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn act_clamped_bwd(
    module: &Launcher,
    dt: Dtype,
    clamp: &SwigluClamp,
    dgate: DevPtr,
    dup: DevPtr,
    dout: DevPtr,
    gate: DevPtr,
    up: DevPtr,
    rows: usize,
    hidden: usize,
    ld: usize,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let (n_, h_, ld_) = (int(rows), int(hidden), int(ld));
    let (alpha, limit) = (clamp.alpha as f32, clamp.limit as f32);
    // SAFETY: as in `act_clamped_fwd`; dgate/dup `[rows, ld]`, dout `[rows, hidden]`.
    unsafe {
        module.launch(
            &format!("act_clamped_bwd_{}", dt.suffix()),
            grid(rows * hidden, BLOCK),
            (BLOCK, 1, 1),
            0,
            &mut cuda_args![dgate, dup, dout, gate, up, n_, h_, ld_, alpha, limit],
        )
    }
}

/// The grid of an activation kernel and its scalar arguments `[rows, hidden, ld, kind, vec]`:
/// one thread per 16-byte vector (8 bf16, 4 f32; `vec` 1) when the row width and stride are
/// multiples of it and every pointer (0: unused) is 16-byte aligned, else one per element.
fn launch_shape(
    dt: Dtype,
    act: Act,
    rows: usize,
    hidden: usize,
    ld: usize,
    ptrs: &[DevPtr],
) -> ((u32, u32, u32), [i32; 5]) {
    let per = 16 / dt.bytes();
    let aligned = ptrs.iter().all(|&p| p % 16 == 0);
    let per = if hidden.is_multiple_of(per) && ld.is_multiple_of(per) && aligned {
        per
    } else {
        1
    };
    let args = [
        int(rows),
        int(hidden),
        int(ld),
        act as i32,
        i32::from(per > 1),
    ];
    (grid(rows * hidden / per, BLOCK), args)
}

impl Kernels {
    /// `act_fwd_{dtype}`: out `[N, hidden]` = act(gate) (* up); gate/up rows have stride `ld`.
    #[allow(clippy::too_many_arguments)]
    pub fn act_fwd(
        &self,
        dt: Dtype,
        act: Act,
        out: DevPtr,
        gate: DevPtr,
        up: DevPtr,
        rows: usize,
        hidden: usize,
        ld: usize,
    ) -> Result<()> {
        act_fwd(self.launcher(), dt, act, out, gate, up, rows, hidden, ld)
    }

    /// `act_bwd_{dtype}`: dgate (and dup for gated kinds), rows of stride `ld`.
    #[allow(clippy::too_many_arguments)]
    pub fn act_bwd(
        &self,
        dt: Dtype,
        act: Act,
        dgate: DevPtr,
        dup: DevPtr,
        dout: DevPtr,
        gate: DevPtr,
        up: DevPtr,
        rows: usize,
        hidden: usize,
        ld: usize,
    ) -> Result<()> {
        act_bwd(
            self.launcher(),
            dt,
            act,
            dgate,
            dup,
            dout,
            gate,
            up,
            rows,
            hidden,
            ld,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_launches_the_code_the_instance_defines() {
        // The kernel's `kind` for a layer must be the `MS_ACT` its instance carries, or the
        // specialised activation would never run (or run another kind's body).
        for k in MlpKind::ALL {
            let act = Act::from(k);
            assert_eq!(act as i32, act_code(k), "{k:?}");
            assert_eq!(act.is_gated(), k.is_gated(), "{k:?}");
        }
    }
}
