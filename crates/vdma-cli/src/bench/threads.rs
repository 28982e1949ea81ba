//! Threads: 4 KiB hot reads by 1 and by 2 reader threads, each pinned to its own CPU and
//! reading its own address, memcpy and vdma; and vdma again with a third thread mapping and
//! unmapping other ranges of the same address space the whole time. The time of a batch runs
//! from the first reader's start to the last reader's end (thread start-up is outside it); the
//! figure is that time per read, over all readers.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vdma::{Backing, Iova, Prot};

use super::buffer::AlignedBuf;
use super::guest::{vdma_err, Guest, BASE};
use super::raw;
use super::timing::Contender;
use super::BenchError;

/// Offset in the memfd of the readers' addresses (one 64 KiB slot per reader).
const THREAD_OFF: usize = 64 << 20;
/// Where the mapper maps and unmaps.
const MAPPER_BASE: u64 = 0x80_0000_0000;
/// The mapper maps this many ranges of `MAPPER_SIZE`, then unmaps them, again and again.
const MAPPER_RANGES: u64 = 16;
const MAPPER_SIZE: u64 = 64 << 10;
/// File offset of the mapper's ranges (away from everything the readers touch).
const MAPPER_FILE_OFF: u64 = 192 << 20;
/// The read size.
pub(crate) const READ: usize = 4096;

#[derive(Clone, Copy, PartialEq)]
enum Reader {
    Memcpy,
    Vdma,
}

/// What the mapper threads did, per contender: map and unmap calls, and the wall time they ran
/// (every batch, calibration and warm-up included).
#[derive(Debug, Default)]
pub(crate) struct MapperStats(Mutex<BTreeMap<String, (u64, Duration)>>);

impl MapperStats {
    fn add(&self, name: &str, calls: u64, took: Duration) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = all.entry(name.to_string()).or_default();
        entry.0 += calls;
        entry.1 += took;
    }

    /// One line per contender with a mapper: its map + unmap calls per second.
    pub(crate) fn notes(&self) -> Vec<String> {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.iter()
            .filter(|(_, (_, took))| !took.is_zero())
            .map(|(name, (calls, took))| {
                format!(
                    "{name}: the mapper made {:.0} map + unmap calls per second",
                    *calls as f64 / took.as_secs_f64()
                )
            })
            .collect()
    }
}

/// The contenders: memcpy, vdma and vdma with a mapper, with 1 and 2 readers. Reader `t` runs
/// on `cpus[(first + t) % cpus.len()]`; the mapper on the CPUs no reader uses, or on all. The
/// mappers' work is counted in `stats`.
pub(crate) fn contenders<'f>(
    guest: &'f Guest,
    cpus: &[usize],
    first: usize,
    stats: &'f MapperStats,
) -> Vec<Contender<'f>> {
    let mut out = Vec::new();
    for (kind, reader, mapper) in [
        ("memcpy", Reader::Memcpy, false),
        ("vdma", Reader::Vdma, false),
        ("vdma + mapper", Reader::Vdma, true),
    ] {
        for threads in [1usize, 2] {
            let readers: Vec<usize> = (0..threads)
                .map(|t| cpus[(first + t) % cpus.len()])
                .collect();
            let mut mapper_cpus: Vec<usize> = cpus
                .iter()
                .copied()
                .filter(|c| !readers.contains(c))
                .collect();
            if mapper_cpus.is_empty() {
                mapper_cpus = cpus.to_vec();
            }
            let name = format!("{kind}, {}", threads_label(threads));
            let key = name.clone();
            out.push(Contender::new(name, move |iters| {
                let mapper = mapper.then_some(&mapper_cpus[..]);
                let (took, calls) = run(guest, &readers, iters, reader, mapper)?;
                if let Some((calls, ran)) = calls {
                    stats.add(&key, calls, ran);
                }
                Ok(took)
            }));
        }
    }
    out
}

/// `1 thread`, `2 threads`.
pub(crate) fn threads_label(n: usize) -> String {
    if n == 1 {
        "1 thread".into()
    } else {
        format!("{n} threads")
    }
}

