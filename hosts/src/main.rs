//! The `spindle` binary: a thin shell over the `spindle` library's hosts.

fn main() -> std::process::ExitCode {
    tune_allocator();
    spindle::cli::main()
}

/// Keep glibc's malloc fast during a burst and lean after it.
///
/// Output moves through the host in buffers of up to 1 MiB (event frames, chunks, JSON, socket
/// buffers). Each one in its own mapping (glibc's behaviour for blocks above the mmap threshold)
/// costs a page fault and a zeroed page per 4 KiB, every time: a quarter of the host's time in
/// a 20 MB stream went there. So blocks up to 4 MiB come from the heaps, where a freed buffer
/// is reused at once, and the top of a heap is not handed back on every free. What a burst
/// leaves free is returned instead by a small thread that looks twice a second and calls
/// `malloc_trim` after a burst (glibc's own heuristics kept ~180 MB after a 200 MiB flood). Fewer arenas leave less memory stranded in pieces. Settings from the
/// environment (`GLIBC_TUNABLES`, `MALLOC_*_`) win, and then nothing is trimmed either.
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
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
    let trimmer = std::thread::Builder::new()
        .name("spindle-trim".into())
        .stack_size(64 << 10)
        .spawn(trim_after_bursts);
    if let Err(e) = trimmer {
        eprintln!("spindle: cannot start the allocator's trimmer: {e}");
    }
}

/// Every half second: if the heaps changed size, or what is allocated in them by more than
/// `TRIM_AFTER`, since the last look, and more than that lies free, give the free pages back.
/// (Freed chunks still count as free after a trim, so the free total alone would trim forever.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_after_bursts() {
    const TRIM_AFTER: usize = 1 << 20;
    let (mut last_heaps, mut last_used) = (0usize, 0usize);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        // SAFETY: both only read or adjust the allocator's own state, under its locks.
        let mut m = unsafe { libc::mallinfo2() };
        let burst = m.arena != last_heaps || m.uordblks.abs_diff(last_used) > TRIM_AFTER;
        if burst && m.fordblks > TRIM_AFTER {
            // SAFETY: as above.
            m = unsafe {
                libc::malloc_trim(0);
                libc::mallinfo2()
            };
        }
        (last_heaps, last_used) = (m.arena, m.uordblks);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
