//! [`ClientConfig`]: what a client advertises, which DMA layout it speaks, how long it waits.

use std::time::Duration;

use crate::protocol::{Capabilities, DmaLayout, MigrationCapability, TwinSocket};
use crate::transport::Limits;

/// How a [`Client`](crate::client::Client) behaves.
///
/// The default speaks the specification's DMA_READ/DMA_WRITE layout and says so the way a
/// server can tell ([`DmaLayout::detect`]): its capabilities carry `twin_socket` (with
/// `supported: false`, since the client has no twin socket) and no `write_multiple`, so a
/// vdma server with automatic layout choice picks [`DmaLayout::Spec`]. [`ClientConfig::qemu`]
/// is the other way round: QEMU's layout and QEMU's capabilities, to exercise a server's QEMU
/// path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// How long a blocking call waits for its reply (default 5 s, QEMU's `x-msg-timeout`).
    pub timeout: Duration,
    /// The layout of the DMA_READ/DMA_WRITE requests this client serves and answers.
    pub dma_layout: DmaLayout,
    /// The capabilities sent in VERSION. `max_msg_fds` and `max_data_xfer_size` are lowered
    /// to what the connection's [`Limits`] can receive, if they are above.
    pub capabilities: Capabilities,
    /// The receive limits of a connection the client opens itself ([`Client::connect_with`]);
    /// a connection handed in ([`Client::from_connection_with`]) keeps its own.
    ///
    /// [`Client::connect_with`]: crate::client::Client::connect_with
    /// [`Client::from_connection_with`]: crate::client::Client::from_connection_with
    pub limits: Limits,
}

impl ClientConfig {
    /// The default reply timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// The capabilities a specification-layout client sends: `max_msg_fds`,
    /// `max_data_xfer_size`, `pgsizes`, and `twin_socket` not supported (the mark of a
    /// spec-layout client, see [`DmaLayout::detect`]).
    pub fn spec_capabilities(limits: &Limits) -> Capabilities {
        Capabilities {
            max_msg_fds: Some(u32::try_from(limits.max_fds).unwrap_or(u32::MAX)),
            max_data_xfer_size: Some(Capabilities::DEFAULT_MAX_DATA_XFER_SIZE),
            pgsizes: Some(Capabilities::DEFAULT_PGSIZES),
            twin_socket: Some(TwinSocket {
                supported: Some(false),
                fd_index: None,
            }),
            ..Capabilities::default()
        }
    }

    /// The capabilities QEMU's client (10.1) sends: `max_msg_fds`, `max_data_xfer_size`
    /// (1 MiB), `pgsizes` (4096), `max_dma_maps` (65535), `write_multiple`, `migration`.
    pub fn qemu_capabilities(limits: &Limits) -> Capabilities {
        Capabilities {
            max_msg_fds: Some(u32::try_from(limits.max_fds).unwrap_or(u32::MAX)),
            max_data_xfer_size: Some(Capabilities::DEFAULT_MAX_DATA_XFER_SIZE),
            max_dma_maps: Some(Capabilities::DEFAULT_MAX_DMA_MAPS),
            pgsizes: Some(Capabilities::DEFAULT_PGSIZES),
            migration: Some(MigrationCapability {
                pgsize: Some(Capabilities::DEFAULT_PGSIZES),
                max_bitmap_size: Some(256 << 20),
            }),
            write_multiple: Some(true),
            twin_socket: None,
        }
    }

    /// A client that speaks QEMU's DMA layout and sends QEMU's capabilities, so that a
    /// server with automatic detection takes it for QEMU.
    pub fn qemu() -> ClientConfig {
        let limits = Limits::default();
        ClientConfig {
            timeout: ClientConfig::DEFAULT_TIMEOUT,
            dma_layout: DmaLayout::Qemu,
            capabilities: ClientConfig::qemu_capabilities(&limits),
            limits,
        }
    }

    /// This configuration with another reply timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> ClientConfig {
        self.timeout = timeout;
        self
    }
}

impl Default for ClientConfig {
    /// Specification layout, [`ClientConfig::spec_capabilities`], default limits, 5 s.
    fn default() -> ClientConfig {
        let limits = Limits::default();
        ClientConfig {
            timeout: ClientConfig::DEFAULT_TIMEOUT,
            dma_layout: DmaLayout::Spec,
            capabilities: ClientConfig::spec_capabilities(&limits),
            limits,
        }
    }
}
