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
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::address::{HostAddr, Iova};
use crate::container::{Control, Space};
use crate::dma::mark_dirty;
use crate::error::{Error, Result};
use crate::handle::DeviceState;
use crate::prot::Prot;
use crate::rcu;
use crate::table::Entry;

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

/// How often a page is pinned, and how many of those pins asked for WRITE. With `total` 0 the
/// page is idle: no pin, not charged, but still holding its host lock (see [`PinTable`]).
#[derive(Clone, Copy, Debug, Default)]
struct PinCount {
    total: u32,
    write: u32,
    /// The stamp of its current idle spell (0: not idle).
    idle_stamp: u64,
}

/// A hasher for page numbers: one multiply (Fibonacci hashing). A peer only picks which of its
/// own mapped pages to pin, a set bounded by the locked-memory limit, so SipHash's protection
/// against chosen collisions buys nothing here.
#[derive(Default)]
struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Pages whose last pin went stay idle in their address space's pin table, up to this many:
/// still host-locked, so that pinning them again, as a mediated device does all the time,
/// touches neither the process-wide host-lock table nor the kernel. The oldest go first.
const SPACE_IDLE_MAX: usize = 64;

/// Every pin of an address space, behind its one pin lock. Pages are keyed by IOVA page number:
/// a mapping with pins cannot be unmapped, so a key always means the same memory; idle pages
/// (no pin, still locked) are dropped before their mapping is unmapped ([`Space::drop_idle_pins`]).
#[derive(Default)]
pub(crate) struct PinTable {
    counts: HashMap<u64, PinCount, BuildHasherDefault<PageHasher>>,
    /// Bytes pinned, against the memlock limit (idle pages are not charged).
    locked: u64,
    /// Idle pages, oldest first: (page key, host address, stamp); an entry whose page has been
    /// pinned again since carries a stale stamp and is skipped.
    idle: VecDeque<(u64, usize, u64)>,
    idle_count: usize,
    stamp: u64,
}

impl PinTable {
    /// Takes idle pages out, oldest first, until at most `keep` remain; returns their host
    /// addresses, for [`unlock_pages`].
    fn evict_idle(&mut self, keep: usize) -> SmallVec<[usize; 4]> {
        let mut hosts = SmallVec::new();
        while self.idle_count > keep {
            let Some((key, host, stamp)) = self.idle.pop_front() else {
                break;
            };
            if matches!(self.counts.get(&key), Some(c) if c.total == 0 && c.idle_stamp == stamp) {
                self.counts.remove(&key);
                self.idle_count -= 1;
                hosts.push(host);
            }
        }
        if self.idle.len() > 4 * SPACE_IDLE_MAX + 16 {
            let counts = &self.counts;
            self.idle.retain(|&(k, _, st)| {
                matches!(counts.get(&k), Some(c) if c.total == 0 && c.idle_stamp == st)
            });
        }
        hosts
    }

    /// Takes out the idle pages whose keys `in_range` accepts; returns their host addresses.
    /// (Every idle page has exactly one queue entry with its current stamp.)
    fn take_idle(&mut self, in_range: impl Fn(u64) -> bool) -> Vec<usize> {
        let mut hosts = Vec::new();
        let counts = &mut self.counts;
        self.idle.retain(|&(key, host, stamp)| {
            let idle = matches!(counts.get(&key), Some(c) if c.total == 0 && c.idle_stamp == stamp);
            if idle && in_range(key) {
                counts.remove(&key);
                hosts.push(host);
                return false;
            }
            idle
        });
        self.idle_count -= hosts.len();
        hosts
    }
}

