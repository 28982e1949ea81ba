//! One test per rule of semantics §5 (dirty-page tracking, container level and device level),
//! a reference model for device-level reports at several page-size ratios, and "no lost dirt"
//! with writers running concurrently with reports. Every error is checked by its errno against
//! `libc`.
//!
//! Tests marked `LIBRARY BUG` fail against the current library; the comment above each says what
//! is wrong.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vdma::{
    Backing, Bitmap, Config, Container, DeviceHandle, DeviceId, Error, GroupId, Iova, Memory, Prot,
};

mod common;
use common::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// [`env_with`], with an unmap callback on the device that does nothing (so that it may pin).
fn env_with_noop(config: Config) -> (Container, Arc<DeviceHandle>) {
    let (space, dev) = env_with(config);
    dev.set_unmap_callback(|_, _| {});
    (space, dev)
}

/// [`env_with_noop`] of [`config`].
fn env_noop() -> (Container, Arc<DeviceHandle>) {
    env_with_noop(config())
}

fn set(b: &Bitmap) -> Vec<u64> {
    b.iter_set().collect()
}

fn write(dev: &DeviceHandle, iova: u64, len: usize) {
    let data = vec![0xa5u8; len];
    dev.write(Iova(iova), &data).unwrap();
}

/// Checks a bitmap's own consistency: its words hold exactly `pages` bits, and `is_set`,
/// `iter_set`, `count` and `to_le_bytes` agree.
fn check_bitmap(b: &Bitmap) {
    assert_eq!(b.words().len() as u64, b.pages().div_ceil(64));
    let set: Vec<u64> = b.iter_set().collect();
    assert!(
        set.iter().all(|&n| n < b.pages()),
        "bit past the end: {set:?}"
    );
    assert_eq!(set.len() as u64, b.count());
    for &n in &set {
        assert!(b.is_set(n));
    }
    let bytes = b.to_le_bytes();
    assert_eq!(bytes.len(), b.words().len() * 8);
    for n in 0..b.pages() {
        let byte = bytes[(n / 8) as usize];
        assert_eq!(byte >> (n % 8) & 1 == 1, b.is_set(n), "bit {n}");
    }
}

// ---------------------------------------------------------------------------------------------
// §5 container level: arguments
// ---------------------------------------------------------------------------------------------

#[test]
fn report_with_tracking_off_is_einval() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    let e = err(space.dirty_report(Iova(0x10000), 4 * P, P));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert!(matches!(e, Error::NotTracking), "{e:?}");
    assert_eq!(space.dirty_page_size(), None);
    space.dirty_start(P).unwrap();
    assert_eq!(space.dirty_page_size(), Some(P));
    write(&dev, 0x10000, 1);
    space.dirty_report(Iova(0x10000), 4 * P, P).unwrap();
    space.dirty_stop().unwrap();
    assert_eq!(space.dirty_page_size(), None);
    let e = err(space.dirty_report(Iova(0x10000), 4 * P, P));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
}

#[test]
fn report_page_size_other_than_the_tracking_page_size_is_einval() {
    let (space, _dev) = env_noop();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    space.dirty_start(2 * P).unwrap();
    for ps in [P, 4 * P, 2 * P + 1, 0] {
        let e = err(space.dirty_report(Iova(0x10000), 4 * P, ps));
        assert_eq!(e.errno(), libc::EINVAL, "{ps:#x}: {e}");
    }
    let b = space.dirty_report(Iova(0x10000), 4 * P, 2 * P).unwrap();
    assert_eq!(b.pages(), 2);
    assert_eq!(b.page_size(), 2 * P);
}

#[test]
fn report_misaligned_is_einval() {
    let (space, _dev) = env_noop();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    for (iova, size) in [
        (0x10800, 4 * P),
        (0x10000, 0x3800),
        (0x10001, P),
        (0x10000, 0),
    ] {
        let e = err(space.dirty_report(Iova(iova), size, P));
        assert_eq!(e.errno(), libc::EINVAL, "{iova:#x}+{size:#x}: {e}");
    }
    // Aligned to the page size of the space but not to a larger tracking page size.
    let (space, _dev) = env_noop();
    map_owned(&space, 0x20000, 8, Prot::READ_WRITE);
    space.dirty_start(4 * P).unwrap();
    for (iova, size) in [(0x21000, 4 * P), (0x20000, 6 * P)] {
        let e = err(space.dirty_report(Iova(iova), size, 4 * P));
        assert_eq!(e.errno(), libc::EINVAL, "{iova:#x}+{size:#x}: {e}");
        assert!(matches!(e, Error::Misaligned { .. }), "{e:?}");
    }
}

#[test]
fn report_of_a_range_cutting_a_mapping_is_einval_and_clears_nothing() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    write(&dev, 0x11000, 1);
    write(&dev, 0x13fff, 1);
    for (iova, size) in [
        (0x11000, 3 * P),
        (0x10000, 2 * P),
        (0x11000, P),
        (0xf000, 2 * P),
    ] {
        let e = err(space.dirty_report(Iova(iova), size, P));
        assert_eq!(e.errno(), libc::EINVAL, "{iova:#x}+{size:#x}: {e}");
        assert!(
            matches!(
                e,
                Error::Straddles {
                    iova: Iova(0x10000)
                }
            ),
            "{e:?}"
        );
    }
    let b = space.dirty_report(Iova(0x10000), 4 * P, P).unwrap();
    assert_eq!(set(&b), vec![1, 3]);
}

#[test]
fn start_again_with_the_same_page_size_is_fine_with_another_einval() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 8, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    write(&dev, 0x12000, 1);
    space.dirty_start(P).unwrap();
    assert_eq!(space.dirty_page_size(), Some(P));
    for ps in [2 * P, 8 * P] {
        let e = err(space.dirty_start(ps));
        assert_eq!(e.errno(), libc::EINVAL, "{ps:#x}: {e}");
    }
    // Tracking went on at the first page size, and the repeated and refused starts lost nothing.
    assert_eq!(space.dirty_page_size(), Some(P));
    write(&dev, 0x15000, 1);
    let b = space.dirty_report(Iova(0x10000), 8 * P, P).unwrap();
    assert_eq!(set(&b), vec![2, 5]);
}

#[test]
fn stop_when_not_started_is_fine() {
    let (space, _dev) = env_noop();
    space.dirty_stop().unwrap();
    space.dirty_stop().unwrap();
    assert_eq!(space.dirty_page_size(), None);
    space.dirty_start(P).unwrap();
    space.dirty_stop().unwrap();
    space.dirty_stop().unwrap();
}

