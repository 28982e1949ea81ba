//! DEVICE_GET_IRQ_INFO and DEVICE_SET_IRQS: interrupt types, and how the server signals them
//! (eventfds), masks, unmasks or triggers them.

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::protocol::command::Command;
use crate::protocol::error::ProtocolError;
use crate::protocol::wire::{
    argsz_at_least, argsz_within, expect_len, fds_at_most, known_bits, read_prefix,
};

/// PCI interrupt index: INTx.
pub const PCI_INTX_IRQ_INDEX: u32 = 0;
/// PCI interrupt index: MSI.
pub const PCI_MSI_IRQ_INDEX: u32 = 1;
/// PCI interrupt index: MSI-X.
pub const PCI_MSIX_IRQ_INDEX: u32 = 2;
/// PCI interrupt index: error notification.
pub const PCI_ERR_IRQ_INDEX: u32 = 3;
/// PCI interrupt index: device request.
pub const PCI_REQ_IRQ_INDEX: u32 = 4;

/// IRQ info flag: can signal through an eventfd.
pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// IRQ info flag: supports MASK and UNMASK.
pub const IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// IRQ info flag: masks itself when triggered.
pub const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// IRQ info flag: vectors are set up as a set.
pub const IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// SET_IRQS data type: no data, act unconditionally.
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// SET_IRQS data type: one bool byte per vector follows.
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// SET_IRQS data type: eventfds come with the message (none: de-assign).
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// SET_IRQS action: mask.
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// SET_IRQS action: unmask.
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// SET_IRQS action: trigger.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// The data-type bits.
pub const IRQ_SET_DATA_TYPE_MASK: u32 =
    IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD;
/// The action bits.
pub const IRQ_SET_ACTION_TYPE_MASK: u32 =
    IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER;

/// DEVICE_GET_IRQ_INFO's payload, request and reply (16 bytes).
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
pub struct IrqInfo {
    /// Request: the largest reply taken. Reply: 16.
    pub argsz: U32,
    /// `IRQ_INFO_*` (reply).
    pub flags: U32,
    /// The interrupt type's index.
    pub index: U32,
    /// Number of vectors of that type (reply).
    pub count: U32,
}

impl IrqInfo {
    /// A request for interrupt type `index`.
    pub fn request(index: u32) -> IrqInfo {
        IrqInfo {
            argsz: U32::new(size_of::<IrqInfo>() as u32),
            index: U32::new(index),
            ..IrqInfo::default()
        }
    }

    /// A reply.
    pub fn reply(index: u32, flags: u32, count: u32) -> IrqInfo {
        IrqInfo {
            argsz: U32::new(size_of::<IrqInfo>() as u32),
            flags: U32::new(flags),
            index: U32::new(index),
            count: U32::new(count),
        }
    }

    /// Decodes a request (argsz takes the 16-byte reply; no descriptor; output fields and
    /// trailing bytes ignored) or a reply.
    pub fn decode(payload: &[u8], nfds: usize) -> Result<IrqInfo, ProtocolError> {
        let c = Command::DeviceGetIrqInfo;
        let (info, _) = read_prefix::<IrqInfo>(c, payload)?;
        argsz_at_least(c, info.argsz.get(), size_of::<IrqInfo>() as u64)?;
        fds_at_most(c, nfds, 0, "DEVICE_GET_IRQ_INFO carries none")?;
        Ok(info)
    }
}

/// DEVICE_SET_IRQS's fixed payload (20 bytes, Linux's `struct vfio_irq_set` without data).
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
pub struct IrqSet {
    /// The request's own size, data included (no reply payload).
    pub argsz: U32,
    /// One data type and one action.
    pub flags: U32,
    /// The interrupt type's index.
    pub index: U32,
    /// First vector.
    pub start: U32,
    /// Number of vectors.
    pub count: U32,
}

/// What SET_IRQS does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask the vectors.
    Mask,
    /// Unmask the vectors.
    Unmask,
    /// Trigger the vectors (or, with eventfds: signal them when the device interrupts).
    Trigger,
}

