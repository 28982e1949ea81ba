//! DEVICE_GET_REGION_IO_FDS: file descriptors (ioeventfds, ioregionfds) through which parts of
//! a region can be written without a message.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::protocol::command::Command;
use crate::protocol::error::ProtocolError;
use crate::protocol::wire::{argsz_at_least, expect_len, fds_at_most, known_bits, read_prefix};

/// Sub-region type: an ioeventfd (the last field is a datamatch value).
pub const IO_FD_TYPE_IOEVENTFD: u32 = 0;
/// Sub-region type: an ioregionfd (the last field is user data).
pub const IO_FD_TYPE_IOREGIONFD: u32 = 1;

/// DEVICE_GET_REGION_IO_FDS's fixed payload, request and reply (16 bytes).
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
pub struct RegionIoFds {
    /// Request: the largest reply payload taken. Reply: the full reply's size.
    pub argsz: U32,
    /// Must be 0.
    pub flags: U32,
    /// The region's index.
    pub index: U32,
    /// Reply: number of sub-regions that follow.
    pub count: U32,
}

/// One sub-region in the reply (40 bytes, the specification's layout).
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
pub struct SubRegionIoFd {
    /// Start of the sub-region in the region.
    pub offset: U64,
    /// Its length (0: any access size).
    pub size: U64,
    /// Index of its file descriptor among the reply's descriptors.
    pub fd_index: U32,
    /// [`IO_FD_TYPE_IOEVENTFD`] or [`IO_FD_TYPE_IOREGIONFD`].
    pub kind: U32,
    /// KVM ioeventfd / ioregion flags.
    pub flags: U32,
    /// Padding, 0.
    pub padding: U32,
    /// Datamatch (ioeventfd) or user data (ioregionfd).
    pub data: U64,
}

impl RegionIoFds {
    /// A request for region `index`, taking replies of up to `argsz` bytes.
    pub fn request(index: u32, argsz: u32) -> RegionIoFds {
        RegionIoFds {
            argsz: U32::new(argsz),
            index: U32::new(index),
            ..RegionIoFds::default()
        }
    }

    /// Decodes a request: argsz takes at least the 16-byte header, flags are 0. No file
    /// descriptor; bytes after the structure are ignored.
    pub fn decode_request(payload: &[u8], nfds: usize) -> Result<RegionIoFds, ProtocolError> {
        let c = Command::DeviceGetRegionIoFds;
        let (req, _) = read_prefix::<RegionIoFds>(c, payload)?;
        argsz_at_least(c, req.argsz.get(), size_of::<RegionIoFds>() as u64)?;
        known_bits(c, "flags", u64::from(req.flags.get()), 0)?;
        fds_at_most(c, nfds, 0, "DEVICE_GET_REGION_IO_FDS carries none")?;
        Ok(req)
    }
}

/// A DEVICE_GET_REGION_IO_FDS reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionIoFdsReply {
    /// The region's index.
    pub index: u32,
    /// The sub-regions; the reply carries the descriptors they index.
    pub sub_regions: Vec<SubRegionIoFd>,
}

impl RegionIoFdsReply {
    /// The reply payload for a request taking `request_argsz` bytes: `argsz` and `count`
    /// describe the full reply; the sub-regions go only if they fit (the client asks again).
    pub fn encode(&self, request_argsz: u32) -> Vec<u8> {
        let full = size_of::<RegionIoFds>() + self.sub_regions.as_bytes().len();
        let head = RegionIoFds {
            argsz: U32::new(full as u32),
            flags: U32::new(0),
            index: U32::new(self.index),
            count: U32::new(self.sub_regions.len() as u32),
        };
        let mut out = head.as_bytes().to_vec();
        if full <= request_argsz as usize {
            out.extend_from_slice(self.sub_regions.as_bytes());
        }
        out
    }

    /// Decodes a reply with `nfds` descriptors. When `argsz` exceeds the payload the reply
    /// was cut to its header and `sub_regions` is empty; otherwise the payload holds exactly
    /// `count` sub-regions, each indexing one of the descriptors.
    pub fn decode(payload: &[u8], nfds: usize) -> Result<(u32, RegionIoFdsReply), ProtocolError> {
        let c = Command::DeviceGetRegionIoFds;
        let (head, rest) = read_prefix::<RegionIoFds>(c, payload)?;
        let argsz = head.argsz.get();
        if argsz as usize > payload.len() {
            expect_len(c, payload, size_of::<RegionIoFds>() as u64)?;
            fds_at_most(c, nfds, 0, "a cut reply carries none")?;
            return Ok((
                argsz,
                RegionIoFdsReply {
                    index: head.index.get(),
                    sub_regions: Vec::new(),
                },
            ));
        }
        let count = u64::from(head.count.get());
        let each = size_of::<SubRegionIoFd>() as u64;
        expect_len(c, payload, size_of::<RegionIoFds>() as u64 + count * each)?;
        let subs =
            <[SubRegionIoFd]>::ref_from_bytes(rest).map_err(|_| ProtocolError::InvalidField {
                command: c,
                field: "sub-regions",
                reason: "misshapen",
            })?;
        if subs.iter().any(|s| s.fd_index.get() as usize >= nfds) {
            return Err(ProtocolError::InvalidField {
                command: c,
                field: "fd_index",
                reason: "past the descriptors sent",
            });
        }
        Ok((
            argsz,
            RegionIoFdsReply {
                index: head.index.get(),
                sub_regions: subs.to_vec(),
            },
        ))
    }
}