#[test]
fn start_with_a_page_size_not_a_power_of_two_or_below_the_page_size_is_einval() {
    let (space, _dev) = env_noop();
    for ps in [0, 1, 512, 2048, 3 * P, 6144, P + 1, u64::MAX] {
        let e = err(space.dirty_start(ps));
        assert_eq!(e.errno(), libc::EINVAL, "{ps:#x}: {e}");
        assert_eq!(space.dirty_page_size(), None);
    }
    let (space, _dev) = env_with_noop(Config {
        page_size: 2 * P,
        ..config()
    });
    let e = err(space.dirty_start(P));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    space.dirty_start(2 * P).unwrap();
    assert_eq!(space.dirty_page_size(), Some(2 * P));
}

// ---------------------------------------------------------------------------------------------
// §5 container level: what is marked and reported
// ---------------------------------------------------------------------------------------------

/// LIBRARY BUG: `dma.rs`, `Space::dma_rw`, fast path (`if last <= first.last { ... return
/// xfer.copy(first, ...) }`): a write that lies inside one mapping returns without calling
/// `mark_dirty`, so it marks nothing, neither in the container-level log nor in device logs.
#[test]
fn a_write_inside_one_mapping_marks_its_pages() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    dev.dma_logging_start(&[(Iova(0x10000), 4 * P)], P).unwrap();
    write(&dev, 0x12010, 1);
    write(&dev, 0x10fff, 2);
    let b = space.dirty_report(Iova(0x10000), 4 * P, P).unwrap();
    assert_eq!(set(&b), vec![0, 1, 2], "container level");
    let b = dev.dma_logging_report(Iova(0x10000), 4 * P, P).unwrap();
    assert_eq!(set(&b), vec![0, 1, 2], "device level");
}

#[test]
fn writes_mark_exactly_the_pages_they_touch_and_reads_mark_nothing() {
    let (space, dev) = env_noop();
    // A (file, 3 pages) and B (owned, 2 pages) adjacent; a hole; C; D read-only.
    let file = memfd("dirty-marks", 3 * P);
    space
        .map(
            Iova(0x10000),
            3 * P,
            Backing::file(&file, 0),
            Prot::READ_WRITE,
        )
        .unwrap();
    map_owned(&space, 0x13000, 2, Prot::READ_WRITE);
    map_owned(&space, 0x20000, 1, Prot::READ_WRITE);
    map_owned(&space, 0x21000, 1, Prot::READ);
    space.dirty_start(P).unwrap();

    // Reads of everything mark nothing.
    let mut buf = vec![0u8; 5 * PU];
    dev.read(Iova(0x10000), &mut buf).unwrap();
    dev.read(Iova(0x20000), &mut buf[..2 * PU]).unwrap();
    let b = space.dirty_report(Iova(0x10000), 0x12000, P).unwrap();
    assert_eq!(b.count(), 0, "reads marked {:?}", set(&b));

    // Failed writes mark nothing: one runs into the hole, one into the read-only page.
    assert_eq!(
        err(dev.write(Iova(0x14ff0), &[1; 0x20])).errno(),
        libc::EINVAL
    );
    assert_eq!(
        err(dev.write(Iova(0x20ff0), &[1; 0x20])).errno(),
        libc::EPERM
    );

    write(&dev, 0x10fff, 1); // the last byte of page 0
    write(&dev, 0x11fff, 2); // pages 1 and 2
    write(&dev, 0x12ffe, 4); // page 2 of A and page 0 of B (page 3)
    write(&dev, 0x20000, 1); // C (page 0x10)
    let b = space.dirty_report(Iova(0x10000), 0x12000, P).unwrap();
    check_bitmap(&b);
    assert_eq!(b.iova(), Iova(0x10000));
    assert_eq!(b.pages(), 0x12);
    assert_eq!(set(&b), vec![0, 1, 2, 3, 0x10]);
}

#[test]
fn report_reads_and_clears() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 2, Prot::READ_WRITE);
    map_owned(&space, 0x12000, 2, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    write(&dev, 0x11ff0, 0x20); // pages 1 and 2, across the two mappings
    let b = space.dirty_report(Iova(0x10000), 4 * P, P).unwrap();
    assert_eq!(set(&b), vec![1, 2]);
    let b = space.dirty_report(Iova(0x10000), 4 * P, P).unwrap();
    assert_eq!(b.count(), 0, "second report: {:?}", set(&b));
    // A report of one mapping clears that mapping only.
    write(&dev, 0x11ff0, 0x20);
    let b = space.dirty_report(Iova(0x12000), 2 * P, P).unwrap();
    assert_eq!(set(&b), vec![0]);
    let b = space.dirty_report(Iova(0x10000), 4 * P, P).unwrap();
    assert_eq!(set(&b), vec![1]);
}

#[test]
fn report_of_several_mappings_with_holes_puts_each_bit_in_place() {
    let (space, dev) = env_noop();
    let base = 0x100000;
    map_owned(&space, base, 130, Prot::READ_WRITE); // pages 0..130
    map_owned(&space, base + 132 * P, 3, Prot::READ_WRITE); // pages 132..135
    map_owned(&space, base + 200 * P, 1, Prot::READ_WRITE); // outside the report
    space.dirty_start(P).unwrap();
    for page in [0, 63, 64, 129, 134, 200] {
        write(&dev, base + page * P + 17, 3);
    }
    let b = space.dirty_report(Iova(base), 140 * P, P).unwrap();
    check_bitmap(&b);
    assert_eq!(b.pages(), 140);
    assert_eq!(b.words(), &[1 | 1 << 63, 1, 2 | 1 << 6]);
    let mut le = vec![0u8; 24];
    le[0] = 1;
    le[7] = 0x80;
    le[8] = 1;
    le[16] = 0x42;
    assert_eq!(b.to_le_bytes(), le);
    // The mapping outside kept its bit; a report starting in a hole shifts the bits.
    for page in [0, 134] {
        write(&dev, base + page * P, 1);
    }
    let b = space.dirty_report(Iova(base - 2 * P), 300 * P, P).unwrap();
    check_bitmap(&b);
    assert_eq!(set(&b), vec![2, 136, 202]);
}

#[test]
fn a_tracking_page_size_larger_than_the_page_size_marks_whole_tracking_pages() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x40000, 8, Prot::READ_WRITE);
    map_owned(&space, 0x48000, 8, Prot::READ_WRITE);
    space.dirty_start(4 * P).unwrap();
    write(&dev, 0x40000 + 5 * P + 9, 1); // 16 KiB page 1
    write(&dev, 0x40000 + 8 * P - 1, 2); // pages 1 and 2, across the mappings
    write(&dev, 0x40000 + 15 * P + 4095, 1); // page 3
    let b = space.dirty_report(Iova(0x40000), 16 * P, 4 * P).unwrap();
    assert_eq!(b.pages(), 4);
    assert_eq!(set(&b), vec![1, 2, 3]);
}

