//! The sample `dma-engine` device (spec: `shared/spec/dma-engine.md`): a PCI function whose
//! BAR0 registers make it copy, fill or checksum guest memory through the core's `dma_rw`,
//! on its own worker thread, and interrupt when done.
//!
//! [`dma_engine`] builds it as a [`PciDevice`], which implements
//! [`vdma_user::server::Device`]; wrap it in an `Arc` and give it to
//! [`vdma_user::server::Server::bind`].
//!
//! # Identity and BARs
//!
//! Class 0x088000, revision 1, subsystem ids equal to vendor/device ids, INTA, MSI with one
//! vector, MSI-X with one vector. BAR0: 4 KiB of 32-bit non-prefetchable registers
//! ([`registers`]). BAR1: 4 KiB of 32-bit memory holding only the MSI-X table (offset 0) and
//! PBA (offset 0x800), so that every undefined BAR0 offset reads 0; the rest of BAR1 reads 0
//! and ignores writes.
//!
//! # Behaviour the spec leaves open
//!
//! - Access sizes: reads of any size return the register bytes; 32-bit writes at 4-byte
//!   aligned offsets and 64-bit writes at 8-byte aligned offsets work; other writes are
//!   ignored ([`registers`]).
//! - CMD 0 is ignored; any other value than 1, 2, 3 runs a command that fails with EINVAL.
//! - Failed commands complete too: STATUS 3, ERRNO, IRQ_STATUS bit 0, COUNT + 1, interrupt.
//!   ERRNO is cleared when a command starts; RESULT changes only on a successful CRC32.
//! - A command with no client connected fails with ENODEV.
//! - Before it allocates its buffer a command checks its ranges (the source for COPY and
//!   CRC32, then the destination for COPY and FILL): an unmapped or unpermitted range fails
//!   with the core's errno (EINVAL, EPERM) ahead of any ENOMEM, and a COPY whose destination is
//!   bad fails before it reads a byte of its source (for memory without an fd: before any
//!   DMA_READ).
//! - IRQ_ENABLE holds bit 0 only; setting it does not raise for an earlier completion.
//! - Reset drops a command not yet started, waits for a running one to end and discards its
//!   completion, then clears every register ([`DmaEngine`] docs). A client's disconnect does
//!   the same after taking the DMA handle away.
//! - A reset or disconnect waits for a running command, which may be waiting for DMA_READ or
//!   DMA_WRITE replies: a client must keep answering those while it waits for the reset's
//!   reply (the vdma client and QEMU do; otherwise the server's reply timeout fails the
//!   command with ETIMEDOUT and the reset then completes).
//! - DMA_UNMAP does not wait for a command: the core makes an unmap wait for any `dma_rw` in
//!   flight, and a command writes its destination with one `dma_rw`, so a command racing an
//!   unmap of its destination either wrote all of it before the unmap returned (STATUS 2) or
//!   fails with EINVAL having written nothing.

mod command;
pub mod registers;
mod worker;

pub use command::CommandError;

use vdma::DeviceHandle;
use vdma_user::pci::{
    BarKind, Interrupts, MsixLayout, PciBar, PciDevice, PciFunction, PciIdentity, PciLayout,
};
use vdma_user::server::DeviceError;

use self::registers::{BAR0_SIZE, BAR1_SIZE, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET};
use self::worker::Engine;

/// The ids the device presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaEngineConfig {
    /// PCI vendor id (also the subsystem vendor id). Default 0x1234.
    pub vendor_id: u16,
    /// PCI device id (also the subsystem id). Default 0xd3a0.
    pub device_id: u16,
}

impl Default for DmaEngineConfig {
    fn default() -> Self {
        DmaEngineConfig {
            vendor_id: 0x1234,
            device_id: 0xd3a0,
        }
    }
}

/// The class code: other system peripheral.
pub const CLASS_CODE: u32 = 0x08_8000;
/// The revision id.
pub const REVISION: u8 = 1;

/// The PCI function as the spec describes it, with `config`'s ids.
pub fn layout(config: DmaEngineConfig) -> PciLayout {
    let memory32 = BarKind::Memory32 {
        prefetchable: false,
    };
    PciLayout {
        identity: PciIdentity {
            vendor_id: config.vendor_id,
            device_id: config.device_id,
            revision: REVISION,
            class_code: CLASS_CODE,
            subsystem_vendor_id: config.vendor_id,
            subsystem_id: config.device_id,
        },
        bars: [
            Some(PciBar {
                size: BAR0_SIZE,
                kind: memory32,
            }),
            Some(PciBar {
                size: BAR1_SIZE,
                kind: memory32,
            }),
            None,
            None,
            None,
            None,
        ],
        intx: true,
        msi_vectors: Some(1),
        msix: Some(MsixLayout {
            vectors: 1,
            bar: 1,
            table_offset: MSIX_TABLE_OFFSET,
            pba_offset: MSIX_PBA_OFFSET,
        }),
    }
}

/// The dma-engine as a PCI device, ready to serve. Fails if the worker thread cannot be
/// started (the system's errno) or the PCI layer refuses the layout.
pub fn dma_engine(config: DmaEngineConfig) -> Result<PciDevice<DmaEngine>, DeviceError> {
    let engine = Engine::start()?;
    // If `new` fails before calling the closure, dropping it stops the worker.
    PciDevice::new(layout(config), move |interrupts: Interrupts| {
        engine.set_interrupts(interrupts);
        DmaEngine { engine }
    })
}

/// The dma-engine's [`PciFunction`]: BAR0 registers and a worker thread.
///
/// Reset (DEVICE_RESET or function-level reset) drops a command written but not yet started,
/// waits for a running command to end (its bytes land or not as if no reset came, since a
/// `dma_rw` cannot stop halfway) and discards its completion (no register change, no
/// interrupt), then sets every register to its initial value. [`PciFunction::disconnect`]
/// takes the DMA handle away, then does the same reset, so that when it returns no DMA is in
/// flight, the handle is dropped, and the next client finds a device as after power-on (the PCI
/// layer does the same to config space and interrupts).
#[derive(Debug)]
pub struct DmaEngine {
    engine: Engine,
}

impl DmaEngine {
    /// Waits until no command is queued or running (for tests and orderly shutdown).
    pub fn wait_idle(&self) {
        self.engine.wait_idle();
    }
}

impl PciFunction for DmaEngine {
    fn bar_read(&self, bar: u8, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        match bar {
            0 => self.engine.read(offset, buf),
            _ => buf.fill(0),
        }
        Ok(())
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if bar == 0 {
            self.engine.write(offset, data);
        }
        Ok(())
    }

    fn reset(&self) -> Result<(), DeviceError> {
        self.engine.reset();
        Ok(())
    }

    fn connect(&self, dma: DeviceHandle) {
        self.engine.connect(dma);
    }

    fn disconnect(&self) {
        self.engine.disconnect();
    }
}

#[cfg(test)]
mod tests;
