//! BAR0 of the dma-engine: register offsets and values (the spec's table), the register file,
//! and how an access of each size and alignment decodes.
//!
//! # Access sizes
//!
//! - A read of any size at any offset returns the bytes of the little-endian register image
//!   (reads have no side effects, so a byte, a misaligned or a 64-bit read is always the same
//!   as reading the bytes one by one). Undefined offsets read 0.
//! - A 32-bit write at a 4-byte aligned offset writes that register.
//! - A 64-bit write at an 8-byte aligned offset writes the register at `offset` with the low
//!   half, then the register at `offset + 4` with the high half, both under one lock (so a
//!   64-bit write of LEN and CMD starts the command with the new LEN).
//! - Any other write (other size, or misaligned) is ignored, as are writes to read-only
//!   registers and undefined offsets. None of them is an error, and none can panic.

use super::command::{Job, Op};

/// Size of BAR0 in bytes.
pub const BAR0_SIZE: u64 = 0x1000;
/// Size of BAR1 (MSI-X table and PBA) in bytes.
pub const BAR1_SIZE: u64 = 0x1000;
/// Offset of the MSI-X table in BAR1.
pub const MSIX_TABLE_OFFSET: u32 = 0;
/// Offset of the MSI-X pending-bit array in BAR1.
pub const MSIX_PBA_OFFSET: u32 = 0x800;

/// ID (RO): [`ID_VALUE`].
pub const ID: u64 = 0x00;
/// VERSION (RO): [`VERSION_VALUE`].
pub const VERSION: u64 = 0x04;
/// SRC_LO (RW): source IOVA, low 32 bits.
pub const SRC_LO: u64 = 0x08;
/// SRC_HI (RW): source IOVA, high 32 bits.
pub const SRC_HI: u64 = 0x0c;
/// DST_LO (RW): destination IOVA, low 32 bits.
pub const DST_LO: u64 = 0x10;
/// DST_HI (RW): destination IOVA, high 32 bits.
pub const DST_HI: u64 = 0x14;
/// LEN (RW): bytes, 1 to [`MAX_LEN`].
pub const LEN: u64 = 0x18;
/// CMD (WO, reads 0): [`CMD_COPY`], [`CMD_FILL`], [`CMD_CRC32`].
pub const CMD: u64 = 0x1c;
/// STATUS (RO): [`STATUS_IDLE`], [`STATUS_BUSY`], [`STATUS_DONE`], [`STATUS_ERROR`].
pub const STATUS: u64 = 0x20;
/// ERRNO (RO): errno of the last command if it failed, else 0.
pub const ERRNO: u64 = 0x24;
/// RESULT (RO): CRC32 of the last successful [`CMD_CRC32`].
pub const RESULT: u64 = 0x28;
/// PATTERN (RW): fill pattern, byte `i` of the destination = byte `i % 4` of it, little-endian.
pub const PATTERN: u64 = 0x2c;
/// IRQ_ENABLE (RW): bit 0 ([`IRQ_DONE`]) raises the interrupt on completion; other bits read 0.
pub const IRQ_ENABLE: u64 = 0x30;
/// IRQ_STATUS (RW1C): bit 0 ([`IRQ_DONE`]) set on completion; writing 1 clears it and
/// deasserts INTx.
pub const IRQ_STATUS: u64 = 0x34;
/// COUNT (RO): commands completed (done or failed) since reset.
pub const COUNT: u64 = 0x38;

/// The value of ID: "VDMA" read as the bytes 'A', 'M', 'D', 'V'.
pub const ID_VALUE: u32 = 0x5644_4d41;
/// The value of VERSION.
pub const VERSION_VALUE: u32 = 1;
/// The largest LEN: 16 MiB.
pub const MAX_LEN: u32 = 16 << 20;

/// CMD: copy LEN bytes from SRC to DST (as `memmove` for overlapping ranges).
pub const CMD_COPY: u32 = 1;
/// CMD: fill LEN bytes at DST with PATTERN.
pub const CMD_FILL: u32 = 2;
/// CMD: CRC32 (IEEE, zlib's) of LEN bytes at SRC into RESULT.
pub const CMD_CRC32: u32 = 3;

/// STATUS: no command since reset.
pub const STATUS_IDLE: u32 = 0;
/// STATUS: a command is running (CMD writes are ignored).
pub const STATUS_BUSY: u32 = 1;
/// STATUS: the last command succeeded.
pub const STATUS_DONE: u32 = 2;
/// STATUS: the last command failed; ERRNO says why.
pub const STATUS_ERROR: u32 = 3;

/// Bit 0 of IRQ_ENABLE and IRQ_STATUS.
pub const IRQ_DONE: u32 = 1;

/// The register file (everything but ID and VERSION, which are constants). `Default` is the
/// state after reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Registers {
    pub(crate) src: u64,
    pub(crate) dst: u64,
    pub(crate) len: u32,
    pub(crate) status: u32,
    pub(crate) errno: u32,
    pub(crate) result: u32,
    pub(crate) pattern: u32,
    pub(crate) irq_enable: u32,
    pub(crate) irq_status: u32,
    pub(crate) count: u32,
}

