//! DMA_MAP and DMA_UNMAP: the client makes its memory available to the device, and takes it
//! away (with the dirty-bitmap and unmap-all forms).

use vdma::Prot;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::protocol::command::Command;
use crate::protocol::error::ProtocolError;
use crate::protocol::wire::{
    argsz_at_least, argsz_within, expect_len, fds_at_most, known_bits, read_prefix,
};

/// DMA_MAP flag: the device may read the region.
pub const DMA_MAP_FLAG_READ: u32 = 1 << 0;
/// DMA_MAP flag: the device may write the region.
pub const DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
/// Every DMA_MAP flag the specification defines.
pub const DMA_MAP_KNOWN_FLAGS: u32 = DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE;

/// DMA_UNMAP flag: return the removed range's dirty bitmap (a [`DmaBitmap`] follows).
pub const DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
/// DMA_UNMAP flag: remove every mapping (address and size must be 0).
pub const DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
/// Every DMA_UNMAP flag.
pub const DMA_UNMAP_KNOWN_FLAGS: u32 = DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | DMA_UNMAP_FLAG_ALL;

/// DMA_MAP's payload (32 bytes); the reply has none. With one file descriptor, the region is
/// that file from `offset`; without, the server reaches it with DMA_READ/DMA_WRITE.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct DmaMap {
    /// Size of this structure (32); the request's own size, not a reply limit.
    pub argsz: U32,
    /// [`DMA_MAP_FLAG_READ`] | [`DMA_MAP_FLAG_WRITE`].
    pub flags: U32,
    /// Offset into the file (0 without a file).
    pub offset: U64,
    /// The region's DMA address (IOVA).
    pub addr: U64,
    /// The region's size.
    pub size: U64,
}

impl DmaMap {
    /// A request for `[addr, addr + size)` with permissions `prot`, at `offset` in the file
    /// sent along (if any).
    pub fn new(addr: u64, size: u64, offset: u64, prot: Prot) -> DmaMap {
        DmaMap {
            argsz: U32::new(size_of::<DmaMap>() as u32),
            flags: U32::new(u32::from(prot.bits())),
            offset: U64::new(offset),
            addr: U64::new(addr),
            size: U64::new(size),
        }
    }

    /// Decodes and checks a DMA_MAP payload that came with `nfds` file descriptors (0 or 1).
    /// Bytes after the structure are ignored.
    pub fn decode(payload: &[u8], nfds: usize) -> Result<DmaMap, ProtocolError> {
        let c = Command::DmaMap;
        let (map, _) = read_prefix::<DmaMap>(c, payload)?;
        argsz_at_least(c, map.argsz.get(), size_of::<DmaMap>() as u64)?;
        argsz_within(c, map.argsz.get(), payload)?;
        known_bits(
            c,
            "flags",
            u64::from(map.flags.get()),
            u64::from(DMA_MAP_KNOWN_FLAGS),
        )?;
        fds_at_most(c, nfds, 1, "DMA_MAP carries 0 or 1")?;
        Ok(map)
    }

    /// The permissions, as the device sees them (READ = 1, WRITE = 2, as in the flags).
    pub fn prot(&self) -> Prot {
        Prot::from_bits((self.flags.get() & DMA_MAP_KNOWN_FLAGS) as u8).unwrap_or(Prot::NONE)
    }
}

/// DMA_UNMAP's payload (24 bytes), also echoed as the reply's.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct DmaUnmap {
    /// In a request, the largest reply payload the client takes.
    pub argsz: U32,
    /// [`DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`] or [`DMA_UNMAP_FLAG_ALL`] (not both).
    pub flags: U32,
    /// The range's DMA address.
    pub addr: U64,
    /// The range's size.
    pub size: U64,
}

/// The bitmap description after a [`DmaUnmap`] with GET_DIRTY_BITMAP (16 bytes); in the reply,
/// `size` bytes of bitmap follow it.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct DmaBitmap {
    /// Bytes of IOVA per bit.
    pub pgsize: U64,
    /// Bytes of bitmap.
    pub size: U64,
}

/// A decoded DMA_UNMAP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaUnmapRequest {
    /// The fixed part.
    pub unmap: DmaUnmap,
    /// With GET_DIRTY_BITMAP: the bitmap's page size and length.
    pub bitmap: Option<DmaBitmap>,
}

