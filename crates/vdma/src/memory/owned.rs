//! Memory of this process: [`OwnedMemory`] (an anonymous region vdma allocates and frees) and
//! [`RawMemory`] (memory the caller owns, given by address).

use crate::address::Iova;
use crate::error::{Error, Result};
use crate::memory::{HostRegion, Memory};

/// An anonymous, private, read-write region of this process, unmapped on drop.
///
/// ```
/// use vdma::{Memory, OwnedMemory};
/// let mem = OwnedMemory::new(8192).unwrap();
/// mem.write_at(4096, b"hello").unwrap();
/// let mut buf = [0u8; 5];
/// mem.read_at(4096, &mut buf).unwrap();
/// assert_eq!(&buf, b"hello");
/// ```
#[derive(Debug)]
pub struct OwnedMemory {
    region: HostRegion,
}

impl OwnedMemory {
    /// Allocates `len` zeroed bytes (rounded up to whole pages by the kernel).
    pub fn new(len: usize) -> Result<OwnedMemory> {
        if len == 0 {
            return Err(Error::ZeroSize);
        }
        // SAFETY: an anonymous mapping at an address of the kernel's choosing touches no existing
        // memory; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::last_os("mmap"));
        }
        // SAFETY: the mapping is readable and writable and stays until `drop` unmaps it.
        let region = unsafe { HostRegion::new(ptr.cast(), len) };
        Ok(OwnedMemory { region })
    }
}

impl Drop for OwnedMemory {
    fn drop(&mut self) {
        // SAFETY: this object made the mapping and nothing uses it after drop: mappings keep
        // their memory alive through an Arc, so the last user is gone.
        unsafe { libc::munmap(self.region.base().as_ptr().cast(), self.region.len()) };
    }
}

impl Memory for OwnedMemory {
    fn len(&self) -> u64 {
        self.region.len() as u64
    }
    fn host_region(&self) -> Option<&HostRegion> {
        Some(&self.region)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        host_read(&self.region, offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        host_write(&self.region, offset, buf)
    }
}

/// Memory of this process that the caller owns, given by address and length.
#[derive(Debug)]
pub struct RawMemory {
    region: HostRegion,
}

impl RawMemory {
    /// Memory at `base`, `len` bytes long.
    ///
    /// # Safety
    /// `[base, base + len)` must stay mapped readable and writable until the last mapping onto
    /// it is unmapped (when `unmap` returns, no access is in flight and none can start) and the
    /// `RawMemory` is dropped. Its contents may change under vdma at any time.
    pub unsafe fn new(base: *mut u8, len: usize) -> RawMemory {
        RawMemory {
            // SAFETY: forwarded to the caller's contract.
            region: unsafe { HostRegion::new(base, len) },
        }
    }
}

impl Memory for RawMemory {
    fn len(&self) -> u64 {
        self.region.len() as u64
    }
    fn host_region(&self) -> Option<&HostRegion> {
        Some(&self.region)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        host_read(&self.region, offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        host_write(&self.region, offset, buf)
    }
}

/// `read_at` for memory with a host region.
pub(crate) fn host_read(region: &HostRegion, offset: u64, buf: &mut [u8]) -> Result<()> {
    check_fits(region, offset, buf.len())?;
    if region.read(offset, buf) {
        Ok(())
    } else {
        Err(Error::Fault { iova: Iova(0) })
    }
}

/// `write_at` for memory with a host region.
pub(crate) fn host_write(region: &HostRegion, offset: u64, buf: &[u8]) -> Result<()> {
    check_fits(region, offset, buf.len())?;
    if region.write(offset, buf) {
        Ok(())
    } else {
        Err(Error::Fault { iova: Iova(0) })
    }
}

fn check_fits(region: &HostRegion, offset: u64, len: usize) -> Result<()> {
    let size = region.len() as u64;
    if offset > size || len as u64 > size - offset {
        return Err(Error::BackingTooShort {
            offset,
            size: len as u64,
            len: size,
        });
    }
    Ok(())
}
