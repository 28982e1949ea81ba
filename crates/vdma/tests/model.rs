//! Model-based test of the address space (semantics.md §1–3).
//!
//! The reference model of `crates/vdma-model` (start IOVA to size, protection and contents; the
//! one the `core_ops` fuzz target uses too) and a real [`Container`] run the same random
//! sequences of `map`, `unmap`, `unmap_all`, `dma_rw` reads and writes (through group and
//! device handles, `dma_rw` and `read`/`write`, each after a `check` that must give the
//! access's own result) and `translate`. After every operation both must agree on the result
//! (the `Ok` value or the errno), on the bytes read, on the list of mappings, and after every write on the contents of
//! every mapped memory, read straight from the memory (so a failed write that moved even one
//! byte is caught: all or nothing).
//!
//! The IOVAs of a case lie in a window of 64 pages, so overlaps, adjacency and straddling are
//! frequent. The window sits at 0, in the middle of the space, or at the very top (the last
//! page ends exactly at 2^64), and some cases restrict the valid IOVA ranges. The memory behind
//! a mapping is a fresh `OwnedMemory`, a fresh region of a memfd (`Backing::file`; the host
//! mappings of one file are shared), or memory without a host address that is reached through
//! `read_at`/`write_at` only.
//!
//! Rules as the model has them (`vdma_model::Model`): `map` checks in the order of §1 (zero or misaligned size, iova
//! or offset; empty prot; wrap; overlap EEXIST; entry limit ENOSPC; valid ranges; memory too
//! short), `unmap` follows type1 v2 (zero, misaligned or wrapping: EINVAL; a straddled mapping:
//! EINVAL and nothing removed; else the bytes removed, 0 for an empty range), `dma_rw` and
//! `translate` check zero length (EINVAL) and wrap (EOVERFLOW), then holes (EINVAL, naming the
//! first unmapped iova) and permissions (EPERM) of the whole range before anything moves. The
//! spec does not say which of a hole and a missing permission wins when a range has both; the
//! model accepts the first problem in IOVA order, and EINVAL whenever there is a hole. Segments
//! that `translate` hands out are sometimes kept across later operations: an unmap of a held
//! mapping must then fail with EBUSY (after `Config::busy_timeout`) and remove nothing.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vdma::{
    Backing, Config, Container, DeviceHandle, Direction, Error, GroupHandle, GroupId, Iova,
    IovaRange, Memory, OwnedMemory, Prot, Segments,
};
use vdma_model::{Memories, MemoryKind, Model, Real, Verdict};

mod common;
use common::{group, space, space_with_handles};

/// Pages in the IOVA window of one case.
const WINDOW_PAGES: u64 = 64;

/// What a failed `read` must leave in the caller's buffer: this byte, everywhere.
const UNTOUCHED: u8 = 0xa5;

// ---------------------------------------------------------------------------------------------
// Operations.

/// How a case is set up.
#[derive(Clone, Debug)]
struct Setup {
    page_size: u64,
    /// First IOVA of the window.
    base: u64,
    max_entries: usize,
    /// Valid ranges: two pieces of the window instead of the whole space.
    restricted: bool,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Owned,
    File,
    Msg,
}

/// A deliberate defect of a `map` call.
#[derive(Clone, Copy, Debug)]
enum MapFlaw {
    None,
    ZeroSize,
    IovaOff(u64),
    SizeOff(u64),
    OffsetOff(u64),
    /// The memory is one byte (memory kinds) or more (files) too short.
    Short,
}

/// A deliberate defect of an `unmap` call.
#[derive(Clone, Copy, Debug)]
enum UnmapFlaw {
    None,
    ZeroSize,
    IovaOff(u64),
    SizeOff(u64),
    /// Size 2^64 - page: wraps unless the iova is 0.
    Huge,
}

/// Which handle and which method does the access.
#[derive(Clone, Copy, Debug)]
enum Via {
    GroupDmaRw,
    GroupMethod,
    DeviceDmaRw,
    DeviceMethod,
}

/// Where an access starts.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// At this byte of the window.
    Window(u64),
    /// `delta` bytes from the start (or the end) of the `idx`-th mapping (modulo the number of
    /// mappings; the window if there is none): accesses that hit mappings and cross their
    /// edges.
    Near { idx: usize, end: bool, delta: i64 },
}

