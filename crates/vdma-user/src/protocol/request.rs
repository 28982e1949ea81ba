//! [`Request`]: any command message, decoded and checked in one call ([`Request::decode`]).

use crate::protocol::command::Command;
use crate::protocol::device_info::DeviceInfo;
use crate::protocol::dma_access::{DmaAccess, DmaLayout};
use crate::protocol::dma_map::{DmaMap, DmaUnmapRequest};
use crate::protocol::error::ProtocolError;
use crate::protocol::feature::DeviceFeatureRequest;
use crate::protocol::header::{Header, MessageKind};
use crate::protocol::irq::{IrqInfo, SetIrqs};
use crate::protocol::mig_data::MigData;
use crate::protocol::region_access::{decode_write_multi, RegionAccess, WriteOne};
use crate::protocol::region_info::RegionInfo;
use crate::protocol::region_io_fds::RegionIoFds;
use crate::protocol::version::{Capabilities, Version};

/// What decoding needs to know about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeConfig {
    /// The largest message accepted, header included (E2BIG beyond).
    pub max_message_size: u32,
    /// The largest data transfer (REGION/DMA read and write, migration data) accepted: the
    /// negotiated `max_data_xfer_size` (E2BIG beyond).
    pub max_data_xfer_size: u32,
    /// The DMA_READ/DMA_WRITE layout of this connection.
    pub dma_layout: DmaLayout,
}

impl DecodeConfig {
    /// Room for a header and the largest fixed part of a data message (16) in front of the
    /// data.
    pub const DATA_OVERHEAD: u32 = 32;

    /// A configuration for transfers of at most `max_data_xfer_size` bytes: messages may be
    /// that plus [`DecodeConfig::DATA_OVERHEAD`].
    pub fn new(max_data_xfer_size: u32, dma_layout: DmaLayout) -> DecodeConfig {
        DecodeConfig {
            max_message_size: max_data_xfer_size.saturating_add(DecodeConfig::DATA_OVERHEAD),
            max_data_xfer_size,
            dma_layout,
        }
    }
}

impl Default for DecodeConfig {
    /// 1 MiB transfers (the protocol's default), spec DMA layout.
    fn default() -> DecodeConfig {
        DecodeConfig::new(
            Capabilities::DEFAULT_MAX_DATA_XFER_SIZE as u32,
            DmaLayout::Spec,
        )
    }
}