#[test]
fn pages_pinned_with_write_are_in_every_report_and_read_pins_are_not() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    map_owned(&space, 0x20000, 4, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    dev.pin(Iova(0x11000), 1, Prot::WRITE).unwrap();
    dev.pin(Iova(0x12000), 1, Prot::READ).unwrap();
    // A page with a READ and a WRITE pin, unpinned once: which pin went is unknown, so it may
    // still be written and stays dirty.
    dev.pin(Iova(0x13000), 1, Prot::READ).unwrap();
    dev.pin(Iova(0x13000), 1, Prot::READ_WRITE).unwrap();
    dev.unpin(Iova(0x13000), 1).unwrap();
    dev.pin(Iova(0x22000), 2, Prot::READ_WRITE).unwrap();
    for _ in 0..3 {
        let b = space.dirty_report(Iova(0x10000), 0x14000, P).unwrap();
        assert_eq!(set(&b), vec![1, 3, 0x12, 0x13]);
    }
    // A write to the READ-pinned page shows once.
    write(&dev, 0x12000, 1);
    let b = space.dirty_report(Iova(0x10000), 0x14000, P).unwrap();
    assert_eq!(set(&b), vec![1, 2, 3, 0x12, 0x13]);
    let b = space.dirty_report(Iova(0x10000), 4 * P, P).unwrap();
    assert_eq!(set(&b), vec![1, 3]);
    dev.unpin(Iova(0x11000), 1).unwrap();
    dev.unpin(Iova(0x12000), 1).unwrap();
    dev.unpin(Iova(0x13000), 1).unwrap();
    dev.unpin(Iova(0x22000), 2).unwrap();
}

/// LIBRARY BUG (lost dirt): a page pinned with WRITE is reported only while it is pinned
/// (`tracking.rs`, `set_write_pinned`, called from `dirty_report`). A device that writes through
/// the pinned host address and unpins before the next report loses that dirt: no report ever
/// shows the page. The kernel marks the page in the mapping's bitmap when it is pinned
/// (`vfio_iommu_type1_pin_pages`) and re-populates the bitmap with the pinned pages after each
/// report, so the first report after the unpin still shows it. Suggested fix: in `Space::unpin`,
/// when a page's last WRITE pin goes while tracking is on, mark the page in the entry's
/// container-level `DirtyLog` (and the same for `unmap`/`unmap_dirty`, whose callbacks unpin).
#[test]
fn a_write_pin_released_before_a_report_is_still_reported() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    // Pinned, written through the host address, unpinned, all between two reports.
    let hosts = dev.pin(Iova(0x11000), 1, Prot::WRITE).unwrap();
    write_host(hosts[0], 5, 0x77);
    dev.unpin(Iova(0x11000), 1).unwrap();
    let b = space.dirty_report(Iova(0x10000), 4 * P, P).unwrap();
    assert_eq!(set(&b), vec![1], "a write through a pin was lost");
    let b = space.dirty_report(Iova(0x10000), 4 * P, P).unwrap();
    assert_eq!(set(&b), Vec::<u64>::new());
    // Pinned across a report, written after it, then unpinned.
    let hosts = dev.pin(Iova(0x12000), 1, Prot::WRITE).unwrap();
    let b = space.dirty_report(Iova(0x10000), 4 * P, P).unwrap();
    assert_eq!(set(&b), vec![2]);
    write_host(hosts[0], 5, 0x78);
    dev.unpin(Iova(0x12000), 1).unwrap();
    let b = space.dirty_report(Iova(0x10000), 4 * P, P).unwrap();
    assert_eq!(set(&b), vec![2], "a write through a pin was lost");
}

/// LIBRARY BUG (lost dirt; the spec names only `dma_rw` writes and WRITE pins, but §5 "no
/// lost dirt" covers every device write): `segments.rs`, `Space::translate` / `Drop for
/// Segments`: memory translated for WRITE is written by the device through the host addresses,
/// and nothing ever marks it, so no report shows those pages. libvfio-user marks a writeable
/// scatter-gather list dirty when it is put back (`vfu_sgl_put`). Suggested fix: remember in
/// `Segments` whether it was translated with WRITE and, on drop (inside a read section, before
/// releasing the holds), mark its ranges in the entries' container-level logs and in every
/// device log, as `dma.rs::mark_dirty` does; while held, report its pages like WRITE pins.
#[test]
fn writes_through_segments_translated_for_write_are_reported() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    map_owned(&space, 0x14000, 4, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    dev.dma_logging_start(&[(Iova(0x10000), 8 * P)], P).unwrap();
    // Read-only translations mark nothing.
    drop(dev.translate(Iova(0x10000), 8 * PU, Prot::READ).unwrap());
    let segs = dev.translate(Iova(0x13800), PU, Prot::WRITE).unwrap();
    assert_eq!(segs.as_slice().len(), 2);
    for seg in segs.as_slice() {
        // SAFETY: the segment's memory is held mapped and writable while `segs` lives.
        unsafe { std::ptr::write_bytes(seg.host.as_ptr(), 0x3c, seg.len) };
    }
    drop(segs);
    let b = space.dirty_report(Iova(0x10000), 8 * P, P).unwrap();
    assert_eq!(set(&b), vec![3, 4], "container level");
    let b = dev.dma_logging_report(Iova(0x10000), 8 * P, P).unwrap();
    assert_eq!(set(&b), vec![3, 4], "device level");
}

#[test]
fn unmap_dirty_returns_the_removed_bitmap_relative_to_the_unmap_iova() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    map_owned(&space, 0x16000, 2, Prot::READ_WRITE);
    map_owned(&space, 0x30000, 2, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    write(&dev, 0x11000, 1);
    write(&dev, 0x13fff, 1);
    write(&dev, 0x17800, 1);
    write(&dev, 0x30000, 1);
    let (bytes, b) = space.unmap_dirty(Iova(0xe000), 0xa000).unwrap();
    check_bitmap(&b);
    assert_eq!(bytes, 6 * P);
    assert_eq!(b.iova(), Iova(0xe000));
    assert_eq!(b.page_size(), P);
    assert_eq!(b.pages(), 10);
    assert_eq!(set(&b), vec![3, 5, 9]);
    assert_eq!(space.mappings().len(), 1);
    // The mapping outside keeps its dirt.
    let b = space.dirty_report(Iova(0x30000), 2 * P, P).unwrap();
    assert_eq!(set(&b), vec![0]);
    // An empty range: nothing removed, a clear bitmap of the range's size.
    let (bytes, b) = space.unmap_dirty(Iova(0x80000), 3 * P).unwrap();
    assert_eq!((bytes, b.pages(), b.count()), (0, 3, 0));
    // A range cutting a mapping: EINVAL, nothing unmapped, the dirt stays.
    write(&dev, 0x30000, 1);
    for (iova, size) in [(0x2f000, 2 * P), (0x31000, P), (0x30000, P)] {
        let e = err(space.unmap_dirty(Iova(iova), size));
        assert_eq!(e.errno(), libc::EINVAL, "{iova:#x}+{size:#x}: {e}");
        assert!(matches!(e, Error::Straddles { .. }), "{e:?}");
    }
    assert_eq!(space.mappings().len(), 1);
    let (bytes, b) = space.unmap_dirty(Iova(0x30000), 2 * P).unwrap();
    assert_eq!((bytes, set(&b)), (2 * P, vec![0]));
}

