//! The daemon's heap: one malloc arena for the whole process.
//!
//! glibc gives threads that meet a busy arena an arena of their own, up to
//! eight per core; each keeps the pages it has used. The daemon's threads (the
//! runtime's workers, one per core, the store's writer, the blocking pool) are
//! rarely busy at once, so their arenas are mostly freed memory kept for later:
//! at 198 sensors once a second with a staff page open, 7.6 MB of anonymous
//! memory with the default and 5.1 MB with one arena, the delays unchanged
//! (`benches/soak.rs`, docs/reliability.md). On a Raspberry Pi 4 there are
//! four workers, so more arenas by default.

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

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_arena_limit() {
        assert!(super::one_malloc_arena());
    }
}
