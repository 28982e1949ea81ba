//! The synchronization primitives the protocol uses: loom's under `cfg(loom)`, the standard
//! library's otherwise (as `crates/vdma/src/sync.rs`, which rcu.rs imports).

#[cfg(loom)]
pub use loom::cell::UnsafeCell;
#[cfg(loom)]
pub(crate) use loom::{
    sync::atomic::{fence, AtomicPtr, AtomicU64, Ordering},
    sync::{Arc, Mutex},
    thread::yield_now,
};

/// Loom runs each thread's operations in program order and models only what other threads
/// may see, so a compiler fence (which only stops the compiler from reordering) is a no-op
/// there.
#[cfg(loom)]
pub(crate) fn compiler_fence(_: Ordering) {}

#[cfg(not(loom))]
pub(crate) use std::{
    sync::atomic::{compiler_fence, fence, AtomicPtr, AtomicU64, Ordering},
    sync::{Arc, Mutex},
    thread::yield_now,
};

/// `loom::cell::UnsafeCell`'s interface over the standard cell, so that the same code builds
/// without loom.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> UnsafeCell<T> {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a pointer for reading.
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a pointer for writing.
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// A spin-wait step: loom must be told that the thread waits for another (rcu.rs:
/// `crate::sync::spin_wait`).
pub(crate) fn spin_wait(spins: &mut u32) {
    #[cfg(loom)]
    {
        let _ = spins;
        yield_now();
    }
    #[cfg(not(loom))]
    {
        *spins += 1;
        if *spins < 128 {
            std::hint::spin_loop();
        } else {
            yield_now();
        }
    }
}
