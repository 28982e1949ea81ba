//! Read-copy-update for the address space: how `dma_rw` finds a mapping without a lock, and how
//! `unmap` knows that no access to removed memory is in flight.
//!
//! Readers: each thread owns a [`Slot`] whose sequence number is odd while the thread is inside
//! a read section. Entering is a plain load and store of the thread's own counter followed by a
//! compiler fence; leaving is one release store. No read-modify-write, no full fence.
//!
//! Writers publish a new table, then call [`synchronize`]: one `membarrier(PRIVATE_EXPEDITED)`
//! makes every running thread of the process execute a full memory barrier, which orders each
//! reader's "I am inside" store against its load of the table pointer (the fence the reader
//! skipped). Then the writer waits for every slot that was odd to change. A reader that entered
//! after the barrier sees the new table; one that entered before is waited for. After that the
//! old table and the memory only it referenced can be freed. This is liburcu's "memb" flavour.
//!
//! Where `membarrier` is unavailable (old kernel, seccomp), readers fall back to a full fence
//! after entering, and writers to a full fence before scanning.
//!
//! The synchronization primitives come from `crate::sync`: the standard library's, or loom's
//! under `cfg(loom)`, where `rcu/loom_tests.rs` checks this very code (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p vdma --lib --release loom_`).

use std::cell::Cell;
#[cfg(not(loom))]
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::sync::{
    compiler_fence, fence, spin_wait, Arc, AtomicPtr, AtomicU64, Mutex, MutexGuard, Ordering,
};

/// A reader's sequence number, on its own cache lines.
#[repr(align(128))]
struct Slot {
    seq: AtomicU64,
}

/// Every live reader's slot.
#[cfg(not(loom))]
static READERS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

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
    static ref FALLBACK: Mutex<()> = Mutex::new(());
    static ref FALLBACK_READER: ReaderState = ReaderState::new();
}

#[cfg(loom)]
fn fallback_reader() -> &'static ReaderState {
    &FALLBACK_READER
}

/// Whether `membarrier(PRIVATE_EXPEDITED)` is registered for this process.
#[cfg(not(loom))]
static MEMBARRIER: OnceLock<bool> = OnceLock::new();

const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
#[cfg(not(loom))]
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

/// Under loom, membarrier is not available: readers and writers take the fence fallback, and
/// that is what loom checks. The fallback is real code (kernels without membarrier, seccomp),
/// and it also stands for the membarrier path: `membarrier(PRIVATE_EXPEDITED)` returns only
/// after every running thread of the process has executed a full memory barrier, and a thread
/// not running has none of its accesses in flight. So each reader access before (after) the
/// point where it was interrupted is ordered before (after) the writer's call, exactly as if the
/// reader's compiler fence after entering were a `fence(SeqCst)` pairing with the writer's
/// (the "asymmetric fence" use membarrier documents, and liburcu's memb flavour relies on).
/// Every ordering between a reader's and the writer's accesses that the fence pair provides, the
/// compiler fence plus membarrier provides too; what loom proves with fences holds for both.
#[cfg(loom)]
fn membarrier_registered() -> bool {
    false
}

#[cfg(not(loom))]
fn membarrier_registered() -> bool {
    *MEMBARRIER.get_or_init(|| {
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
    })
}

/// Makes every thread's earlier memory accesses visible before the caller's later ones.
fn barrier_all() {
    if membarrier_registered() {
        // SAFETY: as above; registration succeeded, so the command is allowed.
        let r =
            unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) };
        if r != 0 {
            // Readers rely on this barrier; without it reclamation would be unsound.
            panic!(
                "membarrier(PRIVATE_EXPEDITED) failed after registration: {}",
                std::io::Error::last_os_error()
            );
        }
    } else {
        fence(Ordering::SeqCst);
    }
}

struct ReaderState {
    slot: Arc<Slot>,
    depth: Cell<u32>,
    light: bool,
}

// SAFETY: only the FALLBACK_READER is shared between threads, and it is used only while FALLBACK
// is locked.
unsafe impl Sync for ReaderState {}
// SAFETY: as above.
unsafe impl Send for ReaderState {}

impl ReaderState {
    fn new() -> ReaderState {
        let light = membarrier_registered();
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
            light,
        }
    }

    #[inline(always)]
    fn enter(&self) {
        let depth = self.depth.get();
        self.depth.set(depth + 1);
        if depth == 0 {
            let seq = self.slot.seq.load(Ordering::Relaxed);
            // Release, not Relaxed: a writer that waits on this slot may read this store
            // (the next section's entry) instead of the previous exit's; under the language's
            // rules (C++20 release sequences) only a release store then orders the previous
            // section's reads before the writer's reclaim. Free on x86 (loom found this).
            self.slot.seq.store(seq + 1, Ordering::Release);
            if self.light {
                compiler_fence(Ordering::SeqCst);
            } else {
                fence(Ordering::SeqCst);
            }
        }
    }

    #[inline(always)]
    fn exit(&self) {
        let depth = self.depth.get() - 1;
        self.depth.set(depth);
        if depth == 0 {
            compiler_fence(Ordering::SeqCst);
            let seq = self.slot.seq.load(Ordering::Relaxed);
            self.slot.seq.store(seq + 1, Ordering::Release);
        }
    }
}

/// Owns this thread's reader state; deregisters it when the thread exits.
struct Reader(ReaderState);

impl Drop for Reader {
    fn drop(&mut self) {
        // `try_with`: with std, `CURRENT` has no destructor and is always there; loom destroys
        // a thread's locals together, so it may be gone when this runs.
        let _ = CURRENT.try_with(|c| c.set(DEAD));
        let mut readers = READERS.lock().unwrap_or_else(|e| e.into_inner());
        readers.retain(|s| !Arc::ptr_eq(s, &self.0.slot));
    }
}

/// `CURRENT` after this thread's `Reader` was destroyed (a DMA from another thread-local's
/// destructor): such sections use the shared fallback reader.
const DEAD: *const ReaderState = 1 as *const ReaderState;

#[cfg(not(loom))]
thread_local! {
    static OWNER: Reader = Reader(ReaderState::new());
    /// This thread's reader state, for the fast path: null until first use, `DEAD` after.
    /// Const-initialized and without a destructor, so reading it is one thread-relative load.
    static CURRENT: Cell<*const ReaderState> = const { Cell::new(std::ptr::null()) };
}

// Loom's thread-locals, per loom thread and execution; loom's macro takes no `const` block.
#[cfg(loom)]
loom::thread_local! {
    static OWNER: Reader = Reader(ReaderState::new());
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
        if let Ok(state) = OWNER.try_with(|r| &r.0 as *const ReaderState) {
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
    let slots: Vec<Arc<Slot>> = READERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    barrier_all();
    for slot in slots {
        let seq = slot.seq.load(Ordering::Acquire);
        if seq & 1 == 0 {
            continue;
        }
        let mut spins = 0u32;
        while slot.seq.load(Ordering::Acquire) == seq {
            spin_wait(&mut spins);
        }
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
        unsafe { &*self.ptr.load(Ordering::Acquire) }
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
