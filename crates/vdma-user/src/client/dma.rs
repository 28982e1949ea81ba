//! DMA_MAP and DMA_UNMAP: making client memory available to the device and taking it away.
//!
//! The client's table of mappings ([`Client::dma_mappings`]) follows the server's answers: a
//! mapping enters just before its DMA_MAP is sent (the server may reach it as soon as it has
//! processed the command) and leaves when the server refuses the DMA_MAP or confirms a
//! DMA_UNMAP covering it. These updates run on the reader thread when the reply comes, so they
//! happen even if the caller stopped waiting, and before a blocking call returns.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use vdma::{Memory, Prot};
use zerocopy::little_endian::U32;
use zerocopy::IntoBytes;

use crate::client::dma_table::Backing;
use crate::client::error::ClientError;
use crate::client::inner::write_table;
use crate::client::pending::{Hook, Pending};
use crate::client::Client;
use crate::protocol::{
    dirty_bitmap_bytes, Command, DmaBitmap, DmaMap, DmaUnmap, DmaUnmapReply, DmaUnmapRequest,
    DMA_UNMAP_FLAG_ALL, DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
};
use crate::transport::Message;

impl Client {
    /// Sends DMA_MAP for `[iova, iova + size)` backed by the file `fd` from `offset`, with
    /// the device's permissions `prot`; wait on the result for the server's answer. The
    /// descriptor is only borrowed: the server gets its own copy.
    pub fn send_dma_map_fd(
        &self,
        iova: u64,
        size: u64,
        fd: BorrowedFd<'_>,
        offset: u64,
        prot: Prot,
    ) -> Result<Pending<()>, ClientError> {
        check_range(iova, size)?;
        check_prot(prot)?;
        if self.server_max_fds() == 0 {
            return Err(ClientError::TooManyFds { got: 1, max: 0 });
        }
        self.send_map(iova, size, offset, prot, Backing::Fd, &[fd])
    }

    /// DMA_MAP with a file descriptor, waiting for the answer (see
    /// [`Client::send_dma_map_fd`]).
    pub fn dma_map_fd(
        &self,
        iova: u64,
        size: u64,
        fd: BorrowedFd<'_>,
        offset: u64,
        prot: Prot,
    ) -> Result<(), ClientError> {
        self.send_dma_map_fd(iova, size, fd, offset, prot)?.wait()
    }

    /// Sends DMA_MAP for `[iova, iova + size)` without a descriptor: the server reaches it
    /// with DMA_READ/DMA_WRITE requests, which the client serves from `memory` at `offset`
    /// onwards (`[offset, offset + size)` must lie inside it) as `prot` allows. The client
    /// holds `memory` until the unmap is confirmed.
    pub fn send_dma_map_memory(
        &self,
        iova: u64,
        size: u64,
        memory: Arc<dyn Memory>,
        offset: u64,
        prot: Prot,
    ) -> Result<Pending<()>, ClientError> {
        check_range(iova, size)?;
        check_prot(prot)?;
        if offset
            .checked_add(size)
            .map_or(true, |end| end > memory.len())
        {
            return Err(ClientError::InvalidArgument {
                reason: "the mapping passes the end of the memory",
            });
        }
        memory.check()?;
        // The offset is the client's business: the server sees none for a mapping without a
        // file.
        self.send_map(iova, size, 0, prot, Backing::Memory { memory, offset }, &[])
    }

    /// DMA_MAP without a descriptor, waiting for the answer (see
    /// [`Client::send_dma_map_memory`]).
    pub fn dma_map_memory(
        &self,
        iova: u64,
        size: u64,
        memory: Arc<dyn Memory>,
        offset: u64,
        prot: Prot,
    ) -> Result<(), ClientError> {
        self.send_dma_map_memory(iova, size, memory, offset, prot)?
            .wait()
    }

    fn send_map(
        &self,
        iova: u64,
        size: u64,
        offset: u64,
        prot: Prot,
        backing: Backing,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Pending<()>, ClientError> {
        let id = self.inner.table_mut().insert(iova, size, prot, backing)?;
        let table = Arc::clone(&self.inner.table);
        let hook: Hook = Box::new(move |ok| {
            if !ok {
                write_table(&table).remove_entry(iova, id);
            }
        });
        let map = DmaMap::new(iova, size, offset, prot);
        self.send_command(
            Command::DmaMap,
            map.as_bytes(),
            fds,
            Some(hook),
            Box::new(|_| Ok(())),
        )
    }

    /// Sends DMA_UNMAP of `[iova, iova + size)`. When the server confirms, the client drops
    /// every mapping wholly inside the range (and the memory it held for them).
    pub fn send_dma_unmap(&self, iova: u64, size: u64) -> Result<Pending<()>, ClientError> {
        check_range(iova, size)?;
        let table = Arc::clone(&self.inner.table);
        let hook: Hook = Box::new(move |ok| {
            if ok {
                write_table(&table).remove_within(iova, size);
            }
        });
        let unmap = DmaUnmap::new(iova, size);
        self.send_command(
            Command::DmaUnmap,
            unmap.as_bytes(),
            &[],
            Some(hook),
            Box::new(decode_unmap_reply),
        )
    }

    /// DMA_UNMAP, waiting for the answer (see [`Client::send_dma_unmap`]).
    pub fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), ClientError> {
        self.send_dma_unmap(iova, size)?.wait()
    }

