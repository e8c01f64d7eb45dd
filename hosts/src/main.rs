//! The `spindle` binary: a thin shell over the `spindle` library's hosts.

fn main() -> std::process::ExitCode {
    tune_allocator();
    spindle::cli::main()
}

/// Make glibc's malloc give memory back after a burst. By default glibc raises its mmap
/// threshold each time a large block is freed (up to 32 MiB), so after the first megabyte-sized
/// chunk the host's chunk, JSON and frame buffers come from its heaps, where what is freed
/// mostly stays resident: a 200 MiB flood left the host at ~180 MB once idle. A fixed threshold
/// keeps every block of 128 KiB or more in its own mapping, returned to the system when freed,
/// and fewer arenas leave less freed memory stranded in small pieces. Settings from the
/// environment (`GLIBC_TUNABLES`, `MALLOC_*_`) win.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    let overridden = std::env::var_os("GLIBC_TUNABLES")
        .is_some_and(|t| t.to_string_lossy().contains("glibc.malloc."))
        || std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"));
    if overridden {
        return;
    }
    // SAFETY: mallopt only sets allocator parameters; this runs before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
