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
//! Each configuration runs with membarrier unavailable (readers always fenced), and with
//! membarrier: the writer polling light readers for acknowledgements not at all or once (so
//! both proofs, acknowledged and quiescent, are explored), readers never returning to light
//! mode in the model or trying at every fenced section (so a reader the writer turned fenced
//! returns to light in the middle of the writer's sequence). Under loom, membarrier is
//! `crate::sync`'s model: a pending barrier is executed by each reader at every point where
//! rcu.rs calls `interrupt_point`.
//!
//! The `caught_*` tests switch on one deliberate defect in rcu.rs (`crate::sync::Defect`) and
//! expect loom to report it; each has a control with the same configuration and no defect.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p vdma --lib --release loom_` (the filter keeps
//! out the crate's other unit tests, which would use loom's types outside a model).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use loom::cell::UnsafeCell;
use loom::sync::Mutex;
use loom::thread;

use super::{enter, make_statics, read, synchronize, RcuCell, CURRENT, DEAD, READERS};
use crate::sync::{become_participant, leave, new_participant, set_knobs, Defect, Knobs};

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

/// A `light_after` that never comes in a model.
const NEVER: u32 = u32::MAX;

/// The settings a configuration runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Modes {
    /// No membarrier: readers always fenced.
    NoMembarrier,
    /// Membarrier; the writer polls light readers `polls` times for acknowledgements, and a
    /// fenced reader tries to return to light after `light_after` fenced sections.
    Memb { polls: u32, light_after: u32 },
    /// Membarrier; readers start fenced and try to return to light at every fenced section.
    StartFenced,
}

impl Modes {
    fn knobs(self, defect: Option<Defect>) -> Knobs {
        let (membarrier, ack_polls, light_after) = match self {
            Modes::NoMembarrier => (false, 0, NEVER),
            Modes::Memb { polls, light_after } => (true, polls, light_after),
            Modes::StartFenced => (true, 0, 0),
        };
        Knobs {
            membarrier,
            ack_polls,
            light_after,
            start_fenced: self == Modes::StartFenced,
            defect,
        }
    }
}

