//! REGION_READ, REGION_WRITE and REGION_WRITE_MULTI: the client's accesses to device regions
//! (BARs, PCI config space) that it does not mmap.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::protocol::command::Command;
use crate::protocol::error::ProtocolError;
use crate::protocol::wire::{expect_len, fds_at_most, read_prefix, transfer_within};

/// The fixed part of REGION_READ/REGION_WRITE requests and replies (16 bytes).
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
pub struct RegionAccess {
    /// Offset in the region.
    pub offset: U64,
    /// The region's index.
    pub region: U32,
    /// Bytes to transfer.
    pub count: U32,
}

impl RegionAccess {
    /// An access of `count` bytes at `offset` of region `region`.
    pub fn new(region: u32, offset: u64, count: u32) -> RegionAccess {
        RegionAccess {
            offset: U64::new(offset),
            region: U32::new(region),
            count: U32::new(count),
        }
    }

    /// Decodes a REGION_READ request: the fixed part (bytes after it are ignored), a count
    /// within `max_xfer` (E2BIG), no descriptor.
    pub fn decode_read(
        payload: &[u8],
        nfds: usize,
        max_xfer: u32,
    ) -> Result<RegionAccess, ProtocolError> {
        let c = Command::RegionRead;
        let (access, _) = read_prefix::<RegionAccess>(c, payload)?;
        transfer_within(c, u64::from(access.count.get()), max_xfer)?;
        fds_at_most(c, nfds, 0, "REGION_READ carries none")?;
        Ok(access)
    }

    /// Decodes a REGION_WRITE request: the fixed part and exactly `count` bytes of data, a
    /// count within `max_xfer` (E2BIG), no descriptor. Returns the data.
    pub fn decode_write(
        payload: &[u8],
        nfds: usize,
        max_xfer: u32,
    ) -> Result<(RegionAccess, &[u8]), ProtocolError> {
        let c = Command::RegionWrite;
        let (access, data) = read_prefix::<RegionAccess>(c, payload)?;
        let count = u64::from(access.count.get());
        transfer_within(c, count, max_xfer)?;
        expect_len(c, payload, size_of::<RegionAccess>() as u64 + count)?;
        fds_at_most(c, nfds, 0, "REGION_WRITE carries none")?;
        Ok((access, data))
    }

    /// A REGION_READ reply's or REGION_WRITE request's payload: this access, then `data`
    /// (its length becomes the count).
    pub fn encode_with_data(&self, data: &[u8]) -> Vec<u8> {
        let mut head = *self;
        head.count = U32::new(data.len() as u32);
        let mut out = head.as_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    /// Decodes the reply to the REGION_READ `self`: same region and offset, a count no larger
    /// than asked, and exactly that much data.
    pub fn decode_read_reply<'a>(&self, payload: &'a [u8]) -> Result<&'a [u8], ProtocolError> {
        let c = Command::RegionRead;
        let (reply, data) = read_prefix::<RegionAccess>(c, payload)?;
        self.check_reply(c, &reply)?;
        if reply.count.get() > self.count.get() {
            return Err(ProtocolError::ReplyMismatch {
                command: c,
                field: "count",
                expected: u64::from(self.count.get()),
                got: u64::from(reply.count.get()),
            });
        }
        expect_len(
            c,
            payload,
            size_of::<RegionAccess>() as u64 + u64::from(reply.count.get()),
        )?;
        Ok(data)
    }

    /// Checks the reply to the REGION_WRITE `self`: the same access, and the count written.
    pub fn decode_write_reply(&self, payload: &[u8]) -> Result<u32, ProtocolError> {
        let c = Command::RegionWrite;
        let (reply, _) = read_prefix::<RegionAccess>(c, payload)?;
        self.check_reply(c, &reply)?;
        Ok(reply.count.get())
    }

    fn check_reply(&self, command: Command, reply: &RegionAccess) -> Result<(), ProtocolError> {
        for (field, expected, got) in [
            ("offset", self.offset.get(), reply.offset.get()),
            (
                "region",
                u64::from(self.region.get()),
                u64::from(reply.region.get()),
            ),
        ] {
            if expected != got {
                return Err(ProtocolError::ReplyMismatch {
                    command,
                    field,
                    expected,
                    got,
                });
            }
        }
        Ok(())
    }
}

/// The most data one REGION_WRITE_MULTI entry carries.
pub const WRITE_MULTI_DATA: usize = 8;

/// REGION_WRITE_MULTI's fixed part (and its reply's whole payload): the number of writes.
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
pub struct WriteMultiCount {
    /// Number of writes.
    pub wr_cnt: U64,
}

/// One write of a REGION_WRITE_MULTI (24 bytes).
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
pub struct WriteOne {
    /// Offset in the region.
    pub offset: U64,
    /// The region's index.
    pub region: U32,
    /// Bytes of `data` to write (at most 8).
    pub count: U32,
    /// The data, the first `count` bytes of it.
    pub data: [u8; WRITE_MULTI_DATA],
}

impl WriteOne {
    /// A write of `data` (at most 8 bytes; more is cut) at `offset` of `region`.
    pub fn new(region: u32, offset: u64, data: &[u8]) -> WriteOne {
        let n = data.len().min(WRITE_MULTI_DATA);
        let mut buf = [0u8; WRITE_MULTI_DATA];
        buf[..n].copy_from_slice(&data[..n]);
        WriteOne {
            offset: U64::new(offset),
            region: U32::new(region),
            count: U32::new(n as u32),
            data: buf,
        }
    }

    /// The bytes to write (`count` is checked at decoding).
    pub fn bytes(&self) -> &[u8] {
        let n = (self.count.get() as usize).min(WRITE_MULTI_DATA);
        &self.data[..n]
    }
}

/// Decodes a REGION_WRITE_MULTI request: the count, then exactly that many 24-byte writes,
/// each of at most 8 bytes. No descriptor. (QEMU sends it with NO_REPLY, up to 200 writes.)
pub fn decode_write_multi(payload: &[u8], nfds: usize) -> Result<&[WriteOne], ProtocolError> {
    let c = Command::RegionWriteMulti;
    let (head, rest) = read_prefix::<WriteMultiCount>(c, payload)?;
    let n = head.wr_cnt.get();
    let each = size_of::<WriteOne>() as u64;
    expect_len(
        c,
        payload,
        n.saturating_mul(each)
            .saturating_add(size_of::<WriteMultiCount>() as u64),
    )?;
    let writes = <[WriteOne]>::ref_from_bytes(rest).map_err(|_| ProtocolError::InvalidField {
        command: c,
        field: "writes",
        reason: "misshapen",
    })?;
    if writes
        .iter()
        .any(|w| w.count.get() as usize > WRITE_MULTI_DATA)
    {
        return Err(ProtocolError::InvalidField {
            command: c,
            field: "count",
            reason: "a write of more than 8 bytes",
        });
    }
    fds_at_most(c, nfds, 0, "REGION_WRITE_MULTI carries none")?;
    Ok(writes)
}

/// A REGION_WRITE_MULTI request's payload.
pub fn encode_write_multi(writes: &[WriteOne]) -> Vec<u8> {
    let mut out = WriteMultiCount {
        wr_cnt: U64::new(writes.len() as u64),
    }
    .as_bytes()
    .to_vec();
    out.extend_from_slice(writes.as_bytes());
    out
}
