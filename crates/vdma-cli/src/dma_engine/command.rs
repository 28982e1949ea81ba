//! One command of the dma-engine, run through the core's `dma_rw`, and why it can fail.
//!
//! Every command first `check`s its source and destination ranges (mapped, permitted), so a
//! peer cannot make the device allocate a 16 MiB buffer for a range that is not there. It then
//! reads whatever it needs and writes the destination with one `dma_rw` call, which the core
//! makes all or nothing (coverage and permission of the whole range are checked before a byte
//! moves). So a failed command changes no destination byte, and COPY between overlapping
//! ranges behaves like `memmove`.

use vdma::{DeviceHandle, Direction, Iova};

use super::registers::{CMD_COPY, CMD_CRC32, CMD_FILL, MAX_LEN};

/// Why a command failed; STATUS becomes 3 and ERRNO [`CommandError::errno`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// CMD was not 1, 2 or 3 (EINVAL).
    #[error("unknown command {0}")]
    UnknownCommand(u32),
    /// LEN is 0 or above 16 MiB (EINVAL).
    #[error("length {0:#x} is not between 1 byte and 16 MiB")]
    BadLength(u32),
    /// No client is connected, so there is no address space to reach (ENODEV).
    #[error("no client is connected")]
    NoClient,
    /// The buffer for the transfer could not be allocated (ENOMEM).
    #[error("cannot allocate a buffer of {0} bytes")]
    NoMemory(usize),
    /// The DMA failed (the core's errno: EINVAL unmapped, EPERM permission, EOVERFLOW wrap,
    /// EFAULT, ...).
    #[error("DMA failed: {0}")]
    Dma(#[from] vdma::Error),
}

impl CommandError {
    /// The errno this error maps to (positive, as in `errno.h`); what ERRNO reads.
    pub fn errno(&self) -> i32 {
        match self {
            CommandError::UnknownCommand(_) | CommandError::BadLength(_) => libc::EINVAL,
            CommandError::NoClient => libc::ENODEV,
            CommandError::NoMemory(_) => libc::ENOMEM,
            CommandError::Dma(e) => e.errno(),
        }
    }
}

/// What CMD asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// CMD 1.
    Copy,
    /// CMD 2.
    Fill,
    /// CMD 3.
    Crc32,
    /// Any other non-zero value: fails with EINVAL.
    Invalid(u32),
}

impl Op {
    /// The operation a (non-zero) CMD value names.
    pub(crate) fn from_register(value: u32) -> Op {
        match value {
            CMD_COPY => Op::Copy,
            CMD_FILL => Op::Fill,
            CMD_CRC32 => Op::Crc32,
            other => Op::Invalid(other),
        }
    }
}

/// A command with the registers latched when CMD was written (later writes to SRC, DST, LEN or
/// PATTERN do not change a running command).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Job {
    pub(crate) op: Op,
    pub(crate) src: u64,
    pub(crate) dst: u64,
    pub(crate) len: u32,
    pub(crate) pattern: u32,
}

