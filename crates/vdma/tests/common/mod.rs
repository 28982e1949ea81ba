//! Helpers shared by the integration tests of `vdma`: memfds, memory owned by the test, address
//! spaces with a group and a device, and error unwrapping.
//!
//! Each test binary includes this module (`mod common;`) and uses only part of it.

#![allow(dead_code)]

use std::fmt::Debug;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use vdma::{
    Backing, Config, Container, DeviceHandle, DeviceId, Error, GroupHandle, GroupId, HostAddr,
    Iova, OwnedMemory, Prot, RawMemory,
};

/// The page size of `Config::default()`, as a byte count.
pub const P: u64 = 4096;
/// [`P`] as a `usize`.
pub const PU: usize = 4096;

/// How long an unmap of pinned memory may retry before EBUSY, in the spaces of [`config`].
pub const BUSY: Duration = Duration::from_millis(80);

// ---------------------------------------------------------------------------------------------
// Files and memory
// ---------------------------------------------------------------------------------------------

// A memfd of a given length, and memory with no host address (reached by `read_at`/`write_at`
// only): from the reference model's crate, which the fuzz target shares. (Each test binary
// uses part of this module.)
#[allow(unused_imports)]
pub use vdma_model::{memfd, MsgMemory};

/// `len` bytes of `file` at `offset`, all of which must be there.
pub fn pread(file: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Page-aligned anonymous private memory of this process, owned by the test (for `RawMemory`
/// and `ProcessMemory`, or to check from outside what vdma wrote).
pub struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a pointer to a private mapping that lives as long as the value; every access through
// it is a raw copy, from any thread.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// `len` bytes of new read-write memory, zero-filled.
    pub fn new(len: usize) -> Region {
        // SAFETY: a new anonymous mapping at an address of the kernel's choosing; the result is
        // checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Region {
            ptr: ptr.cast(),
            len,
        }
    }

    /// The first byte.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The address of the first byte, as a number.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// A copy of `[off, off + len)`.
    pub fn get(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        let mut out = vec![0u8; len];
        // SAFETY: inside the mapping, which lives as long as self; a raw copy, no reference
        // into it.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), len) };
        out
    }

    /// Puts `data` at `off`.
    pub fn set(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        // SAFETY: inside the mapping, which lives as long as self and is writable.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) };
    }

    /// Fills it with `byte`.
    pub fn fill(&self, byte: u8) {
        // SAFETY: the whole mapping is ours and writable. vdma may write to it concurrently only
        // if it breaks the unmap rule, which is what callers that race it check for.
        unsafe { std::ptr::write_bytes(self.ptr, byte, self.len) };
    }

    /// The first offset that does not hold `byte`.
    pub fn first_not(&self, byte: u8) -> Option<usize> {
        self.get(0, self.len).iter().position(|&b| b != byte)
    }

    /// `[offset, offset + len)` as memory for a mapping. The caller drops every container (and
    /// so every mapping and `RawMemory`) over it before the `Region` (declared first, dropped
    /// last).
    pub fn raw(&self, offset: usize, len: usize) -> Arc<RawMemory> {
        assert!(offset + len <= self.len);
        // SAFETY: the range is inside this mapping, which stays mapped read-write until `self`
        // is dropped, after every user of the `RawMemory` (see above).
        Arc::new(unsafe { RawMemory::new(self.ptr.add(offset), len) })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: made by `new`; nothing refers to it any more (see `raw`).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Reads the byte at `offset` of a pinned page.
pub fn read_host(host: HostAddr, offset: usize) -> u8 {
    // SAFETY: `host` is a pinned page's address, valid until unpinned; callers keep offset below
    // the page size.
    unsafe { std::ptr::read_volatile(host.as_ptr().add(offset)) }
}

/// Writes `byte` at `offset` of a page pinned with WRITE.
pub fn write_host(host: HostAddr, offset: usize, byte: u8) {
    // SAFETY: as `read_host`, and the page was pinned with WRITE on writable memory.
    unsafe { std::ptr::write_volatile(host.as_ptr().add(offset), byte) }
}

// ---------------------------------------------------------------------------------------------
// Spaces, groups and devices
// ---------------------------------------------------------------------------------------------

/// A space with the default configuration.
pub fn space() -> Container {
    space_with(Config::default())
}

/// A space with `config`.
pub fn space_with(config: Config) -> Container {
    Container::new(config).unwrap()
}

/// Attaches group 1 to `space` and returns a handle on it.
pub fn group(space: &Container) -> GroupHandle {
    space.attach_group(GroupId(1)).unwrap();
    space.group_handle(GroupId(1)).unwrap()
}

/// The default configuration, with an unmap of pinned memory giving up after [`BUSY`].
pub fn config() -> Config {
    Config {
        busy_timeout: BUSY,
        ..Config::default()
    }
}

/// A space with `config`, with group `group` attached and device `device` added to it, and that
/// device's handle.
pub fn space_with_device(
    config: Config,
    group: GroupId,
    device: &str,
) -> (Container, DeviceHandle) {
    let space = Container::new(config).unwrap();
    space.attach_group(group).unwrap();
    space.add_device(group, DeviceId::new(device)).unwrap();
    let dev = space.device_handle(&DeviceId::new(device)).unwrap();
    (space, dev)
}

/// As [`space_with_device`], and a handle on the group too.
pub fn space_with_handles(
    config: Config,
    group: GroupId,
    device: &str,
) -> (Container, GroupHandle, DeviceHandle) {
    let (space, dev) = space_with_device(config, group, device);
    let group = space.group_handle(group).unwrap();
    (space, group, dev)
}

/// A space with `config`, with group 1 holding device "dev0" (no unmap callback yet), and that
/// device's handle.
pub fn env_with(config: Config) -> (Container, Arc<DeviceHandle>) {
    let (space, dev) = space_with_device(config, GroupId(1), "dev0");
    (space, Arc::new(dev))
}

/// [`env_with`] of [`config`].
pub fn env() -> (Container, Arc<DeviceHandle>) {
    env_with(config())
}

/// Maps `pages` pages of fresh owned memory at `iova`.
pub fn map_owned(space: &Container, iova: u64, pages: u64, prot: Prot) -> Arc<OwnedMemory> {
    let memory = Arc::new(OwnedMemory::new((pages * P) as usize).unwrap());
    space
        .map(
            Iova(iova),
            pages * P,
            Backing::memory(memory.clone(), 0),
            prot,
        )
        .unwrap();
    memory
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The error of a call that must fail.
#[track_caller]
pub fn err<T: Debug>(r: vdma::Result<T>) -> Error {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e,
    }
}
