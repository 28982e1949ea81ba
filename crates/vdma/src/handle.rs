//! Groups, devices and the handles that do DMA (semantics §2).
//!
//! A [`GroupHandle`] or [`DeviceHandle`] is the user-space `vfio_group_get_external_user()`:
//! it keeps the address space alive for any number of calls, and dropping it is the "put".
//! Both hold the address space directly, so `dma_rw` through either costs the same: no lookup
//! of the group or device and no lock per call.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::address::Iova;
use crate::container::Space;
use crate::dma::Xfer;
use crate::error::Result;
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
    devices: Mutex<HashSet<DeviceId>>,
}

impl GroupState {
    pub(crate) fn new(id: GroupId) -> GroupState {
        GroupState {
            id,
            handles: AtomicUsize::new(0),
            devices: Mutex::new(HashSet::new()),
        }
    }

    pub(crate) fn handles(&self) -> usize {
        self.handles.load(Ordering::SeqCst)
    }

    pub(crate) fn has_device(&self, id: &DeviceId) -> bool {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    pub(crate) fn add_device(&self, id: DeviceId) {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
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
        #[inline]
        pub fn dma_rw(&self, iova: Iova, buf: &mut [u8], direction: Direction) -> Result<()> {
            let xfer = match direction {
                Direction::Read => Xfer::Read(buf),
                Direction::Write => Xfer::Write(buf),
            };
            self.space.dma_rw(iova, xfer)
        }

        /// Copies device-visible memory at `iova` into `buf` (needs READ).
        #[inline]
        pub fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<()> {
            self.space.dma_rw(iova, Xfer::Read(buf))
        }

        /// Copies `buf` to device-visible memory at `iova` (needs WRITE).
        #[inline]
        pub fn write(&self, iova: Iova, buf: &[u8]) -> Result<()> {
            self.space.dma_rw(iova, Xfer::Write(buf))
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
    device: DeviceId,
}

impl DeviceHandle {
    pub(crate) fn new(space: Arc<Space>, group: Arc<GroupState>, device: DeviceId) -> DeviceHandle {
        DeviceHandle {
            space,
            group: GroupRef::new(group),
            device,
        }
    }

    /// The device.
    pub fn id(&self) -> &DeviceId {
        &self.device
    }

    /// The device's group.
    pub fn group(&self) -> GroupId {
        self.group.0.id
    }

    dma_methods!();
}
