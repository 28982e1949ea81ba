//! vdma's DMA path against plain `memcpy` and vm-memory, side by side in one process.
//!
//! Run with `cargo bench -p vdma --bench dma`; `crates/vdma/benches/report.py` turns criterion's
//! estimates into the tables of BENCHMARKS.md. Under `cargo test --benches` or
//! `cargo bench -- --test` every benchmark runs once and nothing is prefaulted.
//!
//! All guest memory is one 1 GiB memfd. Each contender reaches it through its own host mapping
//! of that file, made the way it would be in use:
//! - `memcpy`: one `mmap(MAP_SHARED)` of the whole file, copied with
//!   `std::ptr::copy_nonoverlapping` (the length goes through `black_box`, so it is a real call
//!   to `memcpy` as it is in the libraries, not an inlined fixed-size move);
//! - `vm-memory`: `GuestMemoryMmap::from_ranges_with_files` (vm-memory maps the file itself),
//!   `Bytes::read_slice`/`write_slice`;
//! - `vdma`: `Container::map` with `Backing::file`, `GroupHandle::read`/`write`.
//!
//! Every page of every mapping is touched before measuring. The thread running the
//! single-thread groups is pinned to one CPU.
//!
//! Each call gets the caller's buffer as a plain slice and only its pointer goes through
//! `black_box` afterwards: a `black_box`ed slice is stored to the stack and reloaded right before
//! the call, which (depending on how the callee takes it) can cost a store-forwarding stall that
//! belongs to the harness, not to the code under test.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::hint::black_box;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vdma::{Backing, Config, Container, GroupHandle, GroupId, HostRegion, Iova, Prot};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};

const PAGE: usize = 4096;
/// The guest memory: one memfd of this size.
const REGION: usize = 1 << 30;
/// IOVA (and guest physical address, for vm-memory) of the 1 GiB copy mapping.
const BASE: u64 = 0x1_0000_0000;
/// IOVA of the first 4 KiB lookup mapping.
const LOOKUP_BASE: u64 = 0x100_0000_0000;
/// IOVA where the `threads` group's mapper thread maps and unmaps.
const MAPPER_BASE: u64 = 0x80_0000_0000;
/// The mapper maps this many ranges of `MAPPER_SIZE`, then unmaps them, again and again.
const MAPPER_RANGES: u64 = 16;
const MAPPER_SIZE: u64 = 64 << 10;
/// File offset of the mapper's ranges (away from everything the readers touch).
const MAPPER_FILE_OFF: u64 = 768 << 20;

/// Transfer sizes of the copy groups.
const SIZES: [usize; 5] = [8, 64, 4 << 10, 64 << 10, 1 << 20];
/// Offset in the region of the "hot" copies (same address every time).
const HOT_OFF: usize = 256 << 20;
/// Offset in the region of the `threads` group's readers (one 64 KiB slot per thread).
const THREAD_OFF: usize = 512 << 20;
/// Numbers of 4 KiB mappings in the lookup groups.
const LOOKUP_COUNTS: [usize; 3] = [1, 1024, 65535];
/// Length of the precomputed random address list (a power of two).
const N_ADDR: usize = 1 << 16;

// ---------------------------------------------------------------------------------------------
// Host memory and CPU helpers.

/// A whole-file `MAP_SHARED` read-write mapping, unmapped on drop.
struct Flat {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a pointer and a length to a shared mapping that lives as long as the value; the
// benchmarks only copy through it with raw pointer copies, which are fine from any thread.
unsafe impl Send for Flat {}
// SAFETY: as above.
unsafe impl Sync for Flat {}

impl Flat {
    fn map(file: &File, len: usize) -> Flat {
        use std::os::fd::AsRawFd;
        // SAFETY: a new shared mapping of a file we own, at an address of the kernel's choosing;
        // it touches no existing memory and the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of the memfd failed");
        Flat {
            ptr: ptr.cast(),
            len,
        }
    }

