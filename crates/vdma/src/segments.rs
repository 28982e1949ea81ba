//! [`Segments`]: an IOVA range translated to host memory, for devices that touch memory
//! directly (what `vfu_addr_to_sgl` + `vfu_sgl_get` give in libvfio-user).

use std::sync::Arc;

use crate::address::{HostAddr, Iova};
use crate::container::Space;
use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::prot::Prot;
use crate::rcu;

/// One piece of a translated range: host memory that is contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The IOVA of its first byte.
    pub iova: Iova,
    /// Where its first byte is in this process.
    pub host: HostAddr,
    /// Its length.
    pub len: usize,
}

/// A translated IOVA range: host segments whose mappings are held while this value lives.
///
/// While held, `unmap` of a range containing these mappings waits (up to
/// [`crate::Config::busy_timeout`]) and then fails with EBUSY: the pointers never dangle, and no
/// unmap returns while the device may still touch the memory. Drop it as soon as the access is
/// done. The memory is shared with the guest or another process: use the pointers with raw,
/// volatile-safe copies, never as Rust references.
#[derive(Debug)]
pub struct Segments {
    segments: Vec<Segment>,
    held: Vec<Arc<Mapping>>,
    /// The address space, to mark the memory dirty on drop if translated for WRITE.
    written: Option<Arc<Space>>,
}

impl Segments {
    /// The segments in IOVA order; adjacent mappings give separate segments.
    pub fn as_slice(&self) -> &[Segment] {
        &self.segments
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Whether there are no bytes (never, for a successful translation).
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

impl Drop for Segments {
    fn drop(&mut self) {
        // The device may have written through the pointers: that dirt is logged now, while the
        // mappings are still held.
        if let Some(space) = &self.written {
            for s in &self.segments {
                space.mark_written(s.iova.0, s.iova.0 + (s.len as u64 - 1));
            }
        }
        for m in &self.held {
            m.release();
        }
    }
}

impl Space {
    /// Translates `[iova, iova + len)` for an access needing `prot` (semantics of §3: EINVAL for
    /// zero length or a hole, EOVERFLOW on wrap, EPERM for a missing permission; EINVAL for
    /// memory with no host address, EAGAIN for a mapping being unmapped).
    pub(crate) fn translate(
        self: &Arc<Self>,
        iova: Iova,
        len: usize,
        prot: Prot,
    ) -> Result<Segments> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let last = iova
            .last_of(len as u64)
            .ok_or(Error::Overflow {
                iova,
                len: len as u64,
            })?
            .0;
        rcu::read(|guard| {
            let table = self.table.load(guard);
            let mut out = Segments {
                segments: Vec::new(),
                held: Vec::new(),
                written: None,
            };
            let mut at = iova.0;
            let mut pos = table.find(at).ok_or(Error::NotMapped { iova })?;
            loop {
                let e = table.entry(pos);
                if e.start > at {
                    return Err(Error::NotMapped { iova: Iova(at) });
                }
                if !e.prot.contains(prot) {
                    return Err(Error::Permission {
                        iova: Iova(at),
                        needed: prot,
                    });
                }
                let host = e
                    .host
                    .as_ref()
                    .ok_or(Error::NoHostAddress { iova: Iova(at) })?;
                let end = e.last.min(last);
                e.mapping.hold()?;
                out.held.push(e.mapping.clone());
                out.segments.push(Segment {
                    iova: Iova(at),
                    host: HostAddr(host.base().0 + (at - e.start) as usize),
                    len: (end - at + 1) as usize,
                });
                if end == last {
                    if prot.contains(Prot::WRITE) {
                        out.written = Some(self.clone());
                    }
                    return Ok(out);
                }
                at = end + 1;
                pos = table.next(pos).ok_or(Error::NotMapped { iova: Iova(at) })?;
            }
        })
    }
}