#[test]
fn unmap_dirty_with_a_larger_tracking_page_size() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x40000, 8, Prot::READ_WRITE);
    map_owned(&space, 0x48000, 4, Prot::READ_WRITE);
    space.dirty_start(4 * P).unwrap();
    write(&dev, 0x40000 + 6 * P, 1);
    write(&dev, 0x48000 + 3 * P, 1);
    let e = err(space.unmap_dirty(Iova(0x41000), 4 * P));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    let (bytes, b) = space.unmap_dirty(Iova(0x3c000), 0x10000).unwrap();
    assert_eq!(bytes, 12 * P);
    assert_eq!(b.pages(), 4);
    assert_eq!(set(&b), vec![2, 3]);
}

#[test]
fn unmap_dirty_with_tracking_off_is_einval_and_unmaps_nothing() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    let e = err(space.unmap_dirty(Iova(0x10000), 4 * P));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert!(matches!(e, Error::NotTracking), "{e:?}");
    assert_eq!(space.mappings().len(), 1);
    space.dirty_start(P).unwrap();
    space.dirty_stop().unwrap();
    let e = err(space.unmap_dirty(Iova(0x10000), 4 * P));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    write(&dev, 0x10000, 1);
    assert_eq!(space.unmap(Iova(0x10000), 4 * P).unwrap(), 4 * P);
}

#[test]
fn unmap_without_the_bitmap_drops_that_dirt() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    map_owned(&space, 0x14000, 4, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    write(&dev, 0x13ff0, 0x20); // both mappings
    assert_eq!(space.unmap(Iova(0x10000), 4 * P).unwrap(), 4 * P);
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    let b = space.dirty_report(Iova(0x10000), 8 * P, P).unwrap();
    assert_eq!(set(&b), vec![4]);
}

#[test]
fn stop_drops_the_bits() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    write(&dev, 0x11ff0, 0x20);
    space.dirty_stop().unwrap();
    write(&dev, 0x13000, 1); // while stopped: not tracked
    space.dirty_start(P).unwrap();
    let b = space.dirty_report(Iova(0x10000), 4 * P, P).unwrap();
    assert_eq!(b.count(), 0, "{:?}", set(&b));
    // Restarted at another page size: fine after a stop.
    space.dirty_stop().unwrap();
    space.dirty_start(2 * P).unwrap();
    write(&dev, 0x12ff0, 0x20);
    let b = space.dirty_report(Iova(0x10000), 4 * P, 2 * P).unwrap();
    assert_eq!(set(&b), vec![1]);
}

#[test]
fn a_mapping_made_while_tracking_is_tracked() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x10000, 1, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    map_owned(&space, 0x11000, 3, Prot::READ_WRITE);
    let file = memfd("dirty-new", 2 * P);
    space
        .map(
            Iova(0x14000),
            2 * P,
            Backing::file(&file, 0),
            Prot::READ_WRITE,
        )
        .unwrap();
    write(&dev, 0x12000, 1);
    write(&dev, 0x15fff, 1);
    write(&dev, 0x10fff, 2);
    let b = space.dirty_report(Iova(0x10000), 6 * P, P).unwrap();
    assert_eq!(set(&b), vec![0, 1, 2, 5]);
    let (_, b) = space.unmap_dirty(Iova(0x14000), 2 * P).unwrap();
    assert_eq!(b.count(), 0);
}

#[test]
fn tracking_works_for_a_mapping_ending_at_2_pow_64() {
    let (space, dev) = env_noop();
    let top = u64::MAX - (2 * P - 1);
    map_owned(&space, top, 2, Prot::READ_WRITE);
    map_owned(&space, top - 2 * P, 2, Prot::READ_WRITE);
    space.dirty_start(P).unwrap();
    dev.dma_logging_start(&[(Iova(top - P), 3 * P)], P).unwrap();
    write(&dev, u64::MAX, 1);
    write(&dev, top - 1, 2); // across the two mappings
    let b = space.dirty_report(Iova(top - 2 * P), 4 * P, P).unwrap();
    assert_eq!(set(&b), vec![1, 2, 3]);
    let b = dev.dma_logging_report(Iova(top - 2 * P), 4 * P, P).unwrap();
    assert_eq!(set(&b), vec![1, 2, 3]);
    write(&dev, u64::MAX - 5, 6);
    let (bytes, b) = space.unmap_dirty(Iova(top), 2 * P).unwrap();
    assert_eq!((bytes, set(&b)), (2 * P, vec![1]));
}

/// Memory of the caller's own kind, as large as an IOVA range can be; it holds nothing.
#[derive(Debug)]
struct Vast;

impl Memory for Vast {
    fn len(&self) -> u64 {
        u64::MAX
    }
    fn read_at(&self, _offset: u64, buf: &mut [u8]) -> vdma::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _offset: u64, _buf: &[u8]) -> vdma::Result<()> {
        Ok(())
    }
}

