//! Dirty-page logs (semantics §5): which pages successful DMA writes touched.
//!
//! A [`DirtyLog`] covers a range of pages of one size with one bit each. Writers mark it from
//! inside their RCU read section: a load, and a `fetch_or` only when a bit is still clear, so a
//! hot page costs one load. A report never clears bits in place under the writers: it swaps a
//! fresh zeroed buffer in ([`DirtyLog::swap_out`]), waits for a grace period (every writer that
//! could still mark the old buffer has left its read section, and the bytes it wrote are
//! visible), and then owns the old buffer outright: it reads it with plain loads and gives back
//! ([`DirtyLog::merge_back`]) the bits outside the reported range. Nothing is lost: a write that
//! completed before the swap is in the old buffer, one after it in the new.
//!
//! [`Bitmap`] is what a report returns: bit n is the page at `iova + n * page_size`, packed in
//! u64 words, least significant bit first (VFIO's layout, little-endian on the wire).

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crate::address::Iova;
use crate::error::{Error, Result};
use crate::tracking::check_bitmap_pages;

/// The result of a dirty report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    iova: Iova,
    page_size: u64,
    pages: u64,
    words: Vec<u64>,
}

impl Bitmap {
    /// An all-clear bitmap of `pages` pages of `page_size` from `iova`.
    pub fn new(iova: Iova, page_size: u64, pages: u64) -> Bitmap {
        Bitmap {
            iova,
            page_size,
            pages,
            words: vec![0; pages.div_ceil(64) as usize],
        }
    }

    /// A bitmap made of `words` (at least `pages` bits; bits past `pages` clear).
    pub(crate) fn from_words(iova: Iova, page_size: u64, pages: u64, words: Vec<u64>) -> Bitmap {
        debug_assert_eq!(words.len() as u64, pages.div_ceil(64));
        Bitmap {
            iova,
            page_size,
            pages,
            words,
        }
    }

    /// The IOVA of bit 0.
    pub fn iova(&self) -> Iova {
        self.iova
    }

    /// Bytes per bit.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Number of pages (bits).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Whether page `n` is dirty.
    pub fn is_set(&self, n: u64) -> bool {
        n < self.pages && self.words[(n / 64) as usize] >> (n % 64) & 1 == 1
    }

    /// The dirty pages' numbers, ascending.
    pub fn iter_set(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as u64;
                w &= w - 1;
                Some(i as u64 * 64 + b)
            })
        })
    }

    /// Number of dirty pages.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// The words, bit n of the bitmap in word n / 64, bit n % 64.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The bitmap as VFIO lays it out in memory: little-endian u64 words.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Sets page `n`.
    pub(crate) fn set(&mut self, n: u64) {
        debug_assert!(n < self.pages);
        self.words[(n / 64) as usize] |= 1 << (n % 64);
    }

    /// Sets pages `[n, n + count)`.
    pub(crate) fn set_range(&mut self, n: u64, count: u64) {
        for p in n..n + count {
            self.set(p);
        }
    }

    /// ORs `src` (whose bit 0 is page `at` of this bitmap, `at` may be any bit position) in.
    pub(crate) fn or_at(&mut self, at: u64, src: &[u64], src_pages: u64) {
        let shift = (at % 64) as u32;
        let base = (at / 64) as usize;
        let full = (src_pages / 64) as usize;
        for (i, &w) in src.iter().enumerate() {
            let w = if i == full {
                w & ((1u64 << (src_pages % 64)) - 1)
            } else {
                w
            };
            if w == 0 {
                continue;
            }
            self.words[base + i] |= w << shift;
            if shift != 0 {
                if let Some(next) = self.words.get_mut(base + i + 1) {
                    *next |= w >> (64 - shift);
                }
            }
        }
    }
}

/// A live log over pages `[first_page, first_page + pages)` of `1 << shift` bytes (page numbers
/// are IOVAs shifted right, so logs of different ranges use one numbering).
#[derive(Debug)]
pub(crate) struct DirtyLog {
    first_page: u64,
    pages: u64,
    shift: u32,
    /// The buffer writers mark: `words(pages)` u64s from a `Box<[u64]>`, owned by this log.
    active: AtomicPtr<u64>,
}

fn words(pages: u64) -> usize {
    pages.div_ceil(64) as usize
}

/// A zeroed buffer for `pages` bits, or ENOMEM.
fn try_zeroed(pages: u64) -> Result<*mut u64> {
    let n = words(pages);
    let no_memory = || Error::Os {
        op: "allocate a dirty bitmap",
        source: std::io::Error::from_raw_os_error(libc::ENOMEM),
    };
    let layout = std::alloc::Layout::array::<u64>(n).map_err(|_| no_memory())?;
    if layout.size() == 0 {
        return Ok(zeroed(pages));
    }
    // Zeroed by the allocator, not by writing: a large bitmap comes from fresh anonymous pages
    // that take memory only once a bit in them is set (a log over a big, mostly idle guest).
    // SAFETY: the layout has a non-zero size (checked above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut u64;
    if ptr.is_null() {
        return Err(no_memory());
    }
    // SAFETY: `ptr` is a fresh allocation of `n` zeroed u64s with the layout of `[u64; n]`, so
    // a boxed slice of it owns it and frees it with the same layout, as `zeroed`'s buffers.
    let words = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n)) };
    Ok(Box::into_raw(words) as *mut u64)
}

