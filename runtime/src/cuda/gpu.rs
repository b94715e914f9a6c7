//! One CUDA device: context, stream, loaded kernel modules, cuBLASLt, buffers.

use super::compile::{self, KernelSource};
use super::error::{CudaError, DriverContext, Result};
use super::gemm::Gemm;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, ValidAsZeroBits,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Checks that the CUDA libraries this backend loads dynamically are present, without touching
/// any of them: cudarc panics on a missing library, so every entry point calls this first.
pub fn libraries_present() -> Result<()> {
    // SAFETY: these only try to dlopen candidate library names.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            return Err(CudaError::MissingLibrary { library: "cuda" });
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            return Err(CudaError::MissingLibrary { library: "nvrtc" });
        }
        if !cudarc::cublaslt::sys::is_culib_present() {
            return Err(CudaError::MissingLibrary {
                library: "cublasLt",
            });
        }
    }
    Ok(())
}

/// Number of CUDA devices, or the reason there are none usable.
pub fn device_count() -> Result<usize> {
    libraries_present()?;
    let n = CudaContext::device_count().during(|| "counting devices".into())?;
    Ok(n.max(0) as usize)
}

/// Checks that device `ordinal` exists and can be used.
pub fn probe(ordinal: usize) -> Result<()> {
    let count = device_count()?;
    if ordinal >= count {
        return Err(CudaError::NoDevice { ordinal, count });
    }
    Ok(())
}

/// Element types the kernels are instantiated for: the planner's activation dtype, one type for
/// the cost model and the GPU back end.
pub use modelspec_dsl::plan::Dtype;

/// What the CUDA back end needs of a [`Dtype`] beyond the planner's byte count.
pub trait DtypeExt: Copy {
    /// The `{dtype}` suffix of kernel names (`f32`, `bf16`).
    fn suffix(self) -> &'static str;
    /// Bytes per element, as a host size.
    fn bytes(self) -> usize;
}

impl DtypeExt for Dtype {
    fn suffix(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
    fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}

/// A device pointer as kernels take it (0 is the null pointer for optional arguments).
pub type DevPtr = u64;

/// A typed device allocation.
#[derive(Debug)]
pub struct GpuBuf<T> {
    slice: CudaSlice<T>,
    ptr: DevPtr,
}

impl<T> GpuBuf<T> {
    /// The raw device address.
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
    /// Elements.
    pub fn len(&self) -> usize {
        self.slice.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }
    /// The address of element `i`.
    pub fn at(&self, i: usize) -> DevPtr {
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }
}

/// A compiled kernel module with a cache of its functions.
pub struct Module {
    module: Arc<CudaModule>,
    functions: Mutex<BTreeMap<String, CudaFunction>>,
    /// The module's name (for errors).
    pub name: String,
    /// Whether the PTX came from the disk cache.
    pub from_cache: bool,
}

impl Module {
    /// The kernel `name`, loaded once.
    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        let mut map = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(name) {
            return Ok(f.clone());
        }
        let f = self
            .module
            .load_function(name)
            .map_err(|e| CudaError::BadLaunch {
                kernel: name.into(),
                why: format!(
                    "not found in module `{}` ({e}); was its head dim instantiated?",
                    self.name
                ),
            })?;
        map.insert(name.to_string(), f.clone());
        Ok(f)
    }
}

/// One GPU: its context and stream (work is issued on this one stream, in order; a
/// non-blocking stream of its own, so that work on it can be captured into CUDA graphs). The
/// trainer alone also forks work to two streams of lower priority ([`Gpu::branch`],
/// [`Gpu::aside`]), ordered by its own events.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// A second stream of the lowest priority, made at first use ([`Gpu::aside`]).
    aside: std::sync::OnceLock<Arc<CudaStream>>,
    /// A third stream, of a priority between the two, made at first use ([`Gpu::branch`]).
    branch: std::sync::OnceLock<Arc<CudaStream>>,
    /// Whether launches go to the branch now ([`Gpu::on_branch`]).
    on_branch: std::sync::atomic::AtomicBool,
    arch: &'static str,
    modules: Mutex<BTreeMap<String, Arc<Module>>>,
    gemm: Mutex<Option<Arc<Gemm>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu(cuda:{}, {})", self.ctx.ordinal(), self.arch)
    }
}

