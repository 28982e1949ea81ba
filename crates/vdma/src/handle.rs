//! Groups, devices and the handles that do DMA (semantics §2).
//!
//! A [`GroupHandle`] or [`DeviceHandle`] is the user-space `vfio_group_get_external_user()`:
//! it keeps the address space alive for any number of calls, and dropping it is the "put".
//! Both hold the address space directly, so `dma_rw` through either costs the same: no lookup
//! of the group or device and no lock per call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::address::{HostAddr, Iova};
use crate::container::Space;
use crate::dirty::Bitmap;
use crate::dma::Xfer;
use crate::error::Result;
use crate::pin::{Pinned, UnmapCallback};
use crate::prot::{Direction, Prot};
use crate::segments::Segments;

/// Names a group (the number of `/dev/vfio/N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u32);

/// Names a device (for example its PCI address, "0000:00:04.0").
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub String);

impl DeviceId {
    /// A device id from its name.
    pub fn new(name: impl Into<String>) -> DeviceId {
        DeviceId(name.into())
    }
}

/// A group as the container keeps it.
#[derive(Debug)]
pub(crate) struct GroupState {
    id: GroupId,
    /// Live group and device handles.
    handles: AtomicUsize,
    devices: Mutex<HashMap<DeviceId, Arc<DeviceState>>>,
}

/// A device as the container keeps it.
#[derive(Debug)]
pub(crate) struct DeviceState {
    id: DeviceId,
    callback: Mutex<Option<CallbackSlot>>,
}

struct CallbackSlot(UnmapCallback);

impl std::fmt::Debug for CallbackSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnmapCallback")
    }
}

impl DeviceState {
    /// Whether an unmap callback is registered.
    pub(crate) fn has_unmap_callback(&self) -> bool {
        self.callback
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The registered unmap callback.
    pub(crate) fn unmap_callback(&self) -> Option<UnmapCallback> {
        let slot = self.callback.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map(|s| s.0.clone())
    }
}

impl GroupState {
    pub(crate) fn new(id: GroupId) -> GroupState {
        GroupState {
            id,
            handles: AtomicUsize::new(0),
            devices: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn handles(&self) -> usize {
        self.handles.load(Ordering::SeqCst)
    }

    pub(crate) fn has_device(&self, id: &DeviceId) -> bool {
        self.device(id).is_some()
    }

    pub(crate) fn device(&self, id: &DeviceId) -> Option<Arc<DeviceState>> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.get(id).cloned()
    }

    pub(crate) fn devices(&self) -> Vec<Arc<DeviceState>> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.values().cloned().collect()
    }

    pub(crate) fn add_device(&self, id: DeviceId) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.insert(
            id.clone(),
            Arc::new(DeviceState {
                id,
                callback: Mutex::new(None),
            }),
        );
    }
}

/// A reference on a group, taken under the container's lock (so `detach_group` sees it) and
/// given back on drop.
#[derive(Debug)]
struct GroupRef(Arc<GroupState>);

impl GroupRef {
    fn new(group: Arc<GroupState>) -> GroupRef {
        group.handles.fetch_add(1, Ordering::SeqCst);
        GroupRef(group)
    }
}

