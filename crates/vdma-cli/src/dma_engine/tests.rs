//! The engine (registers and worker) against a real address space, without the PCI layer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use vdma::{Backing, Config, Container, DeviceId, GroupId, Iova, Memory, OwnedMemory, Prot};

use vdma_user::server::Device;

use super::registers::*;
use super::worker::Engine;
use super::{dma_engine, DmaEngineConfig};

const RAM: u64 = 0x10_0000;
const RAM_SIZE: u64 = 2 * (16 << 20);
const RO: u64 = 0x1000_0000;
const RO_SIZE: u64 = 0x10000;
const GATED: u64 = 0x2000_0000;
const GATED_SIZE: u64 = 0x10000;

/// Memory whose first read, once armed, stops until the test lets it go.
#[derive(Debug)]
struct Gate {
    inner: OwnedMemory,
    armed: AtomicBool,
    entered: Barrier,
    release: Barrier,
}

impl Memory for Gate {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> vdma::Result<()> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.entered.wait();
            self.release.wait();
        }
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> vdma::Result<()> {
        self.inner.write_at(offset, buf)
    }
}

struct Rig {
    container: Container,
    engine: Engine,
    ram: Arc<OwnedMemory>,
    ro: Arc<OwnedMemory>,
    gate: Arc<Gate>,
}

impl Rig {
    fn new() -> Rig {
        let container = Container::new(Config::default()).unwrap();
        let ram = Arc::new(OwnedMemory::new(RAM_SIZE as usize).unwrap());
        let ro = Arc::new(OwnedMemory::new(RO_SIZE as usize).unwrap());
        let gate = Arc::new(Gate {
            inner: OwnedMemory::new(GATED_SIZE as usize).unwrap(),
            armed: AtomicBool::new(false),
            entered: Barrier::new(2),
            release: Barrier::new(2),
        });
        let map = |iova, size, memory: Arc<dyn Memory>, prot| {
            container
                .map(Iova(iova), size, Backing::memory(memory, 0), prot)
                .unwrap()
        };
        map(RAM, RAM_SIZE, ram.clone(), Prot::READ_WRITE);
        map(RO, RO_SIZE, ro.clone(), Prot::READ);
        map(GATED, GATED_SIZE, gate.clone(), Prot::READ_WRITE);
        container.attach_group(GroupId(1)).unwrap();
        container
            .add_device(GroupId(1), DeviceId::new("e"))
            .unwrap();
        let engine = Engine::start().unwrap();
        engine.connect(container.device_handle(&DeviceId::new("e")).unwrap());
        Rig {
            container,
            engine,
            ram,
            ro,
            gate,
        }
    }

    fn w32(&self, offset: u64, value: u32) {
        self.engine.write(offset, &value.to_le_bytes());
    }

    fn w64(&self, offset: u64, value: u64) {
        self.engine.write(offset, &value.to_le_bytes());
    }

    fn r32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.engine.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn program(&self, src: u64, dst: u64, len: u32) {
        self.w64(SRC_LO, src);
        self.w64(DST_LO, dst);
        self.w32(LEN, len);
    }

    /// Writes CMD, waits for the worker, returns (STATUS, ERRNO).
    fn run(&self, cmd: u32) -> (u32, i32) {
        self.w32(CMD, cmd);
        self.engine.wait_idle();
        (self.r32(STATUS), self.r32(ERRNO) as i32)
    }

    fn ram(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.ram.read_at(iova - RAM, &mut buf).unwrap();
        buf
    }

