//! Concurrency (semantics.md §1 "when `unmap` returns…", §2, §3 "Concurrency").
//!
//! - `dma_rw` from several threads on stable mappings, while another thread maps and unmaps
//!   other ranges: every access succeeds and every read returns what the model says.
//! - The unmap rule, with canaries: memory the test owns is mapped, writers hammer it, the main
//!   thread unmaps it, then at once fills it with a canary and waits while the writers keep
//!   trying. A single byte that lands after `unmap` returned breaks the canary. Variants: one
//!   mapping and `unmap`; several mappings (one access crossing two) and one `unmap_all`; a
//!   memfd.
//! - Group and device handles shared by many threads at once (they are `Send + Sync`, checked at
//!   compile time), handles taken and dropped on other threads, `detach_group` refused while
//!   any lives.
//! - `map`/`unmap` racing `translate` and `dma_rw` of the same range: a translation either fails
//!   cleanly (EINVAL, EAGAIN) or gives segments whose memory stays mapped and unchanged while
//!   they are held.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vdma::{
    Backing, Config, Container, DeviceHandle, DeviceId, Direction, Error, GroupHandle, GroupId,
    Iova, Memory, OwnedMemory, Prot,
};

mod common;
use common::{memfd, space_with_handles, MsgMemory, Region, P};

/// The device of the spaces here, in group 1.
const DEV: &str = "0000:00:01.0";
const KIB: usize = 1024;

// Handles are made to be shared between threads (semantics §2): checked at compile time.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<GroupHandle>();
    send_sync::<DeviceHandle>();
    send_sync::<Container>();
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// The three kinds of memory, in turn: an owned region, a memfd, memory without a host address.
/// `bytes` is what it holds at first.
fn map_kind(space: &Container, kind: usize, iova: u64, bytes: &[u8], prot: Prot) {
    let len = bytes.len();
    match kind % 3 {
        0 => {
            let mem = Arc::new(OwnedMemory::new(len).unwrap());
            mem.write_at(0, bytes).unwrap();
            space
                .map(Iova(iova), len as u64, Backing::memory(mem, 0), prot)
                .unwrap();
        }
        1 => {
            // The mapping keeps its own host mapping of the file; the descriptor may go.
            let file = memfd("vdma-concurrency", len as u64 + P);
            file.write_all_at(bytes, P).unwrap();
            space
                .map(Iova(iova), len as u64, Backing::file(&file, P), prot)
                .unwrap();
        }
        _ => {
            let mem = Arc::new(MsgMemory::new(bytes.to_vec()));
            space
                .map(Iova(iova), len as u64, Backing::memory(mem, 0), prot)
                .unwrap();
        }
    }
}

