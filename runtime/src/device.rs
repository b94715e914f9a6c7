//! Devices a model runs on.
//!
//! The CPU is the reference backend and always available. The CUDA side is filled in by
//! `crate::cuda`; until a CUDA backend is compiled in and a driver is found, [`Device::cuda`]
//! returns a clean error and [`Device::best`] falls back to the CPU.

use crate::error::{Error, Result};

/// Where tensors live and ops run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    /// The host CPU (threads through rayon and gemm).
    Cpu,
    /// An NVIDIA GPU by ordinal.
    Cuda(usize),
}

impl Device {
    /// The CPU device.
    ///
    /// ```
    /// let d = modelspec_runtime::Device::cpu();
    /// assert!(d.is_cpu());
    /// ```
    pub fn cpu() -> Device {
        Device::Cpu
    }

    /// The CUDA device `ordinal`, or an error when no usable CUDA backend or driver is present.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        crate::cuda::probe(ordinal).map_err(|e| Error::Device(e.to_string()))?;
        Ok(Device::Cuda(ordinal))
    }

    /// The first CUDA device when one is usable, else the CPU.
    pub fn best() -> Device {
        Device::cuda(0).unwrap_or(Device::Cpu)
    }

    /// True for [`Device::Cpu`].
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
