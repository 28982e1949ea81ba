//! DMA_READ and DMA_WRITE: the server reads and writes client memory that came without a file
//! descriptor, in one of two layouts ([`DmaLayout`]).
//!
//! # The two layouts
//!
//! The specification (and libvfio-user) lay the payload out as a u64 address, a u64 count, and
//! the data at offset 16. QEMU's client (`hw/vfio-user`, `VFIOUserDMARW`) uses a C struct of a
//! u64 address and a u32 count with a flexible array after it: the data starts at offset 12,
//! and because the struct is padded to 8 bytes, QEMU counts 4 more bytes into every message
//! (requests it accepts and replies it sends are `32 + count` bytes, header included). Both
//! layouts so give messages of the same size, and a DMA_READ request (no data, count < 4 GiB)
//! is the same bytes in both; what differs is where the data sits:
//!
//! | message             | spec payload                      | QEMU payload                          |
//! |---------------------|-----------------------------------|---------------------------------------|
//! | DMA_READ request    | addr u64, count u64               | addr u64, count u32, 4 zero bytes     |
//! | DMA_READ reply      | addr u64, count u64, data         | addr u64, count u32, data, 4 bytes    |
//! | DMA_WRITE request   | addr u64, count u64, data         | addr u64, count u32, data, 4 bytes    |
//! | DMA_WRITE reply     | addr u64, count u64 (libvfio-user) or addr u64, count u32 (spec table) | empty |
//!
//! A server that writes the spec layout to QEMU has QEMU write the four high bytes of the
//! count (zeros) and then the data shifted by four into guest memory, silently; reading QEMU's
//! reply as the spec layout takes the first four data bytes as the count's high half.
//!
//! # Telling them apart: [`DmaLayout::detect`]
//!
//! The bytes of one DMA message cannot tell the layouts apart reliably (a QEMU reply whose
//! first four data bytes are zero reads as a valid spec reply), so the layout is decided once
//! per connection, from the client's VERSION request, before any DMA message:
//!
//! 1. a client that offers `twin_socket` speaks the spec layout: that capability came with
//!    libvfio-user's implementation of the current specification and QEMU's client does not
//!    know it;
//! 2. otherwise a client that sends `write_multiple` is QEMU: QEMU's client always sends it
//!    (with `max_dma_maps`, `pgsizes` and `migration.max_bitmap_size`), and no other known
//!    client does (libvfio-user's sends only `max_msg_fds` and `max_data_xfer_size`, rust-vmm's
//!    a bare object without the `capabilities` wrapper);
//! 3. anything else gets the spec layout.
//!
//! A user who knows better forces a layout ([`DmaLayoutChoice::Force`]). A wrong guess does not
//! go unnoticed for long: a spec-layout DMA_READ reply is checked for the exact count, and
//! QEMU's data in the high half of the count fails that check
//! ([`ProtocolError::ReplyMismatch`]) unless the first four bytes read are zero.
//!
//! DMA_WRITE replies are accepted in every form whatever the layout: empty (QEMU), a u32
//! count (the specification's table) or a u64 count (libvfio-user).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::protocol::command::Command;
use crate::protocol::error::ProtocolError;
use crate::protocol::version::Capabilities;
use crate::protocol::wire::{expect_len, fds_at_most, read_prefix, transfer_within};

/// The specification's DMA_READ/DMA_WRITE fixed part (16 bytes): data at offset 16.
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
pub struct DmaAccessSpec {
    /// Client DMA address.
    pub addr: U64,
    /// Bytes.
    pub count: U64,
}

/// QEMU's DMA_READ/DMA_WRITE fixed part (12 bytes): data at offset 12, 4 bytes of padding at
/// the end of the message. Also the specification's 12-byte DMA_WRITE reply.
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
pub struct DmaAccessQemu {
    /// Client DMA address.
    pub addr: U64,
    /// Bytes.
    pub count: U32,
}

/// The layout of DMA_READ/DMA_WRITE payloads on one connection. See the module
/// documentation for the table and the detection rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DmaLayout {
    /// u64 address, u64 count, data at payload offset 16 (specification, libvfio-user).
    #[default]
    Spec,
    /// u64 address, u32 count, data at payload offset 12, 4 padding bytes at the end (QEMU's
    /// client).
    Qemu,
}

/// How a server picks the layout: detected from the client's VERSION, or forced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DmaLayoutChoice {
    /// [`DmaLayout::detect`] on the client's VERSION request.
    #[default]
    Auto,
    /// Always this layout.
    Force(DmaLayout),
}

