//! Pinning (semantics §4): host addresses per page that stay valid until unpinned, for devices
//! that hand memory to something doing real DMA; and the unmap callbacks that ask devices to
//! give pins back.
//!
//! A pinned page is counted in its mapping (per page, with how many of its pins asked for
//! WRITE) and as one hold on the mapping, so `unmap` treats pins and segments alike: it calls
//! every device's unmap callback, outside any lock, waits, and after bounded rounds fails with
//! EBUSY. Pin and unpin are serialized by the address space's pin lock; the read path never
//! takes it.

use std::cell::Cell;

use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::address::{HostAddr, Iova};
use crate::container::{Control, Space};
use crate::error::{Error, Result};
use crate::handle::DeviceState;
use crate::mapping::{Mapping, PinCount};
use crate::prot::Prot;
use crate::rcu;

/// Most pages one `pin` or `unpin` call may name (the kernel's VFIO_PIN_PAGES_MAX_ENTRIES).
pub const MAX_PIN_PAGES: usize = 512;

/// A device's unmap callback: called with a mapping's `(iova, size)` when an `unmap` needs the
/// pins (and segments) on it given back.
pub type UnmapCallback = Arc<dyn Fn(Iova, u64) + Send + Sync>;

thread_local! {
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is running an unmap callback (where a nested unmap would deadlock).
pub(crate) fn in_unmap_callback() -> bool {
    IN_CALLBACK.with(|c| c.get())
}

/// Every registered unmap callback of every device in the container.
pub(crate) fn unmap_callbacks(control: &Control) -> Vec<UnmapCallback> {
    control
        .groups
        .values()
        .flat_map(|g| g.devices())
        .filter_map(|d| d.unmap_callback())
        .collect()
}

/// Calls `callbacks` for `(iova, size)`, marking the thread as inside a callback.
pub(crate) fn call_unmap_callbacks(callbacks: &[UnmapCallback], iova: Iova, size: u64) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_CALLBACK.with(|c| c.set(false));
        }
    }
    IN_CALLBACK.with(|c| c.set(true));
    let _reset = Reset;
    for cb in callbacks {
        cb(iova, size);
    }
}

/// Pages pinned through one call, unpinned when dropped.
#[derive(Debug)]
pub struct Pinned {
    space: Arc<Space>,
    iova: Iova,
    hosts: Vec<HostAddr>,
}

impl Pinned {
    pub(crate) fn new(space: Arc<Space>, iova: Iova, hosts: Vec<HostAddr>) -> Pinned {
        Pinned { space, iova, hosts }
    }

    /// The first page's IOVA.
    pub fn iova(&self) -> Iova {
        self.iova
    }

    /// The host address of each page, in order.
    pub fn hosts(&self) -> &[HostAddr] {
        &self.hosts
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // The pages were pinned by this value and are unpinned once; unpin of valid arguments
        // cannot fail.
        let _ = self.space.unpin(self.iova, self.hosts.len());
    }
}

/// The runs of one call: almost always one.
type Runs = SmallVec<[Run; 2]>;

/// A stretch of pages in one mapping.
struct Run {
    mapping: Arc<Mapping>,
    /// Index of the first page in the mapping.
    first: u64,
    count: u64,
    /// Host address of the first page, if the memory has one.
    host: Option<usize>,
}

impl Space {
    fn check_pin_args(&self, iova: Iova, npages: usize) -> Result<u64> {
        if npages == 0 {
            return Err(Error::ZeroLength);
        }
        if npages > MAX_PIN_PAGES {
            return Err(Error::TooManyPages {
                npages,
                max: MAX_PIN_PAGES,
            });
        }
        let ps = self.config.page_size;
        self.check_aligned(iova, ps)?;
        let size = npages as u64 * ps;
        if iova.last_of(size).is_none() {
            return Err(Error::Wraps { iova, size });
        }
        Ok(ps)
    }

