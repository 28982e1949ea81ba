//! One test per rule of semantics §4 (pinning and unmap callbacks). Every error is checked by its
//! errno against `libc`, and by its variant where the variant carries the IOVA the rule names.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use vdma::{
    Backing, Config, Container, DeviceHandle, DeviceId, Direction, Error, GroupId, HostAddr, Iova,
    Memory, OwnedMemory, ProcessMemory, Prot, RawMemory, MAX_PIN_PAGES,
};

mod common;
use common::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The calls an unmap callback received.
#[derive(Default)]
struct Calls(Mutex<Vec<(Iova, u64)>>);

impl Calls {
    fn list(&self) -> Vec<(Iova, u64)> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn push(&self, iova: Iova, size: u64) {
        self.0.lock().unwrap().push((iova, size));
    }
}

/// Registers a callback that only records its calls (it gives nothing back).
fn recording_noop(dev: &DeviceHandle) -> Arc<Calls> {
    let calls = Arc::new(Calls::default());
    let c = calls.clone();
    dev.set_unmap_callback(move |iova, size| c.push(iova, size));
    calls
}

/// The pins a device made, as `(iova, npages)`, so its callback can give them back.
type PinList = Arc<Mutex<Vec<(Iova, usize)>>>;

/// Registers a callback that records its calls and unpins every pin in `pins` that lies in the
/// range it is called with.
fn recording_unpinner(dev: &Arc<DeviceHandle>, pins: &PinList) -> Arc<Calls> {
    let calls = Arc::new(Calls::default());
    let c = calls.clone();
    let weak: Weak<DeviceHandle> = Arc::downgrade(dev);
    let pins = pins.clone();
    dev.set_unmap_callback(move |iova, size| {
        c.push(iova, size);
        let Some(dev) = weak.upgrade() else { return };
        let mut pins = pins.lock().unwrap();
        pins.retain(|&(at, n)| {
            let inside = at.0 >= iova.0 && at.0 - iova.0 < size;
            if inside {
                dev.unpin(at, n).unwrap();
            }
            !inside
        });
    });
    calls
}

/// Asserts that unmapping `[iova, iova + size)` fails with EBUSY (the device keeps its pins),
/// within a bound of the configured busy timeout.
fn assert_unmap_busy(space: &Container, iova: u64, size: u64) -> Error {
    let t = Instant::now();
    let e = err(space.unmap(Iova(iova), size));
    assert_eq!(e.errno(), libc::EBUSY, "{e}");
    assert!(matches!(e, Error::MappingBusy { .. }), "{e:?}");
    assert!(
        t.elapsed() < BUSY * 10,
        "EBUSY took {:?}, busy_timeout is {BUSY:?}",
        t.elapsed()
    );
    e
}

// ---------------------------------------------------------------------------------------------
// §4 arguments
// ---------------------------------------------------------------------------------------------

