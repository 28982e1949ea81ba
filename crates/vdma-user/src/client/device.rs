//! The device commands: DEVICE_GET_INFO, DEVICE_GET_REGION_INFO (with its argsz retry),
//! REGION_READ/REGION_WRITE (split at the negotiated transfer size, and posted writes),
//! DEVICE_GET_IRQ_INFO, DEVICE_SET_IRQS, DEVICE_RESET.

use std::os::fd::{BorrowedFd, OwnedFd};

use zerocopy::{FromBytes, IntoBytes};

use crate::client::error::ClientError;
use crate::client::Client;
use crate::protocol::{
    Command, DeviceInfo, IrqAction, IrqInfo, IrqSet, ProtocolError, RegionAccess, RegionInfo,
    RegionInfoReply, IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK,
    IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE,
};
use crate::transport::Message;

/// How many times [`Client::region_info`] asks again with the larger `argsz` the server
/// says it needs.
const REGION_INFO_TRIES: usize = 4;

/// A region as DEVICE_GET_REGION_INFO describes it.
#[derive(Debug)]
pub struct Region {
    /// Size, flags, mmap offset and capabilities (sparse mmap areas, type).
    pub info: RegionInfoReply,
    /// The file to map the region's mappable parts from, if the server sent one.
    pub fd: Option<OwnedFd>,
}

impl Client {
    /// DEVICE_GET_INFO: the device's flags, number of regions and of interrupt kinds.
    pub fn device_info(&self) -> Result<DeviceInfo, ClientError> {
        self.request(
            Command::DeviceGetInfo,
            DeviceInfo::request().as_bytes(),
            &[],
            |m: Message| Ok(DeviceInfo::decode_reply(&m.payload, m.fds.len())?),
        )
    }

    /// DEVICE_GET_REGION_INFO for region `index`. Asks with room for the fixed structure
    /// only; when the server says (in `argsz`) that the whole reply, capabilities included,
    /// needs more, asks again with that much.
    pub fn region_info(&self, index: u32) -> Result<Region, ClientError> {
        let c = Command::DeviceGetRegionInfo;
        let bad = |reason| ClientError::BadReply { command: c, reason };
        let mut argsz = size_of::<RegionInfo>() as u32;
        for _ in 0..REGION_INFO_TRIES {
            let request = RegionInfo::request(index, argsz);
            let mut m = self.request(c, request.as_bytes(), &[], Ok)?;
            // The fixed part first: a cut reply may still point at capabilities it left
            // out, so its chain is not read.
            let (fixed, _) = RegionInfo::read_from_prefix(&m.payload).map_err(|_| {
                ProtocolError::PayloadTooShort {
                    command: c,
                    len: m.payload.len(),
                    need: size_of::<RegionInfo>(),
                }
            })?;
            if fixed.index.get() != index {
                return Err(bad("the reply is for another region"));
            }
            let need = fixed.argsz.get();
            if need as usize <= m.payload.len() {
                let info = RegionInfoReply::decode(&m.payload, m.fds.len())?;
                return Ok(Region {
                    info,
                    fd: m.fds.pop(),
                });
            }
            if need <= argsz {
                return Err(bad(
                    "argsz says more than the server sent in the room given",
                ));
            }
            if u64::from(need) + 16 > u64::from(self.inner.decode.max_message_size) {
                return Err(bad("the region info does not fit one message"));
            }
            argsz = need;
        }
        Err(bad("argsz kept growing"))
    }

    /// REGION_READ of `len` bytes of region `index` at `offset`, in as many messages as the
    /// negotiated transfer size takes. A server that returns fewer bytes than asked fails
    /// the call ([`ClientError::Short`]).
    pub fn region_read(&self, index: u32, offset: u64, len: usize) -> Result<Vec<u8>, ClientError> {
        let mut out = vec![0u8; len];
        self.region_read_into(index, offset, &mut out)?;
        Ok(out)
    }

    /// REGION_READ into `buf` (see [`Client::region_read`]).
    pub fn region_read_into(
        &self,
        index: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ClientError> {
        check_span(offset, buf.len())?;
        let c = Command::RegionRead;
        let mut at = 0u64;
        for chunk in buf.chunks_mut(self.read_chunk().max(1)) {
            let wanted = chunk.len();
            let access = RegionAccess::new(index, offset + at, wanted as u32);
            let data = self.request(c, access.as_bytes(), &[], move |m: Message| {
                let data = access.decode_read_reply(&m.payload)?;
                if data.len() != wanted {
                    return Err(ClientError::Short {
                        command: c,
                        wanted: wanted as u64,
                        got: data.len() as u64,
                    });
                }
                Ok(data.to_vec())
            })?;
            chunk.copy_from_slice(&data);
            at += wanted as u64;
        }
        Ok(())
    }

    /// REGION_WRITE of `data` to region `index` at `offset`, in as many messages as the
    /// negotiated transfer size takes, each acknowledged. A server that acknowledges fewer
    /// bytes fails the call ([`ClientError::Short`]).
    pub fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        check_span(offset, data.len())?;
        let c = Command::RegionWrite;
        let mut at = 0u64;
        for chunk in data.chunks(self.write_chunk().max(1)) {
            let access = RegionAccess::new(index, offset + at, chunk.len() as u32);
            let wanted = chunk.len() as u64;
            let payload = access.encode_with_data(chunk);
            self.request(c, &payload, &[], move |m: Message| {
                let got = u64::from(access.decode_write_reply(&m.payload)?);
                if got != wanted {
                    return Err(ClientError::Short {
                        command: c,
                        wanted,
                        got,
                    });
                }
                Ok(())
            })?;
            at += wanted;
        }
        Ok(())
    }

