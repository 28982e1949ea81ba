//! The translation table: the mappings of an address space, sorted by IOVA, immutable once
//! published. `map` and `unmap` build a new table that shares every untouched chunk with the old
//! one, then publish it through RCU.
//!
//! Layout: a sorted array of chunks, each a sorted array of up to `CHUNK_MAX` entries, with the
//! chunks' first IOVAs and the entries' start IOVAs kept in their own arrays so that a search
//! touches few cache lines. A change copies one or two chunks and the chunk array: O(sqrt n) for
//! n mappings. A lookup is two binary searches; a lookup that hits the thread's hint (the last
//! entry it used, tagged with the table's generation) is one compare.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::dirty::DirtyLog;
use crate::error::Result;
use crate::mapping::Mapping;
use crate::memory::{HostRegion, HostWindow};
use crate::prot::Prot;
use crate::rcu::Guard;
use crate::tracking::DeviceLog;

const CHUNK_MAX: usize = 256;

/// Tables with at least this many entries get a directory for the read path ...
const DIRECTORY_MIN: usize = 512;
/// ... once a thread has missed its hint this many times on the same table version, so that a
/// burst of `map` calls never pays for directories of tables that are soon replaced.
const DIRECTORY_AFTER: u32 = 64;

/// Generations are unique in the process, so a hint can never match a different table.
static NEXT_GEN: AtomicU64 = AtomicU64::new(1);

/// The thread's last translation, with everything `dma_rw`'s fast path needs inline in one
/// thread-local: a hit reads it at a fixed offset from the thread pointer, compares the
/// generation with the current table's, and copies, with no dependent load through the table
/// or the entry before the copy starts.
#[derive(Clone, Copy)]
struct Hot {
    /// The table generation it was taken from (0: none; generations start at 1).
    gen: u64,
    /// That table's epoch (see [`Table::epoch`]).
    epoch: u64,
    start: u64,
    last: u64,
    prot: Prot,
    /// A write must mark dirt: the entry has a container-level log, or the table device logs.
    marks: bool,
    host: Option<HostWindow>,
    entry: *const Entry,
    /// Lookups on this generation that missed it (see [`DIRECTORY_AFTER`]).
    misses: u32,
}

impl Hot {
    const NONE: Hot = Hot {
        gen: 0,
        epoch: 0,
        start: 1,
        last: 0,
        prot: Prot::NONE,
        marks: false,
        host: None,
        entry: std::ptr::null(),
        misses: 0,
    };
}

thread_local! {
    /// See [`Hot`]. Const-initialised and without a destructor: always accessible.
    static HOT: Cell<Hot> = const { Cell::new(Hot::NONE) };
}

/// A hit of the thread's [`Hot`] translation in the table it was loaded from; lives no longer
/// than that table (and so than the read section that loaded it).
pub(crate) struct HotHit<'g> {
    /// First IOVA of the entry.
    pub(crate) start: u64,
    /// Last IOVA of the entry.
    pub(crate) last: u64,
    /// Its permissions.
    pub(crate) prot: Prot,
    /// Whether a write through it must mark dirt ([`crate::dma::mark_dirty`]).
    pub(crate) marks: bool,
    /// Its host memory, if any.
    pub(crate) host: Option<HostRegion>,
    entry: *const Entry,
    _table: PhantomData<&'g Table>,
}

impl<'g> HotHit<'g> {
    /// The entry itself; only for a hit that `marks` (others may come from an earlier table of
    /// the epoch, whose entry may be gone).
    #[inline(always)]
    pub(crate) fn entry(&self) -> &'g Entry {
        assert!(self.marks, "HotHit::entry of a hit that does not mark");
        // SAFETY: a hit that marks was made from a hint of the same generation as the table
        // borrowed for 'g (`Table::hot`): that table, whose entries never move while it lives.
        unsafe { &*self.entry }
    }
}

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

/// An O(1) index into a large table, for lookups that miss the hint: bucket `k` covers the
/// IOVAs from `base + (k << shift)` and holds the entry with the greatest start at or below
/// that IOVA. The entry holding an IOVA lies between its bucket's slot and the next one's,
/// usually in the same chunk a few places on, found by a short search there.
struct Directory {
    base: u64,
    shift: u32,
    /// (chunk, index) per bucket.
    slots: Box<[(u32, u32)]>,
}

