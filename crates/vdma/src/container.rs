//! [`Container`]: the address space. Map and unmap IOVA ranges, attach groups and devices, and
//! hand out the handles that do DMA.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::address::Iova;
use crate::backing::Backing;
use crate::config::Config;
use crate::dirty::Bitmap;
use crate::error::{Error, Result};
use crate::handle::{DeviceHandle, DeviceId, GroupHandle, GroupId, GroupState};
use crate::mapping::{Mapping, MappingInfo};
use crate::prot::Prot;
use crate::rcu::{self, RcuCell};
use crate::table::{Entry, Table};

/// Tables replaced by `map` wait for a grace period in batches of this many.
const RETIRE_BATCH: usize = 32;

/// Rounds of unmap callbacks before an unmap of held memory gives up with EBUSY.
const UNMAP_ROUNDS: u32 = 8;

/// A type1-style IOMMU address space: the counterpart of a VFIO container.
///
/// ```
/// use std::sync::Arc;
/// use vdma::{Backing, Config, Container, GroupId, Iova, OwnedMemory, Prot};
///
/// let space = Container::new(Config::default())?;
/// let memory = Arc::new(OwnedMemory::new(2 * 4096)?);
/// space.map(Iova(0x10000), 8192, Backing::memory(memory, 0), Prot::READ_WRITE)?;
///
/// space.attach_group(GroupId(1))?;
/// let group = space.group_handle(GroupId(1))?;
/// group.write(Iova(0x10ffe), b"abcd")?; // crosses a page, byte granular
/// let mut buf = [0u8; 4];
/// group.read(Iova(0x10ffe), &mut buf)?;
/// assert_eq!(&buf, b"abcd");
///
/// assert_eq!(space.unmap(Iova(0x10000), 8192)?, 8192);
/// assert_eq!(group.read(Iova(0x10000), &mut buf).unwrap_err().errno(), libc::EINVAL);
/// # Ok::<(), vdma::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Container {
    space: Arc<Space>,
}

/// What the container and every handle share.
pub(crate) struct Space {
    pub(crate) config: Config,
    /// The current table, for readers.
    pub(crate) table: RcuCell<Table>,
    control: Mutex<Control>,
    /// Serializes unmaps, which drop `control` while device callbacks run.
    unmapping: Mutex<()>,
    /// Every pin, behind the pin lock (`pin.rs`).
    pub(crate) pins: Mutex<crate::pin::PinTable>,
    pub(crate) memlock_limit: u64,
}

impl Drop for Space {
    /// The last handle is gone: no reader can exist. Idle page locks in the memory about to be
    /// released are forgotten first, so that memory mapped later at those addresses is not
    /// taken for locked.
    fn drop(&mut self) {
        self.drop_idle_pins(0, u64::MAX);
        let control = self.control.get_mut().unwrap_or_else(|e| e.into_inner());
        let ps = self.config.page_size as usize;
        for e in control.current.iter() {
            if let Some(host) = &e.host {
                crate::pin::forget_idle_locks(host.base().0, host.len(), ps);
            }
        }
    }
}

impl std::fmt::Debug for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Space")
            .field("config", &self.config)
            .finish()
    }
}

/// Writer-side state, behind one lock.
pub(crate) struct Control {
    /// The table `Space::table` points at.
    pub(crate) current: Arc<Table>,
    /// Replaced tables that readers may still see; freed after a grace period.
    pub(crate) retired: Vec<Arc<Table>>,
    pub(crate) groups: HashMap<GroupId, Arc<GroupState>>,
    /// Container-level dirty tracking: the page shift, while on.
    pub(crate) tracking: Option<u32>,
}

