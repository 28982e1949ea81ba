//! The mmap areas of the BAR holding the MSI-X table: the function's areas without the pages
//! of the table and the PBA, so a client that maps the BAR still reaches them by messages.

use crate::protocol::SparseMmapArea;
use crate::server::RegionMmap;

use super::MsixLayout;

/// The host page size (from the auxiliary vector; 4096 if it cannot be read).
fn page_size() -> u64 {
    const AT_PAGESZ: u64 = 6;
    const WORD: usize = size_of::<u64>();
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return 4096;
    };
    auxv.chunks_exact(2 * WORD)
        .find_map(|pair| {
            let (key, value) = pair.split_at(WORD);
            let key = u64::from_ne_bytes(key.try_into().ok()?);
            let value = u64::from_ne_bytes(value.try_into().ok()?);
            (key == AT_PAGESZ && value.is_power_of_two()).then_some(value)
        })
        .unwrap_or(4096)
}

/// `mmap` for a BAR of `size` bytes holding `msix`: the areas minus the whole pages the table
/// and the PBA touch; `None` when nothing is left.
pub(crate) fn exclude_msix(mmap: RegionMmap, size: u64, msix: &MsixLayout) -> Option<RegionMmap> {
    let page = page_size();
    let holes = [msix.table_range(), msix.pba_range()].map(|(start, end)| {
        let start = start / page * page;
        let end = end.div_ceil(page).saturating_mul(page);
        (start, end)
    });
    let areas: Vec<(u64, u64)> = if mmap.sparse.is_empty() {
        vec![(0, size)]
    } else {
        mmap.sparse
            .iter()
            .map(|a| {
                let start = a.offset.get();
                (start, start.saturating_add(a.size.get()))
            })
            .collect()
    };
    let mut left = Vec::new();
    for (start, end) in areas {
        let mut pieces = vec![(start, end)];
        for &(h0, h1) in &holes {
            pieces = pieces
                .into_iter()
                .flat_map(|(s, e)| {
                    if h1 <= s || e <= h0 {
                        vec![(s, e)]
                    } else {
                        [(s, h0.max(s)), (h1.min(e), e)]
                            .into_iter()
                            .filter(|(a, b)| a < b)
                            .collect()
                    }
                })
                .collect();
        }
        left.extend(pieces);
    }
    if left.is_empty() {
        return None;
    }
    Some(RegionMmap {
        sparse: left
            .into_iter()
            .map(|(s, e)| SparseMmapArea::new(s, e - s))
            .collect(),
        ..mmap
    })
}
