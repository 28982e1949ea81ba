//! The `core_ops` target: arbitrary sequences of `map`, `unmap`, `unmap_all`, `unmap_dirty`,
//! reads, writes and dirty tracking (`dirty_start`, `dirty_report`, `dirty_stop`) against a
//! real [`Container`] and the reference model of `crates/vdma-model` (semantics §1, §3, §5),
//! the one `crates/vdma/tests/model.rs` uses. After every operation both agree on the
//! result (the value or the errno; every access is preceded by a `check` of its range, which
//! must give the access's result), the bytes read, the list of mappings, the dirty bitmaps,
//! and (after every write) the bytes in every mapping's memory, read straight from the memory.
//!
//! The IOVAs lie in a window of 16 pages at 0, at 2^40, or at the very top of the space (the
//! last page ends at 2^64). Memory is owned (`OwnedMemory`), a region of one memfd per case
//! (`Backing::file`), or memory without a host address reached through `read_at`/`write_at`.
//!
//! Input format: a [`Setup`], then [`Op`]s until the data runs out (at most [`MAX_OPS`]), each
//! read with the `arbitrary` crate. [`encode`] is the inverse, for writing seeds.

use std::fmt;

use arbitrary::{Arbitrary, Unstructured};
use vdma::{
    Config, Container, DeviceHandle, DeviceId, Direction, GroupHandle, GroupId, Iova, IovaRange,
    Prot,
};
use vdma_model::{check_bitmap, Memories, MemoryKind, Model, Verdict};

/// The address space's page size.
pub const PS: u64 = 4096;
/// Pages in the window.
pub const WINDOW_PAGES: u64 = 16;
/// Most operations of one case.
pub const MAX_OPS: usize = 64;
/// What a failed read must leave in the buffer.
const UNTOUCHED: u8 = 0xa5;
/// Reads and writes are shorter than this (3 pages).
const ACCESS_MAX: usize = 3 * PS as usize;

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
// The model next to the container.

/// A description made only when it is printed (when a check fails): made for every operation,
/// the strings cost more than some of the operations.
struct Lazy<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Lazy<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

/// The longest pattern a case asks for: a memory's `offset + size` stays under 8 pages (with
/// either flaw), a write under 3.
const PATTERN_CACHED: usize = 8 * PS as usize;

/// The first `len` bytes of the stream `seed` picks. Each stream is made once per process:
/// made byte by byte, under the coverage instrumentation, it cost more than everything else
/// a case does.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    static STREAMS: [std::sync::OnceLock<Box<[u8]>>; 256] =
        [const { std::sync::OnceLock::new() }; 256];
    if len > PATTERN_CACHED {
        return stream(seed, len);
    }
    let stream = STREAMS[usize::from(seed)].get_or_init(|| stream(seed, PATTERN_CACHED).into());
    stream[..len].to_vec()
}

