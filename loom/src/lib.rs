//! The read-section / grace-period protocol of `crates/vdma/src/rcu.rs`, reproduced line for
//! line on top of a synchronization shim ([`sync`]: loom's types under `cfg(loom)`, the
//! standard library's otherwise), with switches ([`Variant`]) that break it on purpose.
//!
//! Loom checks the real rcu.rs directly (`crates/vdma/src/rcu/loom_tests.rs`). This copy exists
//! for what the real code cannot do: be broken. `tests/rcu.rs` shows that loom, with the same
//! harness, rejects each defect, and accepts the unbroken copy in the same configurations;
//! `tests/in_step.rs` fails when rcu.rs's orderings change, so that this copy follows.
//!
//! What is the same as rcu.rs: the slot (a sequence number, odd inside a read section), the
//! nesting depth, `enter` (Relaxed load of the own counter, Release store, then a fence), `exit`
//! (compiler fence, Relaxed load, Release store), `synchronize` (snapshot of the registered
//! slots under the registry lock, a full barrier, then for each odd slot an Acquire spin until
//! it changes), and `RcuCell` (Acquire load, Release publish).
//!
//! What differs, and why it does not change the protocol:
//!
//! - the registry is a field of a [`Domain`] instead of a `static` (loom's objects must be
//!   created inside each model run), and a reader is an explicit [`Reader`] value instead of a
//!   `thread_local!` (the thread-local is only how a thread finds its own slot);
//! - `membarrier(PRIVATE_EXPEDITED)` is modelled by rcu.rs's own fallback: the reader executes
//!   `fence(SeqCst)` after entering (`light == false`) and the writer `fence(SeqCst)` before
//!   scanning. That is real code (the path taken where membarrier is unavailable). For the
//!   membarrier path it is sound by membarrier's contract: the syscall makes every running
//!   thread of the process execute a full barrier before it returns, which orders the writer's
//!   accesses against each reader's as if the readers' compiler fences were full fences (the
//!   documented "asymmetric fence" use, as liburcu's memb flavour relies on). So the orderings
//!   between any reader access and any writer access that the fallback provides are also
//!   provided by the membarrier pair; what loom checks with fences holds for both;
//! - the FALLBACK reader (used from TLS destructors, behind a mutex) is not modelled: it is an
//!   ordinary reader whose sections are serialized by a lock.
//!
//! [`Variant`] switches in deliberate defects; the tests show loom rejects each.

#![warn(missing_docs)]

mod sync;

use std::cell::Cell;

pub use sync::UnsafeCell;
use sync::{compiler_fence, fence, spin_wait, Arc, AtomicPtr, AtomicU64, Mutex, Ordering};

/// The protocol as rcu.rs has it, or with one deliberate defect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// rcu.rs as it is (fallback barriers: see the crate documentation).
    Real,
    /// rcu.rs as it was before this model found the defect: the store that enters a read
    /// section is Relaxed instead of Release (see `enter`).
    RelaxedEntry,
    /// The reader keeps only its compiler fence after entering, and no membarrier upgrades it
    /// (rcu.rs's `light` path with the writer's membarrier replaced by a plain fence).
    ReaderFenceMissing,
    /// The writer does not execute its barrier before scanning the slots.
    WriterFenceMissing,
    /// The reader leaves its section with a Relaxed store instead of Release.
    RelaxedExit,
    /// The writer scans the slots with Relaxed loads instead of Acquire.
    RelaxedScan,
}

/// A reader's sequence number (rcu.rs: `Slot`).
#[derive(Debug)]
struct Slot {
    seq: AtomicU64,
}

/// The registry of readers (rcu.rs: the `READERS` static) and the variant in force.
#[derive(Debug)]
pub struct Domain {
    readers: Mutex<Vec<Arc<Slot>>>,
    variant: Variant,
}

impl Domain {
    /// A registry with no reader.
    pub fn new(variant: Variant) -> Arc<Domain> {
        Arc::new(Domain {
            readers: Mutex::new(Vec::new()),
            variant,
        })
    }

    /// The full barrier before the scan (rcu.rs: `barrier_all`, its fallback branch).
    fn barrier_all(&self) {
        if self.variant != Variant::WriterFenceMissing {
            fence(Ordering::SeqCst);
        }
    }