impl DmaLayoutChoice {
    /// The layout for a client whose VERSION request carried `capabilities`.
    pub fn resolve(self, capabilities: Option<&Capabilities>) -> DmaLayout {
        match self {
            DmaLayoutChoice::Auto => DmaLayout::detect(capabilities),
            DmaLayoutChoice::Force(layout) => layout,
        }
    }
}

impl DmaLayout {
    /// The layout a client speaks, from the capabilities of its VERSION request: spec if it
    /// offers `twin_socket`, else QEMU if it sends `write_multiple`, else spec. The reasons are
    /// in the module documentation.
    pub fn detect(capabilities: Option<&Capabilities>) -> DmaLayout {
        match capabilities {
            Some(c) if c.twin_socket.is_some() => DmaLayout::Spec,
            Some(c) if c.write_multiple.is_some() => DmaLayout::Qemu,
            _ => DmaLayout::Spec,
        }
    }

    /// Where the data starts in the payload.
    pub const fn data_offset(self) -> usize {
        match self {
            DmaLayout::Spec => 16,
            DmaLayout::Qemu => 12,
        }
    }

    /// Payload bytes of a message carrying `count` bytes of data: 16 + count in both layouts.
    pub const fn payload_len(self, count: usize) -> usize {
        16 + count
    }

    fn head(self, addr: u64, count: u64) -> Vec<u8> {
        match self {
            DmaLayout::Spec => DmaAccessSpec {
                addr: U64::new(addr),
                count: U64::new(count),
            }
            .as_bytes()
            .to_vec(),
            // The count was checked against the transfer maximum, far below 4 GiB; a count
            // that does not fit is saturated, and fails the peer's checks.
            DmaLayout::Qemu => DmaAccessQemu {
                addr: U64::new(addr),
                count: U32::new(u32::try_from(count).unwrap_or(u32::MAX)),
            }
            .as_bytes()
            .to_vec(),
        }
    }

    /// Parses the fixed part: (address, count, bytes after the fixed part).
    fn parse(self, command: Command, payload: &[u8]) -> Result<(u64, u64, &[u8]), ProtocolError> {
        match self {
            DmaLayout::Spec => {
                let (h, rest) = read_prefix::<DmaAccessSpec>(command, payload)?;
                Ok((h.addr.get(), h.count.get(), rest))
            }
            DmaLayout::Qemu => {
                let (h, rest) = read_prefix::<DmaAccessQemu>(command, payload)?;
                Ok((h.addr.get(), u64::from(h.count.get()), rest))
            }
        }
    }

    /// Checks a payload carrying `count` data bytes after the fixed part, and returns the data.
    /// Spec: exactly 16 + count. QEMU: 12 + count + 4 padding bytes as QEMU sends, or without
    /// the padding.
    fn data(
        self,
        command: Command,
        payload: &[u8],
        rest: &[u8],
        count: u64,
    ) -> Result<(), ProtocolError> {
        // Saturating: a count near 2^64 must give a length error, not an overflow (fuzzing).
        let at = self.data_offset() as u64;
        match self {
            DmaLayout::Spec => expect_len(command, payload, at.saturating_add(count)),
            DmaLayout::Qemu => {
                if rest.len() as u64 == count {
                    Ok(())
                } else {
                    expect_len(command, payload, at.saturating_add(count).saturating_add(4))
                }
            }
        }
    }
}

/// One DMA access: `count` bytes at client address `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaAccess {
    /// Client DMA address.
    pub addr: u64,
    /// Bytes.
    pub count: u64,
}

impl DmaAccess {
    /// An access.
    pub fn new(addr: u64, count: u64) -> DmaAccess {
        DmaAccess { addr, count }
    }

    /// The DMA_READ request payload (16 bytes in both layouts).
    pub fn encode_read_request(&self, layout: DmaLayout) -> Vec<u8> {
        let mut out = layout.head(self.addr, self.count);
        out.resize(16, 0);
        out
    }

    /// Decodes a DMA_READ request (client side): 16 bytes (QEMU's layout also takes the 12
    /// without padding), count within `max_xfer` (E2BIG), no descriptor.
    pub fn decode_read_request(
        payload: &[u8],
        nfds: usize,
        layout: DmaLayout,
        max_xfer: u32,
    ) -> Result<DmaAccess, ProtocolError> {
        let c = Command::DmaRead;
        let (addr, count, _) = layout.parse(c, payload)?;
        if layout == DmaLayout::Spec || payload.len() != 12 {
            expect_len(c, payload, 16)?;
        }
        transfer_within(c, count, max_xfer)?;
        fds_at_most(c, nfds, 0, "DMA_READ carries none")?;
        Ok(DmaAccess { addr, count })
    }

