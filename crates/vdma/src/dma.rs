//! `dma_rw`: one DMA access on behalf of a device, read top to bottom.
//!
//! 1. Check the arguments: zero length is EINVAL, a range past 2^64 is EOVERFLOW.
//! 2. Enter a read section (no lock, no atomic read-modify-write) and load the current table.
//! 3. Find the mapping holding the first byte: the thread's last translation, held inline in a
//!    thread-local, first; then the thread's hint into the table; then a search.
//! 4. Fast path: the whole range is inside it. Check the permission, copy, done.
//! 5. Otherwise walk the adjacent mappings to the last byte, checking coverage and permission of
//!    every one before any byte moves (all or nothing), then copy piece by piece.
//! 6. A write marks the pages each piece touched in the dirty logs, once the piece is copied.
//! 7. Leave the read section; an `unmap` waiting for it may now free the memory.

use crate::address::Iova;
use crate::container::Space;
use crate::error::{Error, Result};
use crate::memory::HostRegion;
use crate::prot::{Direction, Prot};
use crate::rcu;
use crate::table::{Entry, Pos, Table};

/// The caller's side of one access.
pub(crate) enum Xfer<'b> {
    /// Memory to `buf`.
    Read(&'b mut [u8]),
    /// `buf` to memory.
    Write(&'b [u8]),
}

impl Xfer<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        match self {
            Xfer::Read(b) => b.len(),
            Xfer::Write(b) => b.len(),
        }
    }

    #[inline(always)]
    fn is_write(&self) -> bool {
        matches!(self, Xfer::Write(_))
    }

    #[inline(always)]
    fn needs(&self) -> Prot {
        match self {
            Xfer::Read(_) => Direction::Read.needs(),
            Xfer::Write(_) => Direction::Write.needs(),
        }
    }

    /// Moves the whole buffer to or from `host` at `offset`, which holds `iova`.
    #[inline(always)]
    fn copy_host(&mut self, host: &HostRegion, offset: u64, iova: u64) -> Result<()> {
        // A host window covers its whole mapping, so `false` means the memory faulted.
        let copied = match self {
            Xfer::Read(buf) => host.read(offset, buf),
            Xfer::Write(buf) => host.write(offset, buf),
        };
        match copied {
            true => Ok(()),
            false => Err(Error::Fault { iova: Iova(iova) }),
        }
    }

    /// Moves bytes `[from, from + len)` of the buffer to or from `entry` at `iova`.
    #[inline(always)]
    fn copy(&mut self, entry: &Entry, iova: u64, from: usize, len: usize) -> Result<()> {
        let offset = iova - entry.start;
        match (self, &entry.host) {
            // A host window covers its whole mapping, so `false` means the memory faulted.
            (Xfer::Read(buf), Some(host)) => match host.read(offset, &mut buf[from..from + len]) {
                true => Ok(()),
                false => Err(Error::Fault { iova: Iova(iova) }),
            },
            (Xfer::Write(buf), Some(host)) => match host.write(offset, &buf[from..from + len]) {
                true => Ok(()),
                false => Err(Error::Fault { iova: Iova(iova) }),
            },
            (Xfer::Read(buf), None) => {
                let m = &entry.mapping;
                m.memory
                    .read_at(m.offset + offset, &mut buf[from..from + len])
            }
            (Xfer::Write(buf), None) => {
                let m = &entry.mapping;
                m.memory.write_at(m.offset + offset, &buf[from..from + len])
            }
        }
        .map_err(|e| e.at(Iova(iova)))
    }
}