    /// REGION_WRITE with NO_REPLY (a posted write, as for MMIO): returns once the message is
    /// sent. The server reports no failure; a later command's reply comes after the write is
    /// done, since the server handles one connection's commands in order.
    pub fn region_write_posted(
        &self,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        check_span(offset, data.len())?;
        let mut at = 0u64;
        for chunk in data.chunks(self.write_chunk().max(1)) {
            let access = RegionAccess::new(index, offset + at, chunk.len() as u32);
            self.post(Command::RegionWrite, &access.encode_with_data(chunk))?;
            at += chunk.len() as u64;
        }
        Ok(())
    }

    /// DEVICE_GET_IRQ_INFO for interrupt kind `index` (e.g. [`PCI_MSIX_IRQ_INDEX`]).
    ///
    /// [`PCI_MSIX_IRQ_INDEX`]: crate::protocol::PCI_MSIX_IRQ_INDEX
    pub fn irq_info(&self, index: u32) -> Result<IrqInfo, ClientError> {
        let c = Command::DeviceGetIrqInfo;
        let info = self.request(c, IrqInfo::request(index).as_bytes(), &[], |m: Message| {
            Ok(IrqInfo::decode(&m.payload, m.fds.len())?)
        })?;
        if info.index.get() != index {
            return Err(ClientError::BadReply {
                command: c,
                reason: "the reply is for another interrupt",
            });
        }
        Ok(info)
    }

    /// DEVICE_SET_IRQS: trigger `fds[i]` (eventfds) for vector `start + i` of interrupt kind
    /// `index`. More descriptors than the server takes in one message go in several
    /// messages.
    pub fn set_irqs_eventfd(
        &self,
        index: u32,
        start: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        if fds.is_empty() {
            return Err(ClientError::InvalidArgument {
                reason: "no eventfd (disable_irqs tears interrupts down)",
            });
        }
        let max = self.server_max_fds();
        if max == 0 {
            return Err(ClientError::TooManyFds {
                got: fds.len(),
                max,
            });
        }
        let flags = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER;
        let mut first = start;
        for batch in fds.chunks(max as usize) {
            let count = batch.len() as u32;
            let set = IrqSet::new(flags, index, first, count);
            self.request(Command::DeviceSetIrqs, set.as_bytes(), batch, |_| Ok(()))?;
            first = first
                .checked_add(count)
                .ok_or(ClientError::InvalidArgument {
                    reason: "vectors past 2^32",
                })?;
        }
        Ok(())
    }

    /// DEVICE_SET_IRQS without data: mask, unmask or trigger `count` vectors of interrupt
    /// kind `index` from `start`.
    pub fn set_irqs(
        &self,
        index: u32,
        action: IrqAction,
        start: u32,
        count: u32,
    ) -> Result<(), ClientError> {
        let action = match action {
            IrqAction::Mask => IRQ_SET_ACTION_MASK,
            IrqAction::Unmask => IRQ_SET_ACTION_UNMASK,
            IrqAction::Trigger => IRQ_SET_ACTION_TRIGGER,
        };
        let set = IrqSet::new(IRQ_SET_DATA_NONE | action, index, start, count);
        self.request(Command::DeviceSetIrqs, set.as_bytes(), &[], |_| Ok(()))
    }

    /// DEVICE_SET_IRQS that tears down every vector of interrupt kind `index` (trigger, no
    /// data, count 0).
    pub fn disable_irqs(&self, index: u32) -> Result<(), ClientError> {
        self.set_irqs(index, IrqAction::Trigger, 0, 0)
    }

    /// DEVICE_RESET.
    pub fn reset(&self) -> Result<(), ClientError> {
        self.request(Command::DeviceReset, &[], &[], |_| Ok(()))
    }
}

/// An access of `len` bytes at `offset` that does not pass 2^64.
fn check_span(offset: u64, len: usize) -> Result<(), ClientError> {
    if offset.checked_add(len as u64).is_none() {
        return Err(ClientError::InvalidArgument {
            reason: "the access passes 2^64",
        });
    }
    Ok(())
}