    /// The mappings under `npages` pages from `iova`, grouped in runs; checks `prot` (EPERM)
    /// and coverage (EINVAL) of every page. With `skip_holes`, unmapped pages are left out
    /// instead.
    fn runs(&self, iova: Iova, npages: usize, prot: Prot, skip_holes: bool) -> Result<Runs> {
        let ps = self.config.page_size;
        rcu::read(|guard| {
            let table = self.table.load(guard);
            let mut runs = Runs::new();
            for i in 0..npages as u64 {
                let at = iova.0 + i * ps;
                if let Some(run) = runs.last_mut() {
                    if run.mapping.iova.0 + (run.first + run.count) * ps == at
                        && at - run.mapping.iova.0 < run.mapping.size
                    {
                        run.count += 1;
                        continue;
                    }
                }
                let e = match table.find_hinted(at, guard) {
                    Some(e) => e,
                    None if skip_holes => continue,
                    None => return Err(Error::NotMapped { iova: Iova(at) }),
                };
                if !e.prot.contains(prot) {
                    return Err(Error::Permission {
                        iova: Iova(at),
                        needed: prot,
                    });
                }
                runs.push(Run {
                    mapping: e.mapping.clone(),
                    first: (at - e.start) / ps,
                    count: 1,
                    host: e
                        .host
                        .as_ref()
                        .map(|h| h.base().0 + (at - e.start) as usize),
                });
            }
            Ok(runs)
        })
    }

    /// Pins `npages` pages from `iova` for `device` (semantics §4).
    pub(crate) fn pin(
        &self,
        device: &DeviceState,
        iova: Iova,
        npages: usize,
        prot: Prot,
    ) -> Result<Vec<HostAddr>> {
        if !device.has_unmap_callback() {
            return Err(Error::NoUnmapCallback);
        }
        let ps = self.check_pin_args(iova, npages)?;
        if prot.is_empty() {
            return Err(Error::NoPermission);
        }
        let runs = self.runs(iova, npages, prot, false)?;
        let mut hosts = Vec::with_capacity(npages);
        for run in &runs {
            let Some(host) = run.host else {
                return Err(Error::NoHostAddress {
                    iova: Iova(run.mapping.iova.0 + run.first * ps),
                });
            };
            hosts.extend((0..run.count).map(|i| HostAddr(host + (i * ps) as usize)));
        }
        let _pins = self.pin_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Holds first, so an unmap in progress (EAGAIN) leaves nothing behind.
        for (i, run) in runs.iter().enumerate() {
            if let Err(e) = run.mapping.hold_n(run.count) {
                for r in &runs[..i] {
                    r.mapping.release_n(r.count);
                }
                return Err(e);
            }
        }
        let release_all = || {
            for r in &runs {
                r.mapping.release_n(r.count);
            }
        };
        // Charge the pages pinned for the first time, and lock them in memory.
        let mut fresh: SmallVec<[(usize, u64); 2]> = SmallVec::new(); // runs of new pages
        for run in &runs {
            let counts = run.mapping.pins();
            let host = run.host.expect("checked above");
            for i in 0..run.count {
                if !counts.contains_key(&(run.first + i)) {
                    let h = host + (i * ps) as usize;
                    match fresh.last_mut() {
                        Some((start, n)) if *start + (*n * ps) as usize == h => *n += 1,
                        _ => fresh.push((h, 1)),
                    }
                }
            }
        }
        let bytes: u64 = fresh.iter().map(|&(_, n)| n * ps).sum();
        let before = self.locked.fetch_add(bytes, Ordering::SeqCst);
        if before + bytes > self.memlock_limit {
            self.locked.fetch_sub(bytes, Ordering::SeqCst);
            release_all();
            return Err(Error::MemlockLimit {
                limit: self.memlock_limit,
            });
        }
        if self.config.mlock {
            for (i, &(host, n)) in fresh.iter().enumerate() {
                if let Err(e) = lock_pages(host, n as usize, ps as usize) {
                    for &(h, n) in &fresh[..i] {
                        let pages: Vec<usize> =
                            (0..n as usize).map(|p| h + p * ps as usize).collect();
                        unlock_pages(&pages, ps as usize);
                    }
                    self.locked.fetch_sub(bytes, Ordering::SeqCst);
                    release_all();
                    return Err(e);
                }
            }
        }
        let write = prot.contains(Prot::WRITE) as u32;
        for run in &runs {
            let mut counts = run.mapping.pins();
            for i in 0..run.count {
                let c = counts.entry(run.first + i).or_default();
                c.total += 1;
                c.write += write;
            }
        }
        Ok(hosts)
    }

