//! Benchmarks of pinning and dirty tracking (issue 3), side by side in one run:
//! - `dirty_write_4k`: 4 KiB `dma_rw` writes with tracking off and on (same pages again, so the
//!   steady state of live migration: pages already dirty);
//! - `dirty_report_64g`: report + clear of a 64 GiB mapping at 4 KiB pages (2 MiB of bitmap),
//!   all pages dirty, against `memcpy` of 2 MiB;
//! - `pin_unpin`: pin + unpin of 1 and of 512 pages, per page, with and without mlock.
//!
//! Run: `cargo bench -p vdma --bench tracking`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vdma::{Backing, Config, Container, DeviceId, GroupId, Iova, Memory, OwnedMemory, Prot};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn pin_to_cpu0() {
    // SAFETY: sched_setaffinity on this thread with a cpu_set_t we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Memory whose writes go nowhere and whose reads give zeros: marks dirt without populating
/// 64 GiB.
#[derive(Debug)]
struct NullMemory(u64);

impl Memory for NullMemory {
    fn len(&self) -> u64 {
        self.0
    }
    fn read_at(&self, _offset: u64, buf: &mut [u8]) -> vdma::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _offset: u64, _buf: &[u8]) -> vdma::Result<()> {
        Ok(())
    }
}

fn space_with(size: u64, config: Config) -> (Container, vdma::DeviceHandle) {
    space_over(
        Arc::new(OwnedMemory::new(size as usize).unwrap()),
        size,
        config,
    )
}

fn space_over(
    memory: Arc<dyn Memory>,
    size: u64,
    config: Config,
) -> (Container, vdma::DeviceHandle) {
    let space = Container::new(config).unwrap();
    space
        .map(Iova(0), size, Backing::memory(memory, 0), Prot::READ_WRITE)
        .unwrap();
    space.attach_group(GroupId(1)).unwrap();
    let id = DeviceId::new("bench");
    space.add_device(GroupId(1), id.clone()).unwrap();
    let dev = space.device_handle(&id).unwrap();
    dev.set_unmap_callback(|_, _| {});
    (space, dev)
}

fn dirty_write(c: &mut Criterion) {
    pin_to_cpu0();
    let (space, dev) = space_with(64 * MIB, Config::default());
    let buf = vec![0x5au8; 4096];
    // Prefault.
    for off in (0..64 * MIB).step_by(4096) {
        dev.write(Iova(off), &buf).unwrap();
    }
    let mut g = c.benchmark_group("dirty_write_4k");
    g.throughput(Throughput::Bytes(4096));
    for (name, on) in [("tracking-off", false), ("tracking-on", true)] {
        if on {
            space.dirty_start(4096).unwrap();
        } else {
            space.dirty_stop().unwrap();
        }
        g.bench_function(name, |b| b.iter(|| dev.write(Iova(0x10000), &buf).unwrap()));
    }
    space.dirty_stop().unwrap();
    g.finish();
}

fn dirty_report(c: &mut Criterion) {
    pin_to_cpu0();
    let size = 64 * GIB;
    let pages = size / 4096;
    let bitmap_bytes = (pages / 8) as usize;
    let (space, dev) = space_over(Arc::new(NullMemory(size)), size, Config::default());
    space.dirty_start(4096).unwrap();
    let mut g = c.benchmark_group("dirty_report_64g");
    g.throughput(Throughput::Bytes(bitmap_bytes as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    let src = vec![0xffu8; bitmap_bytes];
    let mut dst = vec![0u8; bitmap_bytes];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            // SAFETY: two distinct buffers of `bitmap_bytes`.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), bitmap_bytes) };
            std::hint::black_box(&dst);
        })
    });
    // Every page dirty before each timed report, written through the device (untimed).
    let chunk = vec![1u8; MIB as usize];
    let dirty_all = || {
        for off in (0..size).step_by(MIB as usize) {
            dev.write(Iova(off), &chunk).unwrap();
        }
    };
    g.bench_function("vdma", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                dirty_all();
                let t = Instant::now();
                let bm = space.dirty_report(Iova(0), size, 4096).unwrap();
                total += t.elapsed();
                assert_eq!(bm.pages(), pages);
                std::hint::black_box(bm);
            }
            total
        })
    });
    g.finish();
}

fn pin_unpin(c: &mut Criterion) {
    pin_to_cpu0();
    let mut g = c.benchmark_group("pin_unpin");
    for (name, mlock) in [("vdma", true), ("vdma-no-mlock", false)] {
        let config = Config {
            memlock_limit: Some(u64::MAX),
            mlock,
            ..Config::default()
        };
        let (_space, dev) = space_with(16 * MIB, config);
        // Prefault.
        for off in (0..16 * MIB).step_by(4096) {
            dev.write(Iova(off), &[0]).unwrap();
        }
        for npages in [1usize, 512] {
            g.throughput(Throughput::Elements(npages as u64));
            g.bench_with_input(BenchmarkId::new(name, npages), &npages, |b, &n| {
                b.iter(|| {
                    let hosts = dev.pin(Iova(0x20000), n, Prot::READ_WRITE).unwrap();
                    std::hint::black_box(&hosts);
                    dev.unpin(Iova(0x20000), n).unwrap();
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, dirty_write, dirty_report, pin_unpin);
criterion_main!(benches);
