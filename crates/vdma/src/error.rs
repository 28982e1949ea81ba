//! The one error type of the core, with the errno each variant maps to.

use std::io;

use crate::address::Iova;
use crate::prot::Prot;

/// What went wrong. Every variant maps to one errno ([`Error::errno`]), the number a vfio-user
/// reply carries; variants carry the offending IOVA where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A size of zero where a range is needed (EINVAL).
    #[error("size is zero")]
    ZeroSize,
    /// A `dma_rw` of zero bytes (EINVAL).
    #[error("transfer length is zero")]
    ZeroLength,
    /// An address, size or offset not aligned to the page size (EINVAL).
    #[error("{what} {value:#x} is not aligned to the page size {page_size:#x}")]
    Misaligned {
        /// Which argument: "iova", "size", "offset".
        what: &'static str,
        /// Its value.
        value: u64,
        /// The page size it must be a multiple of.
        page_size: u64,
    },
    /// A mapping with neither READ nor WRITE (EINVAL).
    #[error("no permission given")]
    NoPermission,
    /// A map or unmap range that passes 2^64 (EINVAL).
    #[error("range at {iova} of {size:#x} bytes wraps past 2^64")]
    Wraps {
        /// Start of the range.
        iova: Iova,
        /// Its size.
        size: u64,
    },
    /// A transfer whose last byte passes 2^64 (EOVERFLOW).
    #[error("transfer at {iova} of {len:#x} bytes wraps past 2^64")]
    Overflow {
        /// Start of the transfer.
        iova: Iova,
        /// Its length.
        len: u64,
    },
    /// The range overlaps the existing mapping that starts at `iova` (EEXIST).
    #[error("range overlaps the mapping at {iova}")]
    Exists {
        /// Start of the existing mapping.
        iova: Iova,
    },
    /// The address space holds its limit of mappings (ENOSPC).
    #[error("the address space holds its limit of {limit} mappings")]
    NoSpace {
        /// The entry limit.
        limit: usize,
    },
    /// The range is not inside one of the valid IOVA ranges (EINVAL).
    #[error("range at {iova} of {size:#x} bytes is outside the valid IOVA ranges")]
    OutsideValidRanges {
        /// Start of the range.
        iova: Iova,
        /// Its size.
        size: u64,
    },
    /// No mapping covers `iova`, the first such byte of the range (EINVAL).
    #[error("{iova} is not mapped")]
    NotMapped {
        /// The first unmapped IOVA.
        iova: Iova,
    },
    /// The mapping starting at `iova` crosses an end of the unmap range; nothing was unmapped
    /// (EINVAL).
    #[error("the mapping at {iova} straddles an end of the range; unmap never splits")]
    Straddles {
        /// Start of the straddling mapping.
        iova: Iova,
    },
    /// The mapping covering `iova` does not permit `needed` (EPERM).
    #[error("the mapping covering {iova} does not permit {needed}")]
    Permission {
        /// The first IOVA where the permission is missing.
        iova: Iova,
        /// The permission the access needed.
        needed: Prot,
    },
    /// The memory is too short to back `[offset, offset + size)` (EINVAL).
    #[error("memory of {len:#x} bytes cannot back {size:#x} bytes at offset {offset:#x}")]
    BackingTooShort {
        /// Offset into the memory.
        offset: u64,
        /// Bytes wanted.
        size: u64,
        /// Bytes the memory has.
        len: u64,
    },
    /// The file descriptor's access mode or seals do not allow the asked protection (EACCES).
    #[error("the file does not allow {prot} access")]
    FileAccess {
        /// The protection asked for.
        prot: Prot,
    },
    /// The process whose memory backs a mapping is gone (ESRCH).
    #[error("process {pid} is gone")]
    ProcessGone {
        /// Its pid.
        pid: i32,
    },
    /// The memory behind `iova` has no stable host address, so it cannot be translated or
    /// pinned (EINVAL).
    #[error("the memory behind {iova} has no host address")]
    NoHostAddress {
        /// The IOVA.
        iova: Iova,
    },
    /// The memory behind `iova` failed while being copied (EFAULT).
    #[error("memory behind {iova} faulted")]
    Fault {
        /// The IOVA of the access.
        iova: Iova,
    },
    /// The mapping at `iova` is held (by segments or pins) and stayed held (EBUSY).
    #[error("the mapping at {iova} is in use")]
    MappingBusy {
        /// Start of the busy mapping.
        iova: Iova,
    },
    /// The mapping at `iova` is being unmapped (EAGAIN).
    #[error("the mapping at {iova} is being unmapped")]
    Unmapping {
        /// Start of the mapping.
        iova: Iova,
    },
    /// A group or device still has live handles (EBUSY).
    #[error("{what} still has live handles")]
    HandlesLive {
        /// What was being detached.
        what: String,
    },
    /// No such group or device (ENODEV).
    #[error("no {what}")]
    NoDevice {
        /// What was looked for.
        what: String,
    },
    /// The group or device is already there (EEXIST).
    #[error("{what} is already attached")]
    AlreadyAttached {
        /// What was attached twice.
        what: String,
    },
    /// Pinning by a device with no unmap callback (EINVAL).
    #[error("a device must register an unmap callback before it pins")]
    NoUnmapCallback,
    /// More pages in one pin or unpin call than allowed (E2BIG).
    #[error("{npages} pages in one call, at most {max}")]
    TooManyPages {
        /// Pages asked for.
        npages: usize,
        /// The limit.
        max: usize,
    },
    /// Pinning past the locked-memory limit (ENOMEM).
    #[error("pinning past the locked-memory limit of {limit} bytes")]
    MemlockLimit {
        /// The limit in bytes.
        limit: u64,
    },
    /// Dirty tracking or DMA logging is not on (EINVAL).
    #[error("dirty tracking is not on")]
    NotTracking,
    /// A page size that is not a power of two, too small, or not the tracking page size
    /// (EINVAL).
    #[error("page size {page_size:#x} is not valid here")]
    BadPageSize {
        /// The page size given.
        page_size: u64,
    },
    /// A bitmap or log of more pages than allowed (E2BIG).
    #[error("a bitmap of {pages} pages, at most {max}")]
    BitmapTooLarge {
        /// Pages asked for.
        pages: u64,
        /// The limit.
        max: u64,
    },
    /// More DMA logging ranges than allowed (E2BIG).
    #[error("{count} ranges, at most {max}")]
    TooManyRanges {
        /// Ranges given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two DMA logging ranges overlap, the second starting at `iova` (EINVAL).
    #[error("logging ranges overlap at {iova}")]
    RangesOverlap {
        /// Start of the later range.
        iova: Iova,
    },
    /// The device already logs DMA (EBUSY).
    #[error("device {device} already logs DMA")]
    LoggingActive {
        /// The device.
        device: String,
    },
    /// A configuration that cannot work (EINVAL).
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// `map`/`unmap` called from inside a DMA access on the same thread, which would wait for
    /// itself (EDEADLK).
    #[error("address space changed from inside a DMA access on the same thread")]
    Reentrant,
    /// An access to memory that another party owns and answers messages for (a vfio-user
    /// client's DMA_READ/DMA_WRITE) failed: the owner's error reply (its errno, EIO if it gave
    /// none), no reply in time (ETIMEDOUT), or the owner gone (ENODEV).
    #[error("{op} failed (errno {errno})")]
    Remote {
        /// The request.
        op: &'static str,
        /// The errno (positive).
        errno: i32,
    },
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The call.
        op: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
}

