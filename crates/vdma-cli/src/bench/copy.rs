//! The copy contenders: one transfer of a given size at the same address, again and again:
//! memcpy through the flat mapping (the limit), vm-memory's `read_slice`/`write_slice`, vdma's
//! copy routine alone over the flat mapping (`vdma-copy`: no address space, no lookup), and
//! vdma's `dma_rw` on a device handle over each kind of memory: the memfd (a shared file
//! mapping), another process's memory (`process_vm_readv/writev`) and memory a vfio-user client
//! serves through DMA_READ/DMA_WRITE messages.

use std::hint::black_box;

use vdma::{DeviceHandle, Direction, Iova};
use vm_memory::{Bytes, GuestAddress};

use super::buffer::AlignedBuf;
use super::guest::{vdma_err, Guest, BASE, HOT_OFF};
use super::timing::Contender;
use super::vfio_user::{Session, MSG_BASE};
use super::BenchError;

/// Names of the copy contenders, in report (and plot) order.
pub(crate) const MEMCPY: &str = "memcpy";
/// vm-memory.
pub(crate) const VM_MEMORY: &str = "vm-memory";
/// vdma's copy routine alone (a `HostRegion` over the flat mapping, no address space).
pub(crate) const VDMA_COPY: &str = "vdma-copy";
/// vdma over the memfd.
pub(crate) const VDMA_FD: &str = "vdma fd";
/// vdma over another process's memory.
pub(crate) const VDMA_PROCESS: &str = "vdma process";
/// vdma over message-backed memory.
pub(crate) const VDMA_MESSAGES: &str = "vdma messages";

/// The copy contenders for transfers of `size` bytes in `direction`: memcpy, vm-memory and
/// vdma over the memfd always; vdma over the peer's memory (mapped at `peer_iova`) and over
/// the session's message-backed memory when they are there.
pub(crate) fn contenders<'f>(
    guest: &'f Guest,
    peer_iova: Option<u64>,
    session: Option<&'f Session>,
    size: usize,
    direction: Direction,
) -> Result<Vec<Contender<'f>>, BenchError> {
    let write = direction == Direction::Write;
    let mut out = Vec::new();

    let mut buf = AlignedBuf::new(size, 0x11);
    out.push(Contender::looped(MEMCPY, move || {
        if write {
            guest.flat.write(HOT_OFF, buf.bytes());
        } else {
            guest.flat.read(HOT_OFF, buf.bytes_mut());
        }
        black_box(buf.bytes_mut().as_mut_ptr());
        Ok(())
    }));

    let mut buf = AlignedBuf::new(size, 0x22);
    let addr = GuestAddress(BASE + HOT_OFF as u64);
    out.push(Contender::looped(VM_MEMORY, move || {
        let r = if write {
            guest.vm.write_slice(buf.bytes(), addr)
        } else {
            guest.vm.read_slice(buf.bytes_mut(), addr)
        };
        r.map_err(|e| BenchError::VmMemory(e.to_string()))?;
        black_box(buf.bytes_mut().as_mut_ptr());
        Ok(())
    }));

    let mut buf = AlignedBuf::new(size, 0x44);
    let region = guest.flat.region();
    out.push(Contender::looped(VDMA_COPY, move || {
        let ok = if write {
            region.write(HOT_OFF as u64, buf.bytes())
        } else {
            region.read(HOT_OFF as u64, buf.bytes_mut())
        };
        if !ok {
            return Err(BenchError::Check {
                what: VDMA_COPY.into(),
                reason: format!("the copy at {HOT_OFF:#x} failed"),
            });
        }
        black_box(buf.bytes_mut().as_mut_ptr());
        Ok(())
    }));

    out.push(vdma(
        VDMA_FD,
        &guest.dev,
        BASE + HOT_OFF as u64,
        size,
        direction,
    ));
    if let Some(iova) = peer_iova {
        out.push(vdma(VDMA_PROCESS, &guest.dev, iova, size, direction));
    }
    if let Some(session) = session {
        out.push(vdma(
            VDMA_MESSAGES,
            session.dev()?,
            MSG_BASE,
            size,
            direction,
        ));
    }
    Ok(out)
}

/// `dma_rw` of `size` bytes at `iova` through `dev`.
fn vdma<'f>(
    name: &str,
    dev: &'f DeviceHandle,
    iova: u64,
    size: usize,
    direction: Direction,
) -> Contender<'f> {
    let mut buf = AlignedBuf::new(size, 0x33);
    let what = format!("{name}: dma_rw");
    Contender::looped(name, move || {
        dev.dma_rw(Iova(iova), buf.bytes_mut(), direction)
            .map_err(vdma_err(&what))?;
        black_box(buf.bytes_mut().as_mut_ptr());
        Ok(())
    })
}