    fn set_ram(&self, iova: u64, data: &[u8]) {
        self.ram.write_at(iova - RAM, data).unwrap();
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn copy_fill_crc32() {
    let rig = Rig::new();
    let data = pattern(10_000, 7);
    rig.set_ram(RAM, &data);

    rig.program(RAM, RAM + 0x10_0000, data.len() as u32);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert_eq!(rig.ram(RAM + 0x10_0000, data.len()), data);

    rig.w32(PATTERN, 0xddcc_bbaa);
    rig.program(0, RAM + 0x20_0001, 7);
    assert_eq!(rig.run(CMD_FILL), (STATUS_DONE, 0));
    assert_eq!(
        rig.ram(RAM + 0x20_0000, 9),
        [0, 0xaa, 0xbb, 0xcc, 0xdd, 0xaa, 0xbb, 0xcc, 0]
    );

    // The copy reads the source from a read-only mapping.
    rig.ro.write_at(0, &data).unwrap();
    rig.program(RO, 0, data.len() as u32);
    assert_eq!(rig.run(CMD_CRC32), (STATUS_DONE, 0));
    assert_eq!(rig.r32(RESULT), crc32fast::hash(&data));

    assert_eq!(rig.r32(COUNT), 3);
    assert_eq!(rig.r32(IRQ_STATUS), IRQ_DONE);
    rig.w32(IRQ_STATUS, IRQ_DONE);
    assert_eq!(rig.r32(IRQ_STATUS), 0);
}

#[test]
fn largest_transfer_is_16_mib() {
    let rig = Rig::new();
    let len = MAX_LEN as usize;
    rig.set_ram(RAM + len as u64 - 4, b"tail");
    rig.program(RAM, RAM + len as u64, MAX_LEN);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert_eq!(rig.ram(RAM + 2 * len as u64 - 4, 4), b"tail");
    rig.w32(LEN, MAX_LEN + 1);
    assert_eq!(rig.run(CMD_COPY), (STATUS_ERROR, libc::EINVAL));
}

#[test]
fn overlapping_copy_is_memmove() {
    let rig = Rig::new();
    let data = pattern(5000, 3);
    for (src, dst) in [(RAM, RAM + 1000), (RAM + 1000, RAM)] {
        rig.set_ram(RAM, &pattern(6000, 0));
        rig.set_ram(src, &data);
        let mut expect = rig.ram(RAM, 6000);
        let (s, d) = ((src - RAM) as usize, (dst - RAM) as usize);
        expect.copy_within(s..s + data.len(), d);
        rig.program(src, dst, data.len() as u32);
        assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
        assert_eq!(rig.ram(RAM, 6000), expect);
    }
}

#[test]
fn failures_change_no_destination_byte() {
    let rig = Rig::new();
    let before = pattern(8192, 9);
    rig.set_ram(RAM, &before);
    let ro_before = pattern(RO_SIZE as usize, 1);
    rig.ro.write_at(0, &ro_before).unwrap();
    let cases = [
        // Source unmapped.
        (CMD_COPY, 0x5000_0000, RAM, 16, libc::EINVAL),
        // Source runs off the end of its mapping.
        (CMD_COPY, RO + RO_SIZE - 8, RAM, 16, libc::EINVAL),
        // Destination read-only.
        (CMD_COPY, RAM, RO, 16, libc::EPERM),
        (CMD_FILL, 0, RO + 8, 16, libc::EPERM),
        // Destination runs off the end of its mapping: nothing lands in the mapped part.
        (CMD_FILL, 0, RAM + RAM_SIZE - 8, 16, libc::EINVAL),
        // Length 0 and too long.
        (CMD_COPY, RAM, RAM + 4096, 0, libc::EINVAL),
        (CMD_FILL, 0, RAM, MAX_LEN + 1, libc::EINVAL),
        // Past 2^64.
        (CMD_COPY, u64::MAX - 7, RAM, 16, libc::EOVERFLOW),
        (CMD_FILL, 0, u64::MAX - 7, 16, libc::EOVERFLOW),
        (CMD_CRC32, u64::MAX, 0, 2, libc::EOVERFLOW),
        // Unknown command.
        (9, RAM, RAM + 4096, 16, libc::EINVAL),
    ];
    rig.w32(PATTERN, 0xffff_ffff);
    for (i, &(cmd, src, dst, len, errno)) in cases.iter().enumerate() {
        rig.program(src, dst, len);
        assert_eq!(rig.run(cmd), (STATUS_ERROR, errno), "case {i}");
        assert_eq!(rig.ram(RAM, before.len()), before, "case {i}");
        assert_eq!(rig.ram(RAM + RAM_SIZE - 8, 8), [0; 8], "case {i}");
        let mut ro = vec![0; ro_before.len()];
        rig.ro.read_at(0, &mut ro).unwrap();
        assert_eq!(ro, ro_before, "case {i}");
        assert_eq!(rig.r32(RESULT), 0, "case {i}");
    }
    assert_eq!(rig.r32(COUNT), cases.len() as u32);
    // A success clears ERRNO.
    rig.program(RAM, RAM + 4096, 4);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
}

#[test]
fn no_client_is_enodev() {
    let rig = Rig::new();
    rig.engine.disconnect();
    rig.program(RAM, RAM + 4096, 16);
    assert_eq!(rig.run(CMD_COPY), (STATUS_ERROR, libc::ENODEV));
    // Another client: works again.
    rig.engine
        .connect(rig.container.device_handle(&DeviceId::new("e")).unwrap());
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
}

#[test]
fn disconnect_waits_for_the_command_and_drops_the_handle() {
    let rig = Rig::new();
    rig.gate.inner.write_at(0, b"last copy").unwrap();
    rig.gate.armed.store(true, Ordering::SeqCst);
    rig.w32(PATTERN, 7);
    rig.program(GATED, RAM, 9);
    rig.w32(CMD, CMD_COPY);
    rig.gate.entered.wait();
    let epoch = rig.engine.epoch();
    thread::scope(|s| {
        let disconnecting = s.spawn(|| rig.engine.disconnect());
        let mut began = false;
        for _ in 0..1_000_000 {
            if rig.engine.epoch() != epoch {
                began = true;
                break;
            }
            thread::yield_now();
        }
        rig.gate.release.wait();
        assert!(began, "the disconnect never began");
        disconnecting.join().unwrap();
    });
    // The running command kept its handle to the end; then every handle is gone (a group
    // with live handles cannot be detached), and the registers are as after power-on.
    assert_eq!(rig.ram(RAM, 9), b"last copy");
    rig.container.detach_group(GroupId(1)).unwrap();
    let mut regs = [0u8; 0x40];
    rig.engine.read(0, &mut regs);
    assert!(regs[8..].iter().all(|&b| b == 0), "{regs:?}");
}

#[test]
fn busy_ignores_commands_and_latches_registers() {
    let rig = Rig::new();
    rig.gate.inner.write_at(0, b"gated bytes").unwrap();
    rig.gate.armed.store(true, Ordering::SeqCst);
    rig.program(GATED, RAM, 11);
    rig.w32(CMD, CMD_COPY);
    rig.gate.entered.wait();
    // Running: STATUS busy, a second CMD and new operands change nothing of this command.
    assert_eq!(rig.r32(STATUS), STATUS_BUSY);
    rig.program(RAM + 4096, RAM + 8192, 5);
    rig.w32(CMD, CMD_FILL);
    assert_eq!(rig.r32(STATUS), STATUS_BUSY);
    rig.gate.release.wait();
    rig.engine.wait_idle();
    assert_eq!(rig.r32(STATUS), STATUS_DONE);
    assert_eq!(rig.r32(COUNT), 1);
    assert_eq!(rig.ram(RAM, 11), b"gated bytes");
    assert_eq!(rig.ram(RAM + 8192, 5), [0; 5]);
}

#[test]
fn reset_waits_for_the_command_and_clears_everything() {
    let rig = Rig::new();
    rig.gate.inner.write_at(0, b"before reset").unwrap();
    rig.gate.armed.store(true, Ordering::SeqCst);
    rig.w32(PATTERN, 0x1234_5678);
    rig.w32(IRQ_ENABLE, 1);
    rig.program(GATED, RAM, 12);
    rig.w32(CMD, CMD_COPY);
    rig.gate.entered.wait();
    thread::scope(|s| {
        let resetting = s.spawn(|| rig.engine.reset());
        rig.gate.release.wait();
        resetting.join().unwrap();
    });
    // The command's bytes landed (a dma_rw is not stopped halfway), its completion did not.
    assert_eq!(rig.ram(RAM, 12), b"before reset");
    let mut bar = vec![0u8; 0x40];
    rig.engine.read(0, &mut bar);
    let mut expect = vec![0u8; 0x40];
    expect[..8]
        .copy_from_slice(&(u64::from(VERSION_VALUE) << 32 | u64::from(ID_VALUE)).to_le_bytes());
    assert_eq!(bar, expect);
    // And the engine runs commands after it.
    rig.program(RAM, RAM + 64, 12);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert_eq!(rig.r32(COUNT), 1);
}

#[test]
fn unmap_of_the_destination_during_the_read_fails_the_command() {
    let rig = Rig::new();
    let dst = Arc::new(OwnedMemory::new(0x1000).unwrap());
    rig.container
        .map(
            Iova(0x3000_0000),
            0x1000,
            Backing::memory(dst.clone(), 0),
            Prot::READ_WRITE,
        )
        .unwrap();
    rig.gate.armed.store(true, Ordering::SeqCst);
    rig.program(GATED, 0x3000_0000, 16);
    rig.w32(CMD, CMD_COPY);
    rig.gate.entered.wait();
    rig.gate.inner.write_at(0, &[0xee; 16]).unwrap();
    // Taken now: getting a handle takes the container's lock, which the unmap holds while it
    // waits for the read in flight.
    let probe = rig.container.group_handle(GroupId(1)).unwrap();
    thread::scope(|s| {
        // The unmap waits for the read in flight, then removes the destination: the command's
        // write finds it unmapped.
        let unmapping = s.spawn(|| rig.container.unmap(Iova(0x3000_0000), 0x1000));
        // The new table is published before the unmap waits; poll until it is.
        let mut gone = false;
        for _ in 0..1_000_000 {
            if probe.read(Iova(0x3000_0000), &mut [0]).is_err() {
                gone = true;
                break;
            }
            thread::yield_now();
        }
        rig.gate.release.wait();
        assert!(gone, "the unmap never published its table");
        assert_eq!(unmapping.join().unwrap().unwrap(), 0x1000);
    });
    rig.engine.wait_idle();
    assert_eq!(
        (rig.r32(STATUS), rig.r32(ERRNO) as i32),
        (STATUS_ERROR, libc::EINVAL)
    );
    let mut after = [0u8; 16];
    dst.read_at(0, &mut after).unwrap();
    assert_eq!(after, [0; 16]);
}

/// Whether the PCI layer records INTx as asserted (status register bit 3): with no interrupt
/// type enabled, a raise is recorded there.
fn intx_level(device: &vdma_user::pci::PciDevice<super::DmaEngine>) -> bool {
    let mut status = [0u8; 1];
    device.config_read(0x06, &mut status).unwrap();
    status[0] & 0x08 != 0
}

#[test]
fn reset_discards_the_completion_of_a_running_command() {
    let rig = Rig::new();
    let device = dma_engine(DmaEngineConfig::default()).unwrap();
    let w32 = |offset: u64, value: u32| {
        device
            .region_write(0, offset, &value.to_le_bytes())
            .unwrap()
    };
    device.connect(rig.container.device_handle(&DeviceId::new("e")).unwrap());
    // Without a reset, a completion with IRQ_ENABLE raises (recorded as the INTx level).
    w32(IRQ_ENABLE, 1);
    w32(SRC_LO, RAM as u32);
    w32(DST_LO, (RAM + 64) as u32);
    w32(LEN, 8);
    w32(CMD, CMD_COPY);
    device.function().wait_idle();
    assert!(intx_level(&device));
    w32(IRQ_STATUS, IRQ_DONE);
    assert!(!intx_level(&device));

    // Now a command stopped in its source read, and a reset that begins meanwhile.
    rig.gate.inner.write_at(0, b"in flight").unwrap();
    rig.gate.armed.store(true, Ordering::SeqCst);
    w32(SRC_LO, GATED as u32);
    w32(SRC_HI, (GATED >> 32) as u32);
    w32(DST_LO, RAM as u32);
    w32(LEN, 9);
    w32(CMD, CMD_COPY);
    rig.gate.entered.wait();
    let engine = &device.function().engine;
    let epoch = engine.epoch();
    thread::scope(|s| {
        let resetting = s.spawn(|| device.reset());
        let mut began = false;
        for _ in 0..1_000_000 {
            if engine.epoch() != epoch {
                began = true;
                break;
            }
            thread::yield_now();
        }
        rig.gate.release.wait();
        assert!(began, "the reset never began");
        resetting.join().unwrap().unwrap();
    });
    // The bytes landed; the completion changed no register and raised nothing.
    assert_eq!(rig.ram(RAM, 9), b"in flight");
    assert!(!intx_level(&device));
    let mut regs = [0u8; 0x40];
    device.region_read(0, 0, &mut regs).unwrap();
    assert!(regs[8..].iter().all(|&b| b == 0), "{regs:?}");
    device.disconnect();
}