/// What a write asks of the device beyond changing registers.
#[derive(Debug, Default, PartialEq, Eq)]
#[must_use]
pub(crate) struct Effects {
    /// A command was accepted (STATUS is now BUSY): run it.
    pub(crate) start: Option<Job>,
    /// IRQ_STATUS bit 0 was written with 1: deassert INTx.
    pub(crate) clear_irq: bool,
}

impl Effects {
    fn merge(&mut self, other: Effects) {
        if other.start.is_some() {
            self.start = other.start;
        }
        self.clear_irq |= other.clear_irq;
    }
}

impl Registers {
    /// The 32-bit register at `offset` (4-byte aligned); 0 for undefined offsets and CMD.
    pub(crate) fn read32(&self, offset: u64) -> u32 {
        match offset {
            ID => ID_VALUE,
            VERSION => VERSION_VALUE,
            SRC_LO => self.src as u32,
            SRC_HI => (self.src >> 32) as u32,
            DST_LO => self.dst as u32,
            DST_HI => (self.dst >> 32) as u32,
            LEN => self.len,
            STATUS => self.status,
            ERRNO => self.errno,
            RESULT => self.result,
            PATTERN => self.pattern,
            IRQ_ENABLE => self.irq_enable,
            IRQ_STATUS => self.irq_status,
            COUNT => self.count,
            _ => 0,
        }
    }

