//! [`Command`]: the command numbers of the protocol, and which side sends each.

use std::fmt;

use crate::protocol::error::ProtocolError;

/// A vfio-user command, numbered as the specification numbers it. 14 (the old
/// `VFIO_USER_DIRTY_PAGES`) is gone from the protocol and is an unknown command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// `VFIO_USER_VERSION`: version and capability negotiation.
    Version = 1,
    /// `VFIO_USER_DMA_MAP`: the client makes memory available for DMA.
    DmaMap = 2,
    /// `VFIO_USER_DMA_UNMAP`: the client takes DMA memory away.
    DmaUnmap = 3,
    /// `VFIO_USER_DEVICE_GET_INFO`.
    DeviceGetInfo = 4,
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`.
    DeviceGetRegionInfo = 5,
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`.
    DeviceGetRegionIoFds = 6,
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
    DeviceGetIrqInfo = 7,
    /// `VFIO_USER_DEVICE_SET_IRQS`.
    DeviceSetIrqs = 8,
    /// `VFIO_USER_REGION_READ`.
    RegionRead = 9,
    /// `VFIO_USER_REGION_WRITE`.
    RegionWrite = 10,
    /// `VFIO_USER_DMA_READ`, sent by the server.
    DmaRead = 11,
    /// `VFIO_USER_DMA_WRITE`, sent by the server.
    DmaWrite = 12,
    /// `VFIO_USER_DEVICE_RESET`.
    DeviceReset = 13,
    /// `VFIO_USER_REGION_WRITE_MULTI`: several small posted writes in one message.
    RegionWriteMulti = 15,
    /// `VFIO_USER_DEVICE_FEATURE`: migration and DMA logging features.
    DeviceFeature = 16,
    /// `VFIO_USER_MIG_DATA_READ`.
    MigDataRead = 17,
    /// `VFIO_USER_MIG_DATA_WRITE`.
    MigDataWrite = 18,
}

/// Which side of the connection sends a command's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// The client (the VMM, e.g. QEMU).
    Client,
    /// The server (the device).
    Server,
}

impl Command {
    /// Every command, in numeric order.
    pub const ALL: [Command; 17] = [
        Command::Version,
        Command::DmaMap,
        Command::DmaUnmap,
        Command::DeviceGetInfo,
        Command::DeviceGetRegionInfo,
        Command::DeviceGetRegionIoFds,
        Command::DeviceGetIrqInfo,
        Command::DeviceSetIrqs,
        Command::RegionRead,
        Command::RegionWrite,
        Command::DmaRead,
        Command::DmaWrite,
        Command::DeviceReset,
        Command::RegionWriteMulti,
        Command::DeviceFeature,
        Command::MigDataRead,
        Command::MigDataWrite,
    ];

    /// The command's number on the wire.
    pub const fn number(self) -> u16 {
        self as u16
    }

    /// The command with this number; [`ProtocolError::UnknownCommand`] (ENOTSUP) otherwise.
    pub fn from_number(number: u16) -> Result<Command, ProtocolError> {
        Command::ALL
            .iter()
            .copied()
            .find(|c| c.number() == number)
            .ok_or(ProtocolError::UnknownCommand { command: number })
    }

    /// Who sends this command's request: only DMA_READ and DMA_WRITE come from the server.
    pub const fn sender(self) -> Sender {
        match self {
            Command::DmaRead | Command::DmaWrite => Sender::Server,
            _ => Sender::Client,
        }
    }

    /// The specification's name, e.g. `VFIO_USER_DMA_MAP`.
    pub const fn name(self) -> &'static str {
        match self {
            Command::Version => "VFIO_USER_VERSION",
            Command::DmaMap => "VFIO_USER_DMA_MAP",
            Command::DmaUnmap => "VFIO_USER_DMA_UNMAP",
            Command::DeviceGetInfo => "VFIO_USER_DEVICE_GET_INFO",
            Command::DeviceGetRegionInfo => "VFIO_USER_DEVICE_GET_REGION_INFO",
            Command::DeviceGetRegionIoFds => "VFIO_USER_DEVICE_GET_REGION_IO_FDS",
            Command::DeviceGetIrqInfo => "VFIO_USER_DEVICE_GET_IRQ_INFO",
            Command::DeviceSetIrqs => "VFIO_USER_DEVICE_SET_IRQS",
            Command::RegionRead => "VFIO_USER_REGION_READ",
            Command::RegionWrite => "VFIO_USER_REGION_WRITE",
            Command::DmaRead => "VFIO_USER_DMA_READ",
            Command::DmaWrite => "VFIO_USER_DMA_WRITE",
            Command::DeviceReset => "VFIO_USER_DEVICE_RESET",
            Command::RegionWriteMulti => "VFIO_USER_REGION_WRITE_MULTI",
            Command::DeviceFeature => "VFIO_USER_DEVICE_FEATURE",
            Command::MigDataRead => "VFIO_USER_MIG_DATA_READ",
            Command::MigDataWrite => "VFIO_USER_MIG_DATA_WRITE",
        }
    }
}

impl From<Command> for u16 {
    fn from(command: Command) -> u16 {
        command.number()
    }
}

impl TryFrom<u16> for Command {
    type Error = ProtocolError;
    fn try_from(number: u16) -> Result<Command, ProtocolError> {
        Command::from_number(number)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
