//! The MLP activation launches (`act_fwd` / `act_bwd` of `pointwise.cu`), shared by every module
//! that links the pointwise kernels: the kernel library ([`super::Kernels`]) and the MoE module.

use super::Act;
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt};
use crate::cuda::launch::{BLOCK, Launcher, grid, int};
use crate::cuda_args;

/// `act_fwd_{dtype}` in `module` (which must link `pointwise.cu`): out `[rows, hidden]` =
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
    let (n_, h_, ld_, kind) = (int(rows), int(hidden), int(ld), act as i32);
    let per = vector(dt, hidden, ld, &[out, gate, up]);
    let vec = i32::from(per > 1);
    // SAFETY: the locals match `act_fwd`'s C signature; the caller sizes out `[rows, hidden]` and
    // gate/up `[rows, ld]` (the kernel reads `rows * hidden` elements of each).
    unsafe {
        module.launch(
            &format!("act_fwd_{}", dt.suffix()),
            grid(rows * hidden / per, BLOCK),
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
    let (n_, h_, ld_, kind) = (int(rows), int(hidden), int(ld), act as i32);
    let per = vector(dt, hidden, ld, &[dgate, dup, dout, gate, up]);
    let vec = i32::from(per > 1);
    // SAFETY: as in `act_fwd`; dgate/dup share the inputs' row stride `ld`.
    unsafe {
        module.launch(
            &format!("act_bwd_{}", dt.suffix()),
            grid(rows * hidden / per, BLOCK),
            (BLOCK, 1, 1),
            0,
            &mut cuda_args![dgate, dup, dout, gate, up, n_, h_, ld_, kind, vec],
        )
    }
}

/// Elements per thread of the activation kernels: a 16-byte vector (8 bf16, 4 f32) when the row
/// width and stride are multiples of it and every pointer (0: unused) is 16-byte aligned, else 1.
fn vector(dt: Dtype, hidden: usize, ld: usize, ptrs: &[DevPtr]) -> usize {
    let per = 16 / dt.bytes();
    let aligned = ptrs.iter().all(|&p| p % 16 == 0);
    if hidden % per == 0 && ld % per == 0 && aligned {
        per
    } else {
        1
    }
}