/// A command message, decoded: one variant per command, borrowing variable data from the
/// payload. File descriptors stay with the message; decoding only checks how many came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// VERSION.
    Version(Version),
    /// DMA_MAP (with 0 or 1 descriptor: see [`DmaMap`]).
    DmaMap(DmaMap),
    /// DMA_UNMAP.
    DmaUnmap(DmaUnmapRequest),
    /// DEVICE_GET_INFO.
    DeviceGetInfo(DeviceInfo),
    /// DEVICE_GET_REGION_INFO.
    DeviceGetRegionInfo(RegionInfo),
    /// DEVICE_GET_REGION_IO_FDS.
    DeviceGetRegionIoFds(RegionIoFds),
    /// DEVICE_GET_IRQ_INFO.
    DeviceGetIrqInfo(IrqInfo),
    /// DEVICE_SET_IRQS.
    DeviceSetIrqs(SetIrqs<'a>),
    /// REGION_READ.
    RegionRead(RegionAccess),
    /// REGION_WRITE, with its data.
    RegionWrite(RegionAccess, &'a [u8]),
    /// DMA_READ (from the server).
    DmaRead(DmaAccess),
    /// DMA_WRITE (from the server), with its data.
    DmaWrite(DmaAccess, &'a [u8]),
    /// DEVICE_RESET.
    DeviceReset,
    /// REGION_WRITE_MULTI.
    RegionWriteMulti(&'a [WriteOne]),
    /// DEVICE_FEATURE.
    DeviceFeature(DeviceFeatureRequest<'a>),
    /// MIG_DATA_READ.
    MigDataRead(MigData),
    /// MIG_DATA_WRITE, with its data.
    MigDataWrite(MigData, &'a [u8]),
}

impl<'a> Request<'a> {
    /// Decodes a command from its header, its payload (the `size - 16` bytes after the header)
    /// and the number of file descriptors that came with it. Checks, in order: the header
    /// ([`Header::check`]; it must be a command), that the payload has the length the header
    /// says, the command number (ENOTSUP), then the command's payload. Nothing of the payload
    /// is read before its length is known to hold it.
    pub fn decode(
        header: &Header,
        payload: &'a [u8],
        nfds: usize,
        config: &DecodeConfig,
    ) -> Result<Request<'a>, ProtocolError> {
        if header.check(config.max_message_size)? != MessageKind::Command {
            return Err(ProtocolError::WrongType {
                expected: "command",
            });
        }
        if header.payload_len() != payload.len() {
            return Err(ProtocolError::SizeMismatch {
                size: header.size(),
                len: payload.len() + Header::SIZE,
            });
        }
        let max = config.max_data_xfer_size;
        Ok(match header.command()? {
            Command::Version => Request::Version(Version::decode(payload, nfds)?),
            Command::DmaMap => Request::DmaMap(DmaMap::decode(payload, nfds)?),
            Command::DmaUnmap => Request::DmaUnmap(DmaUnmapRequest::decode(payload, nfds)?),
            Command::DeviceGetInfo => {
                Request::DeviceGetInfo(DeviceInfo::decode_request(payload, nfds)?)
            }
            Command::DeviceGetRegionInfo => {
                Request::DeviceGetRegionInfo(RegionInfo::decode_request(payload, nfds)?)
            }
            Command::DeviceGetRegionIoFds => {
                Request::DeviceGetRegionIoFds(RegionIoFds::decode_request(payload, nfds)?)
            }
            Command::DeviceGetIrqInfo => Request::DeviceGetIrqInfo(IrqInfo::decode(payload, nfds)?),
            Command::DeviceSetIrqs => Request::DeviceSetIrqs(SetIrqs::decode(payload, nfds)?),
            Command::RegionRead => {
                Request::RegionRead(RegionAccess::decode_read(payload, nfds, max)?)
            }
            Command::RegionWrite => {
                let (access, data) = RegionAccess::decode_write(payload, nfds, max)?;
                Request::RegionWrite(access, data)
            }
            Command::DmaRead => Request::DmaRead(DmaAccess::decode_read_request(
                payload,
                nfds,
                config.dma_layout,
                max,
            )?),
            Command::DmaWrite => {
                let (access, data) =
                    DmaAccess::decode_write_request(payload, nfds, config.dma_layout, max)?;
                Request::DmaWrite(access, data)
            }
            Command::DeviceReset => {
                if nfds != 0 {
                    return Err(ProtocolError::FdCount {
                        command: Command::DeviceReset,
                        got: nfds,
                        allowed: "DEVICE_RESET carries none",
                    });
                }
                Request::DeviceReset
            }
            Command::RegionWriteMulti => {
                Request::RegionWriteMulti(decode_write_multi(payload, nfds)?)
            }
            Command::DeviceFeature => {
                Request::DeviceFeature(DeviceFeatureRequest::decode(payload, nfds)?)
            }
            Command::MigDataRead => Request::MigDataRead(MigData::decode_read(payload, nfds, max)?),
            Command::MigDataWrite => {
                let (m, data) = MigData::decode_write(payload, nfds, max)?;
                Request::MigDataWrite(m, data)
            }
        })
    }

    /// Decodes a whole command message (header and payload in `bytes`): the header must be
    /// complete (EINVAL) and its size must equal the length of `bytes`; then as
    /// [`Request::decode`].
    pub fn decode_message(
        bytes: &'a [u8],
        nfds: usize,
        config: &DecodeConfig,
    ) -> Result<(Header, Request<'a>), ProtocolError> {
        let header = Header::parse(bytes)?;
        header.check(config.max_message_size)?;
        if header.size() as usize != bytes.len() {
            return Err(ProtocolError::SizeMismatch {
                size: header.size(),
                len: bytes.len(),
            });
        }
        let payload = bytes.get(Header::SIZE..).unwrap_or_default();
        let request = Request::decode(&header, payload, nfds, config)?;
        Ok((header, request))
    }

    /// The command this request is.
    pub fn command(&self) -> Command {
        match self {
            Request::Version(_) => Command::Version,
            Request::DmaMap(_) => Command::DmaMap,
            Request::DmaUnmap(_) => Command::DmaUnmap,
            Request::DeviceGetInfo(_) => Command::DeviceGetInfo,
            Request::DeviceGetRegionInfo(_) => Command::DeviceGetRegionInfo,
            Request::DeviceGetRegionIoFds(_) => Command::DeviceGetRegionIoFds,
            Request::DeviceGetIrqInfo(_) => Command::DeviceGetIrqInfo,
            Request::DeviceSetIrqs(_) => Command::DeviceSetIrqs,
            Request::RegionRead(_) => Command::RegionRead,
            Request::RegionWrite(..) => Command::RegionWrite,
            Request::DmaRead(_) => Command::DmaRead,
            Request::DmaWrite(..) => Command::DmaWrite,
            Request::DeviceReset => Command::DeviceReset,
            Request::RegionWriteMulti(_) => Command::RegionWriteMulti,
            Request::DeviceFeature(_) => Command::DeviceFeature,
            Request::MigDataRead(_) => Command::MigDataRead,
            Request::MigDataWrite(..) => Command::MigDataWrite,
        }
    }
}
