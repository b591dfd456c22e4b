mod cli;

fn main() -> std::process::ExitCode {
    bound_allocator_retention();
    cli::main()
}

/// glibc raises its mmap threshold each time a large mmapped buffer is freed (up to
/// 32 MiB), after which chunk- and pack-sized buffers come from per-thread arenas that keep
/// freed memory. Measured on a 1.5 GB backup: peak RSS 156 MB with the default, 100 MB with
/// a fixed 256 KiB threshold, same speed (docs/PERFORMANCE.md). Setting the threshold
/// explicitly turns the adjustment off, so large buffers always go back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn bound_allocator_retention() {
    // SAFETY: mallopt only changes allocator tuning; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_allocator_retention() {}