/// The byte the read-only region holds at `iova`.
fn ro_byte(iova: u64) -> u8 {
    (iova.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// A length between 8 bytes and `max`, small ones as likely as big ones.
fn some_len(rng: &mut StdRng, max: usize) -> usize {
    let bits = rng.gen_range(3..=max.ilog2());
    rng.gen_range(8..=(1usize << bits).min(max))
}

/// Through a group or a device handle, with `dma_rw` or `read`/`write`.
#[derive(Clone, Copy)]
enum Handle<'a> {
    Group(&'a GroupHandle),
    Device(&'a DeviceHandle),
}

impl Handle<'_> {
    fn read(self, rng: &mut StdRng, iova: u64, buf: &mut [u8]) -> vdma::Result<()> {
        match (self, rng.gen::<bool>()) {
            (Handle::Group(h), true) => h.dma_rw(Iova(iova), buf, Direction::Read),
            (Handle::Group(h), false) => h.read(Iova(iova), buf),
            (Handle::Device(h), true) => h.dma_rw(Iova(iova), buf, Direction::Read),
            (Handle::Device(h), false) => h.read(Iova(iova), buf),
        }
    }

    fn write(self, rng: &mut StdRng, iova: u64, buf: &mut [u8]) -> vdma::Result<()> {
        match (self, rng.gen::<bool>()) {
            (Handle::Group(h), true) => h.dma_rw(Iova(iova), buf, Direction::Write),
            (Handle::Group(h), false) => h.write(Iova(iova), buf),
            (Handle::Device(h), true) => h.dma_rw(Iova(iova), buf, Direction::Write),
            (Handle::Device(h), false) => h.write(Iova(iova), buf),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dma_rw on stable ranges while other ranges change

const RO_BASE: u64 = 0x1000_0000;
const RO_PIECE: usize = 64 * KIB;
const RO_PIECES: usize = 4;
const RW_BASE: u64 = 0x2000_0000;
const RW_STRIDE: u64 = 0x100_0000;
/// Each worker's read-write region: three adjacent mappings of these sizes.
const RW_PIECES: [usize; 3] = [64 * KIB, 128 * KIB, 64 * KIB];
const RW_LEN: usize = 256 * KIB;
const CHURN_BASE: u64 = 0x4000_0000;

/// One worker: writes and reads its own region (kept in a shadow copy) and reads the shared
/// read-only region, across mapping boundaries, 8 bytes to 64 KiB at a time. Returns the
/// accesses done.
fn worker(h: Handle<'_>, t: usize, stop: &AtomicBool) -> u64 {
    let mut rng = StdRng::seed_from_u64(t as u64);
    let base = RW_BASE + t as u64 * RW_STRIDE;
    let mut shadow = vec![0u8; RW_LEN];
    let mut buf = vec![0u8; 64 * KIB];
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) || done < 64 {
        let len = some_len(&mut rng, 64 * KIB);
        match rng.gen_range(0..3) {
            0 => {
                let off = rng.gen_range(0..=RW_LEN - len);
                rng.fill(&mut buf[..len]);
                h.write(&mut rng, base + off as u64, &mut buf[..len])
                    .unwrap_or_else(|e| panic!("worker {t}: write({off:#x}, {len:#x}): {e}"));
                shadow[off..off + len].copy_from_slice(&buf[..len]);
            }
            1 => {
                let off = rng.gen_range(0..=RW_LEN - len);
                h.read(&mut rng, base + off as u64, &mut buf[..len])
                    .unwrap_or_else(|e| panic!("worker {t}: read({off:#x}, {len:#x}): {e}"));
                if buf[..len] != shadow[off..off + len] {
                    let at = (0..len).find(|&i| buf[i] != shadow[off + i]).unwrap();
                    panic!(
                        "worker {t}: read of its region at offset {:#x} gave {:#04x}, wrote {:#04x}",
                        off + at,
                        buf[at],
                        shadow[off + at]
                    );
                }
            }
            _ => {
                let off = rng.gen_range(0..=RO_PIECE * RO_PIECES - len) as u64;
                let iova = RO_BASE + off;
                h.read(&mut rng, iova, &mut buf[..len])
                    .unwrap_or_else(|e| panic!("worker {t}: read-only read({iova:#x}): {e}"));
                for (i, &b) in buf[..len].iter().enumerate() {
                    let at = iova + i as u64;
                    assert_eq!(b, ro_byte(at), "worker {t}: read-only region at {at:#x}");
                }
            }
        }
        done += 1;
    }
    done
}

/// Maps and unmaps (and reads, writes, translates) ranges of its own until `stop`, with every
/// result checked against type1 rules: 32 slots of 64 KiB, mappings of 1 to 4 pages at a page
/// offset inside a slot, fresh memory each time.
fn churn(space: &Container, h: &GroupHandle, stop: &AtomicBool) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(99);
    let mut slots: Vec<Option<(u64, u64, u8, usize)>> = vec![None; 32];
    let (mut maps, mut unmaps) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) || maps < 64 {
        let s = rng.gen_range(0..slots.len());
        let slot_base = CHURN_BASE + s as u64 * 0x10000;
        match slots[s] {
            None => {
                let pages = rng.gen_range(1..=4u64);
                let iova = slot_base + rng.gen_range(0..=16 - pages) * P;
                let fill: u8 = rng.gen_range(1..=255);
                let kind = rng.gen_range(0..3);
                map_kind(
                    space,
                    kind,
                    iova,
                    &vec![fill; (pages * P) as usize],
                    Prot::READ_WRITE,
                );
                slots[s] = Some((iova, pages * P, fill, kind));
                maps += 1;
            }
            Some((iova, size, fill, kind)) => {
                let mut b = vec![0u8; size as usize];
                h.read(Iova(iova), &mut b).unwrap();
                assert!(b.iter().all(|&x| x == fill), "churned mapping at {iova:#x}");
                if rng.gen_bool(0.3) {
                    // Half of it only: unmap never splits.
                    if size > P {
                        let e = space.unmap(Iova(iova), P).unwrap_err();
                        assert_eq!(e.errno(), libc::EINVAL);
                    }
                    let segs = h.translate(Iova(iova), size as usize, Prot::WRITE);
                    if kind == 2 {
                        // No host address.
                        assert_eq!(segs.unwrap_err().errno(), libc::EINVAL);
                    } else {
                        assert_eq!(segs.unwrap().len(), size as usize);
                    }
                    h.write(Iova(iova), &[fill]).unwrap();
                }
                // The whole slot: removes exactly this mapping.
                assert_eq!(space.unmap(Iova(slot_base), 0x10000).unwrap(), size);
                let e = h.read(Iova(iova), &mut b).unwrap_err();
                assert!(matches!(e, Error::NotMapped { iova: at } if at == Iova(iova)));
                slots[s] = None;
                unmaps += 1;
            }
        }
    }
    (maps, unmaps)
}

#[test]
fn dma_rw_on_stable_ranges_while_other_ranges_change() {
    let (space, group, device) = space_with_handles(Config::default(), GroupId(1), DEV);
    // The shared read-only region: four adjacent mappings of the three kinds.
    for k in 0..RO_PIECES {
        let iova = RO_BASE + (k * RO_PIECE) as u64;
        let bytes: Vec<u8> = (0..RO_PIECE as u64).map(|i| ro_byte(iova + i)).collect();
        map_kind(&space, k, iova, &bytes, Prot::READ);
    }
    const WORKERS: usize = 3;
    for t in 0..WORKERS {
        let mut iova = RW_BASE + t as u64 * RW_STRIDE;
        for (k, &len) in RW_PIECES.iter().enumerate() {
            map_kind(&space, t + k, iova, &vec![0; len], Prot::READ_WRITE);
            iova += len as u64;
        }
    }

    let stop = AtomicBool::new(false);
    let churn_handle = space.group_handle(GroupId(1)).unwrap();
    let started = Instant::now();
    let (done, (maps, unmaps)) = thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|t| {
                let h = if t % 2 == 0 {
                    Handle::Group(&group)
                } else {
                    Handle::Device(&device)
                };
                let stop = &stop;
                s.spawn(move || worker(h, t, stop))
            })
            .collect();
        let churner = s.spawn(|| churn(&space, &churn_handle, &stop));
        thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        let done: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        (done, churner.join().unwrap())
    });
    eprintln!(
        "{:?}: accesses per worker {done:?}, {maps} maps and {unmaps} unmaps meanwhile",
        started.elapsed()
    );
    assert!(unmaps >= 32, "the churn thread hardly ran: {unmaps} unmaps");
}

