//! Memory behind a mapping: the [`Memory`] trait and its kinds.
//!
//! A mapping points at `[offset, offset + size)` of some `Memory`. Memory that lives in this
//! process at a stable address exposes a [`HostRegion`]; `dma_rw` then copies with plain
//! loads and stores. Other memory (another process's, a vfio-user client's) implements
//! [`Memory::read_at`]/[`Memory::write_at`] and `dma_rw` calls those.

mod copy;
mod fault;
mod file;
mod host;
mod owned;
mod process;

use std::fmt;

use crate::error::Result;

pub use file::FileMemory;
pub use host::HostRegion;
pub(crate) use host::HostWindow;
pub use owned::{OwnedMemory, RawMemory};
pub use process::ProcessMemory;

/// Memory that can back a mapping.
///
/// Implement this for memory vdma does not know, such as memory reached through messages.
/// `read_at`/`write_at` get `offset` in `[0, len)` with the whole access inside; they are called
/// from `dma_rw` on any thread.
pub trait Memory: Send + Sync + fmt::Debug {
    /// Bytes addressable, offsets `[0, len)`.
    fn len(&self) -> u64;

    /// Whether `len()` is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The host memory behind this object, if it is mapped in this process at a stable address
    /// for as long as the object lives. Only such memory can be translated or pinned.
    fn host_region(&self) -> Option<&HostRegion> {
        None
    }

    /// Whether the memory can back a new mapping now; called by `map`. For example, another
    /// process's memory fails with ESRCH once the process is gone.
    fn check(&self) -> Result<()> {
        Ok(())
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Copies `buf` to `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()>;
}