/// A stretch of pages in one mapping, found inside a read section.
struct Run<'t> {
    entry: &'t Entry,
    /// IOVA of the first page.
    iova: u64,
    count: u64,
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

    fn pin_table(&self) -> MutexGuard<'_, PinTable> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pins `npages` pages from `iova` for `device` (semantics §4). The pin lock is taken
    /// first, then one read section covers the whole call, so the mappings found stay put
    /// without taking references to them.
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
        let mut pins = self.pin_table();
        let guard = rcu::enter();
        let table = self.table.load(&guard);

        // 1. Every page mapped, permitted and with a host address; grouped in runs.
        let mut runs: SmallVec<[Run<'_>; 2]> = SmallVec::new();
        for i in 0..npages as u64 {
            let at = iova.0 + i * ps;
            if let Some(run) = runs.last_mut() {
                if run.entry.contains(at) {
                    run.count += 1;
                    continue;
                }
            }
            let Some(entry) = table.find_hinted(at, &guard) else {
                return Err(Error::NotMapped { iova: Iova(at) });
            };
            if !entry.prot.contains(prot) {
                return Err(Error::Permission {
                    iova: Iova(at),
                    needed: prot,
                });
            }
            if entry.host.is_none() {
                return Err(Error::NoHostAddress { iova: Iova(at) });
            }
            runs.push(Run {
                entry,
                iova: at,
                count: 1,
            });
        }
        let host_of = |run: &Run<'_>, i: u64| {
            let region = run.entry.host.as_ref().expect("checked above");
            region.base().0 + (run.iova - run.entry.start + i * ps) as usize
        };

        // 2. Holds, so an unmap in progress (EAGAIN) leaves nothing behind.
        for (i, run) in runs.iter().enumerate() {
            if let Err(e) = run.entry.mapping.hold_n(run.count) {
                for r in &runs[..i] {
                    r.entry.mapping.release_n(r.count);
                }
                return Err(e);
            }
        }
        let release_all = || {
            for r in &runs {
                r.entry.mapping.release_n(r.count);
            }
        };

        // 3. Charge the pages that had no pin (new ones, and idle ones taken back), and lock
        //    the new ones in memory (idle ones still are).
        let mut fresh: SmallVec<[(usize, u64); 2]> = SmallVec::new(); // (host, pages)
        let mut revived = 0u64;
        for run in &runs {
            for i in 0..run.count {
                match pins.counts.get(&((run.iova + i * ps) / ps)) {
                    Some(c) if c.total > 0 => {}
                    Some(_) => revived += 1,
                    None => {
                        let h = host_of(run, i);
                        match fresh.last_mut() {
                            Some((start, n)) if *start + (*n * ps) as usize == h => *n += 1,
                            _ => fresh.push((h, 1)),
                        }
                    }
                }
            }
        }
        let bytes: u64 = fresh.iter().map(|&(_, n)| n * ps).sum::<u64>() + revived * ps;
        if pins.locked + bytes > self.memlock_limit {
            release_all();
            return Err(Error::MemlockLimit {
                limit: self.memlock_limit,
            });
        }
        if self.config.mlock {
            for (i, &(host, n)) in fresh.iter().enumerate() {
                let mut result = lock_pages(host, n as usize, ps as usize);
                if result.is_err() && pins.idle_count > 0 {
                    // This space's idle pages may be what keeps us at RLIMIT_MEMLOCK.
                    let idle = pins.evict_idle(0);
                    unlock_pages(&idle, ps as usize);
                    result = lock_pages(host, n as usize, ps as usize);
                }
                if let Err(e) = result {
                    for &(h, n) in &fresh[..i] {
                        let pages: Vec<usize> =
                            (0..n as usize).map(|p| h + p * ps as usize).collect();
                        unlock_pages(&pages, ps as usize);
                    }
                    release_all();
                    return Err(e);
                }
            }
        }
        pins.locked += bytes;

        // 4. Count the pins and hand out the addresses.
        let write = prot.contains(Prot::WRITE) as u32;
        let mut hosts = Vec::with_capacity(npages);
        let PinTable {
            counts, idle_count, ..
        } = &mut *pins;
        for run in &runs {
            for i in 0..run.count {
                let c = counts.entry((run.iova + i * ps) / ps).or_default();
                if c.idle_stamp != 0 {
                    // An idle page pinned again; its queue entry is stale now.
                    c.idle_stamp = 0;
                    *idle_count -= 1;
                }
                c.total += 1;
                c.write += write;
                hosts.push(HostAddr(host_of(run, i)));
            }
        }
        Ok(hosts)
    }

    /// Unpins `npages` pages from `iova`; pages that are not pinned (or not mapped) are left
    /// alone. EINVAL/E2BIG for bad arguments as `pin`. A page whose last WRITE pin goes is
    /// marked dirty: the device may have written it.
    pub(crate) fn unpin(&self, iova: Iova, npages: usize) -> Result<()> {
        let ps = self.check_pin_args(iova, npages)?;
        let mut pins = self.pin_table();
        let guard = rcu::enter();
        let table = self.table.load(&guard);
        let mut unlocked: SmallVec<[usize; 4]> = SmallVec::new();
        for i in 0..npages as u64 {
            let at = iova.0 + i * ps;
            let Some(c) = pins.counts.get_mut(&(at / ps)) else {
                continue;
            };
            if c.total == 0 {
                continue; // idle: not pinned
            }
            // A pinned page holds its mapping, so it is always found; never panic if not.
            let Some(entry) = table.find_hinted(at, &guard) else {
                debug_assert!(false, "pinned page {at:#x} not mapped");
                continue;
            };
            c.total -= 1;
            // Which pin goes is not known: keep WRITE pins the longest (a page stays dirty
            // while any may remain). A WRITE pin that goes leaves its page dirty.
            if c.write > c.total {
                c.write = c.total;
                mark_dirty(table, entry, at, at + (ps - 1));
            }
            if c.total == 0 {
                match (&entry.host, self.config.mlock) {
                    // Stays locked, idle: the next pin of it needs no host lock.
                    (Some(region), true) => {
                        let host = region.base().0 + (at - entry.start) as usize;
                        pins.stamp += 1;
                        let stamp = pins.stamp;
                        if let Some(c) = pins.counts.get_mut(&(at / ps)) {
                            c.idle_stamp = stamp;
                        }
                        pins.idle.push_back((at / ps, host, stamp));
                        pins.idle_count += 1;
                    }
                    _ => {
                        pins.counts.remove(&(at / ps));
                    }
                }
                pins.locked -= ps;
            }
            entry.mapping.release();
        }
        drop(guard);
        unlocked.extend(pins.evict_idle(SPACE_IDLE_MAX));
        drop(pins);
        unlock_pages(&unlocked, ps as usize);
        Ok(())
    }

    /// Gives up the idle pages (no pin, still locked) in `[start, last]`: memory about to be
    /// unmapped. Their host locks go back, so the memory's idle locks can then be forgotten.
    pub(crate) fn drop_idle_pins(&self, start: u64, last: u64) {
        let ps = self.config.page_size;
        let hosts = self
            .pin_table()
            .take_idle(|key| key * ps >= start && key * ps <= last);
        unlock_pages(&hosts, ps as usize);
    }

    /// IOVAs of the pages in `[start, last]` pinned with WRITE.
    pub(crate) fn write_pinned(&self, start: u64, last: u64) -> Vec<u64> {
        let ps = self.config.page_size;
        let pins = self.pin_table();
        pins.counts
            .iter()
            .filter(|(&page, c)| c.write > 0 && page * ps >= start && page * ps <= last)
            .map(|(&page, _)| page * ps)
            .collect()
    }
}

