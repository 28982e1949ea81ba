//! [`Header`]: the 16 bytes in front of every message, and its flags.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::protocol::command::Command;
use crate::protocol::error::ProtocolError;

/// The bits of the header's flags field.
pub mod flags {
    /// Bits 0-3: the message type.
    pub const TYPE_MASK: u32 = 0xf;
    /// Type 0: a command (request).
    pub const TYPE_COMMAND: u32 = 0x0;
    /// Type 1: a reply.
    pub const TYPE_REPLY: u32 = 0x1;
    /// On a command: the sender wants no reply.
    pub const NO_REPLY: u32 = 0x10;
    /// On a reply: the command failed; the error field holds the errno (it may be 0).
    pub const ERROR: u32 = 0x20;
    /// Every bit the protocol defines.
    pub const KNOWN: u32 = TYPE_MASK | NO_REPLY | ERROR;
}

/// The message header, as on the wire (little-endian, no padding).
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
pub struct Header {
    /// Chosen by the sender of a command, echoed in its reply.
    pub msg_id: U16,
    /// The command number ([`Command`]); a reply carries its command's number.
    pub command: U16,
    /// The whole message's size, this header included.
    pub size: U32,
    /// Type, NO_REPLY and ERROR ([`flags`]).
    pub flags: U32,
    /// In an error reply, the errno; reserved (0) otherwise.
    pub error: U32,
}

/// What a message is, from its header's type bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// A command (request).
    Command,
    /// A reply to a command with the same message id.
    Reply,
}

impl Header {
    /// Size of the header on the wire.
    pub const SIZE: usize = 16;
    /// [`Header::SIZE`] as the type of the size field.
    pub const SIZE_U32: u32 = 16;

    /// A header from its fields, as given.
    pub fn new(msg_id: u16, command: u16, size: u32, flags: u32, error: u32) -> Header {
        Header {
            msg_id: U16::new(msg_id),
            command: U16::new(command),
            size: U32::new(size),
            flags: U32::new(flags),
            error: U32::new(error),
        }
    }

    /// The header at the start of `bytes` (which may hold more, e.g. the payload). Nothing
    /// beyond the length is checked; see [`Header::check`].
    pub fn parse(bytes: &[u8]) -> Result<Header, ProtocolError> {
        Header::read_from_prefix(bytes)
            .map(|(h, _)| h)
            .map_err(|_| ProtocolError::ShortHeader { len: bytes.len() })
    }

    /// The header's 16 bytes.
    pub fn to_bytes(&self) -> [u8; Header::SIZE] {
        let mut out = [0u8; Header::SIZE];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// The message id.
    pub fn msg_id(&self) -> u16 {
        self.msg_id.get()
    }

    /// The command number as sent (it may be unknown).
    pub fn command_number(&self) -> u16 {
        self.command.get()
    }

    /// The command, if this protocol knows its number (ENOTSUP otherwise).
    pub fn command(&self) -> Result<Command, ProtocolError> {
        Command::from_number(self.command.get())
    }

    /// The size field: the whole message, header included.
    pub fn size(&self) -> u32 {
        self.size.get()
    }

    /// The payload's length from the size field (0 if the size is below the header's).
    pub fn payload_len(&self) -> usize {
        (self.size.get() as usize).saturating_sub(Header::SIZE)
    }

    /// The flags field.
    pub fn flags(&self) -> u32 {
        self.flags.get()
    }

    /// The error field (meaningful in an error reply).
    pub fn error(&self) -> u32 {
        self.error.get()
    }

    /// Whether the type bits say reply (1).
    pub fn is_reply(&self) -> bool {
        self.flags() & flags::TYPE_MASK == flags::TYPE_REPLY
    }

    /// Whether the NO_REPLY bit is set.
    pub fn no_reply(&self) -> bool {
        self.flags() & flags::NO_REPLY != 0
    }

    /// Whether the ERROR bit is set.
    pub fn is_error(&self) -> bool {
        self.flags() & flags::ERROR != 0
    }

    /// Whether this message asks for a reply: a command without NO_REPLY.
    pub fn wants_reply(&self) -> bool {
        !self.is_reply() && !self.no_reply()
    }

    /// Checks everything the header alone can tell, and returns the message's kind:
    /// the size is at least 16 (EINVAL) and at most `max_size` (E2BIG), the flags have no
    /// unknown bits, the type is command or reply, a command carries no ERROR bit and a reply
    /// no NO_REPLY bit (EINVAL). The command number is not checked here (see
    /// [`Header::command`]): an error reply to an unknown command still needs the header.
    pub fn check(&self, max_size: u32) -> Result<MessageKind, ProtocolError> {
        let size = self.size();
        if size < Header::SIZE_U32 {
            return Err(ProtocolError::SizeBelowHeader { size });
        }
        if size > max_size {
            return Err(ProtocolError::TooLarge {
                size,
                max: max_size,
            });
        }
        let f = self.flags();
        if f & !flags::KNOWN != 0 {
            return Err(ProtocolError::UnknownHeaderFlags {
                flags: f,
                unknown: f & !flags::KNOWN,
            });
        }
        let kind = match f & flags::TYPE_MASK {
            flags::TYPE_COMMAND => MessageKind::Command,
            flags::TYPE_REPLY => MessageKind::Reply,
            kind => return Err(ProtocolError::BadType { kind }),
        };
        match kind {
            MessageKind::Command if f & flags::ERROR != 0 => Err(ProtocolError::FlagMisuse {
                flags: f,
                reason: "ERROR set on a command",
            }),
            MessageKind::Reply if f & flags::NO_REPLY != 0 => Err(ProtocolError::FlagMisuse {
                flags: f,
                reason: "NO_REPLY set on a reply",
            }),
            _ => Ok(kind),
        }
    }
}
