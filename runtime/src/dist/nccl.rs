//! [`NcclComm`]: one rank per GPU over NCCL (cudarc's bindings).
//!
//! Ranks of one host (`modelspec train --gpus N`) are threads: rank 0 creates the unique id
//! ([`NcclComm::unique_id`]) and every rank's thread calls [`NcclComm::new`] with it on its own
//! GPU (NCCL's init blocks until all ranks have joined, so the calls must run concurrently). Ranks
//! on several hosts get the id through [`super::rendezvous`]. A world of one is a valid
//! communicator and runs the same code.
//!
//! Two faces: the [`Communicator`] methods take host buffers (copied to the GPU, reduced, copied
//! back; for trainers whose gradients live on the host, and for tests), and the `*_device` methods
//! take device buffers and only enqueue on the communicator's stream (for the GPU trainer: the
//! bucket all-reduces overlap backward when that stream is a second stream synchronised by events,
//! see the [module docs](super)).
//!
//! cudarc panics when libnccl is missing, so every constructor first checks that the library can
//! be loaded ([`nccl_available`]) and returns [`DistError::NcclMissing`] otherwise.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaViewMut, DevicePtr, DevicePtrMut};
use cudarc::nccl::{Comm, Id, ReduceOp};

use super::rendezvous::ID_BYTES;
use super::{Communicator, DistError};
use crate::cuda::{CudaError, Gpu};

/// Checks that the CUDA libraries and libnccl can be loaded, without calling into them.
pub fn nccl_available() -> Result<(), DistError> {
    crate::cuda::libraries_present()?;
    // SAFETY: this only tries to dlopen candidate library names.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(DistError::NcclMissing)
    }
}

fn nccl_err(op: &'static str) -> impl Fn(cudarc::nccl::result::NcclError) -> DistError {
    move |e| DistError::Nccl {
        op,
        why: format!("{:?}", e.0),
    }
}

fn driver_err(during: &'static str) -> impl Fn(cudarc::driver::DriverError) -> DistError {
    move |source| {
        DistError::Cuda(CudaError::Driver {
            during: during.into(),
            source,
        })
    }
}

/// One rank of an NCCL communicator, bound to one GPU's stream.
pub struct NcclComm {
    comm: Comm,
    stream: Arc<CudaStream>,
    /// Device staging buffer of the host-buffer collectives (grown on demand).
    staging: Option<CudaSlice<f32>>,
    staging_out: Option<CudaSlice<f32>>,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not overlap;
// `NcclComm` is only used through `&mut self` (host collectives) or `&self` calls that enqueue on
// its one stream, and cudarc binds the CUDA context to the calling thread before each copy.
unsafe impl Send for NcclComm {}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclComm")
            .field("rank", &self.comm.rank())
            .field("world_size", &self.comm.world_size())
            .finish()
    }
}

impl NcclComm {
    /// A new unique id (rank 0 creates it and hands it to the others).
    pub fn unique_id() -> Result<[u8; ID_BYTES], DistError> {
        nccl_available()?;
        let id = Id::new().map_err(nccl_err("ncclGetUniqueId"))?;
        let mut out = [0u8; ID_BYTES];
        for (o, &c) in out.iter_mut().zip(id.internal().iter()) {
            *o = c as u8;
        }
        Ok(out)
    }

    /// Joins the communicator `id` as `rank` of `world_size` on `gpu`'s stream. Blocks until every
    /// rank has joined.
    pub fn new(
        gpu: &Arc<Gpu>,
        rank: usize,
        world_size: usize,
        id: [u8; ID_BYTES],
    ) -> Result<Self, DistError> {
        nccl_available()?;
        if rank >= world_size {
            return Err(DistError::Config(format!(
                "rank {rank} is outside a world of {world_size}"
            )));
        }
        let mut internal = [0 as std::ffi::c_char; ID_BYTES];
        for (i, &b) in internal.iter_mut().zip(id.iter()) {
            *i = b as std::ffi::c_char;
        }
        let stream = Arc::clone(gpu.stream());
        let comm = Comm::from_rank(Arc::clone(&stream), rank, world_size, Id::uninit(internal))
            .map_err(nccl_err("ncclCommInitRank"))?;
        Ok(NcclComm {
            comm,
            stream,
            staging: None,
            staging_out: None,
        })
    }

    /// A communicator of one rank on `gpu` (the one-GPU path of `--gpus 1`).
    pub fn single(gpu: &Arc<Gpu>) -> Result<Self, DistError> {
        let id = Self::unique_id()?;
        Self::new(gpu, 0, 1, id)
    }

    /// The stream the collectives are enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Enqueues `buf ← Σ_ranks buf` on the communicator's stream (device buffer, in place).
    pub fn all_reduce_sum_device<R: DevicePtrMut<f32>>(
        &self,
        buf: &mut R,
    ) -> Result<(), DistError> {
        self.comm
            .all_reduce_in_place(buf, &ReduceOp::Sum)
            .map(|_| ())
            .map_err(nccl_err("ncclAllReduce"))
    }

