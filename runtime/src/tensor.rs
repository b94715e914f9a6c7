//! Tensors and parameter maps.
//!
//! A [`Tensor`] is an owned, row-major array of a [`Float`] (`f32` for running models, `f64` for
//! finite-difference gradient checks: every op is generic, so both precisions run the same code).
//! [`Params`] maps canonical parameter names (see `modelspec_dsl::params`) to tensors; gradients
//! use the same type.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use modelspec_dsl::ir::ModelSpec;
use modelspec_dsl::params::parameters;

use crate::error::{Error, Result};
use crate::rng;

/// The element types ops run in: `f32` and `f64`.
pub trait Float:
    Copy
    + Send
    + Sync
    + 'static
    + Default
    + Debug
    + PartialEq
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// The most negative finite value (used as a mask value before softmax).
    const NEG_INF: Self;
    /// Rounds an `f64` to this type.
    fn from_f64(v: f64) -> Self;
    /// Widens to `f64`.
    fn to_f64(self) -> f64;
    /// e^x.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// The error function.
    fn erf(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// The larger of two values.
    fn max(self, other: Self) -> Self;
    /// True unless NaN or infinite.
    fn is_finite(self) -> bool;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn exp(self) -> Self {
        f32::exp(self)
    }
    #[inline]
    fn ln(self) -> Self {
        f32::ln(self)
    }
    #[inline]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline]
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    #[inline]
    fn erf(self) -> Self {
        libm::erff(self)
    }
    #[inline]
    fn abs(self) -> Self {
        f32::abs(self)
    }
    #[inline]
    fn max(self, other: Self) -> Self {
        f32::max(self, other)
    }
    #[inline]
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    #[inline]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline]
    fn ln(self) -> Self {
        f64::ln(self)
    }
    #[inline]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline]
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    #[inline]
    fn erf(self) -> Self {
        libm::erf(self)
    }
    #[inline]
    fn abs(self) -> Self {
        f64::abs(self)
    }
    #[inline]
    fn max(self, other: Self) -> Self {
        f64::max(self, other)
    }
    #[inline]
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
}

/// An owned, row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor<T: Float = f32> {
    shape: Vec<usize>,
    data: Vec<T>,
}

impl<T: Float> Tensor<T> {
    /// A tensor of zeros.
    ///
    /// ```
    /// let t = modelspec_runtime::Tensor::<f32>::zeros(&[2, 3]);
    /// assert_eq!(t.numel(), 6);
    /// ```
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![T::ZERO; shape.iter().product()],
        }
    }

    /// Wraps `data` with `shape`; errors when the element count differs.
    pub fn from_vec(shape: &[usize], data: Vec<T>) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(Error::ShapeMismatch {
                shape: shape.to_vec(),
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The elements, row-major, mutable.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// The element vector itself (for moving buffers in and out without copying).
    pub(crate) fn vec_mut(&mut self) -> &mut Vec<T> {
        &mut self.data
    }

    /// Takes the elements out.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != self.data.len() {
            return Err(Error::ShapeMismatch {
                shape: shape.to_vec(),
                expected,
                got: self.data.len(),
            });
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Converts every element to another float type (rounding when narrowing).
    pub fn cast<U: Float>(&self) -> Tensor<U> {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|v| U::from_f64(v.to_f64())).collect(),
        }
    }
}

/// Parameters (or their gradients) by canonical name, sorted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params<T: Float = f32> {
    /// The tensors, keyed by canonical name (`layers.0.attn.q.weight`, ...).
    pub tensors: BTreeMap<String, Tensor<T>>,
}

impl<T: Float> Params<T> {
    /// An empty map.
    pub fn new() -> Self {
        Params {
            tensors: BTreeMap::new(),
        }
    }

    /// Zeros of every parameter of `spec`, shaped as `modelspec_dsl::params::parameters` says.
    pub fn zeros(spec: &ModelSpec) -> Self {
        let mut tensors = BTreeMap::new();
        for p in parameters(spec) {
            let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            tensors.insert(p.name, Tensor::zeros(&shape));
        }
        Params { tensors }
    }

