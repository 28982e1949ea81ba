//! Read-copy-update for the address space: how `dma_rw` finds a mapping without a lock, and how
//! `unmap` knows that no access to removed memory is in flight.
//!
//! Readers: each thread owns a [`Slot`] whose sequence number is odd while the thread is inside
//! a read section. Entering is a plain load and store of the thread's own counter, then a load
//! of the reader mode ([`FENCED`]); leaving is one release store. No read-modify-write.
//!
//! Writers publish a new table, then call [`synchronize`]: a barrier orders every reader's "I am
//! inside" store against its load of the table pointer, then the writer waits for every slot
//! that was odd to change. A reader that entered after the barrier sees the new table; one that
//! entered before is waited for. After that the old table and the memory only it referenced can
//! be freed.
//!
//! The barrier comes in two modes, chosen by the writers' rate ([`Policy`]):
//!
//! - **light** (the usual one): readers execute no fence; the writer's `membarrier
//!   (PRIVATE_EXPEDITED)` makes every running thread of the process execute one for them
//!   (liburcu's "memb" flavour). Free for readers, but every grace period interrupts every CPU
//!   that runs a thread of the process (an IPI: microseconds each in a virtual machine).
//! - **fenced**, while grace periods come quickly (a VMM mapping and unmapping all the time):
//!   readers execute a full fence after entering (about 1.5 ns), the writer a plain fence.
//!   No interrupt.
//!
//! Switching is safe because [`FENCED`] changes only under [`SWITCH`], which a writer holds for
//! its whole grace period; every switch to fenced is followed by a membarrier before any writer
//! relies on it (after which no reader can load the old mode: each loads it *after* its entry
//! store, so a reader that loaded "light" has its entry store before the barrier and is seen by
//! the scan); and a switch to light is seen by the next writer, which then takes the membarrier
//! again. Readers return to light
//! themselves when they see no grace period for a while (`ReaderState::check_quiet`).
//!
//! Where `membarrier` is unavailable (old kernel, seccomp), readers are always fenced.
//!
//! The synchronization primitives come from `crate::sync`: the standard library's, or loom's
//! (with a model of membarrier and switchable defects) under `cfg(loom)`, where
//! `rcu/loom_tests.rs` checks this very code in both modes and across switches (run with
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
    spin_wait, AtomicBool, AtomicPtr, AtomicU64, Defect, Mutex, MutexGuard, Ordering,
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

/// A reader's sequence number, on its own cache lines.
#[repr(align(128))]
struct Slot {
    seq: AtomicU64,
}

/// Every live reader's slot.
#[cfg(not(loom))]
static READERS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

/// The reader mode: true while readers must fence after entering. Changed only under
/// [`SWITCH`]; readers load it with `Relaxed` after their entry store. On cache lines of its own:
/// every section reads it, and the writers' counters next to it would take the line away at
/// every grace period.
#[cfg(not(loom))]
static FENCED: Alone<AtomicBool> = Alone(AtomicBool::new(false));

/// Grace periods so far, for readers to notice when none come any more.
#[cfg(not(loom))]
static SYNCS: AtomicU64 = AtomicU64::new(0);

/// Held (true) by the writer for a whole grace period, and for an instant by a reader that
/// returns readers to light mode: so no reader does that while a writer relies on fenced
/// readers. Readers only try it (no reader ever waits); the writer waits for that instant.
#[cfg(not(loom))]
static SWITCH: AtomicBool = AtomicBool::new(false);

/// One grace period at a time; the rate policy.
#[cfg(not(loom))]
static GRACE: Mutex<Policy> = Mutex::new(Policy::new());

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
    static ref FENCED: Alone<AtomicBool> =
        Alone(AtomicBool::new(!crate::sync::knobs().membarrier));
    static ref SYNCS: AtomicU64 = AtomicU64::new(0);
    static ref SWITCH: AtomicBool = AtomicBool::new(false);
    static ref GRACE: Mutex<Policy> = Mutex::new(Policy::new());
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
    let _ = (&*READERS, &*FENCED, &*SYNCS, &*SWITCH, &*GRACE, &*FALLBACK);
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
            FENCED.store(true, Ordering::Relaxed);
        }
        ok
    })
}