impl Error {
    /// The errno this error maps to (positive, as in `errno.h`).
    pub fn errno(&self) -> i32 {
        match self {
            Error::ZeroSize
            | Error::ZeroLength
            | Error::Misaligned { .. }
            | Error::NoPermission
            | Error::Wraps { .. }
            | Error::OutsideValidRanges { .. }
            | Error::NotMapped { .. }
            | Error::Straddles { .. }
            | Error::BackingTooShort { .. }
            | Error::NoHostAddress { .. }
            | Error::NoUnmapCallback
            | Error::RangesOverlap { .. }
            | Error::NotTracking
            | Error::BadPageSize { .. }
            | Error::InvalidConfig(_) => libc::EINVAL,
            Error::Overflow { .. } => libc::EOVERFLOW,
            Error::Exists { .. } | Error::AlreadyAttached { .. } => libc::EEXIST,
            Error::NoSpace { .. } => libc::ENOSPC,
            Error::TooManyPages { .. }
            | Error::BitmapTooLarge { .. }
            | Error::TooManyRanges { .. } => libc::E2BIG,
            Error::MemlockLimit { .. } => libc::ENOMEM,
            Error::LoggingActive { .. } => libc::EBUSY,
            Error::Permission { .. } => libc::EPERM,
            Error::FileAccess { .. } => libc::EACCES,
            Error::ProcessGone { .. } => libc::ESRCH,
            Error::Fault { .. } => libc::EFAULT,
            Error::MappingBusy { .. } | Error::HandlesLive { .. } => libc::EBUSY,
            Error::Unmapping { .. } => libc::EAGAIN,
            Error::NoDevice { .. } => libc::ENODEV,
            Error::Reentrant => libc::EDEADLK,
            Error::Remote { errno, .. } => *errno,
            Error::Os { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// The same error, with a memory fault placed at `iova`.
    pub(crate) fn at(self, iova: Iova) -> Error {
        match self {
            Error::Fault { .. } => Error::Fault { iova },
            other => other,
        }
    }

    /// The error of the system call `op` that just failed, from `errno`.
    pub(crate) fn last_os(op: &'static str) -> Error {
        Error::Os {
            op,
            source: io::Error::last_os_error(),
        }
    }
}

/// The core's result type.
pub type Result<T> = std::result::Result<T, Error>;
