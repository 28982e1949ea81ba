//! [`ConfigSpace`]: the 256 bytes of a type 0 header with its capability list, and which bits
//! the client may write.
//!
//! Every byte has a write mask (bits a write replaces) and a write-one-to-clear mask (bits a
//! write of 1 clears); everything else is read-only. Applying them byte by byte makes every
//! access width and offset behave the same as whole-register accesses, BAR sizing included: a
//! BAR's mask keeps its size bits and type bits read-only, so writing all ones reads back the
//! size mask with the type bits.

use super::{BarKind, PciLayout};

/// Size of conventional PCI config space.
pub(crate) const CONFIG_SIZE: usize = 256;

/// Register offsets in the type 0 header.
pub(crate) mod reg {
    /// Vendor id.
    pub const VENDOR_ID: usize = 0x00;
    /// Device id.
    pub const DEVICE_ID: usize = 0x02;
    /// Command.
    pub const COMMAND: usize = 0x04;
    /// Status.
    pub const STATUS: usize = 0x06;
    /// Revision id.
    pub const REVISION: usize = 0x08;
    /// Programming interface, sub-class, base class.
    pub const CLASS: usize = 0x09;
    /// Cache line size.
    pub const CACHE_LINE: usize = 0x0c;
    /// Latency timer.
    pub const LATENCY: usize = 0x0d;
    /// Header type.
    pub const HEADER_TYPE: usize = 0x0e;
    /// BAR 0; BAR n is at `BAR0 + 4 * n`.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor id.
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem id.
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Capabilities pointer.
    pub const CAP_PTR: usize = 0x34;
    /// Interrupt line.
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin.
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Command bits the client may write: I/O space, memory space, bus master, parity error
/// response, SERR# enable, INTx disable.
pub(crate) const COMMAND_RW: u16 = 0x0001 | 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400;
/// Command: INTx disable.
pub(crate) const COMMAND_INTX_DISABLE: u16 = 0x0400;
/// Status: interrupt status (INTx asserted).
pub(crate) const STATUS_INTERRUPT: u16 = 0x0008;
/// Status: capabilities list.
pub(crate) const STATUS_CAP_LIST: u16 = 0x0010;
/// Status bits cleared by writing 1: master data parity error, signaled and received target
/// abort, received master abort, signaled system error, detected parity error.
pub(crate) const STATUS_RW1C: u16 = 0x0100 | 0x0800 | 0x1000 | 0x2000 | 0x4000 | 0x8000;

/// Capability id: MSI.
pub(crate) const CAP_ID_MSI: u8 = 0x05;
/// Capability id: MSI-X.
pub(crate) const CAP_ID_MSIX: u8 = 0x11;
/// Where the first capability goes.
const FIRST_CAP: usize = 0x40;

/// MSI capability: control register (offset in the capability).
pub(crate) const MSI_CONTROL: usize = 2;
/// MSI capability: message address, low dword.
pub(crate) const MSI_ADDRESS_LO: usize = 4;
/// MSI capability: message address, high dword.
pub(crate) const MSI_ADDRESS_HI: usize = 8;
/// MSI capability: message data.
pub(crate) const MSI_DATA: usize = 0x0c;
/// MSI capability: mask bits.
pub(crate) const MSI_MASK: usize = 0x10;
/// MSI capability: pending bits.
pub(crate) const MSI_PENDING: usize = 0x14;
/// Size of the MSI capability (64-bit address, per-vector masking).
pub(crate) const MSI_CAP_SIZE: usize = 0x18;
/// MSI control: enable.
pub(crate) const MSI_ENABLE: u16 = 0x0001;
/// MSI control: multiple message enable (RW field).
const MSI_MME: u16 = 0x0070;
/// MSI control: 64-bit address capable.
pub(crate) const MSI_64BIT: u16 = 0x0080;
/// MSI control: per-vector masking capable.
pub(crate) const MSI_PVM: u16 = 0x0100;

/// MSI-X capability: control register.
pub(crate) const MSIX_CONTROL: usize = 2;
/// MSI-X capability: table offset and BIR.
pub(crate) const MSIX_TABLE: usize = 4;
/// MSI-X capability: PBA offset and BIR.
pub(crate) const MSIX_PBA: usize = 8;
/// MSI-X control: function mask.
pub(crate) const MSIX_FUNCTION_MASK: u16 = 0x4000;
/// MSI-X control: enable.
pub(crate) const MSIX_ENABLE: u16 = 0x8000;

/// Config space: the current bytes, the bytes after reset, and the write masks.
#[derive(Clone, Debug)]
pub(crate) struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    initial: [u8; CONFIG_SIZE],
    rw: [u8; CONFIG_SIZE],
    w1c: [u8; CONFIG_SIZE],
    msi: Option<usize>,
    msi_vectors: u32,
    msix: Option<usize>,
}

