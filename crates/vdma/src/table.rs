//! The translation table: the mappings of an address space, sorted by IOVA, immutable once
//! published. `map` and `unmap` build a new table that shares every untouched chunk with the old
//! one, then publish it through RCU.
//!
//! Layout: a sorted array of chunks, each a sorted array of up to `CHUNK_MAX` entries, with the
//! chunks' first IOVAs and the entries' start IOVAs kept in their own arrays so that a search
//! touches few cache lines. A change copies one or two chunks and the chunk array: O(sqrt n) for
//! n mappings. A lookup is two binary searches; a lookup that hits the thread's hint (the last
//! entry it used, tagged with the table's generation) is one compare.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::dirty::DirtyLog;
use crate::error::Result;
use crate::mapping::Mapping;
use crate::memory::HostRegion;
use crate::prot::Prot;
use crate::rcu::{Guard, Hint};
use crate::tracking::DeviceLog;

const CHUNK_MAX: usize = 256;

/// Generations are unique in the process, so a hint can never match a different table.
static NEXT_GEN: AtomicU64 = AtomicU64::new(1);

/// One mapping in a table, with what the fast path needs inline.
pub(crate) struct Entry {
    /// First IOVA.
    pub(crate) start: u64,
    /// Last IOVA (inclusive: a mapping can end at 2^64).
    pub(crate) last: u64,
    pub(crate) prot: Prot,
    /// The mapping's host memory, if it has any; valid while `mapping` lives.
    pub(crate) host: Option<HostRegion>,
    /// The container-level dirty log of this mapping, while tracking is on.
    pub(crate) dirty: Option<Arc<DirtyLog>>,
    pub(crate) mapping: Arc<Mapping>,
}

impl Entry {
    /// An entry for `mapping`, with a dirty log of pages of `1 << shift` bytes if tracking
    /// (E2BIG or ENOMEM if that log cannot be made).
    pub(crate) fn new(mapping: Arc<Mapping>, tracking: Option<u32>) -> Result<Entry> {
        let host = mapping
            .memory
            .host_region()
            .and_then(|r| r.window(mapping.offset, mapping.size));
        let last = mapping.iova.0 + (mapping.size - 1);
        let dirty = match tracking {
            Some(shift) => Some(Arc::new(DirtyLog::new(mapping.iova.0, last, shift)?)),
            None => None,
        };
        Ok(Entry {
            start: mapping.iova.0,
            last,
            prot: mapping.prot,
            host,
            dirty,
            mapping,
        })
    }

    #[inline(always)]
    pub(crate) fn contains(&self, iova: u64) -> bool {
        self.start <= iova && iova <= self.last
    }
}

impl Clone for Entry {
    fn clone(&self) -> Entry {
        Entry {
            start: self.start,
            last: self.last,
            prot: self.prot,
            host: self
                .mapping
                .memory
                .host_region()
                .and_then(|r| r.window(self.mapping.offset, self.mapping.size)),
            dirty: self.dirty.clone(),
            mapping: self.mapping.clone(),
        }
    }
}

#[derive(Clone, Default)]
struct Chunk {
    starts: Vec<u64>,
    entries: Vec<Entry>,
}

impl Chunk {
    fn from_entries(entries: Vec<Entry>) -> Chunk {
        Chunk {
            starts: entries.iter().map(|e| e.start).collect(),
            entries,
        }
    }
}

/// Where an entry is: chunk index and index in the chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    chunk: usize,
    index: usize,
}

/// One version of the table.
pub(crate) struct Table {
    gen: u64,
    firsts: Vec<u64>,
    chunks: Vec<Arc<Chunk>>,
    len: usize,
    /// Device-level DMA logs that every write marks.
    pub(crate) device_logs: Arc<[Arc<DeviceLog>]>,
}

impl Table {
    pub(crate) fn empty() -> Table {
        Table::from_chunks(Vec::new(), Arc::from([]))
    }

    fn from_chunks(chunks: Vec<Arc<Chunk>>, device_logs: Arc<[Arc<DeviceLog>]>) -> Table {
        Table {
            gen: NEXT_GEN.fetch_add(1, Ordering::Relaxed),
            firsts: chunks.iter().map(|c| c.starts[0]).collect(),
            len: chunks.iter().map(|c| c.entries.len()).sum(),
            chunks,
            device_logs,
        }
    }

