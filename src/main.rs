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
///
/// The same call pins the trim threshold at its 128 KiB default, so every arena handed the
/// freed top of its heap back to the kernel after each burst of 64 KiB chunks and faulted
/// it in again for the next. A 4 MiB trim threshold and one arena per core (instead of
/// eight) cut the page faults of the 2 GB tree backup from 147k to 22–40k and of a 222 MB
/// dump restore from 67k to 38–47k, at the same peak RSS (docs/PERFORMANCE.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn bound_allocator_retention() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let arenas = i32::try_from(cores).unwrap_or(i32::MAX).max(2);
    // SAFETY: mallopt only changes allocator tuning; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_allocator_retention() {}
