//! Loom checks of the unmap rule on a copy of rcu.rs that can be broken: a reader enters a read
//! section, loads the current table and uses it; `unmap` publishes a new table, waits for a
//! grace period (`synchronize`), and only then releases the old one. No reader may use a table
//! after the writer released it.
//!
//! The real rcu.rs is checked in every configuration by `crates/vdma/src/rcu/loom_tests.rs`.
//! Here: each deliberate defect is rejected, and the unbroken copy passes the same
//! configurations (the controls), so a rejection is the defect's doing, not the harness's.
//!
//! "Releasing" a table writes to it (loom then reports any access not ordered before that
//! write: a data race is a use after free) and sets an oracle that the reader asserts on when
//! it uses the table. Tables are really dropped only at the end of each run.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release --manifest-path loom/Cargo.toml`.

#![cfg(loom)]

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use loom::sync::Arc;
use loom::thread;
use vdma_loom::{Domain, RcuCell, Reader, UnsafeCell, Variant};

/// What a released table holds.
const FREED: u64 = 0xdead;

/// A translation table: its payload stands for the memory its entries point at.
#[derive(Debug)]
struct Table {
    payload: UnsafeCell<u64>,
    /// Outside loom's model: set when the writer released the table, in the order loom ran the
    /// threads.
    released: AtomicBool,
}

impl Table {
    fn new(value: u64) -> Arc<Table> {
        Arc::new(Table {
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
    current: loom::sync::Mutex<Arc<Table>>,
    /// Released tables, kept allocated until the end of the run.
    graveyard: loom::sync::Mutex<Vec<Arc<Table>>>,
}

impl Space {
    fn new() -> Arc<Space> {
        let first = Table::new(1);
        Arc::new(Space {
            cell: RcuCell::new(&first),
            current: loom::sync::Mutex::new(first),
            graveyard: loom::sync::Mutex::new(Vec::new()),
        })
    }

    /// `unmap`: publish a new table, wait for a grace period, release the old one.
    fn unmap(&self, domain: &Domain, value: u64) {
        let next = Table::new(value);
        let old = {
            let mut current = self.current.lock().unwrap();
            self.cell.publish(&next);
            std::mem::replace(&mut *current, next)
        };
        domain.synchronize();
        old.release();
        self.graveyard.lock().unwrap().push(old);
    }

    /// `dma_rw`: one read section that uses the current table.
    fn dma(&self, reader: &Reader) -> u64 {
        let guard = reader.enter();
        let table = self.cell.load(&guard);
        table.use_entry()
    }
}

/// Runs `readers` reader threads (each doing `sections` read sections, each with an inner
/// section if `nested`)
/// against a writer doing `unmaps` unmaps on the main thread.
fn check(variant: Variant, readers: usize, sections: usize, nested: bool, unmaps: u64) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() && readers > 1 {
        // Three threads with spin-waits: bound the preemptions (every bug shown below needs
        // at most two) to keep the run in seconds.
        builder.preemption_bound = Some(3);
    }
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    builder.check(move || {
        counter.fetch_add(1, SeqCst);
        let domain = Domain::new(variant);
        let space = Space::new();
        let handles: Vec<_> = (0..readers)
            .map(|_| {
                let domain = domain.clone();
                let space = space.clone();
                thread::spawn(move || {
                    let reader = Reader::new(&domain);
                    for _ in 0..sections {
                        if nested {
                            // The outer section keeps the table alive across the inner
                            // section's exit.
                            let outer = reader.enter();
                            let table = space.cell.load(&outer);
                            space.dma(&reader);
                            table.use_entry();
                        } else {
                            space.dma(&reader);
                        }
                    }
                })
            })
            .collect();
        for k in 0..unmaps {
            space.unmap(&domain, 2 + k);
        }
        for h in handles {
            h.join().unwrap();
        }
    });
    println!(
        "{variant:?}, {readers} reader(s) x {sections} section(s){}, {unmaps} unmap(s): \
         {} executions explored",
        if nested { " (nested)" } else { "" },
        runs.load(SeqCst)
    );
}

// --- controls: the copy as rcu.rs has it passes the configurations used below ---

#[test]
fn control_one_section() {
    check(Variant::Real, 1, 1, false, 1);
}

#[test]
fn control_two_sections() {
    check(Variant::Real, 1, 2, false, 1);
}

// --- what this model found in rcu.rs (now fixed there) ---

/// rcu.rs used to enter a section with a Relaxed store. A writer waiting for a reader's section
/// to end (its slot odd, seq = 1) may next read the store that enters the reader's *following*
/// section (3) rather than the Release store that ended the first (2). Reading a Relaxed store
/// synchronizes with nothing (in Rust's, C++20's, model a release sequence continues only
/// through read-modify-writes), so the first section's use of the old table does not happen
/// before the writer releases it: a data race on the freed memory, which loom reports.
/// (Harmless on x86-64, where every store is a release; undefined behaviour by the language's
/// rules.) rcu.rs now stores Release there (`Variant::Real`, `control_two_sections`).
#[test]
#[should_panic(expected = "Causality violation")]
fn finding_relaxed_entry_store_races_with_release() {
    check(Variant::RelaxedEntry, 1, 2, false, 1);
}

// --- each deliberate defect is caught ---

#[test]
#[should_panic(expected = "Causality violation")]
fn caught_reader_fence_missing() {
    check(Variant::ReaderFenceMissing, 1, 1, false, 1);
}

#[test]
#[should_panic(expected = "Causality violation")]
fn caught_writer_fence_missing() {
    check(Variant::WriterFenceMissing, 1, 1, false, 1);
}

#[test]
#[should_panic(expected = "Causality violation")]
fn caught_relaxed_exit() {
    check(Variant::RelaxedExit, 1, 1, false, 1);
}

#[test]
#[should_panic(expected = "Causality violation")]
fn caught_relaxed_scan() {
    check(Variant::RelaxedScan, 1, 1, false, 1);
}