impl Space {
    /// One DMA access (semantics §3). Inlined into every caller: the fast path is a few dozen
    /// instructions and the call boundary would cost a fifth of them.
    #[inline(always)]
    pub(crate) fn dma_rw(&self, iova: Iova, mut xfer: Xfer<'_>) -> Result<()> {
        let len = xfer.len() as u64;
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let Some(Iova(last)) = iova.last_of(len) else {
            return Err(Error::Overflow { iova, len });
        };
        let needs = xfer.needs();

        let guard = rcu::enter();
        let table = self.table.load(&guard);
        // The thread's last translation, held inline in a thread-local: a device touching the
        // same mapping again goes from here straight to the copy.
        if let Some(hit) = table.hot(&guard) {
            if let Some(host) = &hit.host {
                if hit.start <= iova.0 && last <= hit.last && hit.prot.contains(needs) {
                    xfer.copy_host(host, iova.0 - hit.start, iova.0)?;
                    if xfer.is_write() && hit.marks {
                        mark_dirty(table, hit.entry(), iova.0, last);
                    }
                    return Ok(());
                }
            }
        }
        match table.find_hinted(iova.0, &guard) {
            // The whole range inside one mapping that permits the access: copy.
            Some(first) if last <= first.last && first.prot.contains(needs) => {
                xfer.copy(first, iova.0, 0, len as usize)?;
                if xfer.is_write() {
                    mark_dirty(table, first, iova.0, last);
                }
                Ok(())
            }
            // Anything else: a hole, a permission error, or a range over several mappings.
            _ => cross(table, iova, last, xfer),
        }
        // `guard` drops here: the read section ends after the last byte moved.
    }
}

/// Steps 5 and 6 for a range that is not wholly inside one permitting mapping: validate every
/// byte's mapping and permission, then copy mapping by mapping.
#[inline(never)]
fn cross(table: &Table, iova: Iova, last: u64, mut xfer: Xfer<'_>) -> Result<()> {
    let len = xfer.len();
    let start = validate(table, iova, last, xfer.needs())?;
    // Validated: copy piece by piece, each piece the part of the range in one mapping.
    let mut pos = Some(start);
    let mut at = iova.0;
    let mut done = 0usize;
    while done < len {
        let e = table.entry(pos.expect("validated above"));
        let n = ((e.last - at) as u128 + 1).min((len - done) as u128) as usize;
        xfer.copy(e, at, done, n)?;
        if xfer.is_write() {
            mark_dirty(table, e, at, at + (n as u64 - 1));
        }
        done += n;
        at = at.wrapping_add(n as u64);
        pos = table.next(pos.expect("validated above"));
    }
    Ok(())
}

/// Step 5's check: every byte of `[iova, last]` is mapped and every mapping on the way permits
/// `needs`. Returns the table position of the mapping holding `iova`. The first problem in IOVA
/// order wins: a hole is EINVAL naming its first IOVA, a missing permission EPERM.
fn validate(table: &Table, iova: Iova, last: u64, needs: Prot) -> Result<Pos> {
    let start = table.find(iova.0).ok_or(Error::NotMapped { iova })?;
    let mut pos = start;
    let mut at = iova.0;
    loop {
        let e = table.entry(pos);
        if e.start > at {
            return Err(Error::NotMapped { iova: Iova(at) });
        }
        if !e.prot.contains(needs) {
            return Err(Error::Permission {
                iova: Iova(at),
                needed: needs,
            });
        }
        if e.last >= last {
            return Ok(start);
        }
        at = e.last + 1;
        pos = table.next(pos).ok_or(Error::NotMapped { iova: Iova(at) })?;
    }
}

impl Space {
    /// Steps 1 and 5 of `dma_rw` without the copy: the error `dma_rw(iova, len bytes, direction)`
    /// would return now for the range's coverage and permission, with no byte moved.
    pub(crate) fn check(&self, iova: Iova, len: usize, direction: Direction) -> Result<()> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let Some(Iova(last)) = iova.last_of(len as u64) else {
            return Err(Error::Overflow {
                iova,
                len: len as u64,
            });
        };
        rcu::read(|guard| {
            let table = self.table.load(guard);
            validate(table, iova, last, direction.needs()).map(|_| ())
        })
    }
}

/// Marks `[iova, last]`, just written through `entry`, in the container-level log of its
/// mapping and in every device log.
#[inline(always)]
pub(crate) fn mark_dirty(table: &Table, entry: &Entry, iova: u64, last: u64) {
    if let Some(log) = &entry.dirty {
        log.mark(iova, last);
    }
    for log in table.device_logs.iter() {
        log.mark(iova, last);
    }
}