impl Container {
    /// An empty address space.
    pub fn new(config: Config) -> Result<Container> {
        config.validate()?;
        let memlock_limit = config
            .memlock_limit
            .unwrap_or_else(crate::pin::rlimit_memlock);
        let current = Arc::new(Table::empty());
        Ok(Container {
            space: Arc::new(Space {
                config,
                table: RcuCell::new(&current),
                control: Mutex::new(Control {
                    current,
                    retired: Vec::new(),
                    groups: HashMap::new(),
                    tracking: None,
                }),
                unmapping: Mutex::new(()),
                pins: Mutex::new(crate::pin::PinTable::default()),
                memlock_limit,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.space.config
    }

    /// Maps `[iova, iova + size)` onto `backing` with `prot` (semantics §1, checked in this
    /// order): zero or misaligned size, iova or offset: EINVAL; empty `prot`: EINVAL; the range
    /// passes 2^64: EINVAL (ending exactly at 2^64 is fine); overlap: EEXIST; entry limit:
    /// ENOSPC; outside the valid ranges: EINVAL; then the memory is made or checked (file too
    /// short: EINVAL, mmap errors, process gone: ESRCH).
    pub fn map(&self, iova: Iova, size: u64, backing: Backing<'_>, prot: Prot) -> Result<()> {
        let space = &*self.space;
        space.check_aligned(iova, size)?;
        space.check_align("offset", backing.offset())?;
        if prot.is_empty() {
            return Err(Error::NoPermission);
        }
        let last = iova.last_of(size).ok_or(Error::Wraps { iova, size })?;
        rcu::check_outside()?;
        let mut control = space.lock();
        if let Some(e) = control.current.first_overlap(iova.0, last.0) {
            return Err(Error::Exists {
                iova: Iova(e.start),
            });
        }
        if control.current.len() >= space.config.max_entries {
            return Err(Error::NoSpace {
                limit: space.config.max_entries,
            });
        }
        if !space
            .config
            .valid_ranges
            .iter()
            .any(|r| r.contains(iova, last))
        {
            return Err(Error::OutsideValidRanges { iova, size });
        }
        let (memory, offset) = backing.resolve(size, prot)?;
        let mapping = Arc::new(Mapping::new(iova, size, prot, memory, offset));
        let entry = Entry::new(mapping, control.tracking)?;
        let table = Arc::new(control.current.with(entry));
        space.replace(&mut control, table);
        if control.retired.len() >= RETIRE_BATCH {
            rcu::synchronize();
            control.retired.clear();
        }
        Ok(())
    }

    /// Unmaps every mapping inside `[iova, iova + size)` and returns the bytes removed (type1 v2
    /// rules): zero, misaligned or wrapping range: EINVAL; a mapping crossing either end: EINVAL
    /// and nothing is unmapped. A mapping held by [`crate::Segments`] is waited for up to
    /// [`Config::busy_timeout`], then EBUSY and nothing is unmapped.
    ///
    /// Mappings held by pins or segments: every device's unmap callback is called with each
    /// held mapping's `(iova, size)`, outside any lock, and the unmap retries; if holds remain
    /// after a bounded number of rounds (within [`Config::busy_timeout`]) it fails with EBUSY
    /// and unmaps nothing.
    ///
    /// When it returns, no access to the removed memory is in flight and none can start.
    pub fn unmap(&self, iova: Iova, size: u64) -> Result<u64> {
        let space = &*self.space;
        space.check_aligned(iova, size)?;
        let last = iova.last_of(size).ok_or(Error::Wraps { iova, size })?;
        Ok(space.unmap_range(iova.0, last.0, false)?.0)
    }

    /// [`Container::unmap`] that also returns the removed mappings' dirty pages, bit n being the
    /// page at `iova + n * page size` (VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP). EINVAL if dirty
    /// tracking is off; `iova` and `size` must be aligned to the tracking page size.
    pub fn unmap_dirty(&self, iova: Iova, size: u64) -> Result<(u64, Bitmap)> {
        let space = &*self.space;
        space.check_aligned(iova, size)?;
        let last = iova.last_of(size).ok_or(Error::Wraps { iova, size })?;
        let shift = space.lock().tracking.ok_or(Error::NotTracking)?;
        space.check_tracking_aligned(iova, size, shift)?;
        let (bytes, bitmap) = space.unmap_range(iova.0, last.0, true)?;
        let bitmap = bitmap.unwrap_or_else(|| Bitmap::new(iova, 1 << shift, size >> shift));
        Ok((bytes, bitmap))
    }

    /// Unmaps everything; returns the bytes removed.
    pub fn unmap_all(&self) -> Result<u64> {
        Ok(self.space.unmap_range(0, u64::MAX, false)?.0)
    }

    /// The mappings, in IOVA order.
    pub fn mappings(&self) -> Vec<MappingInfo> {
        let control = self.space.lock();
        control.current.iter().map(|e| e.mapping.info()).collect()
    }

    /// Attaches a group; EEXIST if it is attached.
    pub fn attach_group(&self, id: GroupId) -> Result<()> {
        let mut control = self.space.lock();
        if control.groups.contains_key(&id) {
            return Err(Error::AlreadyAttached {
                what: format!("group {}", id.0),
            });
        }
        control.groups.insert(id, Arc::new(GroupState::new(id)));
        Ok(())
    }

    /// Detaches a group; ENODEV if it is not attached, EBUSY while any handle to it or its
    /// devices lives.
    pub fn detach_group(&self, id: GroupId) -> Result<()> {
        let mut control = self.space.lock();
        let group = control.groups.get(&id).ok_or_else(|| no_group(id))?;
        if group.handles() != 0 {
            return Err(Error::HandlesLive {
                what: format!("group {}", id.0),
            });
        }
        control.groups.remove(&id);
        Ok(())
    }

    /// Adds a device to an attached group; ENODEV without the group, EEXIST if the device is
    /// already in any group of this container.
    pub fn add_device(&self, group: GroupId, device: DeviceId) -> Result<()> {
        let control = self.space.lock();
        if control.groups.values().any(|g| g.has_device(&device)) {
            return Err(Error::AlreadyAttached {
                what: format!("device {}", device.0),
            });
        }
        let g = control.groups.get(&group).ok_or_else(|| no_group(group))?;
        g.add_device(device);
        Ok(())
    }

    /// A handle on an attached group that keeps the address space alive until dropped
    /// (`vfio_group_get_external_user`); ENODEV if the group is not attached.
    pub fn group_handle(&self, id: GroupId) -> Result<GroupHandle> {
        let control = self.space.lock();
        let group = control.groups.get(&id).ok_or_else(|| no_group(id))?;
        Ok(GroupHandle::new(self.space.clone(), group.clone()))
    }

    pub(crate) fn space(&self) -> &Arc<Space> {
        &self.space
    }

    /// A handle on a device of an attached group (`vfio_group_get_external_user_from_dev`);
    /// ENODEV if no attached group has it.
    pub fn device_handle(&self, id: &DeviceId) -> Result<DeviceHandle> {
        let control = self.space.lock();
        let (group, device) = control
            .groups
            .values()
            .find_map(|g| g.device(id).map(|d| (g, d)))
            .ok_or_else(|| Error::NoDevice {
                what: format!("device {}", id.0),
            })?;
        Ok(DeviceHandle::new(self.space.clone(), group.clone(), device))
    }
}

fn no_group(id: GroupId) -> Error {
    Error::NoDevice {
        what: format!("group {}", id.0),
    }
}

impl Space {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_align(&self, what: &'static str, value: u64) -> Result<()> {
        let page_size = self.config.page_size;
        if value & (page_size - 1) != 0 {
            return Err(Error::Misaligned {
                what,
                value,
                page_size,
            });
        }
        Ok(())
    }

    /// EINVAL unless `iova` and `size` are multiples of the tracking page size.
    pub(crate) fn check_tracking_aligned(&self, iova: Iova, size: u64, shift: u32) -> Result<()> {
        let mask = (1u64 << shift) - 1;
        for (what, value) in [("iova", iova.0), ("size", size)] {
            if value & mask != 0 {
                return Err(Error::Misaligned {
                    what,
                    value,
                    page_size: 1 << shift,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn check_aligned(&self, iova: Iova, size: u64) -> Result<()> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        self.check_align("iova", iova.0)?;
        self.check_align("size", size)
    }

    /// Publishes `table`; the old one is retired until a grace period passes.
    pub(crate) fn replace(&self, control: &mut Control, table: Arc<Table>) {
        self.table.publish(&table);
        let old = std::mem::replace(&mut control.current, table);
        control.retired.push(old);
    }

    /// Removes the mappings in `[start, last]`, after the pins and segments on them are given
    /// back; with `want_dirty`, also returns their dirty bitmap relative to `start`.
    fn unmap_range(
        &self,
        start: u64,
        last: u64,
        want_dirty: bool,
    ) -> Result<(u64, Option<Bitmap>)> {
        rcu::check_outside()?;
        if crate::pin::in_unmap_callback() {
            return Err(Error::Reentrant);
        }
        let _one_at_a_time = self.unmapping.lock().unwrap_or_else(|e| e.into_inner());
        let round_wait = self.config.busy_timeout / UNMAP_ROUNDS;
        let mut round = 0;
        loop {
            let mut control = self.lock();
            let table = control.current.clone();
            check_no_straddle(&table, start, last)?;
            if table.first_overlap(start, last).is_none() {
                return Ok((0, None));
            }
            let (next, removed) = table.without(start, last);
            let mut held = false;
            for e in &removed {
                held |= e.mapping.begin_removal();
            }
            if !held {
                self.replace(&mut control, Arc::new(next));
                // No reader can find the removed mappings in the new table; wait for those that
                // found them in an old one. Dropping the retired tables then releases the memory.
                rcu::synchronize();
                // Pages that pins left locked (idle) in the removed memory are unlocked while
                // that memory is still mapped: this space's idle pins first, then the host
                // locks left idle.
                self.drop_idle_pins(start, last);
                for e in &removed {
                    if let Some(host) = &e.host {
                        let ps = self.config.page_size as usize;
                        crate::pin::forget_idle_locks(host.base().0, host.len(), ps);
                    }
                }
                control.retired.clear();
                let dirty = want_dirty.then(|| {
                    let shift = control.tracking.expect("checked by unmap_dirty");
                    crate::tracking::removed_bitmap(Iova(start), last, shift, &removed)
                });
                // Mappings can cover all 2^64 bytes, one more than a u64 counts.
                let bytes = removed
                    .iter()
                    .fold(0u64, |sum, e| sum.saturating_add(e.mapping.size));
                return Ok((bytes, dirty));
            }
            let callbacks = crate::pin::unmap_callbacks(&control);
            drop(control);
            let busy: Vec<_> = removed.iter().filter(|e| e.mapping.is_held()).collect();
            if round == UNMAP_ROUNDS {
                for e in &removed {
                    e.mapping.cancel_removal();
                }
                return Err(Error::MappingBusy {
                    iova: busy.first().map_or(Iova(start), |e| e.mapping.iova),
                });
            }
            round += 1;
            for e in &busy {
                crate::pin::call_unmap_callbacks(&callbacks, e.mapping.iova, e.mapping.size);
            }
            let deadline = Instant::now() + round_wait;
            while busy.iter().any(|e| e.mapping.is_held()) && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
    }
}

/// EINVAL if a mapping crosses either end of `[start, last]` (unmap never splits).
pub(crate) fn check_no_straddle(table: &Table, start: u64, last: u64) -> Result<()> {
    if let Some(pos) = table.find(start) {
        let e = table.entry(pos);
        if e.start < start {
            return Err(Error::Straddles {
                iova: Iova(e.start),
            });
        }
    }
    if let Some(pos) = table.find(last) {
        let e = table.entry(pos);
        if e.last > last {
            return Err(Error::Straddles {
                iova: Iova(e.start),
            });
        }
    }
    Ok(())
}
