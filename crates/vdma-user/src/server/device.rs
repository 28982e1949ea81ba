//! [`Device`]: what a device author implements to be served over vfio-user, and the small
//! descriptions it returns.

use std::io;
use std::os::fd::OwnedFd;

use vdma::{DeviceHandle, Iova};

pub use crate::protocol::IrqAction;
use crate::protocol::SparseMmapArea;

/// Why a device refused an operation. The error reply carries [`DeviceError::errno`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The request is not valid for this device (EINVAL).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The device does not support the request (ENOTSUP).
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// The device's DMA failed (the core's errno).
    #[error("DMA failed: {0}")]
    Dma(#[from] vdma::Error),
    /// A system call failed (its errno, EIO if it has none).
    #[error("I/O failed: {0}")]
    Io(#[from] io::Error),
    /// Any other errno.
    #[error("{reason} (errno {errno})")]
    Errno {
        /// The errno (positive).
        errno: i32,
        /// What went wrong.
        reason: &'static str,
    },
}

impl DeviceError {
    /// The errno this error maps to (positive, as in `errno.h`).
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::Invalid(_) => libc::EINVAL,
            DeviceError::NotSupported(_) => libc::ENOTSUP,
            DeviceError::Dma(e) => e.errno(),
            DeviceError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            DeviceError::Errno { errno, .. } => errno.abs(),
        }
    }
}

/// What DEVICE_GET_INFO reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceDescription {
    /// `DEVICE_FLAGS_RESET` | `DEVICE_FLAGS_PCI` (see [`crate::protocol`]).
    pub flags: u32,
    /// Number of regions, indexed `0..num_regions` (PCI: 9, the six BARs, ROM, config, VGA).
    pub num_regions: u32,
    /// Number of interrupt types, indexed `0..num_irqs` (PCI: 5, INTx, MSI, MSI-X, ERR, REQ).
    pub num_irqs: u32,
}

/// A file the client may mmap for (parts of) a region.
#[derive(Debug)]
pub struct RegionMmap {
    /// The file, sent with every region-info reply of the region (the server closes its copy
    /// after sending; give a duplicate, e.g. `OwnedFd::try_clone`).
    pub fd: OwnedFd,
    /// Offset of the region's first byte in the file.
    pub offset: u64,
    /// The parts of the region the client may mmap (offsets within the region); empty: the
    /// whole region.
    pub sparse: Vec<SparseMmapArea>,
}

/// What DEVICE_GET_REGION_INFO reports of one region.
#[derive(Debug, Default)]
pub struct RegionDescription {
    /// Size in bytes (0: the region is absent, e.g. an unused BAR).
    pub size: u64,
    /// `REGION_INFO_FLAG_READ` | `REGION_INFO_FLAG_WRITE` (see [`crate::protocol`]); the server
    /// sets `MMAP` itself when `mmap` is given and `CAPS` when there is a capability chain.
    pub flags: u32,
    /// The file behind the region, if the client may mmap it.
    pub mmap: Option<RegionMmap>,
    /// A device-specific region's `(type, subtype)` capability.
    pub region_type: Option<(u32, u32)>,
}

/// What DEVICE_GET_IRQ_INFO reports of one interrupt type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IrqDescription {
    /// Number of vectors (0: the type is not there).
    pub count: u32,
    /// `IRQ_INFO_EVENTFD` | `IRQ_INFO_MASKABLE` | ... (see [`crate::protocol`]).
    pub flags: u32,
}

/// The data of a DEVICE_SET_IRQS request, as the device gets it.
#[derive(Debug)]
pub enum IrqSetData<'a> {
    /// Act on every vector of the range. With count 0 and [`IrqAction::Trigger`]: disable the
    /// whole interrupt type (drop its eventfds).
    None,
    /// One byte per vector of the range: act where it is non-zero.
    Bool(&'a [u8]),
    /// One eventfd per vector of the range, to signal (trigger), or to watch (unmask through
    /// an fd); the device owns them now.
    EventFds(Vec<OwnedFd>),
    /// Take the eventfds of the range away (close them).
    ClearEventFds,
}

/// One DEVICE_SET_IRQS request, checked against [`Device::irq_info`]: `index` is a type the
/// device has and `[start, start + count)` lies within its vectors (count 0 only with
/// [`IrqSetData::None`]).
#[derive(Debug)]
pub struct IrqRequest<'a> {
    /// The interrupt type.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// What to do.
    pub action: IrqAction,
    /// With what.
    pub data: IrqSetData<'a>,
}

/// A device served over vfio-user.
///
/// The server calls these methods on its handler thread, one client command at a time, in the
/// order the client sent them; the device may also run threads of its own (they share `&self`,
/// so state lives behind the device's own locks). Every `Err` becomes an error reply carrying
/// [`DeviceError::errno`]; a device never panics on what a client asks.
///
/// DMA: when a client connects, [`Device::connect`] hands the device its [`DeviceHandle`] on
/// the client's address space; `dma_rw`, `translate`, `pin` and DMA logging go through it,
/// whatever memory the client mapped (a shared file, or memory reached by DMA_READ/DMA_WRITE
/// messages, which cannot be pinned or translated: EINVAL). [`Device::disconnect`] takes it
/// away again: the device must drop the handle and everything it pinned.
pub trait Device: Send + Sync + 'static {
    /// Flags and the numbers of regions and interrupt types.
    fn description(&self) -> DeviceDescription;

    /// Region `index` (below `num_regions`, checked by the server).
    fn region(&self, index: u32) -> Result<RegionDescription, DeviceError>;

    /// Reads `buf.len()` bytes at `offset` of region `index` (checked to lie inside the region,
    /// which is readable).
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError>;

    /// Writes `data` at `offset` of region `index` (checked to lie inside the region, which is
    /// writable).
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError>;

    /// Interrupt type `index` (below `num_irqs`, checked by the server).
    fn irq_info(&self, index: u32) -> Result<IrqDescription, DeviceError>;

    /// Sets up, masks, unmasks or triggers interrupts (DEVICE_SET_IRQS).
    fn set_irqs(&self, request: IrqRequest<'_>) -> Result<(), DeviceError>;

    /// Resets the device (DEVICE_RESET).
    fn reset(&self) -> Result<(), DeviceError>;

    /// A client connected: `dma` is the device's handle on its address space, valid until
    /// [`Device::disconnect`].
    fn connect(&self, dma: DeviceHandle);

    /// The client is gone: its memory is already unmapped (pins were asked back through
    /// [`Device::dma_unmapped`]) and every interrupt type disabled. Drop the handle given to
    /// [`Device::connect`] and any per-client state.
    fn disconnect(&self);

    /// The client is unmapping `[iova, iova + size)` and pins or segments hold it: give them
    /// back (unpin, drop the `Segments`). Called on the unmapping thread with no lock held;
    /// the default does nothing (for devices that never pin).
    fn dma_unmapped(&self, iova: Iova, size: u64) {
        let _ = (iova, size);
    }
}
