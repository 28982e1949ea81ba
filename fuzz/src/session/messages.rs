//! The messages the harness makes: the fuzzer's framed messages (a correct header, sizes fixed
//! up), the opening VERSION, register writes, and the probes it waits on.

use vdma_user::protocol::{
    flags, Capabilities, Command, Header, MessageBuilder, MigrationCapability, RegionAccess,
    Version,
};
use zerocopy::IntoBytes;

use super::input::{command_number, Setup};

/// The message id of the harness's probes (DEVICE_GET_INFO, REGION_READ of STATUS); the
/// fuzzer's messages count up from 1 and never reach it.
pub const PROBE_ID: u16 = 0xffff;

/// Framed-message flag bits (the `flags` byte of `Op::Framed`).
pub mod framed {
    /// Bits 0-1: the type (0, 1: command; 2: reply; 3: the undefined type 2).
    pub const TYPE: u8 = 3;
    /// NO_REPLY.
    pub const NO_REPLY: u8 = 1 << 2;
    /// ERROR.
    pub const ERROR: u8 = 1 << 3;
    /// A flag bit the protocol does not define.
    pub const UNKNOWN: u8 = 1 << 4;
    /// The previous message's id again.
    pub const SAME_ID: u8 = 1 << 5;
    /// A non-zero error field.
    pub const ERRNO: u8 = 1 << 6;
    /// No fix-ups: `argsz` and counts as the fuzzer wrote them.
    pub const RAW_FIELDS: u8 = 1 << 7;
}

/// Commands whose payload starts with `argsz`, the size of the whole structure.
fn has_argsz(number: u16) -> bool {
    let argsz = [
        Command::DmaMap,
        Command::DmaUnmap,
        Command::DeviceGetInfo,
        Command::DeviceGetRegionInfo,
        Command::DeviceGetRegionIoFds,
        Command::DeviceGetIrqInfo,
        Command::DeviceSetIrqs,
        Command::DeviceFeature,
    ];
    argsz.iter().any(|c| c.number() == number)
}

/// A message with a correct header from the fuzzer's command selector, flags and payload:
/// `argsz` set to the payload's length, and REGION_WRITE's count to its data's, unless
/// [`framed::RAW_FIELDS`].
pub fn framed(id: u16, command: u8, flag_bits: u8, payload: &[u8]) -> Vec<u8> {
    let number = command_number(command);
    let mut payload = payload.to_vec();
    if flag_bits & framed::RAW_FIELDS == 0 {
        if has_argsz(number) && payload.len() >= 4 {
            let len = payload.len() as u32;
            payload[..4].copy_from_slice(&len.to_le_bytes());
        }
        if number == Command::RegionWrite.number() && payload.len() >= 16 {
            let count = (payload.len() - 16) as u32;
            payload[12..16].copy_from_slice(&count.to_le_bytes());
        }
    }
    let mut bits = match flag_bits & framed::TYPE {
        0 | 1 => flags::TYPE_COMMAND,
        2 => flags::TYPE_REPLY,
        _ => 2,
    };
    if flag_bits & framed::NO_REPLY != 0 {
        bits |= flags::NO_REPLY;
    }
    if flag_bits & framed::ERROR != 0 {
        bits |= flags::ERROR;
    }
    if flag_bits & framed::UNKNOWN != 0 {
        bits |= 0x100;
    }
    let errno = if flag_bits & framed::ERRNO != 0 {
        libc::EIO as u32
    } else {
        0
    };
    let size = (Header::SIZE + payload.len()) as u32;
    let mut out = Header::new(id, number, size, bits, errno)
        .to_bytes()
        .to_vec();
    out.extend_from_slice(&payload);
    out
}

/// The capabilities of the opening VERSION: QEMU's (QEMU's DMA layout) or libvfio-user's
/// (spec layout), with the setup's `max_data_xfer_size`.
pub fn capabilities(setup: Setup) -> Capabilities {
    let xfer = Some(setup.xfer_size());
    if setup.qemu() {
        Capabilities {
            max_msg_fds: Some(16),
            max_data_xfer_size: xfer,
            max_dma_maps: Some(65535),
            pgsizes: Some(4096),
            migration: Some(MigrationCapability {
                pgsize: Some(4096),
                max_bitmap_size: Some(1 << 20),
            }),
            write_multiple: Some(true),
            twin_socket: None,
        }
    } else {
        Capabilities {
            max_msg_fds: Some(8),
            max_data_xfer_size: xfer,
            ..Default::default()
        }
    }
}

/// The opening VERSION (message id 0).
pub fn version(setup: Setup) -> Vec<u8> {
    let payload = Version {
        major: 0,
        minor: 0,
        capabilities: Some(capabilities(setup)),
    }
    .encode()
    .expect("capabilities serialize");
    MessageBuilder::request(0, Command::Version)
        .bytes(&payload)
        .finish()
        .unwrap()
}

/// The regions `Op::RegionWrite` picks from, by `region mod 9`: the engine's BARs, the
/// config space (7), and indexes the device does not have.
pub fn region_index(region: u8) -> u32 {
    [0, 0, 0, 1, 7, 7, 2, 9, 0xffff_ffff][usize::from(region % 9)]
}

/// A REGION_WRITE of `width` (1, 2, 4, 8 by `width & 3`) bytes of `value`.
pub fn region_write(id: u16, region: u8, offset: u16, width: u8, value: u64) -> Vec<u8> {
    let n = 1usize << (width & 3);
    let data = &value.to_le_bytes()[..n];
    let payload =
        RegionAccess::new(region_index(region), u64::from(offset), n as u32).encode_with_data(data);
    MessageBuilder::request(id, Command::RegionWrite)
        .bytes(&payload)
        .finish()
        .unwrap()
}

/// A DEVICE_GET_INFO: answered (with an error before VERSION) after everything sent before it.
pub fn ping() -> Vec<u8> {
    MessageBuilder::request(PROBE_ID, Command::DeviceGetInfo)
        .bytes(vdma_user::protocol::DeviceInfo::request().as_bytes())
        .finish()
        .unwrap()
}

/// A REGION_READ of the engine's STATUS register.
pub fn read_status() -> Vec<u8> {
    let access = RegionAccess::new(0, vdma_cli::dma_engine::registers::STATUS, 4);
    MessageBuilder::request(PROBE_ID, Command::RegionRead)
        .bytes(access.as_bytes())
        .finish()
        .unwrap()
}
