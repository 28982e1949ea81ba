//! The synchronization primitives `rcu.rs` uses: the standard library's in a normal build,
//! loom's under `cfg(loom)`, so that loom checks the real read-section / grace-period code
//! (`rcu/loom_tests.rs`).
//!
//! In a normal build everything here is a re-export of `std` (and `spin_wait` an inlined
//! function with the loop body `synchronize` always had): no wrapper, no indirection, the same
//! machine code.
//!
//! Only `rcu.rs` uses this module. The table's generation counter, its `OnceLock`s and the
//! tables' `Arc`s stay on `std`: loom checks the protocol that decides when a table may be
//! freed; the tables themselves are ordinary memory to it.

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{compiler_fence, fence, AtomicPtr, AtomicU64, Ordering},
    Arc, Mutex, MutexGuard,
};

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{fence, AtomicPtr, AtomicU64, Ordering},
    Arc, Mutex, MutexGuard,
};

/// A compiler fence only stops the compiler from moving this thread's accesses across it; it
/// orders nothing that another thread can observe. Loom runs each thread's operations in program
/// order and models only what other threads may see, so the compiler fence is a no-op there.
///
/// It must not be loom's `fence`: a real fence orders accesses for other threads too, which the
/// compiler fence does not, so the model would check a stronger program than the one that runs
/// (a `fence(SeqCst)` before `exit`'s store would, for instance, hide that store being made
/// Relaxed). A no-op checks a weaker one, which is sound: what holds for it holds for the real
/// code. (On the `membarrier` path the reader's compiler fence after entering does stand for a
/// full fence, by membarrier's contract; loom checks that path through the fence fallback, see
/// `membarrier_registered` in `rcu.rs`.)
#[cfg(loom)]
#[inline(always)]
pub(crate) fn compiler_fence(_: Ordering) {}

/// One step of a wait for another thread: spin for the first 128 steps, then yield the CPU.
/// `spins` counts the steps; start it at 0.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn spin_wait(spins: &mut u32) {
    *spins += 1;
    if *spins < 128 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// One step of a wait for another thread. Under loom it yields to loom's scheduler, which must
/// know that this thread cannot make progress until another one runs (a plain spin would be
/// explored forever).
#[cfg(loom)]
#[inline(always)]
pub(crate) fn spin_wait(spins: &mut u32) {
    *spins += 1;
    loom::thread::yield_now();
}
