//! The model: what the address space should hold, and the rules that say what each operation
//! must return.

use std::collections::{BTreeMap, BTreeSet};

use vdma::{Bitmap, Container, Error, IovaRange, Prot};

use crate::{Memories, Real};

/// One mapping of the model.
#[derive(Debug)]
pub struct Mapped {
    /// Its size in bytes.
    pub size: u64,
    /// Its protection.
    pub prot: Prot,
    /// What its memory should hold.
    pub data: Vec<u8>,
    /// Where that memory really is.
    pub real: Real,
    /// The tracking pages (IOVA >> tracking shift) written since tracking started or the last
    /// report that covered this mapping.
    pub dirty: BTreeSet<u64>,
}

impl Mapped {
    /// Its last IOVA, if it starts at `start`.
    pub fn last(&self, start: u64) -> u64 {
        start + (self.size - 1)
    }
}

/// The model's verdict on an access (`dma_rw` or `translate`).
#[derive(Debug)]
pub enum Verdict {
    /// Success: the pieces `(mapping start, first iova, last iova)` in IOVA order.
    Ok(Vec<(u64, u64, u64)>),
    /// Failure with one of `allowed`; if it is a hole, the error must name `first_hole`.
    Err {
        /// The errnos the failure may have.
        allowed: BTreeSet<i32>,
        /// The first IOVA of the range that no mapping covers, if any.
        first_hole: Option<u64>,
    },
}