    /// DMA_UNMAP with UNMAP_ALL: the server drops every mapping, and so does the client
    /// once the server confirms.
    pub fn dma_unmap_all(&self) -> Result<(), ClientError> {
        let table = Arc::clone(&self.inner.table);
        let hook: Hook = Box::new(move |ok| {
            if ok {
                write_table(&table).clear();
            }
        });
        let mut unmap = DmaUnmap::new(0, 0);
        unmap.flags = U32::new(DMA_UNMAP_FLAG_ALL);
        self.send_command(
            Command::DmaUnmap,
            unmap.as_bytes(),
            &[],
            Some(hook),
            Box::new(decode_unmap_reply),
        )?
        .wait()
    }

    /// DMA_UNMAP with GET_DIRTY_BITMAP: unmaps `[iova, iova + size)` and returns the bitmap of
    /// the pages the device wrote there, one bit per `page_size` bytes (bit `i` of byte `j` is
    /// page `8 j + i`), in whole u64 words.
    pub fn dma_unmap_dirty(
        &self,
        iova: u64,
        size: u64,
        page_size: u64,
    ) -> Result<Vec<u8>, ClientError> {
        check_range(iova, size)?;
        let bitmap_len =
            dirty_bitmap_bytes(size, page_size).ok_or(ClientError::InvalidArgument {
                reason: "dirty page size 0",
            })?;
        let fixed = (size_of::<DmaUnmap>() + size_of::<DmaBitmap>()) as u64;
        let argsz = fixed
            .checked_add(bitmap_len)
            .filter(|&a| a + 16 <= u64::from(self.inner.decode.max_message_size))
            .and_then(|a| u32::try_from(a).ok())
            .ok_or(ClientError::InvalidArgument {
                reason: "the dirty bitmap does not fit one message",
            })?;
        let mut unmap = DmaUnmap::new(iova, size);
        unmap.argsz = U32::new(argsz);
        unmap.flags = U32::new(DMA_UNMAP_FLAG_GET_DIRTY_BITMAP);
        let bitmap = DmaBitmap {
            pgsize: page_size.into(),
            size: bitmap_len.into(),
        };
        let payload = DmaUnmapRequest {
            unmap,
            bitmap: Some(bitmap),
        }
        .encode();
        let table = Arc::clone(&self.inner.table);
        let hook: Hook = Box::new(move |ok| {
            if ok {
                write_table(&table).remove_within(iova, size);
            }
        });
        self.send_command(
            Command::DmaUnmap,
            &payload,
            &[],
            Some(hook),
            Box::new(move |m: Message| {
                let reply = DmaUnmapReply::decode(&m.payload, m.fds.len())?;
                let Some((got, data)) = reply.bitmap else {
                    return Err(ClientError::BadReply {
                        command: Command::DmaUnmap,
                        reason: "no dirty bitmap",
                    });
                };
                if got != bitmap {
                    return Err(ClientError::BadReply {
                        command: Command::DmaUnmap,
                        reason: "a dirty bitmap of another page size or length",
                    });
                }
                Ok(data)
            }),
        )?
        .wait()
    }
}

/// A plain DMA_UNMAP reply: the request's structure echoed (as the specification and
/// libvfio-user do) or nothing; anything else is malformed.
fn decode_unmap_reply(m: Message) -> Result<(), ClientError> {
    if !m.payload.is_empty() {
        DmaUnmapReply::decode(&m.payload, m.fds.len())?;
    }
    Ok(())
}

/// A range of at least one byte that does not pass 2^64 (it may end exactly there).
fn check_range(iova: u64, size: u64) -> Result<(), ClientError> {
    if size == 0 {
        return Err(ClientError::InvalidArgument { reason: "size 0" });
    }
    if iova.checked_add(size - 1).is_none() {
        return Err(ClientError::InvalidArgument {
            reason: "the range passes 2^64",
        });
    }
    Ok(())
}

/// READ, WRITE or both.
fn check_prot(prot: Prot) -> Result<(), ClientError> {
    if prot.is_empty() {
        return Err(ClientError::InvalidArgument {
            reason: "no permission",
        });
    }
    Ok(())
}
