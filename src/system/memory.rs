//! The daemon's heap: one malloc arena for the whole process, freed pages
//! given back every minute, at most two runtime workers; the resident memory
//! that `/metrics` reports.
//!
//! glibc gives threads that meet a busy arena an arena of their own, up to
//! eight per core; each keeps the pages it has used. The daemon's threads (the
//! runtime's workers, the store's writer, the blocking pool) are
//! rarely busy at once, so their arenas are mostly freed memory kept for later:
//! at 198 sensors once a second with a staff page open, 7.6 MB of anonymous
//! memory with the default and 5.1 MB with one arena, the delays unchanged
//! (`benches/soak.rs`, docs/reliability.md). On a Raspberry Pi 4 there would
//! be four workers by default, so more arenas still.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Limits malloc to one arena. Call it first thing, before any thread starts:
/// arenas made before it stay. Returns whether the C library took it (only
/// glibc has arenas; elsewhere there is nothing to limit).
pub fn one_malloc_arena() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets a tunable of the C library's allocator; it
        // is called before the daemon starts any thread.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Most worker threads the daemon's runtime gets. At 200 sensors a second with
/// the uplink and a staff page open the daemon uses about 1 % of one core, so
/// more workers only wait; each keeps a stack, queues and a share of the heap:
/// four workers (a Raspberry Pi 4's default) held about 200–300 KiB more than
/// two in the soak at the same load (docs/reliability.md).
pub const MAX_WORKERS: usize = 2;

/// The daemon's async runtime: one worker per core, at most [`MAX_WORKERS`].
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.clamp(1, MAX_WORKERS))
        .enable_all()
        .build()
}

/// How often the daemon gives freed heap pages back to the system.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Gives the pages of freed heap memory back to the system: glibc's
/// `malloc_trim(0)`, which (since glibc 2.8) releases every whole free page in
/// the heap, not only at its top. With one arena, memory freed between live
/// blocks (a page's rendering, a query's rows, a burst of frames) otherwise
/// stays resident for good. Returns whether any was given back.
pub fn give_back_free_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists under
        // its own locks; it takes no pointer and may be called from any thread.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Gives freed heap back every [`TRIM_EVERY`] until `cancel`.
pub async fn trim_heap(cancel: CancellationToken) {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {
                // Under the arena's lock for well under a millisecond (0.4 ms
                // on a 6 MB heap with 2,400 free chunks, measured here): not
                // worth a thread of its own.
                give_back_free_heap();
            }
        }
    }
}

/// The daemon's resident memory in bytes (`VmRSS` of `/proc/self/status`),
/// when the system says it.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    rss_of(&status)
}

fn rss_of(status: &str) -> Option<u64> {
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    /// The daemon's runtime never has more than two workers, whatever the
    /// machine (a Pi 4 has four cores).
    #[test]
    fn the_runtime_has_at_most_two_workers() {
        let rt = super::runtime().unwrap();
        let workers = rt.metrics().num_workers();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(workers, cores.clamp(1, super::MAX_WORKERS));
        assert!((1..=2).contains(&workers), "{workers}");
    }

    /// Freed blocks between live ones are given back page by page.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_heap_between_live_blocks_is_given_back() {
        // 64 KiB blocks stay below glibc's mmap threshold: they are heap.
        let mut blocks: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8; 64 * 1024]).collect();
        let kept: Vec<Vec<u8>> = blocks
            .drain(..)
            .enumerate()
            .filter_map(|(i, b)| (i % 2 == 0).then_some(b))
            .collect();
        assert!(super::give_back_free_heap());
        assert!(
            kept.iter()
                .enumerate()
                .all(|(i, b)| b.iter().all(|&x| x == (2 * i) as u8))
        );
    }

    #[test]
    fn resident_memory_is_read_from_the_status_file() {
        let status =
            "Name:\tcarehub\nVmHWM:\t   16912 kB\nVmRSS:\t   15024 kB\nRssAnon:\t 4848 kB\n";
        assert_eq!(super::rss_of(status), Some(15024 * 1024));
        assert_eq!(super::rss_of("VmRSS:\t lots kB\n"), None);
        assert_eq!(super::rss_of("Name:\tcarehub\n"), None);
        #[cfg(target_os = "linux")]
        assert!(super::resident_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_arena_limit() {
        assert!(super::one_malloc_arena());
    }
}
