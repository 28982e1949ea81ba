//! [`MsixTable`]: the MSI-X vector table and pending-bit array as they appear in their BAR.
//!
//! Each table entry is 16 bytes: message address (low, high), message data, vector control
//! (bit 0: mask; the other bits are reserved, read as 0). Entries start masked. The PBA is
//! one bit per vector in little-endian u64 words; the client cannot write it.

use super::layout::MSIX_ENTRY_SIZE;

/// Offset of the vector control dword in an entry.
const VECTOR_CONTROL: usize = 12;
/// Vector control: mask.
const VECTOR_MASKED: u8 = 0x01;

/// The MSI-X table and PBA.
#[derive(Clone, Debug)]
pub(crate) struct MsixTable {
    table: Vec<u8>,
    pba: Vec<u64>,
    vectors: u32,
}

impl MsixTable {
    /// A table of `vectors` entries, all masked, nothing pending.
    pub(crate) fn new(vectors: u16) -> MsixTable {
        let mut t = MsixTable {
            table: vec![0; usize::from(vectors) * MSIX_ENTRY_SIZE as usize],
            pba: vec![0; usize::from(vectors).div_ceil(64)],
            vectors: u32::from(vectors),
        };
        t.reset();
        t
    }

    /// Number of vectors.
    pub(crate) fn vectors(&self) -> u32 {
        self.vectors
    }

    /// Every entry zero and masked, nothing pending.
    pub(crate) fn reset(&mut self) {
        self.table.fill(0);
        for v in 0..self.vectors {
            self.set_masked(v, true);
        }
        self.pba.fill(0);
    }

    /// Reads `buf.len()` bytes at `offset` of the table (the caller checked the range).
    pub(crate) fn read_table(&self, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.table[offset..offset + buf.len()]);
    }

    /// Writes `data` at `offset` of the table (the caller checked the range): address and data
    /// as written, of vector control only the mask bit.
    pub(crate) fn write_table(&mut self, offset: usize, data: &[u8]) {
        let entry = MSIX_ENTRY_SIZE as usize;
        for (i, &value) in data.iter().enumerate() {
            let at = offset + i;
            self.table[at] = match at % entry {
                VECTOR_CONTROL => value & VECTOR_MASKED,
                b if b > VECTOR_CONTROL => 0,
                _ => value,
            };
        }
    }

    /// Reads `buf.len()` bytes at `offset` of the PBA (the caller checked the range).
    pub(crate) fn read_pba(&self, offset: usize, buf: &mut [u8]) {
        for (i, out) in buf.iter_mut().enumerate() {
            let at = offset + i;
            *out = self.pba[at / 8].to_le_bytes()[at % 8];
        }
    }

    /// Whether vector `v`'s mask bit is set.
    pub(crate) fn masked(&self, v: u32) -> bool {
        let at = v as usize * MSIX_ENTRY_SIZE as usize + VECTOR_CONTROL;
        self.table
            .get(at)
            .map_or(true, |control| control & VECTOR_MASKED != 0)
    }

    /// Sets or clears vector `v`'s mask bit.
    pub(crate) fn set_masked(&mut self, v: u32, masked: bool) {
        let at = v as usize * MSIX_ENTRY_SIZE as usize + VECTOR_CONTROL;
        if let Some(control) = self.table.get_mut(at) {
            *control = if masked { VECTOR_MASKED } else { 0 };
        }
    }

    /// Sets or clears vector `v`'s pending bit.
    pub(crate) fn set_pending(&mut self, v: u32, pending: bool) {
        if v >= self.vectors {
            return;
        }
        if let Some(word) = self.pba.get_mut(v as usize / 64) {
            if pending {
                *word |= 1 << (v % 64);
            } else {
                *word &= !(1 << (v % 64));
            }
        }
    }

    /// The pending vectors, in order.
    pub(crate) fn pending_vectors(&self) -> impl Iterator<Item = u32> + '_ {
        self.pba.iter().enumerate().flat_map(|(w, &word)| {
            (0..64u32)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w as u32 * 64 + b)
        })
    }
}
