//! The `core_ops` target: arbitrary sequences of `map`, `unmap`, `unmap_all`, `unmap_dirty`,
//! reads, writes and dirty tracking (`dirty_start`, `dirty_report`, `dirty_stop`) against a
//! real [`Container`] and a plain reference model, with the rules of
//! `crates/vdma/tests/model.rs` (semantics §1, §3, §5). After every operation both agree on the
//! result (the value or the errno), the bytes read, the list of mappings, the dirty bitmaps,
//! and (after every write) the bytes in every mapping's memory, read straight from the memory.
//!
//! The IOVAs lie in a window of 16 pages at 0, at 2^40, or at the very top of the space (the
//! last page ends at 2^64). Memory is owned (`OwnedMemory`), a region of one memfd per case
//! (`Backing::file`), or memory without a host address reached through `read_at`/`write_at`.
//!
//! Input format: a [`Setup`], then [`Op`]s until the data runs out (at most [`MAX_OPS`]), each
//! read with the `arbitrary` crate. [`encode`] is the inverse, for writing seeds.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Unstructured};
use vdma::{
    Backing, Config, Container, DeviceHandle, DeviceId, Direction, Error, GroupHandle, GroupId,
    Iova, Memory, OwnedMemory, Prot,
};

/// The address space's page size.
pub const PS: u64 = 4096;
/// Pages in the window.
pub const WINDOW_PAGES: u64 = 16;
/// Most operations of one case.
pub const MAX_OPS: usize = 64;
/// What a failed read must leave in the buffer.
const UNTOUCHED: u8 = 0xa5;

/// How a case is set up.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Where the window is: 0, 2^40, or the top of the space (mod 3).
    pub window: u8,
    /// The entry limit: 2 + (this mod 7).
    pub max_entries: u8,
}

/// The memory behind a mapping.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `OwnedMemory`.
    Owned,
    /// A region of the case's memfd.
    File,
    /// Memory without a host address (`read_at`/`write_at` only).
    Msg,
}

/// A deliberate defect of a `map` call.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flaw {
    /// None.
    None,
    /// Size 0.
    ZeroSize,
    /// IOVA off the page by 1 + (arg mod 4095).
    IovaOff,
    /// Size off the page.
    SizeOff,
    /// Memory offset off the page.
    OffsetOff,
    /// The memory is too short.
    Short,
}

/// One operation.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `map` at page `page mod 16` of the window, `1 + pages mod 4` pages, prot `prot mod 4`
    /// (0 is empty: EINVAL), at `offset_pages mod 3` pages into the memory.
    Map {
        /// Page in the window.
        page: u8,
        /// Pages.
        pages: u8,
        /// READ = 1, WRITE = 2.
        prot: u8,
        /// The memory.
        kind: Kind,
        /// Offset into the memory, in pages.
        offset_pages: u8,
        /// A defect.
        flaw: Flaw,
        /// The memory's initial bytes derive from this.
        fill: u8,
    },
    /// `unmap` of `1 + pages mod 8` pages at page `page mod 18` (mod 8: 5 size 0, 6 misaligned
    /// iova, 7 misaligned size).
    Unmap {
        /// Page in the window.
        page: u8,
        /// Pages.
        pages: u8,
        /// A defect (see above).
        flaw: u8,
    },
    /// `unmap_all`.
    UnmapAll,
    /// `unmap_dirty` of `1 + pages mod 8` pages at page `page mod 18`.
    UnmapDirty {
        /// Page in the window.
        page: u8,
        /// Pages.
        pages: u8,
    },
    /// A read of `len mod 3 pages` bytes at byte `at mod 17 pages` of the window.
    Read {
        /// Byte in the window.
        at: u16,
        /// Length.
        len: u16,
        /// Through the device handle (else the group's).
        device: bool,
    },
    /// A write, as a read.
    Write {
        /// Byte in the window.
        at: u16,
        /// Length.
        len: u16,
        /// Through the device handle.
        device: bool,
        /// The bytes derive from this.
        fill: u8,
    },
    /// `dirty_start` with a page size of 4 KiB << (size mod 3), or (size mod 5 == 3) 2 KiB,
    /// or (4) 5000 bytes.
    DirtyStart {
        /// The page size's choice.
        size: u8,
    },
    /// `dirty_report` of `1 + pages mod 8` pages at page `page mod 18`, at the tracking page
    /// size (or twice it, if `other`).
    DirtyReport {
        /// Page in the window.
        page: u8,
        /// Pages.
        pages: u8,
        /// Ask with another page size.
        other: bool,
    },
    /// `dirty_stop`.
    DirtyStop,
}