impl Directory {
    fn build(table: &Table) -> Directory {
        let base = table.firsts[0];
        let last_start = table
            .chunks
            .last()
            .map_or(base, |c| *c.starts.last().unwrap_or(&base));
        let span = last_start - base;
        let target = (table.len as u64).next_power_of_two();
        let mut shift = 0;
        while (span >> shift) >= target {
            shift += 1;
        }
        let buckets = (span >> shift) + 1;
        let mut slots = Vec::with_capacity(buckets as usize);
        let mut pos = Pos { chunk: 0, index: 0 };
        for k in 0..buckets {
            let at = base + (k << shift);
            while let Some(next) = table.next(pos) {
                if table.entry(next).start > at {
                    break;
                }
                pos = next;
            }
            slots.push((pos.chunk as u32, pos.index as u32));
        }
        Directory {
            base,
            shift,
            slots: slots.into_boxed_slice(),
        }
    }
}

/// One version of the table.
pub(crate) struct Table {
    /// Unique in the process: one table, one generation.
    gen: u64,
    /// Shared by a table and the tables made from it by adding entries (`map`), and by nothing
    /// else (every other change starts a new epoch): a translation taken from a table of this
    /// epoch is still right in this one, and its mapping still here (adding a mapping changes
    /// no existing one). So a `map` next to a reader does not invalidate the reader's hint.
    epoch: u64,
    firsts: Vec<u64>,
    chunks: Vec<Arc<Chunk>>,
    len: usize,
    /// Made on demand by readers of a large, settled table.
    directory: OnceLock<Directory>,
    /// Device-level DMA logs that every write marks.
    pub(crate) device_logs: Arc<[Arc<DeviceLog>]>,
}

impl Table {
    pub(crate) fn empty() -> Table {
        Table::from_chunks(Vec::new(), Arc::from([]))
    }

    fn from_chunks(chunks: Vec<Arc<Chunk>>, device_logs: Arc<[Arc<DeviceLog>]>) -> Table {
        let gen = NEXT_GEN.fetch_add(1, Ordering::Relaxed);
        Table {
            gen,
            epoch: gen,
            firsts: chunks.iter().map(|c| c.starts[0]).collect(),
            len: chunks.iter().map(|c| c.entries.len()).sum(),
            chunks,
            directory: OnceLock::new(),
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

    /// The thread's last translation, if it was taken from this table. The caller's read
    /// section (`_guard`) keeps this table, and so the entry and its memory, alive.
    #[inline(always)]
    pub(crate) fn hot<'g>(&'g self, _guard: &'g Guard) -> Option<HotHit<'g>> {
        let h = HOT.with(Cell::get);
        // A hint of an earlier table of this epoch is still right; one that marks dirt needs
        // its entry, which only the very table it came from holds (`HotHit::entry`).
        if (h.epoch != self.epoch) | (h.marks & (h.gen != self.gen)) {
            return None;
        }
        Some(HotHit {
            start: h.start,
            last: h.last,
            prot: h.prot,
            marks: h.marks,
            // SAFETY: `h.host` was copied from the entry's region when the hint was set from a
            // table of this epoch: `self`, or one that `self` was made from by adding entries
            // only, so the entry's mapping is in `self` too; `self` is alive for 'g, and with
            // it that mapping, which owns that memory.
            host: h.host.map(|w| unsafe { w.region() }),
            entry: h.entry,
            _table: PhantomData,
        })
    }

    /// Makes `entry` (of this table) the thread's [`Hot`] translation, after `misses` misses
    /// on this generation.
    #[inline]
    fn set_hot(&self, entry: &Entry, misses: u32) {
        HOT.with(|c| {
            c.set(Hot {
                gen: self.gen,
                epoch: self.epoch,
                start: entry.start,
                last: entry.last,
                prot: entry.prot,
                marks: entry.dirty.is_some() || !self.device_logs.is_empty(),
                host: entry.host.as_ref().map(HostRegion::window_copy),
                entry,
                misses,
            })
        });
    }

    /// The entry containing `iova`, trying the thread's last translation first and making the
    /// result the new one. The caller's read section (`_guard`) keeps the table alive.
    #[inline(always)]
    pub(crate) fn find_hinted<'g>(&'g self, iova: u64, _guard: &Guard) -> Option<&'g Entry> {
        let hot = HOT.with(Cell::get);
        let same = hot.gen == self.gen;
        if same {
            // SAFETY: the translation was set from a table with this generation; generations
            // are unique, so that table is `self`, which the caller's read section keeps alive,
            // and whose entries never move (chunks are immutable once published).
            let entry = unsafe { &*hot.entry };
            if entry.contains(iova) {
                return Some(entry);
            }
        }
        let misses = if same {
            hot.misses.saturating_add(1)
        } else {
            0
        };
        let pos = if self.len >= DIRECTORY_MIN && misses >= DIRECTORY_AFTER {
            self.floor_directed(iova)?
        } else {
            self.floor(iova)?
        };
        let entry = self.entry(pos);
        if !entry.contains(iova) {
            return None;
        }
        self.set_hot(entry, misses);
        Some(entry)
    }

