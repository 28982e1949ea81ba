//! One test per rule and errno of semantics §1 (the address space), §2 (groups, devices and
//! handles), §3 (`dma_rw`, and `translate` which follows the same rules) and §6 (memory behind a
//! mapping). Every error is checked by its errno against `libc`, and by its variant where the
//! variant carries an IOVA the rule names.

use std::fmt::Debug;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vdma::{
    Backing, Config, Container, DeviceId, Direction, Error, GroupHandle, GroupId, Iova, IovaRange,
    MappingInfo, Memory, OwnedMemory, ProcessMemory, Prot, RawMemory,
};

mod common;
use common::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn owned(len: usize) -> Arc<OwnedMemory> {
    Arc::new(OwnedMemory::new(len).unwrap())
}

fn me() -> Arc<ProcessMemory> {
    Arc::new(ProcessMemory::open(std::process::id() as i32).unwrap())
}

fn mem(memory: &Arc<impl Memory + 'static>, offset: u64) -> Backing<'static> {
    Backing::memory(memory.clone(), offset)
}

fn mem_read(memory: &impl Memory, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    memory.read_at(offset, &mut buf).unwrap();
    buf
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

fn read(g: &GroupHandle, iova: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    g.read(Iova(iova), &mut buf).unwrap();
    buf
}

fn maps() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// The permission field ("rw-s") of the /proc/self/maps line holding `addr`.
fn perms_at(addr: usize) -> String {
    for line in maps() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let perms = fields.next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let lo = usize::from_str_radix(lo, 16).unwrap();
        let hi = usize::from_str_radix(hi, 16).unwrap();
        if lo <= addr && addr < hi {
            return perms.to_string();
        }
    }
    panic!("{addr:#x} is not mapped in this process");
}

/// A forked child, killed and reaped on drop unless the test reaped it.
struct Child {
    pid: i32,
    reaped: bool,
}

impl Child {
    fn wait(&mut self) -> i32 {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
        assert_eq!(r, self.pid, "waitpid: {}", std::io::Error::last_os_error());
        self.reaped = true;
        status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: our own child, not yet reaped, so the pid is still ours.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

fn pipe() -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: two ints for the kernel to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    (fds[0], fds[1])
}

// ---------------------------------------------------------------------------------------------
// §1 The address space: configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn config_defaults_are_4096_65535_and_all_iovas() {
    let c = Config::default();
    assert_eq!(c.page_size, 4096);
    assert_eq!(c.max_entries, 65535);
    assert_eq!(
        c.valid_ranges,
        vec![IovaRange::new(Iova(0), Iova(u64::MAX))]
    );
    assert_eq!(IovaRange::ALL, IovaRange::new(Iova(0), Iova(u64::MAX)));
    let s = space();
    assert_eq!(s.config().page_size, 4096);
    assert!(s.mappings().is_empty());
}

#[test]
fn config_page_size_not_power_of_two_is_einval() {
    for page_size in [0u64, 3, 4095, 4097, 12288] {
        let e = err(Container::new(Config {
            page_size,
            ..Config::default()
        }));
        assert_eq!(e.errno(), libc::EINVAL, "page_size {page_size}");
        assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
    }
}

#[test]
fn config_without_valid_ranges_or_with_reversed_range_is_einval() {
    let e = err(Container::new(Config {
        valid_ranges: vec![],
        ..Config::default()
    }));
    assert_eq!(e.errno(), libc::EINVAL);
    let e = err(Container::new(Config {
        valid_ranges: vec![IovaRange::new(Iova(0x2000), Iova(0x1fff))],
        ..Config::default()
    }));
    assert_eq!(e.errno(), libc::EINVAL);
}

#[test]
fn config_page_size_is_the_alignment_of_map_and_unmap() {
    let big = 1u64 << 16;
    let s = space_with(Config {
        page_size: big,
        ..Config::default()
    });
    let m = owned(4 * big as usize);
    for (iova, size, off, what) in [
        (0x1000, big, 0, "iova"),
        (0, 0x1000, 0, "size"),
        (0, big, 0x1000, "offset"),
    ] {
        let e = err(s.map(Iova(iova), size, mem(&m, off), Prot::READ));
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(
            matches!(e, Error::Misaligned { what: w, page_size, .. } if w == what && page_size == big),
            "{e:?}"
        );
    }
    s.map(Iova(big), big, mem(&m, big), Prot::READ_WRITE)
        .unwrap();
    assert_eq!(err(s.unmap(Iova(big), 0x1000)).errno(), libc::EINVAL);
    assert_eq!(err(s.unmap(Iova(big + 0x1000), big)).errno(), libc::EINVAL);
    assert_eq!(s.unmap(Iova(big), big).unwrap(), big);

    // Page size 1 allows byte-sized mappings.
    let s = space_with(Config {
        page_size: 1,
        ..Config::default()
    });
    let g = group(&s);
    let m = owned(PU);
    s.map(Iova(7), 3, mem(&m, 5), Prot::READ_WRITE).unwrap();
    g.write(Iova(7), b"xyz").unwrap();
    assert_eq!(mem_read(&*m, 5, 3), b"xyz");
    assert_eq!(err(g.write(Iova(7), b"xyzw")).errno(), libc::EINVAL);
}

// ---------------------------------------------------------------------------------------------
// §1 map
// ---------------------------------------------------------------------------------------------

#[test]
fn map_zero_size_is_einval() {
    let s = space();
    let m = owned(PU);
    let e = err(s.map(Iova(0x1000), 0, mem(&m, 0), Prot::READ_WRITE));
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(matches!(e, Error::ZeroSize), "{e:?}");
    let file = memfd("zero", P);
    let e = err(s.map(Iova(0x1000), 0, Backing::file(&file, 0), Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(s.mappings().is_empty());
}

#[test]
fn map_misaligned_iova_is_einval() {
    let s = space();
    let m = owned(2 * PU);
    for iova in [1u64, 0x800, 0x1fff, u64::MAX - P] {
        let e = err(s.map(Iova(iova), P, mem(&m, 0), Prot::READ_WRITE));
        assert_eq!(e.errno(), libc::EINVAL, "iova {iova:#x}");
        assert!(
            matches!(e, Error::Misaligned { what: "iova", value, page_size: 4096 } if value == iova),
            "{e:?}"
        );
    }
    assert!(s.mappings().is_empty());
}

#[test]
fn map_misaligned_size_is_einval() {
    let s = space();
    let m = owned(2 * PU);
    for size in [1u64, 0x800, P + 1, 2 * P - 1] {
        let e = err(s.map(Iova(0x1000), size, mem(&m, 0), Prot::READ_WRITE));
        assert_eq!(e.errno(), libc::EINVAL, "size {size:#x}");
        assert!(
            matches!(e, Error::Misaligned { what: "size", value, .. } if value == size),
            "{e:?}"
        );
    }
    assert!(s.mappings().is_empty());
}

#[test]
fn map_misaligned_offset_is_einval() {
    let s = space();
    let m = owned(3 * PU);
    let file = memfd("misaligned-offset", 3 * P);
    for off in [1u64, 0x10, P + 0x800] {
        let e = err(s.map(Iova(0x1000), P, mem(&m, off), Prot::READ_WRITE));
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(
            matches!(e, Error::Misaligned { what: "offset", value, .. } if value == off),
            "{e:?}"
        );
        let e = err(s.map(Iova(0x1000), P, Backing::file(&file, off), Prot::READ));
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(
            matches!(e, Error::Misaligned { what: "offset", .. }),
            "{e:?}"
        );
    }
    assert!(s.mappings().is_empty());
}

#[test]
fn map_empty_prot_is_einval() {
    let s = space();
    let m = owned(PU);
    let e = err(s.map(Iova(0x1000), P, mem(&m, 0), Prot::NONE));
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(matches!(e, Error::NoPermission), "{e:?}");
    let e = err(s.map(Iova(0x1000), P, mem(&m, 0), Prot::from_bits(0).unwrap()));
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(s.mappings().is_empty());
}

#[test]
fn map_wrapping_is_einval() {
    let s = space();
    let m = me();
    for (iova, size) in [
        (u64::MAX - P + 1, 2 * P),
        (u64::MAX - 2 * P + 1, 3 * P),
        (1u64 << 63, 1u64 << 63 | P),
        (2 * P, u64::MAX - P + 1),
    ] {
        let e = err(s.map(Iova(iova), size, mem(&m, 0), Prot::READ));
        assert_eq!(e.errno(), libc::EINVAL, "{iova:#x}+{size:#x}");
        assert!(
            matches!(e, Error::Wraps { iova: Iova(i), size: z } if i == iova && z == size),
            "{e:?}"
        );
    }
    assert!(s.mappings().is_empty());
}

/// Each kind of memory in turn at the top page `[2^64 - 4096, 2^64)`.
#[test]
fn map_ending_exactly_at_2_pow_64_works_everywhere() {
    let top = u64::MAX - (P - 1);
    let below = top - P;
    let o = owned(2 * PU);
    let file = memfd("top", 3 * P);
    let region = Region::new(2 * PU);
    let pm = me();

    for kind in ["owned", "file", "process"] {
        let backing = |off: u64| match kind {
            "owned" => mem(&o, off),
            "file" => Backing::file(&file, off),
            _ => mem(&pm, region.addr() + off),
        };
        // What the memory behind page `off` holds at byte `at`, seen independently of vdma.
        let peek = |off: u64, at: u64, len: usize| -> Vec<u8> {
            match kind {
                "owned" => mem_read(&*o, off + at, len),
                "file" => pread(&file, off + at, len),
                _ => region.get((off + at) as usize, len),
            }
        };
        let s = space();
        let g = group(&s);
        s.map(Iova(top), P, backing(P), Prot::READ_WRITE)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(
            s.mappings(),
            vec![MappingInfo {
                iova: Iova(top),
                size: P,
                prot: Prot::READ_WRITE
            }]
        );

        // The last byte of the space.
        g.dma_rw(Iova(u64::MAX), &mut [0xa5], Direction::Write)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let mut b = [0u8];
        g.dma_rw(Iova(u64::MAX), &mut b, Direction::Read).unwrap();
        assert_eq!(b, [0xa5], "{kind}");
        assert_eq!(peek(P, P - 1, 1), [0xa5], "{kind}");
        // The last 16 bytes, and the whole top page.
        let data = pattern(3, 16);
        g.write(Iova(u64::MAX - 15), &data).unwrap();
        assert_eq!(read(&g, u64::MAX - 15, 16), data, "{kind}");
        assert_eq!(peek(P, P - 16, 16), data, "{kind}");
        let whole = pattern(9, PU);
        g.write(Iova(top), &whole).unwrap();
        assert_eq!(read(&g, top, PU), whole, "{kind}");
        // One byte more wraps.
        let e = err(g.read(Iova(u64::MAX), &mut [0u8; 2]));
        assert_eq!(e.errno(), libc::EOVERFLOW, "{kind}");

        // Translate the last byte.
        match kind {
            "process" => {
                let e = err(g.translate(Iova(u64::MAX), 1, Prot::READ));
                assert_eq!(e.errno(), libc::EINVAL, "{kind}");
                assert!(
                    matches!(
                        e,
                        Error::NoHostAddress {
                            iova: Iova(u64::MAX)
                        }
                    ),
                    "{e:?}"
                );
            }
            _ => {
                let segs = g.translate(Iova(u64::MAX), 1, Prot::READ_WRITE).unwrap();
                assert_eq!(segs.as_slice().len(), 1);
                let seg = segs.as_slice()[0];
                assert_eq!(seg.iova, Iova(u64::MAX));
                assert_eq!(seg.len, 1);
                // SAFETY: the segment is held, so its host byte stays mapped.
                let byte = unsafe { seg.host.as_ptr().read_volatile() };
                assert_eq!(byte, whole[PU - 1], "{kind}");
                let segs = g.translate(Iova(top), PU, Prot::READ).unwrap();
                assert_eq!(segs.len(), PU);
            }
        }

        // Overlapping the top mapping is EEXIST, not a wrap or a silent success.
        let e = err(s.map(Iova(below), 2 * P, backing(0), Prot::READ));
        assert_eq!(e.errno(), libc::EEXIST, "{kind}");
        assert!(
            matches!(e, Error::Exists { iova: Iova(i) } if i == top),
            "{e:?}"
        );

        // An adjacent mapping below; an access crossing into the top page.
        s.map(Iova(below), P, backing(0), Prot::READ_WRITE).unwrap();
        let data = pattern(5, 32);
        g.write(Iova(top - 16), &data).unwrap();
        assert_eq!(read(&g, top - 16, 32), data, "{kind}");
        assert_eq!(peek(0, P - 16, 16), data[..16], "{kind}");
        assert_eq!(peek(P, 0, 16), data[16..], "{kind}");
        if kind != "process" {
            let segs = g.translate(Iova(top - 16), 32, Prot::READ).unwrap();
            let v: Vec<(u64, usize)> = segs.as_slice().iter().map(|s| (s.iova.0, s.len)).collect();
            assert_eq!(v, vec![(top - 16, 16), (top, 16)], "{kind}");
        }

        // Unmap the top page.
        assert_eq!(s.unmap(Iova(top), P).unwrap(), P, "{kind}");
        let e = err(g.read(Iova(u64::MAX), &mut [0u8]));
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(
            matches!(
                e,
                Error::NotMapped {
                    iova: Iova(u64::MAX)
                }
            ),
            "{e:?}"
        );
        let e = err(g.read(Iova(top - 1), &mut [0u8; 2]));
        assert!(
            matches!(e, Error::NotMapped { iova: Iova(i) } if i == top),
            "{e:?}"
        );
        // And map it again, then unmap everything.
        s.map(Iova(top), P, backing(P), Prot::READ).unwrap();
        assert_eq!(read(&g, u64::MAX, 1), [whole[PU - 1]], "{kind}");
        assert_eq!(s.unmap_all().unwrap(), 2 * P, "{kind}");
        assert!(s.mappings().is_empty());
    }
}

#[test]
fn map_overlap_is_eexist() {
    let s = space();
    let m = owned(8 * PU);
    let a = 0x10_0000u64;
    // Existing: [a, a+3P) and [a+5P, a+6P).
    s.map(Iova(a), 3 * P, mem(&m, 0), Prot::READ_WRITE).unwrap();
    s.map(Iova(a + 5 * P), P, mem(&m, 3 * P), Prot::READ)
        .unwrap();
    let before = s.mappings();
    // (iova, size, which existing mapping it must name)
    let shapes: [(u64, u64, &[u64]); 9] = [
        (a, 3 * P, &[a]),                      // identical
        (a + P, P, &[a]),                      // inside
        (a + 2 * P, P, &[a]),                  // last page
        (a - P, 2 * P, &[a]),                  // over the start
        (a + 2 * P, 2 * P, &[a]),              // over the end
        (a - P, 5 * P, &[a]),                  // covers it
        (a, 6 * P, &[a, a + 5 * P]),           // covers both
        (a + 3 * P, 3 * P, &[a + 5 * P]),      // the gap and the second
        (a - 16 * P, 32 * P, &[a, a + 5 * P]), // covers everything
    ];
    for (iova, size, names) in shapes {
        let e = err(s.map(Iova(iova), size, mem(&m, 0), Prot::READ_WRITE));
        assert_eq!(e.errno(), libc::EEXIST, "{iova:#x}+{size:#x}");
        match e {
            Error::Exists { iova: Iova(i) } => assert!(names.contains(&i), "{i:#x}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.mappings(), before);
    }
    // Touching but not overlapping is fine.
    s.map(Iova(a - P), P, mem(&m, 0), Prot::READ).unwrap();
    s.map(Iova(a + 3 * P), 2 * P, mem(&m, 0), Prot::READ)
        .unwrap();
    s.map(Iova(a + 6 * P), P, mem(&m, 0), Prot::READ).unwrap();
    assert_eq!(s.mappings().len(), 5);
}

#[test]
fn map_entry_limit_is_enospc() {
    let s = space_with(Config {
        max_entries: 3,
        ..Config::default()
    });
    let m = owned(4 * PU);
    for i in 0..3 {
        s.map(Iova(i * 2 * P), P, mem(&m, i * P), Prot::READ)
            .unwrap();
    }
    let e = err(s.map(Iova(0x100_0000), P, mem(&m, 0), Prot::READ));
    assert_eq!(e.errno(), libc::ENOSPC);
    assert!(matches!(e, Error::NoSpace { limit: 3 }), "{e:?}");
    assert_eq!(s.mappings().len(), 3);
    // Room again after an unmap.
    assert_eq!(s.unmap(Iova(2 * P), P).unwrap(), P);
    s.map(Iova(0x100_0000), P, mem(&m, 0), Prot::READ).unwrap();
    assert_eq!(
        err(s.map(Iova(0x200_0000), P, mem(&m, 0), Prot::READ)).errno(),
        libc::ENOSPC
    );
}

#[test]
fn map_outside_valid_ranges_is_einval() {
    let s = space_with(Config {
        valid_ranges: vec![
            IovaRange::new(Iova(0x10000), Iova(0x1ffff)),
            IovaRange::new(Iova(0x20000), Iova(0x2ffff)),
            IovaRange::new(Iova(0x100000), Iova(0x1fffff)),
        ],
        ..Config::default()
    });
    let m = owned(0x100000);
    for (iova, size) in [
        (0x0u64, P),          // below everything
        (0xf000, 2 * P),      // starts before the first range
        (0x1f000, 2 * P),     // across two adjacent ranges: not inside *one*
        (0x2f000, 2 * P),     // ends past the second
        (0x50000, P),         // in a gap
        (0xff000, 0x101000),  // a page before the third range, then all of it
        (0x100000, 0x101000), // the third range and a page more
        (u64::MAX - P + 1, P),
    ] {
        let e = err(s.map(Iova(iova), size, mem(&m, 0), Prot::READ));
        assert_eq!(e.errno(), libc::EINVAL, "{iova:#x}+{size:#x}");
        assert!(
            matches!(e, Error::OutsideValidRanges { iova: Iova(i), size: z } if i == iova && z == size),
            "{e:?}"
        );
    }
    assert!(s.mappings().is_empty());
    s.map(Iova(0x10000), 0x10000, mem(&m, 0), Prot::READ)
        .unwrap();
    s.map(Iova(0x20000), 0x10000, mem(&m, 0), Prot::READ)
        .unwrap();
    s.map(Iova(0x100000), 0x100000, mem(&m, 0), Prot::READ)
        .unwrap();
    assert_eq!(s.mappings().len(), 3);
}

/// When several rules are broken at once, the first in the spec's order wins: zero size or
/// misalignment, empty prot, wrap, overlap, entry limit, valid ranges, the memory.
#[test]
fn map_check_order() {
    let config = Config {
        max_entries: 2,
        valid_ranges: vec![IovaRange::new(Iova(0), Iova(0xffff_ffff))],
        ..Config::default()
    };
    let s = space_with(config.clone());
    let m = owned(2 * PU);
    s.map(Iova(0x10000), P, mem(&m, 0), Prot::READ).unwrap();
    s.map(Iova(0x20000), P, mem(&m, 0), Prot::READ).unwrap(); // now full
    let before = s.mappings();
    let short = owned(PU);
    let top = u64::MAX - P + 1;

    let check = |iova: u64, size: u64, b: Backing<'_>, prot: Prot, want: fn(&Error) -> bool| {
        let e = err(s.map(Iova(iova), size, b, prot));
        assert_eq!(
            e.errno(),
            if matches!(e, Error::Exists { .. }) {
                libc::EEXIST
            } else if matches!(e, Error::NoSpace { .. }) {
                libc::ENOSPC
            } else {
                libc::EINVAL
            }
        );
        assert!(want(&e), "{iova:#x}+{size:#x}: {e:?}");
        assert_eq!(s.mappings(), before);
    };
    // zero size + misaligned iova and offset + no prot + overlap + full + outside
    check(0x10001, 0, mem(&short, 1), Prot::NONE, |e| {
        matches!(e, Error::ZeroSize)
    });
    // misaligned iova + misaligned offset + no prot + wrap + full + outside
    check(top + 1, 2 * P, mem(&short, 1), Prot::NONE, |e| {
        matches!(e, Error::Misaligned { what: "iova", .. })
    });
    // misaligned size + no prot + overlap + full
    check(0x10000, P + 1, mem(&short, 0), Prot::NONE, |e| {
        matches!(e, Error::Misaligned { what: "size", .. })
    });
    // misaligned offset + no prot + wrap + full + outside + too short
    check(top, 2 * P, mem(&short, 1), Prot::NONE, |e| {
        matches!(e, Error::Misaligned { what: "offset", .. })
    });
    // no prot + wrap + full + outside + too short
    check(top, 2 * P, mem(&short, 0), Prot::NONE, |e| {
        matches!(e, Error::NoPermission)
    });
    // wrap + overlap (with nothing, but) + full + outside + too short
    check(top - P, 3 * P, mem(&short, 0), Prot::READ, |e| {
        matches!(e, Error::Wraps { .. })
    });
    // overlap + full + outside + too short
    check(0x10000, 0x1_0000_0000, mem(&short, 0), Prot::READ, |e| {
        matches!(
            e,
            Error::Exists {
                iova: Iova(0x10000)
            }
        )
    });
    // full + outside + too short
    check(0x1_0000_0000, 2 * P, mem(&short, 0), Prot::READ, |e| {
        matches!(e, Error::NoSpace { limit: 2 })
    });
    // outside + too short (with room for one more)
    assert_eq!(s.unmap(Iova(0x20000), P).unwrap(), P);
    let before = s.mappings();
    let e = err(s.map(Iova(0x1_0000_0000), 2 * P, mem(&short, 0), Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(matches!(e, Error::OutsideValidRanges { .. }), "{e:?}");
    // too short alone
    let e = err(s.map(Iova(0x40000), 2 * P, mem(&short, 0), Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(matches!(e, Error::BackingTooShort { .. }), "{e:?}");
    assert_eq!(s.mappings(), before);
}

#[test]
fn map_file_too_short_is_einval() {
    let s = space();
    let file = memfd("short", 2 * P);
    for (off, size) in [(0, 3 * P), (P, 2 * P), (2 * P, P), (16 * P, P)] {
        let e = err(s.map(Iova(0x10000), size, Backing::file(&file, off), Prot::READ));
        assert_eq!(e.errno(), libc::EINVAL, "{off:#x}+{size:#x}");
        assert!(matches!(e, Error::BackingTooShort { .. }), "{e:?}");
    }
    // offset + size past 2^64.
    let e = err(s.map(
        Iova(0x10000),
        2 * P,
        Backing::file(&file, u64::MAX - P + 1),
        Prot::READ,
    ));
    assert_eq!(e.errno(), libc::EINVAL);
    // Memory objects too.
    let m = owned(2 * PU);
    let e = err(s.map(Iova(0x10000), 2 * P, mem(&m, P), Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(matches!(e, Error::BackingTooShort { .. }), "{e:?}");
    let e = err(s.map(Iova(0x10000), 2 * P, mem(&m, u64::MAX - P + 1), Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(s.mappings().is_empty());
    // Exactly long enough is fine.
    s.map(Iova(0x10000), P, Backing::file(&file, P), Prot::READ)
        .unwrap();
    s.map(Iova(0x20000), 2 * P, mem(&m, 0), Prot::READ).unwrap();
}

#[test]
fn map_after_the_file_grows_works() {
    let s = space();
    let g = group(&s);
    let file = memfd("grow", P);
    s.map(Iova(0x10000), P, Backing::file(&file, 0), Prot::READ_WRITE)
        .unwrap();
    assert_eq!(
        err(s.map(
            Iova(0x20000),
            P,
            Backing::file(&file, 2 * P),
            Prot::READ_WRITE
        ))
        .errno(),
        libc::EINVAL
    );
    file.set_len(3 * P).unwrap();
    s.map(
        Iova(0x20000),
        P,
        Backing::file(&file, 2 * P),
        Prot::READ_WRITE,
    )
    .unwrap();
    g.write(Iova(0x10010), b"first").unwrap();
    g.write(Iova(0x20010), b"third").unwrap();
    assert_eq!(pread(&file, 0x10, 5), b"first");
    assert_eq!(pread(&file, 2 * P + 0x10, 5), b"third");
    assert_eq!(read(&g, 0x10010, 5), b"first");
}

#[test]
fn map_with_a_permission_the_file_does_not_allow_is_eacces() {
    let s = space();
    let g = group(&s);
    let file = memfd("rdonly", 2 * P);
    file.write_all_at(b"seen", 8).unwrap();
    let ro = File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
    for prot in [Prot::WRITE, Prot::READ_WRITE] {
        let e = err(s.map(Iova(0x10000), P, Backing::file(&ro, 0), prot));
        assert_eq!(e.errno(), libc::EACCES, "{prot}");
    }
    assert!(s.mappings().is_empty());
    s.map(Iova(0x10000), P, Backing::file(&ro, 0), Prot::READ)
        .unwrap();
    assert_eq!(read(&g, 0x10008, 4), b"seen");
}

#[test]
fn adjacent_mappings_are_not_merged() {
    let s = space();
    let g = group(&s);
    let m = owned(4 * PU);
    // Adjacent in IOVA *and* in memory, same prot: still two entries.
    s.map(Iova(0x10000), P, mem(&m, 0), Prot::READ_WRITE)
        .unwrap();
    s.map(Iova(0x11000), P, mem(&m, P), Prot::READ_WRITE)
        .unwrap();
    s.map(Iova(0x12000), 2 * P, mem(&m, 2 * P), Prot::READ_WRITE)
        .unwrap();
    let infos = s.mappings();
    assert_eq!(
        infos.iter().map(|i| (i.iova.0, i.size)).collect::<Vec<_>>(),
        vec![(0x10000, P), (0x11000, P), (0x12000, 2 * P)]
    );
    // Each is its own entry: it can be unmapped alone, and cutting one is a straddle.
    let e = err(s.unmap(Iova(0x12000), P));
    assert_eq!(e.errno(), libc::EINVAL);
    assert_eq!(s.unmap(Iova(0x11000), P).unwrap(), P);
    assert_eq!(s.mappings().len(), 2);
    let e = err(g.read(Iova(0x10ff0), &mut [0u8; 32]));
    assert!(
        matches!(
            e,
            Error::NotMapped {
                iova: Iova(0x11000)
            }
        ),
        "{e:?}"
    );
    // Translations over adjacent mappings give one segment per mapping.
    s.map(Iova(0x11000), P, mem(&m, P), Prot::READ_WRITE)
        .unwrap();
    let segs = g.translate(Iova(0x10000), 4 * PU, Prot::READ).unwrap();
    assert_eq!(segs.as_slice().len(), 3);
    assert_eq!(
        s.unmap(Iova(0x10000), 4 * P).unwrap_err().errno(),
        libc::EBUSY
    );
}

// ---------------------------------------------------------------------------------------------
// §1 unmap
// ---------------------------------------------------------------------------------------------

/// Three mappings: [A, A+2P), [A+3P, A+4P), [A+5P, A+7P).
fn three_mappings() -> (Container, GroupHandle, Arc<OwnedMemory>, u64) {
    let s = space_with(Config {
        busy_timeout: Duration::from_millis(50),
        ..Config::default()
    });
    let g = group(&s);
    let m = owned(8 * PU);
    let a = 0x40_0000u64;
    s.map(Iova(a), 2 * P, mem(&m, 0), Prot::READ_WRITE).unwrap();
    s.map(Iova(a + 3 * P), P, mem(&m, 2 * P), Prot::READ_WRITE)
        .unwrap();
    s.map(Iova(a + 5 * P), 2 * P, mem(&m, 3 * P), Prot::READ_WRITE)
        .unwrap();
    g.write(Iova(a), &pattern(1, 2 * PU)).unwrap();
    g.write(Iova(a + 3 * P), &pattern(2, PU)).unwrap();
    g.write(Iova(a + 5 * P), &pattern(3, 2 * PU)).unwrap();
    (s, g, m, a)
}

fn all_three_intact(s: &Container, g: &GroupHandle, a: u64) {
    assert_eq!(s.mappings().len(), 3);
    assert_eq!(read(g, a, 2 * PU), pattern(1, 2 * PU));
    assert_eq!(read(g, a + 3 * P, PU), pattern(2, PU));
    assert_eq!(read(g, a + 5 * P, 2 * PU), pattern(3, 2 * PU));
}

#[test]
fn unmap_zero_size_is_einval() {
    let (s, g, _m, a) = three_mappings();
    let e = err(s.unmap(Iova(a), 0));
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(matches!(e, Error::ZeroSize), "{e:?}");
    all_three_intact(&s, &g, a);
}

#[test]
fn unmap_misaligned_is_einval() {
    let (s, g, _m, a) = three_mappings();
    for (iova, size) in [
        (a + 1, 2 * P),
        (a, 2 * P - 1),
        (a, P + 0x800),
        (a + 0x800, P),
    ] {
        let e = err(s.unmap(Iova(iova), size));
        assert_eq!(e.errno(), libc::EINVAL, "{iova:#x}+{size:#x}");
        assert!(matches!(e, Error::Misaligned { .. }), "{e:?}");
    }
    all_three_intact(&s, &g, a);
}

#[test]
fn unmap_wrapping_is_einval() {
    let (s, g, _m, a) = three_mappings();
    for (iova, size) in [
        (u64::MAX - P + 1, 2 * P),
        (a, u64::MAX - P + 1),
        (1 << 63, 1 << 63 | P),
    ] {
        let e = err(s.unmap(Iova(iova), size));
        assert_eq!(e.errno(), libc::EINVAL, "{iova:#x}+{size:#x}");
        assert!(matches!(e, Error::Wraps { .. }), "{e:?}");
    }
    all_three_intact(&s, &g, a);
    // Ending exactly at 2^64 does not wrap, and covers all three.
    assert_eq!(s.unmap(Iova(a), u64::MAX - a + 1).unwrap(), 5 * P);
}

#[test]
fn unmap_straddling_the_start_is_einval_and_unmaps_nothing() {
    let (s, g, _m, a) = three_mappings();
    // Starts in the middle of the first mapping; would otherwise remove the second.
    for (iova, size) in [(a + P, 3 * P), (a + P, P), (a + P, 10 * P)] {
        let e = err(s.unmap(Iova(iova), size));
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(
            matches!(e, Error::Straddles { iova: Iova(i) } if i == a),
            "{e:?}"
        );
        all_three_intact(&s, &g, a);
    }
    // The third mapping too.
    let e = err(s.unmap(Iova(a + 6 * P), P));
    assert!(
        matches!(e, Error::Straddles { iova: Iova(i) } if i == a + 5 * P),
        "{e:?}"
    );
    all_three_intact(&s, &g, a);
}

#[test]
fn unmap_straddling_the_end_is_einval_and_unmaps_nothing() {
    let (s, g, _m, a) = three_mappings();
    // Covers the first two, ends in the middle of the third.
    for (iova, size) in [(a, 6 * P), (a - 16 * P, 22 * P), (a + 5 * P, P)] {
        let e = err(s.unmap(Iova(iova), size));
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(
            matches!(e, Error::Straddles { iova: Iova(i) } if i == a + 5 * P),
            "{iova:#x}+{size:#x}: {e:?}"
        );
        all_three_intact(&s, &g, a);
    }
    // Straddling both ends.
    let e = err(s.unmap(Iova(a + P), 5 * P));
    assert_eq!(e.errno(), libc::EINVAL);
    all_three_intact(&s, &g, a);
}

#[test]
fn unmap_returns_the_bytes_removed() {
    let (s, g, _m, a) = three_mappings();
    // Just the middle one, with slack around it.
    assert_eq!(s.unmap(Iova(a + 2 * P), 3 * P).unwrap(), P);
    assert_eq!(s.mappings().len(), 2);
    let e = err(g.read(Iova(a + 3 * P), &mut [0u8]));
    assert!(matches!(e, Error::NotMapped { .. }), "{e:?}");
    assert_eq!(read(&g, a, 2 * PU), pattern(1, 2 * PU));
    // The other two, across the hole.
    assert_eq!(s.unmap(Iova(a), 7 * P).unwrap(), 4 * P);
    assert!(s.mappings().is_empty());
}

#[test]
fn unmap_of_an_empty_range_returns_zero() {
    let (s, g, _m, a) = three_mappings();
    assert_eq!(s.unmap(Iova(a + 2 * P), P).unwrap(), 0);
    assert_eq!(s.unmap(Iova(a + 4 * P), P).unwrap(), 0);
    assert_eq!(s.unmap(Iova(0), P).unwrap(), 0);
    assert_eq!(s.unmap(Iova(u64::MAX - P + 1), P).unwrap(), 0);
    all_three_intact(&s, &g, a);
    assert_eq!(space().unmap(Iova(0), u64::MAX - P + 1).unwrap(), 0);
}

#[test]
fn unmap_all_removes_everything() {
    let (s, g, _m, a) = three_mappings();
    let top = owned(PU);
    s.map(Iova(u64::MAX - P + 1), P, mem(&top, 0), Prot::READ)
        .unwrap();
    s.map(Iova(0), P, mem(&top, 0), Prot::READ).unwrap();
    assert_eq!(s.unmap_all().unwrap(), 7 * P);
    assert!(s.mappings().is_empty());
    for iova in [0, a, a + 5 * P, u64::MAX] {
        let e = err(g.read(Iova(iova), &mut [0u8]));
        assert_eq!(e.errno(), libc::EINVAL);
    }
    assert_eq!(s.unmap_all().unwrap(), 0);
    // The space is usable afterwards.
    s.map(Iova(a), P, mem(&top, 0), Prot::READ).unwrap();
    assert_eq!(s.mappings().len(), 1);
}

/// Two mappings that together cover all 2^64 IOVAs: the byte count does not fit in a u64.
#[test]
fn unmap_all_of_the_whole_space_does_not_overflow() {
    let s = space();
    let pm = me();
    s.map(Iova(0), 1 << 63, mem(&pm, 0), Prot::READ).unwrap();
    s.map(Iova(1 << 63), 1 << 63, mem(&pm, 0), Prot::READ)
        .unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.unmap_all()));
    // LIBRARY BUG (if this fails): `unmap_range` sums the removed sizes with `Iterator::sum`,
    // which overflows when the mappings cover all 2^64 bytes: a panic in debug builds, a
    // report of 0 bytes removed in release builds.
    match r {
        Err(_) => panic!("unmap_all panicked on 2^64 bytes removed"),
        // The count does not fit: the nearest u64 is the only honest answer.
        Ok(Ok(n)) => {
            assert_eq!(n, u64::MAX, "2^64 bytes removed reported as {n:#x}");
            assert!(s.mappings().is_empty());
        }
        // Or refuse, changing nothing.
        Ok(Err(e)) => {
            assert_eq!(s.mappings().len(), 2, "failed with {e:?} but unmapped");
        }
    }
}

/// When unmap returns, no access to the removed memory is in flight and none can start.
#[test]
fn unmap_waits_for_accesses_in_flight() {
    #[derive(Debug, Default)]
    struct Slow {
        inside: AtomicUsize,
        unmapped: AtomicBool,
        late: AtomicUsize,
    }
    impl Memory for Slow {
        fn len(&self) -> u64 {
            4 * P
        }
        fn read_at(&self, _offset: u64, buf: &mut [u8]) -> vdma::Result<()> {
            self.inside.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
            buf.fill(1);
            if self.unmapped.load(Ordering::SeqCst) {
                self.late.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }
        fn write_at(&self, offset: u64, buf: &[u8]) -> vdma::Result<()> {
            self.read_at(offset, &mut buf.to_vec())
        }
    }
    let s = space();
    let g = group(&s);
    let slow = Arc::new(Slow::default());
    s.map(Iova(0x10000), 4 * P, mem(&slow, 0), Prot::READ_WRITE)
        .unwrap();
    std::thread::scope(|t| {
        for _ in 0..3 {
            t.spawn(|| {
                let mut buf = [0u8; 64];
                while g.read(Iova(0x10100), &mut buf).is_ok() {}
                let e = g.write(Iova(0x10100), &buf).unwrap_err();
                assert_eq!(e.errno(), libc::EINVAL);
            });
        }
        while slow.inside.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        let t0 = Instant::now();
        assert_eq!(s.unmap(Iova(0x10000), 4 * P).unwrap(), 4 * P);
        slow.unmapped.store(true, Ordering::SeqCst);
        assert!(
            t0.elapsed() >= Duration::from_millis(1),
            "unmap did not wait"
        );
    });
    assert_eq!(
        slow.late.load(Ordering::SeqCst),
        0,
        "an access ran after unmap returned"
    );
}

// ---------------------------------------------------------------------------------------------
// §2 Groups, devices and handles
// ---------------------------------------------------------------------------------------------

#[test]
fn detach_group_with_live_handle_is_ebusy() {
    let s = space();
    s.attach_group(GroupId(3)).unwrap();
    let h = s.group_handle(GroupId(3)).unwrap();
    let h2 = s.group_handle(GroupId(3)).unwrap();
    assert_eq!(h.id(), GroupId(3));
    let e = err(s.detach_group(GroupId(3)));
    assert_eq!(e.errno(), libc::EBUSY);
    assert!(matches!(e, Error::HandlesLive { .. }), "{e:?}");
    drop(h);
    assert_eq!(err(s.detach_group(GroupId(3))).errno(), libc::EBUSY);
    drop(h2);
    s.detach_group(GroupId(3)).unwrap();
    // Gone now: ENODEV for a second detach and for a handle.
    assert_eq!(err(s.detach_group(GroupId(3))).errno(), libc::ENODEV);
    assert_eq!(err(s.group_handle(GroupId(3))).errno(), libc::ENODEV);
    // It can be attached again.
    s.attach_group(GroupId(3)).unwrap();
}

#[test]
fn device_handle_counts_as_a_handle_on_its_group() {
    let s = space();
    s.attach_group(GroupId(4)).unwrap();
    s.add_device(GroupId(4), DeviceId::new("0000:00:04.0"))
        .unwrap();
    let d = s.device_handle(&DeviceId::new("0000:00:04.0")).unwrap();
    assert_eq!(d.id(), &DeviceId::new("0000:00:04.0"));
    assert_eq!(d.group(), GroupId(4));
    let e = err(s.detach_group(GroupId(4)));
    assert_eq!(e.errno(), libc::EBUSY);
    drop(d);
    s.detach_group(GroupId(4)).unwrap();
    // The device went with its group.
    let e = err(s.device_handle(&DeviceId::new("0000:00:04.0")));
    assert_eq!(e.errno(), libc::ENODEV);
}

#[test]
fn unknown_group_or_device_is_enodev() {
    let s = space();
    for e in [
        err(s.detach_group(GroupId(9))),
        err(s.group_handle(GroupId(9))),
        err(s.add_device(GroupId(9), DeviceId::new("dev"))),
        err(s.device_handle(&DeviceId::new("dev"))),
    ] {
        assert_eq!(e.errno(), libc::ENODEV, "{e:?}");
        assert!(matches!(e, Error::NoDevice { .. }), "{e:?}");
    }
    s.attach_group(GroupId(9)).unwrap();
    assert_eq!(
        err(s.device_handle(&DeviceId::new("dev"))).errno(),
        libc::ENODEV
    );
    assert_eq!(err(s.detach_group(GroupId(10))).errno(), libc::ENODEV);
}

#[test]
fn double_attach_is_eexist() {
    let s = space();
    s.attach_group(GroupId(1)).unwrap();
    s.attach_group(GroupId(2)).unwrap();
    let e = err(s.attach_group(GroupId(1)));
    assert_eq!(e.errno(), libc::EEXIST);
    assert!(matches!(e, Error::AlreadyAttached { .. }), "{e:?}");
    s.add_device(GroupId(1), DeviceId::new("a")).unwrap();
    // The same device twice, in the same group or another one.
    assert_eq!(
        err(s.add_device(GroupId(1), DeviceId::new("a"))).errno(),
        libc::EEXIST
    );
    assert_eq!(
        err(s.add_device(GroupId(2), DeviceId::new("a"))).errno(),
        libc::EEXIST
    );
    assert_eq!(
        s.device_handle(&DeviceId::new("a")).unwrap().group(),
        GroupId(1)
    );
}

#[test]
fn handles_keep_the_container_alive() {
    let s = space();
    s.attach_group(GroupId(1)).unwrap();
    s.add_device(GroupId(1), DeviceId::new("d")).unwrap();
    let m = owned(PU);
    s.map(Iova(0x1000), P, mem(&m, 0), Prot::READ_WRITE)
        .unwrap();
    let g = s.group_handle(GroupId(1)).unwrap();
    let d = s.device_handle(&DeviceId::new("d")).unwrap();
    drop(s);
    drop(m);
    for _ in 0..1000 {
        d.write(Iova(0x1010), b"alive").unwrap();
    }
    assert_eq!(read(&g, 0x1010, 5), b"alive");
}

#[test]
fn group_and_device_handles_reach_the_same_memory() {
    let s = space();
    s.attach_group(GroupId(1)).unwrap();
    s.add_device(GroupId(1), DeviceId::new("d")).unwrap();
    let m = owned(2 * PU);
    s.map(Iova(0x1000), 2 * P, mem(&m, 0), Prot::READ_WRITE)
        .unwrap();
    let g = s.group_handle(GroupId(1)).unwrap();
    let d = s.device_handle(&DeviceId::new("d")).unwrap();
    let mut data = pattern(4, 300);
    d.dma_rw(Iova(0x1f00), &mut data, Direction::Write).unwrap();
    let mut back = vec![0u8; 300];
    g.dma_rw(Iova(0x1f00), &mut back, Direction::Read).unwrap();
    assert_eq!(back, data);
    let mut back2 = vec![0u8; 300];
    d.read(Iova(0x1f00), &mut back2).unwrap();
    assert_eq!(back2, data);
    assert_eq!(mem_read(&*m, 0xf00, 300), data);
    // Errors are the same through both.
    assert_eq!(err(d.read(Iova(0x5000), &mut [0])).errno(), libc::EINVAL);
    assert_eq!(err(g.read(Iova(0x5000), &mut [0])).errno(), libc::EINVAL);
    let sd = d.translate(Iova(0x1f00), 300, Prot::READ).unwrap();
    let sg = g.translate(Iova(0x1f00), 300, Prot::READ).unwrap();
    assert_eq!(sd.as_slice(), sg.as_slice());
}

// ---------------------------------------------------------------------------------------------
// §3 dma_rw
// ---------------------------------------------------------------------------------------------

#[test]
fn zero_length_is_einval() {
    let s = space();
    s.attach_group(GroupId(1)).unwrap();
    s.add_device(GroupId(1), DeviceId::new("d")).unwrap();
    let g = s.group_handle(GroupId(1)).unwrap();
    let d = s.device_handle(&DeviceId::new("d")).unwrap();
    let m = owned(PU);
    s.map(Iova(0x1000), P, mem(&m, 0), Prot::READ_WRITE)
        .unwrap();
    for iova in [0x1000u64, 0x1800, 0x9000, u64::MAX] {
        for dir in [Direction::Read, Direction::Write] {
            let e = err(g.dma_rw(Iova(iova), &mut [], dir));
            assert_eq!(e.errno(), libc::EINVAL);
            assert!(matches!(e, Error::ZeroLength), "{e:?}");
            assert!(matches!(
                err(d.dma_rw(Iova(iova), &mut [], dir)),
                Error::ZeroLength
            ));
        }
        assert!(matches!(err(g.write(Iova(iova), &[])), Error::ZeroLength));
        assert!(matches!(
            err(g.translate(Iova(iova), 0, Prot::READ)),
            Error::ZeroLength
        ));
    }
}

#[test]
fn wrap_is_eoverflow() {
    let s = space();
    let g = group(&s);
    // Unmapped, then mapped at the top: a wrap is EOVERFLOW either way, before any lookup.
    for mapped in [false, true] {
        if mapped {
            let m = owned(PU);
            s.map(Iova(u64::MAX - P + 1), P, mem(&m, 0), Prot::READ_WRITE)
                .unwrap();
        }
        for (iova, len) in [
            (u64::MAX, 2usize),
            (u64::MAX - 10, 12),
            (u64::MAX - P + 1, PU + 1),
        ] {
            for dir in [Direction::Read, Direction::Write] {
                let mut buf = vec![0x77u8; len];
                let e = err(g.dma_rw(Iova(iova), &mut buf, dir));
                assert_eq!(e.errno(), libc::EOVERFLOW, "{iova:#x}+{len}");
                assert!(
                    matches!(e, Error::Overflow { iova: Iova(i), len: l } if i == iova && l == len as u64),
                    "{e:?}"
                );
                assert!(buf.iter().all(|&b| b == 0x77));
            }
            let e = err(g.translate(Iova(iova), len, Prot::READ));
            assert_eq!(e.errno(), libc::EOVERFLOW);
        }
    }
    // The same lengths one byte shorter fit.
    assert_eq!(read(&g, u64::MAX - 10, 11).len(), 11);
}

#[test]
fn crosses_mappings_of_different_kinds() {
    let s = space();
    let g = group(&s);
    let o = owned(3 * PU);
    let file = memfd("cross", 4 * P);
    let region = Region::new(2 * PU);
    let pm = me();
    let a = 0x8000_0000u64;
    // [a, a+2P): owned at offset P; [a+2P, a+4P): memfd at offset 2P;
    // [a+4P, a+6P): this very process, through process_vm_readv/writev.
    s.map(Iova(a), 2 * P, mem(&o, P), Prot::READ_WRITE).unwrap();
    s.map(
        Iova(a + 2 * P),
        2 * P,
        Backing::file(&file, 2 * P),
        Prot::READ_WRITE,
    )
    .unwrap();
    s.map(
        Iova(a + 4 * P),
        2 * P,
        mem(&pm, region.addr()),
        Prot::READ_WRITE,
    )
    .unwrap();

    // From the middle of the first to the middle of the last.
    let start = a + P + 123;
    let len = (5 * P - 123 - 77) as usize;
    let data = pattern(42, len);
    g.write(Iova(start), &data).unwrap();
    let mut back = vec![0u8; len];
    g.dma_rw(Iova(start), &mut back, Direction::Read).unwrap();
    assert_eq!(back, data);

    // Each piece landed in its own memory.
    let n1 = (P - 123) as usize;
    let n2 = 2 * PU;
    assert_eq!(mem_read(&*o, 2 * P + 123, n1), data[..n1]);
    assert_eq!(pread(&file, 2 * P, n2), data[n1..n1 + n2]);
    assert_eq!(region.get(0, len - n1 - n2), data[n1 + n2..]);
    // Nothing outside the range moved.
    assert!(mem_read(&*o, P, PU + 123).iter().all(|&b| b == 0));
    assert!(region.get(2 * PU - 77, 77).iter().all(|&b| b == 0));

    // And the other way: change each memory behind vdma's back, read across.
    o.write_at(3 * P - 1, &[0xa1]).unwrap();
    file.write_all_at(&[0xb2, 0xb3], 2 * P).unwrap();
    file.write_all_at(&[0xb4], 4 * P - 1).unwrap();
    region.set(0, &[0xc5]);
    assert_eq!(
        read(&g, a + 2 * P - 1, 2 + 2 * PU),
        [
            &[0xa1, 0xb2, 0xb3][..],
            &data[n1 + 2..n1 + n2 - 1],
            &[0xb4, 0xc5]
        ]
        .concat()
    );
}

#[test]
fn hole_is_einval_naming_first_unmapped_iova() {
    let s = space();
    let g = group(&s);
    let m = owned(4 * PU);
    let a = 0x10_0000u64;
    // [a, a+P) [hole a+P..a+2P) [a+2P, a+3P) [hole from a+3P on)
    s.map(Iova(a), P, mem(&m, 0), Prot::READ_WRITE).unwrap();
    s.map(Iova(a + 2 * P), P, mem(&m, P), Prot::READ_WRITE)
        .unwrap();
    for (iova, len, first_hole) in [
        (a + 100, PU, a + P),               // runs into the hole
        (a + P - 1, 2, a + P),              // one byte in, one byte out
        (a + P + 5, 10, a + P + 5),         // starts in the hole
        (a + 2 * P + 10, PU, a + 3 * P),    // runs off the end
        (a - 1, 2, a - 1),                  // starts before everything
        (a, 4 * PU, a + P),                 // two holes: the first is named
        (0x9999, 1, 0x9999),                // nowhere near
        (a + 3 * P - 1, 1 + PU, a + 3 * P), // last byte then nothing
    ] {
        for dir in [Direction::Read, Direction::Write] {
            let mut buf = vec![0x5au8; len];
            let e = err(g.dma_rw(Iova(iova), &mut buf, dir));
            assert_eq!(e.errno(), libc::EINVAL, "{iova:#x}+{len}");
            match e {
                Error::NotMapped { iova: Iova(i) } => {
                    assert_eq!(i, first_hole, "{iova:#x}+{len} {dir:?}")
                }
                other => panic!("{other:?}"),
            }
        }
        let e = err(g.translate(Iova(iova), len, Prot::READ));
        assert!(
            matches!(e, Error::NotMapped { iova: Iova(i) } if i == first_hole),
            "translate {iova:#x}+{len}: {e:?}"
        );
    }
}

#[test]
fn read_needs_read_write_needs_write_eperm() {
    let s = space();
    let g = group(&s);
    let m = owned(4 * PU);
    m.write_at(0, &pattern(1, 4 * PU)).unwrap();
    s.map(Iova(0x1000), P, mem(&m, 0), Prot::READ).unwrap();
    s.map(Iova(0x2000), P, mem(&m, P), Prot::WRITE).unwrap();
    s.map(Iova(0x3000), P, mem(&m, 2 * P), Prot::READ_WRITE)
        .unwrap();

    // A write to READ-only memory.
    let e = err(g.write(Iova(0x1010), b"no"));
    assert_eq!(e.errno(), libc::EPERM);
    assert!(
        matches!(e, Error::Permission { iova: Iova(0x1010), needed } if needed == Prot::WRITE),
        "{e:?}"
    );
    // A read of WRITE-only memory.
    let e = err(g.read(Iova(0x2010), &mut [0u8; 2]));
    assert_eq!(e.errno(), libc::EPERM);
    assert!(
        matches!(e, Error::Permission { iova: Iova(0x2010), needed } if needed == Prot::READ),
        "{e:?}"
    );
    // Across mappings: the first byte lacking the permission is named.
    let e = err(g.read(Iova(0x1ff0), &mut [0u8; 32]));
    assert!(
        matches!(
            e,
            Error::Permission {
                iova: Iova(0x2000),
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(g.write(Iova(0x1ff0), &[0u8; 32]));
    assert!(
        matches!(e, Error::Permission { iova: Iova(0x1ff0), needed } if needed == Prot::WRITE),
        "{e:?}"
    );
    // WRITE-only is enough for a write.
    g.write(Iova(0x2010), b"yes").unwrap();
    assert_eq!(mem_read(&*m, P + 0x10, 3), b"yes");
    // WRITE-only into READ_WRITE is a fine write, but not a read.
    g.write(Iova(0x2ff0), &[0x66u8; 32]).unwrap();
    let e = err(g.read(Iova(0x2ff0), &mut [0u8; 32]));
    assert!(
        matches!(e, Error::Permission { iova: Iova(0x2ff0), needed } if needed == Prot::READ),
        "{e:?}"
    );
    // What is allowed works.
    assert_eq!(read(&g, 0x1000, PU), pattern(1, 4 * PU)[..PU]);
    g.write(Iova(0x3000), b"ok").unwrap();
    // translate follows the same rule.
    assert_eq!(
        err(g.translate(Iova(0x1000), 1, Prot::WRITE)).errno(),
        libc::EPERM
    );
    assert_eq!(
        err(g.translate(Iova(0x2000), 1, Prot::READ)).errno(),
        libc::EPERM
    );
    let e = err(g.translate(Iova(0x1000), 1, Prot::READ_WRITE));
    assert_eq!(e.errno(), libc::EPERM);
    assert_eq!(
        g.translate(Iova(0x3000), 1, Prot::READ_WRITE)
            .unwrap()
            .len(),
        1
    );
}

/// A write needs only WRITE (type1 also demands READ).
#[test]
fn write_only_mapping_allows_write() {
    let s = space();
    let g = group(&s);
    let m = owned(2 * PU);
    let file = memfd("wo", 2 * P);
    s.map(Iova(0x10000), P, mem(&m, P), Prot::WRITE).unwrap();
    s.map(Iova(0x11000), P, Backing::file(&file, P), Prot::WRITE)
        .unwrap();
    // Inside one mapping of each kind.
    g.write(Iova(0x10010), b"owned").unwrap();
    g.write(Iova(0x11010), b"file").unwrap();
    assert_eq!(mem_read(&*m, P + 0x10, 5), b"owned");
    assert_eq!(pread(&file, P + 0x10, 4), b"file");
    // Across both.
    let data = pattern(7, 200);
    g.write(Iova(0x10f9c), &data).unwrap();
    assert_eq!(mem_read(&*m, P + 0xf9c, 100), data[..100]);
    assert_eq!(pread(&file, P, 100), data[100..]);
    let segs = g.translate(Iova(0x10f9c), 200, Prot::WRITE).unwrap();
    assert_eq!(segs.len(), 200);
    assert_eq!(
        err(g.read(Iova(0x10f9c), &mut [0u8; 1])).errno(),
        libc::EPERM
    );
}

/// All or nothing: a hole or a permission error anywhere in the range, found before any byte
/// moves, leaves memory and `buf` untouched.
#[test]
fn failed_access_moves_no_byte() {
    let s = space();
    let g = group(&s);
    let o = owned(2 * PU);
    let file = memfd("aon", 3 * P);
    let region = Region::new(PU);
    let pm = me();
    let a = 0x20_0000u64;
    // [a: owned RW][a+P: file RW][a+2P: process RW][a+3P: file READ][a+4P: hole]
    // [a+5P: owned RW][a+6P: file WRITE][a+7P: hole]
    s.map(Iova(a), P, mem(&o, 0), Prot::READ_WRITE).unwrap();
    s.map(Iova(a + P), P, Backing::file(&file, 0), Prot::READ_WRITE)
        .unwrap();
    s.map(
        Iova(a + 2 * P),
        P,
        mem(&pm, region.addr()),
        Prot::READ_WRITE,
    )
    .unwrap();
    s.map(Iova(a + 3 * P), P, Backing::file(&file, P), Prot::READ)
        .unwrap();
    s.map(Iova(a + 5 * P), P, mem(&o, P), Prot::READ_WRITE)
        .unwrap();
    s.map(Iova(a + 6 * P), P, Backing::file(&file, 2 * P), Prot::WRITE)
        .unwrap();
    let init = pattern(11, 6 * PU);
    g.write(Iova(a), &init[..3 * PU]).unwrap();
    file.write_all_at(&init[3 * PU..4 * PU], P).unwrap();
    o.write_at(P, &init[4 * PU..5 * PU]).unwrap();
    file.write_all_at(&init[5 * PU..], 2 * P).unwrap();
    let memory = || {
        [
            mem_read(&*o, 0, PU),
            pread(&file, 0, PU),
            region.get(0, PU),
            pread(&file, P, PU),
            mem_read(&*o, P, PU),
            pread(&file, 2 * P, PU),
        ]
        .concat()
    };
    assert_eq!(memory(), init);

    // (start, len, dir, errno): each range is fine up to its far end.
    let cases = [
        (a + 10, 3 * PU, Direction::Write, libc::EPERM), // ends in the READ-only file
        (a + 2 * P - 1, 2 * PU, Direction::Write, libc::EPERM),
        (a + 2 * P, PU + 1, Direction::Write, libc::EPERM),
        (a + 10, 4 * PU, Direction::Read, libc::EINVAL), // ends in the hole
        (a + P + 7, 3 * PU, Direction::Read, libc::EINVAL),
        (a + 5 * P + 10, PU, Direction::Read, libc::EPERM), // ends in the WRITE-only file
        (a + 5 * P + 10, 2 * PU, Direction::Write, libc::EINVAL), // ends in the last hole
    ];
    for (start, len, dir, errno) in cases {
        let mut buf = vec![0xeeu8; len];
        let e = err(g.dma_rw(Iova(start), &mut buf, dir));
        assert_eq!(e.errno(), errno, "{start:#x}+{len:#x} {dir:?}: {e:?}");
        assert!(
            buf.iter().all(|&b| b == 0xee),
            "buf changed: {start:#x}+{len:#x} {dir:?}"
        );
        assert_eq!(
            memory(),
            init,
            "memory changed: {start:#x}+{len:#x} {dir:?}"
        );
    }
    // Through a device handle too.
    s.add_device(GroupId(1), DeviceId::new("d")).unwrap();
    let d = s.device_handle(&DeviceId::new("d")).unwrap();
    let e = err(d.write(Iova(a), &[0x11; 4 * PU + 1]));
    assert_eq!(e.errno(), libc::EPERM);
    assert_eq!(memory(), init);
    // The same ranges short of their bad end work.
    g.write(Iova(a + 10), &[0x11; 3 * PU - 10]).unwrap();
    assert_eq!(read(&g, a + 5 * P + 10, PU - 10), init[4 * PU + 10..5 * PU]);
}

/// Byte granular: any iova, any length, across mappings of every kind, against a model.
#[test]
fn byte_granular_unaligned_accesses_match_a_model() {
    let s = space();
    let g = group(&s);
    let o = owned(3 * PU);
    let file = memfd("model", 3 * P);
    let region = Region::new(2 * PU);
    let raw_region = Region::new(PU);
    // SAFETY: raw_region stays mapped while the space can reach it: unmap_all below removes
    // the mapping before the end of the test.
    let raw = Arc::new(unsafe { RawMemory::new(raw_region.ptr(), PU) });
    let pm = me();
    let a = 0x7_0000_0000u64;
    let sizes = [
        (2 * P, "owned"),
        (P, "raw"),
        (2 * P, "file"),
        (2 * P, "process"),
    ];
    let mut at = a;
    for (size, kind) in sizes {
        let b = match kind {
            "owned" => mem(&o, P),
            "raw" => mem(&raw, 0),
            "file" => Backing::file(&file, P),
            _ => mem(&pm, region.addr()),
        };
        s.map(Iova(at), size, b, Prot::READ_WRITE).unwrap();
        at += size;
    }
    let total = (at - a) as usize;
    let mut model = vec![0u8; total];
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for step in 0..2000 {
        let off = rng.gen_range(0..total);
        let len = rng.gen_range(1..=(total - off).min(3 * PU));
        if rng.gen_bool(0.5) {
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            g.write(Iova(a + off as u64), &data).unwrap();
            model[off..off + len].copy_from_slice(&data);
        } else {
            let mut buf = vec![0u8; len];
            g.read(Iova(a + off as u64), &mut buf).unwrap();
            assert_eq!(buf, model[off..off + len], "step {step}: {off:#x}+{len:#x}");
        }
    }
    // The memory itself agrees with the model.
    let mut i = 0;
    assert_eq!(mem_read(&*o, P, 2 * PU), model[i..i + 2 * PU]);
    i += 2 * PU;
    assert_eq!(raw_region.get(0, PU), model[i..i + PU]);
    i += PU;
    assert_eq!(pread(&file, P, 2 * PU), model[i..i + 2 * PU]);
    i += 2 * PU;
    assert_eq!(region.get(0, 2 * PU), model[i..]);
    assert_eq!(s.unmap_all().unwrap(), total as u64);
}

#[test]
fn concurrent_dma_rw_with_map_and_unmap_of_other_ranges() {
    let s = space();
    let g = group(&s);
    let m = owned(64 * PU);
    for t in 0..4u64 {
        s.map(
            Iova(0x100_0000 * (t + 1)),
            4 * P,
            mem(&m, t * 4 * P),
            Prot::READ_WRITE,
        )
        .unwrap();
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let mut workers = Vec::new();
        for t in 0..4u64 {
            let g = &g;
            let stop = &stop;
            workers.push(scope.spawn(move || {
                let base = 0x100_0000 * (t + 1);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n < 1000 {
                    let data = pattern((n + t) as u8, 1000);
                    let off = (n * 97) % (4 * P - 1000);
                    g.write(Iova(base + off), &data).unwrap();
                    assert_eq!(read(g, base + off, 1000), data);
                    n += 1;
                }
                n
            }));
        }
        let other = owned(PU);
        for i in 0..500u64 {
            let iova = 0x4000_0000 + (i % 7) * P;
            s.map(Iova(iova), P, mem(&other, 0), Prot::READ_WRITE)
                .unwrap();
            g.write(Iova(iova), &[i as u8]).unwrap();
            assert_eq!(s.unmap(Iova(iova), P).unwrap(), P);
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            assert!(w.join().unwrap() >= 1000);
        }
    });
}

/// Shared memory may change under the copy: a writer outside vdma racing with dma_rw reads
/// never makes them fail or see bytes that were never there.
#[test]
fn shared_memory_changing_under_the_copy_is_tolerated() {
    let s = space();
    let g = group(&s);
    let file = memfd("racy", 2 * P);
    s.map(
        Iova(0x10000),
        2 * P,
        Backing::file(&file, 0),
        Prot::READ_WRITE,
    )
    .unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|t| {
        t.spawn(|| {
            let mut v = 0u8;
            while !stop.load(Ordering::Relaxed) {
                v = if v == 0x11 { 0x22 } else { 0x11 };
                file.write_all_at(&[v; 2 * PU], 0).unwrap();
            }
        });
        for _ in 0..2000 {
            let buf = read(&g, 0x10000, 2 * PU);
            assert!(buf.iter().all(|&b| b == 0 || b == 0x11 || b == 0x22));
        }
        stop.store(true, Ordering::Relaxed);
    });
}

// ---------------------------------------------------------------------------------------------
// §3 translate (the same rules, for devices that touch memory directly)
// ---------------------------------------------------------------------------------------------

#[test]
fn translate_gives_segments_across_mappings() {
    let s = space();
    let g = group(&s);
    let o = owned(4 * PU);
    let file = memfd("translate", 2 * P);
    let region = Region::new(PU);
    // SAFETY: `region` outlives every use: the mapping is removed by unmap_all below.
    let raw = Arc::new(unsafe { RawMemory::new(region.ptr(), PU) });
    let a = 0x30_0000u64;
    s.map(Iova(a), 2 * P, mem(&o, P), Prot::READ_WRITE).unwrap();
    s.map(
        Iova(a + 2 * P),
        P,
        Backing::file(&file, P),
        Prot::READ_WRITE,
    )
    .unwrap();
    s.map(Iova(a + 3 * P), P, mem(&raw, 0), Prot::READ_WRITE)
        .unwrap();
    let data = pattern(13, 4 * PU - 200);
    g.write(Iova(a + 100), &data).unwrap();

    let segs = g.translate(Iova(a + 100), data.len(), Prot::READ).unwrap();
    let got: Vec<(u64, usize)> = segs.as_slice().iter().map(|s| (s.iova.0, s.len)).collect();
    assert_eq!(
        got,
        vec![
            (a + 100, 2 * PU - 100),
            (a + 2 * P, PU),
            (a + 3 * P, PU - 100)
        ]
    );
    assert_eq!(segs.len(), data.len());
    assert!(!segs.is_empty());
    // The raw memory's segment is at the address it was given.
    assert_eq!(segs.as_slice()[2].host.0, region.ptr() as usize);
    // The host bytes are the ones dma_rw wrote.
    let mut joined = Vec::new();
    for seg in segs.as_slice() {
        let mut v = vec![0u8; seg.len];
        // SAFETY: the segments are held; raw copy out of shared memory.
        unsafe { std::ptr::copy_nonoverlapping(seg.host.as_ptr(), v.as_mut_ptr(), seg.len) };
        joined.extend(v);
    }
    assert_eq!(joined, data);
    // Writing through a segment is seen by dma_rw and by the file.
    let seg = segs.as_slice()[1];
    // SAFETY: held, and the mapping has WRITE.
    unsafe { seg.host.as_ptr().write_volatile(0xcd) };
    assert_eq!(read(&g, a + 2 * P, 1), [0xcd]);
    assert_eq!(pread(&file, P, 1), [0xcd]);
    drop(segs);
    assert_eq!(s.unmap_all().unwrap(), 4 * P);
}

#[test]
fn translate_of_process_memory_is_einval_and_holds_nothing() {
    let s = space_with(Config {
        busy_timeout: Duration::from_secs(10),
        ..Config::default()
    });
    let g = group(&s);
    let o = owned(PU);
    let region = Region::new(PU);
    let pm = me();
    s.map(Iova(0x10000), P, mem(&o, 0), Prot::READ_WRITE)
        .unwrap();
    s.map(Iova(0x11000), P, mem(&pm, region.addr()), Prot::READ_WRITE)
        .unwrap();
    let e = err(g.translate(Iova(0x11000), 16, Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(
        matches!(
            e,
            Error::NoHostAddress {
                iova: Iova(0x11000)
            }
        ),
        "{e:?}"
    );
    // Starting in the owned mapping: EINVAL at the first byte without a host address.
    let e = err(g.translate(Iova(0x10ff0), 32, Prot::READ));
    assert!(
        matches!(
            e,
            Error::NoHostAddress {
                iova: Iova(0x11000)
            }
        ),
        "{e:?}"
    );
    // The failed translation released what it held: unmap does not wait.
    let t0 = Instant::now();
    assert_eq!(s.unmap(Iova(0x10000), 2 * P).unwrap(), 2 * P);
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn unmap_while_segments_are_held_waits_then_ebusy() {
    let timeout = Duration::from_millis(200);
    let s = space_with(Config {
        busy_timeout: timeout,
        ..Config::default()
    });
    let g = group(&s);
    let m = owned(2 * PU);
    let other = owned(PU);
    s.map(Iova(0x10000), 2 * P, mem(&m, 0), Prot::READ_WRITE)
        .unwrap();
    s.map(Iova(0x20000), P, mem(&other, 0), Prot::READ_WRITE)
        .unwrap();
    g.write(Iova(0x10ffe), b"held").unwrap();
    let segs = g.translate(Iova(0x10ffe), 4, Prot::READ).unwrap();

    for (iova, size) in [(0x10000u64, 2 * P), (0x0, 0x100000)] {
        let t0 = Instant::now();
        let e = err(s.unmap(Iova(iova), size));
        let waited = t0.elapsed();
        assert_eq!(e.errno(), libc::EBUSY);
        assert!(
            matches!(
                e,
                Error::MappingBusy {
                    iova: Iova(0x10000)
                }
            ),
            "{e:?}"
        );
        assert!(waited >= timeout, "gave up after {waited:?}");
        // Nothing was unmapped, and the memory stays readable both ways.
        assert_eq!(s.mappings().len(), 2);
        assert_eq!(read(&g, 0x10ffe, 4), b"held");
        assert_eq!(read(&g, 0x20000, 1), [0]);
        let mut host = [0u8; 2];
        // SAFETY: the segment is still held.
        unsafe {
            std::ptr::copy_nonoverlapping(segs.as_slice()[0].host.as_ptr(), host.as_mut_ptr(), 2)
        };
        assert_eq!(&host, b"he");
    }
    let e = err(s.unmap_all());
    assert_eq!(e.errno(), libc::EBUSY);
    assert_eq!(s.mappings().len(), 2);
    // New translations work again after the failed unmap.
    drop(g.translate(Iova(0x10000), 1, Prot::READ).unwrap());
    // Other mappings can be unmapped meanwhile.
    assert_eq!(s.unmap(Iova(0x20000), P).unwrap(), P);

    drop(segs);
    let t0 = Instant::now();
    assert_eq!(s.unmap(Iova(0x10000), 2 * P).unwrap(), 2 * P);
    assert!(t0.elapsed() < timeout);
    assert!(s.mappings().is_empty());
}

#[test]
fn unmap_waits_for_segments_dropped_during_the_wait() {
    let s = space_with(Config {
        busy_timeout: Duration::from_secs(10),
        ..Config::default()
    });
    let g = group(&s);
    let m = owned(PU);
    s.map(Iova(0x10000), P, mem(&m, 0), Prot::READ_WRITE)
        .unwrap();
    let segs = g.translate(Iova(0x10000), PU, Prot::READ).unwrap();
    std::thread::scope(|t| {
        let h = t.spawn(|| {
            let t0 = Instant::now();
            let r = s.unmap(Iova(0x10000), P);
            (r, t0.elapsed())
        });
        // While unmap waits, new translations of the mapping are refused (EAGAIN); dma_rw
        // still works.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match g.translate(Iova(0x10000), 1, Prot::READ) {
                Err(e) => {
                    assert_eq!(e.errno(), libc::EAGAIN, "{e:?}");
                    break;
                }
                Ok(other) => drop(other),
            }
            assert!(Instant::now() < deadline, "unmap never started waiting");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(read(&g, 0x10000, 1), [0]);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!h.is_finished(), "unmap returned while segments were held");
        drop(segs);
        let (r, waited) = h.join().unwrap();
        assert_eq!(r.unwrap(), P);
        assert!(waited >= Duration::from_millis(100));
        assert!(waited < Duration::from_secs(10));
    });
    assert!(s.mappings().is_empty());
}

// ---------------------------------------------------------------------------------------------
// §6 Memory behind a mapping
// ---------------------------------------------------------------------------------------------

#[test]
fn fd_backed_bytes_are_shared_with_an_independent_mmap() {
    let s = space();
    let g = group(&s);
    let file = memfd("shared", 4 * P);
    s.map(
        Iova(0x10000),
        2 * P,
        Backing::file(&file, P),
        Prot::READ_WRITE,
    )
    .unwrap();
    // An independent MAP_SHARED mapping of the same memfd.
    // SAFETY: a new shared mapping of our own file; checked.
    let other = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4 * PU,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(other, libc::MAP_FAILED);
    let other = other.cast::<u8>();
    let peek = |off: usize, len: usize| {
        let mut v = vec![0u8; len];
        // SAFETY: inside the 4-page mapping.
        unsafe { std::ptr::copy_nonoverlapping(other.add(off), v.as_mut_ptr(), len) };
        v
    };
    // dma_rw -> the other mapping (and the file).
    let data = pattern(21, 300);
    g.write(Iova(0x10f00), &data).unwrap();
    assert_eq!(peek(PU + 0xf00, 300), data);
    assert_eq!(pread(&file, P + 0xf00, 300), data);
    // The other mapping -> dma_rw.
    // SAFETY: inside the mapping.
    unsafe { std::ptr::copy_nonoverlapping(b"from-outside".as_ptr(), other.add(2 * PU + 5), 12) };
    assert_eq!(read(&g, 0x11005, 12), b"from-outside");
    // pwrite -> dma_rw.
    file.write_all_at(b"pwritten", P).unwrap();
    assert_eq!(read(&g, 0x10000, 8), b"pwritten");
    // Pages outside the mapped part are untouched.
    assert!(peek(0, PU).iter().all(|&b| b == 0));
    assert!(peek(3 * PU, PU).iter().all(|&b| b == 0));
    // SAFETY: our mapping.
    unsafe { libc::munmap(other.cast(), 4 * PU) };
}

#[test]
fn fd_backed_memory_is_mapped_shared_with_the_mappings_protection() {
    let s = space();
    let g = group(&s);
    let file = memfd("prot", 2 * P);
    s.map(Iova(0x10000), P, Backing::file(&file, 0), Prot::READ)
        .unwrap();
    s.map(Iova(0x20000), P, Backing::file(&file, P), Prot::READ_WRITE)
        .unwrap();
    let ro = g
        .translate(Iova(0x10000), 1, Prot::READ)
        .unwrap()
        .as_slice()[0]
        .host
        .0;
    let rw = g
        .translate(Iova(0x20000), 1, Prot::READ)
        .unwrap()
        .as_slice()[0]
        .host
        .0;
    let ro_perms = perms_at(ro);
    let rw_perms = perms_at(rw);
    assert_eq!(&ro_perms[..3], "r--", "READ mapping is {ro_perms}");
    assert_eq!(&ro_perms[3..], "s", "not MAP_SHARED: {ro_perms}");
    assert_eq!(rw_perms, "rw-s");
}

/// 65,535 mappings of one memfd (the default entry limit) all work, and cost the process a
/// handful of kernel mappings, not one each: vm.max_map_count is 65,530.
#[test]
fn mappings_65535_of_one_memfd_all_work() {
    const N: u64 = 65535;
    let name = "vdma-rules-65535-of-one-memfd";
    let file = memfd(name, N * P);
    let lines_before = maps().len();
    let s = space();
    let g = group(&s);
    let base = 0x100_0000_0000u64;
    let iova = |i: u64| base + i * 2 * P; // a hole after each
    for i in 0..N {
        s.map(
            Iova(iova(i)),
            P,
            Backing::file(&file, i * P),
            Prot::READ_WRITE,
        )
        .unwrap_or_else(|e| panic!("map {i}: {e} (errno {})", e.errno()));
    }
    assert_eq!(s.mappings().len(), N as usize);
    let e = err(s.map(Iova(iova(N)), P, Backing::file(&file, 0), Prot::READ_WRITE));
    assert_eq!(e.errno(), libc::ENOSPC);
    assert!(matches!(e, Error::NoSpace { limit: 65535 }), "{e:?}");

    let lines = maps();
    let ours = lines.iter().filter(|l| l.contains(name)).count();
    assert!(ours <= 2, "{ours} kernel mappings of the memfd");
    assert!(
        lines.len() < lines_before + 1000,
        "/proc/self/maps grew from {lines_before} to {} lines",
        lines.len()
    );

    for i in [0, 1, 2, N / 2, N - 2, N - 1] {
        let first = [(i & 0xff) as u8, 0xf1];
        let last = [0x1a, (i >> 8) as u8];
        g.write(Iova(iova(i)), &first).unwrap();
        g.write(Iova(iova(i) + P - 2), &last).unwrap();
        assert_eq!(read(&g, iova(i), 2), first);
        assert_eq!(read(&g, iova(i) + P - 2, 2), last);
        assert_eq!(pread(&file, i * P, 2), first, "mapping {i}");
        assert_eq!(pread(&file, i * P + P - 2, 2), last, "mapping {i}");
        // The hole after it.
        let e = err(g.read(Iova(iova(i) + P - 1), &mut [0u8; 2]));
        assert!(
            matches!(e, Error::NotMapped { iova: Iova(x) } if x == iova(i) + P),
            "{e:?}"
        );
    }
    // Every mapping answers.
    for i in (0..N).step_by(97) {
        g.write(Iova(iova(i) + 7), &[0x42]).unwrap();
        assert_eq!(pread(&file, i * P + 7, 1), [0x42], "mapping {i}");
    }
    assert_eq!(s.unmap_all().unwrap(), N * P);
    let ours = maps().iter().filter(|l| l.contains(name)).count();
    assert_eq!(ours, 0, "the host mapping outlived every mapping");
}

#[test]
fn raw_host_memory_is_used_in_place() {
    let s = space();
    let g = group(&s);
    let region = Region::new(2 * PU);
    // SAFETY: `region` outlives the mapping, which is unmapped before the end of the test.
    let raw = Arc::new(unsafe { RawMemory::new(region.ptr(), 2 * PU) });
    s.map(Iova(0x10000), P, mem(&raw, P), Prot::READ_WRITE)
        .unwrap();
    g.write(Iova(0x10010), b"raw").unwrap();
    assert_eq!(region.get(PU + 0x10, 3), b"raw");
    region.set(PU + 0x20, b"direct");
    assert_eq!(read(&g, 0x10020, 6), b"direct");
    let segs = g.translate(Iova(0x10000), 1, Prot::READ).unwrap();
    assert_eq!(segs.as_slice()[0].host.0, region.ptr() as usize + PU);
    drop(segs);
    assert_eq!(s.unmap(Iova(0x10000), P).unwrap(), P);
}

/// Memory with no host address (a vfio-user client's, reached by messages): dma_rw goes through
/// `read_at`/`write_at` with the right offsets, and it cannot be translated.
#[test]
fn memory_without_a_host_address_is_reached_by_read_at_and_write_at() {
    #[derive(Debug)]
    struct Messages {
        bytes: Mutex<Vec<u8>>,
        log: Mutex<Vec<(char, u64, usize)>>,
    }
    impl Memory for Messages {
        fn len(&self) -> u64 {
            self.bytes.lock().unwrap().len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> vdma::Result<()> {
            self.log.lock().unwrap().push(('r', offset, buf.len()));
            let b = self.bytes.lock().unwrap();
            buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, offset: u64, buf: &[u8]) -> vdma::Result<()> {
            self.log.lock().unwrap().push(('w', offset, buf.len()));
            let mut b = self.bytes.lock().unwrap();
            b[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
    }
    let s = space();
    let g = group(&s);
    let msg = Arc::new(Messages {
        bytes: Mutex::new(vec![0; 4 * PU]),
        log: Mutex::new(Vec::new()),
    });
    let o = owned(PU);
    s.map(Iova(0x10000), P, mem(&o, 0), Prot::READ_WRITE)
        .unwrap();
    s.map(Iova(0x11000), 2 * P, mem(&msg, P), Prot::READ_WRITE)
        .unwrap();
    let data = pattern(8, 200);
    g.write(Iova(0x10f9c), &data).unwrap();
    assert_eq!(*msg.log.lock().unwrap(), vec![('w', P, 100)]);
    assert_eq!(msg.bytes.lock().unwrap()[PU..PU + 100], data[100..]);
    assert_eq!(read(&g, 0x10f9c, 200), data);
    assert_eq!(msg.log.lock().unwrap()[1], ('r', P, 100));
    let e = err(g.translate(Iova(0x11000), 1, Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(
        matches!(
            e,
            Error::NoHostAddress {
                iova: Iova(0x11000)
            }
        ),
        "{e:?}"
    );
}

/// Memory of this process that faults (here: PROT_NONE) while being copied gives EFAULT at the
/// access, never a crash.
#[test]
fn process_memory_that_faults_while_copying_is_efault() {
    let s = space();
    let g = group(&s);
    let region = Region::new(2 * PU);
    region.set(0, b"fine");
    // SAFETY: the second page of our own region.
    assert_eq!(
        unsafe { libc::mprotect(region.ptr().add(PU).cast(), PU, libc::PROT_NONE) },
        0
    );
    let pm = me();
    s.map(
        Iova(0x10000),
        2 * P,
        mem(&pm, region.addr()),
        Prot::READ_WRITE,
    )
    .unwrap();
    assert_eq!(read(&g, 0x10000, 4), b"fine");
    let e = err(g.read(Iova(0x11000), &mut [0u8; 8]));
    assert_eq!(e.errno(), libc::EFAULT);
    assert!(
        matches!(
            e,
            Error::Fault {
                iova: Iova(0x11000)
            }
        ),
        "{e:?}"
    );
    let e = err(g.write(Iova(0x11008), &[1u8; 8]));
    assert_eq!(e.errno(), libc::EFAULT);
    assert!(
        matches!(
            e,
            Error::Fault {
                iova: Iova(0x11008)
            }
        ),
        "{e:?}"
    );
    // The good page is still fine.
    g.write(Iova(0x10004), b"!").unwrap();
    assert_eq!(region.get(0, 5), b"fine!");
}

/// Another process: a forked child holds a buffer at a known address. It is read and written
/// through ProcessMemory; the child checks what it received; once it is gone, ESRCH.
#[test]
fn another_process_is_read_and_written_then_esrch_once_gone() {
    let region = Region::new(2 * PU);
    let initial = pattern(0x11, 2 * PU);
    region.set(0, &initial);
    let incoming = pattern(0x77, 2 * PU - 100);
    let mut expected = initial.clone();
    expected[50..50 + incoming.len()].copy_from_slice(&incoming);
    let (rfd, wfd) = pipe();

    // SAFETY: the child only calls async-signal-safe functions (close, read, _exit) and reads
    // memory that existed before the fork; it allocates nothing.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            libc::close(wfd);
            let mut b = 0u8;
            let n = libc::read(rfd, (&mut b as *mut u8).cast(), 1);
            let mut ok = n == 1 && b == b'g';
            for i in 0..2 * PU {
                if region.ptr().add(i).read_volatile() != *expected.as_ptr().add(i) {
                    ok = false;
                }
            }
            libc::_exit(if ok { 0 } else { 1 });
        }
    }
    let mut child = Child { pid, reaped: false };
    // SAFETY: our end of the pipe, not used again.
    unsafe { libc::close(rfd) };
    // The parent's copy differs from the child's from now on.
    region.fill(0x33);

    let s = space();
    let g = group(&s);
    let pm = Arc::new(ProcessMemory::open(pid).unwrap());
    assert_eq!(pm.pid(), pid);
    assert!(!pm.is_gone());
    let a = 0x4000_0000u64;
    let o = owned(PU);
    s.map(Iova(a - P), P, mem(&o, 0), Prot::READ_WRITE).unwrap();
    s.map(Iova(a), 2 * P, mem(&pm, region.addr()), Prot::READ_WRITE)
        .unwrap();

    // Reads see the child's bytes, not the parent's.
    assert_eq!(read(&g, a, 2 * PU), initial);
    // Across from our own memory into the child's.
    o.write_at(P - 4, b"mine").unwrap();
    assert_eq!(read(&g, a - 4, 8), [&b"mine"[..], &initial[..4]].concat());
    // Writes land in the child.
    g.write(Iova(a + 50), &incoming).unwrap();
    assert_eq!(read(&g, a, 2 * PU), expected);
    assert!(region.get(0, 2 * PU).iter().all(|&b| b == 0x33));

    // Let the child check and exit.
    // SAFETY: one byte from a local.
    assert_eq!(unsafe { libc::write(wfd, b"g".as_ptr().cast(), 1) }, 1);
    // SAFETY: our end of the pipe.
    unsafe { libc::close(wfd) };
    let status = child.wait();
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child did not see the bytes written"
    );

    // Gone and reaped: ESRCH, both ways.
    assert!(pm.is_gone());
    let mut buf = vec![0x99u8; 64];
    let e = err(g.read(Iova(a), &mut buf));
    assert_eq!(e.errno(), libc::ESRCH);
    assert!(
        matches!(e, Error::ProcessGone { pid: p } if p == pid),
        "{e:?}"
    );
    let e = err(g.write(Iova(a + 10), &buf));
    assert_eq!(e.errno(), libc::ESRCH);
    let e = err(ProcessMemory::open(pid));
    assert_eq!(e.errno(), libc::ESRCH);
    // Our own memory next to it is unaffected.
    assert_eq!(read(&g, a - 4, 4), b"mine");
}

/// A process that has exited is ESRCH for accesses before it is reaped, and a map onto memory of
/// a gone process is ESRCH (§1: "the memory cannot back it (... process gone): ESRCH").
#[test]
fn map_of_a_gone_process_is_esrch() {
    let region = Region::new(PU);
    let (rfd, wfd) = pipe();
    // SAFETY: the child only calls close, read and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            libc::close(wfd);
            let mut b = 0u8;
            libc::read(rfd, (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    let mut child = Child { pid, reaped: false };
    // SAFETY: our end of the pipe.
    unsafe { libc::close(rfd) };
    let pm = Arc::new(ProcessMemory::open(pid).unwrap());
    let s = space();
    let g = group(&s);
    s.map(Iova(0x10000), P, mem(&pm, region.addr()), Prot::READ_WRITE)
        .unwrap();
    assert_eq!(read(&g, 0x10000, 4), [0, 0, 0, 0]);
    // Let it exit, but do not reap it yet.
    // SAFETY: one byte from a static, then our end of the pipe.
    unsafe {
        assert_eq!(libc::write(wfd, b"x".as_ptr().cast(), 1), 1);
        libc::close(wfd);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pm.is_gone() {
        assert!(Instant::now() < deadline, "child did not exit");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A zombie: ESRCH already.
    let e = err(g.read(Iova(0x10000), &mut [0u8; 4]));
    assert_eq!(e.errno(), libc::ESRCH, "{e:?}");
    let e = err(g.write(Iova(0x10000), &[0u8; 4]));
    assert_eq!(e.errno(), libc::ESRCH, "{e:?}");
    child.wait();

    // LIBRARY BUG (if this fails): map does not check that the process behind a ProcessMemory
    // is still there, so it succeeds for a gone process instead of ESRCH.
    let r = s.map(Iova(0x20000), P, mem(&pm, region.addr()), Prot::READ);
    let mapped = r.is_ok();
    let e = r.err();
    assert!(
        matches!(e, Some(ref e) if e.errno() == libc::ESRCH),
        "map onto memory of a gone process gave {e:?} (mapped: {mapped})"
    );
    assert_eq!(s.mappings().len(), 1);
}

/// A pid reused by a new process is never accessed through the old process's memory (§6). The
/// pid is reused on purpose through /proc/sys/kernel/ns_last_pid, which needs privileges; without
/// them the test says so and checks only the first half.
#[test]
fn a_reused_pid_is_never_accessed() {
    let region = Region::new(PU);
    region.fill(0xaa);
    let (ra, wa) = pipe();
    // SAFETY: the child only calls close, read and _exit.
    let pid_a = unsafe { libc::fork() };
    assert!(pid_a >= 0);
    if pid_a == 0 {
        // SAFETY: see above.
        unsafe {
            libc::close(wa);
            let mut b = 0u8;
            libc::read(ra, (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    let mut a = Child {
        pid: pid_a,
        reaped: false,
    };
    // SAFETY: our end of the pipe.
    unsafe { libc::close(ra) };
    let pm = Arc::new(ProcessMemory::open(pid_a).unwrap());
    let s = space();
    let g = group(&s);
    s.map(Iova(0x10000), P, mem(&pm, region.addr()), Prot::READ_WRITE)
        .unwrap();
    assert_eq!(read(&g, 0x10000, 16), [0xaa; 16]);
    // SAFETY: one byte from a static, then our end of the pipe.
    unsafe {
        assert_eq!(libc::write(wa, b"x".as_ptr().cast(), 1), 1);
        libc::close(wa);
    }
    a.wait();
    assert_eq!(
        err(g.read(Iova(0x10000), &mut [0u8; 16])).errno(),
        libc::ESRCH
    );

    // A new process with the same pid and the same memory layout, holding other bytes.
    region.fill(0xbb);
    let mut b = None;
    for _ in 0..50 {
        if std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", pid_a - 1)).is_err() {
            eprintln!("cannot set ns_last_pid: the reused-pid half of this test is skipped");
            return;
        }
        let (rb, wb) = pipe();
        // SAFETY: the child only calls close, read and _exit, and reads memory that existed
        // before the fork.
        let pid_b = unsafe { libc::fork() };
        assert!(pid_b >= 0);
        if pid_b == 0 {
            // SAFETY: see above.
            unsafe {
                libc::close(wb);
                let mut byte = 0u8;
                let n = libc::read(rb, (&mut byte as *mut u8).cast(), 1);
                let mut ok = n == 1;
                for i in 0..PU {
                    if region.ptr().add(i).read_volatile() != 0xbb {
                        ok = false;
                    }
                }
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        // SAFETY: our end of the pipe.
        unsafe { libc::close(rb) };
        let child = Child {
            pid: pid_b,
            reaped: false,
        };
        if pid_b == pid_a {
            b = Some((child, wb));
            break;
        }
        // SAFETY: our end of the pipe; dropping `child` kills and reaps it.
        unsafe { libc::close(wb) };
    }
    let Some((mut b, wb)) = b else {
        eprintln!("pid {pid_a} was not handed out again: the reused-pid half is skipped");
        return;
    };
    // The old memory object must not reach the new process, either way.
    // LIBRARY BUG (if the assert_ne fails): ProcessMemory::read_at issues process_vm_readv
    // straight into the caller's buffer and only then sees, through the pidfd, that the process
    // is gone: the error is right, but the bytes of the process that reused the pid are left
    // in `buf`.
    let mut buf = [0u8; 16];
    let e = err(g.read(Iova(0x10000), &mut buf));
    assert_eq!(e.errno(), libc::ESRCH, "{e:?}");
    assert_ne!(
        buf, [0xbb; 16],
        "read the memory of a process that reused the pid"
    );
    let e = err(g.write(Iova(0x10000), &[0xcc; 16]));
    assert_eq!(e.errno(), libc::ESRCH, "{e:?}");
    // SAFETY: one byte from a static, then our end of the pipe.
    unsafe {
        assert_eq!(libc::write(wb, b"x".as_ptr().cast(), 1), 1);
        libc::close(wb);
    }
    let status = b.wait();
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the process that reused the pid had its memory written"
    );
}

// ---------------------------------------------------------------------------------------------
// §3 Memory that fails while copying: a file shrunk under the mapping (run in a child process,
// so that a SIGBUS fails this test instead of killing the whole test binary)
// ---------------------------------------------------------------------------------------------

const CHILD_ENV: &str = "VDMA_RULES_SHRINK_CHILD";

#[test]
fn file_shrunk_under_the_mapping_is_efault_not_a_crash() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_file_shrunk_under_the_mapping",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.success(),
        "the child process failed ({:?}, signal {:?}):\n{stdout}\n{stderr}",
        out.status,
        out.status.signal()
    );
    assert!(
        stdout.contains("1 passed"),
        "the child test did not run:\n{stdout}"
    );
}

#[test]
#[ignore = "run in a child process by file_shrunk_under_the_mapping_is_efault_not_a_crash"]
fn child_file_shrunk_under_the_mapping() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let s = space();
    let g = group(&s);
    let file = memfd("shrink", 4 * P);
    s.map(
        Iova(0x10000),
        4 * P,
        Backing::file(&file, 0),
        Prot::READ_WRITE,
    )
    .unwrap();
    g.write(Iova(0x10000), &pattern(1, 4 * PU)).unwrap();
    file.set_len(P).unwrap();
    // The first page is still there.
    assert_eq!(read(&g, 0x10000, 16), pattern(1, 16));
    let e = err(g.read(Iova(0x12000), &mut [0u8; 16]));
    assert_eq!(e.errno(), libc::EFAULT, "{e:?}");
    let e = err(g.write(Iova(0x13000), &[1u8; 16]));
    assert_eq!(e.errno(), libc::EFAULT, "{e:?}");
    let e = err(g.read(Iova(0x10ff0), &mut [0u8; 32]));
    assert_eq!(e.errno(), libc::EFAULT, "{e:?}");
    // Grown back and mapped afresh, the file works again (the old host mapping may stay
    // poisoned, but a new mapping of the file must not inherit that).
    file.set_len(4 * P).unwrap();
    assert_eq!(s.unmap(Iova(0x10000), 4 * P).unwrap(), 4 * P);
    s.map(
        Iova(0x10000),
        4 * P,
        Backing::file(&file, 0),
        Prot::READ_WRITE,
    )
    .unwrap();
    assert_eq!(read(&g, 0x10000, 16), pattern(1, 16));
    g.write(Iova(0x13000), b"back").unwrap();
    assert_eq!(read(&g, 0x13000, 4), b"back");
    assert_eq!(pread(&file, 3 * P, 4), b"back");
}
