//! DEVICE_GET_REGION_INFO: one region's size, flags and mmap offset, and its capability chain
//! (sparse mmap areas, region type).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::protocol::command::Command;
use crate::protocol::error::ProtocolError;
use crate::protocol::wire::{argsz_at_least, fds_at_most, read_prefix};

/// Region flag: the client may read the region.
pub const REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// Region flag: the client may write the region.
pub const REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// Region flag: the client may mmap the region (the reply carries a file descriptor).
pub const REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// Region flag: the reply has a capability chain.
pub const REGION_INFO_FLAG_CAPS: u32 = 1 << 3;

/// Capability id: sparse mmap areas.
pub const REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// Capability id: region type and subtype.
pub const REGION_INFO_CAP_TYPE: u16 = 2;

/// DEVICE_GET_REGION_INFO's fixed payload, request and reply (32 bytes, Linux's
/// `struct vfio_region_info`).
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
pub struct RegionInfo {
    /// Request: the largest reply payload taken. Reply: the size the full reply needs.
    pub argsz: U32,
    /// `REGION_INFO_FLAG_*` (reply).
    pub flags: U32,
    /// The region's index.
    pub index: U32,
    /// Offset of the first capability from the start of this structure (0: none here).
    pub cap_offset: U32,
    /// The region's size.
    pub size: U64,
    /// The mmap offset in the file sent with the reply.
    pub offset: U64,
}

/// The header of each capability in the chain (8 bytes).
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
pub struct CapHeader {
    /// The capability id.
    pub id: U16,
    /// The capability's version.
    pub version: U16,
    /// Offset of the next capability from the start of the region info (0: last).
    pub next: U32,
}

/// The sparse-mmap capability's body before its areas (8 bytes).
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
pub struct SparseMmapHeader {
    /// Number of areas that follow.
    pub nr_areas: U32,
    /// Reserved, 0.
    pub reserved: U32,
}

/// One sparse mmap area (16 bytes): a part of the region the client may mmap.
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
pub struct SparseMmapArea {
    /// Offset in the region (added to the region's mmap offset).
    pub offset: U64,
    /// Size of the area.
    pub size: U64,
}

impl SparseMmapArea {
    /// An area.
    pub fn new(offset: u64, size: u64) -> SparseMmapArea {
        SparseMmapArea {
            offset: U64::new(offset),
            size: U64::new(size),
        }
    }
}

/// The region-type capability's body (8 bytes).
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
pub struct RegionTypeCap {
    /// The region type.
    pub kind: U32,
    /// The region subtype.
    pub subtype: U32,
}

/// One capability of a region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionCap {
    /// The parts of the region the client may mmap (version 1).
    SparseMmap(Vec<SparseMmapArea>),
    /// A device-specific region's type (version 1).
    Type {
        /// The type.
        kind: u32,
        /// The subtype.
        subtype: u32,
    },
    /// A capability this crate does not interpret, with its body (up to the next capability or
    /// the end of the reply).
    Other {
        /// Its id.
        id: u16,
        /// Its version.
        version: u16,
        /// Its body.
        body: Vec<u8>,
    },
}

impl RegionCap {
    fn id_version(&self) -> (u16, u16) {
        match self {
            RegionCap::SparseMmap(_) => (REGION_INFO_CAP_SPARSE_MMAP, 1),
            RegionCap::Type { .. } => (REGION_INFO_CAP_TYPE, 1),
            RegionCap::Other { id, version, .. } => (*id, *version),
        }
    }

    fn body(&self) -> Vec<u8> {
        match self {
            RegionCap::SparseMmap(areas) => {
                let mut out = SparseMmapHeader {
                    nr_areas: U32::new(areas.len() as u32),
                    reserved: U32::new(0),
                }
                .as_bytes()
                .to_vec();
                out.extend_from_slice(areas.as_bytes());
                out
            }
            RegionCap::Type { kind, subtype } => RegionTypeCap {
                kind: U32::new(*kind),
                subtype: U32::new(*subtype),
            }
            .as_bytes()
            .to_vec(),
            RegionCap::Other { body, .. } => body.clone(),
        }
    }
}

impl RegionInfo {
    /// A request for region `index`, taking replies of up to `argsz` bytes.
    pub fn request(index: u32, argsz: u32) -> RegionInfo {
        RegionInfo {
            argsz: U32::new(argsz),
            index: U32::new(index),
            ..RegionInfo::default()
        }
    }

    /// Decodes a request: `argsz` must take at least the 32-byte structure. Only `argsz` and
    /// `index` are inputs; bytes after the structure are ignored. No file descriptor.
    pub fn decode_request(payload: &[u8], nfds: usize) -> Result<RegionInfo, ProtocolError> {
        let c = Command::DeviceGetRegionInfo;
        let (info, _) = read_prefix::<RegionInfo>(c, payload)?;
        argsz_at_least(c, info.argsz.get(), size_of::<RegionInfo>() as u64)?;
        fds_at_most(c, nfds, 0, "DEVICE_GET_REGION_INFO carries none")?;
        Ok(info)
    }
}

/// A region-info reply: the region and its capabilities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfoReply {
    /// The reply's argsz: the size the full reply needs.
    pub argsz: u32,
    /// `REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// The region's index.
    pub index: u32,
    /// The region's size.
    pub size: u64,
    /// The mmap offset.
    pub offset: u64,
    /// The capability chain, in order (empty when the reply left it out).
    pub caps: Vec<RegionCap>,
}

