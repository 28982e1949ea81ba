//! Guest memory as the single-process contenders see it: one memfd, reached by each through
//! its own host mapping made the way that contender does it (memcpy: one flat `MAP_SHARED`
//! mapping; vm-memory: `GuestMemoryMmap::from_ranges_with_files`; vdma: `Container::map` with
//! `Backing::file`). Every page of every mapping is touched before anything is measured.

use std::fs::File;
use std::sync::Arc;

use vdma::{Backing, Config, Container, DeviceHandle, DeviceId, GroupId, Iova, Prot};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

use super::raw::{self, Flat};
use super::{BenchError, PAGE};

/// Size of the memfd: room for 65,535 scattered 4 KiB lookup mappings.
pub(crate) const GUEST_SIZE: usize = 256 << 20;
/// IOVA (and guest address, for vm-memory) of the whole memfd.
pub(crate) const BASE: u64 = 0x1_0000_0000;
/// Offset in the memfd of the hot copies.
pub(crate) const HOT_OFF: usize = 128 << 20;

/// The memfd and its three views.
pub(crate) struct Guest {
    /// The memfd.
    pub(crate) file: File,
    /// memcpy's view.
    pub(crate) flat: Arc<Flat>,
    /// vm-memory's view (its own mapping of the file).
    pub(crate) vm: GuestMemoryMmap,
    /// vdma's address space: the memfd at [`BASE`] (and more, mapped by the cases).
    pub(crate) space: Container,
    /// A device handle on it.
    pub(crate) dev: DeviceHandle,
}

impl Guest {
    /// Makes the memfd, maps it three ways and touches every page of every mapping.
    pub(crate) fn new() -> Result<Guest, BenchError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| BenchError::Io { what, source }
        };
        let file = raw::memfd(c"vdma-bench", GUEST_SIZE as u64).map_err(io("memfd"))?;
        let flat = Arc::new(Flat::map(&file, GUEST_SIZE).map_err(io("mmap the memfd"))?);
        let dup = file.try_clone().map_err(io("dup the memfd"))?;
        let vm = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(BASE),
            GUEST_SIZE,
            Some(FileOffset::new(dup, 0)),
        )])
        .map_err(|e| BenchError::VmMemory(format!("map the memfd: {e}")))?;
        let (space, dev) = space_with_device(Config::default())?;
        space
            .map(
                Iova(BASE),
                GUEST_SIZE as u64,
                Backing::file(&file, 0),
                Prot::READ_WRITE,
            )
            .map_err(vdma_err("map the memfd"))?;
        let guest = Guest {
            file,
            flat,
            vm,
            space,
            dev,
        };
        guest.prefault()?;
        guest.check_views()?;
        Ok(guest)
    }

    /// Reads and writes back one byte of every page through vm-memory and vdma (the flat
    /// mapping did its own), so every page table entry is present and writable.
    fn prefault(&self) -> Result<(), BenchError> {
        for off in (0..GUEST_SIZE as u64).step_by(PAGE) {
            let addr = GuestAddress(BASE + off);
            let b: u8 = self
                .vm
                .read_obj(addr)
                .map_err(|e| BenchError::VmMemory(format!("prefault: {e}")))?;
            self.vm
                .write_obj(b, addr)
                .map_err(|e| BenchError::VmMemory(format!("prefault: {e}")))?;
            let mut byte = [0u8];
            self.dev
                .read(Iova(BASE + off), &mut byte)
                .and_then(|()| self.dev.write(Iova(BASE + off), &byte))
                .map_err(vdma_err("prefault"))?;
        }
        Ok(())
    }

    /// A pattern written through one view is what the other two read.
    fn check_views(&self) -> Result<(), BenchError> {
        let pattern: Vec<u8> = (0..256u32).map(|i| (i * 7 + 3) as u8).collect();
        self.flat.write(HOT_OFF, &pattern);
        let mut via_vm = vec![0u8; pattern.len()];
        self.vm
            .read_slice(&mut via_vm, GuestAddress(BASE + HOT_OFF as u64))
            .map_err(|e| BenchError::VmMemory(format!("read back: {e}")))?;
        let mut via_vdma = vec![0u8; pattern.len()];
        self.dev
            .read(Iova(BASE + HOT_OFF as u64), &mut via_vdma)
            .map_err(vdma_err("read back"))?;
        if via_vm != pattern || via_vdma != pattern {
            return Err(BenchError::Check {
                what: "guest memory".into(),
                reason: "the three views of the memfd disagree".into(),
            });
        }
        Ok(())
    }
}

/// A new address space with one group and one device, and the device's handle.
pub(crate) fn space_with_device(config: Config) -> Result<(Container, DeviceHandle), BenchError> {
    let space = Container::new(config).map_err(vdma_err("new container"))?;
    let id = DeviceId::new("bench");
    space
        .attach_group(GroupId(1))
        .and_then(|()| space.add_device(GroupId(1), id.clone()))
        .map_err(vdma_err("attach a device"))?;
    let dev = space
        .device_handle(&id)
        .map_err(vdma_err("device handle"))?;
    Ok((space, dev))
}

/// Maps a vdma error to a [`BenchError`] saying what was being done.
pub(crate) fn vdma_err(what: &str) -> impl FnOnce(vdma::Error) -> BenchError + '_ {
    move |source| BenchError::Vdma {
        what: what.to_string(),
        source,
    }
}
