//! A hint to the CPU that memory will be read soon. The Metering Process is memory-bound: each
//! packet's flow lives in a table far larger than the caches, and a plain load of it would stall
//! until it arrives. A prefetch issued a few packets ahead lets those misses overlap.

/// Asks for the cache line holding `at` to be brought into every cache level. Never faults,
/// whatever the address; a no-op on targets without an instruction for it.
#[inline(always)]
pub fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only hints the cache: it reads nothing into the program, never faults
    // (not even on an unmapped address) and SSE, which defines it, is part of every x86_64 CPU.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
