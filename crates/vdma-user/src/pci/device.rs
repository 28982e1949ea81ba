//! [`PciDevice`]: a [`PciFunction`] served as a vfio-user PCI device.

use std::sync::Arc;

use vdma::{DeviceHandle, Iova};

use super::bar_mmap::exclude_msix;
use super::config_space::CONFIG_SIZE;
use super::state::Shared;
use super::{Interrupts, PciFunction, PciLayout};
use crate::protocol::{
    DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE,
    IRQ_INFO_NORESIZE, PCI_ERR_IRQ_INDEX, PCI_INTX_IRQ_INDEX, PCI_MSIX_IRQ_INDEX,
    PCI_MSI_IRQ_INDEX, PCI_REQ_IRQ_INDEX, REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE,
};
use crate::server::{
    Device, DeviceDescription, DeviceError, IrqDescription, IrqRequest, RegionDescription,
};

/// Region index of the expansion ROM (vfio PCI numbering; BARs are 0 to 5).
pub const ROM_REGION: u32 = 6;
/// Region index of config space.
pub const CONFIG_REGION: u32 = 7;
/// Region index of VGA.
pub const VGA_REGION: u32 = 8;
/// Number of regions of a PCI device.
pub const NUM_REGIONS: u32 = 9;
/// Number of interrupt types of a PCI device (INTx, MSI, MSI-X, ERR, REQ).
pub const NUM_IRQS: u32 = 5;

/// Where an access to the MSI-X BAR lands.
enum BarPart {
    /// The vector table, at this offset in it.
    Table(usize),
    /// The PBA, at this offset in it.
    Pba(usize),
    /// The function's registers.
    Function,
}

/// A PCI function with its config space and interrupts: implements
/// [`crate::server::Device`].
pub struct PciDevice<F> {
    function: F,
    layout: PciLayout,
    shared: Arc<Shared>,
}