/// LIBRARY BUG: `container.rs`, `Container::map` (via `table.rs`, `Entry::new`): a mapping made
/// while tracking gets a dirty log allocated at once with no size check (`dirty_start` checks
/// `MAX_BITMAP_PAGES`, `map` does not), so a large mapping (here 2^52 bytes: a 128 GiB bitmap)
/// aborts the whole process with "memory allocation failed" instead of failing. Suggested fix:
/// in `map`, while tracking, check the log's page count against `MAX_BITMAP_PAGES` (E2BIG, like
/// `dirty_start`) before building the entry, and allocate the log fallibly (`try_reserve`,
/// ENOMEM). Runs in a child process, since the failure is an abort.
#[test]
fn a_huge_map_while_tracking_fails_instead_of_aborting() {
    const CHILD: &str = "VDMA_DIRTY_TEST_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "a_huge_map_while_tracking_fails_instead_of_aborting",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the child died: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    // In the child.
    let (space, dev) = env_noop();
    space.dirty_start(P).unwrap();
    let size = 1u64 << 52;
    match space.map(
        Iova(0),
        size,
        Backing::memory(Arc::new(Vast), 0),
        Prot::READ_WRITE,
    ) {
        Ok(()) => {
            // If it maps, it is tracked.
            write(&dev, 5 * P, 1);
            let (_, b) = space.unmap_dirty(Iova(0), size).unwrap();
            assert_eq!(set(&b), vec![5]);
        }
        Err(e) => {
            assert!(
                [libc::E2BIG, libc::ENOMEM, libc::EINVAL].contains(&e.errno()),
                "{e}"
            );
            assert!(space.mappings().is_empty());
        }
    }
    // Mapped with tracking off, the same mapping makes a start fail, not abort.
    space.dirty_stop().unwrap();
    space
        .map(
            Iova(0),
            size,
            Backing::memory(Arc::new(Vast), 0),
            Prot::READ_WRITE,
        )
        .unwrap();
    let e = err(space.dirty_start(P));
    assert_eq!(e.errno(), libc::E2BIG, "{e}");
    assert_eq!(space.dirty_page_size(), None);
}

// ---------------------------------------------------------------------------------------------
// §5 device level: arguments
// ---------------------------------------------------------------------------------------------

fn logging_env() -> (Container, Arc<DeviceHandle>) {
    let (space, dev) = env_noop();
    map_owned(&space, 0x100000, 64, Prot::READ_WRITE);
    (space, dev)
}

#[test]
fn logging_start_with_no_ranges_is_einval() {
    let (_space, dev) = logging_env();
    let e = err(dev.dma_logging_start(&[], P));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    // Not started: a report says so.
    let e = err(dev.dma_logging_report(Iova(0x100000), P, P));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
}

#[test]
fn logging_start_with_more_than_256_ranges_is_e2big() {
    let (_space, dev) = logging_env();
    let ranges: Vec<(Iova, u64)> = (0..257).map(|i| (Iova(i * 2 * P), P)).collect();
    let e = err(dev.dma_logging_start(&ranges, P));
    assert_eq!(e.errno(), libc::E2BIG, "{e}");
    let e = err(dev.dma_logging_report(Iova(0), P, P));
    assert_eq!(
        e.errno(),
        libc::EINVAL,
        "the refused start started nothing: {e}"
    );
    dev.dma_logging_start(&ranges[..256], P).unwrap();
}

/// LIBRARY BUG: `tracking.rs`, `Space::logging_start`: overlapping ranges fail with
/// `Error::Exists` (EEXIST), where semantics §5 says EINVAL (as vfio-user's
/// DMA_LOGGING_START). Suggested fix: return an EINVAL variant (for example a new
/// `Error::OverlappingRanges { iova }` mapped to EINVAL) instead of `Error::Exists`.
#[test]
fn logging_start_with_overlapping_ranges_is_einval() {
    let (_space, dev) = logging_env();
    // Touching is not overlapping.
    dev.dma_logging_start(&[(Iova(0x100000), 2 * P), (Iova(0x102000), P)], P)
        .unwrap();
    dev.dma_logging_stop().unwrap();
    for ranges in [
        vec![(Iova(0x100000), 2 * P), (Iova(0x101000), 2 * P)],
        vec![(Iova(0x104000), P), (Iova(0x100000), 8 * P)], // unsorted, one inside the other
        vec![(Iova(0x100000), P), (Iova(0x100000), P)],
    ] {
        let e = err(dev.dma_logging_start(&ranges, P));
        assert_eq!(e.errno(), libc::EINVAL, "{ranges:?}: {e}");
    }
}

#[test]
fn logging_start_misaligned_is_einval() {
    let (_space, dev) = logging_env();
    for (iova, len, ps) in [
        (0x100800, P, P),
        (0x100000, 0x1800, P),
        (0x100000, 0, P),
        (0x101000, 2 * P, 2 * P),
        (0x100000, 3 * P, 2 * P),
    ] {
        let e = err(dev.dma_logging_start(&[(Iova(iova), len)], ps));
        assert_eq!(e.errno(), libc::EINVAL, "{iova:#x}+{len:#x}@{ps:#x}: {e}");
    }
    // One bad range among good ones.
    let e = err(dev.dma_logging_start(&[(Iova(0x100000), P), (Iova(0x108001), P)], P));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
}

#[test]
fn logging_start_with_a_bad_page_size_is_einval() {
    let (_space, dev) = logging_env();
    for ps in [0, 1, 512, 2048, 3 * P, 6144, P + 1] {
        let e = err(dev.dma_logging_start(&[(Iova(0x100000), 16 * P)], ps));
        assert_eq!(e.errno(), libc::EINVAL, "{ps:#x}: {e}");
    }
    dev.dma_logging_start(&[(Iova(0x100000), 16 * P)], 16 * P)
        .unwrap();
}

#[test]
fn logging_start_with_a_range_past_2_pow_64_is_eoverflow() {
    let (_space, dev) = logging_env();
    for (iova, len) in [
        (u64::MAX - (P - 1), 2 * P),
        (u64::MAX - (P - 1), u64::MAX - (P - 1)),
    ] {
        let e = err(dev.dma_logging_start(&[(Iova(0x100000), P), (Iova(iova), len)], P));
        assert_eq!(e.errno(), libc::EOVERFLOW, "{iova:#x}+{len:#x}: {e}");
    }
    // Ending exactly at 2^64 is fine.
    dev.dma_logging_start(&[(Iova(u64::MAX - (P - 1)), P)], P)
        .unwrap();
}

#[test]
fn logging_start_twice_is_ebusy() {
    let (space, dev) = logging_env();
    dev.dma_logging_start(&[(Iova(0x100000), 4 * P)], P)
        .unwrap();
    for (ranges, ps) in [
        (vec![(Iova(0x100000), 4 * P)], P),
        (vec![(Iova(0x200000), 4 * P)], 2 * P),
    ] {
        let e = err(dev.dma_logging_start(&ranges, ps));
        assert_eq!(e.errno(), libc::EBUSY, "{e}");
    }
    // The first log is untouched by the refused starts.
    write(&dev, 0x101000, 1);
    let b = dev.dma_logging_report(Iova(0x100000), 4 * P, P).unwrap();
    assert_eq!(set(&b), vec![1]);
    // Another device may log at the same time; after a stop, this one may start again.
    space.add_device(GroupId(1), DeviceId::new("dev1")).unwrap();
    let dev1 = space.device_handle(&DeviceId::new("dev1")).unwrap();
    dev1.dma_logging_start(&[(Iova(0x100000), 4 * P)], P)
        .unwrap();
    dev.dma_logging_stop().unwrap();
    dev.dma_logging_start(&[(Iova(0x100000), 8 * P)], 2 * P)
        .unwrap();
}

