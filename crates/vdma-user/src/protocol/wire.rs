//! Reading payloads safely and building messages: the helpers every command's module uses.

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::protocol::command::Command;
use crate::protocol::error::ProtocolError;
use crate::protocol::header::{flags, Header};

/// Copies a `T` out of the start of `payload` and returns it with the bytes after it;
/// [`ProtocolError::PayloadTooShort`] if the payload is shorter than `T`.
pub(crate) fn read_prefix<T: FromBytes>(
    command: Command,
    payload: &[u8],
) -> Result<(T, &[u8]), ProtocolError> {
    T::read_from_prefix(payload).map_err(|_| ProtocolError::PayloadTooShort {
        command,
        len: payload.len(),
        need: size_of::<T>(),
    })
}

/// Checks that the payload holds exactly `expected` bytes.
pub(crate) fn expect_len(
    command: Command,
    payload: &[u8],
    expected: u64,
) -> Result<(), ProtocolError> {
    if payload.len() as u64 != expected {
        return Err(ProtocolError::PayloadLength {
            command,
            len: payload.len(),
            expected,
        });
    }
    Ok(())
}

/// Checks `argsz >= min` (argsz as the largest reply the sender takes, or the request size).
pub(crate) fn argsz_at_least(command: Command, argsz: u32, min: u64) -> Result<(), ProtocolError> {
    if u64::from(argsz) < min {
        return Err(ProtocolError::ArgszTooSmall {
            command,
            argsz,
            min,
        });
    }
    Ok(())
}

/// Checks `argsz <= payload.len()`, for the commands whose argsz is the request's own size.
pub(crate) fn argsz_within(
    command: Command,
    argsz: u32,
    payload: &[u8],
) -> Result<(), ProtocolError> {
    if argsz as usize > payload.len() {
        return Err(ProtocolError::ArgszTooLarge {
            command,
            argsz,
            len: payload.len(),
        });
    }
    Ok(())
}

/// Checks that `value` has no bits outside `known`.
pub(crate) fn known_bits(
    command: Command,
    field: &'static str,
    value: u64,
    known: u64,
) -> Result<(), ProtocolError> {
    if value & !known != 0 {
        return Err(ProtocolError::UnknownBits {
            command,
            field,
            value,
            unknown: value & !known,
        });
    }
    Ok(())
}

/// Checks a data transfer's count against the negotiated maximum (E2BIG).
pub(crate) fn transfer_within(command: Command, count: u64, max: u32) -> Result<(), ProtocolError> {
    if count > u64::from(max) {
        return Err(ProtocolError::TransferTooLarge {
            command,
            count,
            max: u64::from(max),
        });
    }
    Ok(())
}

/// Checks the number of file descriptors against `max` (`allowed` says it in words).
pub(crate) fn fds_at_most(
    command: Command,
    got: usize,
    max: usize,
    allowed: &'static str,
) -> Result<(), ProtocolError> {
    if got > max {
        return Err(ProtocolError::FdCount {
            command,
            got,
            allowed,
        });
    }
    Ok(())
}

/// A `u32` length field for a payload of `len` bytes (E2BIG if it does not fit).
pub(crate) fn len_u32(len: usize) -> Result<u32, ProtocolError> {
    u32::try_from(len).map_err(|_| ProtocolError::EncodeTooLarge { len })
}

/// Builds one message: the header, then payload pieces; [`MessageBuilder::finish`] fills in
/// the size.
///
/// ```
/// use vdma_user::protocol::{Command, Header, MessageBuilder};
/// let bytes = MessageBuilder::request(7, Command::DeviceReset).finish()?;
/// let header = Header::parse(&bytes)?;
/// assert_eq!((header.msg_id(), header.size()), (7, 16));
/// # Ok::<(), vdma_user::protocol::ProtocolError>(())
/// ```
#[derive(Clone, Debug)]
pub struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    /// A message with this header's id, command number and flags (error 0).
    pub fn new(msg_id: u16, command: u16, flags: u32) -> MessageBuilder {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&Header::new(msg_id, command, 0, flags, 0).to_bytes());
        MessageBuilder { buf }
    }

    /// A command that wants a reply.
    pub fn request(msg_id: u16, command: Command) -> MessageBuilder {
        MessageBuilder::new(msg_id, command.number(), flags::TYPE_COMMAND)
    }

    /// A successful reply to the command `command` (a raw number: replies echo whatever the
    /// request carried) with id `msg_id`.
    pub fn reply(msg_id: u16, command: u16) -> MessageBuilder {
        MessageBuilder::new(msg_id, command, flags::TYPE_REPLY)
    }

    /// Sets NO_REPLY (for commands).
    pub fn no_reply(mut self) -> MessageBuilder {
        self.set_flag(flags::NO_REPLY);
        self
    }

    fn set_flag(&mut self, bit: u32) {
        if let Ok((mut header, _)) = Header::read_from_prefix(&self.buf) {
            header.flags.set(header.flags.get() | bit);
            self.buf[..Header::SIZE].copy_from_slice(header.as_bytes());
        }
    }

    /// Appends a wire structure.
    pub fn push<T: IntoBytes + Immutable + ?Sized>(mut self, value: &T) -> MessageBuilder {
        self.buf.extend_from_slice(value.as_bytes());
        self
    }

    /// Appends raw bytes.
    pub fn bytes(mut self, bytes: &[u8]) -> MessageBuilder {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// The payload so far.
    pub fn payload(&self) -> &[u8] {
        &self.buf[Header::SIZE..]
    }

    /// The message, with its size field set; E2BIG if it passes 4 GiB.
    pub fn finish(mut self) -> Result<Vec<u8>, ProtocolError> {
        let size = len_u32(self.buf.len())?;
        self.buf[4..8].copy_from_slice(&size.to_le_bytes());
        Ok(self.buf)
    }
}

/// The error reply to a message with header `request`: a bare header with the same id and
/// command number, type reply, ERROR set and `errno` in the error field.
pub fn error_reply(request: &Header, errno: i32) -> [u8; Header::SIZE] {
    Header::new(
        request.msg_id(),
        request.command_number(),
        Header::SIZE_U32,
        flags::TYPE_REPLY | flags::ERROR,
        errno.unsigned_abs(),
    )
    .to_bytes()
}
