//! The input format of the `session` target: a [`Setup`], the peer's answer script, then
//! [`Op`]s until the data runs out. [`parse`] reads it (every byte string is an input);
//! [`encode`] is its inverse, for writing seeds.
//!
//! ```text
//! setup   flags: u8, script_len: u8, script: [u8; script_len]
//! op      kind: u8 (mod 8), then by kind:
//!   0-2   Framed   command: u8, flags: u8, len: u16 LE, payload: [u8; len], fds
//!   3     Raw      len: u16 LE, bytes: [u8; len], fds
//!   4     Sync
//!   5     Truncate memfd: u8, size: u8
//!   6     RegionWrite  region: u8, offset: u16 LE, width: u8, value: u64 LE
//!   7     WaitIdle
//! fds     count: u8 (index mod 8 into FD_COUNTS), then one kind byte per descriptor
//! ```
//!
//! Lengths are cut to what is left of the input (and to [`MAX_LEN`]); a missing byte reads 0.

/// Descriptor counts a message can carry, by `count & 7`; 5 is more than the server takes
/// ([`super::MAX_MSG_FDS`]).
pub const FD_COUNTS: [usize; 8] = [0, 0, 0, 1, 1, 2, 3, 5];

/// The longest payload or raw chunk.
pub const MAX_LEN: usize = 4096;

/// How a session starts and ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Setup {
    /// Bits 0-1: the harness sends a valid VERSION first unless both are set. Bit 2: with
    /// QEMU's capabilities (QEMU's DMA layout) rather than libvfio-user's (spec layout).
    /// Bits 3-4: the client's `max_data_xfer_size`, from [`XFER_SIZES`]. Bit 5: wait for the
    /// server and the engine before closing.
    pub flags: u8,
}

/// The client's `max_data_xfer_size` choices (which the server's DMA requests follow).
pub const XFER_SIZES: [u64; 4] = [4096, 64 << 10, 1 << 20, 256];

impl Setup {
    /// Whether the harness starts with a valid VERSION.
    pub fn version(self) -> bool {
        self.flags & 3 != 3
    }

    /// Whether that VERSION carries QEMU's capabilities.
    pub fn qemu(self) -> bool {
        self.flags & 4 != 0
    }

    /// The client's `max_data_xfer_size`.
    pub fn xfer_size(self) -> u64 {
        XFER_SIZES[usize::from((self.flags >> 3) & 3)]
    }

    /// Whether the session settles before the client closes.
    pub fn settle(self) -> bool {
        self.flags & 0x20 != 0
    }
}

/// A descriptor sent with a message, from its kind byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fd {
    /// A new memfd of `(size + 1)` KiB (1 KiB to 64 KiB), its bytes a pattern.
    Memfd {
        /// Size in KiB, minus one (0-63).
        size: u8,
    },
    /// A new eventfd.
    EventFd,
    /// /dev/null (a descriptor that cannot be mapped).
    DevNull,
    /// The last memfd again (a new one of 4 KiB if there is none yet).
    LastMemfd,
}

impl Fd {
    fn parse(b: u8) -> Fd {
        match b & 3 {
            0 => Fd::Memfd { size: b >> 2 },
            1 => Fd::EventFd,
            2 => Fd::DevNull,
            _ => Fd::LastMemfd,
        }
    }

    fn encode(self) -> u8 {
        match self {
            Fd::Memfd { size } => (size & 63) << 2,
            Fd::EventFd => 1,
            Fd::DevNull => 2,
            Fd::LastMemfd => 3,
        }
    }
}

/// One step of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A message with a correct header: `command` picks the command number
    /// ([`command_number`]), `flags` the header flags and fix-ups ([`super::messages`]).
    Framed {
        /// Command selector.
        command: u8,
        /// Header flags and fix-ups.
        flags: u8,
        /// The payload.
        payload: Vec<u8>,
        /// Descriptors sent with it.
        fds: Vec<Fd>,
    },
    /// Bytes sent as they are.
    Raw {
        /// The bytes.
        bytes: Vec<u8>,
        /// Descriptors sent with them.
        fds: Vec<Fd>,
    },
    /// Wait until the server has handled everything sent so far (a DEVICE_GET_INFO and its
    /// reply).
    Sync,
    /// Shrink (or grow) one of the memfds sent so far, `memfd` mod their number, to
    /// `size * 256` bytes.
    Truncate {
        /// Which memfd.
        memfd: u8,
        /// The new size in units of 256 bytes.
        size: u8,
    },
    /// A REGION_WRITE of `width` (1, 2, 4, 8 by `width & 3`) bytes of `value` at `offset`
    /// of region `region mod 9` (0: BAR0, the engine's registers; 7: config space).
    RegionWrite {
        /// Region selector.
        region: u8,
        /// Offset in the region.
        offset: u16,
        /// Width selector.
        width: u8,
        /// The value, little-endian.
        value: u64,
    },
    /// Wait until the engine is idle (REGION_READs of STATUS), within the wait budget.
    WaitIdle,
}

/// Command numbers no command has: 0, 14 (between DEVICE_RESET and REGION_WRITE_MULTI) and
/// 19 (past MIG_DATA_WRITE).
pub const UNKNOWN_COMMANDS: [u16; 3] = [0, 14, 19];

