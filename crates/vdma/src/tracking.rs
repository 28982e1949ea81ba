//! Dirty-page tracking for live migration (semantics §5), built on [`crate::dirty`].
//!
//! Container level (`VFIO_IOMMU_DIRTY_PAGES`): while on, every table entry carries a
//! [`DirtyLog`] of its mapping; `dirty_report` reads and clears whole mappings;
//! `Container::unmap_dirty` returns the removed mappings' bits.
//!
//! Device level (vfio-user `DEVICE_FEATURE` DMA_LOGGING_START/STOP/REPORT): a [`DeviceLog`]
//! covers the ranges the client asked for at its page size; reports may use any page size.
//!
//! Both are marked by every successful `dma_rw` write (`dma.rs`), and both report pages pinned
//! with WRITE as dirty (container level; device logs cover DMA only).

use std::sync::Arc;

use crate::address::Iova;
use crate::container::{check_no_straddle, Container, Space};
use crate::dirty::{Bitmap, DirtyLog, Taken};
use crate::dma::mark_dirty;
use crate::error::{Error, Result};
use crate::handle::DeviceId;
use crate::rcu;
use crate::table::Entry;

/// Most pages one log, report or bitmap may cover: 2^32 bits, 512 MiB of bitmap.
pub const MAX_BITMAP_PAGES: u64 = 1 << 32;

/// Most ranges one device log may have (vfio-user's DMA_LOGGING_START).
pub const MAX_LOG_RANGES: usize = 256;

pub(crate) fn check_bitmap_pages(pages: u64) -> Result<()> {
    if pages > MAX_BITMAP_PAGES {
        return Err(Error::BitmapTooLarge {
            pages,
            max: MAX_BITMAP_PAGES,
        });
    }
    Ok(())
}

fn page_shift(page_size: u64) -> Result<u32> {
    if !page_size.is_power_of_two() {
        return Err(Error::BadPageSize { page_size });
    }
    Ok(page_size.trailing_zeros())
}

impl Container {
    /// Starts container-level dirty tracking at `page_size` (a power of two, at least the
    /// address space's page size): EINVAL otherwise. Starting again with the same page size is
    /// fine; with another, EINVAL. Writes that begin after this returns are tracked.
    pub fn dirty_start(&self, page_size: u64) -> Result<()> {
        let space = self.space();
        let shift = page_shift(page_size)?;
        if page_size < space.config.page_size {
            return Err(Error::BadPageSize { page_size });
        }
        let mut control = space.lock();
        match control.tracking {
            Some(s) if s == shift => return Ok(()),
            Some(_) => return Err(Error::BadPageSize { page_size }),
            None => {}
        }
        let table = control
            .current
            .rebuilt(|e| Entry::new(e.mapping.clone(), Some(shift)))?;
        control.tracking = Some(shift);
        space.replace(&mut control, Arc::new(table));
        // Writers still using a table without logs finish before this returns.
        rcu::synchronize();
        control.retired.clear();
        Ok(())
    }

    /// Stops container-level tracking and drops all its bits; fine if not started.
    pub fn dirty_stop(&self) -> Result<()> {
        let space = self.space();
        let mut control = space.lock();
        if control.tracking.take().is_none() {
            return Ok(());
        }
        let table = control
            .current
            .rebuilt(|e| Entry::new(e.mapping.clone(), None))?;
        space.replace(&mut control, Arc::new(table));
        Ok(())
    }

    /// Whether container-level tracking is on, and at which page size.
    pub fn dirty_page_size(&self) -> Option<u64> {
        self.space().lock().tracking.map(|s| 1 << s)
    }

    /// Reads and clears the dirty bits of the mappings in `[iova, iova + size)`: bit n is the
    /// page at `iova + n * page_size`. The range may hold any number of whole mappings (and
    /// holes); a mapping crossing either end: EINVAL. Tracking off, `page_size` not the tracking
    /// page size, or `iova`/`size` not aligned to it: EINVAL. Pages pinned with WRITE are
    /// reported in every report.
    pub fn dirty_report(&self, iova: Iova, size: u64, page_size: u64) -> Result<Bitmap> {
        let space = self.space();
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let control = space.lock();
        let shift = control.tracking.ok_or(Error::NotTracking)?;
        if page_size != 1 << shift {
            return Err(Error::BadPageSize { page_size });
        }
        space.check_tracking_aligned(iova, size, shift)?;
        let last = iova.last_of(size).ok_or(Error::Wraps { iova, size })?.0;
        check_bitmap_pages(size >> shift)?;
        let table = control.current.clone();
        check_no_straddle(&table, iova.0, last)?;
        let entries: Vec<&Entry> = entries_in(&table, iova.0, last);
        let mut taken: Vec<Option<Taken>> = entries
            .iter()
            .map(|e| e.dirty.as_ref().map(|log| log.swap_out()))
            .collect();
        // Every writer that could still mark a swapped-out buffer finishes first.
        rcu::synchronize();
        let pages = size >> shift;
        let base = iova.0 >> shift;
        let mut bitmap = match (&entries[..], &mut taken[..]) {
            // One mapping whose log lines up with the range: its buffer is the report, no copy.
            ([e], [Some(t)])
                if e.dirty
                    .as_ref()
                    .is_some_and(|l| l.first_page() == base && l.pages() == pages) =>
            {
                Bitmap::from_words(iova, page_size, pages, t.take_words())
            }
            _ => {
                let mut bitmap = Bitmap::new(iova, page_size, pages);
                for (e, t) in entries.iter().zip(&taken) {
                    if let (Some(log), Some(t)) = (&e.dirty, t) {
                        bitmap.or_at(log.first_page() - base, t.words(), log.pages());
                    }
                }
                bitmap
            }
        };
        // Pages pinned with WRITE may be written at any time: dirty in every report.
        for page in space.write_pinned(iova.0, last) {
            bitmap.set((page >> shift) - base);
        }
        drop(control);
        Ok(bitmap)
    }
}

