//! The caller's side of every copy: a private, page-aligned, already-touched buffer, so every
//! contender copies to and from the same alignment and no page fault is timed.

use super::PAGE;

/// A private buffer whose first byte is page-aligned.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` bytes of `fill`, page-aligned.
    pub(crate) fn new(len: usize, fill: u8) -> AlignedBuf {
        // Written through when made, so every page is present (a zero fill could come from
        // calloc's untouched pages, hence the non-zero first pass).
        let mut storage = vec![0xa5; len + PAGE];
        storage.fill(fill);
        let start = storage.as_ptr().align_offset(PAGE).min(PAGE);
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    /// The buffer.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The buffer, mutably.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_sized() {
        for len in [0, 8, 4096, 70_000] {
            let mut b = AlignedBuf::new(len, 7);
            assert_eq!(b.bytes().len(), len);
            assert_eq!(b.bytes_mut().as_ptr() as usize % PAGE, 0);
            assert!(b.bytes().iter().all(|&x| x == 7));
        }
    }
}
