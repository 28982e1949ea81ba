//! Permissions of a mapping, seen from the device, and the direction of one access.

use std::fmt;

/// What the device may do with a mapping: READ (the device reads it), WRITE, or both.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Prot(u8);

impl Prot {
    /// No permission (invalid for a mapping).
    pub const NONE: Prot = Prot(0);
    /// The device may read.
    pub const READ: Prot = Prot(1);
    /// The device may write.
    pub const WRITE: Prot = Prot(2);
    /// The device may read and write.
    pub const READ_WRITE: Prot = Prot(3);

    /// Whether every permission of `other` is in `self`.
    pub const fn contains(self, other: Prot) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no permission is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of both.
    pub const fn union(self, other: Prot) -> Prot {
        Prot(self.0 | other.0)
    }

    /// The bits, READ = 1, WRITE = 2 (as in `VFIO_DMA_MAP_FLAG_READ/WRITE`).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// From bits; `None` if a bit other than READ or WRITE is set.
    pub const fn from_bits(bits: u8) -> Option<Prot> {
        if bits & !3 != 0 {
            None
        } else {
            Some(Prot(bits))
        }
    }
}

impl std::ops::BitOr for Prot {
    type Output = Prot;
    fn bitor(self, rhs: Prot) -> Prot {
        self.union(rhs)
    }
}

impl fmt::Debug for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.0 {
            0 => "NONE",
            1 => "READ",
            2 => "WRITE",
            _ => "READ|WRITE",
        };
        f.write_str(s)
    }
}

/// The direction of a DMA access, seen from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device reads memory into the buffer; needs [`Prot::READ`].
    Read,
    /// The device writes the buffer into memory; needs [`Prot::WRITE`].
    Write,
}

impl Direction {
    /// The permission this direction needs.
    pub const fn needs(self) -> Prot {
        match self {
            Direction::Read => Prot::READ,
            Direction::Write => Prot::WRITE,
        }
    }
}
