//! [`ProtocolError`]: every way a vfio-user message can be malformed, with the errno a reply
//! carries for it.

use crate::protocol::command::Command;

/// Why a message was refused. Every variant maps to one errno ([`ProtocolError::errno`]): the
/// number the error reply to that message carries.
///
/// Decoding checks in this order, and reports the first failure: the header (size, type,
/// flags), the command number, the payload against the command's fixed part, `argsz`, flag
/// fields, then the variable part and the number of file descriptors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Fewer bytes than the 16-byte header (EINVAL).
    #[error("message of {len} bytes is shorter than the 16-byte header")]
    ShortHeader {
        /// Bytes there were.
        len: usize,
    },
    /// The header's size field is below the header's own 16 bytes (EINVAL).
    #[error("message size {size} is below the 16-byte header")]
    SizeBelowHeader {
        /// The size field.
        size: u32,
    },
    /// The message is larger than this side accepts (E2BIG).
    #[error("message size {size} exceeds the maximum of {max}")]
    TooLarge {
        /// The size field.
        size: u32,
        /// The configured maximum.
        max: u32,
    },
    /// The header's size field disagrees with the bytes that make up the message (EINVAL).
    #[error("header says {size} bytes, the message has {len}")]
    SizeMismatch {
        /// The size field.
        size: u32,
        /// Bytes there are (header included).
        len: usize,
    },
    /// The type bits (0-3) are neither command (0) nor reply (1) (EINVAL).
    #[error("message type {kind} is neither command (0) nor reply (1)")]
    BadType {
        /// The type bits.
        kind: u32,
    },
    /// Header flags with bits no version of the protocol defines (EINVAL).
    #[error("header flags {flags:#x} have unknown bits {unknown:#x}")]
    UnknownHeaderFlags {
        /// The flags field.
        flags: u32,
        /// The unknown bits.
        unknown: u32,
    },
    /// A flag that the message's type cannot carry: ERROR on a command, NO_REPLY on a reply
    /// (EINVAL).
    #[error("header flags {flags:#x}: {reason}")]
    FlagMisuse {
        /// The flags field.
        flags: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A reply where a command was expected, or the reverse (EINVAL).
    #[error("expected a {expected}")]
    WrongType {
        /// "command" or "reply".
        expected: &'static str,
    },
    /// A command number this protocol version does not define (ENOTSUP).
    #[error("unknown command {command}")]
    UnknownCommand {
        /// The command field.
        command: u16,
    },
    /// The payload is shorter than the command's fixed part (EINVAL).
    #[error("{command}: payload of {len} bytes is shorter than its fixed part of {need}")]
    PayloadTooShort {
        /// The command.
        command: Command,
        /// Payload bytes there are.
        len: usize,
        /// Bytes the fixed part needs.
        need: usize,
    },
    /// The payload's length disagrees with what its fields say it holds (EINVAL).
    #[error("{command}: payload of {len} bytes, its fields describe {expected}")]
    PayloadLength {
        /// The command.
        command: Command,
        /// Payload bytes there are.
        len: usize,
        /// Bytes the fields describe (saturated at `u64::MAX` if they overflow).
        expected: u64,
    },
    /// `argsz` is below the least the command needs (EINVAL).
    #[error("{command}: argsz {argsz} is below the required {min}")]
    ArgszTooSmall {
        /// The command.
        command: Command,
        /// The argsz field.
        argsz: u32,
        /// The least value that works (saturated at `u64::MAX`).
        min: u64,
    },
    /// `argsz` describes more request bytes than the payload holds (EINVAL). Only for the
    /// commands whose `argsz` is the request's own size (DMA_MAP, SET_IRQS).
    #[error("{command}: argsz {argsz} is larger than the {len}-byte payload")]
    ArgszTooLarge {
        /// The command.
        command: Command,
        /// The argsz field.
        argsz: u32,
        /// Payload bytes there are.
        len: usize,
    },
    /// A flags field of the payload with bits the command does not define (EINVAL).
    #[error("{command}: {field} {value:#x} has unknown bits {unknown:#x}")]
    UnknownBits {
        /// The command.
        command: Command,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The unknown bits.
        unknown: u64,
    },
    /// A field whose value the command cannot take (EINVAL).
    #[error("{command}: invalid {field}: {reason}")]
    InvalidField {
        /// The command.
        command: Command,
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// More (or other) file descriptors than the command carries (EINVAL).
    #[error("{command}: {got} file descriptors, {allowed}")]
    FdCount {
        /// The command.
        command: Command,
        /// Descriptors that came with the message.
        got: usize,
        /// What the command allows, in words.
        allowed: &'static str,
    },
    /// More file descriptors than this side accepts in one message, whatever the command
    /// (EINVAL).
    #[error("{got} file descriptors in one message, at most {max} accepted")]
    FdLimit {
        /// Descriptors that came (at least this many).
        got: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A data transfer larger than the negotiated maximum (E2BIG).
    #[error("{command}: transfer of {count} bytes exceeds the maximum of {max}")]
    TransferTooLarge {
        /// The command.
        command: Command,
        /// Bytes asked for.
        count: u64,
        /// The negotiated `max_data_xfer_size`.
        max: u64,
    },
    /// A reply whose fields disagree with the request it answers (EINVAL).
    #[error("{command} reply: {field} is {got:#x}, the request had {expected:#x}")]
    ReplyMismatch {
        /// The command.
        command: Command,
        /// Which field.
        field: &'static str,
        /// The request's value.
        expected: u64,
        /// The reply's value.
        got: u64,
    },
    /// VERSION data that does not end in a NUL byte (EINVAL).
    #[error("VERSION: the capability data is not NUL-terminated")]
    VersionNotTerminated,
    /// VERSION capability JSON that does not parse, or a capability of the wrong type
    /// (EINVAL). Unknown keys are not an error.
    #[error("VERSION: bad capabilities: {0}")]
    Capabilities(String),
    /// A DEVICE_FEATURE request for a feature, or an operation on it, that this protocol does
    /// not define (ENOTSUP).
    #[error("DEVICE_FEATURE: feature {feature} does not support flags {flags:#x}")]
    UnsupportedFeature {
        /// The feature index.
        feature: u16,
        /// The request's flags.
        flags: u32,
    },
    /// A message to encode that is larger than the 32-bit size field (E2BIG).
    #[error("a message of {len} bytes does not fit the 32-bit size field")]
    EncodeTooLarge {
        /// Its length.
        len: usize,
    },
}

impl ProtocolError {
    /// The errno this error maps to (positive, as in `errno.h`).
    pub fn errno(&self) -> i32 {
        match self {
            ProtocolError::TooLarge { .. }
            | ProtocolError::TransferTooLarge { .. }
            | ProtocolError::EncodeTooLarge { .. } => libc::E2BIG,
            ProtocolError::UnknownCommand { .. } | ProtocolError::UnsupportedFeature { .. } => {
                libc::ENOTSUP
            }
            ProtocolError::ShortHeader { .. }
            | ProtocolError::SizeBelowHeader { .. }
            | ProtocolError::SizeMismatch { .. }
            | ProtocolError::BadType { .. }
            | ProtocolError::UnknownHeaderFlags { .. }
            | ProtocolError::FlagMisuse { .. }
            | ProtocolError::WrongType { .. }
            | ProtocolError::PayloadTooShort { .. }
            | ProtocolError::PayloadLength { .. }
            | ProtocolError::ArgszTooSmall { .. }
            | ProtocolError::ArgszTooLarge { .. }
            | ProtocolError::UnknownBits { .. }
            | ProtocolError::InvalidField { .. }
            | ProtocolError::FdCount { .. }
            | ProtocolError::FdLimit { .. }
            | ProtocolError::ReplyMismatch { .. }
            | ProtocolError::VersionNotTerminated
            | ProtocolError::Capabilities(_) => libc::EINVAL,
        }
    }
}