/// Pages whose last pin went stay locked (idle) up to this many, so that pinning them again, as
/// a mediated device does all the time, needs no system call. The oldest idle pages are
/// unlocked first; unmap unlocks the idle pages of the memory it removes.
const IDLE_LOCKED_MAX: usize = 1024;

/// Host pages locked by pins, over every mapping and address space: `mlock` does not nest, and
/// mappings of one file share host pages.
#[derive(Default)]
struct HostLocks {
    /// Per host page: pins holding it locked, and the stamp of its last idle spell. A page
    /// with no pins is idle: still locked, and listed in `idle`.
    pages: HashMap<usize, (u32, u64), BuildHasherDefault<PageHasher>>,
    /// Idle pages, oldest first, with the stamp they went idle at; an entry whose page has been
    /// pinned again (or unlocked) since has another stamp and is skipped.
    idle: VecDeque<(usize, u64)>,
    idle_count: usize,
    stamp: u64,
}

impl HostLocks {
    /// Whether `page` is idle under `stamp`.
    fn is_idle(&self, page: usize, stamp: u64) -> bool {
        self.pages.get(&page) == Some(&(0, stamp))
    }

    /// Unlocks idle pages, oldest first, until at most `keep` remain.
    fn evict(&mut self, keep: usize, page_size: usize) {
        while self.idle_count > keep {
            let Some((page, stamp)) = self.idle.pop_front() else {
                break;
            };
            if self.is_idle(page, stamp) {
                self.pages.remove(&page);
                self.idle_count -= 1;
                munlock(page, page_size);
            }
        }
        // Entries made stale by pages pinned again pile up: drop them now and then.
        if self.idle.len() > 4 * IDLE_LOCKED_MAX + 64 {
            let pages = &self.pages;
            self.idle.retain(|&(p, s)| pages.get(&p) == Some(&(0, s)));
        }
    }
}

