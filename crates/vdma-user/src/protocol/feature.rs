//! DEVICE_FEATURE: migration (MIGRATION, MIG_DEVICE_STATE) and device DMA logging
//! (DMA_LOGGING_START/STOP/REPORT), after Linux's `VFIO_DEVICE_FEATURE`.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::protocol::command::Command;
use crate::protocol::error::ProtocolError;
use crate::protocol::wire::{argsz_at_least, expect_len, fds_at_most, known_bits, read_prefix};

/// The feature index bits of the flags.
pub const FEATURE_MASK: u32 = 0xffff;
/// Get the feature's data.
pub const FEATURE_GET: u32 = 1 << 16;
/// Set the feature from the data.
pub const FEATURE_SET: u32 = 1 << 17;
/// Probe for support (of GET and/or SET if given too).
pub const FEATURE_PROBE: u32 = 1 << 18;

/// Feature: migration support (GET: [`FeatureMigration`]).
pub const FEATURE_MIGRATION: u16 = 1;
/// Feature: the migration state (GET/SET: [`MigDeviceState`]).
pub const FEATURE_MIG_DEVICE_STATE: u16 = 2;
/// Feature: start DMA logging (SET: [`DmaLoggingControl`] and ranges).
pub const FEATURE_DMA_LOGGING_START: u16 = 6;
/// Feature: stop DMA logging (SET).
pub const FEATURE_DMA_LOGGING_STOP: u16 = 7;
/// Feature: report and clear logged pages (GET: [`DmaLoggingReport`], bitmap in the reply).
pub const FEATURE_DMA_LOGGING_REPORT: u16 = 8;

/// Migration flag: STOP_COPY supported.
pub const MIGRATION_STOP_COPY: u64 = 1 << 0;
/// Migration flag: P2P states supported.
pub const MIGRATION_P2P: u64 = 1 << 1;
/// Migration flag: PRE_COPY supported.
pub const MIGRATION_PRE_COPY: u64 = 1 << 2;

/// DEVICE_FEATURE's fixed payload (8 bytes); the feature's data follows.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct DeviceFeature {
    /// Request: the largest reply payload taken. Reply: the reply's size.
    pub argsz: U32,
    /// Feature index (bits 0-15), GET, SET, PROBE.
    pub flags: U32,
}

/// MIGRATION's data (8 bytes).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct FeatureMigration {
    /// `MIGRATION_*`.
    pub flags: U64,
}

/// MIG_DEVICE_STATE's data (8 bytes).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct MigDeviceState {
    /// A [`DeviceState`] number.
    pub device_state: U32,
    /// Unused in vfio-user (migration data goes through MIG_DATA_READ/WRITE).
    pub data_fd: U32,
}

/// DMA_LOGGING_START's data before the ranges (16 bytes).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct DmaLoggingControl {
    /// Tracking granularity asked for.
    pub page_size: U64,
    /// Number of ranges that follow (0: all of memory).
    pub num_ranges: U32,
    /// Reserved.
    pub reserved: U32,
}

/// One range to log (16 bytes).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct DmaLoggingRange {
    /// Start.
    pub iova: U64,
    /// Length.
    pub length: U64,
}

impl DmaLoggingRange {
    /// A range.
    pub fn new(iova: u64, length: u64) -> DmaLoggingRange {
        DmaLoggingRange {
            iova: U64::new(iova),
            length: U64::new(length),
        }
    }
}

/// DMA_LOGGING_REPORT's data (24 bytes); in the reply the bitmap follows.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct DmaLoggingReport {
    /// Start of the range.
    pub iova: U64,
    /// Its length.
    pub length: U64,
    /// Bytes of IOVA per bit.
    pub page_size: U64,
}

/// The migration states (Linux's `enum vfio_device_mig_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DeviceState {
    /// Failed; needs a reset.
    Error = 0,
    /// Stopped.
    Stop = 1,
    /// Running.
    Running = 2,
    /// Stopped, state being read out.
    StopCopy = 3,
    /// Stopped, state being loaded.
    Resuming = 4,
    /// Not used in vfio-user.
    RunningP2p = 5,
    /// Running, state being read out.
    PreCopy = 6,
    /// Not used in vfio-user.
    PreCopyP2p = 7,
}

impl DeviceState {
    /// The state with this number.
    pub fn from_number(n: u32) -> Option<DeviceState> {
        Some(match n {
            0 => DeviceState::Error,
            1 => DeviceState::Stop,
            2 => DeviceState::Running,
            3 => DeviceState::StopCopy,
            4 => DeviceState::Resuming,
            5 => DeviceState::RunningP2p,
            6 => DeviceState::PreCopy,
            7 => DeviceState::PreCopyP2p,
            _ => return None,
        })
    }
}