/// Reads a case; `None` if there is not even a setup.
pub fn parse(data: &[u8]) -> Option<(Setup, Vec<Op>)> {
    let mut u = Unstructured::new(data);
    let setup = Setup::arbitrary(&mut u).ok()?;
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    Some((setup, ops))
}

/// The bytes [`parse`] reads as this case (for seeds; the generator checks the round trip).
pub fn encode(setup: &Setup, ops: &[Op]) -> Vec<u8> {
    fn variant(out: &mut Vec<u8>, index: u64, count: u64) {
        // arbitrary picks variant (x * count) >> 32 for a u32 x.
        let x = (index << 32).div_ceil(count);
        out.extend_from_slice(&(x as u32).to_le_bytes());
    }
    let mut out = vec![setup.window, setup.max_entries];
    for op in ops {
        match *op {
            Op::Map {
                page,
                pages,
                prot,
                kind,
                offset_pages,
                flaw,
                fill,
            } => {
                variant(&mut out, 0, 9);
                out.extend_from_slice(&[page, pages, prot]);
                variant(&mut out, kind as u64, 3);
                out.push(offset_pages);
                variant(&mut out, flaw as u64, 6);
                out.push(fill);
            }
            Op::Unmap { page, pages, flaw } => {
                variant(&mut out, 1, 9);
                out.extend_from_slice(&[page, pages, flaw]);
            }
            Op::UnmapAll => variant(&mut out, 2, 9),
            Op::UnmapDirty { page, pages } => {
                variant(&mut out, 3, 9);
                out.extend_from_slice(&[page, pages]);
            }
            Op::Read { at, len, device } => {
                variant(&mut out, 4, 9);
                out.extend_from_slice(&at.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.push(device as u8);
            }
            Op::Write {
                at,
                len,
                device,
                fill,
            } => {
                variant(&mut out, 5, 9);
                out.extend_from_slice(&at.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&[device as u8, fill]);
            }
            Op::DirtyStart { size } => {
                variant(&mut out, 6, 9);
                out.push(size);
            }
            Op::DirtyReport { page, pages, other } => {
                variant(&mut out, 7, 9);
                out.extend_from_slice(&[page, pages, other as u8]);
            }
            Op::DirtyStop => variant(&mut out, 8, 9),
        }
    }
    out
}

/// Runs a case; panics where the container and the model disagree.
pub fn run(data: &[u8]) {
    let Some((setup, ops)) = parse(data) else {
        return;
    };
    let mut h = Harness::new(setup);
    for (step, op) in ops.iter().enumerate() {
        h.step = step;
        h.run(op);
    }
}

// ---------------------------------------------------------------------------------------------
// Memory the test owns.

fn memfd(name: &str) -> File {
    let name = CString::new(name).unwrap();
    // SAFETY: a valid NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: the descriptor is new and owned by nobody else.
    unsafe { File::from_raw_fd(fd) }
}

/// Memory with no host address: `dma_rw` must go through `read_at`/`write_at`. An access
/// outside it fails the case.
#[derive(Debug)]
struct MsgMemory {
    bytes: Mutex<Vec<u8>>,
}

impl MsgMemory {
    fn range(&self, offset: u64, len: usize) -> std::ops::Range<usize> {
        let n = self.bytes.lock().unwrap().len();
        let start = offset as usize;
        assert!(
            start <= n && len <= n - start,
            "vdma accessed [{offset:#x}, +{len:#x}) of a memory of {n:#x} bytes"
        );
        start..start + len
    }
}

impl Memory for MsgMemory {
    fn len(&self) -> u64 {
        self.bytes.lock().unwrap().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> vdma::Result<()> {
        let r = self.range(offset, buf.len());
        buf.copy_from_slice(&self.bytes.lock().unwrap()[r]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> vdma::Result<()> {
        let r = self.range(offset, buf.len());
        self.bytes.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(0x9e37_79b9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The model next to the container.

/// Where a mapping's bytes really are.
enum Real {
    Owned(Arc<OwnedMemory>, u64),
    /// Offset in the case's memfd.
    File(u64),
    Msg(Arc<MsgMemory>, u64),
}

struct Mapped {
    size: u64,
    prot: Prot,
    data: Vec<u8>,
    real: Real,
    /// Tracking pages written since the last report that covered this mapping.
    dirty: BTreeSet<u64>,
}

impl Mapped {
    fn last(&self, start: u64) -> u64 {
        start + (self.size - 1)
    }
}

/// The model's verdict on an access.
enum Verdict {
    /// Success: `(mapping start, first iova, last iova)` in order.
    Ok(Vec<(u64, u64, u64)>),
    /// Failure with one of `allowed`; a hole error must name `first_hole`.
    Err {
        allowed: BTreeSet<i32>,
        first_hole: Option<u64>,
    },
}

struct Harness {
    base: u64,
    max_entries: usize,
    space: Container,
    group: GroupHandle,
    device: DeviceHandle,
    file: File,
    file_len: u64,
    file_next: u64,
    model: BTreeMap<u64, Mapped>,
    /// The tracking page shift, while tracking.
    tracking: Option<u32>,
    step: usize,
}

fn errno<T>(r: &vdma::Result<T>) -> Result<&T, i32> {
    r.as_ref().map_err(Error::errno)
}

impl Harness {
    fn new(setup: Setup) -> Harness {
        let base = match setup.window % 3 {
            0 => 0,
            1 => 1 << 40,
            _ => 0u64.wrapping_sub(WINDOW_PAGES * PS),
        };
        let max_entries = 2 + usize::from(setup.max_entries % 7);
        let space = Container::new(Config {
            page_size: PS,
            max_entries,
            ..Config::default()
        })
        .unwrap();
        space.attach_group(GroupId(1)).unwrap();
        space
            .add_device(GroupId(1), DeviceId::new("0000:00:01.0"))
            .unwrap();
        let group = space.group_handle(GroupId(1)).unwrap();
        let device = space.device_handle(&DeviceId::new("0000:00:01.0")).unwrap();
        Harness {
            base,
            max_entries,
            space,
            group,
            device,
            file: memfd("vdma-fuzz"),
            file_len: 0,
            file_next: 0,
            model: BTreeMap::new(),
            tracking: None,
            step: 0,
        }
    }

    fn real_bytes(&self, m: &Mapped) -> Vec<u8> {
        let mut buf = vec![0u8; m.size as usize];
        match &m.real {
            Real::Owned(mem, off) => mem.read_at(*off, &mut buf).unwrap(),
            Real::Msg(mem, off) => mem.read_at(*off, &mut buf).unwrap(),
            Real::File(off) => self.file.read_exact_at(&mut buf, *off).unwrap(),
        }
        buf
    }

    fn check_contents(&self, what: &str) {
        for (&start, m) in &self.model {
            let real = self.real_bytes(m);
            if real != m.data {
                let at = real.iter().zip(&m.data).position(|(a, b)| a != b).unwrap();
                panic!(
                    "step {}: after {what}, the mapping at {start:#x} holds {:#04x} at iova {:#x}, \
                     the model {:#04x}",
                    self.step,
                    real[at],
                    start + at as u64,
                    m.data[at]
                );
            }
        }
    }

    fn check_mappings(&self) {
        let real: Vec<(u64, u64, Prot)> = self
            .space
            .mappings()
            .iter()
            .map(|i| (i.iova.0, i.size, i.prot))
            .collect();
        let model: Vec<(u64, u64, Prot)> = self
            .model
            .iter()
            .map(|(&s, m)| (s, m.size, m.prot))
            .collect();
        assert_eq!(real, model, "step {}: mappings differ", self.step);
    }

    // --- the model's rules ---

    fn expect_map(&self, iova: u64, size: u64, offset: u64, prot: Prot, backing_len: u64) -> i32 {
        if size == 0
            || !iova.is_multiple_of(PS)
            || !size.is_multiple_of(PS)
            || !offset.is_multiple_of(PS)
            || prot.is_empty()
        {
            return libc::EINVAL;
        }
        let Some(last) = iova.checked_add(size - 1) else {
            return libc::EINVAL;
        };
        if self
            .model
            .iter()
            .any(|(&s, m)| s <= last && iova <= m.last(s))
        {
            return libc::EEXIST;
        }
        if self.model.len() >= self.max_entries {
            return libc::ENOSPC;
        }
        if !matches!(offset.checked_add(size), Some(end) if end <= backing_len) {
            return libc::EINVAL;
        }
        0
    }

    /// The starts of the mappings `[start, last]` removes, or EINVAL if one straddles an end.
    fn expect_remove(&self, start: u64, last: u64) -> Result<Vec<u64>, i32> {
        for (&s, m) in &self.model {
            let overlaps = s <= last && start <= m.last(s);
            if overlaps && (s < start || m.last(s) > last) {
                return Err(libc::EINVAL);
            }
        }
        Ok(self.model.range(start..=last).map(|(&s, _)| s).collect())
    }

    /// `iova` and `size` as `unmap` checks them: the last iova, or EINVAL.
    fn range_last(iova: u64, size: u64) -> Result<u64, i32> {
        if size == 0 || !iova.is_multiple_of(PS) || !size.is_multiple_of(PS) {
            return Err(libc::EINVAL);
        }
        iova.checked_add(size - 1).ok_or(libc::EINVAL)
    }

    fn expect_access(&self, iova: u64, len: usize, need: Prot) -> Verdict {
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
                .model
                .range(..=at)
                .next_back()
                .filter(|(&s, m)| m.last(s) >= at);
            let Some((&s, m)) = covering else {
                problems.push(libc::EINVAL);
                first_hole.get_or_insert(at);
                match self.model.range(at..).next() {
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

    fn check_access_error(&self, what: &str, err: &Error, verdict: &Verdict) {
        match verdict {
            Verdict::Ok(_) => panic!(
                "step {}: {what} failed with {err} (errno {}), the model says it succeeds",
                self.step,
                err.errno()
            ),
            Verdict::Err {
                allowed,
                first_hole,
            } => {
                assert!(
                    allowed.contains(&err.errno()),
                    "step {}: {what} failed with {err} (errno {}), the model allows {allowed:?}",
                    self.step,
                    err.errno()
                );
                if let Error::NotMapped { iova } = err {
                    assert_eq!(
                        Some(iova.0),
                        *first_hole,
                        "step {}: {what} must name the first unmapped iova",
                        self.step
                    );
                }
            }
        }
    }

    /// A page of the window (`page mod 18`, from one page before it), and `1 + pages mod 8`
    /// pages.
    fn range(&self, page: u8, pages: u8) -> (u64, u64) {
        let iova = self
            .base
            .wrapping_add((u64::from(page % 18)).wrapping_sub(1).wrapping_mul(PS));
        (iova, (1 + u64::from(pages % 8)) * PS)
    }

    fn dma(&self, device: bool, iova: u64, buf: &mut [u8], dir: Direction) -> vdma::Result<()> {
        if device {
            self.device.dma_rw(Iova(iova), buf, dir)
        } else {
            self.group.dma_rw(Iova(iova), buf, dir)
        }
    }

    /// Removes what the container removed and checks the byte count.
    fn removed(&mut self, what: &str, got: &vdma::Result<u64>, want: &Result<Vec<u64>, i32>) {
        match (errno(got), want) {
            (Ok(&bytes), Ok(starts)) => {
                let mut sum = 0;
                for s in starts {
                    sum += self.model.remove(s).unwrap().size;
                }
                assert_eq!(
                    bytes, sum,
                    "step {}: {what} removed a different size",
                    self.step
                );
            }
            (got, want) => assert_eq!(
                got.map(|_| ()),
                want.as_ref().map(|_| ()).map_err(|e| *e),
                "step {}: {what}",
                self.step
            ),
        }
        self.check_mappings();
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::Map {
                page,
                pages,
                prot,
                kind,
                offset_pages,
                flaw,
                fill,
            } => self.map(page, pages, prot, kind, offset_pages, flaw, fill),
            Op::Unmap { page, pages, flaw } => {
                let (mut iova, mut size) = self.range(page, pages);
                match flaw % 8 {
                    5 => size = 0,
                    6 => iova = iova.wrapping_add(1 + u64::from(page) * 13),
                    7 => size += 1 + u64::from(pages) * 11,
                    _ => {}
                }
                let want = Self::range_last(iova, size).and_then(|l| self.expect_remove(iova, l));
                let got = self.space.unmap(Iova(iova), size);
                self.removed(&format!("unmap({iova:#x}, {size:#x})"), &got, &want);
            }
            Op::UnmapAll => {
                let want = self.expect_remove(0, u64::MAX);
                let got = self.space.unmap_all();
                self.removed("unmap_all()", &got, &want);
            }
            Op::UnmapDirty { page, pages } => self.unmap_dirty(page, pages),
            Op::Read { at, len, device } => self.read(at, len, device),
            Op::Write {
                at,
                len,
                device,
                fill,
            } => self.write(at, len, device, fill),
            Op::DirtyStart { size } => {
                let page_size = match size % 5 {
                    3 => 2048,
                    4 => 5000,
                    k => PS << k,
                };
                let shift = page_size.trailing_zeros();
                let want = if !page_size.is_power_of_two() || page_size < PS {
                    Err(libc::EINVAL)
                } else {
                    match self.tracking {
                        Some(s) if s != shift => Err(libc::EINVAL),
                        _ => Ok(()),
                    }
                };
                let got = self.space.dirty_start(page_size).map_err(|e| e.errno());
                assert_eq!(got, want, "step {}: dirty_start({page_size})", self.step);
                if want.is_ok() && self.tracking.is_none() {
                    self.tracking = Some(shift);
                    for m in self.model.values_mut() {
                        m.dirty.clear();
                    }
                }
            }
            Op::DirtyReport { page, pages, other } => self.report(page, pages, other),
            Op::DirtyStop => {
                self.space.dirty_stop().unwrap();
                self.tracking = None;
                for m in self.model.values_mut() {
                    m.dirty.clear();
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn map(
        &mut self,
        page: u8,
        pages: u8,
        prot: u8,
        kind: Kind,
        offset_pages: u8,
        flaw: Flaw,
        fill: u8,
    ) {
        let mut iova = self.base.wrapping_add(u64::from(page % 16) * PS);
        let mut size = (1 + u64::from(pages % 4)) * PS;
        let mut offset = u64::from(offset_pages % 3) * PS;
        let off = 1 + u64::from(fill) * 16 % (PS - 1);
        match flaw {
            Flaw::ZeroSize => size = 0,
            Flaw::IovaOff => iova = iova.wrapping_add(off),
            Flaw::SizeOff => size += off,
            Flaw::OffsetOff => offset += off,
            Flaw::None | Flaw::Short => {}
        }
        let short = flaw == Flaw::Short;
        let prot = Prot::from_bits(prot % 4).unwrap();
        let (backing, backing_len, real, data) = match kind {
            Kind::Owned | Kind::Msg => {
                let len = (offset + size - u64::from(short)).max(1);
                let bytes = pattern(fill, len as usize);
                let data = bytes
                    .get(offset as usize..(offset + size) as usize)
                    .map(<[u8]>::to_vec);
                if kind == Kind::Owned {
                    let mem = Arc::new(OwnedMemory::new(len as usize).unwrap());
                    mem.write_at(0, &bytes).unwrap();
                    let backing = Backing::memory(mem.clone(), offset);
                    (backing, len, Real::Owned(mem, offset), data)
                } else {
                    let mem = Arc::new(MsgMemory {
                        bytes: Mutex::new(bytes),
                    });
                    let backing = Backing::memory(mem.clone(), offset);
                    (backing, len, Real::Msg(mem, offset), data)
                }
            }
            Kind::File => {
                let foff = if short {
                    // Past the end of the file: nothing there to back it.
                    self.file_next.max(self.file_len).next_multiple_of(PS) + offset
                } else {
                    self.file_next + offset
                };
                let mut data = None;
                if !short {
                    if self.file_len < foff + size {
                        self.file_len = foff + size;
                        self.file.set_len(self.file_len).unwrap();
                    }
                    let bytes = pattern(fill, size as usize);
                    self.file.write_all_at(&bytes, foff).unwrap();
                    data = Some(bytes);
                }
                self.file_next = (foff + size).next_multiple_of(PS) + PS;
                let backing = Backing::file(&self.file, foff);
                (backing, self.file_len, Real::File(foff), data)
            }
        };
        let want = self.expect_map(iova, size, backing.offset(), prot, backing_len);
        let got = self.space.map(Iova(iova), size, backing, prot);
        assert_eq!(
            errno(&got).err().unwrap_or(0),
            want,
            "step {}: map({iova:#x}, {size:#x}, {kind:?} offset {offset:#x}, {prot:?}): {got:?}",
            self.step
        );
        if got.is_ok() {
            let data = data.expect("a map the model accepts has its bytes");
            self.model.insert(
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
        self.check_mappings();
    }

    fn access(&self, at: u16, len: u16) -> (u64, usize) {
        let iova = self
            .base
            .wrapping_add(u64::from(at) % ((WINDOW_PAGES + 1) * PS));
        (iova, usize::from(len) % (3 * PS as usize))
    }

    fn read(&mut self, at: u16, len: u16, device: bool) {
        let (iova, len) = self.access(at, len);
        let verdict = self.expect_access(iova, len, Prot::READ);
        let mut buf = vec![UNTOUCHED; len];
        let r = self.dma(device, iova, &mut buf, Direction::Read);
        let what = format!("read({iova:#x}, {len:#x})");
        match (&r, &verdict) {
            (Ok(()), Verdict::Ok(pieces)) => {
                let mut want = Vec::with_capacity(len);
                for &(s, from, to) in pieces {
                    want.extend_from_slice(
                        &self.model[&s].data[(from - s) as usize..=(to - s) as usize],
                    );
                }
                if buf != want {
                    let at = buf.iter().zip(&want).position(|(a, b)| a != b).unwrap();
                    panic!(
                        "step {}: {what} read {:#04x} at iova {:#x}, the model has {:#04x}",
                        self.step,
                        buf[at],
                        iova + at as u64,
                        want[at]
                    );
                }
            }
            (Ok(()), Verdict::Err { allowed, .. }) => panic!(
                "step {}: {what} succeeded, the model expects errno {allowed:?}",
                self.step
            ),
            (Err(e), v) => {
                self.check_access_error(&what, e, v);
                assert!(
                    buf.iter().all(|&b| b == UNTOUCHED),
                    "step {}: the failed {what} changed the buffer",
                    self.step
                );
            }
        }
    }

    fn write(&mut self, at: u16, len: u16, device: bool, fill: u8) {
        let (iova, len) = self.access(at, len);
        let verdict = self.expect_access(iova, len, Prot::WRITE);
        let mut buf = pattern(fill.wrapping_add(0x55), len);
        let sent = buf.clone();
        let r = self.dma(device, iova, &mut buf, Direction::Write);
        let what = format!("write({iova:#x}, {len:#x})");
        assert!(buf == sent, "step {}: {what} changed its buffer", self.step);
        match (&r, &verdict) {
            (Ok(()), Verdict::Ok(pieces)) => {
                let mut done = 0;
                for &(s, from, to) in pieces {
                    let m = self.model.get_mut(&s).unwrap();
                    let n = (to - from + 1) as usize;
                    let o = (from - s) as usize;
                    m.data[o..o + n].copy_from_slice(&sent[done..done + n]);
                    done += n;
                    if let Some(shift) = self.tracking {
                        m.dirty.extend(from >> shift..=to >> shift);
                    }
                }
            }
            (Ok(()), Verdict::Err { allowed, .. }) => panic!(
                "step {}: {what} succeeded, the model expects errno {allowed:?}",
                self.step
            ),
            (Err(e), v) => self.check_access_error(&what, e, v),
        }
        self.check_contents(&what);
    }

    /// The dirty pages of the mappings starting at `starts`, relative to `iova`, cleared.
    fn take_dirty(&mut self, starts: &[u64], iova: u64, shift: u32) -> BTreeSet<u64> {
        let base = iova >> shift;
        let mut bits = BTreeSet::new();
        for s in starts {
            let m = self.model.get_mut(s).unwrap();
            bits.extend(m.dirty.iter().map(|p| p - base));
            m.dirty.clear();
        }
        bits
    }

    fn check_bitmap(&self, what: &str, got: &vdma::Bitmap, pages: u64, want: &BTreeSet<u64>) {
        assert_eq!(
            got.pages(),
            pages,
            "step {}: {what}: bitmap size",
            self.step
        );
        let bits: BTreeSet<u64> = got.iter_set().collect();
        assert_eq!(&bits, want, "step {}: {what}: dirty pages", self.step);
    }

    fn unmap_dirty(&mut self, page: u8, pages: u8) {
        let (iova, size) = self.range(page, pages);
        let what = format!("unmap_dirty({iova:#x}, {size:#x})");
        let got = self.space.unmap_dirty(Iova(iova), size);
        let last = match (Self::range_last(iova, size), self.tracking) {
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(libc::EINVAL),
            (Ok(last), Some(shift)) => {
                let mask = (1u64 << shift) - 1;
                if iova & mask != 0 || size & mask != 0 {
                    Err(libc::EINVAL)
                } else {
                    Ok(last)
                }
            }
        };
        let want = last.and_then(|last| self.expect_remove(iova, last));
        match (got, want) {
            (Ok((bytes, bitmap)), Ok(starts)) => {
                let shift = self.tracking.unwrap();
                let bits = self.take_dirty(&starts, iova, shift);
                self.check_bitmap(&what, &bitmap, size >> shift, &bits);
                let mut sum = 0;
                for s in &starts {
                    sum += self.model.remove(s).unwrap().size;
                }
                assert_eq!(
                    bytes, sum,
                    "step {}: {what} removed a different size",
                    self.step
                );
            }
            (got, want) => assert_eq!(
                got.map(|_| ()).map_err(|e| e.errno()),
                want.map(|_| ()),
                "step {}: {what}",
                self.step
            ),
        }
        self.check_mappings();
    }

    fn report(&mut self, page: u8, pages: u8, other: bool) {
        let (iova, size) = self.range(page, pages);
        let page_size = self.tracking.map_or(PS, |s| 1 << s) << u32::from(other);
        let what = format!("dirty_report({iova:#x}, {size:#x}, {page_size:#x})");
        let got = self.space.dirty_report(Iova(iova), size, page_size);
        let want = match self.tracking {
            None => Err(libc::EINVAL),
            Some(_) if other => Err(libc::EINVAL),
            Some(shift) => {
                let mask = (1u64 << shift) - 1;
                if iova & mask != 0 || size & mask != 0 {
                    Err(libc::EINVAL)
                } else {
                    match iova.checked_add(size - 1) {
                        None => Err(libc::EINVAL),
                        Some(last) => self.expect_remove(iova, last),
                    }
                }
            }
        };
        match (got, want) {
            (Ok(bitmap), Ok(starts)) => {
                let shift = self.tracking.unwrap();
                let bits = self.take_dirty(&starts, iova, shift);
                self.check_bitmap(&what, &bitmap, size >> shift, &bits);
            }
            (got, want) => assert_eq!(
                got.map(|_| ()).map_err(|e| e.errno()),
                want.map(|_| ()),
                "step {}: {what}",
                self.step
            ),
        }
    }
}
