//! The C allocator's settings for a long CPU run (glibc only; elsewhere nothing to do).
//!
//! The CPU executor allocates its activations, gradients and GEMM packing buffers afresh each
//! step, and frees them at the step's end. glibc's defaults hand memory above the top of each
//! heap back to the kernel once 128 KiB of it is free (its threshold adapts, but only up to the
//! largest block freed so far), so every step maps the same pages again: page faults, zeroing
//! and TLB shootdowns across the worker threads. On the bundled tiny spec (2 cores, fifteenth
//! session) that was ~18% of the step: 150 steps in 37.6 s with the defaults, 30.9 s with the
//! settings below (freed memory kept for reuse up to a bound; blocks under 32 MiB from the
//! heaps).

/// Freed memory under this stays in the process for the next step.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_BYTES: i32 = 1 << 30;

/// Blocks under this come from the heaps, not from their own mappings (glibc's largest).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HEAP_BLOCKS_UNDER: i32 = 32 << 20;

/// Tells the C allocator to keep freed memory for reuse instead of returning it to the kernel
/// after every step. Call once, early in a program that trains or evaluates on the CPU (the
/// `modelspec` binary does); it changes the whole process's allocator, which is the program's
/// choice, not a library's. Returns whether the settings were taken.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's parameters; called before the program's
        // worker threads start.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_BLOCKS_UNDER) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_BYTES) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