#[test]
fn pin_of_zero_pages_is_einval() {
    let (space, dev) = env();
    recording_noop(&dev);
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    let e = err(dev.pin(Iova(0x10000), 0, Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    let e = err(dev.pin_guard(Iova(0x10000), 0, Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    let e = err(dev.unpin(Iova(0x10000), 0));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
}

#[test]
fn pin_of_more_than_512_pages_is_e2big() {
    assert_eq!(MAX_PIN_PAGES, 512);
    let (space, dev) = env_with(Config {
        mlock: false,
        memlock_limit: Some(u64::MAX),
        ..config()
    });
    let calls = recording_noop(&dev);
    map_owned(&space, 0x100000, 520, Prot::READ_WRITE);
    let e = err(dev.pin(Iova(0x100000), 513, Prot::READ));
    assert_eq!(e.errno(), libc::E2BIG, "{e}");
    assert!(
        matches!(
            e,
            Error::TooManyPages {
                npages: 513,
                max: 512
            }
        ),
        "{e:?}"
    );
    let e = err(dev.unpin(Iova(0x100000), 513));
    assert_eq!(e.errno(), libc::E2BIG, "{e}");
    // 512 is allowed, and nothing of the refused call was pinned.
    let hosts = dev.pin(Iova(0x100000), 512, Prot::READ).unwrap();
    assert_eq!(hosts.len(), 512);
    dev.unpin(Iova(0x100000), 512).unwrap();
    assert_eq!(space.unmap(Iova(0x100000), 520 * P).unwrap(), 520 * P);
    assert_eq!(calls.count(), 0);
}

#[test]
fn pin_of_a_misaligned_iova_is_einval() {
    let (space, dev) = env();
    recording_noop(&dev);
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    for iova in [0x10001, 0x10800, 0x10fff] {
        let e = err(dev.pin(Iova(iova), 1, Prot::READ));
        assert_eq!(e.errno(), libc::EINVAL, "{iova:#x}: {e}");
        assert!(matches!(e, Error::Misaligned { .. }), "{e:?}");
    }
}

#[test]
fn pin_without_an_unmap_callback_is_einval() {
    let (space, dev) = env();
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    let e = err(dev.pin(Iova(0x10000), 1, Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert!(matches!(e, Error::NoUnmapCallback), "{e:?}");
    // With one it works; cleared again, it is refused again.
    dev.set_unmap_callback(|_, _| {});
    dev.pin(Iova(0x10000), 1, Prot::READ).unwrap();
    dev.unpin(Iova(0x10000), 1).unwrap();
    dev.clear_unmap_callback();
    let e = err(dev.pin(Iova(0x10000), 1, Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    // The refused pins held nothing.
    assert_eq!(space.unmap(Iova(0x10000), 4 * P).unwrap(), 4 * P);
}

#[test]
fn pin_of_an_unmapped_page_is_einval() {
    let (space, dev) = env();
    recording_noop(&dev);
    map_owned(&space, 0x10000, 2, Prot::READ_WRITE);
    let e = err(dev.pin(Iova(0x40000), 1, Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert!(
        matches!(
            e,
            Error::NotMapped {
                iova: Iova(0x40000)
            }
        ),
        "{e:?}"
    );
    // The first unmapped page is named, here the one after the mapping.
    let e = err(dev.pin(Iova(0x10000), 3, Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert!(
        matches!(
            e,
            Error::NotMapped {
                iova: Iova(0x12000)
            }
        ),
        "{e:?}"
    );
}

#[test]
fn pin_with_a_permission_the_mapping_lacks_is_eperm() {
    let (space, dev) = env();
    recording_noop(&dev);
    map_owned(&space, 0x10000, 2, Prot::READ);
    map_owned(&space, 0x20000, 2, Prot::WRITE);
    let e = err(dev.pin(Iova(0x10000), 1, Prot::WRITE));
    assert_eq!(e.errno(), libc::EPERM, "{e}");
    assert!(
        matches!(
            e,
            Error::Permission {
                iova: Iova(0x10000),
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(dev.pin(Iova(0x10000), 2, Prot::READ_WRITE));
    assert_eq!(e.errno(), libc::EPERM, "{e}");
    let e = err(dev.pin(Iova(0x20000), 1, Prot::READ));
    assert_eq!(e.errno(), libc::EPERM, "{e}");
    // What the mapping allows works.
    dev.pin(Iova(0x10000), 2, Prot::READ).unwrap();
    dev.pin(Iova(0x20000), 2, Prot::WRITE).unwrap();
    dev.unpin(Iova(0x10000), 2).unwrap();
    dev.unpin(Iova(0x20000), 2).unwrap();
}

#[test]
fn pin_of_another_process_memory_is_einval() {
    let (space, dev) = env();
    recording_noop(&dev);
    // This process seen as "another" process: no stable host address through process_vm_*.
    let region = Region::new(4 * PU);
    let process = Arc::new(ProcessMemory::open(std::process::id() as i32).unwrap());
    space
        .map(
            Iova(0x10000),
            2 * P,
            Backing::memory(process, region.addr()),
            Prot::READ_WRITE,
        )
        .unwrap();
    // DMA works there...
    dev.write(Iova(0x10010), b"pm").unwrap();
    assert_eq!(region.get(0x10, 2), b"pm");
    // ...but pinning does not.
    let e = err(dev.pin(Iova(0x10000), 1, Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert!(
        matches!(
            e,
            Error::NoHostAddress {
                iova: Iova(0x10000)
            }
        ),
        "{e:?}"
    );
    // Nothing is held.
    assert_eq!(space.unmap(Iova(0x10000), 2 * P).unwrap(), 2 * P);
}

#[test]
fn a_failed_pin_pins_nothing() {
    let (space, dev) = env_with(Config {
        memlock_limit: Some(3 * P),
        ..config()
    });
    let calls = recording_noop(&dev);

    // The third page is not mapped.
    map_owned(&space, 0x10000, 2, Prot::READ_WRITE);
    let e = err(dev.pin(Iova(0x10000), 3, Prot::WRITE));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    // The third page lacks WRITE.
    map_owned(&space, 0x20000, 2, Prot::READ_WRITE);
    map_owned(&space, 0x22000, 1, Prot::READ);
    let e = err(dev.pin(Iova(0x20000), 3, Prot::WRITE));
    assert_eq!(e.errno(), libc::EPERM, "{e}");
    // The third page has no host address.
    let region = Region::new(PU);
    map_owned(&space, 0x30000, 2, Prot::READ_WRITE);
    let process = Arc::new(ProcessMemory::open(std::process::id() as i32).unwrap());
    space
        .map(
            Iova(0x32000),
            P,
            Backing::memory(process, region.addr()),
            Prot::READ_WRITE,
        )
        .unwrap();
    let e = err(dev.pin(Iova(0x30000), 3, Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    // Past the locked-memory limit (2 pages pinned, 2 more asked, limit 3).
    map_owned(&space, 0x40000, 4, Prot::READ_WRITE);
    dev.pin(Iova(0x40000), 2, Prot::READ).unwrap();
    let e = err(dev.pin(Iova(0x42000), 2, Prot::READ));
    assert_eq!(e.errno(), libc::ENOMEM, "{e}");
    dev.unpin(Iova(0x40000), 2).unwrap();

    // None of the failed calls charged anything: the whole limit is free.
    dev.pin(Iova(0x40000), 3, Prot::READ).unwrap();
    dev.unpin(Iova(0x40000), 3).unwrap();

    // And none held anything: every mapping unmaps at once, with no callback.
    for (iova, size) in [
        (0x10000, 2 * P),
        (0x20000, 3 * P),
        (0x30000, 3 * P),
        (0x40000, 4 * P),
    ] {
        let t = Instant::now();
        assert_eq!(space.unmap(Iova(iova), size).unwrap(), size);
        assert!(t.elapsed() < BUSY / 2, "unmap of {iova:#x} waited");
    }
    assert_eq!(calls.count(), 0, "{:?}", calls.list());
}

// ---------------------------------------------------------------------------------------------
// §4 counts
// ---------------------------------------------------------------------------------------------

#[test]
fn pins_are_counted_per_page() {
    let (space, dev) = env();
    let calls = recording_noop(&dev);
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    dev.pin(Iova(0x11000), 2, Prot::READ).unwrap();
    dev.pin(Iova(0x12000), 1, Prot::READ).unwrap(); // page 2 twice
    dev.unpin(Iova(0x11000), 2).unwrap(); // page 1 free, page 2 still once
    assert_unmap_busy(&space, 0x10000, 4 * P);
    assert!(calls.count() >= 1);
    assert!(calls.list().iter().all(|&c| c == (Iova(0x10000), 4 * P)));
    dev.unpin(Iova(0x12000), 1).unwrap();
    let before = calls.count();
    assert_eq!(space.unmap(Iova(0x10000), 4 * P).unwrap(), 4 * P);
    assert_eq!(calls.count(), before, "no pin left, no callback needed");
}

#[test]
fn unpin_of_a_page_not_pinned_does_nothing() {
    let (space, dev) = env();
    let calls = recording_noop(&dev);
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    // Never pinned, and not even mapped.
    dev.unpin(Iova(0x10000), 4).unwrap();
    dev.unpin(Iova(0x80000), 3).unwrap();
    // Pinned once, unpinned twice: the second does nothing (the count does not go below 0)...
    dev.pin(Iova(0x11000), 1, Prot::READ).unwrap();
    dev.unpin(Iova(0x11000), 1).unwrap();
    dev.unpin(Iova(0x11000), 1).unwrap();
    // ...so one new pin holds the page, and one unpin frees it.
    dev.pin(Iova(0x11000), 1, Prot::READ).unwrap();
    assert_unmap_busy(&space, 0x10000, 4 * P);
    dev.unpin(Iova(0x11000), 1).unwrap();
    let before = calls.count();
    assert_eq!(space.unmap(Iova(0x10000), 4 * P).unwrap(), 4 * P);
    assert_eq!(calls.count(), before);
}

#[test]
fn pinned_host_addresses_point_at_the_mapped_memory() {
    let (space, dev) = env();
    recording_noop(&dev);
    // Two adjacent mappings of different kinds: a file at offset 4096, owned memory at 4096.
    let file = memfd("pins-host", 4 * P);
    space
        .map(
            Iova(0x10000),
            2 * P,
            Backing::file(&file, P),
            Prot::READ_WRITE,
        )
        .unwrap();
    let owned = Arc::new(OwnedMemory::new(3 * PU).unwrap());
    space
        .map(
            Iova(0x12000),
            2 * P,
            Backing::memory(owned.clone(), P),
            Prot::READ_WRITE,
        )
        .unwrap();
    let hosts = dev.pin(Iova(0x10000), 4, Prot::READ_WRITE).unwrap();
    assert_eq!(hosts.len(), 4);
    let base = owned.host_region().unwrap().base().0;
    assert_eq!(hosts[2], HostAddr(base + PU));
    assert_eq!(hosts[3], HostAddr(base + 2 * PU));
    assert_eq!(
        hosts[1].0,
        hosts[0].0 + PU,
        "pages of one mapping are contiguous"
    );

    // Written through DMA, seen through the host addresses.
    for page in 0..4u64 {
        let mut data: Vec<u8> = (0..PU).map(|i| (i as u8) ^ (page as u8 * 37 + 1)).collect();
        dev.dma_rw(Iova(0x10000 + page * P), &mut data, Direction::Write)
            .unwrap();
        for off in [0, 1, 100, 2048, PU - 1] {
            assert_eq!(
                read_host(hosts[page as usize], off),
                data[off],
                "page {page} +{off}"
            );
        }
    }
    // Written through the host addresses, seen through DMA and in the file.
    for (page, &host) in hosts.iter().enumerate() {
        write_host(host, 7, 0xa0 + page as u8);
        let mut b = [0u8];
        dev.read(Iova(0x10000 + page as u64 * P + 7), &mut b)
            .unwrap();
        assert_eq!(b[0], 0xa0 + page as u8);
    }
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, P + P + 7).unwrap();
    assert_eq!(b[0], 0xa1);
    dev.unpin(Iova(0x10000), 4).unwrap();
}

#[test]
fn pin_guard_unpins_on_drop() {
    let (space, dev) = env();
    let calls = recording_noop(&dev);
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    let guard = dev.pin_guard(Iova(0x11000), 2, Prot::WRITE).unwrap();
    assert_eq!(guard.iova(), Iova(0x11000));
    assert_eq!(guard.hosts().len(), 2);
    assert_eq!(guard.hosts()[1].0, guard.hosts()[0].0 + PU);
    assert_unmap_busy(&space, 0x10000, 4 * P);
    drop(guard);
    let before = calls.count();
    assert_eq!(space.unmap(Iova(0x10000), 4 * P).unwrap(), 4 * P);
    assert_eq!(calls.count(), before);
}

fn memlock_case(mlock: bool) {
    let (space, dev) = env_with(Config {
        memlock_limit: Some(4 * P),
        mlock,
        ..config()
    });
    recording_noop(&dev);
    map_owned(&space, 0x10000, 8, Prot::READ_WRITE);
    dev.pin(Iova(0x10000), 2, Prot::READ).unwrap();
    dev.pin(Iova(0x12000), 2, Prot::WRITE).unwrap();
    // The fifth page is past the limit.
    let e = err(dev.pin(Iova(0x14000), 1, Prot::READ));
    assert_eq!(e.errno(), libc::ENOMEM, "{e}");
    assert!(
        matches!(e, Error::MemlockLimit { limit } if limit == 4 * P),
        "{e:?}"
    );
    // A page pinned again locks nothing more.
    dev.pin(Iova(0x11000), 1, Prot::READ).unwrap();
    dev.unpin(Iova(0x11000), 1).unwrap();
    // A page unpinned gives its share back.
    dev.unpin(Iova(0x13000), 1).unwrap();
    dev.pin(Iova(0x14000), 1, Prot::READ).unwrap();
    let e = err(dev.pin(Iova(0x15000), 1, Prot::READ));
    assert_eq!(e.errno(), libc::ENOMEM, "{e}");
    // Everything given back: the whole limit is free again.
    dev.unpin(Iova(0x10000), 3).unwrap();
    dev.unpin(Iova(0x14000), 1).unwrap();
    dev.pin(Iova(0x14000), 4, Prot::READ).unwrap();
    dev.unpin(Iova(0x14000), 4).unwrap();
    assert_eq!(space.unmap(Iova(0x10000), 8 * P).unwrap(), 8 * P);
}

#[test]
fn memlock_limit_is_enforced_with_mlock() {
    memlock_case(true);
}

#[test]
fn memlock_limit_is_enforced_without_mlock() {
    memlock_case(false);
}

// ---------------------------------------------------------------------------------------------
// §4 unmap of pinned memory
// ---------------------------------------------------------------------------------------------

#[test]
fn unmap_calls_every_device_back_with_the_whole_affected_mapping() {
    let (space, dev) = env();
    // A second device in another group, which pins nothing, is called too.
    space.attach_group(GroupId(2)).unwrap();
    space.add_device(GroupId(2), DeviceId::new("dev1")).unwrap();
    let dev1 = space.device_handle(&DeviceId::new("dev1")).unwrap();
    let calls1 = recording_noop(&dev1);

    let pins: PinList = Default::default();
    let calls = recording_unpinner(&dev, &pins);
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE); // pinned
    map_owned(&space, 0x14000, 2, Prot::READ_WRITE); // not pinned
    dev.pin(Iova(0x12000), 1, Prot::WRITE).unwrap();
    pins.lock().unwrap().push((Iova(0x12000), 1));

    // The unmap range is larger than both mappings and the pinned page alone.
    assert_eq!(space.unmap(Iova(0x8000), 0x20000).unwrap(), 6 * P);
    assert_eq!(calls.list(), vec![(Iova(0x10000), 4 * P)]);
    assert_eq!(calls1.list(), vec![(Iova(0x10000), 4 * P)]);
    assert!(space.mappings().is_empty());
}

#[test]
fn unmap_succeeds_when_the_callback_unpins() {
    let (space, dev) = env();
    let pins: PinList = Default::default();
    let calls = recording_unpinner(&dev, &pins);
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    for (iova, n) in [(0x10000, 2), (0x11000, 3), (0x13000, 1)] {
        dev.pin(Iova(iova), n, Prot::READ).unwrap();
        pins.lock().unwrap().push((Iova(iova), n));
    }
    let t = Instant::now();
    assert_eq!(space.unmap(Iova(0x10000), 4 * P).unwrap(), 4 * P);
    assert!(t.elapsed() < BUSY, "took {:?}", t.elapsed());
    assert_eq!(calls.list(), vec![(Iova(0x10000), 4 * P)]);
    assert!(pins.lock().unwrap().is_empty());
    assert!(space.mappings().is_empty());
    let e = err(dev.pin(Iova(0x10000), 1, Prot::READ));
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
}

#[test]
fn unmap_fails_ebusy_and_keeps_the_memory_when_the_callback_does_not_unpin() {
    let (space, dev) = env();
    let calls = recording_noop(&dev);
    // Raw memory with canaries around and inside the mapped part.
    let region = Region::new(4 * PU);
    let canary: Vec<u8> = (0..4 * PU).map(|i| (i * 7 + 3) as u8).collect();
    region.set(0, &canary);
    // SAFETY: the region outlives the space (dropped after it, below) and stays mapped.
    let raw = Arc::new(unsafe { RawMemory::new(region.ptr(), region.len()) });
    space
        .map(
            Iova(0x10000),
            2 * P,
            Backing::memory(raw, P),
            Prot::READ_WRITE,
        )
        .unwrap();
    // An unpinned neighbour inside the same unmap range.
    let other = map_owned(&space, 0x12000, 1, Prot::READ_WRITE);
    other.write_at(5, b"other").unwrap();
    let hosts = dev.pin(Iova(0x11000), 1, Prot::WRITE).unwrap();
    assert_eq!(hosts[0].0, region.ptr() as usize + 2 * PU);
    let before = space.mappings();

    let e = assert_unmap_busy(&space, 0x10000, 3 * P);
    assert!(
        matches!(
            e,
            Error::MappingBusy {
                iova: Iova(0x10000)
            }
        ),
        "{e:?}"
    );
    // The callback was asked, each time with the whole pinned mapping.
    assert!(calls.count() >= 1);
    assert!(
        calls.list().iter().all(|&c| c == (Iova(0x10000), 2 * P)),
        "{:?}",
        calls.list()
    );

    // Nothing was unmapped, not even the unpinned neighbour.
    assert_eq!(space.mappings(), before);
    let mut buf = vec![0u8; 3 * PU];
    dev.read(Iova(0x10000), &mut buf).unwrap();
    assert_eq!(&buf[..2 * PU], &canary[PU..3 * PU]);
    assert_eq!(&buf[2 * PU + 5..2 * PU + 10], b"other");
    // The pinned host address still reads the memory, and no byte of it changed.
    for off in [0, 1, 2000, PU - 1] {
        assert_eq!(read_host(hosts[0], off), canary[2 * PU + off]);
    }
    assert_eq!(region.get(0, 4 * PU), canary);
    // The mappings still work in full: writes, new pins.
    dev.write(Iova(0x10000), b"still here").unwrap();
    assert_eq!(region.get(PU, 10), b"still here");
    dev.pin(Iova(0x10000), 1, Prot::READ).unwrap();
    dev.unpin(Iova(0x10000), 1).unwrap();

    // Once the device gives the pin back, the unmap goes through.
    dev.unpin(Iova(0x11000), 1).unwrap();
    assert_eq!(space.unmap(Iova(0x10000), 3 * P).unwrap(), 3 * P);
    drop(space);
    drop(dev);
    drop(region);
}

#[test]
fn callbacks_may_use_the_address_space() {
    let (space, dev) = env();
    map_owned(&space, 0x10000, 2, Prot::READ_WRITE); // pinned, to be unmapped
    let c = map_owned(&space, 0x40000, 2, Prot::READ_WRITE); // used from the callback

    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    let weak = Arc::downgrade(&dev);
    let s = seen.clone();
    dev.set_unmap_callback(move |iova, size| {
        let dev = weak.upgrade().unwrap();
        let mut s = s.lock().unwrap();
        s.push(format!("call {:#x} {:#x}", iova.0, size));
        // DMA on another range, both ways.
        s.push(format!(
            "write {:?}",
            dev.write(Iova(0x40ffe), b"cb").is_ok()
        ));
        let mut b = [0u8; 2];
        let r = dev.read(Iova(0x40ffe), &mut b);
        s.push(format!("read {:?} {:?}", r.is_ok(), &b));
        // Translate another range (and let it go at once).
        let segs = dev.translate(Iova(0x40000), 2 * PU, Prot::READ);
        s.push(format!("translate {:?}", segs.map(|g| g.len()).ok()));
        // Pin and unpin another range.
        let p = dev.pin(Iova(0x41000), 1, Prot::READ).map(|h| h.len());
        s.push(format!("pin {:?}", p.ok()));
        s.push(format!("unpin {:?}", dev.unpin(Iova(0x41000), 1).is_ok()));
        // Give the pins on the mapping back.
        s.push(format!(
            "unpin {:?}",
            dev.unpin(iova, (size / P) as usize).is_ok()
        ));
    });
    dev.pin(Iova(0x10000), 2, Prot::WRITE).unwrap();

    // On another thread, so that a deadlock fails the test instead of hanging it.
    let (tx, rx) = mpsc::channel();
    let s2 = space.clone();
    std::thread::spawn(move || {
        let _ = tx.send(s2.unmap(Iova(0x10000), 2 * P).map_err(|e| e.errno()));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("unmap with a re-entering callback deadlocked");
    assert_eq!(r, Ok(2 * P));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            "call 0x10000 0x2000".to_string(),
            "write true".into(),
            "read true [99, 98]".into(),
            "translate Some(8192)".into(),
            "pin Some(1)".into(),
            "unpin true".into(),
            "unpin true".into(),
        ]
    );
    assert_eq!(c.host_region().map(|r| r.len()), Some(2 * PU));
    let mut b = [0u8; 2];
    c.read_at(0xffe, &mut b).unwrap();
    assert_eq!(&b, b"cb");
    // The other range is not held by anything the callback did.
    assert_eq!(space.unmap(Iova(0x40000), 2 * P).unwrap(), 2 * P);
    dev.clear_unmap_callback();
}

#[test]
fn unmap_from_inside_a_callback_is_edeadlk() {
    let (space, dev) = env();
    map_owned(&space, 0x10000, 2, Prot::READ_WRITE);
    map_owned(&space, 0x40000, 2, Prot::READ_WRITE);

    let seen: Arc<Mutex<Vec<i32>>> = Default::default();
    let weak = Arc::downgrade(&dev);
    let s = seen.clone();
    let sp = space.clone();
    dev.set_unmap_callback(move |iova, _size| {
        let mut s = s.lock().unwrap();
        s.push(
            sp.unmap(Iova(0x40000), 2 * P)
                .map_err(|e| e.errno())
                .unwrap_err(),
        );
        s.push(sp.unmap(iova, P).map_err(|e| e.errno()).unwrap_err());
        s.push(sp.unmap_all().map_err(|e| e.errno()).unwrap_err());
        weak.upgrade().unwrap().unpin(iova, 1).unwrap();
    });
    dev.pin(Iova(0x10000), 1, Prot::READ).unwrap();
    let (tx, rx) = mpsc::channel();
    let s2 = space.clone();
    std::thread::spawn(move || {
        let _ = tx.send(s2.unmap(Iova(0x10000), 2 * P).map_err(|e| e.errno()));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("unmap from a callback deadlocked");
    assert_eq!(r, Ok(2 * P));
    assert_eq!(*seen.lock().unwrap(), vec![libc::EDEADLK; 3]);
    // The nested unmaps changed nothing.
    let maps = space.mappings();
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0].iova, Iova(0x40000));
    // Outside a callback, unmap works on this thread too.
    dev.clear_unmap_callback();
    assert_eq!(space.unmap(Iova(0x40000), 2 * P).unwrap(), 2 * P);
}

#[test]
fn pin_of_a_mapping_being_unmapped_is_eagain() {
    let (space, dev) = env();
    map_owned(&space, 0x10000, 2, Prot::READ_WRITE);
    map_owned(&space, 0x40000, 1, Prot::READ_WRITE);
    let seen: Arc<Mutex<Vec<Result<usize, i32>>>> = Default::default();
    let weak = Arc::downgrade(&dev);
    let s = seen.clone();
    dev.set_unmap_callback(move |iova, _| {
        let dev = weak.upgrade().unwrap();
        let mut s = s.lock().unwrap();
        // The dying mapping takes no new pin; another one does.
        s.push(
            dev.pin(Iova(0x11000), 1, Prot::READ)
                .map(|h| h.len())
                .map_err(|e| e.errno()),
        );
        s.push(
            dev.pin(Iova(0x40000), 1, Prot::READ)
                .map(|h| h.len())
                .map_err(|e| e.errno()),
        );
        dev.unpin(Iova(0x40000), 1).unwrap();
        dev.unpin(iova, 1).unwrap();
    });
    dev.pin(Iova(0x10000), 1, Prot::READ).unwrap();
    assert_eq!(space.unmap(Iova(0x10000), 2 * P).unwrap(), 2 * P);
    assert_eq!(*seen.lock().unwrap(), vec![Err(libc::EAGAIN), Ok(1)]);
    // The refused pin held nothing: the other mapping unmaps with no callback.
    dev.clear_unmap_callback();
    assert_eq!(space.unmap(Iova(0x40000), P).unwrap(), P);
}

#[test]
fn pin_racing_unmap_either_pins_or_is_refused_and_unmap_completes() {
    let (space, dev) = env_with(Config {
        busy_timeout: Duration::from_secs(2),
        ..Config::default()
    });
    let pins: PinList = Default::default();
    recording_unpinner(&dev, &pins);
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<[AtomicUsize; 3]> = Arc::new(Default::default()); // ok, EAGAIN, EINVAL
    let pinner = {
        let (dev, pins, stop, outcomes) =
            (dev.clone(), pins.clone(), stop.clone(), outcomes.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut list = pins.lock().unwrap();
                match dev.pin(Iova(0x10000), 2, Prot::WRITE) {
                    Ok(h) => {
                        assert_eq!(h.len(), 2);
                        // The memory is there for as long as the pin is.
                        write_host(h[1], 0, 1);
                        list.push((Iova(0x10000), 2));
                        outcomes[0].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.errno() == libc::EAGAIN => {
                        outcomes[1].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.errno() == libc::EINVAL => {
                        outcomes[2].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("pin: {e}"),
                }
                // Give some pins back ourselves, too.
                if list.len() > 3 {
                    let (at, n) = list.remove(0);
                    dev.unpin(at, n).unwrap();
                }
                drop(list);
                std::thread::yield_now();
            }
        })
    };
    let t = Instant::now();
    let mut rounds = 0;
    while t.elapsed() < Duration::from_millis(600) || rounds < 20 {
        map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
        std::thread::sleep(Duration::from_micros(200));
        assert_eq!(space.unmap(Iova(0x10000), 4 * P).unwrap(), 4 * P);
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    pinner.join().unwrap();
    assert!(outcomes[0].load(Ordering::Relaxed) > 0, "never pinned");
    assert!(pins.lock().unwrap().is_empty(), "a pin survived its unmap");
}

/// Whether the page at `addr` is `mlock`ed: its VMA in /proc/self/smaps has the `lo` flag.
fn is_mlocked(addr: usize) -> bool {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = lo <= addr && addr < hi;
                continue;
            }
        }
        if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().any(|f| f == "lo");
            }
        }
    }
    panic!("no mapping at {addr:#x}");
}

/// `mlock` does not nest and mappings of one file share host pages, so locks are counted per
/// host page: an unpin through one mapping must not unlock a page still pinned through another.
/// A page whose last pin goes may stay locked (idle, so that pinning it again costs no system
/// call), but no longer than its memory stays mapped.
#[test]
fn a_page_pinned_through_two_mappings_stays_locked_until_both_unpin() {
    let (space, dev) = env_with(Config {
        mlock: true,
        ..config()
    });
    recording_noop(&dev);
    let file = memfd("pins-alias", 4 * P);
    space
        .map(
            Iova(0x10000),
            4 * P,
            Backing::file(&file, 0),
            Prot::READ_WRITE,
        )
        .unwrap();
    space
        .map(
            Iova(0x20000),
            4 * P,
            Backing::file(&file, 0),
            Prot::READ_WRITE,
        )
        .unwrap();
    let a = dev.pin(Iova(0x11000), 1, Prot::READ).unwrap();
    let b = dev.pin(Iova(0x21000), 1, Prot::READ).unwrap();
    assert_eq!(a, b, "both mappings share one host mapping of the file");
    assert!(is_mlocked(a[0].0), "a pinned page is locked");
    dev.unpin(Iova(0x11000), 1).unwrap();
    assert!(
        is_mlocked(b[0].0),
        "the page is still pinned through 0x21000 but no longer locked"
    );
    dev.unpin(Iova(0x21000), 1).unwrap();
    // A third mapping of the file keeps the shared host mapping alive after the other two go.
    space
        .map(
            Iova(0x30000),
            4 * P,
            Backing::file(&file, 0),
            Prot::READ_WRITE,
        )
        .unwrap();
    space.unmap(Iova(0x10000), 4 * P).unwrap();
    space.unmap(Iova(0x20000), 4 * P).unwrap();
    assert!(
        !is_mlocked(b[0].0),
        "the memory the page was pinned through is unmapped, so it is unlocked"
    );
}

/// Pinning a page again right after its last unpin finds it still locked: no system call, and
/// the page stays resident throughout.
#[test]
fn a_page_pinned_again_after_unpin_is_still_locked() {
    let (space, dev) = env_with(Config {
        mlock: true,
        ..config()
    });
    recording_noop(&dev);
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    let a = dev.pin(Iova(0x11000), 1, Prot::READ).unwrap();
    dev.unpin(Iova(0x11000), 1).unwrap();
    assert!(is_mlocked(a[0].0), "an idle page stays locked");
    let b = dev.pin(Iova(0x11000), 1, Prot::READ).unwrap();
    assert_eq!(a, b);
    assert!(is_mlocked(b[0].0));
    dev.unpin(Iova(0x11000), 1).unwrap();
}

/// An idle page (its last pin gone, still locked) is not pinned: unpinning it again changes
/// nothing, pinning it again charges it again, and it does not keep its mapping from being
/// unmapped.
#[test]
fn an_idle_page_is_not_pinned() {
    let (space, dev) = env_with(Config {
        mlock: true,
        memlock_limit: Some(2 * P),
        ..config()
    });
    recording_noop(&dev);
    map_owned(&space, 0x10000, 4, Prot::READ_WRITE);
    dev.pin(Iova(0x11000), 1, Prot::READ).unwrap();
    dev.unpin(Iova(0x11000), 1).unwrap();
    dev.unpin(Iova(0x11000), 1).unwrap();
    // Charged again when pinned again: two pages fit the limit, a third does not.
    dev.pin(Iova(0x11000), 1, Prot::READ).unwrap();
    dev.pin(Iova(0x12000), 1, Prot::READ).unwrap();
    assert_eq!(
        dev.pin(Iova(0x13000), 1, Prot::READ).unwrap_err().errno(),
        libc::ENOMEM
    );
    dev.unpin(Iova(0x11000), 2).unwrap();
    // Idle pages do not hold the mapping.
    assert_eq!(space.unmap(Iova(0x10000), 4 * P).unwrap(), 4 * P);
}