/// Where in the device's stream priority range a stream sits.
enum Priority {
    Highest,
    /// One step below the highest (the middle where the range has only two values).
    Below,
    Lowest,
}

/// A new non-blocking stream of `ctx` at one end of its priority range.
fn stream_at(ctx: &Arc<CudaContext>, at: Priority) -> Result<Arc<CudaStream>> {
    ctx.bind_to_thread()
        .during(|| "binding the context".into())?;
    let (lowest, highest) = cudarc::driver::result::stream::get_priority_range()
        .during(|| "reading the stream priorities".into())?;
    // Lower numbers are higher priorities.
    let priority = match at {
        Priority::Highest => highest,
        Priority::Below => (highest + 1).min(lowest),
        Priority::Lowest => lowest,
    };
    ctx.new_stream_with_priority(priority)
        .during(|| format!("creating a stream of priority {priority}"))
}

impl Gpu {
    /// Opens device `ordinal`; a clean error when there is no driver or no such device.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        probe(ordinal)?;
        let ctx = CudaContext::new(ordinal)
            .during(|| format!("creating a context on device {ordinal}"))?;
        // One stream, in-order: cudarc's per-buffer event tracking only costs time here.
        // SAFETY: the one buffer use across streams, the trainer's overlapped AdamW on
        // [`Gpu::aside`], orders itself with events of its own.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .during(|| "reading the compute capability".into())?;
        let arch = compile::arch_name(major, minor)?;
        // A stream of its own rather than the legacy default stream, which cannot be captured
        // into a CUDA graph (the GPU trainer replays its steps from one), at the highest
        // priority, so that [`Gpu::aside`]'s work only takes what it leaves idle.
        let stream = stream_at(&ctx, Priority::Highest)?;
        Ok(Arc::new(Gpu {
            ctx,
            stream,
            aside: std::sync::OnceLock::new(),
            branch: std::sync::OnceLock::new(),
            on_branch: std::sync::atomic::AtomicBool::new(false),
            arch,
            modules: Mutex::new(BTreeMap::new()),
            gemm: Mutex::new(None),
        }))
    }

    /// The NVRTC architecture kernels are compiled for (e.g. `compute_90`).
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// The device's streaming multiprocessors.
    pub fn sm_count(&self) -> Result<u32> {
        let n = self
            .ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .during(|| "reading the multiprocessor count".into())?;
        Ok(n.max(1) as u32)
    }

    /// The device's name.
    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown".into())
    }

    /// The device's context (for events and streams of its own).
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream all work goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A second stream, of the lowest priority: its blocks are scheduled only where
    /// [`Gpu::stream`]'s kernels leave a multiprocessor idle (their tails, the gaps between
    /// them). Its work is ordered against the main stream's by the caller's events only.
    pub fn aside(&self) -> Result<&Arc<CudaStream>> {
        self.side_stream(&self.aside, Priority::Lowest)
    }

    /// A third stream, one priority step below the main one (and above [`Gpu::aside`]): the
    /// trainer's weight gradients run on it beside the backward's chain of input gradients
    /// (`cuda/train/branch.rs`). Its work is ordered against the main stream's by the caller's
    /// events only.
    pub fn branch(&self) -> Result<&Arc<CudaStream>> {
        self.side_stream(&self.branch, Priority::Below)
    }

    /// The stream in `slot`, made at priority `at` on first use.
    fn side_stream<'a>(
        &self,
        slot: &'a std::sync::OnceLock<Arc<CudaStream>>,
        at: Priority,
    ) -> Result<&'a Arc<CudaStream>> {
        if let Some(s) = slot.get() {
            return Ok(s);
        }
        let s = stream_at(&self.ctx, at)?;
        Ok(slot.get_or_init(|| s))
    }

    /// Runs `f` with every launch of the kernel modules and every GEMM ([`Gpu::current`]) going
    /// to [`Gpu::branch`] instead of the main stream, then back. The caller orders the branch's
    /// work against the main stream's (events), and keeps to one thread meanwhile.
    pub fn on_branch<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        use std::sync::atomic::Ordering;
        self.branch()?;
        let before = self.on_branch.swap(true, Ordering::Relaxed);
        let out = f();
        self.on_branch.store(before, Ordering::Relaxed);
        out
    }

    /// Whether launches go to [`Gpu::branch`] now ([`Gpu::on_branch`]).
    pub fn in_branch(&self) -> bool {
        self.on_branch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The stream kernel launches and GEMMs go to now: the main one ([`Gpu::stream`]), or the
    /// branch inside [`Gpu::on_branch`]. Copies, memsets and events stay on the main stream.
    pub fn current(&self) -> &Arc<CudaStream> {
        match self.branch.get() {
            Some(b) if self.in_branch() => b,
            _ => &self.stream,
        }
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .during(|| "reading free memory".into())
    }

    /// Checks that `bytes` more fit on the device.
    pub fn check_fits(&self, bytes: usize) -> Result<()> {
        let (free, _) = self.mem_info()?;
        if bytes > free {
            let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
            return Err(CudaError::OutOfMemory {
                needed_gib: gib(bytes),
                free_gib: gib(free),
            });
        }
        Ok(())
    }

    /// Compiles (or loads from the disk cache) and loads `src`; loaded once per Gpu.
    pub fn load(&self, src: &KernelSource) -> Result<Arc<Module>> {
        self.load_arch(src, self.arch)
    }

    /// As [`Gpu::load`] for the NVRTC architecture `arch` (e.g. `compute_90a` for kernels that
    /// use Hopper's architecture-specific instructions; the caller checks that the device has it).
    pub fn load_arch(&self, src: &KernelSource, arch: &'static str) -> Result<Arc<Module>> {
        let key = compile::cache_key(&src.text(), arch);
        let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = mods.get(&key) {
            return Ok(m.clone());
        }
        let (ptx, from_cache) = compile::compile(src, arch)?;
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .during(|| format!("loading module `{}`", src.name))?;
        let m = Arc::new(Module {
            module,
            functions: Mutex::new(BTreeMap::new()),
            name: src.name.clone(),
            from_cache,
        });
        mods.insert(key, m.clone());
        Ok(m)
    }

    /// The cuBLASLt handle (created at first use).
    pub fn gemm(self: &Arc<Self>) -> Result<Arc<Gemm>> {
        let mut g = self.gemm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = g.as_ref() {
            return Ok(h.clone());
        }
        let h = Arc::new(Gemm::new(self.clone())?);
        *g = Some(h.clone());
        Ok(h)
    }

    /// Allocates `n` zeroed elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<GpuBuf<T>> {
        let slice = self
            .stream
            .alloc_zeros::<T>(n.max(1))
            .during(|| format!("allocating {n} elements"))?;
        Ok(self.wrap(slice))
    }

    /// Copies `data` to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<GpuBuf<T>> {
        let slice = self
            .stream
            .clone_htod(data)
            .during(|| format!("uploading {} elements", data.len()))?;
        Ok(self.wrap(slice))
    }

    /// Copies a device buffer back (synchronises the stream).
    pub fn download<T: DeviceRepr>(&self, buf: &GpuBuf<T>) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(&buf.slice)
            .during(|| format!("downloading {} elements", buf.len()))
    }

    /// Copies `bytes` bytes at a raw device address back to the host (synchronises the stream).
    ///
    /// # Safety
    /// `ptr..ptr+bytes` must be device memory owned by the caller.
    pub unsafe fn download_raw(&self, ptr: DevPtr, bytes: usize) -> Result<Vec<u8>> {
        self.ctx
            .bind_to_thread()
            .during(|| "binding the context".into())?;
        let mut host = vec![0u8; bytes];
        // SAFETY: forwarded from the caller; `host` outlives the copy (synchronised below).
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(&mut host, ptr, self.stream.cu_stream())
        }
        .during(|| format!("downloading {bytes} bytes"))?;
        self.sync()?;
        Ok(host)
    }

    /// Overwrites a buffer from the host.
    pub fn write<T: DeviceRepr>(&self, buf: &mut GpuBuf<T>, data: &[T]) -> Result<()> {
        if data.len() > buf.len() {
            return Err(CudaError::BadLaunch {
                kernel: "memcpy".into(),
                why: format!("{} elements into a buffer of {}", data.len(), buf.len()),
            });
        }
        self.stream
            .memcpy_htod(data, &mut buf.slice)
            .during(|| "writing a buffer".into())
    }

    /// Zeroes a buffer.
    pub fn memset_zero<T: DeviceRepr + ValidAsZeroBits>(&self, buf: &mut GpuBuf<T>) -> Result<()> {
        self.stream
            .memset_zeros(&mut buf.slice)
            .during(|| "zeroing a buffer".into())
    }

    /// Zeroes `bytes` bytes at a raw device address, in stream order.
    ///
    /// # Safety
    /// `ptr..ptr+bytes` must be device memory owned by the caller.
    pub unsafe fn memset_raw(&self, ptr: DevPtr, bytes: usize) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .during(|| "binding the context".into())?;
        // SAFETY: forwarded from the caller.
        unsafe { cudarc::driver::result::memset_d8_async(ptr, 0, bytes, self.stream.cu_stream()) }
            .during(|| format!("zeroing {bytes} bytes"))
    }

    /// Whether the stream work goes to now ([`Gpu::current`]) is being captured into a CUDA graph
    /// (nothing may be timed, allocated or synchronised then).
    pub(crate) fn capturing(&self) -> bool {
        self.current().capture_status().ok()
            != Some(cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }

    /// Waits for all issued work; surfaces asynchronous kernel faults.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .during(|| "synchronising the stream".into())
    }

    fn wrap<T>(&self, slice: CudaSlice<T>) -> GpuBuf<T> {
        let ptr = {
            let (ptr, _guard) = slice.device_ptr(&self.stream);
            ptr
        };
        GpuBuf { slice, ptr }
    }

    /// Launches `f` with `args` (each a pointer to a kernel argument bound to a local first) on
    /// [`Gpu::current`].
    ///
    /// # Safety
    /// The argument list must match the kernel's signature, and every pointer must be valid for
    /// the accesses the kernel makes with the given sizes.
    pub unsafe fn launch(
        &self,
        name: &str,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: block,
            shared_mem_bytes: smem,
        };
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_on(self.current(), name, f, cfg, args) }
    }

    /// [`Gpu::launch`] on `stream` (this device's [`Gpu::stream`], [`Gpu::aside`] or
    /// [`Gpu::branch`]).
    ///
    /// # Safety
    /// As [`Gpu::launch`]; and the kernel's buffers must be ordered against other streams' use
    /// of them (events).
    pub unsafe fn launch_on(
        &self,
        stream: &CudaStream,
        name: &str,
        f: &CudaFunction,
        cfg: LaunchConfig,
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<()> {
        let (grid, block, smem) = (cfg.grid_dim, cfg.block_dim, cfg.shared_mem_bytes);
        allow_shared_memory(name, f, smem)?;
        self.ctx
            .bind_to_thread()
            .during(|| "binding the context".into())?;
        // SAFETY: forwarded from the caller.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                cfg.grid_dim,
                cfg.block_dim,
                cfg.shared_mem_bytes,
                stream.cu_stream(),
                args,
            )
        }
        .during(|| format!("launching `{name}` grid {grid:?} block {block:?} smem {smem}"))
    }

    /// Event-timed execution of `f`, in milliseconds.
    pub fn time_ms(&self, mut f: impl FnMut() -> Result<()>) -> Result<f32> {
        let start = self
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .during(|| "creating an event".into())?;
        let end = self
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .during(|| "creating an event".into())?;
        start
            .record(&self.stream)
            .during(|| "recording an event".into())?;
        f()?;
        end.record(&self.stream)
            .during(|| "recording an event".into())?;
        end.synchronize().during(|| "waiting for an event".into())?;
        start.elapsed_ms(&end).during(|| "reading an event".into())
    }
}

/// Builds the argument array for [`Gpu::launch`] from locals: `args![a, b, c]`.
#[macro_export]
#[doc(hidden)]
macro_rules! cuda_args {
    ($($x:expr),* $(,)?) => {
        [$( (&$x) as *const _ as *mut ::std::ffi::c_void ),*]
    };
}

/// Lets kernel `f` (named `name` in errors) take `smem` bytes of dynamic shared memory a block:
/// past the default 48 KiB a kernel must opt in.
pub fn allow_shared_memory(name: &str, f: &CudaFunction, smem: u32) -> Result<()> {
    if smem > 48 * 1024 {
        f.set_attribute(
            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .during(|| format!("raising the shared-memory limit of `{name}` to {smem} bytes"))?;
    }
    Ok(())
}
