//! The server's errors: [`ServerError`] (setting up, accepting, a session that cannot start)
//! and [`CommandError`] (one command failed; the error reply carries its errno).

use std::io;
use std::path::PathBuf;

use crate::protocol::ProtocolError;
use crate::server::device::DeviceError;
use crate::transport::TransportError;

/// Why the server could not bind, accept or run a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding the socket failed (the system call's errno).
    #[error("cannot bind {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// Another server answers on the path (EADDRINUSE).
    #[error("{path} is in use by a live server")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path; it is left alone (EEXIST).
    #[error("{path} exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The server was made without a socket ([`crate::server::Server::new`]) and asked to
    /// accept (ENOTCONN).
    #[error("the server has no listening socket")]
    NotListening,
    /// Accepting or setting up a connection failed (the system call's errno).
    #[error("{op} failed: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// The transport could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The address space could not be set up.
    #[error(transparent)]
    Core(#[from] vdma::Error),
}

impl ServerError {
    /// The errno this error maps to.
    pub fn errno(&self) -> i32 {
        match self {
            ServerError::Bind { source, .. } | ServerError::Io { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            ServerError::InUse { .. } => libc::EADDRINUSE,
            ServerError::NotASocket { .. } => libc::EEXIST,
            ServerError::NotListening => libc::ENOTCONN,
            ServerError::Transport(e) => e.errno(),
            ServerError::Core(e) => e.errno(),
        }
    }
}

/// Why one command failed. The error reply carries [`CommandError::errno`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The message is malformed (the protocol's errno).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The address space refused (the core's errno).
    #[error(transparent)]
    Core(#[from] vdma::Error),
    /// The device refused (its errno).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The request names something the device does not have, or is out of order (EINVAL).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The server does not support the request (ENOTSUP).
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// The reply would exceed what the server sends in one message (E2BIG).
    #[error("too large: {0}")]
    TooLarge(&'static str),
}

impl CommandError {
    /// The errno this error maps to (positive).
    pub fn errno(&self) -> i32 {
        match self {
            CommandError::Protocol(e) => e.errno(),
            CommandError::Core(e) => e.errno(),
            CommandError::Device(e) => e.errno(),
            CommandError::Invalid(_) => libc::EINVAL,
            CommandError::NotSupported(_) => libc::ENOTSUP,
            CommandError::TooLarge(_) => libc::E2BIG,
        }
    }
}
