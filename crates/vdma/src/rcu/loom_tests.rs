//! Loom checks of the unmap rule on the real `rcu.rs`: readers enter a read section (`enter`,
//! the thread-local reader, nesting, the guard's `exit`), load the current table from an
//! [`RcuCell`] and use it; `unmap` publishes a new table, waits for a grace period
//! ([`synchronize`]), and only then releases the old one. In every interleaving and every
//! weak-memory outcome loom produces, no reader may use a table after the writer released it.
//!
//! "Releasing" a table writes to it (loom reports any access not ordered before that write: a
//! data race is a use after free) and sets an oracle the reader asserts on when it uses the table.
//! Tables are really dropped only at the end of each execution.
//!
//! Under loom, `membarrier` is unavailable, so readers and writer take the fence fallback; why
//! that also covers the membarrier path is argued at `membarrier_registered`. The deliberately
//! broken variants of the protocol are in the `loom/` crate, on a copy that can be broken.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p vdma --lib --release loom_` (the filter keeps
//! out the crate's other unit tests, which would use loom's types outside a model).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use loom::cell::UnsafeCell;
use loom::sync::Mutex;
use loom::thread;

use super::{enter, read, synchronize, RcuCell, CURRENT, DEAD, READERS};

/// What a released table holds.
const FREED: u64 = 0xdead;

/// A translation table: its payload stands for the memory its entries point at.
struct Table {
    payload: UnsafeCell<u64>,
    /// Outside loom's model: set when the writer released the table, in the order loom ran the
    /// threads.
    released: AtomicBool,
}

// SAFETY: the payload is shared between threads on purpose: whether the protocol orders every
// access to it before its release is what the model checks, and loom reports any access that is
// not (loom's `UnsafeCell` is not `Sync` only so that such sharing is explicit).
unsafe impl Sync for Table {}

impl Table {
    /// In a `std` `Arc`, as the container's tables are.
    fn new(value: u64) -> std::sync::Arc<Table> {
        std::sync::Arc::new(Table {
            payload: UnsafeCell::new(value),
            released: AtomicBool::new(false),
        })
    }

    /// A DMA through this table: the assertion of the model.
    fn use_entry(&self) -> u64 {
        assert!(
            !self.released.load(SeqCst),
            "a reader used a table after synchronize returned and the table was released"
        );
        // SAFETY: a read of a value no one writes concurrently, unless the protocol is broken,
        // which loom then reports.
        let value = self.payload.with(|p| unsafe { *p });
        assert_ne!(value, FREED, "a reader read released memory");
        value
    }

    fn release(&self) {
        self.released.store(true, SeqCst);
        // SAFETY: as above; loom reports the write if a reader's access is not ordered before it.
        self.payload.with_mut(|p| unsafe { *p = FREED });
    }
}

/// The address space: the published table, and the writer's current and retired tables.
struct Space {
    cell: RcuCell<Table>,
    current: Mutex<std::sync::Arc<Table>>,
    /// Released tables, kept allocated until the end of the execution.
    graveyard: Mutex<Vec<std::sync::Arc<Table>>>,
}

impl Space {
    fn new() -> std::sync::Arc<Space> {
        let first = Table::new(1);
        std::sync::Arc::new(Space {
            cell: RcuCell::new(&first),
            current: Mutex::new(first),
            graveyard: Mutex::new(Vec::new()),
        })
    }

    /// `unmap`: publish a new table under the writers' lock, wait for a grace period, release
    /// the old one.
    fn unmap(&self, value: u64) {
        let next = Table::new(value);
        let old = {
            let mut current = self.current.lock().unwrap();
            self.cell.publish(&next);
            std::mem::replace(&mut *current, next)
        };
        synchronize();
        old.release();
        self.graveyard.lock().unwrap().push(old);
    }

    /// `dma_rw`: one read section that uses the current table.
    fn dma(&self) -> u64 {
        let guard = enter();
        let table = self.cell.load(&guard);
        table.use_entry()
    }
}

/// How each reader thread reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sections {
    /// `n` read sections one after another, through `enter` and the guard.
    Plain(usize),
    /// `n` sections, each holding a table across an inner section's exit.
    Nested(usize),
    /// `n` sections through `rcu::read`, on the shared fallback reader of threads whose own
    /// reader is gone (as from a TLS destructor).
    Fallback(usize),
}

/// Runs `readers` reader threads, each reading as `sections` says, against a writer doing
/// `unmaps` unmaps on the model's main thread; returns the number of executions explored.
fn check(readers: usize, sections: Sections, unmaps: u64) -> usize {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() && readers > 1 {
        // Three threads with spin-waits: bound the preemptions (every defect the loom/ crate
        // shows needs at most two) to keep the run in seconds.
        builder.preemption_bound = Some(3);
    }
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    builder.check(move || {
        counter.fetch_add(1, SeqCst);
        let space = Space::new();
        let handles: Vec<_> = (0..readers)
            .map(|_| {
                let space = space.clone();
                thread::spawn(move || match sections {
                    Sections::Plain(n) => {
                        for _ in 0..n {
                            space.dma();
                        }
                    }
                    Sections::Nested(n) => {
                        for _ in 0..n {
                            // The outer section keeps the table alive across the inner
                            // section's exit.
                            let outer = enter();
                            let table = space.cell.load(&outer);
                            space.dma();
                            table.use_entry();
                        }
                    }
                    Sections::Fallback(n) => {
                        // What `Reader::drop` leaves behind when a thread's reader is destroyed.
                        CURRENT.with(|c| c.set(DEAD));
                        for _ in 0..n {
                            read(|guard| {
                                assert!(guard._fallback.is_some(), "not the fallback reader");
                                space.cell.load(guard).use_entry()
                            });
                        }
                    }
                })
            })
            .collect();
        for k in 0..unmaps {
            space.unmap(2 + k);
        }
        for h in handles {
            h.join().unwrap();
        }
        // Loom's `join` returns when the thread's closure has returned, before its thread-locals
        // are destroyed (std's waits for both), and the statics are dropped when this closure
        // returns. So wait until every reader thread's `Reader` has deregistered its slot
        // (`Reader::drop`, which uses `READERS`); the fallback reader's stays.
        let fallback = usize::from(matches!(sections, Sections::Fallback(_)));
        while READERS.lock().unwrap().len() > fallback {
            thread::yield_now();
        }
    });
    let runs = runs.load(SeqCst);
    println!("{readers} reader(s) x {sections:?}, {unmaps} unmap(s): {runs} executions explored");
    assert!(runs > 1, "loom explored a single execution");
    runs
}

#[test]
fn loom_one_reader_one_unmap() {
    check(1, Sections::Plain(1), 1);
}

#[test]
fn loom_nested_sections() {
    check(1, Sections::Nested(1), 1);
}

#[test]
fn loom_two_readers_one_unmap() {
    check(2, Sections::Plain(1), 1);
}

/// The configuration that found the Relaxed entry store (now Release; the loom/ crate keeps the
/// Relaxed one as a finding that must fail).
#[test]
fn loom_two_sections_one_unmap() {
    check(1, Sections::Plain(2), 1);
}

#[test]
fn loom_two_sections_two_unmaps() {
    check(1, Sections::Plain(2), 2);
}

#[test]
fn loom_two_readers_two_sections() {
    check(2, Sections::Plain(2), 1);
}

#[test]
fn loom_nested_two_sections() {
    check(1, Sections::Nested(2), 1);
}

/// Two threads on the fallback reader: one slot, sections serialized by its lock.
#[test]
fn loom_fallback_two_readers() {
    check(2, Sections::Fallback(1), 1);
}