#[test]
fn logging_report_when_not_started_is_einval() {
    let (_space, dev) = logging_env();
    let e = err(dev.dma_logging_report(Iova(0x100000), 4 * P, P));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert!(matches!(e, Error::NotTracking), "{e:?}");
    dev.dma_logging_stop().unwrap(); // stop when not started: fine
    dev.dma_logging_start(&[(Iova(0x100000), 4 * P)], P)
        .unwrap();
    dev.dma_logging_report(Iova(0x100000), 4 * P, P).unwrap();
    dev.dma_logging_stop().unwrap();
    dev.dma_logging_stop().unwrap();
    let e = err(dev.dma_logging_report(Iova(0x100000), 4 * P, P));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
}

#[test]
fn logging_report_arguments() {
    let (_space, dev) = logging_env();
    dev.dma_logging_start(&[(Iova(0x100000), 4 * P)], P)
        .unwrap();
    for ps in [0, 3, 6144] {
        let e = err(dev.dma_logging_report(Iova(0x100000), 4 * P, ps));
        assert_eq!(e.errno(), libc::EINVAL, "{ps}: {e}");
    }
    let e = err(dev.dma_logging_report(Iova(0x100000), 0, P));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    let e = err(dev.dma_logging_report(Iova(u64::MAX - (P - 1)), 2 * P, P));
    assert_eq!(e.errno(), libc::EOVERFLOW, "{e}");
}

// ---------------------------------------------------------------------------------------------
// §5 device level: what is logged and reported
// ---------------------------------------------------------------------------------------------

#[test]
fn logging_logs_writes_in_its_ranges_only() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x100000, 8, Prot::READ_WRITE);
    map_owned(&space, 0x108000, 8, Prot::READ_WRITE);
    dev.dma_logging_start(&[(Iova(0x102000), 4 * P), (Iova(0x10a000), 2 * P)], P)
        .unwrap();
    // Reads and failed writes log nothing; writes outside the ranges are not logged.
    let mut buf = vec![0u8; 16 * PU];
    dev.read(Iova(0x100000), &mut buf).unwrap();
    assert_eq!(
        err(dev.write(Iova(0x10fff0), &[0; 0x20])).errno(),
        libc::EINVAL
    );
    write(&dev, 0x100000, 2 * PU); // pages 0 and 1: outside
    write(&dev, 0x101fff, 2); // pages 1 (outside) and 2
    write(&dev, 0x107ff0, 0x20); // pages 7 and 8 (outside), across mappings
    write(&dev, 0x10b000, 1); // page 0xb
                              // Writes through a group handle (not the logging device) are logged too.
    let group = space.group_handle(GroupId(1)).unwrap();
    group.write(Iova(0x104000), b"g").unwrap();
    let b = dev.dma_logging_report(Iova(0x100000), 16 * P, P).unwrap();
    check_bitmap(&b);
    assert_eq!(b.pages(), 16);
    assert_eq!(set(&b), vec![2, 4, 0xb]);
    let b = dev.dma_logging_report(Iova(0x100000), 16 * P, P).unwrap();
    assert_eq!(b.count(), 0, "reads and clears: {:?}", set(&b));
    // The container-level log is separate, and off.
    let e = err(space.dirty_report(Iova(0x100000), 16 * P, P));
    assert_eq!(e.errno(), libc::EINVAL);
}

#[test]
fn device_logs_are_independent() {
    let (space, dev) = env_noop();
    map_owned(&space, 0x100000, 8, Prot::READ_WRITE);
    space.add_device(GroupId(1), DeviceId::new("dev1")).unwrap();
    let dev1 = space.device_handle(&DeviceId::new("dev1")).unwrap();
    dev.dma_logging_start(&[(Iova(0x100000), 8 * P)], P)
        .unwrap();
    dev1.dma_logging_start(&[(Iova(0x100000), 8 * P)], 2 * P)
        .unwrap();
    space.dirty_start(P).unwrap();
    write(&dev1, 0x103000, 1);
    let b = dev.dma_logging_report(Iova(0x100000), 8 * P, P).unwrap();
    assert_eq!(set(&b), vec![3]);
    let b = dev1
        .dma_logging_report(Iova(0x100000), 8 * P, 2 * P)
        .unwrap();
    assert_eq!(set(&b), vec![1]);
    let b = space.dirty_report(Iova(0x100000), 8 * P, P).unwrap();
    assert_eq!(set(&b), vec![3]);
    dev1.dma_logging_stop().unwrap();
    write(&dev, 0x105000, 1);
    let b = dev.dma_logging_report(Iova(0x100000), 8 * P, P).unwrap();
    assert_eq!(set(&b), vec![5]);
}

#[test]
fn logging_report_page_sizes_map_log_pages_onto_report_bits() {
    let l = 4 * P; // log page
    let base = 0x400000;
    let (space, dev) = env_noop();
    map_owned(&space, base, 64, Prot::READ_WRITE);
    dev.dma_logging_start(&[(Iova(base), 16 * l)], l).unwrap();
    // Ratio 1/8: a dirty log page sets all eight of its report bits.
    write(&dev, base + 2 * l + 5, 1);
    let b = dev.dma_logging_report(Iova(base), 4 * l, l / 8).unwrap();
    assert_eq!(b.pages(), 32);
    assert_eq!(set(&b), (16..24).collect::<Vec<_>>());
    // Ratio 1.
    write(&dev, base + 3 * l - 1, 2);
    let b = dev.dma_logging_report(Iova(base), 4 * l, l).unwrap();
    assert_eq!(set(&b), vec![2, 3]);
    // Ratio 8: one bit per eight log pages; a length that is not a multiple of the page size
    // gives a last, partial bit.
    write(&dev, base + 9 * l, 1);
    write(&dev, base + 15 * l + l - 1, 1);
    let b = dev
        .dma_logging_report(Iova(base), 10 * l + 1, 8 * l)
        .unwrap();
    assert_eq!(b.pages(), 2);
    assert_eq!(set(&b), vec![1]);
    // Log page 9 was covered whole and is consumed; 15 was not covered and stays.
    let b = dev.dma_logging_report(Iova(base), 16 * l, l).unwrap();
    assert_eq!(set(&b), vec![15]);
    // Odd length at ratio 1: the last bit covers part of a page.
    write(&dev, base + 5 * l, 1);
    let b = dev
        .dma_logging_report(Iova(base + 4 * l), l + 1, l)
        .unwrap();
    assert_eq!((b.pages(), set(&b)), (2, vec![1]));
}

