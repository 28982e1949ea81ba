//! [`HostRegion`]: host memory that vdma may copy to and from with plain loads and stores.
//!
//! This module owns every copy between a caller's buffer and shared memory. The memory may be
//! changed at any time by a guest or another process, so it is never turned into a Rust
//! reference: bytes move between raw pointers (`copy.rs`).

use std::ptr::NonNull;
use std::sync::atomic::{compiler_fence, Ordering};

use crate::address::HostAddr;
use crate::memory::copy::{copy_in, copy_out};
use crate::memory::fault::{self, NO_SLOT};

/// A range of host memory mapped in this process, valid while the value lives.
///
/// Made by the memory kinds of this crate, or by [`HostRegion::new`] under its contract.
#[derive(Debug)]
pub struct HostRegion {
    base: NonNull<u8>,
    len: usize,
    /// The SIGBUS-recovery slot of file memory that can shrink (see `fault.rs`).
    fault_slot: u32,
}

// SAFETY: a HostRegion is a pointer and a length to memory that the creator keeps mapped; the
// accesses through it are raw copies that are fine from any thread.
unsafe impl Send for HostRegion {}
// SAFETY: as above; `&HostRegion` only allows raw copies, never references into the memory.
unsafe impl Sync for HostRegion {}

/// A bitwise copy of a [`HostRegion`] for the crate's per-thread lookup cache (`table.rs`):
/// valid exactly as long as the region it was copied from, and turned back into a region only
/// while that region is known to live.
#[derive(Clone, Copy)]
pub(crate) struct HostWindow {
    base: NonNull<u8>,
    len: usize,
    fault_slot: u32,
}

impl HostWindow {
    /// The region this was copied from.
    ///
    /// # Safety
    /// That region (or the object that holds it) must still be alive.
    #[inline(always)]
    pub(crate) unsafe fn region(self) -> HostRegion {
        HostRegion {
            base: self.base,
            len: self.len,
            fault_slot: self.fault_slot,
        }
    }
}

impl HostRegion {
    /// A region of `len` bytes at `base`.
    ///
    /// # Safety
    /// `[base, base + len)` must be mapped readable (and writable, if the region backs a mapping
    /// with WRITE) for as long as the returned value, or the object holding it, lives; `base`
    /// must not be null and `base + len` must not wrap.
    pub unsafe fn new(base: *mut u8, len: usize) -> HostRegion {
        HostRegion {
            base: NonNull::new(base).expect("HostRegion at a null address"),
            len,
            fault_slot: NO_SLOT,
        }
    }

    /// The same region, protected by a SIGBUS-recovery slot.
    pub(crate) fn with_fault_slot(self, fault_slot: u32) -> HostRegion {
        HostRegion { fault_slot, ..self }
    }

    /// A copy for the per-thread lookup cache (see [`HostWindow`]).
    #[inline(always)]
    pub(crate) fn window_copy(&self) -> HostWindow {
        HostWindow {
            base: self.base,
            len: self.len,
            fault_slot: self.fault_slot,
        }
    }

    /// The region's SIGBUS-recovery slot.
    pub(crate) fn fault_slot(&self) -> u32 {
        self.fault_slot
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where it starts.
    pub fn base(&self) -> HostAddr {
        HostAddr(self.base.as_ptr() as usize)
    }

    /// `[offset, offset + len)` of this region, or `None` if it does not fit. The result is valid
    /// only while `self`'s owner keeps the memory mapped: the crate stores it next to an `Arc`
    /// of that owner.
    pub(crate) fn window(&self, offset: u64, len: u64) -> Option<HostRegion> {
        let end = offset.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        Some(HostRegion {
            // SAFETY: offset <= self.len, so the result stays inside (or one past) the region.
            base: unsafe { NonNull::new_unchecked(self.base.as_ptr().add(offset as usize)) },
            len: len as usize,
            fault_slot: self.fault_slot,
        })
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`; `false` if the range is not inside the
    /// region (nothing copied) or the memory faulted (its file shrank; `buf` holds junk).
    #[inline]
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        if !self.fits(offset, buf.len()) {
            return false;
        }
        // SAFETY: the range was checked to lie inside the region, which is mapped readable by
        // the contract of `new`; `buf` is private memory of the caller and cannot overlap shared
        // memory it holds a `&mut` to. No reference into the region is made.
        unsafe {
            copy_in(
                self.base.as_ptr().add(offset as usize),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        !self.faulted()
    }

    /// Copies `buf` to `offset`; `false` if the range is not inside the region (nothing copied)
    /// or the memory faulted (its file shrank).
    #[inline]
    pub fn write(&self, offset: u64, buf: &[u8]) -> bool {
        if !self.fits(offset, buf.len()) {
            return false;
        }
        // SAFETY: the range lies inside the region; the crate only writes to regions of mappings
        // whose protection includes WRITE, which are mapped writable. No reference is made.
        unsafe {
            copy_out(
                buf.as_ptr(),
                self.base.as_ptr().add(offset as usize),
                buf.len(),
            )
        };
        !self.faulted()
    }

    /// Whether this region's file memory has faulted (checked after a copy: a copy into a
    /// poisoned region touches only the anonymous pages the handler put there). The fence keeps
    /// the check after the copy (the handler runs on this thread, so a compiler fence is
    /// enough).
    #[inline(always)]
    fn faulted(&self) -> bool {
        compiler_fence(Ordering::SeqCst);
        fault::any() && fault::is_poisoned(self.fault_slot)
    }

    #[inline]
    fn fits(&self, offset: u64, len: usize) -> bool {
        offset <= self.len as u64 && len as u64 <= self.len as u64 - offset
    }
}
