//! [`Inner`]: what the client's API, its reader thread and its DMA service thread share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::client::dma_table::DmaTable;
use crate::client::pending::Inflight;
use crate::protocol::DecodeConfig;
use crate::transport::Writer;

/// The state of one connection, shared by the [`Client`](crate::client::Client) and its two
/// threads.
#[derive(Debug)]
pub(crate) struct Inner {
    /// Sends commands (any caller thread) and replies (the DMA service thread).
    pub(crate) writer: Writer,
    /// Commands waiting for replies.
    pub(crate) inflight: Inflight,
    /// The DMA mappings; the table itself is shared with the hooks of map and unmap
    /// commands.
    pub(crate) table: Arc<RwLock<DmaTable>>,
    /// How requests from the server are decoded: this client's receive limits, the
    /// `max_data_xfer_size` it advertised, its DMA layout.
    pub(crate) decode: DecodeConfig,
    /// Set when the client shuts the connection down itself.
    pub(crate) closing: AtomicBool,
    /// DMA_READ/DMA_WRITE requests served successfully.
    pub(crate) dma_served: AtomicU64,
    /// DMA_READ/DMA_WRITE (or other) requests refused with an error reply.
    pub(crate) dma_refused: AtomicU64,
}

impl Inner {
    pub(crate) fn new(writer: Writer, decode: DecodeConfig) -> Inner {
        Inner {
            writer,
            inflight: Inflight::default(),
            table: Arc::new(RwLock::new(DmaTable::default())),
            decode,
            closing: AtomicBool::new(false),
            dma_served: AtomicU64::new(0),
            dma_refused: AtomicU64::new(0),
        }
    }

    /// The table for reading; a poisoned lock is taken as is (updates are single calls that
    /// leave it consistent).
    pub(crate) fn table(&self) -> RwLockReadGuard<'_, DmaTable> {
        read_table(&self.table)
    }

    /// The table for changing.
    pub(crate) fn table_mut(&self) -> RwLockWriteGuard<'_, DmaTable> {
        write_table(&self.table)
    }

    /// Whether the client is shutting the connection down.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

/// Reads a table, poisoned or not.
pub(crate) fn read_table(table: &RwLock<DmaTable>) -> RwLockReadGuard<'_, DmaTable> {
    table.read().unwrap_or_else(|e| e.into_inner())
}

/// Writes a table, poisoned or not.
pub(crate) fn write_table(table: &RwLock<DmaTable>) -> RwLockWriteGuard<'_, DmaTable> {
    table.write().unwrap_or_else(|e| e.into_inner())
}