impl RegionInfoReply {
    /// The reply payload for a request that takes `request_argsz` bytes. `argsz` is always
    /// the full size. If the full reply does not fit, only the 32-byte structure goes, without
    /// CAPS and with `cap_offset` 0, and the client asks again with the larger argsz. (Linux
    /// sets CAPS on such a cut reply; QEMU's vfio-user client then fails the region with
    /// EINVAL, because it requires a CAPS reply's `cap_offset` to lie in `[32, argsz]`.
    /// libvfio-user leaves CAPS out too.) Capabilities are 8-byte aligned.
    pub fn encode(&self, request_argsz: u32) -> Vec<u8> {
        let fixed = size_of::<RegionInfo>();
        let mut chain = Vec::new();
        let mut next_fields = Vec::new();
        for cap in &self.caps {
            let start = fixed + chain.len();
            let (id, version) = cap.id_version();
            let mut body = cap.body();
            body.resize(body.len().next_multiple_of(8), 0);
            next_fields.push(start + 4);
            chain.extend_from_slice(
                CapHeader {
                    id: U16::new(id),
                    version: U16::new(version),
                    next: U32::new(0),
                }
                .as_bytes(),
            );
            chain.extend_from_slice(&body);
        }
        // Link each capability to the next one.
        for pair in next_fields.windows(2) {
            let (field, next_start) = (pair[0] - fixed, pair[1] - 4);
            chain[field..field + 4].copy_from_slice(&(next_start as u32).to_le_bytes());
        }
        let full = fixed + chain.len();
        let fits = full <= request_argsz as usize;
        let mut flags = self.flags & !REGION_INFO_FLAG_CAPS;
        if fits && !self.caps.is_empty() {
            flags |= REGION_INFO_FLAG_CAPS;
        }
        let info = RegionInfo {
            argsz: U32::new(full as u32),
            flags: U32::new(flags),
            index: U32::new(self.index),
            cap_offset: U32::new(if fits && !self.caps.is_empty() {
                fixed as u32
            } else {
                0
            }),
            size: U64::new(self.size),
            offset: U64::new(self.offset),
        };
        let mut out = info.as_bytes().to_vec();
        if fits {
            out.extend_from_slice(&chain);
        }
        out
    }

    /// Decodes a reply that came with `nfds` file descriptors (0, or 1 for a mappable
    /// region), walking the capability chain: every capability lies inside the payload, after
    /// the structure and after the one before it (so the chain ends), and a sparse-mmap
    /// capability's areas fit.
    pub fn decode(payload: &[u8], nfds: usize) -> Result<RegionInfoReply, ProtocolError> {
        let c = Command::DeviceGetRegionInfo;
        let (info, _) = read_prefix::<RegionInfo>(c, payload)?;
        fds_at_most(c, nfds, 1, "a DEVICE_GET_REGION_INFO reply carries 0 or 1")?;
        let fixed = size_of::<RegionInfo>();
        let mut caps = Vec::new();
        let mut at = info.cap_offset.get() as usize;
        if info.flags.get() & REGION_INFO_FLAG_CAPS == 0 {
            at = 0;
        }
        let bad = |reason| ProtocolError::InvalidField {
            command: c,
            field: "capability chain",
            reason,
        };
        let mut floor = fixed;
        while at != 0 {
            if at < floor {
                return Err(bad("a capability starts inside the one before it"));
            }
            let cap_bytes = payload
                .get(at..)
                .ok_or(bad("a capability starts past the end"))?;
            let (header, body) = read_prefix::<CapHeader>(c, cap_bytes)?;
            let next = header.next.get() as usize;
            if next != 0 && next < at + size_of::<CapHeader>() {
                return Err(bad("a capability's next goes backwards"));
            }
            let body = if next == 0 {
                body
            } else {
                body.get(..next - at - size_of::<CapHeader>())
                    .ok_or(bad("a capability's next is past the end"))?
            };
            caps.push(match (header.id.get(), header.version.get()) {
                (REGION_INFO_CAP_SPARSE_MMAP, _) => {
                    let (sparse, areas) = read_prefix::<SparseMmapHeader>(c, body)?;
                    let n = sparse.nr_areas.get() as usize;
                    let need = n.checked_mul(size_of::<SparseMmapArea>());
                    let areas = need
                        .and_then(|need| areas.get(..need))
                        .ok_or(bad("sparse mmap areas past the end"))?;
                    let areas = <[SparseMmapArea]>::ref_from_bytes(areas)
                        .map_err(|_| bad("sparse mmap areas misshapen"))?;
                    RegionCap::SparseMmap(areas.to_vec())
                }
                (REGION_INFO_CAP_TYPE, _) => {
                    let (t, _) = read_prefix::<RegionTypeCap>(c, body)?;
                    RegionCap::Type {
                        kind: t.kind.get(),
                        subtype: t.subtype.get(),
                    }
                }
                (id, version) => RegionCap::Other {
                    id,
                    version,
                    body: body.to_vec(),
                },
            });
            floor = at + size_of::<CapHeader>();
            at = next;
        }
        Ok(RegionInfoReply {
            argsz: info.argsz.get(),
            flags: info.flags.get(),
            index: info.index.get(),
            size: info.size.get(),
            offset: info.offset.get(),
            caps,
        })
    }
}