    /// The address of byte `off`.
    fn at(&self, off: usize) -> *mut u8 {
        assert!(off <= self.len);
        // SAFETY: checked to be inside (or one past) the mapping.
        unsafe { self.ptr.add(off) }
    }
}

impl Drop for Flat {
    fn drop(&mut self) {
        // SAFETY: this value made the mapping; everything built over it (the lookup groups'
        // vm-memory regions) holds an Arc to it and is gone.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn memfd(len: usize) -> File {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vdma-bench".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: the descriptor is new and owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len as u64).expect("memfd set_len");
    file
}

/// Writes back one byte of every page of `[ptr, ptr + len)`, so the page is allocated and this
/// mapping's page table entry is present and writable before anything is measured.
fn prefault(ptr: *mut u8, len: usize) {
    for off in (0..len).step_by(PAGE) {
        // SAFETY: callers pass a range of a live read-write mapping; the byte is written back
        // unchanged.
        unsafe {
            let p = ptr.add(off);
            p.write_volatile(p.read_volatile());
        }
    }
}

/// A page of a private buffer: page-aligned, so every contender copies to and from the same
/// alignment.
#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; PAGE]);

/// A page-aligned private buffer, written through (so prefaulted) when made.
struct Buf(Vec<Page>);

impl Buf {
    fn new(len: usize) -> Buf {
        Buf(vec![Page([1; PAGE]); len.div_ceil(PAGE)])
    }