impl<F> std::fmt::Debug for PciDevice<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciDevice")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl<F: PciFunction> PciDevice<F> {
    /// Builds the device: `make` gets the function's [`Interrupts`] handle. Fails with
    /// `DeviceError::Invalid` when the layout is inconsistent: a BAR size that is not a power
    /// of two (memory: 16 bytes to 2 GiB for 32-bit, to 2^63 for 64-bit; I/O: 4 to 256), a
    /// 64-bit BAR in slot 5 or with its upper slot not `None`, MSI vectors other than 1, 2,
    /// 4, 8, 16, 32, MSI-X vectors outside 1 to 2048, an MSI-X BAR that is absent or I/O, a
    /// table or PBA not 8-byte aligned, past the end of the BAR, or overlapping each other.
    pub fn new(
        layout: PciLayout,
        make: impl FnOnce(Interrupts) -> F,
    ) -> Result<PciDevice<F>, DeviceError> {
        layout.validate().map_err(DeviceError::Invalid)?;
        let shared = Arc::new(Shared::new(&layout));
        let function = make(Interrupts::new(shared.clone()));
        Ok(PciDevice {
            function,
            layout,
            shared,
        })
    }

    /// The function.
    pub fn function(&self) -> &F {
        &self.function
    }

    /// The layout the device was built from.
    pub fn layout(&self) -> &PciLayout {
        &self.layout
    }

    /// Another handle on the function's interrupts.
    pub fn interrupts(&self) -> Interrupts {
        Interrupts::new(self.shared.clone())
    }

    /// Reads config space as the client does (region 7): any length within the 256 bytes,
    /// EINVAL past them.
    pub fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let offset = config_range(offset, buf.len())?;
        self.shared.lock().config_read(offset, buf);
        Ok(())
    }

    /// Writes config space as the client does (region 7): read-only bits stay, write-1-to-clear
    /// bits clear, BARs keep their size and type bits; EINVAL past the 256 bytes.
    pub fn config_write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let offset = config_range(offset, data.len())?;
        self.shared
            .with(|state, out| state.config_write(offset, data, out));
        Ok(())
    }

    /// Sets error bits of the status register (master data parity error 0x0100, signaled
    /// target abort 0x0800, received target abort 0x1000, received master abort 0x2000,
    /// signaled system error 0x4000, detected parity error 0x8000; other bits are ignored),
    /// e.g. received master abort when the function's DMA failed. The client clears them by
    /// writing 1.
    pub fn report_status(&self, bits: u16) {
        self.shared.lock().config.report_status(bits);
    }

    /// Reports an unrecoverable device error: signals the error (ERR) eventfd, if the client
    /// gave one (QEMU then stops the VM). Returns whether one was signalled.
    pub fn report_fatal_error(&self) -> bool {
        self.shared.with(|state, out| {
            out.extend(state.err.clone());
            !out.is_empty()
        })
    }

    /// Asks the VMM to release the device: signals the device-request (REQ) eventfd, if the
    /// client gave one (QEMU then unplugs the device). Returns whether one was signalled.
    pub fn request_release(&self) -> bool {
        self.shared.with(|state, out| {
            out.extend(state.req.clone());
            !out.is_empty()
        })
    }

    /// The BAR `bar` and the part of it `[offset, offset + len)` is in: EINVAL for an absent
    /// BAR, an access past its end, and an access that straddles the MSI-X table or PBA and
    /// anything else (an access is the table's, the PBA's or the function's, never split).
    fn bar_part(&self, bar: u32, offset: u64, len: usize) -> Result<BarPart, DeviceError> {
        let size = usize::try_from(bar)
            .ok()
            .and_then(|slot| self.layout.bars.get(slot).copied().flatten())
            .ok_or(DeviceError::Invalid("no such BAR"))?
            .size;
        let end = offset
            .checked_add(len as u64)
            .filter(|&end| end <= size)
            .ok_or(DeviceError::Invalid("access past the end of the BAR"))?;
        let Some(msix) = self.layout.msix.filter(|m| u32::from(m.bar) == bar) else {
            return Ok(BarPart::Function);
        };
        for (range, part) in [
            (msix.table_range(), BarPart::Table as fn(usize) -> BarPart),
            (msix.pba_range(), BarPart::Pba),
        ] {
            let (start, stop) = range;
            if offset >= start && end <= stop {
                return Ok(part((offset - start) as usize));
            }
            if offset < stop && start < end {
                return Err(DeviceError::Invalid(
                    "access straddles the MSI-X table or PBA",
                ));
            }
        }
        Ok(BarPart::Function)
    }

    fn bar_read(&self, bar: u32, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        match self.bar_part(bar, offset, buf.len())? {
            BarPart::Table(at) => {
                let state = self.shared.lock();
                if let Some(table) = &state.msix {
                    table.read_table(at, buf);
                }
                Ok(())
            }
            BarPart::Pba(at) => {
                let state = self.shared.lock();
                if let Some(table) = &state.msix {
                    table.read_pba(at, buf);
                }
                Ok(())
            }
            BarPart::Function => self.function.bar_read(bar as u8, offset, buf),
        }
    }

    fn bar_write(&self, bar: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        match self.bar_part(bar, offset, data.len())? {
            BarPart::Table(at) => {
                self.shared
                    .with(|state, out| state.table_write(at, data, out));
                Ok(())
            }
            // The PBA is read-only: writes are dropped.
            BarPart::Pba(_) => Ok(()),
            BarPart::Function => self.function.bar_write(bar as u8, offset, data),
        }
    }
}

/// The offset of a config-space access of `len` bytes at `offset`, if it lies inside.
fn config_range(offset: u64, len: usize) -> Result<usize, DeviceError> {
    usize::try_from(offset)
        .ok()
        .filter(|&at| at.checked_add(len).is_some_and(|end| end <= CONFIG_SIZE))
        .ok_or(DeviceError::Invalid("access past the end of config space"))
}

