//! [`Backing`]: what a `map` call puts behind its IOVA range.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::memory::{FileMemory, Memory};
use crate::prot::Prot;

/// The memory a mapping points at.
#[derive(Debug)]
pub enum Backing<'a> {
    /// A file (memfd, hugetlbfs, shared file) at `offset`, mapped `MAP_SHARED` with the mapping's
    /// protection. Host mappings of one file are shared between mappings.
    File {
        /// The file.
        fd: BorrowedFd<'a>,
        /// Offset of the mapping's first byte in the file.
        offset: u64,
    },
    /// Any [`Memory`] at `offset`: [`crate::OwnedMemory`], [`crate::RawMemory`],
    /// [`crate::ProcessMemory`] (where the offset is the process's virtual address), or memory of
    /// the caller's own kind.
    Memory {
        /// The memory.
        memory: Arc<dyn Memory>,
        /// Offset of the mapping's first byte in it.
        offset: u64,
    },
}

impl<'a> Backing<'a> {
    /// A file at `offset`.
    pub fn file(fd: &'a impl AsFd, offset: u64) -> Backing<'a> {
        Backing::File {
            fd: fd.as_fd(),
            offset,
        }
    }

    /// `memory` at `offset`.
    pub fn memory(memory: Arc<dyn Memory>, offset: u64) -> Backing<'static> {
        Backing::Memory { memory, offset }
    }

    /// The offset of the mapping's first byte.
    pub fn offset(&self) -> u64 {
        match self {
            Backing::File { offset, .. } | Backing::Memory { offset, .. } => *offset,
        }
    }

    /// The memory that backs `size` bytes at the offset with `prot`, made or checked now.
    pub(crate) fn resolve(self, size: u64, prot: Prot) -> Result<(Arc<dyn Memory>, u64)> {
        let offset = self.offset();
        let end = offset.checked_add(size).ok_or(Error::BackingTooShort {
            offset,
            size,
            len: u64::MAX,
        })?;
        match self {
            Backing::File { fd, offset } => {
                let memory: Arc<dyn Memory> = FileMemory::shared(fd, prot, end)?;
                Ok((memory, offset))
            }
            Backing::Memory { memory, offset } => {
                memory.check()?;
                if memory.len() < end {
                    return Err(Error::BackingTooShort {
                        offset,
                        size,
                        len: memory.len(),
                    });
                }
                Ok((memory, offset))
            }
        }
    }
}