    fn bytes(&mut self) -> &mut [u8] {
        let len = self.0.len() * PAGE;
        // SAFETY: `Page` is a byte array without padding, so the vector is `len` initialized
        // bytes; the borrow of `self` keeps it alive and unaliased.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// The CPUs the process may run on, as it started (read before anything is pinned: pinning the
/// main thread narrows what `available_parallelism` and `sched_getaffinity` report afterwards).
fn cpus() -> &'static [usize] {
    static CPUS: OnceLock<Vec<usize>> = OnceLock::new();
    CPUS.get_or_init(|| {
        // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the set is valid for its size; pid 0 is the calling thread.
        let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
        assert_eq!(
            r,
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: CPU_ISSET reads a bit of the set we own.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    })
}

/// Lets the calling thread run only on `allowed`.
fn set_affinity(allowed: &[usize]) {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in allowed {
        // SAFETY: CPU_SET writes a bit inside the set we own.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: the set is valid for its size; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if r != 0 {
        eprintln!(
            "sched_setaffinity({allowed:?}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    // SAFETY: timespec is plain data; clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// The 1 GiB guest memory as each contender sees it.
struct Guest {
    file: File,
    flat: Arc<Flat>,
    gm: GuestMemoryMmap,
    space: Container,
    handle: GroupHandle,
}

impl Guest {
    /// vdma's copy routine alone, without the address space: a `HostRegion` over the flat
    /// mapping (`vdma-copy`), the baseline for what vdma's lookup costs on top of its copy.
    fn region(&self) -> HostRegion {
        // SAFETY: the flat mapping is readable and writable for REGION bytes and outlives every
        // benchmark (the fixtures live until the end of `main`).
        unsafe { HostRegion::new(self.flat.ptr, REGION) }
    }

    fn new(prefault_all: bool) -> Guest {
        let t0 = Instant::now();
        let file = memfd(REGION);
        let flat = Arc::new(Flat::map(&file, REGION));

        let gm = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(BASE),
            REGION,
            Some(FileOffset::new(file.try_clone().expect("dup memfd"), 0)),
        )])
        .expect("vm-memory: GuestMemoryMmap over the memfd");

        let space = Container::new(Config::default()).expect("container");
        space
            .map(
                Iova(BASE),
                REGION as u64,
                Backing::file(&file, 0),
                Prot::READ_WRITE,
            )
            .expect("vdma: map the memfd");
        space.attach_group(GroupId(1)).expect("attach");
        let handle = space.group_handle(GroupId(1)).expect("handle");

        if prefault_all {
            prefault(flat.ptr, REGION);
            let vm_host = gm
                .get_host_address(GuestAddress(BASE))
                .expect("vm-memory host address");
            prefault(vm_host, REGION);
            // vdma's own host mapping of the file: reach it through `translate`.
            let segs = handle
                .translate(Iova(BASE), REGION, Prot::READ_WRITE)
                .expect("vdma translate");
            for s in segs.as_slice() {
                prefault(s.host.as_ptr(), s.len);
            }
        }
        eprintln!(
            "setup: 1 GiB memfd mapped three times{} in {:.2?}",
            if prefault_all { " and prefaulted" } else { "" },
            t0.elapsed()
        );
        Guest {
            file,
            flat,
            gm,
            space,
            handle,
        }
    }
}

/// `n` mappings of 4 KiB, IOVA-contiguous from `LOOKUP_BASE`, onto scattered pages of the memfd.
struct Lookup {
    gm: GuestMemoryMmap,
    handle: GroupHandle,
    _space: Container,
    /// Random 8-byte-aligned IOVAs inside the mappings.
    iovas: Vec<u64>,
    /// The same addresses as offsets into the flat mapping.
    offsets: Vec<usize>,
    /// One IOVA for the hot group.
    hot: u64,
    /// Keeps the memory under `gm`'s raw regions mapped; declared after `gm`, so dropped after.
    _flat: Arc<Flat>,
}

/// File offset of lookup mapping `i` of `n`: a fixed permutation of the first pages of the file,
/// so neighbouring IOVAs are not neighbouring pages (nothing can merge mappings).
fn lookup_file_off(i: usize, n: usize) -> usize {
    let mask = n.next_power_of_two() - 1;
    ((i.wrapping_mul(40503)) & mask) * PAGE
}

impl Lookup {
    fn new(copy: &Guest, n: usize) -> Lookup {
        let t0 = Instant::now();
        let space = Container::new(Config::default()).expect("container");
        let mut regions = Vec::with_capacity(n);
        for i in 0..n {
            let iova = LOOKUP_BASE + (i * PAGE) as u64;
            let off = lookup_file_off(i, n);
            // vdma: every mapping is a 4 KiB slice of the one memfd; vdma shares one host
            // mapping of the file between them (and with the copy fixture's container).
            space
                .map(
                    Iova(iova),
                    PAGE as u64,
                    Backing::file(&copy.file, off as u64),
                    Prot::READ_WRITE,
                )
                .expect("vdma: map a 4 KiB slice");
            // vm-memory: one region per mapping, over the same page of the flat mapping. Each
            // region made with `MmapRegion::from_file` would be its own mmap, and 65,535 of them
            // exceed vm.max_map_count (65,530); regions over one big mapping keep vm-memory's
            // lookup exactly as it is while using the same single host mapping as vdma does.
            //
            // SAFETY: `[flat + off, flat + off + 4 KiB)` lies inside the flat mapping, which is
            // read-write and MAP_SHARED as declared, and outlives `gm` (the Lookup holds an Arc
            // to it and drops it last). A raw region is not unmapped by vm-memory.
            let region = unsafe {
                MmapRegion::<()>::build_raw(
                    copy.flat.at(off),
                    PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                )
            }
            .expect("vm-memory: raw region");
            regions.push(GuestRegionMmap::new(region, GuestAddress(iova)).expect("region"));
        }
        let gm = GuestMemoryMmap::from_regions(regions).expect("vm-memory: 4 KiB regions");
        space.attach_group(GroupId(1)).expect("attach");
        let handle = space.group_handle(GroupId(1)).expect("handle");

        let mut rng = StdRng::seed_from_u64(0x5eed_0000 + n as u64);
        let mut iovas = Vec::with_capacity(N_ADDR);
        let mut offsets = Vec::with_capacity(N_ADDR);
        for _ in 0..N_ADDR {
            let i = rng.gen_range(0..n);
            let within = rng.gen_range(0..PAGE / 8) * 8;
            iovas.push(LOOKUP_BASE + (i * PAGE + within) as u64);
            offsets.push(lookup_file_off(i, n) + within);
        }
        let hot_index = if n > 1 { 40000 % n } else { 0 };
        let hot = LOOKUP_BASE + (hot_index * PAGE + 0x100) as u64;
        eprintln!("setup: {n} lookup mappings in {:.2?}", t0.elapsed());
        Lookup {
            gm,
            handle,
            _space: space,
            iovas,
            offsets,
            hot,
            _flat: copy.flat.clone(),
        }
    }
}

/// Builds fixtures the first time a benchmark needs them, so `--list` or a filter that selects
/// a few benchmarks does not pay for the rest.
struct Fixtures {
    prefault: bool,
    copy: OnceCell<Guest>,
    lookups: [OnceCell<Lookup>; 3],
}

impl Fixtures {
    fn copy(&self) -> &Guest {
        self.copy.get_or_init(|| Guest::new(self.prefault))
    }

    fn lookup(&self, n: usize) -> &Lookup {
        let i = LOOKUP_COUNTS.iter().position(|&c| c == n).expect("count");
        let copy = self.copy();
        self.lookups[i].get_or_init(|| Lookup::new(copy, n))
    }
}

// ---------------------------------------------------------------------------------------------
// Copy groups.

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Read,
    Write,
}

/// Where the next copy of `size` bytes goes: the same offset (`hot`) or the next one, at least a
/// cache line further, wrapping at the end of the region (`sweep`).
struct Cursor {
    off: usize,
    step: usize,
    size: usize,
}

impl Cursor {
    fn hot() -> Cursor {
        Cursor {
            off: HOT_OFF,
            step: 0,
            size: 0,
        }
    }