impl Drop for GroupRef {
    fn drop(&mut self) {
        self.0.handles.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The DMA methods, the same on both handles.
macro_rules! dma_methods {
    () => {
        /// Reads (`Direction::Read`: memory into `buf`) or writes (`buf` into memory)
        /// `buf.len()` bytes at `iova`, across any number of adjacent mappings of any kinds
        /// (semantics §3). All or nothing: a hole (EINVAL, naming the first unmapped IOVA) or a
        /// missing permission (EPERM) is found before any byte moves. Zero length: EINVAL;
        /// past 2^64: EOVERFLOW.
        #[inline(always)]
        pub fn dma_rw(&self, iova: Iova, buf: &mut [u8], direction: Direction) -> Result<()> {
            let xfer = match direction {
                Direction::Read => Xfer::Read(buf),
                Direction::Write => Xfer::Write(buf),
            };
            self.space.dma_rw(iova, xfer)
        }

        /// Copies device-visible memory at `iova` into `buf` (needs READ).
        #[inline(always)]
        pub fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<()> {
            self.space.dma_rw(iova, Xfer::Read(buf))
        }

        /// Copies `buf` to device-visible memory at `iova` (needs WRITE).
        #[inline(always)]
        pub fn write(&self, iova: Iova, buf: &[u8]) -> Result<()> {
            self.space.dma_rw(iova, Xfer::Write(buf))
        }

        /// Checks, without moving a byte, that `len` bytes at `iova` are mapped and permit
        /// `direction`: the error [`dma_rw`](Self::dma_rw) would return now for them (EINVAL
        /// zero length or hole, EOVERFLOW wrap, EPERM permission). A device calls it before
        /// it commits resources to a transfer (a buffer, a descriptor). Only a snapshot: an
        /// `unmap` may still come before the transfer, and faults (a truncated file, a process
        /// gone) show only when bytes move.
        pub fn check(&self, iova: Iova, len: usize, direction: Direction) -> Result<()> {
            self.space.check(iova, len, direction)
        }

        /// Translates `[iova, iova + len)` into host segments for an access needing `prot`, and
        /// holds their mappings until the [`Segments`] are dropped. Memory without a host
        /// address (another process's, message-backed): EINVAL.
        pub fn translate(&self, iova: Iova, len: usize, prot: Prot) -> Result<Segments> {
            self.space.translate(iova, len, prot)
        }
    };
}

/// A group's handle on the address space (`vfio_group_get_external_user`).
#[derive(Debug)]
pub struct GroupHandle {
    space: Arc<Space>,
    group: GroupRef,
}

impl GroupHandle {
    pub(crate) fn new(space: Arc<Space>, group: Arc<GroupState>) -> GroupHandle {
        GroupHandle {
            space,
            group: GroupRef::new(group),
        }
    }

    /// The group.
    pub fn id(&self) -> GroupId {
        self.group.0.id
    }

    dma_methods!();
}

/// A device's handle on the address space (`vfio_group_get_external_user_from_dev`). It also
/// counts as a handle on the device's group.
#[derive(Debug)]
pub struct DeviceHandle {
    space: Arc<Space>,
    group: GroupRef,
    device: Arc<DeviceState>,
}

impl DeviceHandle {
    pub(crate) fn new(
        space: Arc<Space>,
        group: Arc<GroupState>,
        device: Arc<DeviceState>,
    ) -> DeviceHandle {
        DeviceHandle {
            space,
            group: GroupRef::new(group),
            device,
        }
    }

    /// The device.
    pub fn id(&self) -> &DeviceId {
        &self.device.id
    }

    /// Registers the device's unmap callback (replacing any earlier one): called with a
    /// mapping's `(iova, size)` when an `unmap` needs the pins and segments on it given back.
    /// It runs on the unmapping thread with no lock held, and may unpin, translate and do DMA
    /// on other ranges; an unmap from inside it fails with EDEADLK. Only a device with a
    /// callback may pin.
    pub fn set_unmap_callback(&self, callback: impl Fn(Iova, u64) + Send + Sync + 'static) {
        let mut slot = self
            .device
            .callback
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *slot = Some(CallbackSlot(Arc::new(callback)));
    }

    /// Removes the device's unmap callback.
    pub fn clear_unmap_callback(&self) {
        let mut slot = self
            .device
            .callback
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *slot = None;
    }

    /// Pins `npages` pages (of the address space's page size) from `iova` for an access
    /// needing `prot`, and returns each page's host address, valid until unpinned (semantics
    /// §4). EINVAL: no unmap callback registered, `npages == 0`, `iova` misaligned, a page not
    /// mapped, or memory with no host address; E2BIG: more than 512 pages; EPERM: a mapping
    /// lacks `prot`; ENOMEM: past the locked-memory limit. A failed call pins nothing.
    pub fn pin(&self, iova: Iova, npages: usize, prot: Prot) -> Result<Vec<HostAddr>> {
        self.space.pin(&self.device, iova, npages, prot)
    }

    /// Unpins `npages` pages from `iova` (one pin each); pages not pinned are left alone.
    pub fn unpin(&self, iova: Iova, npages: usize) -> Result<()> {
        self.space.unpin(iova, npages)
    }

    /// [`DeviceHandle::pin`] as a guard that unpins when dropped.
    pub fn pin_guard(&self, iova: Iova, npages: usize, prot: Prot) -> Result<Pinned> {
        let hosts = self.pin(iova, npages, prot)?;
        Ok(Pinned::new(self.space.clone(), iova, hosts))
    }

    /// Starts the device's DMA logging (vfio-user DMA_LOGGING_START) over `ranges` of
    /// `(iova, length)` at `page_size`: 1 to 256 non-overlapping ranges aligned to `page_size`,
    /// a power of two of at least 4096 (EINVAL; more ranges: E2BIG; past 2^64: EOVERFLOW);
    /// EBUSY if already logging. Every DMA write through the address space is logged.
    pub fn dma_logging_start(&self, ranges: &[(Iova, u64)], page_size: u64) -> Result<()> {
        self.space.logging_start(&self.device.id, ranges, page_size)
    }

    /// Stops the device's DMA logging; fine if not started.
    pub fn dma_logging_stop(&self) -> Result<()> {
        self.space.logging_stop(&self.device.id)
    }

    /// Reads and clears the device's DMA log over `[iova, iova + length)` at any power-of-two
    /// `page_size` (vfio-user DMA_LOGGING_REPORT). EINVAL if not logging.
    pub fn dma_logging_report(&self, iova: Iova, length: u64, page_size: u64) -> Result<Bitmap> {
        self.space
            .logging_report(&self.device.id, iova, length, page_size)
    }

    /// The page size of the device's DMA log, or `None` when it is not logging.
    pub fn dma_logging_page_size(&self) -> Option<u64> {
        self.space.logging_page_size(&self.device.id)
    }

    /// The device's group.
    pub fn group(&self) -> GroupId {
        self.group.0.id
    }

    dma_methods!();
}
