//! Dirty tracking: what marking costs a write, and what a report costs.
//!
//! - Writes: 4 KiB hot writes through a device handle into `OwnedMemory`, in one address space
//!   without tracking and one with container-level tracking at 4 KiB pages. The page written
//!   is already dirty (the steady state between two reports of a live migration), so this is
//!   the check and the marking, not a first touch.
//! - Report: `dirty_report` (report + clear) of a large mapping with every page dirty, against
//!   a memcpy of as many bytes as its bitmap has. The mapping is backed by memory whose writes
//!   go nowhere (nothing is populated); before each timed report every page is dirtied again
//!   by 1 MiB writes through the device, untimed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdma::{Config, Container, DeviceHandle, Iova, Memory, OwnedMemory, Prot};

use super::buffer::AlignedBuf;
use super::cases::bitmap_bytes;
use super::guest::{space_with_device, vdma_err};
use super::timing::Contender;
use super::{BenchError, PAGE};

/// Size of each write case's memory.
const WRITE_MEMORY: u64 = 2 << 20;
/// Where the hot writes go.
const WRITE_AT: u64 = 0x10000;
/// How much each dirtying write covers.
const DIRTY_CHUNK: usize = 1 << 20;

/// Names of the contenders.
pub(crate) const TRACKING_OFF: &str = "tracking off";
/// Tracking on.
pub(crate) const TRACKING_ON: &str = "tracking on";
/// The bitmap memcpy.
pub(crate) const BITMAP_MEMCPY: &str = "memcpy of the bitmap";
/// The report.
pub(crate) const REPORT: &str = "vdma report + clear";

/// The address spaces of the write case.
pub(crate) struct Writes {
    off: (Container, DeviceHandle),
    on: (Container, DeviceHandle),
}

impl Writes {
    /// Two address spaces with 2 MiB of `OwnedMemory` each; tracking on in the second.
    pub(crate) fn new() -> Result<Writes, BenchError> {
        let make = |track: bool| -> Result<(Container, DeviceHandle), BenchError> {
            let (space, dev) = space_with_device(Config::default())?;
            let memory = OwnedMemory::new(WRITE_MEMORY as usize).map_err(vdma_err("memory"))?;
            space
                .map(
                    Iova(0),
                    WRITE_MEMORY,
                    vdma::Backing::memory(Arc::new(memory), 0),
                    Prot::READ_WRITE,
                )
                .map_err(vdma_err("map"))?;
            if track {
                space
                    .dirty_start(PAGE as u64)
                    .map_err(vdma_err("dirty_start"))?;
            }
            // Touch every page (and dirty it, when tracking).
            let page = vec![0x66u8; PAGE];
            for off in (0..WRITE_MEMORY).step_by(PAGE) {
                dev.write(Iova(off), &page).map_err(vdma_err("prefault"))?;
            }
            Ok((space, dev))
        };
        let writes = Writes {
            off: make(false)?,
            on: make(true)?,
        };
        // Tracking really is on: every page the prefault wrote is reported dirty. Then the
        // hot page is dirtied again, the steady state the case measures.
        let bitmap = writes
            .on
            .0
            .dirty_report(Iova(0), WRITE_MEMORY, PAGE as u64)
            .map_err(vdma_err("dirty_report"))?;
        let pages = WRITE_MEMORY / PAGE as u64;
        if bitmap.count() != pages {
            return Err(BenchError::Check {
                what: "dirty tracking".into(),
                reason: format!("{} of {pages} written pages reported dirty", bitmap.count()),
            });
        }
        writes
            .on
            .1
            .write(Iova(WRITE_AT), &[1])
            .map_err(vdma_err("write"))?;
        Ok(writes)
    }

    /// The contenders: 4 KiB writes without and with tracking.
    pub(crate) fn contenders(&self) -> Vec<Contender<'_>> {
        [(TRACKING_OFF, &self.off.1), (TRACKING_ON, &self.on.1)]
            .into_iter()
            .map(|(name, dev)| {
                let buf = AlignedBuf::new(PAGE, 0x77);
                Contender::looped(name, move || {
                    dev.write(Iova(WRITE_AT), buf.bytes())
                        .map_err(vdma_err("tracking: write"))
                })
            })
            .collect()
    }
}

/// Memory whose writes go nowhere and whose reads give zeroes: marks dirt without populating
/// anything.
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

/// The report case's address space: one mapping of `size` bytes of [`NullMemory`], tracked at
/// 4 KiB pages.
pub(crate) struct Report {
    size: u64,
    space: Container,
    dev: DeviceHandle,
}

impl Report {
    /// Maps `size` bytes and starts tracking.
    pub(crate) fn new(size: u64) -> Result<Report, BenchError> {
        let (space, dev) = space_with_device(Config::default())?;
        space
            .map(
                Iova(0),
                size,
                vdma::Backing::memory(Arc::new(NullMemory(size)), 0),
                Prot::READ_WRITE,
            )
            .map_err(vdma_err("map"))?;
        space
            .dirty_start(PAGE as u64)
            .map_err(vdma_err("dirty_start"))?;
        Ok(Report { size, space, dev })
    }

    /// Dirties every page (1 MiB writes through the device).
    fn dirty_all(&self, chunk: &[u8]) -> Result<(), BenchError> {
        for off in (0..self.size).step_by(chunk.len()) {
            self.dev
                .write(Iova(off), chunk)
                .map_err(vdma_err("dirty every page"))?;
        }
        Ok(())
    }

    /// The contenders: memcpy of the bitmap's size, and the report (each timed report after an
    /// untimed dirtying of every page; every report is checked to hold every page).
    pub(crate) fn contenders(&self) -> Vec<Contender<'_>> {
        let bytes = bitmap_bytes(self.size) as usize;
        let src = AlignedBuf::new(bytes, 0xff);
        let mut dst = AlignedBuf::new(bytes, 0);
        let memcpy = Contender::looped(BITMAP_MEMCPY, move || {
            dst.bytes_mut().copy_from_slice(black_box(src.bytes()));
            black_box(dst.bytes_mut().as_mut_ptr());
            Ok(())
        });
        let chunk = vec![0u8; DIRTY_CHUNK];
        let pages = self.size / PAGE as u64;
        let report = Contender::new(REPORT, move |iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                self.dirty_all(&chunk)?;
                let t0 = Instant::now();
                let bitmap = self
                    .space
                    .dirty_report(Iova(0), self.size, PAGE as u64)
                    .map_err(vdma_err("dirty_report"))?;
                timed += t0.elapsed();
                if bitmap.pages() != pages || bitmap.count() != pages {
                    return Err(BenchError::Check {
                        what: REPORT.into(),
                        reason: format!(
                            "{} of {} pages reported dirty, all were",
                            bitmap.count(),
                            pages
                        ),
                    });
                }
            }
            Ok(timed)
        });
        vec![memcpy, report]
    }
}