/// The data a SET_IRQS request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqData<'a> {
    /// None: act on every vector of the range. Count 0 with start 0 disables the type.
    None,
    /// One byte per vector: act where it is non-zero.
    Bool(&'a [u8]),
    /// Eventfds: `count` of them came with the message, one per vector; none at all means
    /// de-assign the vectors.
    EventFds {
        /// Whether the descriptors came (false: de-assign).
        assign: bool,
    },
}

/// A decoded DEVICE_SET_IRQS request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetIrqs<'a> {
    /// The fixed part.
    pub set: IrqSet,
    /// The action.
    pub action: IrqAction,
    /// The data.
    pub data: IrqData<'a>,
}

impl IrqSet {
    /// A request without data bytes (`flags` picks the data type and action).
    pub fn new(flags: u32, index: u32, start: u32, count: u32) -> IrqSet {
        IrqSet {
            argsz: U32::new(size_of::<IrqSet>() as u32),
            flags: U32::new(flags),
            index: U32::new(index),
            start: U32::new(start),
            count: U32::new(count),
        }
    }
}

impl<'a> SetIrqs<'a> {
    /// Decodes and checks a SET_IRQS request that came with `nfds` descriptors: known flags,
    /// exactly one data type and one action; `argsz` at least 20 and within the payload;
    /// BOOL data is exactly `count` bytes; NONE carries none; EVENTFD carries none (QEMU sends the
    /// eventfds only as descriptors, argsz 20) or the ioctl's `count` fd numbers, ignored; EVENTFD comes with 0 or exactly `count`
    /// descriptors, the other types with none.
    pub fn decode(payload: &'a [u8], nfds: usize) -> Result<SetIrqs<'a>, ProtocolError> {
        let c = Command::DeviceSetIrqs;
        let (set, data) = read_prefix::<IrqSet>(c, payload)?;
        let fixed = size_of::<IrqSet>() as u64;
        argsz_at_least(c, set.argsz.get(), fixed)?;
        argsz_within(c, set.argsz.get(), payload)?;
        let f = set.flags.get();
        known_bits(
            c,
            "flags",
            u64::from(f),
            u64::from(IRQ_SET_DATA_TYPE_MASK | IRQ_SET_ACTION_TYPE_MASK),
        )?;
        let action = match f & IRQ_SET_ACTION_TYPE_MASK {
            IRQ_SET_ACTION_MASK => IrqAction::Mask,
            IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
            IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger,
            _ => {
                return Err(ProtocolError::InvalidField {
                    command: c,
                    field: "flags",
                    reason: "not exactly one action",
                })
            }
        };
        let count = set.count.get();
        let data = match f & IRQ_SET_DATA_TYPE_MASK {
            IRQ_SET_DATA_NONE => {
                expect_len(c, payload, fixed)?;
                fds_at_most(c, nfds, 0, "DATA_NONE carries none")?;
                IrqData::None
            }
            IRQ_SET_DATA_BOOL => {
                expect_len(c, payload, fixed + u64::from(count))?;
                fds_at_most(c, nfds, 0, "DATA_BOOL carries none")?;
                IrqData::Bool(data)
            }
            IRQ_SET_DATA_EVENTFD => {
                // The ioctl's array of fd numbers has no meaning in another process; QEMU
                // leaves it out. Tolerate a client that sends it, ignored.
                if payload.len() as u64 != fixed {
                    expect_len(c, payload, fixed + 4 * u64::from(count))?;
                }
                if nfds != 0 && nfds != count as usize {
                    return Err(ProtocolError::FdCount {
                        command: c,
                        got: nfds,
                        allowed: "DATA_EVENTFD carries 0 or exactly count",
                    });
                }
                IrqData::EventFds { assign: nfds != 0 }
            }
            _ => {
                return Err(ProtocolError::InvalidField {
                    command: c,
                    field: "flags",
                    reason: "not exactly one data type",
                })
            }
        };
        Ok(SetIrqs { set, action, data })
    }

    /// The request's payload (argsz set to its length).
    pub fn encode(&self) -> Vec<u8> {
        let mut set = self.set;
        let bools: &[u8] = match self.data {
            IrqData::Bool(b) => b,
            _ => &[],
        };
        set.argsz = U32::new((size_of::<IrqSet>() + bools.len()) as u32);
        let mut out = set.as_bytes().to_vec();
        out.extend_from_slice(bools);
        out
    }
}
