//! [`Mapping`]: one `map` call, `[iova, iova + size)` onto memory with a protection.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::address::Iova;
use crate::error::{Error, Result};
use crate::memory::Memory;
use crate::prot::Prot;

/// One mapping as the address space keeps it. Shared by the table versions that contain it and
/// by the [`crate::Segments`] that hold it; its memory is released with the last of them.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub(crate) iova: Iova,
    pub(crate) size: u64,
    pub(crate) prot: Prot,
    pub(crate) memory: Arc<dyn Memory>,
    pub(crate) offset: u64,
    /// Live holds on this mapping: one per `Segments` and one per pinned page count; `unmap`
    /// waits for them to go.
    holds: AtomicU64,
    /// Pin counts by page index in the mapping (page = the address space's page size).
    pins: Mutex<PinCounts>,
    /// Set while an `unmap` is deciding whether it may remove this mapping; new holds fail.
    dying: AtomicBool,
}

impl Mapping {
    pub(crate) fn new(
        iova: Iova,
        size: u64,
        prot: Prot,
        memory: Arc<dyn Memory>,
        offset: u64,
    ) -> Mapping {
        Mapping {
            iova,
            size,
            prot,
            memory,
            offset,
            holds: AtomicU64::new(0),
            pins: Mutex::new(PinCounts::default()),
            dying: AtomicBool::new(false),
        }
    }

    /// The public description.
    pub(crate) fn info(&self) -> MappingInfo {
        MappingInfo {
            iova: self.iova,
            size: self.size,
            prot: self.prot,
        }
    }

    /// Takes a hold unless an `unmap` is removing the mapping (EAGAIN).
    pub(crate) fn hold(&self) -> Result<()> {
        self.hold_n(1)
    }

    /// Takes `n` holds at once, or none (EAGAIN while an `unmap` is removing the mapping).
    pub(crate) fn hold_n(&self, n: u64) -> Result<()> {
        // SeqCst on both sides (here and in `begin_removal`) makes the pair a Dekker handshake:
        // either the unmap sees this hold, or this sees the unmap's flag.
        self.holds.fetch_add(n, Ordering::SeqCst);
        if self.dying.load(Ordering::SeqCst) {
            self.release_n(n);
            return Err(Error::Unmapping { iova: self.iova });
        }
        Ok(())
    }

    /// Gives a hold back.
    pub(crate) fn release(&self) {
        self.release_n(1)
    }

    /// Gives `n` holds back.
    pub(crate) fn release_n(&self, n: u64) {
        self.holds.fetch_sub(n, Ordering::SeqCst);
    }

    /// The pin counts, locked (the address space's pin lock is held around every use).
    pub(crate) fn pins(&self) -> MutexGuard<'_, PinCounts> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the mapping as being removed; returns whether holds remain.
    pub(crate) fn begin_removal(&self) -> bool {
        self.dying.store(true, Ordering::SeqCst);
        self.holds.load(Ordering::SeqCst) != 0
    }

    /// Whether holds remain.
    pub(crate) fn is_held(&self) -> bool {
        self.holds.load(Ordering::SeqCst) != 0
    }

    /// Gives up removing the mapping: it stays and takes holds again.
    pub(crate) fn cancel_removal(&self) {
        self.dying.store(false, Ordering::SeqCst);
    }
}

/// Pin counts by page index in the mapping.
pub(crate) type PinCounts = HashMap<u64, PinCount, BuildHasherDefault<PageHasher>>;

/// A hasher for page indexes: one multiply (Fibonacci hashing). Page indexes are not chosen by
/// an attacker against the hash (a peer only picks which of its own mapped pages to pin, at most
/// the mapping's page count), so SipHash's protection buys nothing here.
#[derive(Default)]
pub(crate) struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// How often a page is pinned, and how many of those pins asked for WRITE.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PinCount {
    pub(crate) total: u32,
    pub(crate) write: u32,
}

/// What [`crate::Container::mappings`] reports of one mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappingInfo {
    /// First IOVA.
    pub iova: Iova,
    /// Size in bytes.
    pub size: u64,
    /// What the device may do.
    pub prot: Prot,
}