    /// The same entries with other device logs.
    pub(crate) fn with_device_logs(&self, device_logs: Arc<[Arc<DeviceLog>]>) -> Table {
        Table::from_chunks(self.chunks.clone(), device_logs)
    }

    /// Every entry replaced by `f(entry)` (same mapping, same place), or `f`'s first error.
    pub(crate) fn rebuilt(&self, f: impl Fn(&Entry) -> Result<Entry>) -> Result<Table> {
        let mut chunks = Vec::with_capacity(self.chunks.len());
        for c in &self.chunks {
            let entries = c.entries.iter().map(&f).collect::<Result<Vec<_>>>()?;
            chunks.push(Arc::new(Chunk::from_entries(entries)));
        }
        Ok(Table::from_chunks(chunks, self.device_logs.clone()))
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The entry with the greatest start <= `iova`, whether or not it contains `iova`.
    #[inline]
    fn floor(&self, iova: u64) -> Option<Pos> {
        let chunk = self.firsts.partition_point(|&f| f <= iova).checked_sub(1)?;
        let index = self.chunks[chunk].starts.partition_point(|&s| s <= iova) - 1;
        Some(Pos { chunk, index })
    }

    pub(crate) fn entry(&self, pos: Pos) -> &Entry {
        &self.chunks[pos.chunk].entries[pos.index]
    }

    /// The entry after `pos`.
    #[inline]
    pub(crate) fn next(&self, pos: Pos) -> Option<Pos> {
        if pos.index + 1 < self.chunks[pos.chunk].entries.len() {
            Some(Pos {
                chunk: pos.chunk,
                index: pos.index + 1,
            })
        } else if pos.chunk + 1 < self.chunks.len() {
            Some(Pos {
                chunk: pos.chunk + 1,
                index: 0,
            })
        } else {
            None
        }
    }

    /// The entry containing `iova`.
    #[inline]
    pub(crate) fn find(&self, iova: u64) -> Option<Pos> {
        let pos = self.floor(iova)?;
        self.entry(pos).contains(iova).then_some(pos)
    }

    /// The entry containing `iova`, trying the thread's hint first and updating it.
    #[inline(always)]
    pub(crate) fn find_hinted<'g>(&'g self, iova: u64, guard: &Guard) -> Option<&'g Entry> {
        let hint = guard.hint();
        if hint.gen == self.gen {
            // SAFETY: the hint was set from a table with this generation; generations are unique,
            // so that table is `self`, which the caller's read section keeps alive, and whose
            // entries never move (chunks are immutable once published).
            let entry = unsafe { &*(hint.entry as *const Entry) };
            if entry.contains(iova) {
                return Some(entry);
            }
        }
        let entry = self.entry(self.find(iova)?);
        guard.set_hint(Hint {
            gen: self.gen,
            entry: entry as *const Entry as *const (),
        });
        Some(entry)
    }

    /// The position of an entry containing `iova` or, if none, of the first entry after it.
    pub(crate) fn ceil(&self, iova: u64) -> Option<Pos> {
        match self.floor(iova) {
            Some(pos) if self.entry(pos).contains(iova) => Some(pos),
            Some(pos) => self.next(pos),
            None if self.len > 0 => Some(Pos { chunk: 0, index: 0 }),
            None => None,
        }
    }

    /// Some entry that overlaps `[start, last]`.
    pub(crate) fn first_overlap(&self, start: u64, last: u64) -> Option<&Entry> {
        let pos = self.ceil(start)?;
        let entry = self.entry(pos);
        (entry.start <= last).then_some(entry)
    }

    /// Every entry in IOVA order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.chunks.iter().flat_map(|c| c.entries.iter())
    }

    /// A new table with `entry` added; the caller checked that it overlaps nothing.
    pub(crate) fn with(&self, entry: Entry) -> Table {
        let mut chunks = self.chunks.clone();
        if chunks.is_empty() {
            chunks.push(Arc::new(Chunk::from_entries(vec![entry])));
            return Table::from_chunks(chunks, self.device_logs.clone());
        }
        let at = self
            .firsts
            .partition_point(|&f| f <= entry.start)
            .saturating_sub(1);
        let mut chunk = Chunk::clone(&chunks[at]);
        let index = chunk.starts.partition_point(|&s| s < entry.start);
        chunk.starts.insert(index, entry.start);
        chunk.entries.insert(index, entry);
        if chunk.entries.len() > CHUNK_MAX {
            let tail = chunk.entries.split_off(CHUNK_MAX / 2);
            chunk.starts.truncate(CHUNK_MAX / 2);
            chunks[at] = Arc::new(chunk);
            chunks.insert(at + 1, Arc::new(Chunk::from_entries(tail)));
        } else {
            chunks[at] = Arc::new(chunk);
        }
        Table::from_chunks(chunks, self.device_logs.clone())
    }

    /// A new table without the entries that start in `[start, last]`, and those entries.
    pub(crate) fn without(&self, start: u64, last: u64) -> (Table, Vec<Entry>) {
        let Some(first) = self.ceil(start) else {
            return (self.share(), Vec::new());
        };
        let end = match self.floor(last) {
            Some(pos) => pos.chunk,
            None => return (self.share(), Vec::new()),
        };
        // Rebuild the chunks from `first.chunk` to `end`, plus a neighbour when what is left
        // would be small, so chunks do not dwindle.
        let mut lo = first.chunk;
        let mut hi = end.max(lo);
        let mut removed = Vec::new();
        let mut kept = Vec::new();
        let mut collect = |chunks: &[Arc<Chunk>], kept: &mut Vec<Entry>| {
            for c in chunks {
                for e in &c.entries {
                    if e.start >= start && e.start <= last {
                        removed.push(e.clone());
                    } else {
                        kept.push(e.clone());
                    }
                }
            }
        };
        collect(&self.chunks[lo..=hi], &mut kept);
        if kept.len() < CHUNK_MAX / 4 {
            if hi + 1 < self.chunks.len() {
                hi += 1;
                kept.extend(self.chunks[hi].entries.iter().cloned());
            } else if lo > 0 {
                lo -= 1;
                let mut before: Vec<Entry> = self.chunks[lo].entries.to_vec();
                before.append(&mut kept);
                kept = before;
            }
        }
        let mut chunks: Vec<Arc<Chunk>> = self.chunks[..lo].to_vec();
        let per = CHUNK_MAX * 3 / 4;
        let mut kept = kept.into_iter().peekable();
        while kept.peek().is_some() {
            let part: Vec<Entry> = kept.by_ref().take(per).collect();
            chunks.push(Arc::new(Chunk::from_entries(part)));
        }
        chunks.extend(self.chunks[hi + 1..].iter().cloned());
        (
            Table::from_chunks(chunks, self.device_logs.clone()),
            removed,
        )
    }

    /// The same entries under a new generation.
    fn share(&self) -> Table {
        Table::from_chunks(self.chunks.clone(), self.device_logs.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Iova;
    use crate::memory::OwnedMemory;

    fn entry(start: u64, size: u64) -> Entry {
        let memory = Arc::new(OwnedMemory::new(size as usize).unwrap());
        Entry::new(
            Arc::new(Mapping::new(Iova(start), size, Prot::READ, memory, 0)),
            None,
        )
        .unwrap()
    }

    #[test]
    fn many_inserts_and_removals_keep_order_and_lookups() {
        let mut t = Table::empty();
        // Insert in a scrambled order to exercise splits everywhere.
        let n = 3000u64;
        for i in 0..n {
            let k = (i * 7919) % n;
            t = t.with(entry(k * 0x2000, 0x1000));
        }
        assert_eq!(t.len(), n as usize);
        let starts: Vec<u64> = t.iter().map(|e| e.start).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]));
        for k in 0..n {
            assert!(t.find(k * 0x2000 + 0xfff).is_some());
            assert!(t.find(k * 0x2000 + 0x1000).is_none());
        }
        // Remove every other one, in ranges.
        for k in (0..n).step_by(2) {
            let (nt, removed) = t.without(k * 0x2000, k * 0x2000 + 0xfff);
            assert_eq!(removed.len(), 1);
            t = nt;
        }
        assert_eq!(t.len(), (n / 2) as usize);
        for k in 0..n {
            assert_eq!(t.find(k * 0x2000).is_some(), k % 2 == 1, "k={k}");
        }
        let (t, removed) = t.without(0, u64::MAX);
        assert_eq!(removed.len(), (n / 2) as usize);
        assert_eq!(t.len(), 0);
    }
}
