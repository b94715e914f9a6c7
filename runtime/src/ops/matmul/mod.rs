//! Matrix products through the `gemm` family's f32 and f64 kernels (`gemm-f32`, `gemm-f64`): the
//! only place the runtime multiplies matrices.
//!
//! `c[m, n] = beta·c + alpha · a[m, k] · b[k, n]` over strided views (`beta` is 0 or 1). Every
//! other op calls these; none has its own matmul loop. Inside a rayon worker (attention's per-head
//! tasks) gemm runs single-threaded, elsewhere it uses rayon's pool. gemm splits only the output
//! across threads, so results do not depend on scheduling.
//!
//! The folder holds the op on both back ends: this file (the CPU's strided [`View`] products) and
//! `cuda.rs` (cuBLASLt's, over the same row-major convention: [`cuda::RowMajorGemm`]).

use std::any::TypeId;

use gemm_common::Parallelism;

use crate::tensor::Float;

pub mod cuda;

/// A strided read-only matrix view: element `(r, c)` at `ptr[r * rs + c * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a, T> {
    /// The backing slice.
    pub data: &'a [T],
    /// Offset of element (0, 0).
    pub offset: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, T> View<'a, T> {
    /// A contiguous row-major `[rows, cols]` matrix.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        View {
            data,
            offset: 0,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a contiguous row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        View {
            data,
            offset: 0,
            rs: 1,
            cs: cols,
        }
    }
    /// A view with row stride `rs`, column stride `cs`, starting at `offset`.
    pub fn strided(data: &'a [T], offset: usize, rs: usize, cs: usize) -> Self {
        View {
            data,
            offset,
            rs,
            cs,
        }
    }
    fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            let last = self.offset + (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "matmul view out of bounds: {last} >= {}",
                self.data.len()
            );
        }
    }
}

thread_local! {
    /// How many [`serial_gemms`] bodies this thread is inside.
    static SERIAL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with this thread's products single-threaded: for the bodies of parallel loops that
/// each compute small products (attention's per-head loops), where splitting every product
/// again only adds scheduling. Elsewhere products use the whole pool, also when called from
/// inside it (a step run on a pool thread: see [`crate::exec::Executor::loss_and_grads`]).
pub fn serial_gemms<R>(f: impl FnOnce() -> R) -> R {
    /// Leaves the serial section also when `f` panics (rayon may catch it and go on).
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            SERIAL.with(|d| d.set(d.get() - 1));
        }
    }
    SERIAL.with(|d| d.set(d.get() + 1));
    let _leave = Leave;
    f()
}

fn parallelism() -> Parallelism {
    if SERIAL.with(|d| d.get()) > 0 {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    }
}

/// `c = (accumulate ? c : 0) + alpha · a · b` with `a: [m, k]`, `b: [k, n]`, `c: [m, n]` at row
/// stride `c_rs` starting at `c_offset` (column stride 1).
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: View<'_, T>,
    b: View<'_, T>,
    c: &mut [T],
    c_offset: usize,
    c_rs: usize,
    accumulate: bool,
    alpha: T,
) {
    if m == 0 || n == 0 {
        return;
    }
    let c_last = c_offset + (m - 1) * c_rs + (n - 1);
    assert!(c_last < c.len(), "matmul output out of bounds");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[c_offset + r * c_rs..c_offset + r * c_rs + n].fill(T::ZERO);
            }
        }
        return;
    }
    // SAFETY: `c`'s extent was checked above; it is borrowed mutably, so the output does not
    // alias the inputs.
    unsafe {
        views_product(
            m,
            n,
            k,
            a,
            b,
            c.as_mut_ptr().add(c_offset),
            c_rs,
            accumulate,
            alpha,
        )
    }
}

/// [`matmul_raw`] over two checked views into `c` (m, n, k > 0), shared by [`matmul`] and
/// [`mm_nt_new`].
///
/// # Safety
/// `c` must be valid for writes of the `[m, n]` block at row stride `c_rs` (for reads too when
/// `accumulate`), written by no one else and aliasing neither view.
#[allow(clippy::too_many_arguments)]
unsafe fn views_product<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: View<'_, T>,
    b: View<'_, T>,
    c: *mut T,
    c_rs: usize,
    accumulate: bool,
    alpha: T,
) {
    a.check(m, k);
    b.check(k, n);
    // SAFETY: the views' bounds were checked just above; the caller's promise on `c`.
    unsafe {
        matmul_raw(
            m,
            n,
            k,
            c,
            c_rs,
            a.data.as_ptr().add(a.offset),
            a.rs,
            a.cs,
            b.data.as_ptr().add(b.offset),
            b.rs,
            b.cs,
            accumulate,
            alpha,
        )
    }
}