impl ConfigSpace {
    /// The config space of a (validated) layout.
    pub(crate) fn new(layout: &PciLayout) -> ConfigSpace {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SIZE],
            initial: [0; CONFIG_SIZE],
            rw: [0; CONFIG_SIZE],
            w1c: [0; CONFIG_SIZE],
            msi: None,
            msi_vectors: 0,
            msix: None,
        };
        let id = &layout.identity;
        c.set16(reg::VENDOR_ID, id.vendor_id);
        c.set16(reg::DEVICE_ID, id.device_id);
        c.bytes[reg::REVISION] = id.revision;
        c.bytes[reg::CLASS..reg::CLASS + 3].copy_from_slice(&id.class_code.to_le_bytes()[..3]);
        c.bytes[reg::HEADER_TYPE] = 0;
        c.set16(reg::SUBSYSTEM_VENDOR_ID, id.subsystem_vendor_id);
        c.set16(reg::SUBSYSTEM_ID, id.subsystem_id);
        c.rw16(reg::COMMAND, COMMAND_RW);
        c.w1c[reg::STATUS..reg::STATUS + 2].copy_from_slice(&STATUS_RW1C.to_le_bytes());
        c.rw[reg::CACHE_LINE] = 0xff;
        c.rw[reg::LATENCY] = 0xff;
        c.rw[reg::INTERRUPT_LINE] = 0xff;
        c.bytes[reg::INTERRUPT_PIN] = u8::from(layout.intx);
        c.bars(layout);

        // The capability list: MSI, then MSI-X.
        let mut at = FIRST_CAP;
        let mut link = reg::CAP_PTR;
        if let Some(n) = layout.msi_vectors {
            c.bytes[link] = at as u8;
            c.msi(at, n);
            link = at + 1;
            at += MSI_CAP_SIZE;
        }
        if let Some(msix) = &layout.msix {
            c.bytes[link] = at as u8;
            c.msix = Some(at);
            c.bytes[at] = CAP_ID_MSIX;
            c.set16(at + MSIX_CONTROL, msix.vectors - 1);
            c.rw16(at + MSIX_CONTROL, MSIX_ENABLE | MSIX_FUNCTION_MASK);
            c.set32(at + MSIX_TABLE, msix.table_offset | u32::from(msix.bar));
            c.set32(at + MSIX_PBA, msix.pba_offset | u32::from(msix.bar));
        }
        if c.bytes[reg::CAP_PTR] != 0 {
            c.set16(reg::STATUS, STATUS_CAP_LIST);
        }
        c.initial = c.bytes;
        c
    }

    /// BAR registers: the type bits read-only, the address bits above the size writable.
    fn bars(&mut self, layout: &PciLayout) {
        for (slot, bar) in layout.bars.iter().enumerate() {
            let Some(bar) = bar else { continue };
            let at = reg::BAR0 + 4 * slot;
            let size_mask = !(bar.size - 1);
            match bar.kind {
                BarKind::Memory32 { prefetchable } => {
                    self.set32(at, if prefetchable { 0x8 } else { 0 });
                    self.rw32(at, size_mask as u32 & !0xf);
                }
                BarKind::Memory64 { prefetchable } => {
                    self.set32(at, 0x4 | if prefetchable { 0x8 } else { 0 });
                    self.rw32(at, size_mask as u32 & !0xf);
                    self.rw32(at + 4, (size_mask >> 32) as u32);
                }
                BarKind::Io => {
                    self.set32(at, 0x1);
                    self.rw32(at, size_mask as u32 & !0x3);
                }
            }
        }
    }

    /// The MSI capability at `at` with `n` vectors: 64-bit address, per-vector masking.
    fn msi(&mut self, at: usize, n: u8) {
        self.msi = Some(at);
        self.msi_vectors = u32::from(n);
        self.bytes[at] = CAP_ID_MSI;
        let mmc = n.trailing_zeros() as u16;
        self.set16(at + MSI_CONTROL, (mmc << 1) | MSI_64BIT | MSI_PVM);
        self.rw16(at + MSI_CONTROL, MSI_ENABLE | MSI_MME);
        self.rw32(at + MSI_ADDRESS_LO, 0xffff_fffc);
        self.rw32(at + MSI_ADDRESS_HI, 0xffff_ffff);
        self.rw16(at + MSI_DATA, 0xffff);
        self.rw32(at + MSI_MASK, self.msi_vector_bits());
    }

    /// One bit per MSI vector.
    fn msi_vector_bits(&self) -> u32 {
        match self.msi_vectors {
            0 => 0,
            32 => u32::MAX,
            n => (1u32 << n) - 1,
        }
    }

    /// Reads `buf.len()` bytes at `offset` (the caller checked the range).
    pub(crate) fn read(&self, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.bytes[offset..offset + buf.len()]);
    }

    /// Writes `data` at `offset` (the caller checked the range) through the write masks.
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let at = offset + i;
            let (rw, w1c) = (self.rw[at], self.w1c[at]);
            self.bytes[at] = ((self.bytes[at] & !rw) | (value & rw)) & !(value & w1c);
        }
    }

    /// Back to the values after power-on.
    pub(crate) fn reset(&mut self) {
        self.bytes = self.initial;
    }

    /// Sets the status register's error bits among `bits` (the write-1-to-clear ones).
    pub(crate) fn report_status(&mut self, bits: u16) {
        let status = self.get16(reg::STATUS) | (bits & STATUS_RW1C);
        self.set16(reg::STATUS, status);
    }

    /// Whether the command register's INTx disable bit is set.
    pub(crate) fn intx_disabled(&self) -> bool {
        self.get16(reg::COMMAND) & COMMAND_INTX_DISABLE != 0
    }

    /// Whether MSI is enabled in the control register.
    pub(crate) fn msi_enabled(&self) -> bool {
        self.msi
            .is_some_and(|at| self.get16(at + MSI_CONTROL) & MSI_ENABLE != 0)
    }

    /// Whether MSI vector `v` is masked.
    pub(crate) fn msi_masked(&self, v: u32) -> bool {
        self.msi
            .is_some_and(|at| v < 32 && self.get32(at + MSI_MASK) & (1 << v) != 0)
    }

    /// Whether MSI vector `v` is pending.
    pub(crate) fn msi_pending(&self, v: u32) -> bool {
        self.msi
            .is_some_and(|at| v < 32 && self.get32(at + MSI_PENDING) & (1 << v) != 0)
    }

    /// Sets or clears MSI vector `v`'s pending bit (the device's, read-only to the client).
    pub(crate) fn set_msi_pending(&mut self, v: u32, pending: bool) {
        let Some(at) = self.msi else { return };
        if v >= self.msi_vectors {
            return;
        }
        let bits = self.get32(at + MSI_PENDING);
        let bits = if pending {
            bits | (1 << v)
        } else {
            bits & !(1 << v)
        };
        self.set32(at + MSI_PENDING, bits);
    }

    /// Whether MSI-X is enabled in the control register.
    pub(crate) fn msix_enabled(&self) -> bool {
        self.msix
            .is_some_and(|at| self.get16(at + MSIX_CONTROL) & MSIX_ENABLE != 0)
    }

    /// Whether the MSI-X function mask is set.
    pub(crate) fn msix_function_masked(&self) -> bool {
        self.msix
            .is_some_and(|at| self.get16(at + MSIX_CONTROL) & MSIX_FUNCTION_MASK != 0)
    }

    fn get16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    fn get32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[at..at + 4]);
        u32::from_le_bytes(b)
    }

    fn set16(&mut self, at: usize, value: u16) {
        self.bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn set32(&mut self, at: usize, value: u32) {
        self.bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn rw16(&mut self, at: usize, mask: u16) {
        self.rw[at..at + 2].copy_from_slice(&mask.to_le_bytes());
    }

    fn rw32(&mut self, at: usize, mask: u32) {
        self.rw[at..at + 4].copy_from_slice(&mask.to_le_bytes());
    }
}
