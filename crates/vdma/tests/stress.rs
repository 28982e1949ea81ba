//! Stress: 1,000,000 `dma_rw` on two threads while a third maps and unmaps at random, with a
//! canary in every buffer that is not mapped. No byte may land in a buffer after its `unmap`
//! returned: the unmap rule under load, on host memory of this process and on a shared memfd.
//!
//! `VDMA_STRESS_OPS` overrides the total number of accesses (default 1,000,000).

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vdma::{Backing, Config, Container, DeviceId, Error, GroupId, Iova, OwnedMemory, Prot};
use vdma_model::memfd;

const SLOTS: usize = 16;
const SLOT: u64 = 64 * 1024;
const BASE: u64 = 0x4000_0000;
const CANARY: u8 = 0x5a;

/// What a slot's memory is, so the test can look at its bytes without the address space.
enum Buffer {
    Owned(Arc<OwnedMemory>),
    File(std::fs::File),
}

impl Buffer {
    fn fill(&self, byte: u8) {
        let bytes = vec![byte; SLOT as usize];
        match self {
            Buffer::Owned(m) => vdma::Memory::write_at(m.as_ref(), 0, &bytes).unwrap(),
            Buffer::File(f) => f.write_all_at(&bytes, 0).unwrap(),
        }
    }

    /// The first byte that is not `byte`.
    fn first_not(&self, byte: u8) -> Option<usize> {
        let mut bytes = vec![0u8; SLOT as usize];
        match self {
            Buffer::Owned(m) => vdma::Memory::read_at(m.as_ref(), 0, &mut bytes).unwrap(),
            Buffer::File(f) => f.read_exact_at(&mut bytes, 0).unwrap(),
        }
        bytes.iter().position(|&b| b != byte)
    }

    fn map(&self, space: &Container, iova: u64) {
        let backing = match self {
            Buffer::Owned(m) => Backing::memory(m.clone(), 0),
            Buffer::File(f) => Backing::file(f, 0),
        };
        space
            .map(Iova(iova), SLOT, backing, Prot::READ_WRITE)
            .unwrap();
    }
}

fn total_ops() -> u64 {
    std::env::var("VDMA_STRESS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

#[test]
fn a_million_accesses_while_a_third_thread_maps_and_unmaps() {
    let space = Container::new(Config::default()).unwrap();
    space.attach_group(GroupId(1)).unwrap();
    let dev = DeviceId::new("0000:00:02.0");
    space.add_device(GroupId(1), dev.clone()).unwrap();
    let buffers: Vec<Buffer> = (0..SLOTS)
        .map(|i| match i % 2 {
            0 => Buffer::Owned(Arc::new(OwnedMemory::new(SLOT as usize).unwrap())),
            _ => Buffer::File(memfd("stress", SLOT)),
        })
        .collect();
    // Every slot starts unmapped, with the canary in.
    for b in &buffers {
        b.fill(CANARY);
    }
    let mapped = Mutex::new(vec![false; SLOTS]);
    let per_thread = total_ops() / 2;
    let done = AtomicBool::new(false);
    let (hits, misses, maps, unmaps) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );

    thread::scope(|s| {
        for t in 0..2u64 {
            let handle = space.device_handle(&dev).unwrap();
            let (hits, misses) = (&hits, &misses);
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(0x57e55 + t);
                // Writers never write the canary.
                let mut buf = vec![0x10 + t as u8; 512];
                for _ in 0..per_thread {
                    let slot = rng.gen_range(0..SLOTS as u64);
                    let len = rng.gen_range(1..=512usize);
                    let off = rng.gen_range(0..=SLOT - len as u64);
                    let iova = Iova(BASE + slot * SLOT + off);
                    let result = if rng.gen_bool(0.5) {
                        handle.write(iova, &buf[..len])
                    } else {
                        handle.read(iova, &mut buf[..len])
                    };
                    match result {
                        Ok(()) => hits.fetch_add(1, Ordering::Relaxed),
                        Err(e @ Error::NotMapped { .. }) => {
                            assert_eq!(e.errno(), libc::EINVAL);
                            misses.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => panic!("access at {iova:?} of {len} bytes: {e}"),
                    };
                    // A read may have fetched the canary; never write it back.
                    buf[..len].fill(0x10 + t as u8);
                }
            });
        }
        let mapper = s.spawn(|| {
            let mut rng = StdRng::seed_from_u64(0x3a9);
            while !done.load(Ordering::Relaxed) {
                let slot = rng.gen_range(0..SLOTS);
                let iova = BASE + slot as u64 * SLOT;
                let mut mapped = mapped.lock().unwrap();
                if mapped[slot] {
                    space.unmap(Iova(iova), SLOT).unwrap();
                    mapped[slot] = false;
                    unmaps.fetch_add(1, Ordering::Relaxed);
                    // From here on no write may land: put the canary in.
                    buffers[slot].fill(CANARY);
                } else {
                    // Unmapped since its last unmap: the canary must be whole.
                    if let Some(at) = buffers[slot].first_not(CANARY) {
                        panic!("slot {slot}: byte {at:#x} changed after unmap returned");
                    }
                    buffers[slot].map(&space, iova);
                    mapped[slot] = true;
                    maps.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // The accessors are the first two threads; when both are done, stop the mapper.
        while hits.load(Ordering::Relaxed) + misses.load(Ordering::Relaxed) < 2 * per_thread {
            if mapper.is_finished() {
                break;
            }
            thread::yield_now();
        }
        done.store(true, Ordering::Relaxed);
    });

    // Every slot that is unmapped now still holds its whole canary.
    let mapped = mapped.into_inner().unwrap();
    for (slot, b) in buffers.iter().enumerate() {
        if !mapped[slot] {
            assert_eq!(b.first_not(CANARY), None, "slot {slot} at the end");
        }
    }
    let (hits, misses) = (hits.into_inner(), misses.into_inner());
    let (maps, unmaps) = (maps.into_inner(), unmaps.into_inner());
    assert_eq!(hits + misses, 2 * per_thread);
    assert!(hits > 0 && misses > 0, "hits {hits}, misses {misses}");
    assert!(unmaps >= 100, "only {unmaps} unmaps");
    eprintln!(
        "{hits} accesses landed, {misses} found nothing mapped; {maps} maps, {unmaps} unmaps"
    );
}