/// The command numbers the `command` byte of [`Op::Framed`] picks (by `command mod 32`):
/// every command twice-ish, weighted to those with the most to check, and the
/// [`UNKNOWN_COMMANDS`].
pub fn command_number(command: u8) -> u16 {
    use vdma_user::protocol::Command as C;
    const TABLE: [u16; 32] = [
        C::Version.number(),
        C::DmaMap.number(),
        C::DmaMap.number(),
        C::DmaMap.number(),
        C::DmaUnmap.number(),
        C::DmaUnmap.number(),
        C::DmaUnmap.number(),
        C::DeviceGetInfo.number(),
        C::DeviceGetRegionInfo.number(),
        C::DeviceGetRegionInfo.number(),
        C::DeviceGetRegionIoFds.number(),
        C::DeviceGetIrqInfo.number(),
        C::DeviceSetIrqs.number(),
        C::DeviceSetIrqs.number(),
        C::RegionRead.number(),
        C::RegionRead.number(),
        C::RegionWrite.number(),
        C::RegionWrite.number(),
        C::RegionWrite.number(),
        C::DmaRead.number(),
        C::DmaWrite.number(),
        C::DeviceReset.number(),
        C::RegionWriteMulti.number(),
        C::RegionWriteMulti.number(),
        C::DeviceFeature.number(),
        C::DeviceFeature.number(),
        C::DeviceFeature.number(),
        C::MigDataRead.number(),
        C::MigDataWrite.number(),
        UNKNOWN_COMMANDS[0],
        UNKNOWN_COMMANDS[1],
        UNKNOWN_COMMANDS[2],
    ];
    if command >= 0xf0 {
        // A raw number: anything, up to the top of the range.
        u16::from(command) << 8 | u16::from(command)
    } else {
        TABLE[usize::from(command % 32)]
    }
}

/// A whole input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Input {
    /// How the session starts and ends.
    pub setup: Setup,
    /// The peer's answers to the server's DMA requests, one byte each, in turn
    /// ([`super::peer`]); empty: always a correct answer.
    pub script: Vec<u8>,
    /// The steps.
    pub ops: Vec<Op>,
}

/// Reads bytes, 0 past the end.
struct Bytes<'a> {
    data: &'a [u8],
}

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }

    fn take(&mut self, len: usize) -> Vec<u8> {
        let n = len.min(self.data.len()).min(MAX_LEN);
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head.to_vec()
    }

    fn fds(&mut self) -> Vec<Fd> {
        let count = FD_COUNTS[usize::from(self.u8() & 7)];
        (0..count).map(|_| Fd::parse(self.u8())).collect()
    }
}

/// Parses an input (any bytes).
pub fn parse(data: &[u8]) -> Input {
    let mut b = Bytes { data };
    let setup = Setup { flags: b.u8() };
    let script_len = usize::from(b.u8());
    let script = b.take(script_len);
    let mut ops = Vec::new();
    while !b.data.is_empty() {
        let op = match b.u8() % 8 {
            0..=2 => {
                let command = b.u8();
                let flags = b.u8();
                let len = usize::from(b.u16());
                let payload = b.take(len);
                Op::Framed {
                    command,
                    flags,
                    payload,
                    fds: b.fds(),
                }
            }
            3 => {
                let len = usize::from(b.u16());
                let bytes = b.take(len);
                Op::Raw {
                    bytes,
                    fds: b.fds(),
                }
            }
            4 => Op::Sync,
            5 => Op::Truncate {
                memfd: b.u8(),
                size: b.u8(),
            },
            6 => Op::RegionWrite {
                region: b.u8(),
                offset: b.u16(),
                width: b.u8(),
                value: b.u64(),
            },
            _ => Op::WaitIdle,
        };
        ops.push(op);
    }
    Input { setup, script, ops }
}

fn encode_fds(out: &mut Vec<u8>, fds: &[Fd]) {
    let index = FD_COUNTS
        .iter()
        .position(|&n| n == fds.len())
        .unwrap_or_else(|| panic!("{} descriptors cannot be encoded", fds.len()));
    out.push(index as u8);
    out.extend(fds.iter().map(|fd| fd.encode()));
}

/// The bytes that [`parse`] reads as `input` (lengths must be within [`MAX_LEN`] and
/// descriptor counts in [`FD_COUNTS`]).
pub fn encode(input: &Input) -> Vec<u8> {
    assert!(input.script.len() <= 255, "a script of at most 255 bytes");
    let mut out = vec![input.setup.flags, input.script.len() as u8];
    out.extend_from_slice(&input.script);
    for op in &input.ops {
        match op {
            Op::Framed {
                command,
                flags,
                payload,
                fds,
            } => {
                assert!(payload.len() <= MAX_LEN);
                out.extend_from_slice(&[0, *command, *flags]);
                out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
                out.extend_from_slice(payload);
                encode_fds(&mut out, fds);
            }
            Op::Raw { bytes, fds } => {
                assert!(bytes.len() <= MAX_LEN);
                out.push(3);
                out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                out.extend_from_slice(bytes);
                encode_fds(&mut out, fds);
            }
            Op::Sync => out.push(4),
            Op::Truncate { memfd, size } => out.extend_from_slice(&[5, *memfd, *size]),
            Op::RegionWrite {
                region,
                offset,
                width,
                value,
            } => {
                out.extend_from_slice(&[6, *region]);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(*width);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Op::WaitIdle => out.push(7),
        }
    }
    out
}

/// The selector byte of [`Op::Framed`] that picks `number` (the first in the table).
pub fn command_selector(number: u16) -> u8 {
    (0u8..32)
        .find(|&c| command_number(c) == number)
        .unwrap_or_else(|| panic!("command {number} is not in the table"))
}
