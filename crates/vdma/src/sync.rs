//! The synchronization primitives `rcu.rs` uses: the standard library's and the `membarrier`
//! system call in a normal build; loom's, a model of `membarrier`, and switchable defects under
//! `cfg(loom)`, so that loom checks the real read-section / grace-period code
//! (`rcu/loom_tests.rs`), and shows that it would catch that code broken.
//!
//! In a normal build everything here is a re-export of `std`, the syscall, or an inlined
//! constant (`defect` is `false`, `interrupt_point` is empty): no wrapper, no indirection, the
//! same machine code as without this module.
//!
//! Only `rcu.rs` uses this module. The table's generation counter, its `OnceLock`s, and the
//! `Arc`s of the tables and of the readers' slots stay on `std`: loom checks the protocol that
//! decides when a table may be freed; what holds the protocol's atomics is ordinary memory to
//! it (and a loom `Arc` could not be dropped while a model that caught a defect unwinds).

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{compiler_fence, fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering},
    Mutex, MutexGuard,
};

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering},
    Mutex, MutexGuard,
};

/// A deliberate defect loom must catch (`rcu/loom_tests.rs`); each names the line of `rcu.rs`
/// that it breaks. In a normal build none is ever in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Defect {
    /// `enter` stores its entry with `Relaxed` instead of `Release` (how rcu.rs was before loom
    /// found it).
    RelaxedEntry,
    /// `enter` loads the reader's mode before its entry store instead of after it.
    ModeBeforeEntry,
    /// A fenced reader skips its fence after entering.
    ReaderFenceMissing,
    /// `exit` stores with `Relaxed` instead of `Release`.
    RelaxedExit,
    /// `enter` loads the grace period number with `Relaxed` instead of `Acquire`.
    RelaxedSyncsLoad,
    /// A reader stores its acknowledgement with `Relaxed` instead of `Release`.
    RelaxedAck,
    /// A reader returns to light mode with a plain store, even while a writer has it pinned.
    UnpinnedReturnToLight,
    /// `synchronize` begins the grace period with a `Relaxed` increment instead of `AcqRel`.
    RelaxedBump,
    /// `synchronize` loads acknowledgements with `Relaxed` instead of `Acquire`.
    RelaxedAckLoad,
    /// `synchronize` executes no barrier at all before scanning.
    WriterBarrierMissing,
    /// `synchronize` turns light readers fenced and relies on that at once, with a plain fence
    /// instead of the membarrier that makes them see the change.
    NoSwitchBarrier,
    /// `synchronize` scans the slots with `Relaxed` loads instead of `Acquire`.
    RelaxedScan,
}

/// Whether `defect` is in force: never, in a normal build.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) const fn defect(_: Defect) -> bool {
    false
}

/// `order`, or `Relaxed` while `broken` is in force.
#[inline(always)]
pub(crate) fn ordering(order: Ordering, broken: Defect) -> Ordering {
    if defect(broken) {
        Ordering::Relaxed
    } else {
        order
    }
}

/// A place where a `membarrier` may interrupt the calling thread. In a normal build the kernel
/// interrupts at any instruction and this is empty; loom, which has no interrupts, takes the
/// model's barrier here (see `membarrier` below).
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn interrupt_point() {}

#[cfg(not(loom))]
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
#[cfg(not(loom))]
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

/// Registers the process for `membarrier(PRIVATE_EXPEDITED)`; false where the kernel or a
/// seccomp filter refuses.
#[cfg(not(loom))]
pub(crate) fn membarrier_register() -> bool {
    // SAFETY: membarrier takes a command and flags and has no memory arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0,
            0,
        )
    };
    r == 0
}