/// Where a `map` goes.
#[derive(Clone, Copy, Debug)]
enum MapAt {
    /// At this page of the window.
    Page(u64),
    /// `gap` pages after the end (or before the start) of the `idx`-th mapping (modulo the
    /// number of mappings): adjacent mappings, so that accesses cross from one to the next.
    Next { idx: usize, gap: u64, before: bool },
}

/// The bytes an access covers.
#[derive(Clone, Copy, Debug)]
enum Span {
    Fixed {
        at: Place,
        len: usize,
    },
    /// From `back` bytes before the end of the `idx`-th mapping to `into` bytes into the
    /// `count`-th mapping after it (or past the last one): accesses across mappings.
    Across {
        idx: usize,
        back: u64,
        count: usize,
        into: u64,
    },
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        at: MapAt,
        pages: u64,
        prot: u8,
        kind: Kind,
        offset_pages: u64,
        flaw: MapFlaw,
        seed: u64,
    },
    Unmap {
        page: u64,
        pages: u64,
        flaw: UnmapFlaw,
    },
    /// Unmap of the `count` mappings from the `idx`-th on (modulo the number of mappings), with
    /// `before`/`after` pages more on either side (which may cut a neighbour).
    UnmapSpan {
        idx: usize,
        count: usize,
        before: u64,
        after: u64,
    },
    UnmapAll,
    Read {
        span: Span,
        via: Via,
    },
    Write {
        span: Span,
        via: Via,
        seed: u64,
    },
    Translate {
        span: Span,
        prot: u8,
        device: bool,
        /// Keep the segments until the next `Translate` or `Release`: unmaps of the held
        /// mappings must fail with EBUSY meanwhile.
        hold: bool,
    },
    Release,
}

fn setup_strategy() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![3 => Just(4096u64), 1 => Just(512u64)],
        0..3u8,
        prop_oneof![1 => Just(4usize), 2 => Just(8usize), 1 => Just(64usize)],
        prop::bool::weighted(0.25),
    )
        .prop_map(|(page_size, where_, max_entries, restricted)| Setup {
            page_size,
            base: match where_ {
                0 => 0,
                1 => 1 << 40,
                _ => 0u64.wrapping_sub(WINDOW_PAGES * page_size),
            },
            max_entries,
            restricted,
        })
}

/// A `map`; `clean` ones have no flaw and a permission, and mostly go next to an existing
/// mapping.
fn map_strategy(ps: u64, clean: bool) -> impl Strategy<Value = Op> {
    // Mostly READ|WRITE, so that accesses across several mappings often succeed.
    let prot = prop_oneof![
        if clean { 0 } else { 1 } => Just(0u8),
        3 => Just(1u8),
        3 => Just(2u8),
        8 => Just(3u8),
    ];
    let kind = prop_oneof![Just(Kind::Owned), Just(Kind::File), Just(Kind::Msg)];
    let map_flaw = if clean {
        Just(MapFlaw::None).boxed()
    } else {
        prop_oneof![
            40 => Just(MapFlaw::None),
            1 => Just(MapFlaw::ZeroSize),
            1 => (1..ps).prop_map(MapFlaw::IovaOff),
            1 => (1..ps).prop_map(MapFlaw::SizeOff),
            1 => (1..ps).prop_map(MapFlaw::OffsetOff),
            1 => Just(MapFlaw::Short),
        ]
        .boxed()
    };
    let map_at = prop_oneof![
        1 => (0..WINDOW_PAGES).prop_map(MapAt::Page),
        if clean { 4 } else { 1 } => (
            any::<usize>(),
            prop_oneof![6 => Just(0u64), 1 => 1..=2u64],
            any::<bool>(),
        )
            .prop_map(|(idx, gap, before)| MapAt::Next { idx, gap, before }),
    ];
    (
        map_at,
        1..=8u64,
        prot,
        kind,
        0..=2u64,
        map_flaw,
        any::<u64>(),
    )
        .prop_map(
            |(at, pages, prot, kind, offset_pages, flaw, seed)| Op::Map {
                at,
                pages,
                prot,
                kind,
                offset_pages,
                flaw,
                seed,
            },
        )
}