/// The raw form of [`matmul`] for callers that write disjoint blocks of one buffer from several
/// threads (attention).
///
/// # Safety
/// All pointers must be valid for the strided extents `[m, k]`, `[k, n]`, `[m, n]`; the output
/// block must not be written concurrently by anyone else nor alias an input.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_raw<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: *mut T,
    c_rs: usize,
    a: *const T,
    a_rs: usize,
    a_cs: usize,
    b: *const T,
    b_rs: usize,
    b_cs: usize,
    accumulate: bool,
    alpha: T,
) {
    // SAFETY: the caller's promise on the extents; `T` is f32 or f64 (checked), so the casts
    // only rename the pointers' and scalars' type.
    unsafe {
        macro_rules! call {
            ($kernels:path, $t:ty) => {
                $kernels()(
                    m,
                    n,
                    k,
                    c as *mut $t,
                    1,
                    c_rs as isize,
                    accumulate,
                    a as *const $t,
                    a_cs as isize,
                    a_rs as isize,
                    b as *const $t,
                    b_cs as isize,
                    b_rs as isize,
                    *(&T::ONE as *const T as *const $t),
                    *(&alpha as *const T as *const $t),
                    false,
                    false,
                    false,
                    parallelism(),
                )
            };
        }
        if TypeId::of::<T>() == TypeId::of::<f32>() {
            call!(gemm_f32::gemm::f32::get_gemm_fn, f32)
        } else if TypeId::of::<T>() == TypeId::of::<f64>() {
            call!(gemm_f64::gemm::f64::get_gemm_fn, f64)
        } else {
            unreachable!("matmul on {}: only f32 and f64", std::any::type_name::<T>())
        }
    }
}

/// `c[m, n] (+)= alpha · a[m, k] · b[n, k]ᵀ`, all contiguous row-major.
#[allow(clippy::too_many_arguments)]
pub fn mm_nt<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    accumulate: bool,
    alpha: T,
) {
    matmul(
        m,
        n,
        k,
        View::rows(a, k),
        View::transposed(b, k),
        c,
        0,
        n,
        accumulate,
        alpha,
    );
}

/// `a[m, k] · b[n, k]ᵀ` into a new `[m, n]` buffer, all contiguous row-major. Like [`mm_nt`]
/// into `vec![0; m·n]`, with the same bits, but the buffer is never zeroed: a product that does
/// not accumulate writes every output element without reading it (on the tiny CPU model the
/// zeroing of fresh outputs was ~5% of a step).
pub fn mm_nt_new<T: Float>(m: usize, n: usize, k: usize, a: &[T], b: &[T]) -> Vec<T> {
    if m == 0 || n == 0 || k == 0 {
        return vec![T::ZERO; m * n];
    }
    let mut c = Vec::with_capacity(m * n);
    // SAFETY: `c` has room for the `[m, n]` output at row stride n and aliases nothing. With
    // `accumulate` false gemm writes each of the m·n elements and reads none of them (m, n, k >
    // 0), so all are initialised before `set_len`.
    unsafe {
        let (av, bv) = (View::rows(a, k), View::transposed(b, k));
        views_product(m, n, k, av, bv, c.as_mut_ptr(), n, false, T::ONE);
        c.set_len(m * n);
    }
    c
}

/// `c[m, n] (+)= alpha · a[m, k] · b[k, n]`, all contiguous row-major.
#[allow(clippy::too_many_arguments)]
pub fn mm_nn<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    accumulate: bool,
    alpha: T,
) {
    matmul(
        m,
        n,
        k,
        View::rows(a, k),
        View::rows(b, n),
        c,
        0,
        n,
        accumulate,
        alpha,
    );
}

/// `c[m, n] (+)= alpha · a[k, m]ᵀ · b[k, n]`, all contiguous row-major.
#[allow(clippy::too_many_arguments)]
pub fn mm_tn<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    accumulate: bool,
    alpha: T,
) {
    matmul(
        m,
        n,
        k,
        View::transposed(a, m),
        View::rows(b, n),
        c,
        0,
        n,
        accumulate,
        alpha,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn products_match_naive() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
        let want = naive(m, n, k, &a, &b);
        let mut c = vec![0.0; m * n];
        mm_nn(m, n, k, &a, &b, &mut c, false, 1.0);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }
        // bᵀ stored as [n, k]
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut c2 = vec![1.0; m * n];
        mm_nt(m, n, k, &a, &bt, &mut c2, true, 2.0);
        for (x, y) in c2.iter().zip(&want) {
            assert!((x - (1.0 + 2.0 * y)).abs() < 1e-12);
        }
        let at: Vec<f64> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let mut c3 = vec![0.0; m * n];
        mm_tn(m, n, k, &at, &b, &mut c3, false, 1.0);
        for (x, y) in c3.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }
    }

    /// The unzeroed product equals the one into zeros to the bit, at sizes with partial tiles and
    /// the pool's split (large enough for gemm to go parallel), and at the empty edges.
    #[test]
    fn new_buffer_product_equals_the_zeroed_one() {
        for (m, n, k) in [
            (67, 131, 45),
            (1024, 320, 192),
            (3, 0, 4),
            (0, 5, 2),
            (4, 5, 0),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut want = vec![0.0f32; m * n];
            mm_nt(m, n, k, &a, &b, &mut want, false, 1.0);
            let got = mm_nt_new(m, n, k, &a, &b);
            assert_eq!(got.len(), m * n);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{m}x{n}x{k}");
        }
    }
}