/// One batch: `iters` reads split over one reader per entry of `readers` (its CPU), with a
/// mapper on `mapper` if given. Returns the wall time from the first reader's start to the
/// last one's end, and what the mapper did (calls, and how long it ran).
fn run(
    guest: &Guest,
    readers: &[usize],
    iters: u64,
    reader: Reader,
    mapper: Option<&[usize]>,
) -> Result<(Duration, Option<(u64, Duration)>), BenchError> {
    let stop = AtomicBool::new(false);
    let n = readers.len() as u64;
    let barrier = Barrier::new(readers.len() + usize::from(mapper.is_some()));
    std::thread::scope(|s| {
        let mapper_thread = mapper.map(|cpus| {
            let (stop, barrier) = (&stop, &barrier);
            s.spawn(move || {
                let _ = raw::set_affinity(cpus);
                barrier.wait();
                map_unmap(guest, stop)
            })
        });
        let threads: Vec<_> = readers
            .iter()
            .enumerate()
            .map(|(t, &cpu)| {
                let count = iters / n + u64::from((t as u64) < iters % n);
                let barrier = &barrier;
                s.spawn(move || read_loop(guest, t, cpu, count, reader, barrier))
            })
            .collect();
        let mut spans = Vec::new();
        let mut failure = None;
        for t in threads {
            match t.join() {
                Ok(Ok(span)) => spans.push(span),
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(panicked("reader")),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut mapped = None;
        if let Some(m) = mapper_thread {
            match m.join() {
                Ok(Ok(done)) => mapped = Some(done),
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(panicked("mapper")),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let start = spans.iter().map(|s| s.0).min();
        let end = spans.iter().map(|s| s.1).max();
        match (start, end) {
            (Some(start), Some(end)) => Ok((end.saturating_duration_since(start), mapped)),
            _ => Err(panicked("readers")),
        }
    })
}

fn panicked(who: &str) -> BenchError {
    BenchError::Check {
        what: "threads".into(),
        reason: format!("a {who} thread panicked"),
    }
}

/// A reader: pinned to `cpu`, `count` hot 4 KiB reads at its own address.
fn read_loop(
    guest: &Guest,
    t: usize,
    cpu: usize,
    count: u64,
    reader: Reader,
    barrier: &Barrier,
) -> Result<(Instant, Instant), BenchError> {
    let pinned = raw::set_affinity(&[cpu]);
    let off = THREAD_OFF + t * (64 << 10);
    let iova = Iova(BASE + off as u64);
    let mut storage = AlignedBuf::new(READ, 0x44);
    let buf = storage.bytes_mut();
    // Registers this thread as a reader of the address space before the clock starts.
    let first = guest.dev.read(iova, buf).map_err(vdma_err("threads: read"));
    barrier.wait();
    pinned.map_err(|source| BenchError::Io {
        what: format!("pin a reader to CPU {cpu}"),
        source,
    })?;
    first?;
    let t0 = Instant::now();
    match reader {
        Reader::Vdma => {
            for _ in 0..count {
                guest
                    .dev
                    .read(iova, buf)
                    .map_err(vdma_err("threads: read"))?;
                black_box(buf.as_mut_ptr());
            }
        }
        Reader::Memcpy => {
            for _ in 0..count {
                guest.flat.read(off, buf);
                black_box(buf.as_mut_ptr());
            }
        }
    }
    Ok((t0, Instant::now()))
}

/// The mapper: maps 16 ranges of 64 KiB, unmaps them, again, until `stop`. Returns its calls
/// and how long it ran.
fn map_unmap(guest: &Guest, stop: &AtomicBool) -> Result<(u64, Duration), BenchError> {
    let t0 = Instant::now();
    let mut calls = 0;
    while !stop.load(Ordering::Relaxed) {
        for j in 0..MAPPER_RANGES {
            guest
                .space
                .map(
                    Iova(MAPPER_BASE + j * MAPPER_SIZE),
                    MAPPER_SIZE,
                    Backing::file(&guest.file, MAPPER_FILE_OFF + j * MAPPER_SIZE),
                    Prot::READ_WRITE,
                )
                .map_err(vdma_err("mapper: map"))?;
        }
        for j in 0..MAPPER_RANGES {
            guest
                .space
                .unmap(Iova(MAPPER_BASE + j * MAPPER_SIZE), MAPPER_SIZE)
                .map_err(vdma_err("mapper: unmap"))?;
        }
        calls += 2 * MAPPER_RANGES;
    }
    Ok((calls, t0.elapsed()))
}