fn op_strategy(ps: u64) -> impl Strategy<Value = Op> {
    let window = WINDOW_PAGES * ps;
    // Byte offsets in the window: anywhere, or close to a page boundary.
    let ips = ps as i64;
    let at = prop_oneof![
        2 => (0..window + ps).prop_map(Place::Window),
        1 => (0..=WINDOW_PAGES, -3i64..=3)
            .prop_map(move |(p, d)| Place::Window((p * ps).saturating_add_signed(d))),
        5 => (
            any::<usize>(),
            any::<bool>(),
            prop_oneof![0i64..=16, 0..=2 * ips],
            prop::bool::weighted(0.8),
        )
            .prop_map(|(idx, end, delta, inward)| Place::Near {
                idx,
                end,
                // Mostly inside the mapping; sometimes just outside.
                delta: if inward != end { delta } else { -delta },
            }),
    ];
    let len = prop_oneof![
        1 => Just(0usize),
        5 => 1usize..=16,
        5 => 1usize..=2 * ps as usize,
        2 => 1usize..=10 * ps as usize,
    ];
    let unmap_flaw = prop_oneof![
        20 => Just(UnmapFlaw::None),
        1 => Just(UnmapFlaw::ZeroSize),
        1 => (1..ps).prop_map(UnmapFlaw::IovaOff),
        1 => (1..ps).prop_map(UnmapFlaw::SizeOff),
        1 => Just(UnmapFlaw::Huge),
    ];
    let span = prop_oneof![
        3 => (at, len).prop_map(|(at, len)| Span::Fixed { at, len }),
        2 => (
            any::<usize>(),
            prop_oneof![1..=16u64, 1..=2 * ps],
            1..=3usize,
            prop_oneof![1..=16u64, 1..=2 * ps],
        )
            .prop_map(|(idx, back, count, into)| Span::Across {
                idx,
                back,
                count,
                into
            }),
    ];
    let via = prop_oneof![
        Just(Via::GroupDmaRw),
        Just(Via::GroupMethod),
        Just(Via::DeviceDmaRw),
        Just(Via::DeviceMethod),
    ];
    prop_oneof![
        36 => map_strategy(ps, false),
        8 => (0..WINDOW_PAGES, 1..=16u64, unmap_flaw)
            .prop_map(|(page, pages, flaw)| Op::Unmap { page, pages, flaw }),
        5 => (
            any::<usize>(),
            1..=3usize,
            prop_oneof![4 => Just(0u64), 1 => 1..=2u64],
            prop_oneof![4 => Just(0u64), 1 => 1..=2u64],
        )
            .prop_map(|(idx, count, before, after)| Op::UnmapSpan {
                idx,
                count,
                before,
                after
            }),
        2 => Just(Op::UnmapAll),
        20 => (span.clone(), via.clone()).prop_map(|(span, via)| Op::Read { span, via }),
        20 => (span.clone(), via, any::<u64>())
            .prop_map(|(span, via, seed)| Op::Write { span, via, seed }),
        10 => (span, 1u8..=3, any::<bool>(), prop::bool::weighted(0.3)).prop_map(
            |(span, prot, device, hold)| Op::Translate {
                span,
                prot,
                device,
                hold
            }
        ),
        3 => Just(Op::Release),
    ]
}

