//! The harness the GPU test binaries share: the device (or a printed skip), random inputs from
//! a clock-seeded generator (the seed is printed), bf16 rounding, device matrices of either dtype
//! holding values exact in it, and the norm-wise relative error check that prints one `PARITY`
//! line per comparison, and the GELU references of the GEMM epilogues. Used by `cuda_kernels`,
//! `cuda_reduce`, `cuda_cudnn`, `cuda_epilogue`, `cuda_hopper_gemm` and
//! `cuda_moe`; `cuda_decode`, `cuda_train_state` and `cuda_walk` take the device from it.

use modelspec_runtime::cuda::{Dtype, DtypeExt, Gpu, GpuBuf, Kernels};
use std::sync::Arc;

/// GELU, tanh form (GPT-2's), in f64: the reference for the GEMM epilogues (cuBLASLt's and the
/// own Hopper GEMM's).
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + (0.7978845608028654 * (x + 0.044715 * x * x * x)).tanh())
}

/// Its derivative (the DGELU epilogue's reference).
pub fn gelu_grad(x: f64) -> f64 {
    let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    let t = u.tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
}

/// Both dtypes, in the order the tests run them.
pub const DTYPES: [Dtype; 2] = [Dtype::F32, Dtype::Bf16];

/// Device 0, or `None` after printing "skipping: no CUDA device (...)".
pub fn device() -> Option<Arc<Gpu>> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            println!("skipping: no CUDA device ({e})");
            None
        }
    }
}

/// Device 0 and the kernel library `name` with attention instantiated for `head_dims`, or
/// `None` without a device (see [`device`]). A library that fails to compile panics.
pub fn device_and_kernels(name: &str, head_dims: &[usize]) -> Option<(Arc<Gpu>, Kernels)> {
    let gpu = device()?;
    let kernels =
        Kernels::load(&gpu, name, head_dims, Default::default()).expect("kernel library compiles");
    Some((gpu, kernels))
}

/// xorshift64: seeded from the clock ([`Rng::fresh`]) or given its state (nonzero).
pub struct Rng(pub u64);

impl Rng {
    /// A generator seeded from the clock; prints `{name}: seed {seed}`.
    pub fn fresh(name: &str) -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        println!("{name}: seed {seed}");
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// `n` values ~ normal(0, scale).
    pub fn normal_vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.normal() * scale).collect()
    }

    /// `n` values uniform in [center - half_width, center + half_width).
    pub fn uniform_vec(&mut self, n: usize, center: f64, half_width: f64) -> Vec<f64> {
        (0..n)
            .map(|_| (2.0 * self.uniform() - 1.0) * half_width + center)
            .collect()
    }
}