impl<F: PciFunction> Device for PciDevice<F> {
    fn description(&self) -> DeviceDescription {
        DeviceDescription {
            flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
            num_regions: NUM_REGIONS,
            num_irqs: NUM_IRQS,
        }
    }

    fn region(&self, index: u32) -> Result<RegionDescription, DeviceError> {
        let rw = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
        match index {
            0..=5 => {
                let slot = index as usize;
                let Some(bar) = self.layout.bars[slot] else {
                    return Ok(RegionDescription::default());
                };
                let mut mmap = self.function.bar_mmap(index as u8);
                if let Some(msix) = self.layout.msix.filter(|m| usize::from(m.bar) == slot) {
                    mmap = mmap.and_then(|m| exclude_msix(m, bar.size, &msix));
                }
                Ok(RegionDescription {
                    size: bar.size,
                    flags: rw,
                    mmap,
                    region_type: None,
                })
            }
            CONFIG_REGION => Ok(RegionDescription {
                size: CONFIG_SIZE as u64,
                flags: rw,
                ..RegionDescription::default()
            }),
            ROM_REGION | VGA_REGION => Ok(RegionDescription::default()),
            _ => Err(DeviceError::Invalid("no such region")),
        }
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        match index {
            0..=5 => self.bar_read(index, offset, buf),
            CONFIG_REGION => self.config_read(offset, buf),
            _ => Err(DeviceError::Invalid("the region has no bytes")),
        }
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        match index {
            0..=5 => self.bar_write(index, offset, data),
            CONFIG_REGION => self.config_write(offset, data),
            _ => Err(DeviceError::Invalid("the region has no bytes")),
        }
    }

    fn irq_info(&self, index: u32) -> Result<IrqDescription, DeviceError> {
        let state = self.shared.lock();
        let (count, flags) = match index {
            PCI_INTX_IRQ_INDEX => (
                u32::from(self.layout.intx),
                IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED,
            ),
            PCI_MSI_IRQ_INDEX => (state.msi_vectors, IRQ_INFO_EVENTFD | IRQ_INFO_NORESIZE),
            // Vectors can be given eventfds one by one while MSI-X is enabled (no NORESIZE).
            PCI_MSIX_IRQ_INDEX => (
                self.layout.msix.map_or(0, |m| u32::from(m.vectors)),
                IRQ_INFO_EVENTFD,
            ),
            // One vector (QEMU warns without it), signalled by report_fatal_error.
            PCI_ERR_IRQ_INDEX => (1, IRQ_INFO_EVENTFD | IRQ_INFO_NORESIZE),
            PCI_REQ_IRQ_INDEX => (1, IRQ_INFO_EVENTFD | IRQ_INFO_NORESIZE),
            _ => return Err(DeviceError::Invalid("no such interrupt type")),
        };
        Ok(IrqDescription { count, flags })
    }

    fn set_irqs(&self, request: IrqRequest<'_>) -> Result<(), DeviceError> {
        self.shared.with(|state, out| state.set_irqs(request, out))
    }

    fn reset(&self) -> Result<(), DeviceError> {
        // The function first: until its reset returns it may still raise an interrupt (a
        // command completing), which the reset of config space and interrupts then wipes.
        let result = self.function.reset();
        self.shared.lock().reset();
        result
    }

    fn connect(&self, dma: DeviceHandle) {
        self.function.connect(dma);
    }

    fn disconnect(&self) {
        // The departing client's eventfds go first (the server has usually disabled its
        // interrupts with SET_IRQS already), then the function stops: an interrupt it raises
        // meanwhile is only recorded, and the reset below wipes it, so the next client finds
        // a powered-on device.
        {
            let mut state = self.shared.lock();
            state.disable();
            state.req = None;
            state.err = None;
        }
        self.function.disconnect();
        self.shared.lock().reset();
    }

    fn dma_unmapped(&self, iova: Iova, size: u64) {
        self.function.dma_unmapped(iova, size);
    }
}