    /// [`Table::floor`] through the directory.
    #[inline]
    fn floor_directed(&self, iova: u64) -> Option<Pos> {
        let d = self.directory.get_or_init(|| Directory::build(self));
        if iova < d.base {
            return None;
        }
        let k = (((iova - d.base) >> d.shift) as usize).min(d.slots.len() - 1);
        let (lo_chunk, lo) = d.slots[k];
        let (hi_chunk, hi) = match d.slots.get(k + 1) {
            Some(&next) => next,
            None => return self.floor(iova),
        };
        if lo_chunk != hi_chunk {
            return self.floor(iova);
        }
        let starts = &self.chunks[lo_chunk as usize].starts[lo as usize..=hi as usize];
        // starts[0] <= the bucket's first IOVA <= iova, so the count is at least 1.
        let index = lo as usize + starts.partition_point(|&s| s <= iova) - 1;
        Some(Pos {
            chunk: lo_chunk as usize,
            index,
        })
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
            return self.grown(chunks);
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
        self.grown(chunks)
    }

    /// The table of `chunks`, which are this table's with entries added: same epoch.
    fn grown(&self, chunks: Vec<Arc<Chunk>>) -> Table {
        Table {
            epoch: self.epoch,
            ..Table::from_chunks(chunks, self.device_logs.clone())
        }
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

    /// The directory finds what the plain search finds, for spread-out and clustered layouts
    /// (clusters force the fallback paths) and for IOVAs in, between and around the mappings.
    #[test]
    fn directory_agrees_with_the_plain_search() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for layout in 0..4 {
            let mut t = Table::empty();
            let mut at = 0x1000u64;
            for i in 0..1500u64 {
                // Spread evenly, in clusters with huge gaps, or at random distances.
                let gap = match layout {
                    0 => 0x1000,
                    1 => {
                        if i % 300 == 0 {
                            1 << 40
                        } else {
                            0
                        }
                    }
                    2 => (rand() % 64) * 0x1000,
                    _ => {
                        if i == 1499 {
                            u64::MAX / 2
                        } else {
                            0x1000
                        }
                    }
                };
                at += gap;
                let pages = 1 + rand() % 3;
                t = t.with(entry(at, pages * 0x1000));
                at += pages * 0x1000;
            }
            let last_end = at;
            let d = Directory::build(&t);
            assert!(d.slots.len() <= 2 * t.len());
            for _ in 0..20000 {
                let iova = match rand() % 4 {
                    0 => rand() % (last_end + 0x10000),
                    1 => rand(),
                    2 => {
                        t.iter()
                            .nth((rand() % t.len() as u64) as usize)
                            .unwrap()
                            .start
                    }
                    _ => {
                        t.iter()
                            .nth((rand() % t.len() as u64) as usize)
                            .unwrap()
                            .last
                    }
                };
                assert_eq!(
                    t.floor_directed(iova),
                    t.floor(iova),
                    "layout {layout} iova {iova:#x}"
                );
            }
        }
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

    /// The thread's hint survives a `map` of another range (same epoch) but not an `unmap`
    /// (new epoch), and the translation it gives after the `map` is the one it had.
    #[test]
    fn a_hint_survives_a_map_but_not_an_unmap() {
        let guard = crate::rcu::enter();
        let t1 = Table::empty().with(entry(0x1000, 0x1000));
        let e = t1.find_hinted(0x1800, &guard).expect("mapped");
        assert_eq!(e.start, 0x1000);
        let t2 = t1.with(entry(0x10_0000, 0x1000));
        let hit = t2.hot(&guard).expect("a map keeps the hint");
        assert_eq!((hit.start, hit.last), (0x1000, 0x1fff));
        let (t3, removed) = t2.without(0x10_0000, 0x10_0fff);
        assert_eq!(removed.len(), 1);
        assert!(t3.hot(&guard).is_none(), "an unmap invalidates the hint");
        // Other tables of the same entries (device logs, rebuilt entries) are new epochs too.
        t3.find_hinted(0x1800, &guard).expect("mapped");
        let t4 = t3.with_device_logs(Arc::from([]));
        assert!(t4.hot(&guard).is_none());
        // A hint whose writes mark dirt needs its very entry: no hit on a grown table.
        let memory = Arc::new(OwnedMemory::new(0x1000).unwrap());
        let mapping = Arc::new(Mapping::new(Iova(0x20_0000), 0x1000, Prot::READ, memory, 0));
        let tracked = Table::empty().with(Entry::new(mapping, Some(12)).unwrap());
        tracked.find_hinted(0x20_0000, &guard).expect("mapped");
        assert!(tracked.hot(&guard).is_some_and(|h| h.marks));
        let grown = tracked.with(entry(0x1000, 0x1000));
        assert!(grown.hot(&guard).is_none());
    }
}
