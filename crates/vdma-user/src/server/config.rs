//! [`ServerConfig`]: the limits a server advertises and enforces, and its timeouts.

use std::time::Duration;

use crate::protocol::{Capabilities, DmaLayoutChoice, MigrationCapability};

/// How a [`crate::server::Server`] is set up.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The client's address space: its page size is the advertised `pgsizes` and the
    /// migration `pgsize`, its entry limit the advertised `max_dma_maps`.
    pub address_space: vdma::Config,
    /// The most data in one REGION_READ/WRITE or DMA_READ reply this server takes and sends
    /// (advertised as `max_data_xfer_size`; default 1 MiB).
    pub max_data_xfer_size: u32,
    /// The most file descriptors this server takes in one message (advertised as
    /// `max_msg_fds`; default 16).
    pub max_msg_fds: u32,
    /// The largest dirty bitmap sent in one reply, in bytes (advertised as the migration
    /// `max_bitmap_size`; default 1 MiB, what one message carries).
    pub max_bitmap_size: u64,
    /// The most dirty-bitmap memory one DMA_LOGGING_START may make the server hold, in bytes,
    /// over all its ranges (default 64 MiB: 2 TiB of guest memory at 4 KiB pages); past it,
    /// E2BIG and nothing starts. Without it a client could make the server allocate 512 MiB of
    /// bitmap with one message.
    pub max_dma_log_bytes: u64,
    /// How the DMA_READ/DMA_WRITE layout is picked (default: detected from the client's
    /// VERSION, see [`crate::protocol::DmaLayout::detect`]).
    pub dma_layout: DmaLayoutChoice,
    /// How long a DMA_READ/DMA_WRITE waits for the client's reply (default 5 s, QEMU's own
    /// reply timeout); ETIMEDOUT after it.
    pub reply_timeout: Duration,
    /// How long one message may take to send before the client is considered stuck and
    /// disconnected (default 10 s).
    pub send_timeout: Duration,
    /// Bytes of commands the reader queues ahead of the handler (default 64 MiB).
    pub queue_bytes: usize,
    /// The most data one DMA_READ/DMA_WRITE carries to or from a client that uses QEMU's DMA
    /// layout (default 64 KiB). QEMU 10.x writes its DMA_READ reply with one write on a
    /// non-blocking socket and drops what did not fit in the socket buffer (about 208 KiB by
    /// default), which breaks the connection; see interop/qemu/README.md.
    pub qemu_dma_chunk: u32,
    /// Only peers running as one of these user ids are served (checked with SO_PEERCRED when
    /// a client connects; others are closed at once). `None` (default): anyone who can open
    /// the socket, which the server creates 0600, so its own user and root.
    pub allowed_uids: Option<Vec<u32>>,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            address_space: vdma::Config::default(),
            max_data_xfer_size: Capabilities::DEFAULT_MAX_DATA_XFER_SIZE as u32,
            max_msg_fds: 16,
            max_bitmap_size: Capabilities::DEFAULT_MAX_DATA_XFER_SIZE,
            max_dma_log_bytes: 64 << 20,
            dma_layout: DmaLayoutChoice::Auto,
            reply_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
            queue_bytes: 64 << 20,
            qemu_dma_chunk: 64 << 10,
            allowed_uids: None,
        }
    }
}

impl ServerConfig {
    /// The capabilities of the VERSION reply. Compact on purpose: QEMU takes a reply no longer
    /// than its own 214-byte request.
    pub fn capabilities(&self) -> Capabilities {
        let page_size = self.address_space.page_size;
        Capabilities {
            max_msg_fds: Some(self.max_msg_fds),
            max_data_xfer_size: Some(u64::from(self.max_data_xfer_size)),
            max_dma_maps: Some(u32::try_from(self.address_space.max_entries).unwrap_or(u32::MAX)),
            pgsizes: Some(page_size),
            migration: Some(MigrationCapability {
                pgsize: Some(page_size),
                max_bitmap_size: Some(self.max_bitmap_size),
            }),
            write_multiple: Some(true),
            twin_socket: None,
        }
    }
}
