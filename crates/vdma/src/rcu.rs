//! Read-copy-update for the address space: how `dma_rw` finds a mapping without a lock, and how
//! `unmap` knows that no access to removed memory is in flight.
//!
//! Readers: each thread owns a [`Slot`]. Its `seq` is odd while the thread is inside a read
//! section: entering is a plain load and store of it, leaving one release store; no
//! read-modify-write. Every entry then loads [`SYNCS`], the number of the last grace period
//! begun (acquire), and when it changed stores it to the slot's `ack` (release).
//!
//! Writers publish a new table, then call [`synchronize`], which begins grace period `g`
//! (`SYNCS`, release) and, for each reader, waits for one of two proofs:
//!
//! - **acknowledged**: `ack >= g` (acquire). The reader's sections before that store are over
//!   (release), and the one that stored it, like every later one, loads the table pointer after
//!   its acquire load of `SYNCS` saw `g`, so after the new table was published. A reader that
//!   keeps calling gives this proof at its next entry, within nanoseconds, for the cost of two
//!   cache misses: no interrupt, no fence. The writer polls for it for [`ACK_SPIN`].
//! - **quiescent**, for the readers that did not acknowledge (idle threads, or one long
//!   section): a barrier orders each such reader's "I am inside" store against its load of the
//!   table pointer, then the writer waits for every `seq` that was odd to change. A reader that
//!   entered after the barrier sees the new table; one that entered before is waited for.
//!
//! The barrier depends on the reader's **mode** (in its slot):
//!
//! - **light** (a new reader's): the reader executes no fence, so the writer needs
//!   `membarrier(PRIVATE_EXPEDITED)` (liburcu's "memb" flavour: the kernel makes every running
//!   thread of the process execute one; an interrupt per CPU, microseconds in a virtual
//!   machine). The writer also turns the reader **fenced**, so that it pays this once per
//!   reader that goes idle, not once per grace period.
//! - **fenced**: the reader executes a full fence after entering (nothing, while it is idle),
//!   and the writer a plain fence. A fenced reader that runs [`LIGHT_AFTER`] sections returns
//!   itself to light (a busy reader acknowledges; the fence would only cost it).
//!
//! Mode changes are safe because: a reader loads its mode *after* its entry store; a writer
//! that turns a reader fenced takes the membarrier in the same grace period (a reader section
//! that loaded "light" has its entry store before it, and later sections load "fenced"); and a
//! writer that relies on a fenced reader **pins** it first (compare-and-swap fenced -> pinned,
//! back after its scan), while the reader returns to light only by compare-and-swap from fenced,
//! which fails while pinned. Where membarrier is unavailable (old kernel, seccomp), every reader
//! is fenced for the process's life ([`ALWAYS_FENCED`]).
//!
//! The synchronization primitives come from `crate::sync`: the standard library's, or loom's
//! (with a model of membarrier and switchable defects) under `cfg(loom)`, where
//! `rcu/loom_tests.rs` checks this very code along both proofs and across mode changes (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p vdma --lib --release loom_`).

use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::sync::Arc;
#[cfg(not(loom))]
use std::sync::OnceLock;
#[cfg(not(loom))]
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sync::{
    compiler_fence, defect, fence, interrupt_point, membarrier, membarrier_register, ordering,
    spin_wait, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Defect, Mutex, MutexGuard, Ordering,
};

/// A value on cache lines of its own (128 bytes: adjacent-line prefetch pairs lines).
#[repr(align(128))]
struct Alone<T>(T);

impl<T> std::ops::Deref for Alone<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A reader's state as writers see it, each field on cache lines of its own: `seq` changes at
/// every entry and exit, and writers read it only for readers that did not acknowledge; `mode`
/// is read at every entry and changed only for such readers; `ack` changes once per grace
/// period and writers poll it.
struct Slot {
    /// Odd while the reader is inside a read section.
    seq: Alone<AtomicU64>,
    /// [`LIGHT`], [`FENCED`] or [`PINNED`].
    mode: Alone<AtomicU8>,
    /// The last [`SYNCS`] value the reader loaded when entering.
    ack: Alone<AtomicU64>,
}

/// The reader executes no fence; a writer needs a membarrier for it.
const LIGHT: u8 = 0;
/// The reader fences after entering.
const FENCED: u8 = 1;
/// Fenced, and a writer relies on it: the reader may not return to light.
const PINNED: u8 = 2;