impl Verdict {
    /// Whether `err`, the error of the access, is one this verdict allows: `Err(why)` if not.
    pub fn check_error(&self, err: &Error) -> Result<(), String> {
        match self {
            Verdict::Ok(_) => Err(format!(
                "failed with {err} (errno {}), the model says it succeeds",
                err.errno()
            )),
            Verdict::Err {
                allowed,
                first_hole,
            } => {
                if !allowed.contains(&err.errno()) {
                    return Err(format!(
                        "failed with {err} (errno {}), the model allows {allowed:?}",
                        err.errno()
                    ));
                }
                if let Error::NotMapped { iova } = err {
                    if Some(iova.0) != *first_hole {
                        return Err(format!(
                            "named {iova:?} unmapped, the first unmapped iova is {first_hole:#x?}"
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// The reference model of one address space.
#[derive(Debug)]
pub struct Model {
    page_size: u64,
    max_entries: usize,
    ranges: Vec<IovaRange>,
    /// The mappings, by first IOVA.
    pub mappings: BTreeMap<u64, Mapped>,
    /// The mappings (by first IOVA) that segments hold: unmapping them is EBUSY.
    held: BTreeSet<u64>,
    /// The tracking page shift, while dirty tracking is on.
    tracking: Option<u32>,
}

impl Model {
    /// An empty space with the configuration's page size, entry limit and valid IOVA ranges.
    pub fn new(page_size: u64, max_entries: usize, ranges: Vec<IovaRange>) -> Model {
        Model {
            page_size,
            max_entries,
            ranges,
            mappings: BTreeMap::new(),
            held: BTreeSet::new(),
            tracking: None,
        }
    }

    /// The space's page size.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The tracking page shift, while dirty tracking is on.
    pub fn tracking(&self) -> Option<u32> {
        self.tracking
    }

    // --- map and unmap (§1) ---

    /// The errno of `map(iova, size, memory at offset, prot)` over memory of `backing_len`
    /// bytes, or 0: the checks in the spec's order (zero or misaligned size, iova or offset;
    /// empty prot; wrap; overlap EEXIST; entry limit ENOSPC; valid ranges; memory too short).
    pub fn expect_map(
        &self,
        iova: u64,
        size: u64,
        offset: u64,
        prot: Prot,
        backing_len: u64,
    ) -> i32 {
        let ps = self.page_size;
        if size == 0 || iova % ps != 0 || size % ps != 0 || offset % ps != 0 {
            return libc::EINVAL;
        }
        if prot.is_empty() {
            return libc::EINVAL;
        }
        let Some(last) = iova.checked_add(size - 1) else {
            return libc::EINVAL;
        };
        if self
            .mappings
            .iter()
            .any(|(&s, m)| s <= last && iova <= m.last(s))
        {
            return libc::EEXIST;
        }
        if self.mappings.len() >= self.max_entries {
            return libc::ENOSPC;
        }
        if !self
            .ranges
            .iter()
            .any(|r| r.start.0 <= iova && last <= r.last.0)
        {
            return libc::EINVAL;
        }
        if !matches!(offset.checked_add(size), Some(end) if end <= backing_len) {
            return libc::EINVAL;
        }
        0
    }

    /// Records a `map` that succeeded.
    pub fn insert(&mut self, iova: u64, size: u64, prot: Prot, data: Vec<u8>, real: Real) {
        self.mappings.insert(
            iova,
            Mapped {
                size,
                prot,
                data,
                real,
                dirty: BTreeSet::new(),
            },
        );
    }

    /// The starts of the mappings inside `[start, last]`, or EINVAL if one straddles an end.
    pub fn covered(&self, start: u64, last: u64) -> Result<Vec<u64>, i32> {
        for (&s, m) in &self.mappings {
            let overlaps = s <= last && start <= m.last(s);
            if overlaps && (s < start || m.last(s) > last) {
                return Err(libc::EINVAL);
            }
        }
        Ok(self.mappings.range(start..=last).map(|(&s, _)| s).collect())
    }

    /// Removing `[start, last]` (type1 v2): the starts of the mappings removed; EINVAL if one
    /// straddles an end, EBUSY if one is held (and then nothing is removed).
    pub fn expect_remove(&self, start: u64, last: u64) -> Result<Vec<u64>, i32> {
        let inside = self.covered(start, last)?;
        if inside.iter().any(|s| self.held.contains(s)) {
            return Err(libc::EBUSY);
        }
        Ok(inside)
    }

    /// `[iova, iova + size)` as `unmap` checks it: its last IOVA, or EINVAL (zero, misaligned
    /// or wrapping).
    pub fn range_last(&self, iova: u64, size: u64) -> Result<u64, i32> {
        let ps = self.page_size;
        if size == 0 || iova % ps != 0 || size % ps != 0 {
            return Err(libc::EINVAL);
        }
        iova.checked_add(size - 1).ok_or(libc::EINVAL)
    }

    /// `unmap(iova, size)`: the starts of the mappings it removes, or its errno.
    pub fn expect_unmap(&self, iova: u64, size: u64) -> Result<Vec<u64>, i32> {
        self.expect_remove(iova, self.range_last(iova, size)?)
    }

    /// `unmap_all()`: the starts of the mappings it removes, or its errno.
    pub fn expect_unmap_all(&self) -> Result<Vec<u64>, i32> {
        self.expect_remove(0, u64::MAX)
    }

    /// Removes the mappings starting at `starts`; the bytes they covered.
    pub fn remove(&mut self, starts: &[u64]) -> u64 {
        starts
            .iter()
            .map(|s| {
                self.mappings
                    .remove(s)
                    .expect("a mapping of the model")
                    .size
            })
            .sum()
    }

    /// The mappings starting at `starts` are held by segments until [`Model::release`].
    pub fn hold(&mut self, starts: BTreeSet<u64>) {
        self.held = starts;
    }

    /// Nothing is held any more.
    pub fn release(&mut self) {
        self.held.clear();
    }

    // --- access (§3) ---

    /// An access to `[iova, iova + len)` needing `need`; `host` also demands a host address
    /// (translate). Zero length is EINVAL and a wrap EOVERFLOW; then holes (EINVAL) and missing
    /// permissions (EPERM) of the whole range are found before anything moves. Which is
    /// reported when a range has several is not fixed by the spec, so the model allows the
    /// first problem in IOVA order, and EINVAL (naming the first hole) whenever there is a hole.
    pub fn expect_access(&self, iova: u64, len: usize, need: Prot, host: bool) -> Verdict {
        let fail = |errno: i32| Verdict::Err {
            allowed: BTreeSet::from([errno]),
            first_hole: None,
        };
        if len == 0 {
            return fail(libc::EINVAL);
        }
        let Some(last) = iova.checked_add(len as u64 - 1) else {
            return fail(libc::EOVERFLOW);
        };
        let mut problems = Vec::new();
        let mut first_hole = None;
        let mut pieces = Vec::new();
        let mut at = iova;
        loop {
            let covering = self
                .mappings
                .range(..=at)
                .next_back()
                .filter(|(&s, m)| m.last(s) >= at);
            let Some((&s, m)) = covering else {
                problems.push(libc::EINVAL);
                first_hole.get_or_insert(at);
                // Skip the hole to the next mapping inside the range, if any.
                match self.mappings.range(at..).next() {
                    Some((&next, _)) if next <= last => {
                        at = next;
                        continue;
                    }
                    _ => break,
                }
            };
            if !m.prot.contains(need) {
                problems.push(libc::EPERM);
            }
            if host && !m.real.has_host() {
                problems.push(libc::EINVAL);
            }
            let end = m.last(s).min(last);
            pieces.push((s, at, end));
            if end == last {
                break;
            }
            at = end + 1;
        }
        if problems.is_empty() {
            return Verdict::Ok(pieces);
        }
        let mut allowed = BTreeSet::from([problems[0]]);
        if first_hole.is_some() {
            allowed.insert(libc::EINVAL);
        }
        Verdict::Err {
            allowed,
            first_hole,
        }
    }

    /// The bytes a successful read of `pieces` (from [`Verdict::Ok`]) returns.
    pub fn read(&self, pieces: &[(u64, u64, u64)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &(s, from, to) in pieces {
            bytes.extend_from_slice(
                &self.mappings[&s].data[(from - s) as usize..=(to - s) as usize],
            );
        }
        bytes
    }

    /// Records a successful write of `bytes` over `pieces`: the mappings' contents, and their
    /// dirty pages while tracking.
    pub fn write(&mut self, pieces: &[(u64, u64, u64)], bytes: &[u8]) {
        let mut done = 0;
        for &(s, from, to) in pieces {
            let m = self.mappings.get_mut(&s).expect("a mapping of the model");
            let n = (to - from + 1) as usize;
            let o = (from - s) as usize;
            m.data[o..o + n].copy_from_slice(&bytes[done..done + n]);
            done += n;
            if let Some(shift) = self.tracking {
                m.dirty.extend(from >> shift..=to >> shift);
            }
        }
    }

    // --- dirty tracking (§4, §5) ---

    /// `dirty_start(page_size)`: EINVAL for a page size that is not a power of two, is smaller
    /// than the space's, or differs from the one tracking already uses. If it succeeds and
    /// tracking was off, tracking starts with no page dirty.
    pub fn dirty_start(&mut self, page_size: u64) -> Result<(), i32> {
        let shift = page_size.trailing_zeros();
        if !page_size.is_power_of_two() || page_size < self.page_size {
            return Err(libc::EINVAL);
        }
        match self.tracking {
            Some(s) if s != shift => Err(libc::EINVAL),
            Some(_) => Ok(()),
            None => {
                self.tracking = Some(shift);
                self.clear_dirty();
                Ok(())
            }
        }
    }

    /// `dirty_stop()`: tracking stops and every page is clean.
    pub fn dirty_stop(&mut self) {
        self.tracking = None;
        self.clear_dirty();
    }

    fn clear_dirty(&mut self) {
        for m in self.mappings.values_mut() {
            m.dirty.clear();
        }
    }

    /// `[iova, iova + size)` aligned to the tracking page: its last IOVA, or EINVAL (not
    /// tracking, misaligned, wrapping).
    fn tracking_last(&self, iova: u64, size: u64) -> Result<u64, i32> {
        let shift = self.tracking.ok_or(libc::EINVAL)?;
        let mask = (1u64 << shift) - 1;
        if size == 0 || iova & mask != 0 || size & mask != 0 {
            return Err(libc::EINVAL);
        }
        iova.checked_add(size - 1).ok_or(libc::EINVAL)
    }

    /// `dirty_report(iova, size, page_size)`: the starts of the mappings whose pages it reports,
    /// or EINVAL (not tracking, another page size, misaligned, wrapping, a mapping straddling an
    /// end). Take the bits with [`Model::take_dirty`].
    pub fn expect_report(&self, iova: u64, size: u64, page_size: u64) -> Result<Vec<u64>, i32> {
        match self.tracking {
            Some(shift) if page_size == 1 << shift => {}
            _ => return Err(libc::EINVAL),
        }
        self.covered(iova, self.tracking_last(iova, size)?)
    }

    /// `unmap_dirty(iova, size)`: the starts of the mappings it removes, or its errno (as
    /// `unmap`, and EINVAL if not tracking or not aligned to the tracking page). Take the bits
    /// with [`Model::take_dirty`] before removing them.
    pub fn expect_unmap_dirty(&self, iova: u64, size: u64) -> Result<Vec<u64>, i32> {
        self.range_last(iova, size)?;
        self.expect_remove(iova, self.tracking_last(iova, size)?)
    }

    /// The dirty pages of the mappings starting at `starts`, as bits of a bitmap whose bit 0 is
    /// the tracking page at `iova`; they are clean afterwards. Only while tracking.
    pub fn take_dirty(&mut self, starts: &[u64], iova: u64) -> BTreeSet<u64> {
        let shift = self.tracking.expect("tracking");
        let base = iova >> shift;
        let mut bits = BTreeSet::new();
        for s in starts {
            let m = self.mappings.get_mut(s).expect("a mapping of the model");
            bits.extend(m.dirty.iter().map(|p| p - base));
            m.dirty.clear();
        }
        bits
    }

    // --- comparisons with the container ---

    /// The container has the model's mappings (start, size, protection).
    pub fn check_mappings(&self, space: &Container) -> Result<(), String> {
        let real: Vec<(u64, u64, Prot)> = space
            .mappings()
            .iter()
            .map(|i| (i.iova.0, i.size, i.prot))
            .collect();
        let model: Vec<(u64, u64, Prot)> = self
            .mappings
            .iter()
            .map(|(&s, m)| (s, m.size, m.prot))
            .collect();
        if real != model {
            return Err(format!(
                "mappings differ: the container has {real:x?}, the model {model:x?}"
            ));
        }
        Ok(())
    }

    /// Every mapping's memory, read straight from it, holds what the model says.
    pub fn check_contents(&self, memories: &Memories) -> Result<(), String> {
        for (&start, m) in &self.mappings {
            let real = memories.read(&m.real, m.size);
            if real != m.data {
                let at = real.iter().zip(&m.data).position(|(a, b)| a != b).unwrap();
                return Err(format!(
                    "the memory of the mapping at {start:#x} differs from the model at iova \
                     {:#x}: {:#04x} instead of {:#04x}",
                    start + at as u64,
                    real[at],
                    m.data[at]
                ));
            }
        }
        Ok(())
    }
}

/// A reported bitmap has `pages` bits, and exactly the bits `want` set.
pub fn check_bitmap(got: &Bitmap, pages: u64, want: &BTreeSet<u64>) -> Result<(), String> {
    if got.pages() != pages {
        return Err(format!("a bitmap of {} pages, not {pages}", got.pages()));
    }
    let bits: BTreeSet<u64> = got.iter_set().collect();
    if &bits != want {
        return Err(format!("dirty pages {bits:?}, the model has {want:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Memories, MemoryKind};

    const PS: u64 = 4096;

    /// A model with mappings `(start page, pages, prot)` of owned memory, and their memory.
    fn space(mappings: &[(u64, u64, Prot)]) -> (Model, Memories) {
        let mut memories = Memories::new("vdma-model-test", PS);
        let mut model = Model::new(PS, 4, vec![IovaRange::ALL]);
        for &(page, pages, prot) in mappings {
            let size = pages * PS;
            let made = memories.make(MemoryKind::Owned, 0, size, false, |n| vec![page as u8; n]);
            assert_eq!(
                model.expect_map(page * PS, size, 0, prot, made.backing_len),
                0
            );
            model.insert(page * PS, size, prot, made.data.unwrap(), made.real);
        }
        (model, memories)
    }

    #[test]
    fn map_rules_in_the_spec_order() {
        let (model, _m) = space(&[(0, 2, Prot::READ), (4, 1, Prot::READ), (8, 1, Prot::READ)]);
        // Misaligned before anything else; overlap before the entry limit.
        assert_eq!(model.expect_map(1, PS, 0, Prot::READ, PS), libc::EINVAL);
        assert_eq!(model.expect_map(PS, PS, 0, Prot::READ, PS), libc::EEXIST);
        assert_eq!(
            model.expect_map(0, PS, 0, Prot::from_bits(0).unwrap(), PS),
            libc::EINVAL
        );
        let (full, _m) = space(&[
            (0, 1, Prot::READ),
            (2, 1, Prot::READ),
            (4, 1, Prot::READ),
            (6, 1, Prot::READ),
        ]);
        assert_eq!(full.expect_map(8 * PS, PS, 0, Prot::READ, PS), libc::ENOSPC);
        // The memory too short, a wrap, outside the valid ranges.
        assert_eq!(
            model.expect_map(2 * PS, PS, PS, Prot::READ, PS),
            libc::EINVAL
        );
        assert_eq!(
            model.expect_map(u64::MAX - PS + 1, 2 * PS, 0, Prot::READ, 2 * PS),
            libc::EINVAL
        );
        let narrow = Model::new(
            PS,
            4,
            vec![IovaRange::new(vdma::Iova(0), vdma::Iova(PS - 1))],
        );
        assert_eq!(narrow.expect_map(PS, PS, 0, Prot::READ, PS), libc::EINVAL);
        assert_eq!(narrow.expect_map(0, PS, 0, Prot::READ, PS), 0);
    }

    #[test]
    fn remove_straddled_held_and_all() {
        let (mut model, _m) = space(&[(0, 2, Prot::READ), (4, 1, Prot::READ)]);
        assert_eq!(model.expect_unmap(PS, PS), Err(libc::EINVAL));
        assert_eq!(model.expect_unmap(3 * PS, 2 * PS), Ok(vec![4 * PS]));
        assert_eq!(model.expect_unmap(2 * PS, PS), Ok(vec![]));
        model.hold(BTreeSet::from([4 * PS]));
        assert_eq!(model.expect_unmap_all(), Err(libc::EBUSY));
        assert_eq!(model.covered(0, u64::MAX), Ok(vec![0, 4 * PS]));
        model.release();
        assert_eq!(model.remove(&model.expect_unmap_all().unwrap()), 3 * PS);
        assert!(model.mappings.is_empty());
    }

    #[test]
    fn access_verdicts() {
        let (model, _m) = space(&[
            (0, 1, Prot::READ_WRITE),
            (1, 1, Prot::READ),
            (3, 1, Prot::READ),
        ]);
        match model.expect_access(PS - 2, 4, Prot::READ, false) {
            Verdict::Ok(pieces) => assert_eq!(pieces, [(0, PS - 2, PS - 1), (PS, PS, PS + 1)]),
            v => panic!("{v:?}"),
        }
        // A missing permission, then a hole: the first problem, or EINVAL naming the hole.
        match model.expect_access(PS - 1, 2 * PS as usize, Prot::WRITE, false) {
            Verdict::Err {
                allowed,
                first_hole,
            } => {
                assert_eq!(allowed, BTreeSet::from([libc::EPERM, libc::EINVAL]));
                assert_eq!(first_hole, Some(2 * PS));
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            model.expect_access(u64::MAX, 2, Prot::READ, false),
            Verdict::Err { allowed, .. } if allowed == BTreeSet::from([libc::EOVERFLOW])
        ));
        assert!(matches!(
            model.expect_access(0, 0, Prot::READ, false),
            Verdict::Err { allowed, .. } if allowed == BTreeSet::from([libc::EINVAL])
        ));
    }

    #[test]
    fn writes_reads_and_dirty_pages() {
        let (mut model, memories) = space(&[(0, 2, Prot::READ_WRITE), (2, 2, Prot::READ_WRITE)]);
        assert_eq!(model.dirty_start(2048), Err(libc::EINVAL));
        assert_eq!(model.dirty_start(PS), Ok(()));
        assert_eq!(model.dirty_start(2 * PS), Err(libc::EINVAL));
        let Verdict::Ok(pieces) = model.expect_access(2 * PS - 1, 2, Prot::WRITE, false) else {
            panic!("a write across two mappings");
        };
        model.write(&pieces, &[7, 8]);
        assert_eq!(model.read(&pieces), [7, 8]);
        // The memory was not written: the model and the memory differ.
        assert!(model.check_contents(&memories).is_err());
        assert_eq!(model.expect_report(0, 4 * PS, 2 * PS), Err(libc::EINVAL));
        assert_eq!(
            model.expect_report(0, PS, PS),
            Err(libc::EINVAL),
            "straddles"
        );
        let starts = model.expect_report(0, 4 * PS, PS).unwrap();
        assert_eq!(model.take_dirty(&starts, 0), BTreeSet::from([1, 2]));
        assert_eq!(model.take_dirty(&starts, 0), BTreeSet::new());
        model.dirty_stop();
        assert_eq!(model.expect_unmap_dirty(0, 4 * PS), Err(libc::EINVAL));
    }
}
