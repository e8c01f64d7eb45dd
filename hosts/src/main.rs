//! The `spindle` binary: a thin shell over the `spindle` library's hosts.

/// jemalloc, not glibc's malloc. A host streams output through buffers of about a megabyte (an
/// event frame, its JSON, the signed message). glibc either maps each afresh, so that every
/// page of every buffer is faulted in and zeroed again (the fixed 128 KiB mmap threshold this
/// binary used), or, with its default sliding threshold, keeps what a flood freed in its heaps
/// (a 200 MiB flood left the host at ~180 MB once idle). jemalloc reuses freed buffers and
/// gives back what stays unused: see [`malloc_conf`]. Options in `_RJEM_MALLOC_CONF` win.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once as it starts: a background thread purges dirty pages unused
/// for about a second (so an idle host gives memory back with no allocation to trigger it),
/// without the lazy `MADV_FREE` stage (such pages still count in RSS), in two arenas (a host
/// has few busy threads; fewer arenas strand less memory).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2\0";

/// An idle host's jemalloc trim: the calling thread's cache of freed small objects goes back
/// to its arena (about half a megabyte after start-up: what it holds keeps whole slabs in
/// use), and every arena returns its unused pages now rather than after the decay time.
fn trim_jemalloc() {
    for name in [&b"thread.tcache.flush\0"[..], &b"arena.4096.purge\0"[..]] {
        // SAFETY: both are void controls (no old or new value) named by NUL-terminated
        // strings; 4096 is MALLCTL_ARENAS_ALL.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            tracing::debug!(rc, "jemalloc trim control failed");
        }
    }
}

fn main() -> std::process::ExitCode {
    spindle::common::set_allocator_trim(trim_jemalloc);
    spindle::cli::main()
}