    /// Enqueues a reduce-scatter (sum): `output` (one chunk) ← Σ_ranks chunk `rank` of `input`.
    pub fn reduce_scatter_sum_device<S: DevicePtr<f32>, R: DevicePtrMut<f32>>(
        &self,
        input: &S,
        output: &mut R,
    ) -> Result<(), DistError> {
        let world = self.comm.world_size();
        DistError::check_chunks("reduce_scatter", "input", input.len(), output.len(), world)?;
        self.comm
            .reduce_scatter(input, output, &ReduceOp::Sum)
            .map(|_| ())
            .map_err(nccl_err("ncclReduceScatter"))
    }

    /// Enqueues an all-gather: `output` ← every rank's `input`, in rank order.
    pub fn all_gather_device<S: DevicePtr<f32>, R: DevicePtrMut<f32>>(
        &self,
        input: &S,
        output: &mut R,
    ) -> Result<(), DistError> {
        let world = self.comm.world_size();
        DistError::check_chunks("all_gather", "output", output.len(), input.len(), world)?;
        self.comm
            .all_gather(input, output)
            .map(|_| ())
            .map_err(nccl_err("ncclAllGather"))
    }

    /// Runs `collective` from host `input` into host `output` through the two staging buffers:
    /// upload `input`, the collective between the device copies, download into `output`, wait.
    /// `steps` name the upload, the download and the wait in errors.
    fn staged_collective(
        &mut self,
        input: &[f32],
        output: &mut [f32],
        steps: [&'static str; 3],
        collective: impl FnOnce(
            &Comm,
            &CudaViewMut<'_, f32>,
            &mut CudaViewMut<'_, f32>,
        ) -> Result<(), DistError>,
    ) -> Result<(), DistError> {
        let [upload, download, wait] = steps;
        Self::staged(&mut self.staging, &self.stream, input.len())?;
        Self::staged(&mut self.staging_out, &self.stream, output.len())?;
        let (stage_in, stage_out) = (
            self.staging.as_mut().expect("staged"),
            self.staging_out.as_mut().expect("staged"),
        );
        let mut src = stage_in.slice_mut(..input.len());
        self.stream
            .memcpy_htod(input, &mut src)
            .map_err(driver_err(upload))?;
        let mut dst = stage_out.slice_mut(..output.len());
        collective(&self.comm, &src, &mut dst)?;
        self.stream
            .memcpy_dtoh(&dst, output)
            .map_err(driver_err(download))?;
        self.stream.synchronize().map_err(driver_err(wait))
    }

    fn staged(
        slot: &mut Option<CudaSlice<f32>>,
        stream: &Arc<CudaStream>,
        n: usize,
    ) -> Result<(), DistError> {
        if slot.as_ref().is_none_or(|s| s.len() < n) {
            *slot = Some(
                stream
                    .alloc_zeros::<f32>(n.max(1))
                    .map_err(driver_err("allocating NCCL staging"))?,
            );
        }
        Ok(())
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), DistError> {
        if buf.is_empty() {
            return Ok(());
        }
        Self::staged(&mut self.staging, &self.stream, buf.len())?;
        let staging = self.staging.as_mut().expect("staged");
        let mut view = staging.slice_mut(..buf.len());
        self.stream
            .memcpy_htod(buf, &mut view)
            .map_err(driver_err("copying a bucket to the GPU"))?;
        self.comm
            .all_reduce_in_place(&mut view, &ReduceOp::Sum)
            .map_err(nccl_err("ncclAllReduce"))?;
        self.stream
            .memcpy_dtoh(&view, buf)
            .map_err(driver_err("copying a bucket back"))?;
        self.stream
            .synchronize()
            .map_err(driver_err("waiting for an all-reduce"))
    }

    fn reduce_scatter_sum(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), DistError> {
        let n = self.comm.world_size();
        DistError::check_chunks("reduce_scatter", "input", input.len(), output.len(), n)?;
        if output.is_empty() {
            return Ok(());
        }
        let steps = [
            "copying gradients to the GPU",
            "copying a shard back",
            "waiting for a reduce-scatter",
        ];
        self.staged_collective(input, output, steps, |comm, src, dst| {
            comm.reduce_scatter(src, dst, &ReduceOp::Sum)
                .map(|_| ())
                .map_err(nccl_err("ncclReduceScatter"))
        })
    }

    fn all_gather(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), DistError> {
        let n = self.comm.world_size();
        DistError::check_chunks("all_gather", "output", output.len(), input.len(), n)?;
        if input.is_empty() {
            return Ok(());
        }
        let steps = [
            "copying a shard to the GPU",
            "copying parameters back",
            "waiting for an all-gather",
        ];
        self.staged_collective(input, output, steps, |comm, src, dst| {
            comm.all_gather(src, dst)
                .map(|_| ())
                .map_err(nccl_err("ncclAllGather"))
        })
    }

    fn barrier(&mut self) -> Result<(), DistError> {
        let mut one = [0.0f32];
        self.all_reduce_sum(&mut one)
    }
}
