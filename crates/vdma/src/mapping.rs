//! [`Mapping`]: one `map` call, `[iova, iova + size)` onto memory with a protection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

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