    fn sweep(size: usize) -> Cursor {
        Cursor {
            off: 0,
            step: size.max(64),
            size,
        }
    }

    #[inline(always)]
    fn next(&mut self) -> usize {
        let off = self.off;
        self.off += self.step;
        if self.off + self.size > REGION {
            self.off = 0;
        }
        off
    }
}

/// One turn of the `memcpy` contender: `buf.len()` bytes between `host` and `buf` with
/// `copy_nonoverlapping`, the length through `black_box` so that it is a real call to `memcpy`.
///
/// # Safety
/// `host` must be readable (`Dir::Read`) or writable (`Dir::Write`) for `buf.len()` bytes, and
/// must not overlap `buf`.
#[inline(always)]
unsafe fn memcpy_once(host: *mut u8, buf: &mut [u8], dir: Dir) {
    let len = black_box(buf.len());
    // SAFETY: as the caller promised; `buf` is private memory of `len` bytes.
    unsafe {
        match dir {
            Dir::Read => std::ptr::copy_nonoverlapping(host, buf.as_mut_ptr(), len),
            Dir::Write => std::ptr::copy_nonoverlapping(buf.as_ptr(), host, len),
        }
    }
    black_box(buf.as_mut_ptr());
}

/// One turn of the `vdma-copy` contender: vdma's copy routine over `region`, no lookup.
#[inline(always)]
fn region_once(region: &HostRegion, off: u64, buf: &mut [u8], dir: Dir) {
    let ok = match dir {
        Dir::Read => region.read(off, buf),
        Dir::Write => region.write(off, buf),
    };
    assert!(ok);
    black_box(buf.as_mut_ptr());
}

fn copy_group(c: &mut Criterion, fx: &Fixtures, name: &str, dir: Dir, sweep: bool) {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_millis(1800))
        .sample_size(50);
    let mut storage = Buf::new(1 << 20);
    let buf = storage.bytes();
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let new_cursor = || {
            if sweep {
                Cursor::sweep(size)
            } else {
                Cursor::hot()
            }
        };

        g.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, &size| {
            let flat = &fx.copy().flat;
            let mut cur = new_cursor();
            let buf = &mut buf[..size];
            // Hot: the address is made once, outside the loop, as in the `threads` group and in
            // `vdma bench` (a chain of loads for it before every copy slows glibc's `rep movsb`
            // path by 3-4 ns at 4 KiB on Zen 4, flattering every ratio to memcpy).
            let hot = flat.at(HOT_OFF);
            b.iter(|| {
                let host = black_box(if sweep { flat.at(cur.next()) } else { hot });
                // SAFETY: `host` and `size` lie inside the flat mapping (the cursor keeps
                // `off + size <= REGION`), `buf` is a private buffer of `size` bytes.
                unsafe { memcpy_once(host, buf, dir) };
            })
        });