/// A new reader's mode: light, or fenced for good where membarrier is unavailable (decided
/// before: `ReaderState::new` asks first); under loom, as the test's knobs say.
fn initial_mode() -> u8 {
    #[cfg(loom)]
    let start_fenced = crate::sync::knobs().start_fenced;
    #[cfg(not(loom))]
    let start_fenced = false;
    if start_fenced || ALWAYS_FENCED.load(Ordering::Relaxed) {
        FENCED
    } else {
        LIGHT
    }
}

impl Slot {
    fn new() -> Slot {
        Slot {
            seq: Alone(AtomicU64::new(0)),
            mode: Alone(AtomicU8::new(initial_mode())),
            ack: Alone(AtomicU64::new(0)),
        }
    }
}

/// Every live reader's slot.
#[cfg(not(loom))]
static READERS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

/// True when `membarrier` is unavailable: every reader starts fenced and never returns to light.
/// Decided before the first reader registers, never changed after.
#[cfg(not(loom))]
static ALWAYS_FENCED: Alone<AtomicBool> = Alone(AtomicBool::new(false));

/// The number of the last grace period begun; every entry loads it. On cache lines of its own.
#[cfg(not(loom))]
static SYNCS: Alone<AtomicU64> = Alone(AtomicU64::new(0));

/// One grace period at a time.
#[cfg(not(loom))]
static GRACE: Mutex<()> = Mutex::new(());

/// How long a writer polls for acknowledgements before it turns to the quiescent proof for the
/// readers that did not give one. A reader that keeps calling acknowledges within one call.
#[cfg(not(loom))]
const ACK_SPIN: Duration = Duration::from_micros(20);

/// Fenced sections a reader runs before it returns itself to light mode.
#[cfg(not(loom))]
const LIGHT_AFTER: u32 = 4096;

/// For threads whose thread-local reader is already destroyed (DMA from a TLS destructor):
/// they share one slot, one at a time.
#[cfg(not(loom))]
static FALLBACK: Mutex<()> = Mutex::new(());
#[cfg(not(loom))]
static FALLBACK_READER: OnceLock<ReaderState> = OnceLock::new();

/// The fallback reader (created, and registered, on first use).
#[cfg(not(loom))]
fn fallback_reader() -> &'static ReaderState {
    FALLBACK_READER.get_or_init(ReaderState::new)
}

// Under loom the same statics, made afresh for every execution the model explores (loom's
// objects belong to one execution, and its `Mutex::new` is not `const`).
#[cfg(loom)]
loom::lazy_static! {
    static ref READERS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());
    static ref ALWAYS_FENCED: Alone<AtomicBool> =
        Alone(AtomicBool::new(!crate::sync::knobs().membarrier));
    static ref SYNCS: Alone<AtomicU64> = Alone(AtomicU64::new(0));
    static ref GRACE: Mutex<()> = Mutex::new(());
    static ref FALLBACK: Mutex<()> = Mutex::new(());
    static ref FALLBACK_READER: ReaderState = ReaderState::new();
}

#[cfg(loom)]
fn fallback_reader() -> &'static ReaderState {
    &FALLBACK_READER
}

/// Makes this execution's statics before any other thread runs: loom orders a lazy static's
/// first use after its making, an order the real (plain) statics do not give, and which would
/// hide defects. (The fallback reader is made on first use, under its lock, as in a normal
/// build.) Loom tests call this after setting the knobs.
#[cfg(all(loom, test))]
pub(crate) fn make_statics() {
    let _ = (&*READERS, &*ALWAYS_FENCED, &*SYNCS, &*GRACE, &*FALLBACK);
}

/// Whether `membarrier(PRIVATE_EXPEDITED)` is registered for this process.
#[cfg(not(loom))]
static MEMBARRIER: OnceLock<bool> = OnceLock::new();

#[cfg(not(loom))]
fn membarrier_registered() -> bool {
    *MEMBARRIER.get_or_init(|| {
        let ok = membarrier_register();
        if !ok {
            // Before any reader exists (each asks this first): readers fence from the start.
            ALWAYS_FENCED.store(true, Ordering::Relaxed);
        }
        ok
    })
}

#[cfg(loom)]
fn membarrier_registered() -> bool {
    membarrier_register()
}

#[cfg(not(loom))]
fn light_after() -> u32 {
    LIGHT_AFTER
}

#[cfg(loom)]
fn light_after() -> u32 {
    crate::sync::knobs().light_after
}