#[cfg(loom)]
fn membarrier_registered() -> bool {
    membarrier_register()
}

/// When readers should be fenced: while grace periods come faster than one per `BURST_GAP`,
/// `BURST_LEN` in a row. A membarrier costs each CPU running a reader an interrupt (measured
/// 5-9 us in this project's KVM guests), a fenced section about 1.5 ns: at 2,000 grace periods
/// a second the interrupts take 1-2% of every reader CPU, more than fences cost any reader
/// but one doing millions of tiny accesses a second.
struct Policy {
    #[cfg(not(loom))]
    last: Option<Instant>,
    #[cfg(not(loom))]
    burst: u32,
    #[cfg(loom)]
    count: u32,
}

#[cfg(not(loom))]
const BURST_GAP: Duration = Duration::from_micros(500);
#[cfg(not(loom))]
const BURST_LEN: u32 = 8;

/// Fenced sections a reader runs between its looks for quiet (no grace period since the last
/// look), after which it returns readers to light mode.
#[cfg(not(loom))]
const QUIET_SECTIONS: u32 = 1 << 14;

impl Policy {
    #[cfg(not(loom))]
    const fn new() -> Policy {
        Policy {
            last: None,
            burst: 0,
        }
    }

    #[cfg(loom)]
    fn new() -> Policy {
        Policy { count: 0 }
    }

    /// Called once per grace period: whether readers should be fenced for it.
    #[cfg(not(loom))]
    fn want_fenced(&mut self) -> bool {
        let now = Instant::now();
        let quick = self.last.is_some_and(|l| now.duration_since(l) < BURST_GAP);
        self.burst = if quick {
            self.burst.saturating_add(1)
        } else {
            0
        };
        self.last = Some(now);
        self.burst >= BURST_LEN
    }

    /// Under loom, the test's script decides.
    #[cfg(loom)]
    fn want_fenced(&mut self) -> bool {
        let k = self.count;
        self.count += 1;
        k < 32 && crate::sync::knobs().fenced_script & (1 << k) != 0
    }
}

#[cfg(not(loom))]
fn quiet_sections() -> u32 {
    QUIET_SECTIONS
}

#[cfg(loom)]
fn quiet_sections() -> u32 {
    crate::sync::knobs().quiet_sections
}

struct ReaderState {
    slot: Arc<Slot>,
    depth: Cell<u32>,
    /// Fenced sections left until the next look for quiet.
    until_look: Cell<u32>,
    /// `SYNCS` at the last look.
    syncs_seen: Cell<u64>,
}

// SAFETY: only the FALLBACK_READER is shared between threads, and it is used only while FALLBACK
// is locked.
unsafe impl Sync for ReaderState {}
// SAFETY: as above.
unsafe impl Send for ReaderState {}

