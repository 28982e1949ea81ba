//! [`Commands`]: every client command after VERSION, decoded, checked and carried out against
//! the address space and the device.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use vdma::{Backing, DeviceHandle, Iova};
use zerocopy::little_endian::U64;
use zerocopy::IntoBytes;

use crate::protocol::{
    dirty_bitmap_bytes, encode_feature, DecodeConfig, DeviceFeatureRequest, DeviceInfo, DmaMap,
    DmaUnmapReply, DmaUnmapRequest, FeatureRequest, IrqInfo, RegionAccess, RegionCap, RegionInfo,
    RegionInfoReply, RegionIoFds, RegionIoFdsReply, Request, SetIrqs, WriteMultiCount, WriteOne,
    FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP,
    REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE,
};
use crate::server::device::{Device, IrqRequest, IrqSetData};
use crate::server::dma_memory::{DmaChannel, DmaMemory};
use crate::server::error::CommandError;
use crate::server::Shared;
use crate::transport::Message;

/// A successful reply: its payload and at most one descriptor.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The payload after the header.
    pub(crate) payload: Vec<u8>,
    /// A descriptor to send along.
    pub(crate) fd: Option<OwnedFd>,
}

impl Reply {
    /// A reply with `payload` and no descriptor.
    pub(crate) fn new(payload: Vec<u8>) -> Reply {
        Reply { payload, fd: None }
    }

    /// A reply without payload.
    fn empty() -> Reply {
        Reply::new(Vec::new())
    }
}

/// The negotiated state of a session, and the command handlers.
pub(crate) struct Commands<'a> {
    shared: &'a Shared,
    decode: DecodeConfig,
    channel: Arc<DmaChannel>,
    /// The session's own handle on the address space (DMA logging).
    handle: DeviceHandle,
}

