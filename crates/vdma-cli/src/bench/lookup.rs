//! Lookup: 8-byte reads over n mappings of 4 KiB, IOVA-contiguous but onto scattered pages of
//! the guest memfd (a fixed permutation, so nothing can merge them). vdma maps n slices of the
//! memfd; vm-memory gets n regions laid over the same pages of the flat mapping (n regions with
//! an mmap each would exceed `vm.max_map_count`), which keeps its lookup as it is; memcpy copies
//! from the same pages with no lookup at all.

use std::hint::black_box;

use vdma::{Backing, Config, Container, DeviceHandle, Iova, Prot};

use super::guest::{space_with_device, vdma_err, Guest};
use super::raw::RawGuest;
use super::timing::Contender;
use super::{BenchError, PAGE};

/// IOVA of the first lookup mapping.
const LOOKUP_BASE: u64 = 0x100_0000_0000;
/// Length of the precomputed random address list (a power of two).
const N_ADDR: usize = 1 << 16;

/// n mappings of 4 KiB and a list of random addresses inside them.
pub(crate) struct Lookup {
    /// How many mappings.
    pub(crate) n: usize,
    _space: Container,
    dev: DeviceHandle,
    vm: RawGuest,
    /// Random 8-byte-aligned IOVAs inside the mappings.
    iovas: Vec<u64>,
    /// The same addresses as offsets into the flat mapping.
    offsets: Vec<usize>,
    /// One address for the hot reads.
    hot: u64,
}

/// File offset of mapping `i` of `n`.
fn file_off(i: usize, n: usize) -> usize {
    let mask = n.next_power_of_two() - 1;
    (i.wrapping_mul(40503) & mask) * PAGE
}

/// splitmix64: a small deterministic generator for the address list (not timed).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Lookup {
    /// Maps `n` (1 to 65,535) pages of the guest memfd both ways and draws the addresses.
    pub(crate) fn new(guest: &Guest, n: usize) -> Result<Lookup, BenchError> {
        let (space, dev) = space_with_device(Config::default())?;
        for i in 0..n {
            space
                .map(
                    Iova(LOOKUP_BASE + (i * PAGE) as u64),
                    PAGE as u64,
                    Backing::file(&guest.file, file_off(i, n) as u64),
                    Prot::READ_WRITE,
                )
                .map_err(vdma_err("map a 4 KiB lookup page"))?;
        }
        let vm = RawGuest::new(
            &guest.flat,
            (0..n).map(|i| (LOOKUP_BASE + (i * PAGE) as u64, file_off(i, n))),
            PAGE,
        )
        .map_err(BenchError::VmMemory)?;
        let mut state = 0x5eed_0000 + n as u64;
        let mut iovas = Vec::with_capacity(N_ADDR);
        let mut offsets = Vec::with_capacity(N_ADDR);
        for _ in 0..N_ADDR {
            let i = (splitmix(&mut state) % n as u64) as usize;
            let within = (splitmix(&mut state) % (PAGE as u64 / 8)) as usize * 8;
            iovas.push(LOOKUP_BASE + (i * PAGE + within) as u64);
            offsets.push(file_off(i, n) + within);
        }
        let hot_index = 40000 % n;
        let lookup = Lookup {
            n,
            _space: space,
            dev,
            vm,
            iovas,
            offsets,
            hot: LOOKUP_BASE + (hot_index * PAGE + 0x100) as u64,
        };
        lookup.check(guest)?;
        Ok(lookup)
    }

    /// The three contenders read the same bytes at a few of the addresses.
    fn check(&self, guest: &Guest) -> Result<(), BenchError> {
        for k in [0, 1, N_ADDR / 2, N_ADDR - 1] {
            let (mut a, mut b, mut c) = ([0u8; 8], [0u8; 8], [0u8; 8]);
            guest.flat.read(self.offsets[k], &mut a);
            self.vm
                .read(self.iovas[k], &mut b)
                .map_err(|e| BenchError::VmMemory(e.to_string()))?;
            self.dev
                .read(Iova(self.iovas[k]), &mut c)
                .map_err(vdma_err("lookup read"))?;
            if a != b || a != c {
                return Err(BenchError::Check {
                    what: format!("lookup over {} mappings", self.n),
                    reason: format!(
                        "address {:#x}: memcpy, vm-memory and vdma disagree",
                        self.iovas[k]
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Random 8-byte reads: memcpy (no lookup), vm-memory, vdma.
pub(crate) fn random<'f>(guest: &'f Guest, l: &'f Lookup) -> Vec<Contender<'f>> {
    let mask = N_ADDR - 1;
    let (mut i0, mut i1, mut i2) = (0usize, 0usize, 0usize);
    vec![
        Contender::looped("memcpy", move || {
            let mut buf = [0u8; 8];
            guest.flat.read(l.offsets[i0], &mut buf);
            i0 = (i0 + 1) & mask;
            black_box(&mut buf);
            Ok(())
        }),
        Contender::looped("vm-memory", move || {
            let mut buf = [0u8; 8];
            l.vm.read(l.iovas[i1], &mut buf)
                .map_err(|e| BenchError::VmMemory(e.to_string()))?;
            i1 = (i1 + 1) & mask;
            black_box(&mut buf);
            Ok(())
        }),
        Contender::looped("vdma", move || {
            let mut buf = [0u8; 8];
            l.dev
                .read(Iova(l.iovas[i2]), &mut buf)
                .map_err(vdma_err("lookup read"))?;
            i2 = (i2 + 1) & mask;
            black_box(&mut buf);
            Ok(())
        }),
    ]
}

/// Hot 8-byte reads (one address) with each of `lookups` present: vm-memory and vdma.
pub(crate) fn hot<'f>(lookups: &[&'f Lookup]) -> Vec<Contender<'f>> {
    let mut out = Vec::new();
    for &l in lookups {
        let label = mappings_label(l.n);
        out.push(Contender::looped(
            format!("vm-memory, {label}"),
            move || {
                let mut buf = [0u8; 8];
                l.vm.read(black_box(l.hot), &mut buf)
                    .map_err(|e| BenchError::VmMemory(e.to_string()))?;
                black_box(&mut buf);
                Ok(())
            },
        ));
        out.push(Contender::looped(format!("vdma, {label}"), move || {
            let mut buf = [0u8; 8];
            l.dev
                .read(Iova(black_box(l.hot)), &mut buf)
                .map_err(vdma_err("hot read"))?;
            black_box(&mut buf);
            Ok(())
        }));
    }
    out
}

/// `1 mapping`, `65535 mappings`.
pub(crate) fn mappings_label(n: usize) -> String {
    if n == 1 {
        "1 mapping".into()
    } else {
        format!("{n} mappings")
    }
}