impl ReaderState {
    fn new() -> ReaderState {
        // Decides the initial mode before this reader can enter.
        membarrier_registered();
        let slot = Arc::new(Slot {
            seq: AtomicU64::new(0),
        });
        READERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.clone());
        ReaderState {
            slot,
            depth: Cell::new(0),
            until_look: Cell::new(quiet_sections()),
            syncs_seen: Cell::new(0),
        }
    }

    #[inline(always)]
    fn enter(&self) {
        let depth = self.depth.get();
        self.depth.set(depth + 1);
        if depth == 0 {
            let early = defect(Defect::ModeBeforeEntry).then(|| FENCED.load(Ordering::Relaxed));
            interrupt_point();
            let seq = self.slot.seq.load(Ordering::Relaxed);
            // Release, not Relaxed: a writer that waits on this slot may read this store
            // (the next section's entry) instead of the previous exit's; under the language's
            // rules (C++20 release sequences) only a release store then orders the previous
            // section's reads before the writer's reclaim. Free on x86 (loom found this).
            let entry = ordering(Ordering::Release, Defect::RelaxedEntry);
            self.slot.seq.store(seq + 1, entry);
            interrupt_point();
            // The mode is loaded after the entry store: see the module's documentation.
            if early.unwrap_or_else(|| FENCED.load(Ordering::Relaxed)) {
                self.fenced();
            } else {
                compiler_fence(Ordering::SeqCst);
            }
            interrupt_point();
        }
    }

    /// A fenced reader's part: the fence the writer will not send, and now and then a look for
    /// quiet.
    #[inline(always)]
    fn fenced(&self) {
        if !defect(Defect::ReaderFenceMissing) {
            fence(Ordering::SeqCst);
        }
        let left = self.until_look.get();
        if left == 0 {
            self.check_quiet();
        } else {
            self.until_look.set(left - 1);
        }
    }

    /// If no grace period started since the last look, returns readers to light mode (the
    /// next writer then takes the membarrier). Holding [`SWITCH`], so never while a writer
    /// relies on fenced readers; if a writer holds it, a grace period is under way and this is
    /// no time for light mode anyway.
    #[cold]
    #[inline(never)]
    fn check_quiet(&self) {
        self.until_look.set(quiet_sections());
        let syncs = SYNCS.load(Ordering::Relaxed);
        if syncs != self.syncs_seen.replace(syncs) || !membarrier_registered() {
            return;
        }
        if defect(Defect::UnlockedReturnToLight) {
            FENCED.store(false, Ordering::Relaxed);
            return;
        }
        if SWITCH
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            FENCED.store(false, Ordering::Relaxed);
            SWITCH.store(false, Ordering::Release);
        }
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
    // Registers (once) before the first membarrier, and fixes the mode if it cannot.
    let registered = membarrier_registered();
    let mut policy = GRACE.lock().unwrap_or_else(|e| e.into_inner());
    SYNCS.fetch_add(1, Ordering::Relaxed);
    let slots: Vec<Arc<Slot>> = READERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let want = policy.want_fenced();
    let mut spins = 0u32;
    while SWITCH
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        spin_wait(&mut spins);
    }
    let _switch = SwitchHeld;
    // Only `SWITCH`'s holders change the mode, so this is the mode readers are in, except
    // those that loaded it before the last switch to fenced: that switch's membarrier covered
    // them (their entry store came before it).
    let fenced = FENCED.load(Ordering::Relaxed);
    if defect(Defect::WriterBarrierMissing) {
        // No barrier at all.
    } else if fenced && (want || !registered) {
        // Every reader fences after entering; this fence pairs with theirs.
        fence(Ordering::SeqCst);
    } else {
        if want != fenced {
            FENCED.store(want, Ordering::Relaxed);
        }
        if want && defect(Defect::NoSwitchBarrier) {
            fence(Ordering::SeqCst);
        } else {
            membarrier();
        }
    }
    let scan = ordering(Ordering::Acquire, Defect::RelaxedScan);
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

/// `SWITCH`, taken by `synchronize`; given back when it returns (or unwinds: a panicking
/// writer must not leave every later grace period waiting).
struct SwitchHeld;

impl Drop for SwitchHeld {
    fn drop(&mut self) {
        // A loom model that caught a defect unwinds through here (see `Reader::drop`).
        #[cfg(loom)]
        if std::thread::panicking() {
            return;
        }
        SWITCH.store(false, Ordering::Release);
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

    /// The mode switches as the policy says, in a normal build: a burst of grace periods makes
    /// readers fenced; a reader that sees none for a while returns them to light. Other tests
    /// of this process start grace periods too (they only lengthen a burst, but they can
    /// delay the quiet), hence retries instead of exact counts.
    #[test]
    fn a_burst_fences_readers_and_quiet_returns_them_to_light() {
        if !membarrier_registered() {
            // Readers are always fenced then.
            assert!(FENCED.load(Ordering::Relaxed));
            return;
        }
        // A burst: BURST_LEN + 1 grace periods in a row, again if this thread was descheduled
        // for longer than the gap in between (a loaded machine).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !FENCED.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "bursts leave readers light");
            for _ in 0..=BURST_LEN {
                synchronize();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while FENCED.load(Ordering::Relaxed) {
            assert!(
                Instant::now() < deadline,
                "readers stay fenced without grace periods"
            );
            for _ in 0..=QUIET_SECTIONS {
                drop(enter());
            }
        }
    }
}