/// Bytes of dirty bitmap for `length` bytes at `page_size` per bit, in whole u64 words; `None`
/// for a page size of 0. Computed in 64 bits throughout: right for any length and ratio.
pub fn dirty_bitmap_bytes(length: u64, page_size: u64) -> Option<u64> {
    if page_size == 0 {
        return None;
    }
    let pages = length / page_size + u64::from(length % page_size != 0);
    Some(pages.div_ceil(64) * 8)
}

/// What a DEVICE_FEATURE request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureRequest<'a> {
    /// PROBE of any feature, for GET and/or SET.
    Probe {
        /// The feature index.
        feature: u16,
        /// GET was given with PROBE.
        get: bool,
        /// SET was given with PROBE.
        set: bool,
    },
    /// GET MIGRATION.
    GetMigration,
    /// GET MIG_DEVICE_STATE.
    GetMigDeviceState,
    /// SET MIG_DEVICE_STATE.
    SetMigDeviceState(DeviceState),
    /// SET DMA_LOGGING_START.
    DmaLoggingStart {
        /// The page size asked for.
        page_size: u64,
        /// The ranges (none: all memory).
        ranges: &'a [DmaLoggingRange],
    },
    /// SET DMA_LOGGING_STOP.
    DmaLoggingStop,
    /// GET DMA_LOGGING_REPORT.
    DmaLoggingReport {
        /// Start of the range.
        iova: u64,
        /// Its length.
        length: u64,
        /// Bytes per bit.
        page_size: u64,
    },
}

/// A decoded DEVICE_FEATURE request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceFeatureRequest<'a> {
    /// The largest reply payload taken.
    pub argsz: u32,
    /// The flags as sent.
    pub flags: u32,
    /// What is asked.
    pub request: FeatureRequest<'a>,
}

impl<'a> DeviceFeatureRequest<'a> {
    /// Decodes and checks a request: flags with no unknown bits and a valid operation (PROBE,
    /// possibly with GET/SET; or GET or SET alone); the data each feature and operation takes
    /// (GET data is an output buffer and ignored, except REPORT's range); `argsz` large enough
    /// for the reply (for REPORT, the bitmap too). An operation a feature lacks, or an unknown
    /// feature, is [`ProtocolError::UnsupportedFeature`] (ENOTSUP). No descriptor.
    pub fn decode(
        payload: &'a [u8],
        nfds: usize,
    ) -> Result<DeviceFeatureRequest<'a>, ProtocolError> {
        let c = Command::DeviceFeature;
        let (head, data) = read_prefix::<DeviceFeature>(c, payload)?;
        let (argsz, flags) = (head.argsz.get(), head.flags.get());
        known_bits(
            c,
            "flags",
            u64::from(flags),
            u64::from(FEATURE_MASK | FEATURE_GET | FEATURE_SET | FEATURE_PROBE),
        )?;
        fds_at_most(c, nfds, 0, "DEVICE_FEATURE carries none")?;
        let feature = (flags & FEATURE_MASK) as u16;
        let unsupported = ProtocolError::UnsupportedFeature { feature, flags };
        let fixed = size_of::<DeviceFeature>() as u64;
        let whole = payload.len() as u64;
        let request = match flags & !FEATURE_MASK {
            ops if ops & FEATURE_PROBE != 0 => {
                argsz_at_least(c, argsz, whole)?;
                FeatureRequest::Probe {
                    feature,
                    get: ops & FEATURE_GET != 0,
                    set: ops & FEATURE_SET != 0,
                }
            }
            FEATURE_GET => match feature {
                FEATURE_MIGRATION => {
                    argsz_at_least(c, argsz, fixed + size_of::<FeatureMigration>() as u64)?;
                    FeatureRequest::GetMigration
                }
                FEATURE_MIG_DEVICE_STATE => {
                    argsz_at_least(c, argsz, fixed + size_of::<MigDeviceState>() as u64)?;
                    FeatureRequest::GetMigDeviceState
                }
                FEATURE_DMA_LOGGING_REPORT => {
                    let (r, _) = read_prefix::<DmaLoggingReport>(c, data)?;
                    let bitmap = dirty_bitmap_bytes(r.length.get(), r.page_size.get()).ok_or(
                        ProtocolError::InvalidField {
                            command: c,
                            field: "page_size",
                            reason: "zero",
                        },
                    )?;
                    let need =
                        (fixed + size_of::<DmaLoggingReport>() as u64).saturating_add(bitmap);
                    argsz_at_least(c, argsz, need)?;
                    FeatureRequest::DmaLoggingReport {
                        iova: r.iova.get(),
                        length: r.length.get(),
                        page_size: r.page_size.get(),
                    }
                }
                _ => return Err(unsupported),
            },
            FEATURE_SET => {
                argsz_at_least(c, argsz, whole)?;
                match feature {
                    FEATURE_MIG_DEVICE_STATE => {
                        let (s, _) = read_prefix::<MigDeviceState>(c, data)?;
                        expect_len(c, payload, fixed + size_of::<MigDeviceState>() as u64)?;
                        let state = DeviceState::from_number(s.device_state.get()).ok_or(
                            ProtocolError::InvalidField {
                                command: c,
                                field: "device_state",
                                reason: "not a migration state",
                            },
                        )?;
                        FeatureRequest::SetMigDeviceState(state)
                    }
                    FEATURE_DMA_LOGGING_START => {
                        let (ctl, ranges) = read_prefix::<DmaLoggingControl>(c, data)?;
                        let n = u64::from(ctl.num_ranges.get());
                        let need = fixed
                            + size_of::<DmaLoggingControl>() as u64
                            + n * size_of::<DmaLoggingRange>() as u64;
                        expect_len(c, payload, need)?;
                        let ranges = <[DmaLoggingRange]>::ref_from_bytes(ranges).map_err(|_| {
                            ProtocolError::InvalidField {
                                command: c,
                                field: "ranges",
                                reason: "misshapen",
                            }
                        })?;
                        FeatureRequest::DmaLoggingStart {
                            page_size: ctl.page_size.get(),
                            ranges,
                        }
                    }
                    FEATURE_DMA_LOGGING_STOP => FeatureRequest::DmaLoggingStop,
                    _ => return Err(unsupported),
                }
            }
            _ => {
                return Err(ProtocolError::InvalidField {
                    command: c,
                    field: "flags",
                    reason: "neither PROBE, GET nor SET alone",
                })
            }
        };
        Ok(DeviceFeatureRequest {
            argsz,
            flags,
            request,
        })
    }
}

