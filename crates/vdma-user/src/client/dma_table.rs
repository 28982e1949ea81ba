//! [`DmaTable`]: the client's DMA mappings, and where the server's DMA_READ/DMA_WRITE requests
//! land in the client's memory.
//!
//! Every mapping the client asked for is here from just before its DMA_MAP goes out until the
//! server confirms its DMA_UNMAP (or refuses the DMA_MAP): the server may use a mapping as soon
//! as it has processed the DMA_MAP, before the client reads the reply, and until it has
//! processed the DMA_UNMAP. Mappings made with a file descriptor are here too (they take
//! their IOVA range), but the server reaches those through the file: DMA requests for them are
//! refused (EFAULT), as for addresses outside every mapping.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use vdma::{Memory, Prot};

use crate::client::error::ClientError;

/// What backs one mapping on the client's side.
#[derive(Clone)]
pub(crate) enum Backing {
    /// Sent with a file descriptor: the server maps the file itself.
    Fd,
    /// Sent without a descriptor: the server's DMA requests are served from `memory` at
    /// `offset` plus the offset into the mapping.
    Memory {
        memory: Arc<dyn Memory>,
        offset: u64,
    },
}

struct Entry {
    /// Last IOVA (inclusive), so that a mapping may end at 2^64.
    last: u64,
    prot: Prot,
    backing: Backing,
    /// Tells two mappings at the same IOVA apart (one refused, one made later).
    id: u64,
}

/// A mapping as [`Client::dma_mappings`](crate::client::Client::dma_mappings) lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedRange {
    /// Its IOVA.
    pub iova: u64,
    /// Its size.
    pub size: u64,
    /// What the device may do.
    pub prot: Prot,
    /// Whether it was sent with a file descriptor (else the client serves the server's DMA
    /// requests for it).
    pub with_fd: bool,
}

/// A piece of one DMA access: `len` bytes of `memory` at `offset`.
pub(crate) struct Piece {
    pub(crate) memory: Arc<dyn Memory>,
    pub(crate) offset: u64,
    pub(crate) len: usize,
}

/// The mappings by IOVA; they never overlap.
#[derive(Default)]
pub(crate) struct DmaTable {
    entries: BTreeMap<u64, Entry>,
    next_id: u64,
}

impl fmt::Debug for DmaTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.ranges()).finish()
    }
}

impl DmaTable {
    /// Adds `[iova, iova + size)`; EEXIST if it overlaps a mapping. The caller checked that the
    /// size is not 0 and the range does not pass 2^64. Returns the mapping's id.
    pub(crate) fn insert(
        &mut self,
        iova: u64,
        size: u64,
        prot: Prot,
        backing: Backing,
    ) -> Result<u64, ClientError> {
        let last = iova + (size - 1);
        let overlap = |start: u64| ClientError::Overlap {
            iova,
            size,
            existing: start,
        };
        if let Some((&start, e)) = self.entries.range(..=iova).next_back() {
            if e.last >= iova {
                return Err(overlap(start));
            }
        }
        if let Some((&start, _)) = self.entries.range(iova..=last).next() {
            return Err(overlap(start));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            iova,
            Entry {
                last,
                prot,
                backing,
                id,
            },
        );
        Ok(id)
    }

    /// Removes the mapping at `iova` if it is still the one with this id.
    pub(crate) fn remove_entry(&mut self, iova: u64, id: u64) {
        if self.entries.get(&iova).is_some_and(|e| e.id == id) {
            self.entries.remove(&iova);
        }
    }

    /// Removes every mapping that lies wholly inside `[iova, iova + size)` (what a type1 v2
    /// unmap removes; one that straddles an end stays, as on the server).
    pub(crate) fn remove_within(&mut self, iova: u64, size: u64) {
        if size == 0 {
            return;
        }
        let last = iova.saturating_add(size - 1);
        let inside: Vec<u64> = self
            .entries
            .range(iova..=last)
            .filter(|(_, e)| e.last <= last)
            .map(|(&start, _)| start)
            .collect();
        for start in inside {
            self.entries.remove(&start);
        }
    }

    /// Removes every mapping.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// The mappings, in IOVA order.
    pub(crate) fn ranges(&self) -> Vec<MappedRange> {
        self.entries
            .iter()
            .map(|(&iova, e)| MappedRange {
                iova,
                size: (e.last - iova).wrapping_add(1),
                prot: e.prot,
                with_fd: matches!(e.backing, Backing::Fd),
            })
            .collect()
    }

    /// Where `count` bytes at `addr` are, for an access that needs `need`: one piece per
    /// mapping crossed (adjacent mappings without a hole may share one access). The errno on
    /// failure: EFAULT for a byte outside every memory-backed mapping (or an access past
    /// 2^64), EPERM for a mapping without the permission.
    pub(crate) fn resolve(&self, addr: u64, count: u64, need: Prot) -> Result<Vec<Piece>, i32> {
        let mut pieces = Vec::new();
        if count == 0 {
            return Ok(pieces);
        }
        let last = addr.checked_add(count - 1).ok_or(libc::EFAULT)?;
        let mut at = addr;
        loop {
            let (&start, e) = self
                .entries
                .range(..=at)
                .next_back()
                .filter(|(_, e)| e.last >= at)
                .ok_or(libc::EFAULT)?;
            let Backing::Memory { memory, offset } = &e.backing else {
                return Err(libc::EFAULT);
            };
            if !e.prot.contains(need) {
                return Err(libc::EPERM);
            }
            let end = e.last.min(last);
            let len = usize::try_from(end - at + 1).map_err(|_| libc::EFAULT)?;
            let offset = offset.checked_add(at - start).ok_or(libc::EFAULT)?;
            pieces.push(Piece {
                memory: Arc::clone(memory),
                offset,
                len,
            });
            if end == last {
                return Ok(pieces);
            }
            at = end + 1;
        }
    }
}