fn stream(seed: u8, len: usize) -> Vec<u8> {
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

struct Harness {
    base: u64,
    space: Container,
    group: GroupHandle,
    device: DeviceHandle,
    memories: Memories,
    model: Model,
    step: usize,
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
            space,
            group,
            device,
            memories: Memories::new("vdma-fuzz", PS),
            model: Model::new(PS, max_entries, vec![IovaRange::ALL]),
            step: 0,
        }
    }

    /// Panics with `what`, the step and why, if `r` says the container and the model differ.
    #[track_caller]
    fn check(&self, what: &dyn fmt::Display, r: Result<(), String>) {
        if let Err(why) = r {
            panic!("step {}: {what}: {why}", self.step);
        }
    }

    fn check_mappings(&self) {
        self.check(&"mappings", self.model.check_mappings(&self.space));
    }

    /// A page of the window (`page mod 18`, from one page before it), and `1 + pages mod 8`
    /// pages.
    fn range(&self, page: u8, pages: u8) -> (u64, u64) {
        let iova = self
            .base
            .wrapping_add((u64::from(page % 18)).wrapping_sub(1).wrapping_mul(PS));
        (iova, (1 + u64::from(pages % 8)) * PS)
    }

    /// The access, after a `check` of the same range that must give the same result (the model
    /// has no faults).
    fn dma(&self, device: bool, iova: u64, buf: &mut [u8], dir: Direction) -> vdma::Result<()> {
        let (checked, r) = if device {
            let checked = self.device.check(Iova(iova), buf.len(), dir);
            (checked, self.device.dma_rw(Iova(iova), buf, dir))
        } else {
            let checked = self.group.check(Iova(iova), buf.len(), dir);
            (checked, self.group.dma_rw(Iova(iova), buf, dir))
        };
        let same = match (&checked, &r) {
            (Ok(()), Ok(())) => true,
            (Err(a), Err(b)) => a.errno() == b.errno() && a.to_string() == b.to_string(),
            _ => false,
        };
        assert!(
            same,
            "step {}: check({iova:#x}, {:#x}, {dir:?}) gave {checked:?}, the access {r:?}",
            self.step,
            buf.len()
        );
        r
    }

    /// Removes what the container removed and checks the byte count.
    fn removed(
        &mut self,
        what: &dyn fmt::Display,
        got: &vdma::Result<u64>,
        want: &Result<Vec<u64>, i32>,
    ) {
        match (got, want) {
            (Ok(bytes), Ok(starts)) => {
                let sum = self.model.remove(starts);
                assert_eq!(
                    *bytes, sum,
                    "step {}: {what} removed a different size",
                    self.step
                );
            }
            (got, want) => assert_eq!(
                got.as_ref().map(|_| ()).map_err(|e| e.errno()),
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
                let want = self.model.expect_unmap(iova, size);
                let got = self.space.unmap(Iova(iova), size);
                let what = Lazy(|f| write!(f, "unmap({iova:#x}, {size:#x})"));
                self.removed(&what, &got, &want);
            }
            Op::UnmapAll => {
                let want = self.model.expect_unmap_all();
                let got = self.space.unmap_all();
                self.removed(&"unmap_all()", &got, &want);
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
                let got = self.space.dirty_start(page_size).map_err(|e| e.errno());
                let want = self.model.dirty_start(page_size);
                assert_eq!(got, want, "step {}: dirty_start({page_size})", self.step);
            }
            Op::DirtyReport { page, pages, other } => self.report(page, pages, other),
            Op::DirtyStop => {
                self.space.dirty_stop().unwrap();
                self.model.dirty_stop();
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
        let prot = Prot::from_bits(prot % 4).unwrap();
        let memory = match kind {
            Kind::Owned => MemoryKind::Owned,
            Kind::File => MemoryKind::File,
            Kind::Msg => MemoryKind::Msg,
        };
        let made = self
            .memories
            .make(memory, offset, size, flaw == Flaw::Short, |n| {
                pattern(fill, n)
            });
        let want = self
            .model
            .expect_map(iova, size, made.backing.offset(), prot, made.backing_len);
        let got = self.space.map(Iova(iova), size, made.backing, prot);
        assert_eq!(
            got.as_ref().err().map_or(0, |e| e.errno()),
            want,
            "step {}: map({iova:#x}, {size:#x}, {kind:?} offset {offset:#x}, {prot:?}): {got:?}",
            self.step
        );
        if got.is_ok() {
            let data = made.data.expect("a map the model accepts has its bytes");
            self.model.insert(iova, size, prot, data, made.real);
        }
        self.check_mappings();
    }

    fn access(&self, at: u16, len: u16) -> (u64, usize) {
        let iova = self
            .base
            .wrapping_add(u64::from(at) % ((WINDOW_PAGES + 1) * PS));
        (iova, usize::from(len) % ACCESS_MAX)
    }

    fn read(&mut self, at: u16, len: u16, device: bool) {
        let (iova, len) = self.access(at, len);
        let verdict = self.model.expect_access(iova, len, Prot::READ, false);
        let mut buf = vec![UNTOUCHED; len];
        let r = self.dma(device, iova, &mut buf, Direction::Read);
        let what = Lazy(|f| write!(f, "read({iova:#x}, {len:#x})"));
        match (&r, &verdict) {
            (Ok(()), Verdict::Ok(pieces)) => {
                let want = self.model.read(pieces);
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
                self.check(&what, v.check_error(e));
                // One comparison of slices: byte by byte, under the coverage instrumentation,
                // this check cost more than the read.
                static CLEAN: [u8; ACCESS_MAX] = [UNTOUCHED; ACCESS_MAX];
                assert!(
                    buf[..] == CLEAN[..buf.len()],
                    "step {}: the failed {what} changed the buffer",
                    self.step
                );
            }
        }
    }

    fn write(&mut self, at: u16, len: u16, device: bool, fill: u8) {
        let (iova, len) = self.access(at, len);
        let verdict = self.model.expect_access(iova, len, Prot::WRITE, false);
        let mut buf = pattern(fill.wrapping_add(0x55), len);
        let sent = buf.clone();
        let r = self.dma(device, iova, &mut buf, Direction::Write);
        let what = Lazy(|f| write!(f, "write({iova:#x}, {len:#x})"));
        assert!(buf == sent, "step {}: {what} changed its buffer", self.step);
        match (&r, &verdict) {
            (Ok(()), Verdict::Ok(pieces)) => self.model.write(pieces, &sent),
            (Ok(()), Verdict::Err { allowed, .. }) => panic!(
                "step {}: {what} succeeded, the model expects errno {allowed:?}",
                self.step
            ),
            (Err(e), v) => self.check(&what, v.check_error(e)),
        }
        self.check(
            &Lazy(|f| write!(f, "after {what}")),
            self.model.check_contents(&self.memories),
        );
    }

    fn unmap_dirty(&mut self, page: u8, pages: u8) {
        let (iova, size) = self.range(page, pages);
        let what = Lazy(|f| write!(f, "unmap_dirty({iova:#x}, {size:#x})"));
        let got = self.space.unmap_dirty(Iova(iova), size);
        let want = self.model.expect_unmap_dirty(iova, size);
        match (got, want) {
            (Ok((bytes, bitmap)), Ok(starts)) => {
                let shift = self.model.tracking().unwrap();
                let bits = self.model.take_dirty(&starts, iova);
                self.check(&what, check_bitmap(&bitmap, size >> shift, &bits));
                let sum = self.model.remove(&starts);
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
        let page_size = self.model.tracking().map_or(PS, |s| 1 << s) << u32::from(other);
        let what = Lazy(|f| write!(f, "dirty_report({iova:#x}, {size:#x}, {page_size:#x})"));
        let got = self.space.dirty_report(Iova(iova), size, page_size);
        let want = self.model.expect_report(iova, size, page_size);
        match (got, want) {
            (Ok(bitmap), Ok(starts)) => {
                let shift = self.model.tracking().unwrap();
                let bits = self.model.take_dirty(&starts, iova);
                self.check(&what, check_bitmap(&bitmap, size >> shift, &bits));
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