#[test]
fn logging_dirt_of_a_partly_reported_log_page_is_reported_again() {
    let l = 4 * P;
    let base = 0x400000;
    let (space, dev) = env_noop();
    map_owned(&space, base, 64, Prot::READ_WRITE);
    dev.dma_logging_start(&[(Iova(base), 16 * l)], l).unwrap();
    write(&dev, base + l + 3 * P, 1); // log page 1, last quarter
                                      // First half of the page, at a smaller report page size: reported, and kept.
    let b = dev.dma_logging_report(Iova(base + l), l / 2, P).unwrap();
    assert_eq!(set(&b), vec![0, 1]);
    // The second half: reported again, and still kept (not wholly covered by one report).
    let b = dev
        .dma_logging_report(Iova(base + l + l / 2), l / 2, P)
        .unwrap();
    assert_eq!(set(&b), vec![0, 1]);
    // A report covering the page whole reports it and consumes it.
    let b = dev.dma_logging_report(Iova(base), 4 * l, P).unwrap();
    assert_eq!(set(&b), vec![4, 5, 6, 7]);
    let b = dev.dma_logging_report(Iova(base), 16 * l, P).unwrap();
    assert_eq!(b.count(), 0, "{:?}", set(&b));
    // A report range ending inside a page (an odd length) keeps that page too.
    write(&dev, base + 2 * l + 10, 1);
    let b = dev.dma_logging_report(Iova(base), 2 * l + 11, l).unwrap();
    assert_eq!((b.pages(), set(&b)), (3, vec![2]));
    let b = dev
        .dma_logging_report(Iova(base + 2 * l + 11), 7, 1)
        .unwrap();
    assert_eq!(set(&b), (0..7).collect::<Vec<_>>());
    let b = dev.dma_logging_report(Iova(base + 2 * l), l, l).unwrap();
    assert_eq!(set(&b), vec![0]);
    let b = dev.dma_logging_report(Iova(base + 2 * l), l, l).unwrap();
    assert_eq!(b.count(), 0);
}

/// A reference model of one device log: which log pages are dirty.
struct LogModel {
    /// Log page size.
    l: u64,
    /// Logged ranges `[start, end)`, aligned to `l`.
    ranges: Vec<(u64, u64)>,
    /// Dirty log pages, by number (address / l).
    dirty: BTreeSet<u64>,
}

impl LogModel {
    fn logged(&self, page: u64) -> bool {
        let a = page * self.l;
        self.ranges.iter().any(|&(s, e)| s <= a && a < e)
    }

    /// A write of `[iova, iova + len)` that succeeded.
    fn write(&mut self, iova: u64, len: u64) {
        for page in iova / self.l..=(iova + len - 1) / self.l {
            if self.logged(page) {
                self.dirty.insert(page);
            }
        }
    }

    /// The expected report, and the model after it: bit n is set iff report page n (clipped to
    /// the range) overlaps a dirty log page; log pages wholly inside the range are cleared, the
    /// others stay.
    fn report(&mut self, iova: u64, len: u64, ps: u64) -> Vec<u64> {
        let last = iova + len - 1;
        let mut bits = BTreeSet::new();
        let mut consumed = Vec::new();
        for &page in &self.dirty {
            let (ps_, pl) = (page * self.l, page * self.l + self.l - 1);
            if pl < iova || ps_ > last {
                continue;
            }
            let from = (ps_.max(iova) - iova) / ps;
            let to = (pl.min(last) - iova) / ps;
            bits.extend(from..=to);
            if iova <= ps_ && pl <= last {
                consumed.push(page);
            }
        }
        for page in consumed {
            self.dirty.remove(&page);
        }
        bits.into_iter().collect()
    }
}

#[test]
fn logging_reports_match_a_reference_model() {
    let base: u64 = 0x1000_0000;
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(0xd1a7 + seed);
        let l = if seed % 2 == 0 { P } else { 4 * P };
        let span = 48 * l; // the mapped area: three adjacent mappings
        let (space, dev) = env_noop();
        let third = span / 3 / P;
        for i in 0..3 {
            map_owned(&space, base + i * third * P, third, Prot::READ_WRITE);
        }
        // Three logged ranges with gaps, one sticking out past the mapped area.
        let mut ranges = Vec::new();
        let mut at = base + rng.gen_range(0..4) * l;
        for _ in 0..3 {
            let len = rng.gen_range(1..12) * l;
            ranges.push((at, at + len));
            at += len + rng.gen_range(1..6) * l;
        }
        ranges[2].1 = ranges[2].1.max(base + span + 2 * l);
        let iova_ranges: Vec<(Iova, u64)> = ranges.iter().map(|&(s, e)| (Iova(s), e - s)).collect();
        dev.dma_logging_start(&iova_ranges, l).unwrap();
        let mut model = LogModel {
            l,
            ranges,
            dirty: BTreeSet::new(),
        };
        for step in 0..200 {
            if rng.gen_bool(0.6) {
                let iova = base + rng.gen_range(0..span + l);
                let len = rng.gen_range(1..=3 * l);
                let data = vec![step as u8; len as usize];
                if dev.write(Iova(iova), &data).is_ok() {
                    model.write(iova, len);
                } else {
                    assert!(
                        iova + len > base + span,
                        "write at {iova:#x}+{len:#x} failed"
                    );
                }
            } else {
                let ps = [l / 8, l, 8 * l, P, 1][rng.gen_range(0..5)];
                let iova = match rng.gen_range(0..3) {
                    0 => base - l + rng.gen_range(0..span / ps) * ps, // aligned to ps
                    1 => base - l + rng.gen_range(0..span / l) * l,   // aligned to l
                    _ => base - l + rng.gen_range(0..span),           // any byte
                };
                let len = match rng.gen_range(0..3) {
                    0 => rng.gen_range(1..=16) * ps.max(l),
                    1 => rng.gen_range(1..=16 * l),
                    _ => rng.gen_range(1..=64),
                };
                let len = len.min(ps * 4096); // keep the bitmaps small
                let want = model.report(iova, len, ps);
                let b = dev.dma_logging_report(Iova(iova), len, ps).unwrap();
                check_bitmap(&b);
                assert_eq!(b.iova(), Iova(iova));
                assert_eq!(b.page_size(), ps);
                assert_eq!(b.pages(), len.div_ceil(ps));
                assert_eq!(
                    set(&b),
                    want,
                    "seed {seed} step {step}: report {iova:#x}+{len:#x} at {ps:#x}, log page {l:#x}"
                );
            }
        }
        // Everything left comes out in one last report.
        let want = model.report(base - l, span + 4 * l, l);
        let b = dev
            .dma_logging_report(Iova(base - l), span + 4 * l, l)
            .unwrap();
        assert_eq!(set(&b), want, "seed {seed}: final report");
        assert!(model.dirty.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// §5 no lost dirt, with writers running concurrently with reports
// ---------------------------------------------------------------------------------------------

/// How long the writers of one "no lost dirt" run write.
const WRITE_FOR: Duration = Duration::from_millis(700);

/// Runs two writers over `[base, base + span)` for `WRITE_FOR` while `report` is called in a
/// loop; returns every byte range each writer wrote successfully, after they stopped.
fn concurrent_writes(
    dev: &Arc<DeviceHandle>,
    base: u64,
    span: u64,
    max_len: u64,
    mut report: impl FnMut(),
) -> Vec<(u64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (dev, stop) = (dev.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(0x5eed + w);
                let mut done = Vec::new();
                let data = vec![w as u8 + 1; max_len as usize];
                while !stop.load(Ordering::Relaxed) {
                    let iova = base + rng.gen_range(0..span);
                    let len = rng.gen_range(1..=max_len);
                    if dev.write(Iova(iova), &data[..len as usize]).is_ok() {
                        done.push((iova, len));
                    }
                }
                done
            })
        })
        .collect();
    let t = Instant::now();
    let mut reports = 0;
    while t.elapsed() < WRITE_FOR || reports < 10 {
        report();
        reports += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let done: Vec<(u64, u64)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(done.len() > 100, "the writers hardly wrote: {}", done.len());
    done
}