impl<'a> Commands<'a> {
    /// Handling after a VERSION that settled `decode` (layout, sizes).
    pub(crate) fn new(
        shared: &'a Shared,
        decode: DecodeConfig,
        channel: Arc<DmaChannel>,
        handle: DeviceHandle,
    ) -> Commands<'a> {
        Commands {
            shared,
            decode,
            channel,
            handle,
        }
    }

    /// The session's handle, given back at disconnect.
    pub(crate) fn into_handle(self) -> DeviceHandle {
        self.handle
    }

    fn device(&self) -> &dyn Device {
        &*self.shared.device
    }

    /// Decodes and carries out one command.
    pub(crate) fn handle(&mut self, message: Message) -> Result<Reply, CommandError> {
        let Message {
            header,
            payload,
            fds,
        } = message;
        let request = Request::decode(&header, &payload, fds.len(), &self.decode)?;
        match request {
            Request::Version(_) => Err(CommandError::Invalid("VERSION was already negotiated")),
            Request::DmaMap(map) => self.dma_map(&map, fds),
            Request::DmaUnmap(unmap) => self.dma_unmap(&unmap),
            Request::DeviceGetInfo(_) => {
                let d = self.device().description();
                Ok(Reply::new(
                    DeviceInfo::reply(d.flags, d.num_regions, d.num_irqs)
                        .as_bytes()
                        .to_vec(),
                ))
            }
            Request::DeviceGetRegionInfo(info) => self.region_info(&info),
            Request::DeviceGetRegionIoFds(req) => self.region_io_fds(&req),
            Request::DeviceGetIrqInfo(info) => {
                let index = info.index.get();
                self.check_irq_index(index)?;
                let irq = self.device().irq_info(index)?;
                Ok(Reply::new(
                    IrqInfo::reply(index, irq.flags, irq.count)
                        .as_bytes()
                        .to_vec(),
                ))
            }
            Request::DeviceSetIrqs(set) => self.set_irqs(&set, fds),
            Request::RegionRead(access) => self.region_read(&access),
            Request::RegionWrite(access, data) => {
                let (index, offset) = (access.region.get(), access.offset.get());
                self.check_region_access(index, offset, data.len() as u64, REGION_INFO_FLAG_WRITE)?;
                self.device().region_write(index, offset, data)?;
                Ok(Reply::new(
                    RegionAccess::new(index, offset, access.count.get())
                        .as_bytes()
                        .to_vec(),
                ))
            }
            Request::RegionWriteMulti(writes) => self.region_write_multi(writes),
            Request::DeviceReset => {
                self.device().reset()?;
                Ok(Reply::empty())
            }
            Request::DeviceFeature(feature) => self.feature(&feature),
            Request::DmaRead(_) | Request::DmaWrite(..) => Err(CommandError::Invalid(
                "DMA_READ and DMA_WRITE go from the server to the client",
            )),
            Request::MigDataRead(_) | Request::MigDataWrite(..) => {
                Err(CommandError::NotSupported("migration"))
            }
        }
    }

    /// DMA_MAP: a file at its offset, or (no descriptor) memory reached by messages.
    fn dma_map(&self, map: &DmaMap, fds: Vec<OwnedFd>) -> Result<Reply, CommandError> {
        let (iova, size, prot) = (Iova(map.addr.get()), map.size.get(), map.prot());
        let container = &self.shared.container;
        match fds.first() {
            Some(fd) => container.map(iova, size, Backing::file(fd, map.offset.get()), prot)?,
            None => {
                let memory = Arc::new(DmaMemory::new(self.channel.clone(), iova.0, size));
                container.map(iova, size, Backing::memory(memory, 0), prot)?;
            }
        }
        Ok(Reply::empty())
    }

    /// DMA_UNMAP: a range (type1 v2 rules), everything, or a range with its dirty bitmap.
    fn dma_unmap(&self, req: &DmaUnmapRequest) -> Result<Reply, CommandError> {
        let container = &self.shared.container;
        let unmap = req.unmap;
        if unmap.is_all() {
            container.unmap_all()?;
            return Ok(Reply::new(unmap.as_bytes().to_vec()));
        }
        let (iova, size) = (Iova(unmap.addr.get()), unmap.size.get());
        let Some(bitmap) = req.bitmap else {
            container.unmap(iova, size)?;
            return Ok(Reply::new(unmap.as_bytes().to_vec()));
        };
        let pgsize = bitmap.pgsize.get();
        if !pgsize.is_power_of_two() {
            return Err(vdma::Error::BadPageSize { page_size: pgsize }.into());
        }
        let need =
            dirty_bitmap_bytes(size, pgsize).ok_or(CommandError::Invalid("bitmap page size 0"))?;
        if bitmap.size.get() < need {
            return Err(CommandError::Invalid("bitmap smaller than the range needs"));
        }
        // The reply carries the client's size: bound that, not only what the range needs.
        if bitmap.size.get() > self.shared.config.max_bitmap_size {
            return Err(CommandError::TooLarge("dirty bitmap past max_bitmap_size"));
        }
        let dirty = match container.dirty_page_size() {
            // Container-level tracking: its page size, and the removed mappings' own bits.
            Some(tracking) if pgsize != tracking => {
                return Err(vdma::Error::BadPageSize { page_size: pgsize }.into());
            }
            Some(_) => container.unmap_dirty(iova, size)?.1,
            // Device-level logging (DMA_LOGGING_START): the log is kept by IOVA and outlives
            // the mapping, so unmap first (after that no write can land in the range), then
            // read and clear the range's bits at the client's page size.
            None if self.handle.dma_logging_page_size().is_some() => {
                container.unmap(iova, size)?;
                self.handle.dma_logging_report(iova, size, pgsize)?
            }
            None => return Err(vdma::Error::NotTracking.into()),
        };
        let mut bytes = dirty.to_le_bytes();
        // The client's size (at least what is needed) is what the reply carries.
        let want = usize::try_from(bitmap.size.get())
            .map_err(|_| CommandError::TooLarge("dirty bitmap"))?;
        bytes.resize(want, 0);
        Ok(Reply::new(
            DmaUnmapReply {
                unmap,
                bitmap: Some((bitmap, bytes)),
            }
            .encode(),
        ))
    }

    fn check_region_index(&self, index: u32) -> Result<(), CommandError> {
        if index >= self.device().description().num_regions {
            return Err(CommandError::Invalid("no such region"));
        }
        Ok(())
    }

    fn check_irq_index(&self, index: u32) -> Result<(), CommandError> {
        if index >= self.device().description().num_irqs {
            return Err(CommandError::Invalid("no such interrupt type"));
        }
        Ok(())
    }

    /// Checks that `[offset, offset + len)` lies inside region `index`, which allows `needs`
    /// (READ or WRITE).
    fn check_region_access(
        &self,
        index: u32,
        offset: u64,
        len: u64,
        needs: u32,
    ) -> Result<(), CommandError> {
        self.check_region_index(index)?;
        let region = self.device().region(index)?;
        if region.flags & needs == 0 {
            return Err(CommandError::Invalid(
                "the region does not allow this access",
            ));
        }
        let end = offset
            .checked_add(len)
            .ok_or(CommandError::Invalid("access past 2^64"))?;
        if end > region.size {
            return Err(CommandError::Invalid("access past the end of the region"));
        }
        Ok(())
    }

    /// DEVICE_GET_REGION_INFO: cut to the client's argsz exactly as the protocol encodes it;
    /// the region's file goes with every reply of a mappable region.
    fn region_info(&self, info: &RegionInfo) -> Result<Reply, CommandError> {
        let index = info.index.get();
        self.check_region_index(index)?;
        let region = self.device().region(index)?;
        let mut flags = region.flags & (REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE);
        let mut caps = Vec::new();
        let (offset, fd) = match region.mmap {
            Some(mmap) => {
                flags |= REGION_INFO_FLAG_MMAP;
                if !mmap.sparse.is_empty() {
                    caps.push(RegionCap::SparseMmap(mmap.sparse));
                }
                (mmap.offset, Some(mmap.fd))
            }
            None => (0, None),
        };
        if let Some((kind, subtype)) = region.region_type {
            caps.push(RegionCap::Type { kind, subtype });
        }
        let reply = RegionInfoReply {
            argsz: 0,
            flags,
            index,
            size: region.size,
            offset,
            caps,
        };
        Ok(Reply {
            payload: reply.encode(info.argsz.get()),
            fd,
        })
    }

    /// DEVICE_GET_REGION_IO_FDS: this server offers none.
    fn region_io_fds(&self, req: &RegionIoFds) -> Result<Reply, CommandError> {
        let index = req.index.get();
        self.check_region_index(index)?;
        let reply = RegionIoFdsReply {
            index,
            sub_regions: Vec::new(),
        };
        Ok(Reply::new(reply.encode(req.argsz.get())))
    }

    /// DEVICE_SET_IRQS, checked against the interrupt type's vectors.
    fn set_irqs(&self, set: &SetIrqs<'_>, fds: Vec<OwnedFd>) -> Result<Reply, CommandError> {
        let (index, start, count) = (
            set.set.index.get(),
            set.set.start.get(),
            set.set.count.get(),
        );
        self.check_irq_index(index)?;
        let irq = self.device().irq_info(index)?;
        let data = match set.data {
            crate::protocol::IrqData::None => IrqSetData::None,
            crate::protocol::IrqData::Bool(b) => IrqSetData::Bool(b),
            crate::protocol::IrqData::EventFds { assign: true } => IrqSetData::EventFds(fds),
            crate::protocol::IrqData::EventFds { assign: false } => IrqSetData::ClearEventFds,
        };
        if count == 0 {
            if !matches!(data, IrqSetData::None) || start != 0 {
                return Err(CommandError::Invalid(
                    "count 0 only disables a whole type (DATA_NONE, start 0)",
                ));
            }
        } else {
            let end = start
                .checked_add(count)
                .ok_or(CommandError::Invalid("vectors past 2^32"))?;
            if end > irq.count {
                return Err(CommandError::Invalid(
                    "vectors past the interrupt type's count",
                ));
            }
        }
        self.device().set_irqs(IrqRequest {
            index,
            start,
            count,
            action: set.action,
            data,
        })?;
        Ok(Reply::empty())
    }

    /// REGION_READ: the data read.
    fn region_read(&self, access: &RegionAccess) -> Result<Reply, CommandError> {
        let (index, offset, count) = (access.region.get(), access.offset.get(), access.count.get());
        self.check_region_access(index, offset, u64::from(count), REGION_INFO_FLAG_READ)?;
        let mut buf = vec![0u8; count as usize];
        if !buf.is_empty() {
            self.device().region_read(index, offset, &mut buf)?;
        }
        Ok(Reply::new(access.encode_with_data(&buf)))
    }

    /// REGION_WRITE_MULTI: the writes in order; the first failure stops them.
    fn region_write_multi(&self, writes: &[WriteOne]) -> Result<Reply, CommandError> {
        for w in writes {
            let (index, offset, data) = (w.region.get(), w.offset.get(), w.bytes());
            self.check_region_access(index, offset, data.len() as u64, REGION_INFO_FLAG_WRITE)?;
            if !data.is_empty() {
                self.device().region_write(index, offset, data)?;
            }
        }
        Ok(Reply::new(
            WriteMultiCount {
                wr_cnt: U64::new(writes.len() as u64),
            }
            .as_bytes()
            .to_vec(),
        ))
    }

    /// DEVICE_FEATURE: DMA logging through the device's handle; migration is not supported.
    fn feature(&self, feature: &DeviceFeatureRequest<'_>) -> Result<Reply, CommandError> {
        let flags = feature.flags;
        match feature.request {
            FeatureRequest::Probe { feature, get, set } => {
                let supported = match feature {
                    FEATURE_DMA_LOGGING_START | FEATURE_DMA_LOGGING_STOP => !get,
                    FEATURE_DMA_LOGGING_REPORT => !set,
                    _ => false,
                };
                if !supported {
                    return Err(CommandError::NotSupported("feature"));
                }
                Ok(Reply::new(encode_feature(flags, &[])))
            }
            FeatureRequest::GetMigration
            | FeatureRequest::GetMigDeviceState
            | FeatureRequest::SetMigDeviceState(_) => Err(CommandError::NotSupported("migration")),
            FeatureRequest::DmaLoggingStart { page_size, ranges } => {
                let mut list: Vec<(Iova, u64)> = ranges
                    .iter()
                    .map(|r| (Iova(r.iova.get()), r.length.get()))
                    .collect();
                if list.is_empty() {
                    list = self.mapped_ranges();
                }
                // The bitmap memory the log would hold (an invalid page size is the core's
                // EINVAL, below).
                let bytes = list.iter().fold(0u64, |sum, &(_, length)| {
                    sum.saturating_add(dirty_bitmap_bytes(length, page_size).unwrap_or(0))
                });
                if bytes > self.shared.config.max_dma_log_bytes {
                    return Err(CommandError::TooLarge("DMA log past max_dma_log_bytes"));
                }
                self.handle.dma_logging_start(&list, page_size)?;
                Ok(Reply::new(encode_feature(flags, &[])))
            }
            FeatureRequest::DmaLoggingStop => {
                self.handle.dma_logging_stop()?;
                Ok(Reply::new(encode_feature(flags, &[])))
            }
            FeatureRequest::DmaLoggingReport {
                iova,
                length,
                page_size,
            } => {
                let need = dirty_bitmap_bytes(length, page_size)
                    .ok_or(CommandError::Invalid("page size 0"))?;
                if need > self.shared.config.max_bitmap_size {
                    return Err(CommandError::TooLarge("dirty bitmap past max_bitmap_size"));
                }
                let bitmap = self
                    .handle
                    .dma_logging_report(Iova(iova), length, page_size)?;
                let mut data = crate::protocol::DmaLoggingReport {
                    iova: U64::new(iova),
                    length: U64::new(length),
                    page_size: U64::new(page_size),
                }
                .as_bytes()
                .to_vec();
                let mut bits = bitmap.to_le_bytes();
                bits.resize(need as usize, 0);
                data.extend_from_slice(&bits);
                Ok(Reply::new(encode_feature(flags, &data)))
            }
        }
    }

    /// The mapped IOVA, adjacent mappings joined: what "log all memory" (no ranges) covers.
    fn mapped_ranges(&self) -> Vec<(Iova, u64)> {
        let mut out: Vec<(Iova, u64)> = Vec::new();
        for m in self.shared.container.mappings() {
            match out.last_mut() {
                Some((start, len))
                    if start.0.checked_add(*len) == Some(m.iova.0)
                        && len.checked_add(m.size).is_some() =>
                {
                    *len += m.size;
                }
                _ => out.push((m.iova, m.size)),
            }
        }
        out
    }
}