fn case_strategy() -> impl Strategy<Value = (Setup, Vec<Op>)> {
    setup_strategy().prop_flat_map(|setup| {
        // A few clean maps first, so that the space is seldom empty.
        let prologue = prop::collection::vec(map_strategy(setup.page_size, true), 0..=6);
        let ops = prop::collection::vec(op_strategy(setup.page_size), 40..=58);
        (
            Just(setup),
            (prologue, ops).prop_map(|(mut p, o)| {
                p.extend(o);
                p
            }),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The harness: the model next to the real container.

struct Harness {
    setup: Setup,
    space: Container,
    group: GroupHandle,
    device: DeviceHandle,
    memories: Memories,
    model: Model,
    /// Segments kept from a `Translate` (the model knows which mappings they hold).
    held: Option<Segments>,
    step: usize,
}

fn errno<T>(r: &vdma::Result<T>) -> std::result::Result<&T, i32> {
    r.as_ref().map_err(Error::errno)
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill(&mut bytes[..]);
    bytes
}

impl Harness {
    fn new(setup: Setup) -> Harness {
        let ps = setup.page_size;
        let ranges = if setup.restricted {
            vec![
                IovaRange::new(Iova(setup.base + 4 * ps), Iova(setup.base + (30 * ps - 1))),
                IovaRange::new(Iova(setup.base + 34 * ps), Iova(setup.base + (64 * ps - 1))),
            ]
        } else {
            vec![IovaRange::ALL]
        };
        let (space, group, device) = space_with_handles(
            Config {
                page_size: ps,
                max_entries: setup.max_entries,
                valid_ranges: ranges.clone(),
                busy_timeout: Duration::from_millis(1),
                ..Config::default()
            },
            GroupId(3),
            "0000:00:03.0",
        );
        Harness {
            memories: Memories::new("vdma-model", ps),
            model: Model::new(ps, setup.max_entries, ranges),
            setup,
            space,
            group,
            device,
            held: None,
            step: 0,
        }
    }

    fn ps(&self) -> u64 {
        self.setup.page_size
    }

    /// A failure of the case, if `r` says the container and the model differ.
    fn check(&self, what: &str, r: Result<(), String>) -> Result<(), TestCaseError> {
        r.map_err(|why| TestCaseError::fail(format!("step {}: {what}: {why}", self.step)))
    }

    /// Every mapping's memory holds what the model says.
    fn check_contents(&self, what: &str) -> Result<(), TestCaseError> {
        self.check(
            &format!("after {what}"),
            self.model.check_contents(&self.memories),
        )
    }

    fn check_mappings(&self) -> Result<(), TestCaseError> {
        self.check("mappings", self.model.check_mappings(&self.space))
    }

    /// Drops the held segments, if any.
    fn release(&mut self) {
        self.held = None;
        self.model.release();
    }

    // --- running operations ---

    /// The model's `idx`-th mapping (modulo their number), if there is any.
    fn nth_mapping(&self, idx: usize) -> Option<(&u64, &vdma_model::Mapped)> {
        let n = self.model.mappings.len().max(1);
        self.model.mappings.iter().nth(idx % n)
    }

    fn map_place(&self, at: MapAt, pages: u64) -> u64 {
        let ps = self.ps();
        let base = self.setup.base;
        match at {
            MapAt::Page(p) => base + p * ps,
            MapAt::Next { idx, gap, before } => {
                let Some((&s, m)) = self.nth_mapping(idx) else {
                    return base + (idx as u64 % WINDOW_PAGES) * ps;
                };
                let iova = if before {
                    s.checked_sub((pages + gap) * ps)
                } else {
                    m.last(s).checked_add(1 + gap * ps)
                };
                iova.unwrap_or(base)
            }
        }
    }

    fn span(&self, span: Span) -> (u64, usize) {
        match span {
            Span::Fixed { at, len } => (self.place(at), len),
            Span::Across {
                idx,
                back,
                count,
                into,
            } => {
                let mappings = &self.model.mappings;
                let starts: Vec<u64> = mappings.keys().copied().collect();
                if starts.is_empty() {
                    return (self.setup.base, back as usize);
                }
                let i = idx % starts.len();
                let s = starts[i];
                let end = mappings[&s].last(s) as u128 + 1;
                let from = (end - back.min(mappings[&s].size) as u128) as u64;
                let to = match starts.get(i + count) {
                    Some(&t) => t as u128 + into as u128,
                    None => {
                        let l = starts[starts.len() - 1];
                        mappings[&l].last(l) as u128 + 1 + into as u128
                    }
                };
                (from, (to - from as u128) as usize)
            }
        }
    }

    fn place(&self, place: Place) -> u64 {
        match place {
            Place::Window(at) => self.setup.base.wrapping_add(at),
            Place::Near { idx, end, delta } => {
                let Some((&s, m)) = self.nth_mapping(idx) else {
                    return self
                        .setup
                        .base
                        .wrapping_add((idx as u64 % WINDOW_PAGES) * self.ps())
                        .wrapping_add_signed(delta);
                };
                let at = if end { m.last(s).wrapping_add(1) } else { s };
                at.wrapping_add_signed(delta)
            }
        }
    }

    fn dma(&self, via: Via, iova: Iova, buf: &mut [u8], dir: Direction) -> vdma::Result<()> {
        match (via, dir) {
            (Via::GroupDmaRw, _) => self.group.dma_rw(iova, buf, dir),
            (Via::DeviceDmaRw, _) => self.device.dma_rw(iova, buf, dir),
            (Via::GroupMethod, Direction::Read) => self.group.read(iova, buf),
            (Via::GroupMethod, Direction::Write) => self.group.write(iova, buf),
            (Via::DeviceMethod, Direction::Read) => self.device.read(iova, buf),
            (Via::DeviceMethod, Direction::Write) => self.device.write(iova, buf),
        }
    }

    /// `check` through the handle `via` uses, before the access itself: it must give the
    /// same result as the access then does (the model has no faults).
    fn check_first(&self, via: Via, iova: Iova, len: usize, dir: Direction) -> vdma::Result<()> {
        match via {
            Via::GroupDmaRw | Via::GroupMethod => self.group.check(iova, len, dir),
            Via::DeviceDmaRw | Via::DeviceMethod => self.device.check(iova, len, dir),
        }
    }

    fn same_as_check(
        &self,
        what: &str,
        checked: &vdma::Result<()>,
        r: &vdma::Result<()>,
    ) -> Result<(), TestCaseError> {
        prop_assert!(
            format!("{checked:?}") == format!("{r:?}"),
            "step {}: check before {} gave {:?}, the access {:?}",
            self.step,
            what,
            checked,
            r
        );
        Ok(())
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let ps = self.ps();
        let base = self.setup.base;
        match *op {
            Op::Map {
                at,
                pages,
                prot,
                kind,
                offset_pages,
                flaw,
                seed,
            } => {
                let mut iova = self.map_place(at, pages);
                let mut size = pages * ps;
                let mut offset = offset_pages * ps;
                match flaw {
                    MapFlaw::ZeroSize => size = 0,
                    MapFlaw::IovaOff(d) => iova += d,
                    MapFlaw::SizeOff(d) => size += d,
                    MapFlaw::OffsetOff(d) => offset += d,
                    MapFlaw::None | MapFlaw::Short => {}
                }
                let prot = Prot::from_bits(prot).unwrap();
                let memory = match kind {
                    Kind::Owned => MemoryKind::Owned,
                    Kind::File => MemoryKind::File,
                    Kind::Msg => MemoryKind::Msg,
                };
                let short = matches!(flaw, MapFlaw::Short);
                let made = self
                    .memories
                    .make(memory, offset, size, short, |n| random_bytes(seed, n));
                let expected = self.model.expect_map(
                    iova,
                    size,
                    made.backing.offset(),
                    prot,
                    made.backing_len,
                );
                let r = self.space.map(Iova(iova), size, made.backing, prot);
                prop_assert_eq!(
                    errno(&r).err().unwrap_or(0),
                    expected,
                    "step {}: map({:#x}, {:#x}, offset {:#x}, {:?}) gave {:?}",
                    self.step,
                    iova,
                    size,
                    offset,
                    prot,
                    r
                );
                if r.is_ok() {
                    let data = made.data.expect("a map the model accepts has its bytes");
                    self.model.insert(iova, size, prot, data, made.real);
                }
            }

            Op::Unmap { page, pages, flaw } => {
                let mut iova = base + page * ps;
                let mut size = pages * ps;
                match flaw {
                    UnmapFlaw::None => {}
                    UnmapFlaw::ZeroSize => size = 0,
                    UnmapFlaw::IovaOff(d) => iova += d,
                    UnmapFlaw::SizeOff(d) => size += d,
                    UnmapFlaw::Huge => size = 0u64.wrapping_sub(ps),
                }
                let expected = self.model.expect_unmap(iova, size);
                let r = self.space.unmap(Iova(iova), size);
                self.check_removal(&format!("unmap({iova:#x}, {size:#x})"), r, expected)?;
            }

            Op::UnmapSpan {
                idx,
                count,
                before,
                after,
            } => {
                let mappings = &self.model.mappings;
                let (iova, size) = if mappings.is_empty() {
                    (base, ps)
                } else {
                    let starts: Vec<u64> = mappings.keys().copied().collect();
                    let first = starts[idx % starts.len()];
                    let last_start = starts[(idx % starts.len() + count - 1).min(starts.len() - 1)];
                    let end = mappings[&last_start].last(last_start) as u128 + 1;
                    let from = first.saturating_sub(before * ps);
                    let to = (end + (after * ps) as u128).min(1 << 64);
                    (from, (to - from as u128) as u64)
                };
                let expected = self.model.expect_unmap(iova, size);
                let r = self.space.unmap(Iova(iova), size);
                self.check_removal(&format!("unmap({iova:#x}, {size:#x})"), r, expected)?;
            }

            Op::UnmapAll => {
                let expected = self.model.expect_unmap_all();
                let r = self.space.unmap_all();
                self.check_removal("unmap_all()", r, expected)?;
            }

            Op::Read { span, via } => {
                let (iova, len) = self.span(span);
                let verdict = self.model.expect_access(iova, len, Prot::READ, false);
                let mut buf = vec![UNTOUCHED; len];
                let checked = self.check_first(via, Iova(iova), len, Direction::Read);
                let r = self.dma(via, Iova(iova), &mut buf, Direction::Read);
                let what = format!("read({iova:#x}, {len:#x}) via {via:?}");
                self.same_as_check(&what, &checked, &r)?;
                match (&r, &verdict) {
                    (Ok(()), Verdict::Ok(pieces)) => {
                        let want = self.model.read(pieces);
                        if buf != want {
                            let at = buf.iter().zip(&want).position(|(a, b)| a != b).unwrap();
                            return Err(TestCaseError::fail(format!(
                                "step {}: {what} read {:#04x} at iova {:#x}, the model has {:#04x}",
                                self.step,
                                buf[at],
                                iova + at as u64,
                                want[at]
                            )));
                        }
                    }
                    (Ok(()), Verdict::Err { allowed, .. }) => {
                        return Err(TestCaseError::fail(format!(
                            "step {}: {what} succeeded, the model expects errno {allowed:?}",
                            self.step
                        )))
                    }
                    (Err(e), v) => {
                        self.check(&what, v.check_error(e))?;
                        prop_assert!(
                            buf.iter().all(|&b| b == UNTOUCHED),
                            "step {}: the failed {} changed the buffer",
                            self.step,
                            what
                        );
                    }
                }
            }

            Op::Write { span, via, seed } => {
                let (iova, len) = self.span(span);
                let verdict = self.model.expect_access(iova, len, Prot::WRITE, false);
                let mut buf = random_bytes(seed, len);
                let sent = buf.clone();
                let checked = self.check_first(via, Iova(iova), len, Direction::Write);
                let r = self.dma(via, Iova(iova), &mut buf, Direction::Write);
                let what = format!("write({iova:#x}, {len:#x}) via {via:?}");
                self.same_as_check(&what, &checked, &r)?;
                prop_assert!(
                    buf == sent,
                    "step {}: {} changed its buffer",
                    self.step,
                    what
                );
                match (&r, &verdict) {
                    (Ok(()), Verdict::Ok(pieces)) => self.model.write(pieces, &sent),
                    (Ok(()), Verdict::Err { allowed, .. }) => {
                        return Err(TestCaseError::fail(format!(
                            "step {}: {what} succeeded, the model expects errno {allowed:?}",
                            self.step
                        )))
                    }
                    (Err(e), v) => self.check(&what, v.check_error(e))?,
                }
                self.check_contents(&what)?;
            }

            Op::Translate {
                span,
                prot,
                device,
                hold,
            } => {
                self.release();
                let (iova, len) = self.span(span);
                let prot = Prot::from_bits(prot).unwrap();
                let verdict = self.model.expect_access(iova, len, prot, true);
                let r = if device {
                    self.device.translate(Iova(iova), len, prot)
                } else {
                    self.group.translate(Iova(iova), len, prot)
                };
                let what = format!("translate({iova:#x}, {len:#x}, {prot:?})");
                match (r, &verdict) {
                    (Ok(segs), Verdict::Ok(pieces)) => {
                        self.check_segments(&what, &segs, pieces)?;
                        if hold {
                            self.model.hold(pieces.iter().map(|p| p.0).collect());
                            self.held = Some(segs);
                        }
                    }
                    (Ok(_), Verdict::Err { allowed, .. }) => {
                        return Err(TestCaseError::fail(format!(
                            "step {}: {what} succeeded, the model expects errno {allowed:?}",
                            self.step
                        )))
                    }
                    (Err(e), v) => self.check(&what, v.check_error(&e))?,
                }
            }

            Op::Release => self.release(),
        }
        self.check_mappings()
    }

    fn check_removal(
        &mut self,
        what: &str,
        r: vdma::Result<u64>,
        expected: std::result::Result<Vec<u64>, i32>,
    ) -> Result<(), TestCaseError> {
        let expected_value = expected
            .as_ref()
            .map(|starts| {
                starts
                    .iter()
                    .map(|s| self.model.mappings[s].size)
                    .sum::<u64>()
            })
            .map_err(|&e| e);
        prop_assert_eq!(
            errno(&r).copied(),
            expected_value,
            "step {}: {} gave {:?}",
            self.step,
            what,
            r
        );
        if let Ok(starts) = expected {
            self.model.remove(&starts);
        }
        Ok(())
    }

    fn check_segments(
        &self,
        what: &str,
        segs: &Segments,
        pieces: &[(u64, u64, u64)],
    ) -> Result<(), TestCaseError> {
        let got: Vec<(u64, usize)> = segs.as_slice().iter().map(|s| (s.iova.0, s.len)).collect();
        let want: Vec<(u64, usize)> = pieces
            .iter()
            .map(|&(_, from, to)| (from, (to - from + 1) as usize))
            .collect();
        prop_assert_eq!(got, want, "step {}: {} segments", self.step, what);
        prop_assert_eq!(
            segs.len(),
            pieces
                .iter()
                .map(|p| (p.2 - p.1 + 1) as usize)
                .sum::<usize>()
        );
        for (seg, &(s, from, to)) in segs.as_slice().iter().zip(pieces) {
            let m = &self.model.mappings[&s];
            if let Real::Owned(mem, off) = &m.real {
                let base = mem.host_region().unwrap().base().0;
                prop_assert_eq!(
                    seg.host.0,
                    base + (*off + (from - s)) as usize,
                    "step {}: {} host address",
                    self.step,
                    what
                );
            }
            if m.prot.contains(Prot::READ) {
                let mut bytes = vec![0u8; seg.len];
                // SAFETY: the segments hold their mappings, so the memory stays mapped (readable:
                // the mapping has READ) while `segs` lives; the copy makes no reference into it.
                unsafe {
                    std::ptr::copy_nonoverlapping(seg.host.as_ptr(), bytes.as_mut_ptr(), seg.len)
                };
                prop_assert!(
                    bytes[..] == m.data[(from - s) as usize..=(to - s) as usize],
                    "step {}: {} segment at {:#x} does not show the mapping's bytes",
                    self.step,
                    what,
                    from
                );
            }
        }
        Ok(())
    }

    /// After the last operation: contents, then everything goes.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        self.release();
        self.check_contents("the last operation")?;
        let starts: Vec<u64> = self.model.mappings.keys().copied().collect();
        let r = self.space.unmap_all();
        let total = self.model.remove(&starts);
        prop_assert_eq!(errno(&r).copied(), Ok(total), "final unmap_all");
        self.check_mappings()?;
        for s in starts {
            let mut b = [0u8; 1];
            let r = self.group.read(Iova(s), &mut b);
            prop_assert!(
                matches!(r, Err(Error::NotMapped { iova }) if iova == Iova(s)),
                "read of {:#x} after unmap_all gave {:?}",
                s,
                r
            );
        }
        Ok(())
    }
}

fn run_case(setup: Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new(setup);
    for (i, op) in ops.iter().enumerate() {
        h.step = i;
        h.run(op)?;
    }
    h.finish()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Keep failures reproducible from the printed case, without writing files next to
        // the tests.
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn container_matches_model((setup, ops) in case_strategy()) {
        run_case(setup, &ops)?;
    }
}

// ---------------------------------------------------------------------------------------------
// The edges of the space, deterministic.

/// Memory of 2^63 bytes that reads as a function of the offset and ignores writes: enough to
/// map the whole IOVA space with two mappings.
#[derive(Debug)]
struct Vast;

impl Memory for Vast {
    fn len(&self) -> u64 {
        1 << 63
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> vdma::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (offset + i as u64) as u8;
        }
        Ok(())
    }
    fn write_at(&self, _offset: u64, _buf: &[u8]) -> vdma::Result<()> {
        Ok(())
    }
}

/// A mapping that ends exactly at 2^64 works everywhere (§1 **[differs]**), and an access
/// whose last byte would pass it is EOVERFLOW (§3).
#[test]
fn the_top_of_the_space() {
    let space = space();
    let top = 0u64.wrapping_sub(2 * 4096);
    let mem = Arc::new(OwnedMemory::new(2 * 4096).unwrap());
    // One page past the top wraps.
    let e = space
        .map(
            Iova(top),
            3 * 4096,
            Backing::memory(mem.clone(), 0),
            Prot::READ_WRITE,
        )
        .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    space
        .map(
            Iova(top),
            2 * 4096,
            Backing::memory(mem.clone(), 0),
            Prot::READ_WRITE,
        )
        .unwrap();
    let g = group(&space);

    g.write(Iova(u64::MAX - 3), b"last").unwrap();
    let mut buf = [0u8; 4];
    g.read(Iova(u64::MAX - 3), &mut buf).unwrap();
    assert_eq!(&buf, b"last");
    let mut whole = vec![0u8; 2 * 4096];
    g.read(Iova(top), &mut whole).unwrap();
    assert_eq!(&whole[2 * 4096 - 4..], b"last");

    let mut five = [0u8; 5];
    assert_eq!(
        g.read(Iova(u64::MAX - 3), &mut five).unwrap_err().errno(),
        libc::EOVERFLOW
    );
    assert_eq!(
        g.write(Iova(u64::MAX), &[1, 2]).unwrap_err().errno(),
        libc::EOVERFLOW
    );
    let segs = g.translate(Iova(u64::MAX - 3), 4, Prot::READ).unwrap();
    assert_eq!(segs.as_slice()[0].len, 4);
    drop(segs);
    assert_eq!(
        g.translate(Iova(u64::MAX - 3), 5, Prot::READ)
            .unwrap_err()
            .errno(),
        libc::EOVERFLOW
    );

    // Unmap that wraps: EINVAL, nothing removed; the exact range: removed.
    assert_eq!(
        space.unmap(Iova(top), 3 * 4096).unwrap_err().errno(),
        libc::EINVAL
    );
    assert_eq!(space.unmap(Iova(top), 2 * 4096).unwrap(), 2 * 4096);
    assert!(space.mappings().is_empty());
}

/// Two mappings of 2^63 bytes cover every IOVA; accesses across the middle and up to the last
/// byte work, and `unmap_all` removes them (its byte count, 2^64, does not fit a u64; it must
/// not panic).
#[test]
fn the_whole_space_in_two_mappings() {
    let space = space();
    let half = 1u64 << 63;
    space
        .map(
            Iova(0),
            half,
            Backing::memory(Arc::new(Vast), 0),
            Prot::READ_WRITE,
        )
        .unwrap();
    space
        .map(
            Iova(half),
            half,
            Backing::memory(Arc::new(Vast), 0),
            Prot::READ,
        )
        .unwrap();
    let g = group(&space);

    let mut buf = [0u8; 8];
    g.read(Iova(half - 4), &mut buf).unwrap();
    assert_eq!(buf, [0xfc, 0xfd, 0xfe, 0xff, 0, 1, 2, 3]);
    g.read(Iova(u64::MAX - 7), &mut buf).unwrap();
    assert_eq!(buf, [0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff]);
    // Write across the middle: the upper half is read-only, so EPERM and nothing moves.
    assert_eq!(
        g.write(Iova(half - 4), &buf).unwrap_err().errno(),
        libc::EPERM
    );

    let removed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| space.unmap_all()));
    assert!(
        matches!(removed, Ok(Ok(_))),
        "unmap_all of two 2^63-byte mappings panicked or failed: {removed:?}"
    );
    assert!(space.mappings().is_empty());
}
