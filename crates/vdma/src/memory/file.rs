//! [`FileMemory`]: a file (memfd, hugetlbfs, a shared file) mapped `MAP_SHARED`.
//!
//! Host mappings are shared: every mapping of the same file with the same protection uses one
//! `mmap` of the whole file, so 65,535 mappings of one memfd cost one entry of the kernel's
//! per-process map count (vm.max_map_count), not 65,535. The sharing table holds weak
//! references; the host mapping goes away with its last user.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};
use crate::memory::fault;
use crate::memory::owned::{host_read, host_write};
use crate::memory::{HostRegion, Memory};
use crate::prot::Prot;

/// Identifies a host mapping: the file (device and inode) and the protection it was mapped with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    dev: u64,
    ino: u64,
    prot: u8,
}

/// Host mappings of files, shared between mappings.
static SHARED: Mutex<Option<HashMap<Key, Weak<FileMemory>>>> = Mutex::new(None);

/// A whole file mapped `MAP_SHARED` into this process, unmapped when the last mapping using it
/// goes away.
#[derive(Debug)]
pub struct FileMemory {
    region: HostRegion,
    key: Key,
}

impl FileMemory {
    /// The host mapping of the file `fd` with `prot`, which must cover at least `need` bytes;
    /// shared with earlier callers for the same file and protection.
    ///
    /// Errors: the file is shorter than `need` (EINVAL), its access mode does not allow `prot`
    /// (EACCES), or `fstat`/`mmap` fail (their errno).
    pub fn shared(fd: BorrowedFd<'_>, prot: Prot, need: u64) -> Result<Arc<FileMemory>> {
        // SAFETY: fstat writes into the zeroed struct we own; fd is a valid borrowed descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(Error::last_os("fstat"));
        }
        let file_len = st.st_size as u64;
        if file_len < need {
            return Err(Error::BackingTooShort {
                offset: 0,
                size: need,
                len: file_len,
            });
        }
        check_access_mode(fd, prot)?;
        let key = Key {
            dev: st.st_dev,
            ino: st.st_ino,
            prot: prot.bits(),
        };
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let table = shared.get_or_insert_with(HashMap::new);
        if let Some(existing) = table.get(&key).and_then(Weak::upgrade) {
            if existing.region.len() as u64 >= need && !existing.is_poisoned() {
                return Ok(existing);
            }
        }
        let grain = (st.st_blksize as usize).max(page_size());
        let memory = Arc::new(FileMemory::map(fd, key, file_len as usize, prot, grain)?);
        table.insert(key, Arc::downgrade(&memory));
        Ok(memory)
    }

    /// Whether the file shrank under this host mapping (see `fault.rs`); every access fails.
    pub fn is_poisoned(&self) -> bool {
        fault::is_poisoned(self.region.fault_slot())
    }

    fn map(
        fd: BorrowedFd<'_>,
        key: Key,
        len: usize,
        prot: Prot,
        grain: usize,
    ) -> Result<FileMemory> {
        let mut flags = 0;
        if prot.contains(Prot::READ) {
            flags |= libc::PROT_READ;
        }
        if prot.contains(Prot::WRITE) {
            flags |= libc::PROT_WRITE;
        }
        // SAFETY: a new shared mapping at an address of the kernel's choosing touches no
        // existing memory; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                flags,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::last_os("mmap"));
        }
        let slot = match fault::register(ptr as usize, len, grain) {
            Ok(slot) => slot,
            Err(e) => {
                // SAFETY: the mapping was just made and nothing else knows of it.
                unsafe { libc::munmap(ptr, len) };
                return Err(e);
            }
        };
        // SAFETY: the mapping has `prot` and lives until drop; the crate writes only through
        // mappings whose prot has WRITE.
        let region = unsafe { HostRegion::new(ptr.cast(), len) }.with_fault_slot(slot);
        Ok(FileMemory { region, key })
    }
}

/// A file opened read-only must not gain a writable mapping through the sharing table.
fn check_access_mode(fd: BorrowedFd<'_>, prot: Prot) -> Result<()> {
    // SAFETY: F_GETFL on a valid descriptor only reads its flags.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if fl < 0 {
        return Err(Error::last_os("fcntl(F_GETFL)"));
    }
    let ok = match fl & libc::O_ACCMODE {
        libc::O_RDWR => true,
        libc::O_RDONLY => !prot.contains(Prot::WRITE),
        _ => false, // O_WRONLY cannot be mmapped at all
    };
    if ok {
        Ok(())
    } else {
        Err(Error::FileAccess { prot })
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory arguments.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

impl Drop for FileMemory {
    fn drop(&mut self) {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(table) = shared.as_mut() {
            // Remove our entry unless a newer, larger mapping of the file replaced it.
            if table.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
                table.remove(&self.key);
            }
        }
        drop(shared);
        fault::unregister(self.region.fault_slot());
        // SAFETY: this object made the mapping; its last user (a mapping, through an Arc) is gone.
        unsafe { libc::munmap(self.region.base().as_ptr().cast(), self.region.len()) };
    }
}

impl Memory for FileMemory {
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
