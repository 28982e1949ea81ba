//! The DMA service thread: answers the server's requests. DMA_READ and DMA_WRITE are served
//! from the memory of the mappings made without a file descriptor ([`DmaTable::resolve`]);
//! everything else a server may send gets an error reply. It never panics on what the server
//! sends: every failure becomes an error reply with an errno.
//!
//! | request                                     | reply                                |
//! |---------------------------------------------|--------------------------------------|
//! | DMA_READ/DMA_WRITE inside memory mappings   | the data / the write's acknowledgement, in the client's layout |
//! | a byte outside every memory mapping, past 2^64, or in a mapping made with an fd | EFAULT |
//! | a mapping without READ (DMA_READ) or WRITE (DMA_WRITE) | EPERM                     |
//! | the memory failing the copy                 | the memory's errno                   |
//! | a malformed request                         | its [`ProtocolError`](crate::protocol::ProtocolError)'s errno (E2BIG beyond the advertised `max_data_xfer_size`) |
//! | any other command                           | ENOTSUP                              |
//!
//! Requests with NO_REPLY are carried out and not answered.
//!
//! [`DmaTable::resolve`]: crate::client::dma_table::DmaTable::resolve

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use vdma::Prot;

use crate::client::dma_table::Piece;
use crate::client::inner::Inner;
use crate::protocol::{error_reply, flags, DmaAccess, Header, Request};
use crate::transport::Message;

/// What the reader hands over.
#[derive(Debug)]
pub(crate) enum Work {
    /// A request from the server, whole.
    Request(Message),
    /// A request the transport refused (too large, too many descriptors): answer with this
    /// errno.
    Refuse(Header, i32),
}

/// Serves until the reader thread drops its end of the channel.
pub(crate) fn run(work: Receiver<Work>, inner: Arc<Inner>) {
    for item in work {
        match item {
            Work::Request(message) => serve(&inner, &message),
            Work::Refuse(header, errno) => {
                inner.dma_refused.fetch_add(1, Ordering::Relaxed);
                // A failed send means the connection is gone; the reader sees that too.
                let _ = inner.writer.send(&error_reply(&header, errno), &[]);
            }
        }
    }
}

/// Serves one request and answers it if it wants an answer.
fn serve(inner: &Inner, message: &Message) {
    let header = &message.header;
    let layout = inner.decode.dma_layout;
    let result = match message.request(&inner.decode) {
        Ok(Request::DmaRead(access)) => read(inner, &access)
            .map(|data| DmaAccess::encode_read_reply(access.addr, &data, layout)),
        Ok(Request::DmaWrite(access, data)) => {
            write(inner, &access, data).map(|()| access.encode_write_reply(layout))
        }
        Ok(_) => Err(libc::ENOTSUP),
        Err(error) => Err(error.errno()),
    };
    let counter = if result.is_ok() {
        &inner.dma_served
    } else {
        &inner.dma_refused
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if !header.wants_reply() {
        return;
    }
    // A failed send means the connection is gone; the reader sees that too.
    let _ = match result {
        Ok(payload) => match u32::try_from(Header::SIZE + payload.len()) {
            Ok(size) => {
                let reply = Header::new(
                    header.msg_id(),
                    header.command_number(),
                    size,
                    flags::TYPE_REPLY,
                    0,
                );
                inner.writer.send_payload(&reply, &payload, &[])
            }
            Err(_) => inner.writer.send(&error_reply(header, libc::E2BIG), &[]),
        },
        Err(errno) => inner.writer.send(&error_reply(header, errno), &[]),
    };
}

/// The pieces of memory an access touches (the table's lock is held only for the lookup).
fn pieces(inner: &Inner, access: &DmaAccess, need: Prot) -> Result<Vec<Piece>, i32> {
    inner.table().resolve(access.addr, access.count, need)
}

/// DMA_READ: the server reads client memory (the mapping must allow the device to read).
fn read(inner: &Inner, access: &DmaAccess) -> Result<Vec<u8>, i32> {
    let pieces = pieces(inner, access, Prot::READ)?;
    let total = usize::try_from(access.count).map_err(|_| libc::E2BIG)?;
    let mut data = vec![0u8; total];
    let mut at = 0;
    for piece in pieces {
        let buf = data.get_mut(at..at + piece.len).ok_or(libc::EFAULT)?;
        piece
            .memory
            .read_at(piece.offset, buf)
            .map_err(|e| e.errno())?;
        at += piece.len;
    }
    Ok(data)
}

/// DMA_WRITE: the server writes client memory (the mapping must allow the device to write).
fn write(inner: &Inner, access: &DmaAccess, data: &[u8]) -> Result<(), i32> {
    let pieces = pieces(inner, access, Prot::WRITE)?;
    let mut at = 0;
    for piece in pieces {
        let buf = data.get(at..at + piece.len).ok_or(libc::EFAULT)?;
        piece
            .memory
            .write_at(piece.offset, buf)
            .map_err(|e| e.errno())?;
        at += piece.len;
    }
    Ok(())
}