    /// Deterministic initialisation: linear and embedding weights ~ normal(0, 0.02); norm weights
    /// `1 - offset` (so the effective scale `offset + w` starts at 1); biases 0. Element `j` of
    /// parameter `name` depends only on `(seed, name, j)`.
    pub fn init(spec: &ModelSpec, seed: u64) -> Self {
        let norm_offset = norm_offsets(spec);
        let mut tensors = BTreeMap::new();
        for p in parameters(spec) {
            let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let n: usize = shape.iter().product();
            let data: Vec<T> = if p.name.ends_with(".bias") {
                vec![T::ZERO; n]
            } else if let Some(offset) = norm_offset.get(p.name.as_str()) {
                vec![T::from_f64(1.0 - offset); n]
            } else {
                let stream = rng::key(&[seed, rng::hash_str(&p.name)]);
                (0..n)
                    .map(|j| T::from_f64(0.02 * rng::normal(stream, j as u64)))
                    .collect()
            };
            tensors.insert(p.name, Tensor { shape, data });
        }
        Params { tensors }
    }

    /// The tensor `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor<T>> {
        self.tensors.get(name)
    }

    /// The tensor `name`, mutable.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor<T>> {
        self.tensors.get_mut(name)
    }

    /// The tensor `name`, or [`Error::MissingParam`].
    pub fn require(&self, name: &str) -> Result<&Tensor<T>> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::MissingParam(name.to_string()))
    }

    /// Inserts (or replaces) a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor<T>) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Names and tensors in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor<T>)> {
        self.tensors.iter()
    }

    /// Total number of elements.
    pub fn numel(&self) -> usize {
        self.tensors.values().map(|t| t.numel()).sum()
    }

    /// Every tensor converted to another float type.
    pub fn cast<U: Float>(&self) -> Params<U> {
        Params {
            tensors: self
                .tensors
                .iter()
                .map(|(k, v)| (k.clone(), v.cast()))
                .collect(),
        }
    }

    /// Checks that every parameter of `spec` is present with the right shape.
    pub fn check(&self, spec: &ModelSpec) -> Result<()> {
        self.check_params(spec)
    }
}

/// Parameters by canonical name, wherever they are stored: an owned [`Params`], or tensors
/// borrowed from elsewhere (a generated model lends its typed fields as a
/// `BTreeMap<String, &Tensor>`), so the executor reads them without copying.
pub trait ParamSource<T: Float> {
    /// The tensor `name`, if present.
    fn param(&self, name: &str) -> Option<&Tensor<T>>;

    /// Checks that every parameter of `spec` is present with the right shape.
    fn check_params(&self, spec: &ModelSpec) -> Result<()> {
        for p in parameters(spec) {
            let expected: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let t = self
                .param(&p.name)
                .ok_or_else(|| Error::MissingParam(p.name.clone()))?;
            if t.shape() != expected.as_slice() {
                return Err(Error::ParamShape {
                    name: p.name,
                    got: t.shape().to_vec(),
                    expected,
                });
            }
        }
        Ok(())
    }
}

impl<T: Float> ParamSource<T> for Params<T> {
    fn param(&self, name: &str) -> Option<&Tensor<T>> {
        self.tensors.get(name)
    }
}

impl<T: Float> ParamSource<T> for BTreeMap<String, &Tensor<T>> {
    fn param(&self, name: &str) -> Option<&Tensor<T>> {
        self.get(name).copied()
    }
}

/// Norm weight names of `spec` with the offset their norm adds.
fn norm_offsets(spec: &ModelSpec) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut add = |prefix: String, offset: f64| {
        out.insert(format!("{prefix}.weight"), offset);
    };
    for layer in &spec.layers {
        let i = layer.index;
        let off = layer.block.norm.offset;
        for n in ["attn_norm", "attn_post_norm", "mlp_norm", "mlp_post_norm"] {
            add(format!("layers.{i}.{n}"), off);
        }
        if let Some(qk) = &layer.attention.qk_norm {
            add(format!("layers.{i}.attn.q_norm"), qk.norm.offset);
            add(format!("layers.{i}.attn.k_norm"), qk.norm.offset);
        }
    }
    if let Some(n) = &spec.final_norm {
        add("final_norm".into(), n.offset);
    }
    out
}