        g.bench_with_input(BenchmarkId::new("vm-memory", size), &size, |b, &size| {
            let gm = &fx.copy().gm;
            let mut cur = new_cursor();
            let buf = &mut buf[..size];
            b.iter(|| {
                let off = if sweep { cur.next() } else { HOT_OFF };
                let addr = GuestAddress(BASE + off as u64);
                match dir {
                    Dir::Read => gm.read_slice(buf, addr).unwrap(),
                    Dir::Write => gm.write_slice(buf, addr).unwrap(),
                }
                black_box(buf.as_mut_ptr());
            })
        });

        g.bench_with_input(BenchmarkId::new("vdma-copy", size), &size, |b, &size| {
            let region = fx.copy().region();
            let mut cur = new_cursor();
            let buf = &mut buf[..size];
            b.iter(|| {
                let off = (if sweep { cur.next() } else { HOT_OFF }) as u64;
                region_once(&region, off, buf, dir);
            })
        });

        g.bench_with_input(BenchmarkId::new("vdma", size), &size, |b, &size| {
            let h = &fx.copy().handle;
            let mut cur = new_cursor();
            let buf = &mut buf[..size];
            b.iter(|| {
                let off = if sweep { cur.next() } else { HOT_OFF };
                let iova = Iova(BASE + off as u64);
                match dir {
                    Dir::Read => h.read(iova, buf).unwrap(),
                    Dir::Write => h.write(iova, buf).unwrap(),
                }
                black_box(buf.as_mut_ptr());
            })
        });
    }
    g.finish();
}

/// Sizes of the `copy_routine` group: around the range where vdma copies with its own vector
/// loop instead of `memcpy` (`memory/copy.rs`).
const ROUTINE_SIZES: [usize; 8] = [
    1 << 10,
    2 << 10,
    4 << 10,
    8 << 10,
    16 << 10,
    32 << 10,
    64 << 10,
    256 << 10,
];