/// The entries that start in `[start, last]`.
fn entries_in(table: &crate::table::Table, start: u64, last: u64) -> Vec<&Entry> {
    let mut out = Vec::new();
    let mut pos = table.ceil(start);
    while let Some(p) = pos {
        let e = table.entry(p);
        if e.start > last {
            break;
        }
        out.push(e);
        pos = table.next(p);
    }
    out
}

/// The dirty bitmap of mappings just removed by an unmap of `[iova, last]`; no writer can reach
/// them any more.
pub(crate) fn removed_bitmap(iova: Iova, last: u64, shift: u32, removed: &[Entry]) -> Bitmap {
    let mut bitmap = Bitmap::new(iova, 1 << shift, ((last - iova.0) >> shift) + 1);
    for e in removed {
        if let Some(log) = &e.dirty {
            let taken = log.swap_out();
            bitmap.or_at(
                log.first_page() - (iova.0 >> shift),
                taken.words(),
                log.pages(),
            );
        }
    }
    bitmap
}

/// A device's DMA log: ranges of IOVA at one page size, marked by every write.
#[derive(Debug)]
pub(crate) struct DeviceLog {
    device: DeviceId,
    shift: u32,
    /// Sorted, non-overlapping.
    ranges: Vec<DirtyLog>,
}

impl DeviceLog {
    /// Marks the pages `[iova, last]` touches in every range it overlaps.
    #[inline]
    pub(crate) fn mark(&self, iova: u64, last: u64) {
        let first_page = iova >> self.shift;
        let last_page = last >> self.shift;
        let mut i = self
            .ranges
            .partition_point(|r| r.first_page() + r.pages() <= first_page);
        while let Some(r) = self.ranges.get(i) {
            if r.first_page() > last_page {
                break;
            }
            r.mark(iova, last);
            i += 1;
        }
    }
}

impl Space {
    /// Marks `[iova, last]` dirty in both kinds of logs, as a DMA write there would: for memory
    /// written through pins and segments, which `dma_rw` never saw. Unmapped bytes are skipped.
    pub(crate) fn mark_written(&self, iova: u64, last: u64) {
        rcu::read(|guard| {
            let table = self.table.load(guard);
            let mut pos = table.ceil(iova);
            while let Some(p) = pos {
                let e = table.entry(p);
                if e.start > last {
                    break;
                }
                mark_dirty(table, e, e.start.max(iova), e.last.min(last));
                pos = table.next(p);
            }
        })
    }