    /// Unpins `npages` pages from `iova`; pages that are not pinned (or not mapped) are left
    /// alone. EINVAL/E2BIG for bad arguments as `pin`.
    pub(crate) fn unpin(&self, iova: Iova, npages: usize) -> Result<()> {
        let ps = self.check_pin_args(iova, npages)?;
        let _pins = self.pin_lock.lock().unwrap_or_else(|e| e.into_inner());
        // A page that is not mapped is skipped, not an error.
        let mut written: SmallVec<[u64; 4]> = SmallVec::new();
        let mut unlocked: SmallVec<[usize; 4]> = SmallVec::new();
        for run in self.runs(iova, npages, Prot::NONE, true)? {
            let mut counts = run.mapping.pins();
            let mut unpinned = 0;
            for i in 0..run.count {
                let page = run.first + i;
                let Some(c) = counts.get_mut(&page) else {
                    continue;
                };
                c.total -= 1;
                // Which pin goes is not known: keep WRITE pins the longest (a page stays dirty
                // while any may remain). A WRITE pin that goes leaves its page dirty.
                if c.write > c.total {
                    c.write = c.total;
                    written.push(run.mapping.iova.0 + page * ps);
                }
                unpinned += 1;
                if c.total == 0 {
                    counts.remove(&page);
                    if let (Some(host), true) = (run.host, self.config.mlock) {
                        unlocked.push(host + (i * ps) as usize);
                    }
                    self.locked.fetch_sub(ps, Ordering::SeqCst);
                }
            }
            drop(counts);
            run.mapping.release_n(unpinned);
        }
        unlock_pages(&unlocked, ps as usize);
        for page in written {
            self.mark_written(page, page + (ps - 1));
        }
        Ok(())
    }
}

/// Pages of `mapping` pinned with WRITE, as page indexes in the mapping.
pub(crate) fn write_pinned(mapping: &Mapping) -> Vec<u64> {
    mapping
        .pins()
        .iter()
        .filter(|(_, c): &(&u64, &PinCount)| c.write > 0)
        .map(|(&i, _)| i)
        .collect()
}

/// How often each host page is locked by pins, over every mapping and address space: `mlock`
/// does not nest, and mappings of one file share host pages.
static LOCKED_PAGES: Mutex<Option<HashMap<usize, u32>>> = Mutex::new(None);

/// Locks `n` host pages of `page_size` from `host`; only pages not locked yet are `mlock`ed.
fn lock_pages(host: usize, n: usize, page_size: usize) -> Result<()> {
    let mut locked = LOCKED_PAGES.lock().unwrap_or_else(|e| e.into_inner());
    let locked = locked.get_or_insert_with(HashMap::new);
    let fresh: Vec<usize> = (0..n)
        .map(|i| host + i * page_size)
        .filter(|p| !locked.contains_key(p))
        .collect();
    // mlock runs of fresh pages, one call each.
    let mut i = 0;
    while i < fresh.len() {
        let mut j = i + 1;
        while j < fresh.len() && fresh[j] == fresh[j - 1] + page_size {
            j += 1;
        }
        if let Err(e) = mlock(fresh[i], (j - i) * page_size) {
            for &p in &fresh[..i] {
                munlock(p, page_size);
            }
            return Err(e);
        }
        i = j;
    }
    for p in 0..n {
        *locked.entry(host + p * page_size).or_insert(0) += 1;
    }
    Ok(())
}

/// Gives back one lock of each host page in `pages` (ascending); `munlock`s those with none
/// left, one call per run of adjacent pages.
fn unlock_pages(pages: &[usize], page_size: usize) {
    if pages.is_empty() {
        return;
    }
    let mut locked = LOCKED_PAGES.lock().unwrap_or_else(|e| e.into_inner());
    let Some(locked) = locked.as_mut() else {
        return;
    };
    let mut run: Option<(usize, usize)> = None; // (start, bytes)
    for &host in pages {
        let Some(count) = locked.get_mut(&host) else {
            continue;
        };
        *count -= 1;
        if *count != 0 {
            continue;
        }
        locked.remove(&host);
        run = match run {
            Some((start, len)) if start + len == host => Some((start, len + page_size)),
            Some((start, len)) => {
                munlock(start, len);
                Some((host, page_size))
            }
            None => Some((host, page_size)),
        };
    }
    if let Some((start, len)) = run {
        munlock(start, len);
    }
}

fn mlock(host: usize, len: usize) -> Result<()> {
    // SAFETY: mlock only changes the residency of pages of a mapping this process holds alive
    // (the caller holds the mapping); it touches no memory contents.
    if unsafe { libc::mlock(host as *const libc::c_void, len) } != 0 {
        return Err(Error::last_os("mlock"));
    }
    Ok(())
}

fn munlock(host: usize, len: usize) {
    // SAFETY: as for mlock. Failure leaves the pages locked, which is harmless.
    unsafe { libc::munlock(host as *const libc::c_void, len) };
}

/// The soft RLIMIT_MEMLOCK, the default limit on pinned bytes.
pub(crate) fn rlimit_memlock() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return 64 << 10;
    }
    lim.rlim_cur
}
