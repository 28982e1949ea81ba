//! Pinning: `pin` + `unpin` of the same n pages of a 16 MiB `OwnedMemory` mapping, again and
//! again, with `mlock` (the default: pages whose last pin goes stay locked, a bounded number,
//! and are unlocked lazily, so this is that steady state) and without.

use std::hint::black_box;
use std::sync::Arc;

use vdma::{Config, Container, DeviceHandle, Iova, OwnedMemory, Prot};

use super::guest::{space_with_device, vdma_err};
use super::timing::Contender;
use super::{BenchError, PAGE};

/// Size of the mapping.
const MEMORY: u64 = 16 << 20;
/// The first page pinned.
const PIN_AT: u64 = 0x20000;

/// Name of the default configuration's contender.
pub(crate) const MLOCK: &str = "vdma (mlock)";
/// Without mlock.
pub(crate) const NO_MLOCK: &str = "vdma (no mlock)";

/// The two address spaces.
pub(crate) struct Pins {
    spaces: Vec<(&'static str, Container, DeviceHandle)>,
}

impl Pins {
    /// One address space with `mlock` and one without, each with its memory mapped and
    /// touched; no locked-memory limit.
    pub(crate) fn new() -> Result<Pins, BenchError> {
        let mut spaces = Vec::new();
        for (name, mlock) in [(MLOCK, true), (NO_MLOCK, false)] {
            let config = Config {
                memlock_limit: Some(u64::MAX),
                mlock,
                ..Config::default()
            };
            let (space, dev) = space_with_device(config)?;
            let memory = OwnedMemory::new(MEMORY as usize).map_err(vdma_err("memory"))?;
            space
                .map(
                    Iova(0),
                    MEMORY,
                    vdma::Backing::memory(Arc::new(memory), 0),
                    Prot::READ_WRITE,
                )
                .map_err(vdma_err("map"))?;
            for off in (0..MEMORY).step_by(PAGE) {
                dev.write(Iova(off), &[1]).map_err(vdma_err("prefault"))?;
            }
            dev.set_unmap_callback(|_, _| {});
            spaces.push((name, space, dev));
        }
        Ok(Pins { spaces })
    }

    /// The contenders for `pages` pages: pin (read-write) then unpin; every pin is checked to
    /// give one host address per page.
    pub(crate) fn contenders(&self, pages: usize) -> Vec<Contender<'_>> {
        self.spaces
            .iter()
            .map(|(name, _, dev)| {
                Contender::looped(*name, move || {
                    let hosts = dev
                        .pin(Iova(PIN_AT), pages, Prot::READ_WRITE)
                        .map_err(vdma_err("pin"))?;
                    if hosts.len() != pages {
                        return Err(BenchError::Check {
                            what: "pin".into(),
                            reason: format!("{} host pages for {pages}", hosts.len()),
                        });
                    }
                    black_box(&hosts);
                    dev.unpin(Iova(PIN_AT), pages).map_err(vdma_err("unpin"))
                })
            })
            .collect()
    }
}
