//! [`PciFunction`]: what a device author implements for [`crate::pci::PciDevice`].

use vdma::{DeviceHandle, Iova};

use crate::server::{DeviceError, RegionMmap};

/// The device-specific part of a PCI function: its BARs and what it does with DMA.
///
/// [`crate::pci::PciDevice`] calls these on the server's handler thread, one client command at
/// a time; the function may run threads of its own (state behind its own locks).
pub trait PciFunction: Send + Sync + 'static {
    /// Reads `buf.len()` bytes at `offset` of BAR `bar` (checked to lie inside the BAR, and
    /// outside the MSI-X table and PBA).
    fn bar_read(&self, bar: u8, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError>;

    /// Writes `data` at `offset` of BAR `bar` (checked as for [`PciFunction::bar_read`]).
    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<(), DeviceError>;

    /// Resets the function's own state (DEVICE_RESET or a function-level reset); config space
    /// and interrupts are reset by [`crate::pci::PciDevice`] right after this returns, which
    /// clears what an interrupt raised before then recorded (pending bits, INTx level); a
    /// signal already sent to an eventfd is not taken back. After it returns the function
    /// must raise no interrupt that belongs to the time before the reset.
    fn reset(&self) -> Result<(), DeviceError>;

    /// A client connected: the DMA handle on its address space, valid until
    /// [`PciFunction::disconnect`].
    fn connect(&self, dma: DeviceHandle);

    /// The client is gone: drop the handle and every pin and segment. Its eventfds are gone
    /// before this is called (an interrupt raised meanwhile is only recorded), and as with
    /// [`PciFunction::reset`] config space and interrupts are reset right after it returns; the
    /// function must raise nothing after it returns.
    fn disconnect(&self);

    /// Pins or segments hold `[iova, iova + size)`, which the client is unmapping: give them
    /// back. Default: nothing (for functions that never pin).
    fn dma_unmapped(&self, iova: Iova, size: u64) {
        let _ = (iova, size);
    }

    /// A file the client may mmap for BAR `bar`. Default: none (every access is a message).
    fn bar_mmap(&self, bar: u8) -> Option<RegionMmap> {
        let _ = bar;
        None
    }
}