/// `membarrier(PRIVATE_EXPEDITED)`: returns after every running thread of the process has
/// executed a full memory barrier (a thread not running has none of its accesses in flight).
/// The caller has registered.
#[cfg(not(loom))]
pub(crate) fn membarrier() {
    // SAFETY: as above; registration succeeded, so the command is allowed.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) };
    if r != 0 {
        // Readers rely on this barrier; without it reclamation would be unsound.
        panic!(
            "membarrier(PRIVATE_EXPEDITED) failed after registration: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A compiler fence only stops the compiler from moving this thread's accesses across it; it
/// orders nothing that another thread can observe. Loom runs each thread's operations in program
/// order and models only what other threads may see, so the compiler fence is a no-op there.
///
/// It must not be loom's `fence`: a real fence orders accesses for other threads too, which the
/// compiler fence does not, so the model would check a stronger program than the one that runs.
/// A no-op checks a weaker one, which is sound: what holds for it holds for the real code.
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

#[cfg(all(loom, test))]
pub(crate) use model::{become_participant, leave, new_participant, set_knobs, Knobs};
#[cfg(loom)]
pub(crate) use model::{defect, interrupt_point, knobs, membarrier, membarrier_register};

/// What loom runs instead of the kernel: the test's settings, the defects, and `membarrier`.
#[cfg(loom)]
mod model {
    use super::{fence, AtomicU64, Defect, Ordering};
    use std::cell::Cell;
    use std::sync::Arc;

    /// One model execution's settings, made by the test before it starts any thread.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Knobs {
        /// Whether `membarrier` is available (else readers and writers take the fence fallback).
        pub(crate) membarrier: bool,
        /// How many times a writer polls light readers for acknowledgements (each poll a
        /// yield to loom's scheduler) before it turns to the quiescent proof.
        pub(crate) ack_polls: u32,
        /// Fenced sections a reader runs before it tries to return to light mode (0: at every
        /// fenced section).
        pub(crate) light_after: u32,
        /// Whether readers start fenced (as a writer leaves a reader that did not acknowledge).
        pub(crate) start_fenced: bool,
        /// The defect in force, if any.
        pub(crate) defect: Option<Defect>,
    }

    loom::lazy_static! {
        static ref KNOBS: std::sync::Mutex<Option<Knobs>> = std::sync::Mutex::new(None);
        /// Barrier generations the writer asked for.
        static ref GENERATION: AtomicU64 = AtomicU64::new(0);
        /// Per participant (a thread the test made one before starting it): the last
        /// generation it executed a barrier for. The list is the model's bookkeeping, not part
        /// of the protocol, hence a `std` lock; every entry exists before its thread starts.
        static ref PARTICIPANTS: std::sync::Mutex<Vec<Arc<AtomicU64>>> =
            std::sync::Mutex::new(Vec::new());
        /// Wakes the writer when a participant acknowledged (a wait loom need not explore
        /// step by step).
        static ref ACKED: loom::sync::Notify = loom::sync::Notify::new();
    }

    loom::thread_local! {
        /// This thread's index in `PARTICIPANTS`, and the last generation it executed.
        static ME: Cell<Option<(usize, u64)>> = Cell::new(None);
    }

    /// Sets this execution's knobs; the test's first call in every execution.
    #[cfg(test)]
    pub(crate) fn set_knobs(knobs: Knobs) {
        *KNOBS.lock().unwrap() = Some(knobs);
        // Made now, before any other thread: loom orders a lazy static's first use after its
        // making, an order the real (plain) statics do not give.
        let _ = (&*GENERATION, &*ACKED);
    }

    /// This execution's knobs.
    pub(crate) fn knobs() -> Knobs {
        KNOBS
            .lock()
            .unwrap()
            .expect("loom test: set_knobs first in every execution")
    }

    pub(crate) fn defect(d: Defect) -> bool {
        knobs().defect == Some(d)
    }

    /// A new participant, made before its thread starts (so every membarrier after the thread
    /// started waits for it); the thread calls [`become_participant`] with it first.
    #[cfg(test)]
    pub(crate) fn new_participant() -> usize {
        let mut all = PARTICIPANTS.lock().unwrap();
        all.push(Arc::new(AtomicU64::new(0)));
        all.len() - 1
    }

    /// Makes the calling thread participant `index`.
    #[cfg(test)]
    pub(crate) fn become_participant(index: usize) {
        ME.with(|me| me.set(Some((index, 0))));
    }

    fn acked(index: usize) -> Arc<AtomicU64> {
        PARTICIPANTS.lock().unwrap()[index].clone()
    }

    /// Ends the calling thread's part: it runs no more accesses the protocol cares about, so it
    /// never holds a barrier up (a thread that is not running has no access in flight). Loom
    /// tests call this last in each participant.
    #[cfg(test)]
    pub(crate) fn leave() {
        if let Some((index, _)) = ME.with(|me| me.take()) {
            fence(Ordering::SeqCst);
            acked(index).store(u64::MAX, Ordering::SeqCst);
            ACKED.notify();
        }
    }

    /// Where the kernel may interrupt a reader to run the barrier: the reader executes
    /// `fence(SeqCst)` if a membarrier is pending. Loom explores every interleaving of these
    /// points with the writer, so every place of the interrupt among them.
    pub(crate) fn interrupt_point() {
        if !knobs().membarrier {
            return;
        }
        let Ok(Some((index, seen))) = ME.try_with(|me| me.get()) else {
            return;
        };
        // Relaxed: a SeqCst access is a full fence in loom's model, which would give every
        // reader a fence at every point and hide the defects the model exists to catch. Seeing
        // the writer's increment is enough: its fence before the increment and the fence here
        // after reading it then synchronize.
        let generation = GENERATION.load(Ordering::Relaxed);
        if generation > seen {
            fence(Ordering::SeqCst);
            let _ = ME.try_with(|me| me.set(Some((index, generation))));
            acked(index).store(generation, Ordering::SeqCst);
            ACKED.notify();
        }
    }

    pub(crate) fn membarrier_register() -> bool {
        knobs().membarrier
    }

    /// The modelled `membarrier(PRIVATE_EXPEDITED)`: a full fence, a new generation, then a wait
    /// until every other participant executed its fence for it (at an interrupt point) or
    /// ended; then a full fence. The reader's fence, ordered after its load of the generation
    /// and before its acknowledgement, gives both directions of the syscall's contract: the
    /// writer's accesses before the call happen before the reader's after the interrupt, and the
    /// reader's before it happen before the writer's after the call.
    pub(crate) fn membarrier() {
        fence(Ordering::SeqCst);
        let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
        // The caller's own accesses are in program order: it never waits for itself.
        let me = ME.try_with(|me| me.get()).ok().flatten().map(|(i, _)| i);
        let all: Vec<Arc<AtomicU64>> = PARTICIPANTS.lock().unwrap().clone();
        for (index, acked) in all.iter().enumerate() {
            if Some(index) == me {
                continue;
            }
            while acked.load(Ordering::SeqCst) < generation {
                ACKED.wait();
            }
        }
        fence(Ordering::SeqCst);
    }
}