    /// Waits until every read section that might have seen a pointer replaced before this
    /// call has ended (rcu.rs: `synchronize`).
    pub fn synchronize(&self) {
        let slots: Vec<Arc<Slot>> = self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.barrier_all();
        let scan = if self.variant == Variant::RelaxedScan {
            Ordering::Relaxed
        } else {
            Ordering::Acquire
        };
        for slot in slots {
            let seq = slot.seq.load(scan);
            if seq & 1 == 0 {
                continue;
            }
            let mut spins = 0u32;
            while slot.seq.load(scan) == seq {
                spin_wait(&mut spins);
            }
        }
    }
}

/// One thread's reader state (rcu.rs: `ReaderState` owned by the `OWNER` thread-local).
/// Deregisters on drop, as rcu.rs's `Reader` does when its thread exits.
#[derive(Debug)]
pub struct Reader {
    domain: Arc<Domain>,
    slot: Arc<Slot>,
    depth: Cell<u32>,
    /// rcu.rs: `membarrier_registered()`; false here (the fallback) except in
    /// [`Variant::ReaderFenceMissing`].
    light: bool,
}

impl Reader {
    /// Registers a reader (rcu.rs: `ReaderState::new`).
    pub fn new(domain: &Arc<Domain>) -> Reader {
        let slot = Arc::new(Slot {
            seq: AtomicU64::new(0),
        });
        domain
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.clone());
        Reader {
            domain: domain.clone(),
            slot,
            depth: Cell::new(0),
            light: domain.variant == Variant::ReaderFenceMissing,
        }
    }

    /// Enters a read section, which lasts until the guard is dropped; sections nest.
    pub fn enter(&self) -> Guard<'_> {
        let depth = self.depth.get();
        self.depth.set(depth + 1);
        if depth == 0 {
            let seq = self.slot.seq.load(Ordering::Relaxed);
            // Release, as rcu.rs. A writer waiting for the previous section to end may read
            // this store (odd again) instead of that section's Release exit; reading a Relaxed
            // store would synchronize with nothing (C++20/Rust: a release sequence holds only
            // read-modify-writes), so the previous section's accesses would not happen before
            // the writer frees what they used.
            let order = if self.domain.variant == Variant::RelaxedEntry {
                Ordering::Relaxed
            } else {
                Ordering::Release
            };
            self.slot.seq.store(seq + 1, order);
            if self.light {
                compiler_fence(Ordering::SeqCst);
            } else {
                fence(Ordering::SeqCst);
            }
        }
        Guard { reader: self }
    }

    fn exit(&self) {
        let depth = self.depth.get() - 1;
        self.depth.set(depth);
        if depth == 0 {
            compiler_fence(Ordering::SeqCst);
            let seq = self.slot.seq.load(Ordering::Relaxed);
            let order = if self.domain.variant == Variant::RelaxedExit {
                Ordering::Relaxed
            } else {
                Ordering::Release
            };
            self.slot.seq.store(seq + 1, order);
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut readers = self
            .domain
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        readers.retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

/// Proof of being inside a read section (rcu.rs: `Guard`).
#[derive(Debug)]
pub struct Guard<'r> {
    reader: &'r Reader,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.reader.exit();
    }
}

/// A pointer readers load inside a read section and writers replace (rcu.rs: `RcuCell`). It
/// does not own what it points to: the writer keeps each value alive until a grace period after
/// replacing it.
#[derive(Debug)]
pub struct RcuCell<T> {
    ptr: AtomicPtr<T>,
}

impl<T> RcuCell<T> {
    /// A cell pointing at `value`, which the caller keeps alive.
    pub fn new(value: &Arc<T>) -> RcuCell<T> {
        RcuCell {
            ptr: AtomicPtr::new(Arc::as_ptr(value) as *mut T),
        }
    }

    /// The current value, valid for the read section.
    pub fn load<'g>(&self, _guard: &'g Guard<'_>) -> &'g T {
        // SAFETY: the writer keeps every published value alive until a grace period has passed
        // after it was replaced, and this section started before that grace period could end:
        // the property the model checks. (The tests never free a table before the end of the
        // model run; "freeing" is a write to it, which loom checks for races.)
        unsafe { &*self.ptr.load(Ordering::Acquire) }
    }

    /// Publishes `value`, which the caller keeps alive until it is replaced and a grace period
    /// has passed.
    pub fn publish(&self, value: &Arc<T>) {
        self.ptr
            .store(Arc::as_ptr(value) as *mut T, Ordering::Release);
    }
}
