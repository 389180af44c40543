//! Bounds glibc's malloc arenas. By default glibc gives threads up to eight
//! arenas per core, and memory freed in one is not reused by the others:
//! under steady load (tokio workers plus blocking threads for file reads)
//! the server's RSS then creeps up for many minutes (the soak test,
//! `benches/soak.sh`, measured +30% in 10 minutes) although nothing leaks.
//! One arena per core keeps it flat. `MALLOC_ARENA_MAX`, when set, wins.
//!
//! Even then, glibc hands freed memory back to the kernel only from the top
//! of an arena: free pages in the middle stay resident (the soak measured
//! 3 MB in use in 11 MB of arenas, and RSS still +25% in 10 minutes).
//! [`spawn_trim`] calls `malloc_trim` every few seconds, which returns them.

use std::time::Duration;

/// How often [`spawn_trim`] returns free malloc pages to the kernel.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Limits malloc to one arena per core (at least two), unless
/// `MALLOC_ARENA_MAX` says otherwise. Call it first thing in `main`, before
/// any other thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes a malloc tunable; it is called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Starts a thread that returns free malloc pages to the kernel every
/// `interval` (`malloc_trim(0)`: a walk of the free lists, well under a
/// millisecond for this server's heap). Does nothing off glibc.
pub fn spawn_trim(interval: Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("malloc-trim".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    // SAFETY: malloc_trim takes malloc's own locks; it is safe
                    // to call from any thread at any time.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("ncps-server: cannot start the malloc-trim thread: {e}");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = interval;
}