/// `x` rounded to the nearest bf16 (ties to even; NaN stays a quiet NaN).
pub fn to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// The f32 a bf16 holds.
pub fn from_bf16(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// A device buffer of either dtype.
pub enum Buf {
    /// f32 elements.
    F32(GpuBuf<f32>),
    /// bf16 elements (their bits).
    Bf16(GpuBuf<u16>),
}

/// A device tensor of either dtype, starting `offset` elements into its buffer, holding values
/// that are exactly representable in the dtype; `host` is those values in f64 (what the
/// reference sees).
pub struct Mat {
    /// The whole buffer, offset elements included.
    pub buf: Buf,
    /// Elements before the tensor's first (an offset of 1 or 3 is not 16-byte aligned).
    pub offset: usize,
    /// The tensor's values as the dtype stores them.
    pub host: Vec<f64>,
}

impl Mat {
    /// `vals` rounded to `dt`, at the start of a fresh buffer.
    pub fn new(gpu: &Gpu, dt: Dtype, vals: &[f64]) -> Mat {
        Mat::new_at(gpu, dt, vals, 0)
    }

    /// `vals` rounded to `dt`, `offset` elements (zeros) into a fresh buffer.
    pub fn new_at(gpu: &Gpu, dt: Dtype, vals: &[f64], offset: usize) -> Mat {
        let all: Vec<f64> = std::iter::repeat_n(0.0, offset)
            .chain(vals.iter().copied())
            .collect();
        let (buf, host) = match dt {
            Dtype::F32 => {
                let v: Vec<f32> = all.iter().map(|&x| x as f32).collect();
                let host = v[offset..].iter().map(|&x| x as f64).collect();
                (Buf::F32(gpu.upload(&v).unwrap()), host)
            }
            Dtype::Bf16 => {
                let v: Vec<u16> = all.iter().map(|&x| to_bf16(x as f32)).collect();
                let host = v[offset..].iter().map(|&x| from_bf16(x) as f64).collect();
                (Buf::Bf16(gpu.upload(&v).unwrap()), host)
            }
        };
        Mat { buf, offset, host }
    }

    /// A poisoned output (NaN everywhere), so unwritten elements fail the checks.
    pub fn poison(gpu: &Gpu, dt: Dtype, n: usize) -> Mat {
        Mat::new(gpu, dt, &vec![f64::NAN; n])
    }

    /// The dtype of the buffer.
    pub fn dtype(&self) -> Dtype {
        match self.buf {
            Buf::F32(_) => Dtype::F32,
            Buf::Bf16(_) => Dtype::Bf16,
        }
    }

    /// The device address of element `elem` of the tensor.
    pub fn at(&self, elem: usize) -> u64 {
        let base = match &self.buf {
            Buf::F32(b) => b.ptr(),
            Buf::Bf16(b) => b.ptr(),
        };
        base + ((self.offset + elem) * self.dtype().bytes()) as u64
    }

    /// The device address of the tensor's first element.
    pub fn ptr(&self) -> u64 {
        self.at(0)
    }

    /// The tensor's values on the device, in f64.
    pub fn get(&self, gpu: &Gpu) -> Vec<f64> {
        let all: Vec<f64> = match &self.buf {
            Buf::F32(b) => gpu.download(b).unwrap().iter().map(|&x| x as f64).collect(),
            Buf::Bf16(b) => gpu
                .download(b)
                .unwrap()
                .iter()
                .map(|&x| from_bf16(x) as f64)
                .collect(),
        };
        all[self.offset..].to_vec()
    }
}

/// `vals` as an f32 device buffer.
pub fn f32buf(gpu: &Gpu, vals: &[f64]) -> GpuBuf<f32> {
    gpu.upload(&vals.iter().map(|&x| x as f32).collect::<Vec<_>>())
        .unwrap()
}

/// An f32 device buffer's values, in f64.
pub fn getf(gpu: &Gpu, b: &GpuBuf<f32>) -> Vec<f64> {
    gpu.download(b).unwrap().iter().map(|&x| x as f64).collect()
}

/// `||got - want|| / ||want||`, the denominator's square at least `den_floor`; infinite when
/// `got` holds a non-finite value.
pub fn rel_err_floor(got: &[f64], want: &[f64], den_floor: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num += (g - w) * (g - w);
        den += w * w;
    }
    (num / den.max(den_floor)).sqrt()
}

/// `||got - want|| / ||want||` (infinite when `got` holds a non-finite value).
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    rel_err_floor(got, want, 1e-300)
}

/// The kernels' tolerance of a dtype: f32 1e-4, bf16 1e-2.
pub fn tol(dt: Dtype) -> f64 {
    match dt {
        Dtype::F32 => 1e-4,
        Dtype::Bf16 => 1e-2,
    }
}

/// Prints `PARITY {what} {dtype}: rel err ...` and asserts the error is within [`tol`]`(dt)`.
pub fn check(what: &str, dt: Dtype, got: &[f64], want: &[f64]) {
    let e = rel_err(got, want);
    println!("PARITY {what} {}: rel err {e:.3e}", dt.suffix());
    assert!(
        e <= tol(dt),
        "{what} ({}): relative error {e:.3e} above {:.0e}",
        dt.suffix(),
        tol(dt)
    );
}

/// Prints `PARITY {what}: rel err ...` for an error `e` and asserts it is within `tol`.
pub fn check_err(what: &str, tol: f64, e: f64) {
    println!("PARITY {what}: rel err {e:.3e}");
    assert!(e <= tol, "{what}: relative error {e:.3e} above {tol:.0e}");
}