/// `memcpy` against vdma's copy routine alone (a `HostRegion`, no lookup), hot reads and writes
/// at the sizes around the vector loop's range: the evidence for that range.
fn routine_group(c: &mut Criterion, fx: &Fixtures) {
    let mut g = c.benchmark_group("copy_routine");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1200))
        .sample_size(40);
    let mut storage = Buf::new(1 << 20);
    let buf = storage.bytes();
    for size in ROUTINE_SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        for dir in [Dir::Read, Dir::Write] {
            let d = if dir == Dir::Read { "read" } else { "write" };
            g.bench_with_input(
                BenchmarkId::new(format!("memcpy-{d}"), size),
                &size,
                |b, &size| {
                    let host = fx.copy().flat.at(HOT_OFF);
                    let buf = &mut buf[..size];
                    // SAFETY: `HOT_OFF + size` lies inside the flat mapping; `buf` is private.
                    b.iter(|| unsafe { memcpy_once(host, buf, dir) })
                },
            );
            g.bench_with_input(
                BenchmarkId::new(format!("vdma-copy-{d}"), size),
                &size,
                |b, &size| {
                    let region = fx.copy().region();
                    let buf = &mut buf[..size];
                    b.iter(|| region_once(&region, HOT_OFF as u64, buf, dir))
                },
            );
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Lookup groups.

fn lookup_groups(c: &mut Criterion, fx: &Fixtures) {
    let mut g = c.benchmark_group("lookup_random_8b");
    g.warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_millis(2000))
        .sample_size(50)
        .throughput(Throughput::Elements(1));
    for n in LOOKUP_COUNTS {
        g.bench_with_input(BenchmarkId::new("memcpy", n), &n, |b, &n| {
            let l = fx.lookup(n);
            let flat = &fx.copy().flat;
            let mut buf = [0u8; 8];
            let mut i = 0;
            b.iter(|| {
                let host = flat.at(l.offsets[i]);
                i = (i + 1) & (N_ADDR - 1);
                // SAFETY: every offset is 8 bytes inside one of the first 65,536 pages of the
                // flat mapping; `buf` is private.
                unsafe {
                    std::ptr::copy_nonoverlapping(black_box(host), buf.as_mut_ptr(), black_box(8))
                };
                black_box(buf.as_mut_ptr());
            })
        });
        g.bench_with_input(BenchmarkId::new("vm-memory", n), &n, |b, &n| {
            let l = fx.lookup(n);
            let mut buf = [0u8; 8];
            let mut i = 0;
            b.iter(|| {
                let addr = GuestAddress(l.iovas[i]);
                i = (i + 1) & (N_ADDR - 1);
                l.gm.read_slice(&mut buf, addr).unwrap();
                black_box(buf.as_mut_ptr());
            })
        });
        g.bench_with_input(BenchmarkId::new("vdma", n), &n, |b, &n| {
            let l = fx.lookup(n);
            let mut buf = [0u8; 8];
            let mut i = 0;
            b.iter(|| {
                let iova = Iova(l.iovas[i]);
                i = (i + 1) & (N_ADDR - 1);
                l.handle.read(iova, &mut buf).unwrap();
                black_box(buf.as_mut_ptr());
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("lookup_hot_8b");
    g.warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_millis(2000))
        .sample_size(50)
        .throughput(Throughput::Elements(1));
    for n in [1, 65535] {
        g.bench_with_input(BenchmarkId::new("vm-memory", n), &n, |b, &n| {
            let l = fx.lookup(n);
            let mut buf = [0u8; 8];
            b.iter(|| {
                l.gm.read_slice(&mut buf, GuestAddress(black_box(l.hot)))
                    .unwrap();
                black_box(buf.as_mut_ptr());
            })
        });
        g.bench_with_input(BenchmarkId::new("vdma", n), &n, |b, &n| {
            let l = fx.lookup(n);
            let mut buf = [0u8; 8];
            b.iter(|| {
                l.handle.read(Iova(black_box(l.hot)), &mut buf).unwrap();
                black_box(buf.as_mut_ptr());
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Threads.

#[derive(Clone, Copy, PartialEq)]
enum Reader {
    Memcpy,
    Vdma,
}

/// The `threads` group's third thread.
#[derive(Clone, Copy, PartialEq)]
enum Mapper {
    /// No mapper.
    None,
    /// Maps and unmaps as fast as it can.
    FlatOut,
    /// Maps and unmaps at this many calls per second.
    Paced(u64),
}

/// What the `threads` runs did besides their wall time, summed over every call (warm-up
/// included), for BENCHMARKS.md.
#[derive(Default)]
struct ThreadStats {
    reads: u64,
    wall: Duration,
    reader_cpu: Duration,
    mapper_ops: u64,
    mapper_cpu: Duration,
}

/// `threads` readers do `iters` hot 4 KiB reads between them, each at its own address and pinned
/// to its own CPU; with `mapper`, a third thread maps and unmaps other ranges of the same
/// container the whole time (16 mappings of 64 KiB, then their 16 unmaps, over and over), on the
/// CPUs no reader uses, or on all of them if there are none. Returns the wall time from the first
/// reader's start to the last reader's end.
fn run_threads(
    copy: &Guest,
    threads: usize,
    iters: u64,
    reader: Reader,
    mapper: Mapper,
    stats: &mut ThreadStats,
) -> Duration {
    let stop = AtomicBool::new(false);
    let mapper_ops = AtomicU64::new(0);
    let barrier = Barrier::new(threads);
    let cpus = cpus();
    let reader_cpu = |t: usize| cpus[t % cpus.len()];
    // The mapper gets the CPUs no reader is pinned to; when there are none (2 readers on a
    // 2-CPU machine) it shares all of them with the readers.
    let mut mapper_cpus: Vec<usize> = cpus
        .iter()
        .copied()
        .filter(|&c| (0..threads).all(|t| reader_cpu(t) != c))
        .collect();
    if mapper_cpus.is_empty() {
        mapper_cpus = cpus.to_vec();
    }
    let mapper_cpus = &mapper_cpus;
    std::thread::scope(|s| {
        let mapper_thread = (mapper != Mapper::None).then(|| {
            let (stop, ops) = (&stop, &mapper_ops);
            s.spawn(move || {
                set_affinity(mapper_cpus);
                let c0 = thread_cpu_time();
                // A paced mapper waits (spinning: it has a CPU of its own) until its next call
                // is due, `1 / rate` after the previous one was.
                let t0 = Instant::now();
                let mut calls = 0u64;
                let mut pace = || {
                    calls += 1;
                    if let Mapper::Paced(rate) = mapper {
                        let due = t0 + Duration::from_nanos(calls * 1_000_000_000 / rate);
                        while Instant::now() < due && !stop.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    for j in 0..MAPPER_RANGES {
                        copy.space
                            .map(
                                Iova(MAPPER_BASE + j * MAPPER_SIZE),
                                MAPPER_SIZE,
                                Backing::file(&copy.file, MAPPER_FILE_OFF + j * MAPPER_SIZE),
                                Prot::READ_WRITE,
                            )
                            .expect("mapper: map");
                        ops.fetch_add(1, Ordering::Relaxed);
                        pace();
                    }
                    for j in 0..MAPPER_RANGES {
                        copy.space
                            .unmap(Iova(MAPPER_BASE + j * MAPPER_SIZE), MAPPER_SIZE)
                            .expect("mapper: unmap");
                        ops.fetch_add(1, Ordering::Relaxed);
                        pace();
                    }
                }
                thread_cpu_time() - c0
            })
        });
        if mapper != Mapper::None {
            while mapper_ops.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
        }
        let ops_before = mapper_ops.load(Ordering::Relaxed);

        let readers: Vec<_> = (0..threads)
            .map(|t| {
                let n = iters / threads as u64 + u64::from((t as u64) < iters % threads as u64);
                let barrier = &barrier;
                s.spawn(move || {
                    set_affinity(&[reader_cpu(t)]);
                    let off = THREAD_OFF + t * (64 << 10);
                    let iova = Iova(BASE + off as u64);
                    let host = copy.flat.at(off);
                    let mut storage = Buf::new(4096);
                    let buf = storage.bytes();
                    // Registers this thread's RCU reader before the clock starts.
                    copy.handle.read(iova, buf).unwrap();
                    barrier.wait();
                    let c0 = thread_cpu_time();
                    let t0 = Instant::now();
                    match reader {
                        Reader::Vdma => {
                            for _ in 0..n {
                                copy.handle.read(iova, buf).unwrap();
                                black_box(buf.as_mut_ptr());
                            }
                        }
                        Reader::Memcpy => {
                            for _ in 0..n {
                                // SAFETY: 4 KiB inside the flat mapping into a private buffer.
                                unsafe {
                                    std::ptr::copy_nonoverlapping(
                                        black_box(host),
                                        buf.as_mut_ptr(),
                                        black_box(4096),
                                    )
                                };
                                black_box(buf.as_mut_ptr());
                            }
                        }
                    }
                    let t1 = Instant::now();
                    (t0, t1, thread_cpu_time() - c0)
                })
            })
            .collect();
        let results: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        let ops = mapper_ops.load(Ordering::Relaxed) - ops_before;
        stop.store(true, Ordering::Relaxed);
        let start = results.iter().map(|r| r.0).min().unwrap();
        let end = results.iter().map(|r| r.1).max().unwrap();
        let wall = end - start;
        stats.reads += iters;
        stats.wall += wall;
        stats.reader_cpu += results.iter().map(|r| r.2).sum::<Duration>();
        stats.mapper_ops += ops;
        if let Some(m) = mapper_thread {
            stats.mapper_cpu += m.join().unwrap();
        }
        wall
    })
}

fn threads_group(c: &mut Criterion, fx: &Fixtures, record: bool) {
    let mut g = c.benchmark_group("threads");
    g.warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_millis(2500))
        .sample_size(30)
        .throughput(Throughput::Bytes(4096));
    let all = Mutex::new(BTreeMap::<String, ThreadStats>::new());
    let cases = [
        ("memcpy", Reader::Memcpy, Mapper::None),
        ("vdma", Reader::Vdma, Mapper::None),
        ("vdma+map_unmap", Reader::Vdma, Mapper::FlatOut),
    ];
    for threads in [1usize, 2] {
        for (name, reader, mapper) in cases {
            bench_threads(&mut g, fx, &all, name, threads, reader, mapper);
        }
    }
    // The reader next to mappers at set rates (what a VMM does is far below flat out): how the
    // cost grows with the rate.
    let paced = [
        ("vdma+map_unmap@10k", Mapper::Paced(10_000)),
        ("vdma+map_unmap@100k", Mapper::Paced(100_000)),
    ];
    for (name, mapper) in paced {
        bench_threads(&mut g, fx, &all, name, 1, Reader::Vdma, mapper);
    }
    g.finish();
    let all = all.into_inner().unwrap();
    // Only a run of the whole group replaces the file (a filtered or profiling run would leave
    // it with a few entries or none).
    if record && all.len() == 2 * cases.len() + paced.len() {
        write_thread_stats(&all);
    }
}

fn bench_threads(
    g: &mut BenchmarkGroup<'_, WallTime>,
    fx: &Fixtures,
    all: &Mutex<BTreeMap<String, ThreadStats>>,
    name: &str,
    threads: usize,
    reader: Reader,
    mapper: Mapper,
) {
    g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
        let copy = fx.copy();
        let mut all = all.lock().unwrap();
        let stats = all.entry(format!("{name}/{threads}")).or_default();
        b.iter_custom(|iters| run_threads(copy, threads, iters, reader, mapper, stats))
    });
}

/// Where criterion writes (`$CARGO_TARGET_DIR/criterion`, else `target/criterion` next to the
/// bench binary's `target/<profile>/deps/`).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("criterion")
}

fn write_thread_stats(all: &BTreeMap<String, ThreadStats>) {
    let mut out = String::from("{\n");
    for (i, (k, s)) in all.iter().enumerate() {
        out += &format!(
            "  \"{k}\": {{\"reads\": {}, \"wall_ns\": {}, \"reader_cpu_ns\": {}, \
             \"mapper_ops\": {}, \"mapper_cpu_ns\": {}}}{}\n",
            s.reads,
            s.wall.as_nanos(),
            s.reader_cpu.as_nanos(),
            s.mapper_ops,
            s.mapper_cpu.as_nanos(),
            if i + 1 < all.len() { "," } else { "" }
        );
    }
    out += "}\n";
    let dir = criterion_dir().join("threads");
    let path = dir.join("vdma-thread-stats.json");
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, out)) {
        eprintln!("could not write {}: {e}", path.display());
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    // Criterion's rule: without `--bench` (cargo test) or with `--test`, run each benchmark once.
    let test_mode = has("--test") || !has("--bench");

    let mut c = Criterion::default()
        .nresamples(20_000)
        .without_plots()
        .configure_from_args();

    // The single-thread groups run on one CPU: the last one, away from CPU 0's interrupts.
    let cpus = cpus();
    set_affinity(&[cpus[cpus.len() - 1]]);
    eprintln!(
        "CPUs: {cpus:?}; single-thread groups pinned to CPU {}",
        cpus[cpus.len() - 1]
    );

    let fx = Fixtures {
        prefault: !test_mode,
        copy: OnceCell::new(),
        lookups: Default::default(),
    };
    copy_group(&mut c, &fx, "copy_hot_read", Dir::Read, false);
    copy_group(&mut c, &fx, "copy_hot_write", Dir::Write, false);
    copy_group(&mut c, &fx, "copy_sweep_read", Dir::Read, true);
    copy_group(&mut c, &fx, "copy_sweep_write", Dir::Write, true);
    routine_group(&mut c, &fx);
    lookup_groups(&mut c, &fx);
    threads_group(&mut c, &fx, !test_mode);

    c.final_summary();
}