impl Job {
    /// Runs the command through `dma` (`None`: no client). Returns RESULT's new value for
    /// CRC32, `None` for the others.
    pub(crate) fn run(&self, dma: Option<&DeviceHandle>) -> Result<Option<u32>, CommandError> {
        if let Op::Invalid(value) = self.op {
            return Err(CommandError::UnknownCommand(value));
        }
        if self.len == 0 || self.len > MAX_LEN {
            return Err(CommandError::BadLength(self.len));
        }
        let dma = dma.ok_or(CommandError::NoClient)?;
        let len = self.len as usize;
        if matches!(self.op, Op::Copy | Op::Crc32) {
            dma.check(Iova(self.src), len, Direction::Read)?;
        }
        if matches!(self.op, Op::Copy | Op::Fill) {
            dma.check(Iova(self.dst), len, Direction::Write)?;
        }
        match self.op {
            Op::Copy => {
                let mut buf = buffer(len)?;
                dma.read(Iova(self.src), &mut buf)?;
                dma.write(Iova(self.dst), &buf)?;
                Ok(None)
            }
            Op::Fill => {
                let mut buf = buffer(len)?;
                fill(&mut buf, self.pattern);
                dma.write(Iova(self.dst), &buf)?;
                Ok(None)
            }
            Op::Crc32 => {
                let mut buf = buffer(len)?;
                dma.read(Iova(self.src), &mut buf)?;
                Ok(Some(crc32fast::hash(&buf)))
            }
            Op::Invalid(value) => Err(CommandError::UnknownCommand(value)),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Buffers [`buffer`] made on this thread (tests check that a failing command made none).
    static BUFFERS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A zeroed buffer of `len` bytes, or ENOMEM instead of aborting.
fn buffer(len: usize) -> Result<Vec<u8>, CommandError> {
    #[cfg(test)]
    BUFFERS.with(|n| n.set(n.get() + 1));
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|_| CommandError::NoMemory(len))?;
    buf.resize(len, 0);
    Ok(buf)
}

/// Byte `i` of `buf` = byte `i % 4` of `pattern` in little-endian order.
pub(crate) fn fill(buf: &mut [u8], pattern: u32) {
    let bytes = pattern.to_le_bytes();
    for chunk in buf.chunks_mut(4) {
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_repeats_the_pattern_little_endian() {
        let mut buf = [0u8; 7];
        fill(&mut buf, 0x4433_2211);
        assert_eq!(buf, [0x11, 0x22, 0x33, 0x44, 0x11, 0x22, 0x33]);
    }

    #[test]
    fn errnos() {
        assert_eq!(CommandError::UnknownCommand(9).errno(), libc::EINVAL);
        assert_eq!(CommandError::BadLength(0).errno(), libc::EINVAL);
        assert_eq!(CommandError::NoClient.errno(), libc::ENODEV);
        assert_eq!(CommandError::NoMemory(1).errno(), libc::ENOMEM);
        let dma = vdma::Error::Overflow {
            iova: Iova(u64::MAX),
            len: 2,
        };
        assert_eq!(CommandError::from(dma).errno(), libc::EOVERFLOW);
    }

    #[test]
    fn checks_before_any_dma() {
        let job = |op, len| Job {
            op,
            src: 0,
            dst: 0,
            len,
            pattern: 0,
        };
        let errno = |j: Job| j.run(None).map_err(|e| e.errno());
        assert_eq!(errno(job(Op::Invalid(4), 1)), Err(libc::EINVAL));
        assert_eq!(errno(job(Op::Copy, 0)), Err(libc::EINVAL));
        assert_eq!(errno(job(Op::Fill, MAX_LEN + 1)), Err(libc::EINVAL));
        assert_eq!(errno(job(Op::Crc32, MAX_LEN)), Err(libc::ENODEV));
    }

    #[test]
    fn ranges_are_checked_before_a_buffer_is_made() {
        use std::sync::Arc;
        use vdma::{Backing, Config, Container, DeviceId, GroupId, OwnedMemory, Prot};
        let container = Container::new(Config::default()).unwrap();
        let memory = Arc::new(OwnedMemory::new(0x2000).unwrap());
        // One page readable only at 0x1000; one page writable only at 0x2000.
        let ro = Backing::memory(memory.clone(), 0);
        container.map(Iova(0x1000), 0x1000, ro, Prot::READ).unwrap();
        let wo = Backing::memory(memory, 0x1000);
        container
            .map(Iova(0x2000), 0x1000, wo, Prot::WRITE)
            .unwrap();
        container.attach_group(GroupId(1)).unwrap();
        container
            .add_device(GroupId(1), DeviceId::new("e"))
            .unwrap();
        let dma = container.device_handle(&DeviceId::new("e")).unwrap();
        let run = |op, src, dst, len| {
            let before = BUFFERS.with(|n| n.get());
            let job = Job {
                op,
                src,
                dst,
                len,
                pattern: 0x0102_0304,
            };
            let r = job.run(Some(&dma)).map_err(|e| e.errno());
            (r, BUFFERS.with(|n| n.get()) - before)
        };
        // 16 MiB ranges that run into a hole: the errno, and no buffer.
        assert_eq!(
            run(Op::Copy, 0x8000, 0x2000, MAX_LEN),
            (Err(libc::EINVAL), 0)
        );
        assert_eq!(
            run(Op::Copy, 0x1000, 0x2000, MAX_LEN),
            (Err(libc::EPERM), 0)
        );
        assert_eq!(run(Op::Fill, 0, 0x2000, MAX_LEN), (Err(libc::EINVAL), 0));
        assert_eq!(run(Op::Crc32, 0, 0, MAX_LEN), (Err(libc::EINVAL), 0));
        // The source is fine, the destination is not.
        assert_eq!(
            run(Op::Copy, 0x1000, 0x2800, 0x1000),
            (Err(libc::EINVAL), 0)
        );
        // Mapped, but without the permission.
        assert_eq!(run(Op::Copy, 0x2000, 0x2000, 8), (Err(libc::EPERM), 0));
        assert_eq!(run(Op::Copy, 0x1000, 0x1000, 8), (Err(libc::EPERM), 0));
        assert_eq!(run(Op::Fill, 0, 0x1000, 8), (Err(libc::EPERM), 0));
        assert_eq!(run(Op::Crc32, 0x2000, 0, 8), (Err(libc::EPERM), 0));
        // Both ranges fine: one buffer, and the command does its work.
        assert_eq!(run(Op::Copy, 0x1000, 0x2000, 8), (Ok(None), 1));
        assert_eq!(run(Op::Fill, 0, 0x2000, 8), (Ok(None), 1));
        let (crc, made) = run(Op::Crc32, 0x1000, 0, 8);
        assert_eq!(made, 1);
        assert!(matches!(crc, Ok(Some(_))));
    }
}