/// A zeroed buffer for `pages` bits; the size was accepted once already.
fn zeroed(pages: u64) -> *mut u64 {
    Box::into_raw(vec![0u64; words(pages)].into_boxed_slice()) as *mut u64
}

/// A buffer swapped out of a log. Read it only after a grace period ([`crate::rcu`]).
pub(crate) struct Taken {
    words: Box<[u64]>,
}

impl Taken {
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }

    /// The words, leaving this empty.
    pub(crate) fn take_words(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.words).into_vec()
    }
}

impl DirtyLog {
    /// A clear log over the pages that `[start, last]` touches, `1 << shift` bytes each. E2BIG
    /// past [`crate::MAX_BITMAP_PAGES`], ENOMEM if the bitmap cannot be allocated.
    pub(crate) fn new(start: u64, last: u64, shift: u32) -> Result<DirtyLog> {
        let first_page = start >> shift;
        let pages = (last >> shift) - first_page + 1;
        check_bitmap_pages(pages)?;
        Ok(DirtyLog {
            first_page,
            pages,
            shift,
            active: AtomicPtr::new(try_zeroed(pages)?),
        })
    }

    pub(crate) fn first_page(&self) -> u64 {
        self.first_page
    }

    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    /// Marks the pages `[iova, last]` touches (clipped to the log). Call inside a read section,
    /// after the bytes were written.
    #[inline]
    pub(crate) fn mark(&self, iova: u64, last: u64) {
        let lo = (iova >> self.shift).max(self.first_page) - self.first_page;
        let hi = (last >> self.shift).min(self.first_page + self.pages - 1);
        if hi < self.first_page || hi - self.first_page < lo {
            return;
        }
        let hi = hi - self.first_page;
        let base = self.active.load(Ordering::Acquire);
        for w in lo / 64..=hi / 64 {
            let from = if w == lo / 64 { lo % 64 } else { 0 };
            let to = if w == hi / 64 { hi % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - to)) & (u64::MAX << from);
            // SAFETY: `w < words(pages)` since hi < pages; the buffer stays allocated until a
            // grace period after it is swapped out, and the caller is inside a read section that
            // began before such a grace period could end. Concurrent access is atomic only.
            let word = unsafe { AtomicU64::from_ptr(base.add(w as usize)) };
            if word.load(Ordering::Relaxed) & mask != mask {
                word.fetch_or(mask, Ordering::Release);
            }
        }
    }

    /// Swaps in a clear buffer and returns the old one. The caller must wait for a grace period
    /// before reading it, and must give back what it does not report ([`DirtyLog::merge_back`]).
    pub(crate) fn swap_out(&self) -> Taken {
        let old = self.active.swap(zeroed(self.pages), Ordering::AcqRel);
        // SAFETY: `old` came from `zeroed(self.pages)` (Box::into_raw of that many words) and is
        // no longer reachable through `active`; readers still using it are waited for by the
        // caller before it reads the box.
        let words =
            unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(old, words(self.pages))) };
        Taken { words }
    }

    /// Marks again the bits of `taken` for pages outside `[keep_lo, keep_hi]` (absolute page
    /// numbers): they were swapped out but not reported.
    pub(crate) fn merge_back(&self, taken: &Taken, report_lo: u64, report_hi: u64) {
        let base = self.active.load(Ordering::Acquire);
        for (i, &w) in taken.words.iter().enumerate() {
            if w == 0 {
                continue;
            }
            let mut keep = 0u64;
            let mut bits = w;
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let page = self.first_page + i as u64 * 64 + b;
                if page < report_lo || page > report_hi {
                    keep |= 1 << b;
                }
            }
            if keep != 0 {
                // SAFETY: `i` indexes a word of a buffer of the same size; the caller holds the
                // writer-side lock of this log's owner, so `active` is not swapped meanwhile.
                let word = unsafe { AtomicU64::from_ptr(base.add(i)) };
                word.fetch_or(keep, Ordering::Release);
            }
        }
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        let ptr = *self.active.get_mut();
        // SAFETY: the log owns its active buffer, made by `zeroed(self.pages)`; dropping the log
        // happens after a grace period (it is reachable only through retired tables).
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, words(self.pages))) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_sets_exactly_the_touched_pages() {
        let log = DirtyLog::new(0x10000, 0x10000 + 200 * 4096 - 1, 12).unwrap();
        log.mark(0x10000 + 4095, 0x10000 + 4096); // pages 0 and 1
        log.mark(0x10000 + 70 * 4096 + 5, 0x10000 + 130 * 4096); // 70..=130, three words
        log.mark(0, 0xffff); // before the log
        log.mark(0x10000 + 199 * 4096, u64::MAX); // runs past the end: page 199
        let taken = log.swap_out();
        let mut set = Vec::new();
        for (i, &w) in taken.words().iter().enumerate() {
            for b in 0..64 {
                if w >> b & 1 == 1 {
                    set.push(i * 64 + b);
                }
            }
        }
        let mut want: Vec<usize> = vec![0, 1];
        want.extend(70..=130);
        want.push(199);
        assert_eq!(set, want);
        // The new buffer is clear.
        assert!(log.swap_out().words().iter().all(|&w| w == 0));
    }

    #[test]
    fn or_at_shifts_across_words() {
        let mut b = Bitmap::new(Iova(0), 4096, 200);
        b.or_at(60, &[0b1011, u64::MAX], 66);
        let set: Vec<u64> = b.iter_set().collect();
        assert_eq!(set, vec![60, 61, 63, 124, 125]);
    }
}
