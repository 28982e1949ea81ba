//! Everything of `vdma bench` that needs `unsafe`: the memcpy baseline's flat `MAP_SHARED`
//! mapping and its raw copies, vm-memory regions laid over that mapping, the memfd they share,
//! and CPU affinity.
//!
//! Nothing here hands out a Rust reference into shared memory: the flat mapping is reached by
//! raw copies only, and the vm-memory regions over it are reachable only through their own
//! (volatile) accessors while this module keeps the mapping alive.

use std::fs::File;
use std::hint::black_box;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
};

/// A new memfd of `len` bytes (zeroes, nothing allocated yet).
pub(crate) fn memfd(name: &std::ffi::CStr, len: u64) -> io::Result<File> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len)?;
    Ok(file)
}

/// A whole-file `MAP_SHARED` read-write mapping: the memcpy baseline's view of guest memory.
/// Unmapped on drop.
#[derive(Debug)]
pub(crate) struct Flat {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a pointer and length of a shared mapping that lives as long as the value; it is only
// touched with raw copies, which are fine from any thread (concurrent copies of the same bytes
// race only on the bytes, as DMA does).
unsafe impl Send for Flat {}
// SAFETY: as above.
unsafe impl Sync for Flat {}

impl Flat {
    /// Maps the first `len` bytes of `file` shared and read-write, and writes one byte of
    /// every page back (so no page fault is ever timed).
    pub(crate) fn map(file: &File, len: usize) -> io::Result<Flat> {
        // SAFETY: a new shared mapping of a file we hold, at an address of the kernel's
        // choosing; it touches no existing memory and the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let flat = Flat {
            ptr: ptr.cast(),
            len,
        };
        for off in (0..len).step_by(super::PAGE) {
            // SAFETY: `off < len`, inside the read-write mapping made above; the byte is
            // written back unchanged with volatile accesses (no reference is made).
            unsafe {
                let p = flat.ptr.add(off);
                p.write_volatile(p.read_volatile());
            }
        }
        Ok(flat)
    }

    /// Copies `buf.len()` bytes at `off` into `buf` with a real call to `memcpy` (the length
    /// goes through `black_box`, so a small constant length cannot become an inlined move).
    #[inline(always)]
    pub(crate) fn read(&self, off: usize, buf: &mut [u8]) {
        assert!(
            off <= self.len && buf.len() <= self.len - off,
            "flat read out of range"
        );
        // SAFETY: `[off, off + len)` lies inside the live mapping (checked above); `buf` is a
        // private buffer of `len` bytes that cannot overlap a shared mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                black_box(self.ptr.add(off)),
                buf.as_mut_ptr(),
                black_box(buf.len()),
            )
        };
    }

    /// vdma's copy routine alone over this mapping, without an address space: the
    /// `vdma-copy` contender (what vdma's lookup costs on top of its copy). The region must
    /// not outlive `self`; the contender that holds it borrows the guest that holds `self`.
    pub(crate) fn region(&self) -> vdma::HostRegion {
        // SAFETY: the mapping is readable and writable for `len` bytes while `self` lives, and
        // callers keep the region no longer than that (see above).
        unsafe { vdma::HostRegion::new(self.ptr, self.len) }
    }

    /// Copies `buf` to `off` with a real call to `memcpy` (see [`Flat::read`]).
    #[inline(always)]
    pub(crate) fn write(&self, off: usize, buf: &[u8]) {
        assert!(
            off <= self.len && buf.len() <= self.len - off,
            "flat write out of range"
        );
        // SAFETY: as in `read`, the other way round.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buf.as_ptr(),
                black_box(self.ptr.add(off)),
                black_box(buf.len()),
            )
        };
    }
}

impl Drop for Flat {
    fn drop(&mut self) {
        // SAFETY: this value made the mapping; every `RawGuest` over it holds an `Arc` to it,
        // so none is left when the last reference goes.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// vm-memory regions laid over pieces of a [`Flat`] mapping (no mmap of their own, so 65,535
/// of them do not exceed `vm.max_map_count`), reachable only through [`RawGuest::read`]: the `GuestMemoryMmap` never leaves this value, and the value holds the
/// flat mapping, so the regions cannot outlive the memory under them.
pub(crate) struct RawGuest {
    // Field order: `gm` is dropped before `_flat`.
    gm: GuestMemoryMmap,
    _flat: Arc<Flat>,
}

impl RawGuest {
    /// One region of `len` bytes per `(guest address, offset in the flat mapping)`.
    pub(crate) fn new(
        flat: &Arc<Flat>,
        pieces: impl IntoIterator<Item = (u64, usize)>,
        len: usize,
    ) -> Result<RawGuest, String> {
        let mut regions = Vec::new();
        for (gpa, off) in pieces {
            if off > flat.len || len > flat.len - off {
                return Err(format!("piece at {off:#x} passes the end of the mapping"));
            }
            // SAFETY: `[flat + off, flat + off + len)` lies inside the flat mapping (checked
            // above), which is read-write and MAP_SHARED as declared, and stays mapped for as
            // long as the region: the region lives in `gm`, which never leaves the returned
            // value, and that value holds an `Arc` to the mapping and drops `gm` first. A raw
            // region is not unmapped by vm-memory.
            let region = unsafe {
                MmapRegion::<()>::build_raw(
                    flat.ptr.add(off),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                )
            }
            .map_err(|e| format!("raw region: {e}"))?;
            regions.push(
                GuestRegionMmap::new(region, GuestAddress(gpa))
                    .ok_or_else(|| format!("region at {gpa:#x} overflows"))?,
            );
        }
        let gm = GuestMemoryMmap::from_regions(regions).map_err(|e| format!("{e}"))?;
        Ok(RawGuest {
            gm,
            _flat: Arc::clone(flat),
        })
    }

    /// vm-memory's `read_slice`.
    #[inline(always)]
    pub(crate) fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        self.gm.read_slice(buf, GuestAddress(addr))
    }
}

/// The CPUs the calling thread may run on.
pub(crate) fn cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is valid for its size; pid 0 is the calling thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads a bit inside the set we own.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Lets the calling thread run only on the CPUs `allowed`.
pub(crate) fn set_affinity(allowed: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in allowed {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: CPU_SET writes a bit inside the set we own (checked just above).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: the set is valid for its size; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
