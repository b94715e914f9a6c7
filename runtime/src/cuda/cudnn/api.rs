//! The cuDNN entry points this crate calls, resolved from the one library file the probe chose.
//!
//! cudarc's `cudnn::sys` functions `dlopen` cuDNN by name (`libcudnn.so` first), which finds
//! whatever the dynamic linker finds first: on a machine with a system cuDNN and a newer one in
//! PyTorch's wheel, the older one. Resolving the ten functions here from the probed file keeps
//! the library the probe reports and the library that runs the same object; cudarc still provides
//! the C types.

use cudarc::cudnn::sys::{
    cudaStream_t, cudnnBackendAttributeName_t as Attr, cudnnBackendAttributeType_t as Ty,
    cudnnBackendDescriptor_t, cudnnBackendDescriptorType_t as DescType, cudnnHandle_t,
    cudnnStatus_t,
};
use std::ffi::{c_char, c_void};

/// Function pointers into one loaded libcudnn (kept loaded for the process).
pub(crate) struct Api {
    pub create: unsafe extern "C" fn(*mut cudnnHandle_t) -> cudnnStatus_t,
    pub destroy: unsafe extern "C" fn(cudnnHandle_t) -> cudnnStatus_t,
    pub set_stream: unsafe extern "C" fn(cudnnHandle_t, cudaStream_t) -> cudnnStatus_t,
    pub get_last_error_string: unsafe extern "C" fn(*mut c_char, usize),
    pub backend_create_descriptor:
        unsafe extern "C" fn(DescType, *mut cudnnBackendDescriptor_t) -> cudnnStatus_t,
    pub backend_destroy_descriptor: unsafe extern "C" fn(cudnnBackendDescriptor_t) -> cudnnStatus_t,
    pub backend_set_attribute: unsafe extern "C" fn(
        cudnnBackendDescriptor_t,
        Attr,
        Ty,
        i64,
        *const c_void,
    ) -> cudnnStatus_t,
    pub backend_get_attribute: unsafe extern "C" fn(
        cudnnBackendDescriptor_t,
        Attr,
        Ty,
        i64,
        *mut i64,
        *mut c_void,
    ) -> cudnnStatus_t,
    pub backend_finalize: unsafe extern "C" fn(cudnnBackendDescriptor_t) -> cudnnStatus_t,
    pub backend_execute: unsafe extern "C" fn(
        cudnnHandle_t,
        cudnnBackendDescriptor_t,
        cudnnBackendDescriptor_t,
    ) -> cudnnStatus_t,
}

impl Api {
    /// Resolves every entry point in `lib`, or names the first one missing.
    pub(crate) fn resolve(lib: &'static libloading::Library) -> Result<Api, String> {
        /// One symbol as a plain function pointer (the library outlives it: `'static`).
        ///
        /// SAFETY (callers): `T` is the symbol's C signature in every cuDNN 9 release.
        unsafe fn sym<T: Copy>(lib: &'static libloading::Library, name: &str) -> Result<T, String> {
            let c = format!("{name}\0");
            // SAFETY: as the function's contract says.
            unsafe { lib.get::<T>(c.as_bytes()) }
                .map(|s| *s)
                .map_err(|_| format!("no {name} symbol"))
        }
        // SAFETY: each signature is the one cuDNN 9's headers declare (cudarc's bindings agree).
        unsafe {
            Ok(Api {
                create: sym(lib, "cudnnCreate")?,
                destroy: sym(lib, "cudnnDestroy")?,
                set_stream: sym(lib, "cudnnSetStream")?,
                get_last_error_string: sym(lib, "cudnnGetLastErrorString")?,
                backend_create_descriptor: sym(lib, "cudnnBackendCreateDescriptor")?,
                backend_destroy_descriptor: sym(lib, "cudnnBackendDestroyDescriptor")?,
                backend_set_attribute: sym(lib, "cudnnBackendSetAttribute")?,
                backend_get_attribute: sym(lib, "cudnnBackendGetAttribute")?,
                backend_finalize: sym(lib, "cudnnBackendFinalize")?,
                backend_execute: sym(lib, "cudnnBackendExecute")?,
            })
        }
    }
}
