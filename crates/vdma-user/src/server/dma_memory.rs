//! [`DmaMemory`]: client memory that came without a file descriptor (DMA_MAP without an fd),
//! reached with DMA_READ/DMA_WRITE requests to the client. One more [`vdma::Memory`] kind:
//! the core's `dma_rw` calls [`Memory::read_at`]/[`Memory::write_at`], which send requests
//! over the session's socket and wait for the replies, matched by message id.
//!
//! An access is split into requests of at most a chunk of bytes: the smaller of the
//! client's `max_data_xfer_size` (what it takes in one DMA_WRITE) and the server's own (what
//! it takes in one DMA_READ reply). Each request waits up to the session's reply timeout
//! (ETIMEDOUT after it); a client that disconnects fails every waiting and later access with
//! ENODEV; an error reply carries the client's errno (EIO if it gives none); a reply that does
//! not match its request (wrong address, count, layout) fails with EIO.
//!
//! An access that fails part-way may have moved its first chunks: unlike memory the core copies
//! itself, a message-backed access is not all or nothing once it started.
//!
//! There is no host address ([`Memory::host_region`] is `None`), so `translate` and `pin` of
//! such memory fail with EINVAL.

use std::sync::Arc;
use std::time::Duration;

use vdma::Memory;

use crate::protocol::{flags, Command, DmaAccess, DmaLayout, Header};
use crate::server::pending::{Pending, WaitError};
use crate::transport::{Message, Writer};

/// The session's path for DMA requests: the socket's writer, the replies in flight, the
/// negotiated layout and sizes.
#[derive(Debug)]
pub(crate) struct DmaChannel {
    writer: Writer,
    pending: Arc<Pending>,
    layout: DmaLayout,
    chunk: usize,
    timeout: Duration,
}

/// The core error for a failed DMA request: `errno`, named by the command.
fn dma_error(command: Command, errno: i32) -> vdma::Error {
    vdma::Error::Remote {
        op: match command {
            Command::DmaRead => "vfio-user DMA_READ",
            _ => "vfio-user DMA_WRITE",
        },
        errno: if errno > 0 { errno } else { libc::EIO },
    }
}

impl DmaChannel {
    /// A channel sending through `writer`, replies routed into `pending`, at most `chunk`
    /// bytes per request (at least 1), waiting `timeout` for each reply.
    pub(crate) fn new(
        writer: Writer,
        pending: Arc<Pending>,
        layout: DmaLayout,
        chunk: usize,
        timeout: Duration,
    ) -> DmaChannel {
        DmaChannel {
            writer,
            pending,
            layout,
            chunk: chunk.max(1),
            timeout,
        }
    }

    /// Sends one request (`payload` after a header with a fresh id) and waits for its reply.
    fn round_trip(&self, command: Command, payload: &[u8]) -> vdma::Result<Message> {
        let fail = |e: WaitError| dma_error(command, e.errno());
        let size = u32::try_from(Header::SIZE + payload.len())
            .map_err(|_| dma_error(command, libc::E2BIG))?;
        let id = self.pending.register().map_err(fail)?;
        let header = Header::new(id, command.number(), size, flags::TYPE_COMMAND, 0);
        if self.writer.send_payload(&header, payload, &[]).is_err() {
            self.pending.cancel(id);
            // The socket is unusable: the reader will see the connection end.
            let _ = self.writer.shutdown();
            return Err(dma_error(command, libc::ENODEV));
        }
        let reply = self.pending.wait(id, self.timeout).map_err(fail)?;
        if reply.header.command_number() != command.number() {
            return Err(dma_error(command, libc::EIO));
        }
        if reply.header.is_error() {
            let errno = match reply.header.error() {
                0 => libc::EIO,
                e => i32::try_from(e).unwrap_or(libc::EIO),
            };
            return Err(dma_error(command, errno));
        }
        Ok(reply)
    }

    /// Reads `buf.len()` bytes of client memory at client address `addr`.
    pub(crate) fn read(&self, addr: u64, buf: &mut [u8]) -> vdma::Result<()> {
        let mut at = 0usize;
        for piece in buf.chunks_mut(self.chunk) {
            let access = DmaAccess::new(addr.wrapping_add(at as u64), piece.len() as u64);
            let reply =
                self.round_trip(Command::DmaRead, &access.encode_read_request(self.layout))?;
            let data = access
                .decode_read_reply(&reply.payload, reply.fds.len(), self.layout)
                .map_err(|_| dma_error(Command::DmaRead, libc::EIO))?;
            if data.len() != piece.len() {
                return Err(dma_error(Command::DmaRead, libc::EIO));
            }
            piece.copy_from_slice(data);
            at += piece.len();
        }
        Ok(())
    }

    /// Writes `data` to client memory at client address `addr`.
    pub(crate) fn write(&self, addr: u64, data: &[u8]) -> vdma::Result<()> {
        let mut at = 0usize;
        for piece in data.chunks(self.chunk) {
            let piece_addr = addr.wrapping_add(at as u64);
            let access = DmaAccess::new(piece_addr, piece.len() as u64);
            let payload = DmaAccess::encode_write_request(piece_addr, piece, self.layout);
            let reply = self.round_trip(Command::DmaWrite, &payload)?;
            access
                .decode_write_reply(&reply.payload, reply.fds.len())
                .map_err(|_| dma_error(Command::DmaWrite, libc::EIO))?;
            at += piece.len();
        }
        Ok(())
    }
}

/// One DMA_MAP without a file descriptor: `len` bytes of client memory from client address
/// `base`, reached through the session's socket (DMA_READ/DMA_WRITE requests). Offsets are
/// relative to `base`.
#[derive(Debug)]
pub struct DmaMemory {
    channel: Arc<DmaChannel>,
    base: u64,
    len: u64,
}

impl DmaMemory {
    /// Memory of `len` bytes at client address `base`.
    pub(crate) fn new(channel: Arc<DmaChannel>, base: u64, len: u64) -> DmaMemory {
        DmaMemory { channel, base, len }
    }

    /// The client address of offset 0.
    pub fn base(&self) -> u64 {
        self.base
    }
}

impl Memory for DmaMemory {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> vdma::Result<()> {
        self.channel.read(self.base.wrapping_add(offset), buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> vdma::Result<()> {
        self.channel.write(self.base.wrapping_add(offset), buf)
    }
}
