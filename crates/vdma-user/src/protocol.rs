//! The vfio-user protocol: the message header, every command's payload as typed wire
//! structures, and their checked decoding and exact encoding.
//!
//! All structures are little-endian with no padding (zerocopy's `little_endian` integers, so
//! alignment is 1): a structure's bytes are the wire bytes. Decoding never reads a field
//! before the payload is known to hold it, and every failure is a [`ProtocolError`] with the
//! errno the error reply carries.
//!
//! ```
//! use vdma_user::protocol::{
//!     Command, DecodeConfig, DmaMap, MessageBuilder, Request,
//! };
//! use vdma::Prot;
//!
//! let bytes = MessageBuilder::request(1, Command::DmaMap)
//!     .push(&DmaMap::new(0x10_0000, 0x20_0000, 0, Prot::READ_WRITE))
//!     .finish()?;
//! let (header, request) = Request::decode_message(&bytes, 1, &DecodeConfig::default())?;
//! assert_eq!(header.msg_id(), 1);
//! let Request::DmaMap(map) = request else { panic!() };
//! assert_eq!((map.addr.get(), map.prot()), (0x10_0000, Prot::READ_WRITE));
//! # Ok::<(), vdma_user::protocol::ProtocolError>(())
//! ```

mod command;
mod device_info;
mod dma_access;
mod dma_map;
mod error;
mod feature;
mod header;
mod irq;
mod mig_data;
mod region_access;
mod region_info;
mod region_io_fds;
mod request;
mod version;
mod wire;

pub use command::{Command, Sender};
pub use device_info::{DeviceInfo, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET};
pub use dma_access::{DmaAccess, DmaAccessQemu, DmaAccessSpec, DmaLayout, DmaLayoutChoice};
pub use dma_map::{
    DmaBitmap, DmaMap, DmaUnmap, DmaUnmapReply, DmaUnmapRequest, DMA_MAP_FLAG_READ,
    DMA_MAP_FLAG_WRITE, DMA_MAP_KNOWN_FLAGS, DMA_UNMAP_FLAG_ALL, DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
    DMA_UNMAP_KNOWN_FLAGS,
};
pub use error::ProtocolError;
pub use feature::{
    dirty_bitmap_bytes, encode_feature, DeviceFeature, DeviceFeatureReply, DeviceFeatureRequest,
    DeviceState, DmaLoggingControl, DmaLoggingRange, DmaLoggingReport, FeatureMigration,
    FeatureRequest, MigDeviceState, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START,
    FEATURE_DMA_LOGGING_STOP, FEATURE_GET, FEATURE_MASK, FEATURE_MIGRATION,
    FEATURE_MIG_DEVICE_STATE, FEATURE_PROBE, FEATURE_SET, MIGRATION_P2P, MIGRATION_PRE_COPY,
    MIGRATION_STOP_COPY,
};
pub use header::{flags, Header, MessageKind};
pub use irq::{
    IrqAction, IrqData, IrqInfo, IrqSet, SetIrqs, IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD,
    IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE, IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER,
    IRQ_SET_ACTION_TYPE_MASK, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD,
    IRQ_SET_DATA_NONE, IRQ_SET_DATA_TYPE_MASK, PCI_ERR_IRQ_INDEX, PCI_INTX_IRQ_INDEX,
    PCI_MSIX_IRQ_INDEX, PCI_MSI_IRQ_INDEX, PCI_REQ_IRQ_INDEX,
};
pub use mig_data::MigData;
pub use region_access::{
    decode_write_multi, encode_write_multi, RegionAccess, WriteMultiCount, WriteOne,
    WRITE_MULTI_DATA,
};
pub use region_info::{
    CapHeader, RegionCap, RegionInfo, RegionInfoReply, RegionTypeCap, SparseMmapArea,
    SparseMmapHeader, REGION_INFO_CAP_SPARSE_MMAP, REGION_INFO_CAP_TYPE, REGION_INFO_FLAG_CAPS,
    REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE,
};
pub use region_io_fds::{
    RegionIoFds, RegionIoFdsReply, SubRegionIoFd, IO_FD_TYPE_IOEVENTFD, IO_FD_TYPE_IOREGIONFD,
};
pub use request::{DecodeConfig, Request};
pub use version::{Capabilities, MigrationCapability, TwinSocket, Version, VersionHeader};
pub use wire::{error_reply, MessageBuilder};