/// A DEVICE_FEATURE payload (request or reply): the fixed part with `argsz` set to the
/// payload's length, then `data`.
pub fn encode_feature(flags: u32, data: &[u8]) -> Vec<u8> {
    let mut out = DeviceFeature {
        argsz: U32::new((size_of::<DeviceFeature>() + data.len()) as u32),
        flags: U32::new(flags),
    }
    .as_bytes()
    .to_vec();
    out.extend_from_slice(data);
    out
}

/// A decoded DEVICE_FEATURE reply: the fixed part and the data, to be read as the request
/// asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceFeatureReply<'a> {
    /// The reply's argsz.
    pub argsz: u32,
    /// The reply's flags.
    pub flags: u32,
    /// The data after the fixed part.
    pub data: &'a [u8],
}

impl<'a> DeviceFeatureReply<'a> {
    /// Decodes a reply (no descriptor).
    pub fn decode(payload: &'a [u8], nfds: usize) -> Result<DeviceFeatureReply<'a>, ProtocolError> {
        let c = Command::DeviceFeature;
        let (head, data) = read_prefix::<DeviceFeature>(c, payload)?;
        fds_at_most(c, nfds, 0, "a DEVICE_FEATURE reply carries none")?;
        Ok(DeviceFeatureReply {
            argsz: head.argsz.get(),
            flags: head.flags.get(),
            data,
        })
    }

    /// The data as MIGRATION's.
    pub fn migration(&self) -> Result<FeatureMigration, ProtocolError> {
        let c = Command::DeviceFeature;
        let (m, _) = read_prefix::<FeatureMigration>(c, self.data)?;
        Ok(m)
    }

    /// The data as MIG_DEVICE_STATE's.
    pub fn mig_device_state(&self) -> Result<MigDeviceState, ProtocolError> {
        let c = Command::DeviceFeature;
        let (s, _) = read_prefix::<MigDeviceState>(c, self.data)?;
        Ok(s)
    }

    /// The data as DMA_LOGGING_REPORT's: the range, and its bitmap, exactly as long as the
    /// range and page size make it.
    pub fn logging_report(&self) -> Result<(DmaLoggingReport, &'a [u8]), ProtocolError> {
        let c = Command::DeviceFeature;
        let (r, bitmap) = read_prefix::<DmaLoggingReport>(c, self.data)?;
        let want = dirty_bitmap_bytes(r.length.get(), r.page_size.get()).ok_or(
            ProtocolError::InvalidField {
                command: c,
                field: "page_size",
                reason: "zero",
            },
        )?;
        expect_len(c, bitmap, want)?;
        Ok((r, bitmap))
    }
}
