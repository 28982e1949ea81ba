//! DEVICE_GET_INFO: what kind of device, how many regions and interrupt types.

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::protocol::command::Command;
use crate::protocol::error::ProtocolError;
use crate::protocol::wire::{argsz_at_least, fds_at_most, read_prefix};

/// Device flag: the device supports DEVICE_RESET.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// Device flag: the device is a PCI device.
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// DEVICE_GET_INFO's payload, request and reply (16 bytes).
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
pub struct DeviceInfo {
    /// Request: the largest reply payload taken. Reply: the size of the full reply (16).
    pub argsz: U32,
    /// [`DEVICE_FLAGS_RESET`], [`DEVICE_FLAGS_PCI`] (reply).
    pub flags: U32,
    /// Number of regions (reply).
    pub num_regions: U32,
    /// Number of interrupt types (reply).
    pub num_irqs: U32,
}

impl DeviceInfo {
    /// A request.
    pub fn request() -> DeviceInfo {
        DeviceInfo {
            argsz: U32::new(size_of::<DeviceInfo>() as u32),
            ..DeviceInfo::default()
        }
    }

    /// A reply.
    pub fn reply(flags: u32, num_regions: u32, num_irqs: u32) -> DeviceInfo {
        DeviceInfo {
            argsz: U32::new(size_of::<DeviceInfo>() as u32),
            flags: U32::new(flags),
            num_regions: U32::new(num_regions),
            num_irqs: U32::new(num_irqs),
        }
    }

    /// Decodes a request: `argsz` must take the 16-byte reply. The request's other fields are
    /// outputs and are not checked; bytes after the structure are ignored (Cloud Hypervisor's
    /// client sends 20). No file descriptor.
    pub fn decode_request(payload: &[u8], nfds: usize) -> Result<DeviceInfo, ProtocolError> {
        let c = Command::DeviceGetInfo;
        let (info, _) = read_prefix::<DeviceInfo>(c, payload)?;
        argsz_at_least(c, info.argsz.get(), size_of::<DeviceInfo>() as u64)?;
        fds_at_most(c, nfds, 0, "DEVICE_GET_INFO carries none")?;
        Ok(info)
    }

    /// Decodes a reply.
    pub fn decode_reply(payload: &[u8], nfds: usize) -> Result<DeviceInfo, ProtocolError> {
        let c = Command::DeviceGetInfo;
        let (info, _) = read_prefix::<DeviceInfo>(c, payload)?;
        argsz_at_least(c, info.argsz.get(), size_of::<DeviceInfo>() as u64)?;
        fds_at_most(c, nfds, 0, "a DEVICE_GET_INFO reply carries none")?;
        Ok(info)
    }
}