fn pages_of(writes: &[(u64, u64)], page: u64) -> BTreeSet<u64> {
    writes
        .iter()
        .flat_map(|&(iova, len)| iova / page..=(iova + len - 1) / page)
        .collect()
}

#[test]
fn no_lost_dirt_container_level() {
    let (space, dev) = env_noop();
    let base = 0x100_0000;
    // Four adjacent mappings of 200 pages, a hole of 24, one more mapping of 200: enough pages
    // that most writes find their bit clear, and many pages share each bitmap word.
    let layout = [(0, 200), (200, 200), (400, 200), (600, 200), (824, 200)];
    for &(first, n) in &layout {
        map_owned(&space, base + first * P, n, Prot::READ_WRITE);
    }
    let span = 1024 * P;
    space.dirty_start(P).unwrap();
    let reported: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
    let take = |b: &Bitmap| {
        check_bitmap(b);
        let first = b.iova().0 / P;
        reported
            .lock()
            .unwrap()
            .extend(b.iter_set().map(|n| first + n));
    };
    let mut turn = 0usize;
    let written = concurrent_writes(&dev, base, span, 2 * P, || {
        // Alternate whole-range reports with reports of one mapping at a time.
        turn += 1;
        if turn % 3 == 0 {
            take(&space.dirty_report(Iova(base), span, P).unwrap());
        } else {
            let (first, n) = layout[turn % layout.len()];
            take(
                &space
                    .dirty_report(Iova(base + first * P), n * P, P)
                    .unwrap(),
            );
        }
    });
    // The writers are done: one last report collects the rest.
    take(&space.dirty_report(Iova(base), span, P).unwrap());
    let reported = reported.into_inner().unwrap();
    let written = pages_of(&written, P);
    let missing: Vec<_> = written.difference(&reported).collect();
    let invented: Vec<_> = reported.difference(&written).collect();
    assert!(
        missing.is_empty() && invented.is_empty(),
        "{} pages written, {} reported; missing {missing:x?}, invented {invented:x?}",
        written.len(),
        reported.len()
    );
}

/// One device-level "no lost dirt" run with reports at `rps` against a log of pages of `l`.
fn no_lost_dirt_device_level(l: u64, rps: u64) {
    let (space, dev) = env_noop();
    let base = 0x4000_0000;
    let span = 160 * l;
    // Two mappings over the span; the log covers parts of it.
    map_owned(&space, base, span / 2 / P, Prot::READ_WRITE);
    map_owned(&space, base + span / 2, span / 2 / P, Prot::READ_WRITE);
    let ranges = [(base + 2 * l, 60 * l), (base + 70 * l, 77 * l)];
    let log_ranges: Vec<(Iova, u64)> = ranges.iter().map(|&(s, n)| (Iova(s), n)).collect();
    dev.dma_logging_start(&log_ranges, l).unwrap();
    // Compare at the coarser of the two page sizes: with a report page size below the log page
    // size, a dirty log page sets all its report bits; above it, one bit covers several pages.
    let g = l.max(rps);
    let reported: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
    let take = |b: &Bitmap| {
        check_bitmap(b);
        assert_eq!(b.iova().0 % rps, 0);
        reported
            .lock()
            .unwrap()
            .extend(b.iter_set().map(|n| (b.iova().0 + n * rps) / g));
    };
    // Chunks whose starts are aligned to the report page size but whose lengths are odd and
    // not multiples of the log page size: log pages are often covered only in part.
    let stride = match rps.cmp(&l) {
        std::cmp::Ordering::Less => 13 * rps,
        std::cmp::Ordering::Equal => 5 * rps,
        std::cmp::Ordering::Greater => 2 * rps,
    };
    let extra = rps / 2 + 1;
    let mut at = base;
    let written = concurrent_writes(&dev, base, span, 3 * l / 2, || {
        take(
            &dev.dma_logging_report(Iova(at), stride + extra, rps)
                .unwrap(),
        );
        at += stride;
        if at >= base + span {
            at = base;
        }
    });
    take(&dev.dma_logging_report(Iova(base), span + 3, rps).unwrap());
    let reported = reported.into_inner().unwrap();
    // The log pages written that lie in a logged range, at the comparison granularity.
    let written: BTreeSet<u64> = pages_of(&written, l)
        .into_iter()
        .filter(|&p| ranges.iter().any(|&(s, n)| s <= p * l && p * l < s + n))
        .map(|p| p * l / g)
        .collect();
    let missing: Vec<_> = written.difference(&reported).collect();
    let invented: Vec<_> = reported.difference(&written).collect();
    assert!(
        missing.is_empty() && invented.is_empty(),
        "log page {l:#x}, report page {rps:#x}: {} pages written, {} reported; missing {missing:x?}, invented {invented:x?}",
        written.len(),
        reported.len()
    );
    dev.dma_logging_stop().unwrap();
}

#[test]
fn no_lost_dirt_device_level_report_pages_smaller() {
    no_lost_dirt_device_level(4 * P, P / 2);
}

#[test]
fn no_lost_dirt_device_level_report_pages_equal() {
    no_lost_dirt_device_level(4 * P, 4 * P);
}

#[test]
fn no_lost_dirt_device_level_report_pages_larger() {
    no_lost_dirt_device_level(P, 8 * P);
}
