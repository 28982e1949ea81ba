//! MIG_DATA_READ and MIG_DATA_WRITE: the device's migration data as a stream, over the socket.

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::protocol::command::Command;
use crate::protocol::error::ProtocolError;
use crate::protocol::wire::{
    argsz_at_least, expect_len, fds_at_most, read_prefix, transfer_within,
};

/// MIG_DATA_READ/WRITE's fixed part (8 bytes); data follows in the read reply and the write
/// request.
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
pub struct MigData {
    /// Request: the largest reply payload taken. Read reply: the reply's size.
    pub argsz: U32,
    /// Bytes of data (asked for, returned, or written).
    pub size: U32,
}

impl MigData {
    /// A fixed part for `size` bytes with argsz `8 + size`.
    pub fn new(size: u32) -> MigData {
        MigData {
            argsz: U32::new((size_of::<MigData>() as u32).saturating_add(size)),
            size: U32::new(size),
        }
    }

    /// Decodes a MIG_DATA_READ request: the fixed part (bytes after it are ignored), size
    /// within `max_xfer` (E2BIG), argsz taking the reply with that much data. No descriptor.
    pub fn decode_read(
        payload: &[u8],
        nfds: usize,
        max_xfer: u32,
    ) -> Result<MigData, ProtocolError> {
        let c = Command::MigDataRead;
        let (m, _) = read_prefix::<MigData>(c, payload)?;
        transfer_within(c, u64::from(m.size.get()), max_xfer)?;
        argsz_at_least(
            c,
            m.argsz.get(),
            size_of::<MigData>() as u64 + u64::from(m.size.get()),
        )?;
        fds_at_most(c, nfds, 0, "MIG_DATA_READ carries none")?;
        Ok(m)
    }

    /// Decodes a MIG_DATA_WRITE request and returns its data: size within `max_xfer` (E2BIG),
    /// exactly that much data, argsz at least the payload (libvfio-user's rule). No descriptor.
    pub fn decode_write(
        payload: &[u8],
        nfds: usize,
        max_xfer: u32,
    ) -> Result<(MigData, &[u8]), ProtocolError> {
        let c = Command::MigDataWrite;
        let (m, data) = read_prefix::<MigData>(c, payload)?;
        let size = u64::from(m.size.get());
        transfer_within(c, size, max_xfer)?;
        expect_len(c, payload, size_of::<MigData>() as u64 + size)?;
        argsz_at_least(c, m.argsz.get(), payload.len() as u64)?;
        fds_at_most(c, nfds, 0, "MIG_DATA_WRITE carries none")?;
        Ok((m, data))
    }

    /// A MIG_DATA_READ reply's or MIG_DATA_WRITE request's payload: the fixed part for `data`
    /// (argsz 8 + its length), then `data`.
    pub fn encode_with_data(data: &[u8]) -> Vec<u8> {
        let mut out = MigData::new(data.len() as u32).as_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    /// Decodes the reply to the MIG_DATA_READ `self`: at most the size asked, exactly that
    /// much data. Less than asked means the stream has no more.
    pub fn decode_read_reply<'a>(&self, payload: &'a [u8]) -> Result<&'a [u8], ProtocolError> {
        let c = Command::MigDataRead;
        let (m, data) = read_prefix::<MigData>(c, payload)?;
        if m.size.get() > self.size.get() {
            return Err(ProtocolError::ReplyMismatch {
                command: c,
                field: "size",
                expected: u64::from(self.size.get()),
                got: u64::from(m.size.get()),
            });
        }
        expect_len(
            c,
            payload,
            size_of::<MigData>() as u64 + u64::from(m.size.get()),
        )?;
        Ok(data)
    }
}
