//! Surviving a file that shrinks under its mapping.
//!
//! Touching a `MAP_SHARED` page past the end of its file raises SIGBUS, which would kill the
//! process. A VMM (or a hostile client) can truncate a memfd at any time, so vdma registers
//! every file host mapping here and installs a SIGBUS handler (once, when the first file is
//! mapped). On a SIGBUS inside a registered mapping the handler maps an anonymous page over the
//! faulting page, marks the host mapping poisoned and counts the fault; the interrupted copy then
//! completes harmlessly. `HostRegion` checks the fault count around every copy (one load of a
//! global that stays zero until some fault happens) and reports a poisoned mapping as a failed
//! access: EFAULT. A poisoned host mapping stays poisoned: every later access to it fails, and
//! new mappings of the file get a fresh host mapping.
//!
//! A SIGBUS anywhere else goes to the handler that was installed before ours (or to the default
//! action). An application that installs its own SIGBUS handler after vdma maps a file takes
//! this protection away.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Most file host mappings protected at once.
const SLOTS: usize = 4096;

/// No slot (memory that cannot shrink).
pub(crate) const NO_SLOT: u32 = u32::MAX;

struct Slot {
    /// Claimed by a host mapping.
    used: AtomicBool,
    /// `[start, end)` of the host mapping; `start == 0` while not published.
    start: AtomicUsize,
    end: AtomicUsize,
    /// The unit the handler replaces: the file's page size (huge pages on hugetlbfs).
    grain: AtomicUsize,
    poisoned: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    used: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    grain: AtomicUsize::new(0),
    poisoned: AtomicBool::new(false),
};

static REGISTRY: [Slot; SLOTS] = [EMPTY; SLOTS];

/// Faults handled so far in this process.
static FAULTS: AtomicU64 = AtomicU64::new(0);

/// The SIGBUS action in place before ours, or the error installing ours.
static PREVIOUS: OnceLock<std::result::Result<SigAction, i32>> = OnceLock::new();

struct SigAction(libc::sigaction);
// SAFETY: a plain C struct of function pointers, flags and a signal mask; read-only after init.
unsafe impl Send for SigAction {}
// SAFETY: as above.
unsafe impl Sync for SigAction {}

/// Whether any fault was ever handled: the cheap test in front of [`is_poisoned`].
#[inline(always)]
pub(crate) fn any() -> bool {
    FAULTS.load(Ordering::Relaxed) != 0
}

/// Whether the host mapping in `slot` has faulted.
pub(crate) fn is_poisoned(slot: u32) -> bool {
    slot != NO_SLOT && REGISTRY[slot as usize].poisoned.load(Ordering::Acquire)
}

/// Protects the host mapping `[start, start + len)` whose file has pages of `grain` bytes;
/// returns its slot for [`is_poisoned`] and [`unregister`].
pub(crate) fn register(start: usize, len: usize, grain: usize) -> Result<u32> {
    install()?;
    for (i, slot) in REGISTRY.iter().enumerate() {
        if slot
            .used
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot.poisoned.store(false, Ordering::Relaxed);
            slot.grain.store(grain, Ordering::Relaxed);
            slot.end.store(start + len, Ordering::Relaxed);
            slot.start.store(start, Ordering::Release);
            return Ok(i as u32);
        }
    }
    Err(Error::Os {
        op: "register a file mapping for SIGBUS recovery",
        source: std::io::Error::from_raw_os_error(libc::ENOMEM),
    })
}

/// Stops protecting a host mapping, before it is unmapped.
pub(crate) fn unregister(slot: u32) {
    let slot = &REGISTRY[slot as usize];
    slot.start.store(0, Ordering::Release);
    slot.used.store(false, Ordering::Release);
}

fn install() -> Result<()> {
    let installed = PREVIOUS.get_or_init(|| {
        // SAFETY: zeroed sigaction structs are valid "no handler, empty mask" values; sigaction
        // reads `new` and writes `old`, both owned here.
        unsafe {
            let mut new: libc::sigaction = MaybeUninit::zeroed().assume_init();
            let mut old: libc::sigaction = MaybeUninit::zeroed().assume_init();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut new.sa_mask);
            if libc::sigaction(libc::SIGBUS, &new, &mut old) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            Ok(SigAction(old))
        }
    });
    match installed {
        Ok(_) => Ok(()),
        Err(errno) => Err(Error::Os {
            op: "sigaction(SIGBUS)",
            source: std::io::Error::from_raw_os_error(*errno),
        }),
    }
}

/// The SIGBUS handler. Async-signal-safe: atomics, `mmap` and `sigaction` only.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in REGISTRY.iter() {
        let start = slot.start.load(Ordering::Acquire);
        if start == 0 || addr < start || addr >= slot.end.load(Ordering::Relaxed) {
            continue;
        }
        let grain = slot.grain.load(Ordering::Relaxed);
        let page = addr & !(grain - 1);
        // SAFETY: `page` lies in a host mapping vdma made and still owns (it unregisters before
        // unmapping); replacing it with anonymous memory only affects vdma's own accesses.
        let r = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                grain,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if r != libc::MAP_FAILED {
            slot.poisoned.store(true, Ordering::Release);
            FAULTS.fetch_add(1, Ordering::Release);
            return;
        }
    }
    chain(sig, info, ctx);
}

/// Hands a SIGBUS that is not ours to whoever had it before.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let Some(Ok(SigAction(prev))) = PREVIOUS.get() else {
        return;
    };
    let handler = prev.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Restore the default and return: the faulting instruction runs again and the default
        // action (terminate with a core dump) happens as if vdma were not here.
        // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask.
        unsafe {
            let mut dfl: libc::sigaction = MaybeUninit::zeroed().assume_init();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
    } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous owner installed this as an SA_SIGINFO handler.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: the previous owner installed this as a plain handler.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}
