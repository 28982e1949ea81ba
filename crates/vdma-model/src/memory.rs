//! The memory behind the model's mappings, made and read back without going through vdma.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use vdma::{Backing, Memory, OwnedMemory};

/// A memfd named `name`, of `len` bytes, zero-filled.
pub fn memfd(name: &str, len: u64) -> File {
    let name = CString::new(name).unwrap();
    // SAFETY: a valid NUL-terminated C string and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: the descriptor is new and nobody else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).unwrap();
    file
}

/// A new eventfd (counter 0, close-on-exec, non-blocking), for tests of interrupts.
pub fn eventfd() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd takes an initial value and flags; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: the descriptor is new and nobody else owns it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Memory with no host address (like a vfio-user client's, reached by messages): `dma_rw` must
/// go through `read_at`/`write_at`, and `translate` must refuse it. An access outside it panics
/// (fails the test).
#[derive(Debug)]
pub struct MsgMemory {
    bytes: Mutex<Vec<u8>>,
}

impl MsgMemory {
    /// Memory holding `bytes`.
    pub fn new(bytes: Vec<u8>) -> MsgMemory {
        MsgMemory {
            bytes: Mutex::new(bytes),
        }
    }

    fn range(&self, offset: u64, len: usize) -> std::ops::Range<usize> {
        let n = self.bytes.lock().unwrap().len();
        let start = offset as usize;
        assert!(
            start <= n && len <= n - start,
            "vdma accessed [{offset:#x}, +{len:#x}) of a memory of {n:#x} bytes"
        );
        start..start + len
    }
}

impl Memory for MsgMemory {
    fn len(&self) -> u64 {
        self.bytes.lock().unwrap().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> vdma::Result<()> {
        let r = self.range(offset, buf.len());
        buf.copy_from_slice(&self.bytes.lock().unwrap()[r]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> vdma::Result<()> {
        let r = self.range(offset, buf.len());
        self.bytes.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
}

/// What a mapping's memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// A fresh [`OwnedMemory`].
    Owned,
    /// A fresh region of the case's memfd ([`Backing::file`]; host mappings of one file are
    /// shared).
    File,
    /// A fresh [`MsgMemory`]: no host address.
    Msg,
}

/// Where a mapping's bytes really are, to read them without going through vdma.
#[derive(Debug)]
pub enum Real {
    /// Owned memory, at this offset.
    Owned(Arc<OwnedMemory>, u64),
    /// The case's memfd, at this offset.
    File(u64),
    /// Memory without a host address, at this offset.
    Msg(Arc<MsgMemory>, u64),
}

impl Real {
    /// Whether the memory has a host address (what `translate` hands out).
    pub fn has_host(&self) -> bool {
        !matches!(self, Real::Msg(..))
    }
}

/// Memory made for one `map` call.
pub struct Made<'a> {
    /// What to pass to `map`.
    pub backing: Backing<'a>,
    /// The length of the memory (or the file) behind it.
    pub backing_len: u64,
    /// Where the mapping's bytes are.
    pub real: Real,
    /// The bytes the mapping starts with, if the memory has them all (not when it is short).
    pub data: Option<Vec<u8>>,
}

/// The memory of one case: makes each mapping's, and reads it back.
pub struct Memories {
    page_size: u64,
    /// The one memfd whose regions back `File` mappings.
    file: File,
    file_len: u64,
    /// Where the next region starts (a page after the last one, so regions never touch).
    file_next: u64,
}

impl Memories {
    /// Nothing made yet; file regions are aligned to `page_size`.
    pub fn new(name: &str, page_size: u64) -> Memories {
        Memories {
            page_size,
            file: memfd(name, 0),
            file_len: 0,
            file_next: 0,
        }
    }

    /// Memory of `kind` for a mapping of `size` bytes at `offset` into it, holding
    /// `bytes(n)` (the first `n` bytes of some sequence): the whole memory for owned and
    /// message memory (so the mapping holds `bytes(offset + size)[offset..]`), the mapping's
    /// region for a file. If `short`, the memory lacks the mapping's last byte (owned and
    /// message memory) or lies past the end of the file, and `data` is `None`.
    pub fn make(
        &mut self,
        kind: MemoryKind,
        offset: u64,
        size: u64,
        short: bool,
        bytes: impl FnOnce(usize) -> Vec<u8>,
    ) -> Made<'_> {
        match kind {
            MemoryKind::Owned | MemoryKind::Msg => {
                let len = (offset + size - u64::from(short)).max(1);
                let bytes = bytes(len as usize);
                let data = bytes
                    .get(offset as usize..(offset + size) as usize)
                    .map(<[u8]>::to_vec);
                let (backing, real) = if kind == MemoryKind::Owned {
                    let mem = Arc::new(OwnedMemory::new(len as usize).unwrap());
                    mem.write_at(0, &bytes).unwrap();
                    (
                        Backing::memory(mem.clone(), offset),
                        Real::Owned(mem, offset),
                    )
                } else {
                    let mem = Arc::new(MsgMemory::new(bytes));
                    (Backing::memory(mem.clone(), offset), Real::Msg(mem, offset))
                };
                Made {
                    backing,
                    backing_len: len,
                    real,
                    data,
                }
            }
            MemoryKind::File => {
                let ps = self.page_size;
                let foff = if short {
                    // Past the end of the file: nothing there to back it.
                    self.file_next.max(self.file_len).next_multiple_of(ps) + offset
                } else {
                    self.file_next + offset
                };
                let mut data = None;
                if !short {
                    if self.file_len < foff + size {
                        self.file_len = foff + size;
                        self.file.set_len(self.file_len).unwrap();
                    }
                    let bytes = bytes(size as usize);
                    self.file.write_all_at(&bytes, foff).unwrap();
                    data = Some(bytes);
                }
                self.file_next = (foff + size).next_multiple_of(ps) + ps;
                Made {
                    backing: Backing::file(&self.file, foff),
                    backing_len: self.file_len,
                    real: Real::File(foff),
                    data,
                }
            }
        }
    }

    /// The `size` bytes really at `real`.
    pub fn read(&self, real: &Real, size: u64) -> Vec<u8> {
        let mut buf = vec![0u8; size as usize];
        match real {
            Real::Owned(mem, off) => mem.read_at(*off, &mut buf).unwrap(),
            Real::Msg(mem, off) => mem.read_at(*off, &mut buf).unwrap(),
            Real::File(off) => self.file.read_exact_at(&mut buf, *off).unwrap(),
        }
        buf
    }
}