struct ReaderState {
    slot: Arc<Slot>,
    depth: Cell<u32>,
    /// The last `SYNCS` value this reader stored to its `ack`.
    acked: Cell<u64>,
    /// Fenced sections left before this reader tries to return to light mode.
    fenced_left: Cell<u32>,
}

// SAFETY: only the FALLBACK_READER is shared between threads, and it is used only while FALLBACK
// is locked.
unsafe impl Sync for ReaderState {}
// SAFETY: as above.
unsafe impl Send for ReaderState {}

impl ReaderState {
    fn new() -> ReaderState {
        // Decides whether readers always fence before any reader can enter.
        membarrier_registered();
        let slot = Arc::new(Slot::new());
        READERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.clone());
        ReaderState {
            slot,
            depth: Cell::new(0),
            acked: Cell::new(0),
            fenced_left: Cell::new(light_after()),
        }
    }

    #[inline(always)]
    fn enter(&self) {
        let depth = self.depth.get();
        self.depth.set(depth + 1);
        if depth == 0 {
            let slot = &*self.slot;
            let early = defect(Defect::ModeBeforeEntry).then(|| slot.mode.load(Ordering::Relaxed));
            interrupt_point();
            let seq = slot.seq.load(Ordering::Relaxed);
            // Release, not Relaxed: a writer that waits on this slot may read this store
            // (the next section's entry) instead of the previous exit's; under the language's
            // rules (C++20 release sequences) only a release store then orders the previous
            // section's reads before the writer's reclaim. Free on x86 (loom found this).
            let entry = ordering(Ordering::Release, Defect::RelaxedEntry);
            slot.seq.store(seq + 1, entry);
            interrupt_point();
            // The mode is loaded after the entry store: see the module's documentation.
            let mode = early.unwrap_or_else(|| slot.mode.load(Ordering::Relaxed));
            if mode != LIGHT {
                self.fenced();
            } else {
                compiler_fence(Ordering::SeqCst);
            }
            interrupt_point();
            // The acknowledgement: the table pointer is loaded after this acquire load.
            let syncs = SYNCS.load(ordering(Ordering::Acquire, Defect::RelaxedSyncsLoad));
            if syncs != self.acked.get() {
                self.acknowledge(syncs);
            }
            interrupt_point();
        }
    }

    /// A fenced reader's part: the fence, and after [`LIGHT_AFTER`] of them a try to return to
    /// light mode.
    #[inline(always)]
    fn fenced(&self) {
        if !defect(Defect::ReaderFenceMissing) {
            fence(Ordering::SeqCst);
        }
        let left = self.fenced_left.get();
        if left == 0 {
            self.try_light();
        } else {
            self.fenced_left.set(left - 1);
        }
    }

    /// Returns this reader to light mode, unless a writer has it pinned (then later), or
    /// membarrier is unavailable (then never).
    #[cold]
    #[inline(never)]
    fn try_light(&self) {
        self.fenced_left.set(light_after());
        if ALWAYS_FENCED.load(Ordering::Relaxed) {
            return;
        }
        let mode_cell = &self.slot.mode;
        if defect(Defect::UnpinnedReturnToLight) {
            mode_cell.store(LIGHT, Ordering::Relaxed);
            return;
        }
        // Fails if a writer has it pinned: this reader then stays fenced for now.
        let _ = mode_cell.compare_exchange(FENCED, LIGHT, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Tells writers that this reader's earlier sections are over and that it has seen grace
    /// period `syncs` begin.
    #[cold]
    #[inline(never)]
    fn acknowledge(&self, syncs: u64) {
        self.acked.set(syncs);
        let ack = ordering(Ordering::Release, Defect::RelaxedAck);
        self.slot.ack.store(syncs, ack);
    }

    #[inline(always)]
    fn exit(&self) {
        let depth = self.depth.get() - 1;
        self.depth.set(depth);
        if depth == 0 {
            compiler_fence(Ordering::SeqCst);
            interrupt_point();
            let seq = self.slot.seq.load(Ordering::Relaxed);
            let exit = ordering(Ordering::Release, Defect::RelaxedExit);
            self.slot.seq.store(seq + 1, exit);
            // (No interrupt point after: the next one is the next section's first, or the
            // thread's end.)
        }
    }
}

/// Owns this thread's reader state; deregisters it when the thread exits.
struct Reader(ManuallyDrop<ReaderState>);

impl Drop for Reader {
    fn drop(&mut self) {
        // A loom model that caught a defect unwinds through here; touching loom's state again
        // would abort the whole test run instead of reporting the defect. Leak instead.
        #[cfg(loom)]
        if std::thread::panicking() {
            return;
        }
        // `try_with`: with std, `CURRENT` has no destructor and is always there; loom destroys
        // a thread's locals together, so it may be gone when this runs.
        let _ = CURRENT.try_with(|c| c.set(DEAD));
        let mut readers = READERS.lock().unwrap_or_else(|e| e.into_inner());
        readers.retain(|s| !Arc::ptr_eq(s, &self.0.slot));
        drop(readers);
        // SAFETY: the state is dropped here once, and `self` is never used after.
        unsafe { ManuallyDrop::drop(&mut self.0) };
    }
}

/// `CURRENT` after this thread's `Reader` was destroyed (a DMA from another thread-local's
/// destructor): such sections use the shared fallback reader.
const DEAD: *const ReaderState = 1 as *const ReaderState;

#[cfg(not(loom))]
thread_local! {
    static OWNER: Reader = Reader(ManuallyDrop::new(ReaderState::new()));
    /// This thread's reader state, for the fast path: null until first use, `DEAD` after.
    /// Const-initialized and without a destructor, so reading it is one thread-relative load.
    static CURRENT: Cell<*const ReaderState> = const { Cell::new(std::ptr::null()) };
}

// Loom's thread-locals, per loom thread and execution; loom's macro takes no `const` block.
#[cfg(loom)]
loom::thread_local! {
    static OWNER: Reader = Reader(ManuallyDrop::new(ReaderState::new()));
    static CURRENT: Cell<*const ReaderState> = Cell::new(std::ptr::null());
}

/// Proof of being inside a read section; what is loaded from an [`RcuCell`] lives as long as
/// it. Not `Send`: it belongs to the thread that entered.
pub(crate) struct Guard {
    state: *const ReaderState,
    _fallback: Option<MutexGuard<'static, ()>>,
}

impl Guard {
    #[inline(always)]
    fn state(&self) -> &ReaderState {
        // SAFETY: `state` is this thread's reader (alive until the thread exits, and a Guard is
        // neither Send nor outlives the thread) or the static fallback reader.
        unsafe { &*self.state }
    }
}

impl Drop for Guard {
    #[inline(always)]
    fn drop(&mut self) {
        self.state().exit();
    }
}

/// Enters a read section, which lasts until the guard is dropped. Sections nest. No grace
/// period may be waited for inside one.
#[inline(always)]
pub(crate) fn enter() -> Guard {
    let state = CURRENT.with(|c| c.get());
    if state as usize > DEAD as usize {
        // SAFETY: a pointer other than null and DEAD is this thread's live reader state.
        unsafe { &*state }.enter();
        return Guard {
            state,
            _fallback: None,
        };
    }
    enter_slow()
}

#[cold]
#[inline(never)]
fn enter_slow() -> Guard {
    if CURRENT.with(|c| c.get()).is_null() {
        if let Ok(state) = OWNER.try_with(|r| &*r.0 as *const ReaderState) {
            CURRENT.with(|c| c.set(state));
            return enter();
        }
    }
    let lock = FALLBACK.lock().unwrap_or_else(|e| e.into_inner());
    let state: &'static ReaderState = fallback_reader();
    state.enter();
    Guard {
        state,
        _fallback: Some(lock),
    }
}

/// Runs `f` inside a read section.
#[inline(always)]
pub(crate) fn read<R>(f: impl FnOnce(&Guard) -> R) -> R {
    let guard = enter();
    f(&guard)
}

/// EDEADLK if this thread is inside a read section, where waiting for a grace period would wait
/// for itself (a `Memory` implementation calling `unmap` from `read_at`, say).
pub(crate) fn check_outside() -> Result<()> {
    let state = CURRENT.with(|c| c.get());
    // SAFETY: as in `enter`.
    if state as usize > DEAD as usize && unsafe { &*state }.depth.get() > 0 {
        return Err(Error::Reentrant);
    }
    Ok(())
}

/// Waits until every read section that might have seen a pointer replaced before this call has
/// ended. After it returns, what only those sections could reach may be freed. The caller has
/// checked [`check_outside`].
pub(crate) fn synchronize() {
    debug_assert!(check_outside().is_ok());
    // Registers (once) before the first membarrier, and fixes ALWAYS_FENCED if it cannot.
    let registered = membarrier_registered();
    let _one = GRACE.lock().unwrap_or_else(|e| e.into_inner());
    // Release: a reader whose acquire load sees this number (or a later one: the increments
    // form a release sequence) sees the tables published before it. Not SeqCst, which loom
    // models as a full fence (it would hide the defects below).
    let bump = ordering(Ordering::AcqRel, Defect::RelaxedBump);
    let grace = SYNCS.fetch_add(1, bump) + 1;
    // This thread is outside any section (checked above): it acknowledges for itself.
    let me = CURRENT.with(|c| c.get());
    if me as usize > DEAD as usize {
        // SAFETY: as in `enter`.
        unsafe { &*me }.acknowledge(grace);
    }
    let mut slots: Vec<Arc<Slot>> = READERS.lock().unwrap_or_else(|e| e.into_inner()).clone();

    // The acknowledged readers are done with the old tables. Light readers get a moment to
    // acknowledge (a busy one does at its next entry): the alternative for them is an
    // interrupt. Fenced ones cost no interrupt, so they are not waited for here.
    let ack = ordering(Ordering::Acquire, Defect::RelaxedAckLoad);
    let mut polls = AckPolls::new();
    loop {
        slots.retain(|slot| slot.ack.load(ack) < grace);
        let light = |slot: &Arc<Slot>| slot.mode.load(Ordering::Relaxed) == LIGHT;
        if !registered || !slots.iter().any(light) || !polls.again() {
            break;
        }
    }
    if slots.is_empty() {
        return;
    }

    // The others: quiescent-state detection, behind a barrier that depends on their modes.
    let mut membarrier_needed = false;
    let mut pinned = Vec::new();
    if registered {
        for slot in &slots {
            let mode = &slot.mode;
            match mode.compare_exchange(FENCED, PINNED, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => pinned.push(slot.clone()),
                Err(_) => {
                    // Light (only this writer pins): it becomes fenced, and this grace period
                    // takes the membarrier that covers its sections that loaded "light".
                    mode.store(FENCED, Ordering::Relaxed);
                    membarrier_needed = true;
                }
            }
        }
    }
    if defect(Defect::WriterBarrierMissing) {
        // No barrier at all.
    } else if membarrier_needed && !defect(Defect::NoSwitchBarrier) {
        membarrier();
    } else {
        // Every reader waited for here fences after entering; this fence pairs with theirs.
        fence(Ordering::SeqCst);
    }
    let scan = ordering(Ordering::Acquire, Defect::RelaxedScan);
    for slot in &slots {
        let seq = slot.seq.load(scan);
        if seq & 1 == 0 {
            continue;
        }
        let mut spins = 0u32;
        while slot.seq.load(scan) == seq {
            spin_wait(&mut spins);
        }
    }
    for slot in pinned {
        slot.mode.store(FENCED, Ordering::Relaxed);
    }
}

/// How long `synchronize` polls light readers for acknowledgements: [`ACK_SPIN`]; under loom,
/// as many polls as the test's knobs say.
struct AckPolls {
    #[cfg(not(loom))]
    until: Option<Instant>,
    #[cfg(loom)]
    left: u32,
}

impl AckPolls {
    #[cfg(not(loom))]
    fn new() -> AckPolls {
        AckPolls { until: None }
    }

    /// Whether to poll again (after a pause).
    #[cfg(not(loom))]
    fn again(&mut self) -> bool {
        let now = Instant::now();
        let until = *self.until.get_or_insert(now + ACK_SPIN);
        std::hint::spin_loop();
        now < until
    }

    #[cfg(loom)]
    fn new() -> AckPolls {
        AckPolls {
            left: crate::sync::knobs().ack_polls,
        }
    }

    #[cfg(loom)]
    fn again(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        loom::thread::yield_now();
        true
    }
}

/// A pointer that readers load inside a read section and writers replace. It does not own what
/// it points to: the writer keeps the value alive until a grace period after replacing it. The
/// values are in `std` `Arc`s (the tables are ordinary memory, even under loom); the pointer is
/// `crate::sync`'s.
pub(crate) struct RcuCell<T> {
    ptr: AtomicPtr<T>,
}

impl<T> RcuCell<T> {
    /// A cell pointing at `value`, which the caller keeps alive.
    pub(crate) fn new(value: &std::sync::Arc<T>) -> RcuCell<T> {
        RcuCell {
            ptr: AtomicPtr::new(std::sync::Arc::as_ptr(value) as *mut T),
        }
    }

    /// The current value, valid for the read section.
    #[inline(always)]
    pub(crate) fn load<'g>(&self, _guard: &'g Guard) -> &'g T {
        // SAFETY: the writer keeps every value that was published alive until a grace period
        // has passed after it was replaced (`synchronize`), and this read section started before
        // that grace period could end.
        let value = unsafe { &*self.ptr.load(Ordering::Acquire) };
        interrupt_point();
        value
    }

    /// Publishes `value`, which the caller keeps alive until it is replaced and a grace period
    /// has passed.
    pub(crate) fn publish(&self, value: &std::sync::Arc<T>) {
        self.ptr
            .store(std::sync::Arc::as_ptr(value) as *mut T, Ordering::Release);
    }
}