    /// The DMA_READ reply payload (client side): this access with `data` (its length is the
    /// count).
    pub fn encode_read_reply(addr: u64, data: &[u8], layout: DmaLayout) -> Vec<u8> {
        encode_with_data(layout, addr, data)
    }

    /// Decodes the reply to the DMA_READ `self` (server side) and returns the data: same
    /// address, exactly the count asked for, and the data where the layout puts it. A reply
    /// with the other layout's bytes fails here unless its first 4 data bytes are 0.
    pub fn decode_read_reply<'a>(
        &self,
        payload: &'a [u8],
        nfds: usize,
        layout: DmaLayout,
    ) -> Result<&'a [u8], ProtocolError> {
        let c = Command::DmaRead;
        let (addr, count, rest) = layout.parse(c, payload)?;
        self.check(c, addr, count)?;
        layout.data(c, payload, rest, count)?;
        fds_at_most(c, nfds, 0, "a DMA_READ reply carries none")?;
        rest.get(..self.count as usize)
            .ok_or(ProtocolError::PayloadLength {
                command: c,
                len: payload.len(),
                expected: layout.data_offset() as u64 + self.count,
            })
    }

    /// The DMA_WRITE request payload (server side): address, count, `data`.
    pub fn encode_write_request(addr: u64, data: &[u8], layout: DmaLayout) -> Vec<u8> {
        encode_with_data(layout, addr, data)
    }

    /// Decodes a DMA_WRITE request (client side) and returns the access and its data: count
    /// within `max_xfer` (E2BIG), exactly that much data, no descriptor.
    pub fn decode_write_request(
        payload: &[u8],
        nfds: usize,
        layout: DmaLayout,
        max_xfer: u32,
    ) -> Result<(DmaAccess, &[u8]), ProtocolError> {
        let c = Command::DmaWrite;
        let (addr, count, rest) = layout.parse(c, payload)?;
        transfer_within(c, count, max_xfer)?;
        layout.data(c, payload, rest, count)?;
        fds_at_most(c, nfds, 0, "DMA_WRITE carries none")?;
        let data = rest.get(..count as usize).unwrap_or_default();
        Ok((DmaAccess { addr, count }, data))
    }

    /// The DMA_WRITE reply payload (client side): empty for QEMU's layout, address and u64
    /// count (as libvfio-user's server expects) for the spec's.
    pub fn encode_write_reply(&self, layout: DmaLayout) -> Vec<u8> {
        match layout {
            DmaLayout::Qemu => Vec::new(),
            DmaLayout::Spec => layout.head(self.addr, self.count),
        }
    }

    /// Checks the reply to the DMA_WRITE `self` (server side), in any layout: an empty payload
    /// (QEMU), or the address with a u32 (specification table) or u64 (libvfio-user) count,
    /// which must match the request.
    pub fn decode_write_reply(&self, payload: &[u8], nfds: usize) -> Result<(), ProtocolError> {
        let c = Command::DmaWrite;
        fds_at_most(c, nfds, 0, "a DMA_WRITE reply carries none")?;
        match payload.len() {
            0 => Ok(()),
            12 => {
                let (h, _) = read_prefix::<DmaAccessQemu>(c, payload)?;
                self.check(c, h.addr.get(), u64::from(h.count.get()))
            }
            16 => {
                let (h, _) = read_prefix::<DmaAccessSpec>(c, payload)?;
                self.check(c, h.addr.get(), h.count.get())
            }
            _ => Err(ProtocolError::InvalidField {
                command: c,
                field: "payload",
                reason: "a DMA_WRITE reply of neither 0, 12 nor 16 bytes",
            }),
        }
    }

    fn check(&self, command: Command, addr: u64, count: u64) -> Result<(), ProtocolError> {
        if addr != self.addr {
            return Err(ProtocolError::ReplyMismatch {
                command,
                field: "address",
                expected: self.addr,
                got: addr,
            });
        }
        if count != self.count {
            return Err(ProtocolError::ReplyMismatch {
                command,
                field: "count",
                expected: self.count,
                got: count,
            });
        }
        Ok(())
    }
}

fn encode_with_data(layout: DmaLayout, addr: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(layout.payload_len(data.len()));
    out.extend_from_slice(&layout.head(addr, data.len() as u64));
    out.extend_from_slice(data);
    if layout == DmaLayout::Qemu {
        out.extend_from_slice(&[0; 4]);
    }
    out
}
