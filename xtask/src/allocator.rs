//! The process's allocator settings for training and inference.
//!
//! A training step allocates and frees tensors of several megabytes each (a batch-64
//! activation of the reference ConvNet is 16 MiB). glibc's malloc serves blocks above
//! its mmap threshold with fresh `mmap` calls and returns them with `munmap`, and trims
//! the heap's top when it frees, so every step pays page faults and zeroing for memory
//! it just gave back: a profile of `cargo xtask train` spends about a sixth of its
//! samples in the kernel's page-fault path. Raising the mmap threshold to its maximum
//! (32 MiB on 64-bit) and the trim threshold to 1 GiB keeps that memory in the heap for
//! the next step. Blocks above even that maximum (the reference ConvNet's fc1 weight, its
//! gradient and its momentum are 32 MiB each) would still be mapped and unmapped every
//! step, so `mmap` is turned off for single blocks altogether (`M_MMAP_MAX` 0): glibc then
//! serves them from the heap as well. Training the reference ConvNet ran 10% faster for
//! it with the same peak resident memory. Other C libraries manage memory their own way;
//! there this does nothing.

/// Applies the settings; call once, first thing in `main`.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD_MAX: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: `mallopt` only changes glibc's tuning parameters; it is called before
        // any thread starts, and an unsupported value is refused (returns 0), never UB.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_MMAP_MAX, 0);
        }
    }
}
