//! GPU kernels against CPU f64 references, on fresh random inputs each run (the seed is printed).
//!
//! Tolerances, as ||gpu - ref|| / ||ref|| over the whole output:
//! - f32: 1e-4. The kernels compute in f32 (fast-math exp/tanh), expected ~1e-6.
//! - bf16: 1e-2. Inputs are rounded to bf16 before the reference sees them, so only the kernel's
//!   own roundings count: each stored bf16 output carries up to 2^-9 ~ 2e-3 relative error, and
//!   attention also rounds P and dS to bf16 before their tensor-core products; these errors are
//!   independent across elements, so the norm-wise error stays near 2-4e-3. 1e-2 leaves margin
//!   while still catching any indexing or masking bug (those give errors of order 1).
//!
//! Without a CUDA driver or device every test prints "skipping: no CUDA device" and passes.
//!
//! One module per kernel family (`norm_rope`, `activations`, `embed_loss_adamw`, `gemm`,
//! `attention`); the harness (device setup, random inputs, device tensors, the tolerance check) is
//! here.

#[path = "cuda_kernels/activations.rs"]
mod activations;
#[path = "cuda_kernels/attention.rs"]
mod attention;
#[path = "cuda_kernels/embed_loss_adamw.rs"]
mod embed_loss_adamw;
#[path = "cuda_kernels/gemm.rs"]
mod gemm;
#[path = "cuda_kernels/norm_rope.rs"]
mod norm_rope;

use modelspec_runtime::cuda::{Dtype, DtypeExt, Gpu, GpuBuf, Kernels};
use std::sync::Arc;

// ---------- harness ----------

fn setup() -> Option<(Arc<Gpu>, Kernels)> {
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("skipping: no CUDA device ({e})");
            return None;
        }
    };
    let kernels = Kernels::load(&gpu, "test_library", &[64, 128, 256], Default::default())
        .expect("kernel library compiles");
    Some((gpu, kernels))
}

struct Rng(u64);
impl Rng {
    fn fresh(name: &str) -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        println!("{name}: seed {seed}");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

fn to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}
fn from_bf16(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// A device tensor of either dtype holding values that are exactly representable in it; `host`
/// is those values in f64 (what the reference sees).
struct T {
    dt: Dtype,
    f: Option<GpuBuf<f32>>,
    h: Option<GpuBuf<u16>>,
    host: Vec<f64>,
}
impl T {
    fn new(gpu: &Gpu, dt: Dtype, vals: &[f64]) -> T {
        match dt {
            Dtype::F32 => {
                let v: Vec<f32> = vals.iter().map(|&x| x as f32).collect();
                let host = v.iter().map(|&x| x as f64).collect();
                T {
                    dt,
                    f: Some(gpu.upload(&v).unwrap()),
                    h: None,
                    host,
                }
            }
            Dtype::Bf16 => {
                let v: Vec<u16> = vals.iter().map(|&x| to_bf16(x as f32)).collect();
                let host = v.iter().map(|&x| from_bf16(x) as f64).collect();
                T {
                    dt,
                    f: None,
                    h: Some(gpu.upload(&v).unwrap()),
                    host,
                }
            }
        }
    }
    /// Poisoned output buffer (NaN everywhere) so unwritten elements fail the check.
    fn poison(gpu: &Gpu, dt: Dtype, n: usize) -> T {
        T::new(gpu, dt, &vec![f64::NAN; n])
    }
    fn ptr(&self) -> u64 {
        match self.dt {
            Dtype::F32 => self.f.as_ref().unwrap().ptr(),
            Dtype::Bf16 => self.h.as_ref().unwrap().ptr(),
        }
    }
    fn get(&self, gpu: &Gpu) -> Vec<f64> {
        match self.dt {
            Dtype::F32 => gpu
                .download(self.f.as_ref().unwrap())
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect(),
            Dtype::Bf16 => gpu
                .download(self.h.as_ref().unwrap())
                .unwrap()
                .iter()
                .map(|&x| from_bf16(x) as f64)
                .collect(),
        }
    }
}

fn tol(dt: Dtype) -> f64 {
    match dt {
        Dtype::F32 => 1e-4,
        Dtype::Bf16 => 1e-2,
    }
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut num = 0.0;
    let mut den = 0.0;
    for (g, w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num += (g - w) * (g - w);
        den += w * w;
    }
    (num / den.max(1e-300)).sqrt()
}

fn check(what: &str, dt: Dtype, got: &[f64], want: &[f64]) {
    let e = rel_err(got, want);
    println!("PARITY {what} {}: rel err {e:.3e}", dt.suffix());
    assert!(
        e <= tol(dt),
        "{what} ({}): relative error {e:.3e} above {:.0e}",
        dt.suffix(),
        tol(dt)
    );
}

fn f32buf(gpu: &Gpu, vals: &[f64]) -> GpuBuf<f32> {
    gpu.upload(&vals.iter().map(|&x| x as f32).collect::<Vec<_>>())
        .unwrap()
}
fn getf(gpu: &Gpu, b: &GpuBuf<f32>) -> Vec<f64> {
    gpu.download(b).unwrap().iter().map(|&x| x as f64).collect()
}

const DTYPES: [Dtype; 2] = [Dtype::F32, Dtype::Bf16];
