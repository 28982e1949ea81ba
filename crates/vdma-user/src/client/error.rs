//! [`ClientError`]: every way a client call fails, with the errno it maps to.

use std::io;
use std::time::Duration;

use crate::protocol::{Command, ProtocolError};
use crate::transport::TransportError;

/// Why a client call failed. Every variant maps to one errno ([`ClientError::errno`]); an
/// error reply from the server keeps the server's errno.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered the command with an error reply carrying `errno` (0 if the server
    /// gave none).
    #[error("{command} failed on the server: errno {errno}")]
    Server {
        /// The command that failed.
        command: Command,
        /// The errno of the error reply.
        errno: i32,
    },
    /// No reply came within the timeout. The message id stays reserved until the reply
    /// comes (a late reply is dropped), so it is never taken for another command's (ETIMEDOUT).
    #[error("{command} (message {msg_id}): no reply after {after:?}")]
    Timeout {
        /// The command.
        command: Command,
        /// Its message id.
        msg_id: u16,
        /// How long the call waited.
        after: Duration,
    },
    /// The connection is gone: the server closed it, the transport failed, or the client was
    /// closed; the command got no reply (ECONNRESET).
    #[error("the connection to the server is gone: {reason}")]
    Disconnected {
        /// What ended it.
        reason: String,
    },
    /// Sending failed, or connecting to the server failed (the transport's errno).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A reply that does not decode, or disagrees with the request it answers (the protocol
    /// error's errno, EINVAL or E2BIG).
    #[error("malformed reply: {0}")]
    Protocol(#[from] ProtocolError),
    /// A reply that decodes but breaks a rule of the exchange (EPROTO).
    #[error("{command} reply: {reason}")]
    BadReply {
        /// The command.
        command: Command,
        /// What is wrong.
        reason: &'static str,
    },
    /// A server whose VERSION reply this client cannot work with (ENOTSUP).
    #[error("version negotiation failed: {reason}")]
    Version {
        /// What is wrong.
        reason: String,
    },
    /// An argument the client refuses before sending anything (EINVAL).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: &'static str,
    },
    /// A DMA mapping that overlaps one this client already has (EEXIST).
    #[error("[{iova:#x}, +{size:#x}) overlaps the mapping at {existing:#x}")]
    Overlap {
        /// Start of the new range.
        iova: u64,
        /// Its size.
        size: u64,
        /// Start of the existing mapping.
        existing: u64,
    },
    /// Every one of the 65536 message ids is waiting for a reply (EAGAIN).
    #[error("every message id is in flight")]
    TooManyInFlight,
    /// The server moved fewer bytes than asked (EIO).
    #[error("{command}: {got} of {wanted} bytes")]
    Short {
        /// The command.
        command: Command,
        /// Bytes asked for.
        wanted: u64,
        /// Bytes the server moved.
        got: u64,
    },
    /// More file descriptors than the server takes in one message (E2BIG).
    #[error("{got} file descriptors, the server takes at most {max} in one message")]
    TooManyFds {
        /// Descriptors given.
        got: usize,
        /// The server's `max_msg_fds`.
        max: u32,
    },
    /// Memory given to map failed its own check (the memory's errno).
    #[error("memory: {0}")]
    Memory(#[from] vdma::Error),
    /// A system call of the client itself failed (its errno).
    #[error("{op} failed: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
}

impl ClientError {
    /// The errno this error maps to (positive, as in `errno.h`).
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Server { errno, .. } => {
                if *errno > 0 {
                    *errno
                } else {
                    libc::EIO
                }
            }
            ClientError::Timeout { .. } => libc::ETIMEDOUT,
            ClientError::Disconnected { .. } => libc::ECONNRESET,
            ClientError::Transport(e) => e.errno(),
            ClientError::Protocol(e) => e.errno(),
            ClientError::BadReply { .. } => libc::EPROTO,
            ClientError::Version { .. } => libc::ENOTSUP,
            ClientError::InvalidArgument { .. } => libc::EINVAL,
            ClientError::Overlap { .. } => libc::EEXIST,
            ClientError::TooManyInFlight => libc::EAGAIN,
            ClientError::Short { .. } => libc::EIO,
            ClientError::TooManyFds { .. } => libc::E2BIG,
            ClientError::Memory(e) => e.errno(),
            ClientError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}