    /// Starts device-level DMA logging of `ranges` at `page_size` for `device`: 1 to 256
    /// ranges (none: EINVAL, more: E2BIG), non-overlapping and aligned to `page_size` (EINVAL),
    /// none past 2^64 (EOVERFLOW); `page_size` a power of two of at least 4096 (EINVAL). EBUSY if
    /// this device already logs.
    pub(crate) fn logging_start(
        &self,
        device: &DeviceId,
        ranges: &[(Iova, u64)],
        page_size: u64,
    ) -> Result<()> {
        let shift = page_shift(page_size)?;
        if page_size < 4096 {
            return Err(Error::BadPageSize { page_size });
        }
        if ranges.is_empty() {
            return Err(Error::ZeroSize);
        }
        if ranges.len() > MAX_LOG_RANGES {
            return Err(Error::TooManyRanges {
                count: ranges.len(),
                max: MAX_LOG_RANGES,
            });
        }
        let mut sorted: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        let mut pages = 0u64;
        for &(iova, length) in ranges {
            if length == 0 {
                return Err(Error::ZeroSize);
            }
            let last = iova
                .last_of(length)
                .ok_or(Error::Overflow { iova, len: length })?;
            self.check_tracking_aligned(iova, length, shift)?;
            pages = pages.saturating_add(length >> shift);
            sorted.push((iova.0, last.0));
        }
        check_bitmap_pages(pages)?;
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[1].0 <= w[0].1) {
            return Err(Error::RangesOverlap { iova: Iova(w[1].0) });
        }
        let log = Arc::new(DeviceLog {
            device: device.clone(),
            shift,
            ranges: sorted
                .iter()
                .map(|&(start, last)| DirtyLog::new(start, last, shift))
                .collect::<Result<_>>()?,
        });
        let mut control = self.lock();
        let logs = &control.current.device_logs;
        if logs.iter().any(|l| &l.device == device) {
            return Err(Error::LoggingActive {
                device: device.0.clone(),
            });
        }
        let logs: Arc<[Arc<DeviceLog>]> = logs.iter().cloned().chain([log]).collect();
        let table = control.current.with_device_logs(logs);
        self.replace(&mut control, Arc::new(table));
        // Writers still using a table without this log finish before this returns.
        rcu::synchronize();
        control.retired.clear();
        Ok(())
    }

    /// Stops `device`'s DMA logging and drops its bits; fine if not started.
    pub(crate) fn logging_stop(&self, device: &DeviceId) -> Result<()> {
        let mut control = self.lock();
        let logs = &control.current.device_logs;
        if !logs.iter().any(|l| &l.device == device) {
            return Ok(());
        }
        let logs: Arc<[Arc<DeviceLog>]> = logs
            .iter()
            .filter(|l| &l.device != device)
            .cloned()
            .collect();
        let table = control.current.with_device_logs(logs);
        self.replace(&mut control, Arc::new(table));
        Ok(())
    }

    /// Reads and clears `device`'s log over `[iova, iova + length)` at `page_size` (any power
    /// of two): bit n is the page at `iova + n * page_size`, set if any logged page it overlaps
    /// is dirty. Logged pages that the range covers only in part are reported and stay dirty,
    /// so no dirt is lost whatever the page size ratio. Not logging: EINVAL; zero length:
    /// EINVAL; past 2^64: EOVERFLOW.
    /// The page size of `device`'s DMA log, if it is logging.
    pub(crate) fn logging_page_size(&self, device: &DeviceId) -> Option<u64> {
        let control = self.lock();
        let log = control
            .current
            .device_logs
            .iter()
            .find(|l| &l.device == device)?;
        Some(1 << log.shift)
    }

    pub(crate) fn logging_report(
        &self,
        device: &DeviceId,
        iova: Iova,
        length: u64,
        page_size: u64,
    ) -> Result<Bitmap> {
        let rshift = page_shift(page_size)?;
        if length == 0 {
            return Err(Error::ZeroLength);
        }
        let last = iova
            .last_of(length)
            .ok_or(Error::Overflow { iova, len: length })?
            .0;
        let bits = ((length - 1) >> rshift) + 1;
        check_bitmap_pages(bits)?;
        let control = self.lock();
        let log = control
            .current
            .device_logs
            .iter()
            .find(|l| &l.device == device)
            .cloned()
            .ok_or(Error::NotTracking)?;
        let ls = log.shift;
        let touched: Vec<&DirtyLog> = log
            .ranges
            .iter()
            .filter(|r| {
                let r_start = r.first_page() << ls;
                let r_last = ((r.first_page() + r.pages()) << ls).wrapping_sub(1);
                r_start <= last && iova.0 <= r_last
            })
            .collect();
        let taken: Vec<Taken> = touched.iter().map(|r| r.swap_out()).collect();
        rcu::synchronize();
        let mut bitmap = Bitmap::new(iova, page_size, bits);
        // Logged pages wholly inside the report are consumed; the rest go back.
        let lo_full = iova.0.div_ceil(1 << ls);
        let partial_end = last.wrapping_add(1) & ((1 << ls) - 1) != 0;
        let (lo_full, hi_full) = match (last >> ls).checked_sub(u64::from(partial_end)) {
            Some(hi) => (lo_full, hi),
            None => (1, 0), // no whole page: keep every bit
        };
        for (r, t) in touched.iter().zip(&taken) {
            for (wi, &w) in t.words().iter().enumerate() {
                let mut w = w;
                while w != 0 {
                    let b = w.trailing_zeros() as u64;
                    w &= w - 1;
                    let page = r.first_page() + wi as u64 * 64 + b;
                    let p_start = page << ls;
                    let p_last = p_start + ((1u64 << ls) - 1);
                    if p_last < iova.0 || p_start > last {
                        continue;
                    }
                    let from = (p_start.max(iova.0) - iova.0) >> rshift;
                    let to = (p_last.min(last) - iova.0) >> rshift;
                    bitmap.set_range(from, to - from + 1);
                }
            }
            r.merge_back(t, lo_full, hi_full);
        }
        drop(control);
        Ok(bitmap)
    }
}
