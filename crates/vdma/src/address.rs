//! Address newtypes: an [`Iova`] is what the device sees, a [`HostAddr`] is a pointer in this
//! process. Keeping them apart means one is never passed where the other belongs.

use std::fmt;

/// An I/O virtual address: an address as the device sees it (for a VMM without a vIOMMU, the
/// guest physical address).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova(pub u64);

impl Iova {
    /// The raw address.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + n`, or `None` if that passes 2^64 - 1.
    pub const fn checked_add(self, n: u64) -> Option<Iova> {
        match self.0.checked_add(n) {
            Some(v) => Some(Iova(v)),
            None => None,
        }
    }

    /// The last byte of the range `[self, self + len)`, or `None` if `len` is zero or the range
    /// passes 2^64. A range that ends exactly at 2^64 has last byte `u64::MAX`.
    pub const fn last_of(self, len: u64) -> Option<Iova> {
        if len == 0 {
            return None;
        }
        self.checked_add(len - 1)
    }
}

impl fmt::Debug for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iova({:#x})", self.0)
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iova {:#x}", self.0)
    }
}

/// An address in this process's virtual memory. Only produced by vdma for memory it keeps
/// mapped (see [`crate::Segments`]); holding one grants no access by itself.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostAddr(pub usize);

impl HostAddr {
    /// The address as a raw pointer.
    pub const fn as_ptr(self) -> *mut u8 {
        self.0 as *mut u8
    }
}

impl fmt::Debug for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostAddr({:#x})", self.0)
    }
}

/// An inclusive range of IOVAs, `[start, last]`. Inclusive so that a range ending at 2^64 is
/// representable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaRange {
    /// First byte.
    pub start: Iova,
    /// Last byte (inclusive).
    pub last: Iova,
}

impl IovaRange {
    /// Every IOVA, `[0, 2^64 - 1]`.
    pub const ALL: IovaRange = IovaRange {
        start: Iova(0),
        last: Iova(u64::MAX),
    };

    /// The range `[start, last]`.
    pub const fn new(start: Iova, last: Iova) -> IovaRange {
        IovaRange { start, last }
    }

    /// Whether `[start, last]` lies wholly inside this range.
    pub const fn contains(&self, start: Iova, last: Iova) -> bool {
        self.start.0 <= start.0 && last.0 <= self.last.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_of_handles_the_top_of_the_space() {
        assert_eq!(Iova(u64::MAX - 4095).last_of(4096), Some(Iova(u64::MAX)));
        assert_eq!(Iova(u64::MAX - 4095).last_of(4097), None);
        assert_eq!(Iova(5).last_of(0), None);
    }
}