static HOST_LOCKS: Mutex<Option<HostLocks>> = Mutex::new(None);

fn host_locks() -> MutexGuard<'static, Option<HostLocks>> {
    HOST_LOCKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks `n` host pages of `page_size` from `host`: pages not locked yet are `mlock`ed (one
/// call per run), idle ones are taken back without a system call.
fn lock_pages(host: usize, n: usize, page_size: usize) -> Result<()> {
    let mut guard = host_locks();
    let locks = guard.get_or_insert_with(HostLocks::default);
    if n == 1 {
        // One page, the common case: locked already (pinned elsewhere, or idle), or lock it.
        if let Some(entry) = locks.pages.get_mut(&host) {
            if entry.0 == 0 {
                locks.idle_count -= 1;
            }
            entry.0 += 1;
            return Ok(());
        }
    }
    let fresh: SmallVec<[usize; 8]> = (0..n)
        .map(|i| host + i * page_size)
        .filter(|p| !locks.pages.contains_key(p))
        .collect();
    let mut i = 0;
    while i < fresh.len() {
        let mut j = i + 1;
        while j < fresh.len() && fresh[j] == fresh[j - 1] + page_size {
            j += 1;
        }
        let mut locked = mlock(fresh[i], (j - i) * page_size);
        if locked.is_err() && locks.idle_count > 0 {
            // Idle locks may be what keeps us under RLIMIT_MEMLOCK: give them up and retry.
            locks.evict(0, page_size);
            locked = mlock(fresh[i], (j - i) * page_size);
        }
        if let Err(e) = locked {
            for &p in &fresh[..i] {
                munlock(p, page_size);
            }
            return Err(e);
        }
        i = j;
    }
    for p in 0..n {
        let page = host + p * page_size;
        let entry = locks.pages.entry(page).or_insert((0, 0));
        if entry.0 == 0 && fresh.binary_search(&page).is_err() {
            locks.idle_count -= 1; // an idle page pinned again
        }
        entry.0 += 1;
    }
    Ok(())
}

/// Gives back one lock of each host page in `pages`; a page left with none goes idle (still
/// locked), and the oldest idle pages beyond the cap are unlocked.
fn unlock_pages(pages: &[usize], page_size: usize) {
    if pages.is_empty() {
        return;
    }
    let mut guard = host_locks();
    let Some(locks) = guard.as_mut() else {
        return;
    };
    for &page in pages {
        let Some(entry) = locks.pages.get_mut(&page) else {
            continue;
        };
        if entry.0 == 0 {
            continue;
        }
        entry.0 -= 1;
        if entry.0 == 0 {
            locks.stamp += 1;
            entry.1 = locks.stamp;
            locks.idle.push_back((page, locks.stamp));
            locks.idle_count += 1;
        }
    }
    locks.evict(IDLE_LOCKED_MAX, page_size);
}

/// Unlocks the idle pages in `[start, start + len)`, host memory that is about to go away.
pub(crate) fn forget_idle_locks(start: usize, len: usize, page_size: usize) {
    let mut guard = host_locks();
    let Some(locks) = guard.as_mut() else {
        return;
    };
    if locks.idle_count == 0 {
        return;
    }
    let gone: Vec<usize> = locks
        .pages
        .iter()
        .filter(|(&p, &(n, _))| n == 0 && p >= start && p < start + len)
        .map(|(&p, _)| p)
        .collect();
    for page in gone {
        locks.pages.remove(&page);
        locks.idle_count -= 1;
        munlock(page, page_size);
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