    /// Writes the 32-bit register at `offset` (4-byte aligned); read-only registers and
    /// undefined offsets ignore it.
    pub(crate) fn write32(&mut self, offset: u64, value: u32) -> Effects {
        let mut effects = Effects::default();
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(value);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            SRC_LO => self.src = low(self.src),
            SRC_HI => self.src = high(self.src),
            DST_LO => self.dst = low(self.dst),
            DST_HI => self.dst = high(self.dst),
            LEN => self.len = value,
            PATTERN => self.pattern = value,
            IRQ_ENABLE => self.irq_enable = value & IRQ_DONE,
            IRQ_STATUS if value & IRQ_DONE != 0 => {
                self.irq_status &= !IRQ_DONE;
                effects.clear_irq = true;
            }
            CMD => effects.start = self.command(value),
            _ => {}
        }
        effects
    }

    /// A write of `value` to CMD: 0 does nothing; anything else starts a command (one that is
    /// not 1, 2 or 3 fails with EINVAL), unless one is running.
    fn command(&mut self, value: u32) -> Option<Job> {
        if value == 0 || self.status == STATUS_BUSY {
            return None;
        }
        self.status = STATUS_BUSY;
        self.errno = 0;
        Some(Job {
            op: Op::from_register(value),
            src: self.src,
            dst: self.dst,
            len: self.len,
            pattern: self.pattern,
        })
    }

    /// Reads `buf.len()` bytes at `offset` of the little-endian register image.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = match offset.checked_add(i as u64) {
                Some(at) => {
                    let word = self.read32(at & !3);
                    (word >> ((at & 3) * 8)) as u8
                }
                None => 0,
            };
        }
    }

    /// Writes `data` at `offset`: a 4-byte aligned 32-bit or an 8-byte aligned 64-bit write;
    /// anything else is ignored (see the [module documentation](self)).
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Effects {
        if let Ok(word) = <[u8; 4]>::try_from(data) {
            if offset % 4 == 0 {
                return self.write32(offset, u32::from_le_bytes(word));
            }
        } else if let Ok(pair) = <[u8; 8]>::try_from(data) {
            if offset % 8 == 0 {
                let value = u64::from_le_bytes(pair);
                let mut effects = self.write32(offset, value as u32);
                if let Some(next) = offset.checked_add(4) {
                    effects.merge(self.write32(next, (value >> 32) as u32));
                }
                return effects;
            }
        }
        tracing::debug!(
            offset,
            len = data.len(),
            "dma-engine: write of unsupported size or alignment ignored"
        );
        Effects::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_u32(regs: &Registers, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        regs.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_registers() {
        let regs = Registers::default();
        assert_eq!(read_u32(&regs, ID), ID_VALUE);
        let mut b = [0u8; 4];
        regs.read(ID, &mut b);
        assert_eq!(&b, b"AMDV");
        assert_eq!(read_u32(&regs, VERSION), 1);
    }

    #[test]
    fn rw_registers_read_back() {
        let mut regs = Registers::default();
        for (offset, value) in [
            (SRC_LO, 0x1111_2222),
            (SRC_HI, 0x3333_4444),
            (DST_LO, 0x5555_6666),
            (DST_HI, 0x7777_8888),
            (LEN, 0x9999_aaaa),
            (PATTERN, 0xbbbb_cccc),
        ] {
            assert_eq!(
                regs.write(offset, &u32::to_le_bytes(value)),
                Effects::default()
            );
            assert_eq!(read_u32(&regs, offset), value);
        }
        assert_eq!(regs.src, 0x3333_4444_1111_2222);
        assert_eq!(regs.dst, 0x7777_8888_5555_6666);
        // Only bit 0 of IRQ_ENABLE exists.
        let _ = regs.write(IRQ_ENABLE, &u32::MAX.to_le_bytes());
        assert_eq!(read_u32(&regs, IRQ_ENABLE), 1);
    }

    #[test]
    fn read_only_and_undefined_ignore_writes() {
        let mut regs = Registers::default();
        let before = regs;
        for offset in [ID, VERSION, STATUS, ERRNO, RESULT, COUNT, 0x3c, 0x40, 0xffc] {
            assert_eq!(
                regs.write(offset, &u32::MAX.to_le_bytes()),
                Effects::default()
            );
        }
        assert_eq!(regs, before);
        for offset in [CMD, 0x3c, 0x40, 0x100, 0xffc] {
            assert_eq!(read_u32(&regs, offset), 0);
        }
    }

    #[test]
    fn irq_status_is_write_one_to_clear() {
        let mut regs = Registers {
            irq_status: IRQ_DONE,
            ..Default::default()
        };
        let e = regs.write(IRQ_STATUS, &0u32.to_le_bytes());
        assert!(!e.clear_irq);
        assert_eq!(regs.irq_status, IRQ_DONE);
        let e = regs.write(IRQ_STATUS, &1u32.to_le_bytes());
        assert!(e.clear_irq);
        assert_eq!(regs.irq_status, 0);
    }

    #[test]
    fn command_latches_registers_and_busy_ignores_more() {
        let mut regs = Registers {
            src: 1,
            dst: 2,
            len: 3,
            pattern: 4,
            errno: 22,
            ..Default::default()
        };
        let e = regs.write(CMD, &CMD_FILL.to_le_bytes());
        assert_eq!(
            e.start,
            Some(Job {
                op: Op::Fill,
                src: 1,
                dst: 2,
                len: 3,
                pattern: 4
            })
        );
        assert_eq!(regs.status, STATUS_BUSY);
        assert_eq!(regs.errno, 0);
        assert_eq!(regs.write(CMD, &CMD_COPY.to_le_bytes()), Effects::default());
        regs.status = STATUS_DONE;
        assert_eq!(regs.write(CMD, &0u32.to_le_bytes()), Effects::default());
        assert_eq!(regs.status, STATUS_DONE);
        let e = regs.write(CMD, &7u32.to_le_bytes());
        assert_eq!(e.start.map(|j| j.op), Some(Op::Invalid(7)));
    }

    #[test]
    fn pairs_of_registers_in_one_64_bit_access() {
        let mut regs = Registers::default();
        let _ = regs.write(SRC_LO, &0x0123_4567_89ab_cdefu64.to_le_bytes());
        assert_eq!(regs.src, 0x0123_4567_89ab_cdef);
        let mut b = [0u8; 8];
        regs.read(SRC_LO, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x0123_4567_89ab_cdef);
        regs.read(ID, &mut b);
        assert_eq!(u64::from_le_bytes(b), 1 << 32 | u64::from(ID_VALUE));
        // LEN then CMD: the command sees the new LEN.
        let e = regs.write(LEN, &(u64::from(CMD_COPY) << 32 | 0x40).to_le_bytes());
        assert_eq!(e.start.map(|j| (j.op, j.len)), Some((Op::Copy, 0x40)));
        // Not 8-byte aligned: ignored.
        let before = regs;
        assert_eq!(
            regs.write(DST_HI, &u64::MAX.to_le_bytes()),
            Effects::default()
        );
        assert_eq!(regs, before);
    }

    #[test]
    fn odd_sizes_read_bytes_and_writes_are_ignored() {
        let mut regs = Registers {
            pattern: 0x4433_2211,
            ..Default::default()
        };
        let mut b = [0u8; 3];
        regs.read(PATTERN + 1, &mut b);
        assert_eq!(b, [0x22, 0x33, 0x44]);
        let mut big = vec![0xffu8; BAR0_SIZE as usize];
        regs.read(0, &mut big);
        assert_eq!(&big[..4], b"AMDV");
        assert!(big[0x3c..].iter().all(|&b| b == 0));
        // Reads at the very end of the address space do not overflow.
        let mut end = [0xffu8; 8];
        regs.read(u64::MAX - 3, &mut end);
        assert_eq!(end, [0; 8]);
        let before = regs;
        for (offset, len) in [(PATTERN, 1), (PATTERN, 2), (PATTERN + 1, 4), (PATTERN, 3)] {
            assert_eq!(regs.write(offset, &vec![0u8; len]), Effects::default());
        }
        assert_eq!(regs.write(u64::MAX - 7, &[0; 8]), Effects::default());
        assert_eq!(regs.write(0, &[]), Effects::default());
        assert_eq!(regs, before);
    }
}