/// Light readers, quiescent proof only.
const QUIESCENT: Modes = Modes::Memb {
    polls: 0,
    light_after: NEVER,
};
/// The writer polls once for acknowledgements.
const ACKS: Modes = Modes::Memb {
    polls: 1,
    light_after: NEVER,
};
/// Runs `readers` reader threads, each reading as `sections` says, against a writer doing
/// `unmaps` unmaps on the model's main thread, in `modes`, with `defect` in force; returns the
/// number of executions explored.
fn check(
    readers: usize,
    sections: Sections,
    unmaps: u64,
    modes: Modes,
    defect: Option<Defect>,
) -> usize {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        // Bound the preemptions (every defect below needs at most two) to keep the run in
        // seconds: 3, or 2 for three threads with the membarrier model's interrupt points.
        let bound = if readers > 1 && modes != Modes::NoMembarrier {
            2
        } else {
            3
        };
        builder.preemption_bound = Some(bound);
    }
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    builder.check(move || {
        counter.fetch_add(1, SeqCst);
        set_knobs(modes.knobs(defect));
        make_statics();
        let space = Space::new();
        let handles: Vec<_> = (0..readers)
            .map(|_| {
                let space = space.clone();
                let participant = new_participant();
                thread::spawn(move || {
                    become_participant(participant);
                    match sections {
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
                    }
                    // This thread's accesses are over (as if it had exited).
                    leave();
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
    println!(
        "{readers} reader(s) x {sections:?}, {unmaps} unmap(s), {modes:?}, {defect:?}: \
         {runs} executions explored"
    );
    assert!(runs > 1, "loom explored a single execution");
    runs
}

/// Every setting: no membarrier; with membarrier, no poll or one, readers never back to light
/// or at once; readers that start fenced.
fn modes() -> Vec<Modes> {
    let mut all = vec![Modes::NoMembarrier, Modes::StartFenced];
    for polls in [0, 1] {
        for light_after in [NEVER, 0] {
            all.push(Modes::Memb { polls, light_after });
        }
    }
    all
}

fn check_all(readers: usize, sections: Sections, unmaps: u64) {
    for modes in modes() {
        check(readers, sections, unmaps, modes, None);
    }
}

#[test]
fn loom_one_reader_one_unmap() {
    check_all(1, Sections::Plain(1), 1);
}

#[test]
fn loom_nested_sections() {
    check_all(1, Sections::Nested(1), 1);
}

/// The configuration that found the Relaxed entry store (now Release).
#[test]
fn loom_two_sections_one_unmap() {
    check_all(1, Sections::Plain(2), 1);
}

/// Two grace periods: the first turns an unacknowledged light reader fenced, the second pins it
/// (or finds it back in light mode).
#[test]
fn loom_two_sections_two_unmaps() {
    check_all(1, Sections::Plain(2), 2);
}

#[test]
fn loom_nested_two_sections() {
    check_all(1, Sections::Nested(2), 1);
}

/// Two readers (three threads: the preemption bound is 2 with membarrier's model).
#[test]
fn loom_two_readers_one_unmap() {
    for modes in [Modes::NoMembarrier, QUIESCENT, ACKS] {
        check(2, Sections::Plain(1), 1, modes, None);
    }
}

#[test]
fn loom_two_readers_two_sections() {
    check(2, Sections::Plain(2), 1, Modes::NoMembarrier, None);
}

/// Two threads on the fallback reader: one slot, sections serialized by its lock.
#[test]
fn loom_fallback_two_readers() {
    for modes in [Modes::NoMembarrier, ACKS] {
        check(2, Sections::Fallback(1), 1, modes, None);
    }
}

// --- each deliberate defect is caught; `loom_controls` runs the same configurations without it ---

/// Each `loom_caught_*` test's configuration (sections, unmaps, modes), with its defect.
const CAUGHT: [(usize, u64, Modes, Defect); 12] = [
    (2, 1, Modes::NoMembarrier, Defect::RelaxedEntry),
    (1, 1, Modes::NoMembarrier, Defect::ReaderFenceMissing),
    (1, 1, QUIESCENT, Defect::WriterBarrierMissing),
    (1, 1, QUIESCENT, Defect::RelaxedExit),
    (1, 1, QUIESCENT, Defect::RelaxedScan),
    (1, 2, QUIESCENT, Defect::ModeBeforeEntry),
    (1, 1, QUIESCENT, Defect::NoSwitchBarrier),
    (2, 1, Modes::StartFenced, Defect::UnpinnedReturnToLight),
    (2, 1, ACKS, Defect::RelaxedSyncsLoad),
    (2, 1, ACKS, Defect::RelaxedAck),
    (2, 1, ACKS, Defect::RelaxedBump),
    (2, 1, ACKS, Defect::RelaxedAckLoad),
];

/// Runs the `CAUGHT` configuration (sections, unmaps, modes) of `defect`, with it in force.
fn caught(defect: Defect) {
    let &(sections, unmaps, modes, _) = CAUGHT.iter().find(|c| c.3 == defect).unwrap();
    check(1, Sections::Plain(sections), unmaps, modes, Some(defect));
}

/// The controls: every `CAUGHT` configuration passes without its defect, so each rejection
/// below is the defect's doing, not the configuration's.
#[test]
fn loom_controls() {
    for (sections, unmaps, modes, _) in CAUGHT {
        check(1, Sections::Plain(sections), unmaps, modes, None);
    }
}

/// What loom found in rcu.rs: a writer waiting for a reader's section to end (slot odd, seq 1)
/// may next read the store that enters the reader's *following* section (3) rather than the
/// Release store that ended the first (2). Reading a Relaxed store synchronizes with nothing (a
/// release sequence continues only through read-modify-writes), so the first section's use of
/// the old table does not happen before the writer releases it. Harmless on x86-64, undefined
/// behaviour by the language's rules; rcu.rs stores Release there.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_caught_relaxed_entry() {
    caught(Defect::RelaxedEntry);
}

#[test]
#[should_panic(expected = "Causality violation")]
fn loom_caught_reader_fence_missing() {
    caught(Defect::ReaderFenceMissing);
}

/// In light mode: the writer sends no membarrier.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_caught_writer_barrier_missing() {
    caught(Defect::WriterBarrierMissing);
}

#[test]
#[should_panic(expected = "Causality violation")]
fn loom_caught_relaxed_exit() {
    caught(Defect::RelaxedExit);
}

#[test]
#[should_panic(expected = "Causality violation")]
fn loom_caught_relaxed_scan() {
    caught(Defect::RelaxedScan);
}

/// A reader that loads its mode before entering may have loaded "light" before the membarrier
/// of the grace period that turned it fenced, and enter after it: then nothing orders its entry
/// store before the next grace period's scan, which relies on the reader's fence.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_caught_mode_loaded_before_entry() {
    caught(Defect::ModeBeforeEntry);
}

/// Turning a light reader fenced without the membarrier: a section that loaded "light" just
/// before is not seen.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_caught_switch_without_membarrier() {
    caught(Defect::NoSwitchBarrier);
}

/// A reader returning to light mode while a writer has it pinned and relies on its fence.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_caught_return_to_light_while_pinned() {
    caught(Defect::UnpinnedReturnToLight);
}

/// A reader that acknowledges after a relaxed load of the grace period number may still load
/// the old table.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_caught_relaxed_grace_period_load() {
    caught(Defect::RelaxedSyncsLoad);
}

/// A relaxed acknowledgement does not order the reader's earlier sections before the writer's
/// release of the table they used.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_caught_relaxed_acknowledgement() {
    caught(Defect::RelaxedAck);
}

/// A relaxed increment of the grace period number does not order the new table's publication
/// before the readers that acknowledge it.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_caught_relaxed_grace_period_bump() {
    caught(Defect::RelaxedBump);
}

/// A relaxed load of an acknowledgement does not order the reader's sections before the
/// writer's release.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_caught_relaxed_acknowledgement_load() {
    caught(Defect::RelaxedAckLoad);
}