// ---------------------------------------------------------------------------------------------
// The unmap rule, with canaries

const CANARY: u8 = 0xc3;

/// How the writers did.
#[derive(Default)]
struct Tally {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Writes `byte` to random parts of `ranges` (often the whole range, often crossing into the
/// next one) until `stop`. Before the unmap a write succeeds; after it fails with EINVAL (the
/// range is not mapped). Anything else fails the test.
fn hammer(
    h: Handle<'_>,
    seed: u64,
    byte: u8,
    ranges: &[(u64, usize)],
    stop: &AtomicBool,
    tally: &Tally,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let max = ranges.iter().map(|r| r.1).max().unwrap();
    let mut buf = vec![byte; max];
    while !stop.load(Ordering::Relaxed) {
        let (iova, len) = ranges[rng.gen_range(0..ranges.len())];
        let (off, n) = if rng.gen_bool(0.5) {
            (0, len)
        } else {
            let off = rng.gen_range(0..len);
            (off, rng.gen_range(1..=len - off))
        };
        match h.write(&mut rng, iova + off as u64, &mut buf[..n]) {
            Ok(()) => tally.hits.fetch_add(1, Ordering::Relaxed),
            Err(e @ Error::NotMapped { .. }) => {
                assert_eq!(e.errno(), libc::EINVAL);
                tally.misses.fetch_add(1, Ordering::Relaxed)
            }
            Err(e) => panic!(
                "write of {n:#x} bytes at {:#x}: unexpected {e}",
                iova + off as u64
            ),
        };
    }
}

/// Waits until the writers got through at least a few times since `since` hits.
fn wait_for_hits(tally: &Tally, since: u64, round: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tally.hits.load(Ordering::Relaxed) < since + 4 {
        assert!(
            Instant::now() < deadline,
            "round {round}: the writers never got through"
        );
        thread::yield_now();
    }
}

/// Runs `rounds` rounds of: `setup` maps, three writers hit it (through group and device
/// handles), `teardown` unmaps and returns, then `canary` puts the canary in and, after a pause
/// during which the writers keep trying, finds any byte that is not the canary.
fn canary_rounds(
    space: &Container,
    ranges: &[(u64, usize)],
    rounds: usize,
    mut setup: impl FnMut(),
    mut teardown: impl FnMut(),
    mut canary: impl FnMut() -> Option<usize>,
) -> Tally {
    let group = space.group_handle(GroupId(1)).unwrap();
    let device = space.device_handle(&DeviceId::new("0000:00:01.0")).unwrap();
    let stop = AtomicBool::new(false);
    let tally = Tally::default();
    thread::scope(|s| {
        for w in 0..3u8 {
            let h = if w % 2 == 0 {
                Handle::Group(&group)
            } else {
                Handle::Device(&device)
            };
            let (stop, tally) = (&stop, &tally);
            s.spawn(move || hammer(h, w as u64, 0x10 + w, ranges, stop, tally));
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for round in 0..rounds {
                setup();
                wait_for_hits(&tally, tally.hits.load(Ordering::Relaxed), round);
                teardown();
                if let Some(at) = canary() {
                    panic!(
                        "round {round}: byte {at:#x} changed after unmap returned: a write \
                         landed in memory that was no longer mapped"
                    );
                }
            }
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
    tally
}

/// How long the writers get to spoil the canary.
const PAUSE: Duration = Duration::from_micros(700);

#[test]
fn unmap_returns_only_when_no_write_can_land() {
    const LEN: usize = 128 * KIB;
    const IOVA: u64 = 0x10_0000;
    let memory = Region::new(LEN);
    let (space, _, _) = space_with_handles(Config::default(), GroupId(1), DEV);
    let started = Instant::now();
    let tally = canary_rounds(
        &space,
        &[(IOVA, LEN)],
        200,
        || {
            space
                .map(
                    Iova(IOVA),
                    LEN as u64,
                    Backing::memory(memory.raw(0, LEN), 0),
                    Prot::READ_WRITE,
                )
                .unwrap()
        },
        || assert_eq!(space.unmap(Iova(IOVA), LEN as u64).unwrap(), LEN as u64),
        || {
            memory.fill(CANARY);
            thread::sleep(PAUSE);
            memory.first_not(CANARY)
        },
    );
    eprintln!(
        "{:?}: {} writes landed, {} refused",
        started.elapsed(),
        tally.hits.into_inner(),
        tally.misses.into_inner()
    );
}

#[test]
fn unmap_all_returns_only_when_no_write_can_land() {
    // Three mappings onto one buffer: two adjacent in IOVA (writes cross from one to the
    // other), one far away.
    const PIECE: usize = 32 * KIB;
    const A: u64 = 0x10_0000;
    const B: u64 = 0x7000_0000;
    let memory = Region::new(3 * PIECE);
    let (space, _, _) = space_with_handles(Config::default(), GroupId(1), DEV);
    let tally = canary_rounds(
        &space,
        &[(A, 2 * PIECE), (B, PIECE)],
        150,
        || {
            for (k, iova) in [(0, A), (1, A + PIECE as u64), (2, B)] {
                let mem = memory.raw(k * PIECE, PIECE);
                space
                    .map(
                        Iova(iova),
                        PIECE as u64,
                        Backing::memory(mem, 0),
                        Prot::READ_WRITE,
                    )
                    .unwrap();
            }
        },
        || assert_eq!(space.unmap_all().unwrap(), 3 * PIECE as u64),
        || {
            memory.fill(CANARY);
            thread::sleep(PAUSE);
            memory.first_not(CANARY)
        },
    );
    assert!(tally.misses.into_inner() > 0);
}

#[test]
fn unmap_of_file_memory_returns_only_when_no_write_can_land() {
    const LEN: usize = 64 * KIB;
    const IOVA: u64 = 0x20_0000;
    let file = memfd("vdma-concurrency", LEN as u64);
    let (space, _, _) = space_with_handles(Config::default(), GroupId(1), DEV);
    let canary = vec![CANARY; LEN];
    let mut back = vec![0u8; LEN];
    canary_rounds(
        &space,
        &[(IOVA, LEN)],
        100,
        || {
            space
                .map(
                    Iova(IOVA),
                    LEN as u64,
                    Backing::file(&file, 0),
                    Prot::READ_WRITE,
                )
                .unwrap()
        },
        || assert_eq!(space.unmap(Iova(IOVA), LEN as u64).unwrap(), LEN as u64),
        || {
            file.write_all_at(&canary, 0).unwrap();
            thread::sleep(PAUSE);
            file.read_exact_at(&mut back, 0).unwrap();
            back.iter().position(|&b| b != CANARY)
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Handles from many threads

#[test]
fn handles_are_shared_by_many_threads_at_once() {
    let (space, group, device) = space_with_handles(Config::default(), GroupId(1), DEV);
    space
        .add_device(GroupId(1), DeviceId::new("0000:00:01.1"))
        .unwrap();
    const THREADS: usize = 4;
    const REGION: usize = 64 * KIB;
    for t in 0..THREADS {
        // Two adjacent mappings per thread, of different kinds.
        let iova = 0x100_0000 * (t as u64 + 1);
        map_kind(&space, t, iova, &vec![0; REGION / 2], Prot::READ_WRITE);
        map_kind(
            &space,
            t + 1,
            iova + REGION as u64 / 2,
            &vec![0; REGION / 2],
            Prot::READ_WRITE,
        );
    }
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (group, device, stop) = (&group, &device, &stop);
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(t as u64);
                let base = 0x100_0000 * (t as u64 + 1);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) || n < 100 {
                    let len = some_len(&mut rng, REGION);
                    let off = rng.gen_range(0..=REGION - len) as u64;
                    let mut data = vec![0u8; len];
                    rng.fill(&mut data[..]);
                    // Written through one handle, read back through the other.
                    let (w, r) = if rng.gen() {
                        (Handle::Group(group), Handle::Device(device))
                    } else {
                        (Handle::Device(device), Handle::Group(group))
                    };
                    w.write(&mut rng, base + off, &mut data).unwrap();
                    let mut back = vec![0u8; len];
                    r.read(&mut rng, base + off, &mut back).unwrap();
                    assert!(back == data, "thread {t}: read back differs");
                    n += 1;
                }
            });
        }
        // Handles taken here, moved to and dropped on other threads, while the group must stay.
        for k in 0..8u64 {
            let g = space.group_handle(GroupId(1)).unwrap();
            let d = space.device_handle(&DeviceId::new("0000:00:01.1")).unwrap();
            s.spawn(move || {
                let iova = 0x100_0000 * (k % THREADS as u64 + 1) + REGION as u64 / 2 - 8;
                let mut buf = [0u8; 16];
                for _ in 0..200 {
                    g.read(Iova(iova), &mut buf).unwrap();
                    d.read(Iova(iova), &mut buf).unwrap();
                }
                assert_eq!(g.id(), GroupId(1));
                assert_eq!(d.group(), GroupId(1));
                drop((g, d));
            });
            let e = space.detach_group(GroupId(1)).unwrap_err();
            assert_eq!(e.errno(), libc::EBUSY);
        }
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(
        space.detach_group(GroupId(1)).unwrap_err().errno(),
        libc::EBUSY,
        "the main thread still holds two handles"
    );
    drop((group, device));
    space.detach_group(GroupId(1)).unwrap();
    assert_eq!(
        space.group_handle(GroupId(1)).unwrap_err().errno(),
        libc::ENODEV
    );
}

// ---------------------------------------------------------------------------------------------
// map/unmap racing translate

#[test]
fn map_and_unmap_race_translate_and_dma() {
    const STABLE: u64 = 0x1000_0000;
    const FLAP: u64 = 0x2000_0000;
    const FLAP_LEN: u64 = 4 * P;
    let own = Region::new(FLAP_LEN as usize);
    let (space, group, device) = space_with_handles(
        Config {
            // Holders drop their segments within microseconds; unmap must wait, never give up.
            busy_timeout: Duration::from_secs(10),
            ..Config::default()
        },
        GroupId(1),
        DEV,
    );
    let stable: Vec<u8> = (0..16 * P).map(ro_byte).collect();
    map_kind(&space, 0, STABLE, &stable, Prot::READ_WRITE);

    let stop = AtomicBool::new(false);
    let found = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let unmapping = AtomicU64::new(0);
    let (rounds, slowest) = thread::scope(|s| {
        // The flapping range: mapped onto memory holding one odd byte per round, then
        // unmapped. In turn: fresh owned memory, a fresh memfd (both released when the
        // mapping goes), two adjacent halves of those kinds, and memory the test owns (which
        // it zeroes as soon as unmap returns).
        let flapper = s.spawn(|| {
            let mut round = 0u64;
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) || round < 50 {
                let fill = (round as u8) | 1;
                let bytes = vec![fill; FLAP_LEN as usize];
                match round % 4 {
                    0 | 1 => map_kind(&space, (round % 4) as usize, FLAP, &bytes, Prot::READ_WRITE),
                    2 => {
                        let half = FLAP_LEN as usize / 2;
                        map_kind(&space, 0, FLAP, &bytes[..half], Prot::READ_WRITE);
                        map_kind(
                            &space,
                            1,
                            FLAP + half as u64,
                            &bytes[..half],
                            Prot::READ_WRITE,
                        );
                    }
                    _ => {
                        own.fill(fill);
                        let mem = own.raw(0, FLAP_LEN as usize);
                        space
                            .map(
                                Iova(FLAP),
                                FLAP_LEN,
                                Backing::memory(mem, 0),
                                Prot::READ_WRITE,
                            )
                            .unwrap();
                    }
                }
                // Give the others a moment to find it (and sometimes none).
                let seen = found.load(Ordering::Relaxed);
                let until = Instant::now() + Duration::from_micros(round % 4 * 100);
                while found.load(Ordering::Relaxed) == seen && Instant::now() < until {
                    thread::yield_now();
                }
                let t0 = Instant::now();
                assert_eq!(space.unmap(Iova(FLAP), FLAP_LEN).unwrap(), FLAP_LEN);
                slowest = slowest.max(t0.elapsed());
                // Memory the test owns is the test's again: no segments may still show it, no
                // read may still copy it.
                own.fill(0);
                round += 1;
            }
            (round, slowest)
        });
        for t in 0..2u64 {
            let (group, device, stop, found, refused, unmapping, stable) = (
                &group, &device, &stop, &found, &refused, &unmapping, &stable,
            );
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(t);
                while !stop.load(Ordering::Relaxed) {
                    let off = rng.gen_range(0..FLAP_LEN);
                    let len = rng.gen_range(1..=(FLAP_LEN - off) as usize);
                    let r = if t == 0 {
                        group.translate(Iova(FLAP + off), len, Prot::READ)
                    } else {
                        device.translate(Iova(FLAP + off), len, Prot::READ)
                    };
                    match r {
                        Ok(segs) => {
                            assert_eq!(segs.len(), len);
                            let read = || {
                                let mut all = Vec::with_capacity(len);
                                for seg in segs.as_slice() {
                                    let mut b = vec![0u8; seg.len];
                                    // SAFETY: `segs` holds the mappings, so the memory stays
                                    // mapped while it lives; a raw copy, no reference.
                                    unsafe {
                                        std::ptr::copy_nonoverlapping(
                                            seg.host.as_ptr(),
                                            b.as_mut_ptr(),
                                            seg.len,
                                        )
                                    };
                                    all.extend(b);
                                }
                                all
                            };
                            let first = read();
                            assert!(
                                first[0] & 1 == 1 && first.iter().all(|&b| b == first[0]),
                                "translated memory does not hold one round's bytes"
                            );
                            // While held, the flapper's unmap waits: the memory stays.
                            if rng.gen_ratio(1, 8) {
                                thread::yield_now();
                            } else {
                                std::hint::spin_loop();
                            }
                            assert!(read() == first, "held memory changed under its segments");
                            found.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert!(
                                matches!(e, Error::NotMapped { .. } | Error::Unmapping { .. }),
                                "translate of the flapping range: {e}"
                            );
                            refused.fetch_add(1, Ordering::Relaxed);
                            if e.errno() == libc::EAGAIN {
                                unmapping.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    // The stable mapping translates, whatever happens next to it.
                    let segs = group
                        .translate(Iova(STABLE + P), 2 * P as usize, Prot::READ_WRITE)
                        .unwrap();
                    let seg = segs.as_slice()[0];
                    let mut b = vec![0u8; seg.len];
                    // SAFETY: as above.
                    unsafe {
                        std::ptr::copy_nonoverlapping(seg.host.as_ptr(), b.as_mut_ptr(), seg.len)
                    };
                    assert!(b[..] == stable[P as usize..3 * P as usize]);
                }
            });
        }
        // dma_rw on the same range: one round's bytes, or EINVAL.
        s.spawn(|| {
            let mut rng = StdRng::seed_from_u64(7);
            let mut buf = vec![0u8; FLAP_LEN as usize];
            while !stop.load(Ordering::Relaxed) {
                let len = rng.gen_range(1..=FLAP_LEN as usize);
                let off = rng.gen_range(0..=FLAP_LEN as usize - len);
                match device.read(Iova(FLAP + off as u64), &mut buf[..len]) {
                    Ok(()) => assert!(
                        buf[0] & 1 == 1 && buf[..len].iter().all(|&b| b == buf[0]),
                        "dma_rw read of the flapping range mixed bytes"
                    ),
                    Err(e) => assert!(matches!(e, Error::NotMapped { .. }), "{e}"),
                }
            }
        });
        thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        flapper.join().unwrap()
    });
    let (found, refused) = (found.into_inner(), refused.into_inner());
    eprintln!(
        "{rounds} map/unmap rounds (slowest unmap {slowest:?}); translations: {found} found, \
         {refused} refused ({} EAGAIN)",
        unmapping.into_inner()
    );
    assert!(found > 0 && refused > 0, "the race did not happen");
}