#[cfg(all(test, loom))]
mod loom_tests;

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    use std::sync::mpsc;
    use std::thread;

    /// This thread's slot (registering its reader first).
    fn my_slot() -> Arc<Slot> {
        drop(enter());
        let state = CURRENT.with(|c| c.get());
        // SAFETY: after `enter`, CURRENT is this thread's live reader state.
        unsafe { &*state }.slot.clone()
    }

    /// A reader thread that registered and then sits idle: the first grace period cannot get
    /// its acknowledgement and turns it fenced (one membarrier), so later ones need none; it
    /// stays fenced while idle (only the reader itself returns to light).
    #[test]
    fn an_idle_reader_is_turned_fenced() {
        if !membarrier_registered() {
            return; // Every reader is fenced then.
        }
        let (slot_tx, slot_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let idle = thread::spawn(move || {
            slot_tx.send(my_slot()).unwrap();
            let _ = stop_rx.recv();
        });
        let slot = slot_rx.recv().unwrap();
        assert_eq!(slot.mode.load(Ordering::Relaxed), LIGHT);
        synchronize();
        assert_eq!(slot.mode.load(Ordering::Relaxed), FENCED);
        synchronize();
        assert_eq!(slot.mode.load(Ordering::Relaxed), FENCED);
        assert_eq!(slot.seq.load(Ordering::Relaxed) & 1, 0);
        stop_tx.send(()).unwrap();
        idle.join().unwrap();
    }

    /// A reader that keeps entering acknowledges every grace period, and a fenced one returns
    /// itself to light after `LIGHT_AFTER` sections.
    #[test]
    fn a_busy_reader_acknowledges_and_returns_to_light() {
        let stop = Arc::new(AtomicBool::new(false));
        let (slot_tx, slot_rx) = mpsc::channel();
        let busy = {
            let stop = stop.clone();
            thread::spawn(move || {
                slot_tx.send(my_slot()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    drop(enter());
                }
            })
        };
        let slot = slot_rx.recv().unwrap();
        // Fenced, as a writer leaves a reader that was slow to acknowledge.
        slot.mode.store(FENCED, Ordering::Relaxed);
        synchronize();
        let grace = SYNCS.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(20);
        while slot.ack.load(Ordering::Acquire) < grace
            || (membarrier_registered() && slot.mode.load(Ordering::Relaxed) != LIGHT)
        {
            assert!(
                Instant::now() < deadline,
                "the busy reader neither acknowledged nor returned to light"
            );
            thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        busy.join().unwrap();
    }

    /// A grace period waits for a section that was open when it began, in either mode.
    #[test]
    fn a_grace_period_waits_for_an_open_section() {
        for mode in [LIGHT, FENCED] {
            let (open_tx, open_rx) = mpsc::channel();
            let (close_tx, close_rx) = mpsc::channel::<()>();
            let reader = thread::spawn(move || {
                let slot = my_slot();
                slot.mode.store(mode, Ordering::Relaxed);
                let guard = enter();
                open_tx.send(()).unwrap();
                let _ = close_rx.recv();
                drop(guard);
            });
            open_rx.recv().unwrap();
            let done = Arc::new(AtomicBool::new(false));
            let writer = {
                let done = done.clone();
                thread::spawn(move || {
                    synchronize();
                    done.store(true, Ordering::Release);
                })
            };
            thread::sleep(Duration::from_millis(50));
            assert!(
                !done.load(Ordering::Acquire),
                "synchronize returned while a section was open (mode {mode})"
            );
            close_tx.send(()).unwrap();
            writer.join().unwrap();
            assert!(done.load(Ordering::Acquire));
            reader.join().unwrap();
        }
    }
}