impl DmaUnmap {
    /// A request to unmap `[addr, addr + size)`.
    pub fn new(addr: u64, size: u64) -> DmaUnmap {
        DmaUnmap {
            argsz: U32::new(size_of::<DmaUnmap>() as u32),
            flags: U32::new(0),
            addr: U64::new(addr),
            size: U64::new(size),
        }
    }

    /// Whether UNMAP_ALL is set.
    pub fn is_all(&self) -> bool {
        self.flags.get() & DMA_UNMAP_FLAG_ALL != 0
    }

    /// Whether GET_DIRTY_BITMAP is set.
    pub fn wants_bitmap(&self) -> bool {
        self.flags.get() & DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0
    }
}

impl DmaUnmapRequest {
    /// Decodes and checks a DMA_UNMAP request: known flags, not both; UNMAP_ALL with address
    /// and size 0; with GET_DIRTY_BITMAP, the bitmap description follows and `argsz` covers
    /// the reply with the bitmap. No file descriptor. The payload is exactly the parts its
    /// flags announce.
    pub fn decode(payload: &[u8], nfds: usize) -> Result<DmaUnmapRequest, ProtocolError> {
        let c = Command::DmaUnmap;
        let (unmap, rest) = read_prefix::<DmaUnmap>(c, payload)?;
        let f = unmap.flags.get();
        known_bits(c, "flags", u64::from(f), u64::from(DMA_UNMAP_KNOWN_FLAGS))?;
        if f == DMA_UNMAP_KNOWN_FLAGS {
            return Err(ProtocolError::InvalidField {
                command: c,
                field: "flags",
                reason: "GET_DIRTY_BITMAP and UNMAP_ALL together",
            });
        }
        if unmap.is_all() && (unmap.addr.get() != 0 || unmap.size.get() != 0) {
            return Err(ProtocolError::InvalidField {
                command: c,
                field: "addr/size",
                reason: "UNMAP_ALL needs address and size 0",
            });
        }
        let fixed = size_of::<DmaUnmap>() as u64;
        let bitmap = if unmap.wants_bitmap() {
            let (bitmap, _) = read_prefix::<DmaBitmap>(c, rest)?;
            let both = fixed + size_of::<DmaBitmap>() as u64;
            expect_len(c, payload, both)?;
            argsz_at_least(c, unmap.argsz.get(), both.saturating_add(bitmap.size.get()))?;
            Some(bitmap)
        } else {
            expect_len(c, payload, fixed)?;
            argsz_at_least(c, unmap.argsz.get(), fixed)?;
            None
        };
        fds_at_most(c, nfds, 0, "DMA_UNMAP carries none")?;
        Ok(DmaUnmapRequest { unmap, bitmap })
    }

    /// The request's payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.unmap.as_bytes().to_vec();
        if let Some(b) = &self.bitmap {
            out.extend_from_slice(b.as_bytes());
        }
        out
    }
}

/// A DMA_UNMAP reply: the request's [`DmaUnmap`], and with GET_DIRTY_BITMAP the
/// [`DmaBitmap`] and the bitmap bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaUnmapReply {
    /// The request's fixed part, echoed.
    pub unmap: DmaUnmap,
    /// The bitmap description and its bytes.
    pub bitmap: Option<(DmaBitmap, Vec<u8>)>,
}

impl DmaUnmapReply {
    /// The reply's payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.unmap.as_bytes().to_vec();
        if let Some((b, data)) = &self.bitmap {
            out.extend_from_slice(b.as_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    /// Decodes a reply payload; the bitmap is there when the reply's flags ask for it, and
    /// is exactly as long as its description says. No file descriptor.
    pub fn decode(payload: &[u8], nfds: usize) -> Result<DmaUnmapReply, ProtocolError> {
        let c = Command::DmaUnmap;
        let (unmap, rest) = read_prefix::<DmaUnmap>(c, payload)?;
        fds_at_most(c, nfds, 0, "a DMA_UNMAP reply carries none")?;
        let bitmap = if unmap.wants_bitmap() {
            let (b, data) = read_prefix::<DmaBitmap>(c, rest)?;
            let whole = (size_of::<DmaUnmap>() + size_of::<DmaBitmap>()) as u64;
            expect_len(c, payload, whole.saturating_add(b.size.get()))?;
            Some((b, data.to_vec()))
        } else {
            expect_len(c, payload, size_of::<DmaUnmap>() as u64)?;
            None
        };
        Ok(DmaUnmapReply { unmap, bitmap })
    }
}
