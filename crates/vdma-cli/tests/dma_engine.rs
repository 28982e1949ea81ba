//! The dma-engine end to end: the crate's device in an in-process `vdma_user::server::Server`
//! bound on a temporary socket, driven by `vdma_user::client::Client` the way a VMM would.
//! Bytes are checked through the client's own view of its memory (the memfd, or the memory
//! it serves DMA_READ/DMA_WRITE from).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vdma::{GroupId, Iova, Memory, OwnedMemory, Prot};
use vdma_cli::dma_engine::registers::*;
use vdma_cli::dma_engine::{dma_engine, layout, DmaEngineConfig};
use vdma_model::{eventfd, memfd};
use vdma_user::client::Client;
use vdma_user::pci::CONFIG_REGION;
use vdma_user::protocol::{PCI_INTX_IRQ_INDEX, PCI_MSIX_IRQ_INDEX, PCI_MSI_IRQ_INDEX};
use vdma_user::server::{IrqAction, Server, ServerConfig, SessionEnd};

const MIB: u64 = 1 << 20;
/// Where the tests map client memory.
const RAM: u64 = 0x1_0000_0000;
const PAGE: u64 = 4096;

// ---------------------------------------------------------------------------------------
// Helpers.

/// Reads and clears the eventfd's counter (0 if it was not signalled).
fn take_count(fd: &OwnedFd) -> u64 {
    let mut b = [0u8; 8];
    let file = File::from(fd.try_clone().unwrap());
    match (&file).read(&mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
        other => panic!("eventfd read: {other:?}"),
    }
}

/// Waits (a bounded number of polls) for the eventfd to be signalled; returns its count.
fn wait_signal(fd: &OwnedFd) -> u64 {
    for _ in 0..20_000 {
        let n = take_count(fd);
        if n != 0 {
            return n;
        }
        thread::sleep(Duration::from_micros(500));
    }
    panic!("the interrupt never came");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn read_file(file: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

fn read_memory(memory: &dyn Memory, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    memory.read_at(offset, &mut buf).unwrap();
    buf
}

static RIGS: AtomicUsize = AtomicUsize::new(0);

/// A server serving one dma-engine to one client, in this process.
struct Rig {
    client: Option<Client>,
    server: Arc<Server>,
    serving: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl Rig {
    fn new() -> Rig {
        let n = RIGS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("vdma-engine-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("engine.sock");
        let device = Arc::new(dma_engine(DmaEngineConfig::default()).unwrap());
        let server = Arc::new(Server::bind(&path, device, ServerConfig::default()).unwrap());
        let serving = thread::spawn({
            let server = Arc::clone(&server);
            move || {
                let end = server.serve_one().unwrap();
                assert!(matches!(end, SessionEnd::Closed), "session ended: {end:?}");
            }
        });
        let client = Client::connect(&path).unwrap();
        Rig {
            client: Some(client),
            server,
            serving: Some(serving),
            dir,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("connected")
    }

    fn r32(&self, offset: u64) -> u32 {
        let b = self.client().region_read(0, offset, 4).unwrap();
        u32::from_le_bytes(b.try_into().unwrap())
    }

    fn r64(&self, offset: u64) -> u64 {
        let b = self.client().region_read(0, offset, 8).unwrap();
        u64::from_le_bytes(b.try_into().unwrap())
    }

    fn w32(&self, offset: u64, value: u32) {
        self.client()
            .region_write(0, offset, &value.to_le_bytes())
            .unwrap();
    }

    fn w64(&self, offset: u64, value: u64) {
        self.client()
            .region_write(0, offset, &value.to_le_bytes())
            .unwrap();
    }

    fn config(&self, offset: u64, len: usize) -> Vec<u8> {
        self.client()
            .region_read(CONFIG_REGION, offset, len)
            .unwrap()
    }

    fn program(&self, src: u64, dst: u64, len: u32) {
        self.w64(SRC_LO, src);
        self.w64(DST_LO, dst);
        self.w32(LEN, len);
    }

    /// Polls STATUS (a bounded number of times) until the command ends; (STATUS, ERRNO).
    fn wait(&self) -> (u32, i32) {
        for i in 0..100_000 {
            let status = self.r32(STATUS);
            if status != STATUS_BUSY {
                return (status, self.r32(ERRNO) as i32);
            }
            if i > 100 {
                thread::sleep(Duration::from_micros(200));
            }
        }
        panic!("the command never ended");
    }

    fn run(&self, cmd: u32) -> (u32, i32) {
        self.w32(CMD, cmd);
        self.wait()
    }

    /// Maps `size` bytes of a new memfd read-write at `iova`.
    fn map_memfd(&self, iova: u64, size: u64) -> File {
        let file = memfd("dma-engine", size);
        self.client()
            .dma_map_fd(iova, size, file.as_fd(), 0, Prot::READ_WRITE)
            .unwrap();
        file
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Closing the connection ends the session; the server thread then returns.
        drop(self.client.take());
        if let Some(serving) = self.serving.take() {
            let joined = serving.join();
            if !thread::panicking() {
                joined.unwrap();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Memory whose first read, once armed, stops until the test lets it go (the client serves
/// DMA_READ from it, so the device's command stops in the middle of its source read).
#[derive(Debug)]
struct Gate {
    inner: OwnedMemory,
    armed: AtomicBool,
    entered: Barrier,
    release: Barrier,
}

impl Gate {
    fn new(len: usize) -> Arc<Gate> {
        Arc::new(Gate {
            inner: OwnedMemory::new(len).unwrap(),
            armed: AtomicBool::new(false),
            entered: Barrier::new(2),
            release: Barrier::new(2),
        })
    }
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

// ---------------------------------------------------------------------------------------
// Identity and registers.

#[test]
fn identity_config_space_regions_and_irqs() {
    let rig = Rig::new();
    let c = rig.client();
    let cfg = rig.config(0, 64);
    let u16_at = |at: usize| u16::from_le_bytes([cfg[at], cfg[at + 1]]);
    assert_eq!(u16_at(0x00), 0x1234);
    assert_eq!(u16_at(0x02), 0xd3a0);
    assert_eq!(cfg[0x08], 1, "revision");
    assert_eq!(&cfg[0x09..0x0c], &[0x00, 0x80, 0x08], "class 0x088000");
    assert_eq!(u16_at(0x2c), 0x1234, "subsystem vendor");
    assert_eq!(u16_at(0x2e), 0xd3a0, "subsystem");
    assert_eq!(cfg[0x3d], 1, "INTA");
    // BAR0 and BAR1: 32-bit non-prefetchable memory.
    assert_eq!(cfg[0x10] & 0xf, 0);
    assert_eq!(cfg[0x14] & 0xf, 0);

    // The capability list: MSI with one vector, MSI-X with one vector in BAR1.
    assert_ne!(u16_at(0x06) & 0x10, 0, "capability list");
    let full = rig.config(0, 256);
    let mut at = full[0x34] as usize;
    let (mut msi, mut msix) = (None, None);
    for _ in 0..48 {
        if at == 0 {
            break;
        }
        match full[at] {
            0x05 => msi = Some(at),
            0x11 => msix = Some(at),
            _ => {}
        }
        at = full[at + 1] as usize;
    }
    let msi = msi.expect("an MSI capability");
    assert_eq!((full[msi + 2] >> 1) & 7, 0, "MSI: one vector");
    let msix = msix.expect("an MSI-X capability");
    let word = |at: usize| u32::from_le_bytes(full[at..at + 4].try_into().unwrap());
    assert_eq!(
        u16::from_le_bytes([full[msix + 2], full[msix + 3]]) & 0x7ff,
        0
    );
    assert_eq!(word(msix + 4), 1, "table at 0 in BAR1");
    assert_eq!(word(msix + 8), 0x800 | 1, "PBA at 0x800 in BAR1");

    assert_eq!(c.region_info(0).unwrap().info.size, BAR0_SIZE);
    assert_eq!(c.region_info(1).unwrap().info.size, BAR1_SIZE);
    assert_eq!(c.region_info(2).unwrap().info.size, 0);
    for index in [PCI_INTX_IRQ_INDEX, PCI_MSI_IRQ_INDEX, PCI_MSIX_IRQ_INDEX] {
        assert_eq!(c.irq_info(index).unwrap().count.get(), 1, "irq {index}");
    }

    assert_eq!(rig.r32(ID), ID_VALUE);
    assert_eq!(c.region_read(0, ID, 4).unwrap(), b"AMDV");
    assert_eq!(rig.r32(VERSION), 1);
    assert_eq!(rig.r32(STATUS), STATUS_IDLE);
    // BAR1 outside the MSI-X table and PBA reads 0.
    assert_eq!(c.region_read(1, 0x400, 8).unwrap(), [0; 8]);
}

#[test]
fn other_ids() {
    let config = DmaEngineConfig {
        vendor_id: 0x1af4,
        device_id: 0x10ff,
    };
    let device = dma_engine(config).unwrap();
    let mut b = [0u8; 4];
    device.config_read(0, &mut b).unwrap();
    assert_eq!(b, [0xf4, 0x1a, 0xff, 0x10]);
    device.config_read(0x2c, &mut b).unwrap();
    assert_eq!(b, [0xf4, 0x1a, 0xff, 0x10]);
    assert_eq!(layout(config).identity.class_code, 0x088000);
    assert_eq!(DmaEngineConfig::default().vendor_id, 0x1234);
    assert_eq!(DmaEngineConfig::default().device_id, 0xd3a0);
}

#[test]
fn registers_rw_ro_rw1c_undefined_and_pairs() {
    let rig = Rig::new();
    let c = rig.client();
    for (offset, value) in [
        (SRC_LO, 0x1111_2222),
        (SRC_HI, 0x3333_4444),
        (DST_LO, 0x5555_6666),
        (DST_HI, 0x7777_8888),
        (LEN, 0x9999_aaaa),
        (PATTERN, 0xbbbb_cccc),
    ] {
        rig.w32(offset, value);
        assert_eq!(rig.r32(offset), value, "{offset:#x}");
    }
    // 64-bit reads of pairs.
    assert_eq!(rig.r64(SRC_LO), 0x3333_4444_1111_2222);
    assert_eq!(rig.r64(DST_LO), 0x7777_8888_5555_6666);
    assert_eq!(
        rig.r64(ID),
        u64::from(VERSION_VALUE) << 32 | u64::from(ID_VALUE)
    );
    // 64-bit writes of pairs.
    rig.w64(SRC_LO, 0x0102_0304_0506_0708);
    assert_eq!(
        (rig.r32(SRC_LO), rig.r32(SRC_HI)),
        (0x0506_0708, 0x0102_0304)
    );
    rig.w64(DST_LO, 0xa1a2_a3a4_a5a6_a7a8);
    assert_eq!(rig.r64(DST_LO), 0xa1a2_a3a4_a5a6_a7a8);

    // IRQ_ENABLE keeps bit 0 only.
    rig.w32(IRQ_ENABLE, u32::MAX);
    assert_eq!(rig.r32(IRQ_ENABLE), 1);
    rig.w32(IRQ_ENABLE, 0);

    // Read-only registers and CMD (write-only) ignore writes / read 0.
    for offset in [ID, VERSION, STATUS, ERRNO, RESULT, COUNT] {
        let before = rig.r32(offset);
        rig.w32(offset, 0xdead_beef);
        assert_eq!(rig.r32(offset), before, "{offset:#x}");
    }
    assert_eq!(rig.r32(CMD), 0);
    // Undefined offsets: read 0, writes ignored.
    for offset in [0x3c, 0x40, 0x100, 0xffc] {
        rig.w32(offset, 0xffff_ffff);
        assert_eq!(rig.r32(offset), 0, "{offset:#x}");
    }
    let whole = c.region_read(0, 0, BAR0_SIZE as usize).unwrap();
    assert!(whole[0x3c..].iter().all(|&b| b == 0));

    // Other sizes: reads return the bytes, writes are ignored.
    assert_eq!(c.region_read(0, ID, 1).unwrap(), b"A");
    assert_eq!(c.region_read(0, ID + 1, 2).unwrap(), b"MD");
    rig.w32(PATTERN, 0x4433_2211);
    c.region_write(0, PATTERN, &[0xff]).unwrap();
    c.region_write(0, PATTERN, &[0xff, 0xff]).unwrap();
    c.region_write(0, PATTERN + 1, &[0xff; 4]).unwrap();
    c.region_write(0, DST_HI, &[0xff; 8]).unwrap();
    assert_eq!(rig.r32(PATTERN), 0x4433_2211);
    assert_eq!(rig.r64(DST_LO), 0xa1a2_a3a4_a5a6_a7a8);
    // Past the BAR: the server refuses (EINVAL), the device never sees it.
    assert!(c.region_read(0, BAR0_SIZE - 2, 4).is_err());

    // IRQ_STATUS is write-1-to-clear: a failed command sets it (no client memory: EINVAL).
    rig.program(RAM, RAM + PAGE, 16);
    assert_eq!(rig.run(CMD_COPY), (STATUS_ERROR, libc::EINVAL));
    assert_eq!(rig.r32(IRQ_STATUS), IRQ_DONE);
    rig.w32(IRQ_STATUS, 0);
    assert_eq!(rig.r32(IRQ_STATUS), IRQ_DONE, "writing 0 changes nothing");
    rig.w32(IRQ_STATUS, 2);
    assert_eq!(rig.r32(IRQ_STATUS), IRQ_DONE, "only bit 0 clears it");
    rig.w32(IRQ_STATUS, 1);
    assert_eq!(rig.r32(IRQ_STATUS), 0);
    assert_eq!(rig.r32(COUNT), 1);
}

// ---------------------------------------------------------------------------------------
// Commands on memory shared by fd.

#[test]
fn copy_fill_crc32_on_a_memfd() {
    let rig = Rig::new();
    let file = rig.map_memfd(RAM, 4 * MIB);
    let data = pattern(100_000, 5);
    file.write_all_at(&data, 0x1000).unwrap();

    rig.program(RAM + 0x1000, RAM + 2 * MIB + 3, data.len() as u32);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert_eq!(read_file(&file, 2 * MIB + 3, data.len()), data);
    assert_eq!(read_file(&file, 2 * MIB, 3), [0; 3]);
    assert_eq!(read_file(&file, 2 * MIB + 3 + data.len() as u64, 1), [0]);

    // FILL: byte i = byte i % 4 of PATTERN, little-endian, from the first destination byte.
    rig.w32(PATTERN, 0x4433_2211);
    rig.program(0, RAM + 3 * MIB + 1, 10);
    assert_eq!(rig.run(CMD_FILL), (STATUS_DONE, 0));
    assert_eq!(
        read_file(&file, 3 * MIB, 12),
        [0, 0x11, 0x22, 0x33, 0x44, 0x11, 0x22, 0x33, 0x44, 0x11, 0x22, 0]
    );

    // CRC32 of what the client sees, as crc32fast computes it.
    rig.program(RAM + 0x1000, 0, data.len() as u32);
    assert_eq!(rig.run(CMD_CRC32), (STATUS_DONE, 0));
    assert_eq!(
        rig.r32(RESULT),
        crc32fast::hash(&read_file(&file, 0x1000, data.len()))
    );
    // zlib's check value.
    file.write_all_at(b"123456789", 0).unwrap();
    rig.program(RAM, 0, 9);
    assert_eq!(rig.run(CMD_CRC32), (STATUS_DONE, 0));
    assert_eq!(rig.r32(RESULT), 0xcbf4_3926);

    assert_eq!(rig.r32(COUNT), 4);
    assert_eq!(rig.r32(ERRNO), 0);
}

#[test]
fn sixteen_mib_copy() {
    let rig = Rig::new();
    let file = rig.map_memfd(RAM, 32 * MIB);
    let data = pattern(16 * MIB as usize, 11);
    file.write_all_at(&data, 0).unwrap();
    rig.program(RAM, RAM + 16 * MIB, MAX_LEN);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert!(read_file(&file, 16 * MIB, data.len()) == data);
    rig.program(RAM + 16 * MIB, 0, MAX_LEN);
    assert_eq!(rig.run(CMD_CRC32), (STATUS_DONE, 0));
    assert_eq!(rig.r32(RESULT), crc32fast::hash(&data));
}

#[test]
fn overlapping_copy_is_memmove() {
    let rig = Rig::new();
    let file = rig.map_memfd(RAM, MIB);
    let len = 300_000usize;
    for (src, dst) in [(0x1000u64, 0x1000 + 777), (0x1000 + 777, 0x1000)] {
        let before = pattern(512 * 1024, src as u8);
        file.write_all_at(&before, 0).unwrap();
        let mut expect = before.clone();
        expect.copy_within(src as usize..src as usize + len, dst as usize);
        rig.program(RAM + src, RAM + dst, len as u32);
        assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
        assert!(
            read_file(&file, 0, expect.len()) == expect,
            "{src:#x} -> {dst:#x}"
        );
    }
}

#[test]
fn failed_commands_change_no_destination_byte() {
    let rig = Rig::new();
    let c = rig.client();
    let file = memfd("dma-engine", 2 * MIB);
    // [RAM, RAM + 1 MiB) read-write, [RAM + 1 MiB, RAM + 2 MiB) read-only, then a hole.
    c.dma_map_fd(RAM, MIB, file.as_fd(), 0, Prot::READ_WRITE)
        .unwrap();
    c.dma_map_fd(RAM + MIB, MIB, file.as_fd(), MIB, Prot::READ)
        .unwrap();
    let before = pattern(2 * MIB as usize, 77);
    file.write_all_at(&before, 0).unwrap();
    rig.w32(PATTERN, 0xffff_ffff);

    let cases = [
        // Source unmapped.
        (CMD_COPY, 0x10_0000, RAM, 64, libc::EINVAL),
        (CMD_CRC32, RAM + 2 * MIB, 0, 64, libc::EINVAL),
        // Source runs into the hole.
        (CMD_COPY, RAM + 2 * MIB - 8, RAM, 64, libc::EINVAL),
        // Destination read-only, or partly: nothing lands in the writable part either.
        (CMD_COPY, RAM, RAM + MIB, 64, libc::EPERM),
        (CMD_FILL, 0, RAM + MIB - 8, 64, libc::EPERM),
        // Destination partly unmapped.
        (CMD_FILL, 0, RAM - 8, 64, libc::EINVAL),
        // LEN 0 and more than 16 MiB.
        (CMD_COPY, RAM, RAM + PAGE, 0, libc::EINVAL),
        (CMD_FILL, 0, RAM, MAX_LEN + 1, libc::EINVAL),
        (CMD_COPY, RAM, RAM + PAGE, u32::MAX, libc::EINVAL),
        // Past 2^64.
        (CMD_COPY, u64::MAX - 15, RAM, 64, libc::EOVERFLOW),
        (CMD_FILL, 0, u64::MAX - 15, 64, libc::EOVERFLOW),
        (CMD_CRC32, u64::MAX, 0, 2, libc::EOVERFLOW),
        // Not a command.
        (4, RAM, RAM + PAGE, 64, libc::EINVAL),
    ];
    for (i, &(cmd, src, dst, len, errno)) in cases.iter().enumerate() {
        rig.program(src, dst, len);
        assert_eq!(rig.run(cmd), (STATUS_ERROR, errno), "case {i}");
        assert!(
            read_file(&file, 0, before.len()) == before,
            "case {i} changed bytes"
        );
        assert_eq!(rig.r32(RESULT), 0, "case {i}");
    }
    assert_eq!(rig.r32(COUNT), cases.len() as u32);
    // CMD 0 is no command at all.
    rig.w32(CMD, 0);
    assert_eq!(rig.r32(STATUS), STATUS_ERROR);
    assert_eq!(rig.r32(COUNT), cases.len() as u32);
    // The next good command clears ERRNO.
    rig.program(RAM + MIB, RAM, 64);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert_eq!(read_file(&file, 0, 64), before[MIB as usize..][..64]);
}

// ---------------------------------------------------------------------------------------
// Interrupts, COUNT, reset.

#[test]
fn interrupt_through_msix_then_intx() {
    let rig = Rig::new();
    let c = rig.client();
    let file = rig.map_memfd(RAM, MIB);
    file.write_all_at(b"interrupt me", 0).unwrap();
    rig.program(RAM, RAM + PAGE, 12);

    // MSI-X.
    let msix = eventfd();
    c.set_irqs_eventfd(PCI_MSIX_IRQ_INDEX, 0, &[msix.as_fd()])
        .unwrap();
    // IRQ_ENABLE clear: IRQ_STATUS is set, nothing is signalled.
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert_eq!(rig.r32(IRQ_STATUS), IRQ_DONE);
    rig.w32(IRQ_STATUS, IRQ_DONE);
    rig.w32(IRQ_ENABLE, 1);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    // Exactly one signal: the second command's (the first one's would have come first).
    assert_eq!(wait_signal(&msix), 1);
    assert_eq!(rig.r32(IRQ_STATUS), IRQ_DONE);
    rig.w32(IRQ_STATUS, IRQ_DONE);
    assert_eq!(rig.r32(IRQ_STATUS), 0);
    // A failed command interrupts too.
    rig.w32(LEN, 0);
    assert_eq!(rig.run(CMD_COPY), (STATUS_ERROR, libc::EINVAL));
    assert_eq!(wait_signal(&msix), 1);
    rig.w32(IRQ_STATUS, IRQ_DONE);
    c.disable_irqs(PCI_MSIX_IRQ_INDEX).unwrap();

    // INTx: a level, shown in the status register of config space, lowered by the W1C.
    let intx = eventfd();
    c.set_irqs_eventfd(PCI_INTX_IRQ_INDEX, 0, &[intx.as_fd()])
        .unwrap();
    let level = |rig: &Rig| rig.config(0x06, 1)[0] & 0x08 != 0;
    assert!(!level(&rig));
    rig.w32(LEN, 12);
    assert_eq!(rig.run(CMD_FILL), (STATUS_DONE, 0));
    assert_eq!(wait_signal(&intx), 1);
    assert!(level(&rig));
    rig.w32(IRQ_STATUS, IRQ_DONE);
    assert!(!level(&rig));
    assert_eq!(rig.r32(IRQ_STATUS), 0);
    // Unmasked again (as a VMM does at EOI), the next completion signals again.
    c.set_irqs(PCI_INTX_IRQ_INDEX, IrqAction::Unmask, 0, 1)
        .unwrap();
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert_eq!(wait_signal(&intx), 1);
    assert!(level(&rig));
    rig.w32(IRQ_STATUS, IRQ_DONE);
    assert!(!level(&rig));
    assert_eq!(rig.r32(COUNT), 5);
}

#[test]
fn count_and_reset() {
    let rig = Rig::new();
    let file = rig.map_memfd(RAM, MIB);
    file.write_all_at(b"count", 0).unwrap();
    rig.program(RAM, RAM + PAGE, 5);
    for n in 1..=3 {
        assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
        assert_eq!(rig.r32(COUNT), n);
    }
    rig.program(RAM, 0, 5);
    assert_eq!(rig.run(CMD_CRC32), (STATUS_DONE, 0));
    rig.w32(PATTERN, 0x1234_5678);
    rig.w32(IRQ_ENABLE, 1);
    assert_ne!(rig.r32(RESULT), 0);
    assert_eq!(rig.r32(IRQ_STATUS), IRQ_DONE);

    rig.client().reset().unwrap();
    let mut expect = vec![0u8; 0x40];
    expect[..4].copy_from_slice(&ID_VALUE.to_le_bytes());
    expect[4..8].copy_from_slice(&VERSION_VALUE.to_le_bytes());
    assert_eq!(rig.client().region_read(0, 0, 0x40).unwrap(), expect);

    // Commands work after reset; COUNT starts again.
    rig.program(RAM, RAM + 2 * PAGE, 5);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert_eq!(read_file(&file, 2 * PAGE, 5), b"count");
    assert_eq!(rig.r32(COUNT), 1);
}

#[test]
fn reset_during_a_command_waits_for_it() {
    let rig = Rig::new();
    let c = rig.client();
    let gate = Gate::new(PAGE as usize);
    gate.inner.write_at(0, b"gated source").unwrap();
    c.dma_map_memory(RAM, PAGE, gate.clone(), 0, Prot::READ)
        .unwrap();
    let file = rig.map_memfd(RAM + MIB, MIB);
    let msix = eventfd();
    c.set_irqs_eventfd(PCI_MSIX_IRQ_INDEX, 0, &[msix.as_fd()])
        .unwrap();
    rig.w32(IRQ_ENABLE, 1);
    gate.armed.store(true, Ordering::SeqCst);
    rig.program(RAM, RAM + MIB, 12);
    rig.w32(CMD, CMD_COPY);
    gate.entered.wait();
    assert_eq!(rig.r32(STATUS), STATUS_BUSY);
    // A CMD while busy is ignored.
    rig.w32(PATTERN, 0xaaaa_aaaa);
    rig.w32(CMD, CMD_FILL);
    assert_eq!(rig.r32(STATUS), STATUS_BUSY);
    thread::scope(|s| {
        let resetting = s.spawn(|| c.reset());
        // The reset waits for the command (it cannot stop a transfer halfway).
        gate.release.wait();
        resetting.join().unwrap().unwrap();
    });
    // The command's bytes landed; every register is back to its initial value. (Whether the
    // reset began before the command ended is not observable here, so neither is the discarded
    // completion: the unit test `reset_discards_the_completion_of_a_running_command` makes that
    // order certain and checks that nothing is raised.)
    assert_eq!(read_file(&file, 0, 12), b"gated source");
    assert_eq!(rig.r32(STATUS), STATUS_IDLE);
    assert_eq!(rig.r32(COUNT), 0);
    assert_eq!(rig.r32(IRQ_STATUS), 0);
    assert_eq!(rig.r32(IRQ_ENABLE), 0);
    // After the reset, nothing more is signalled: a command with IRQ_ENABLE clear is silent.
    let _ = take_count(&msix);
    rig.program(RAM + MIB, RAM + MIB + PAGE, 12);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert_eq!(read_file(&file, PAGE, 12), b"gated source");
    assert_eq!(take_count(&msix), 0);
}

// ---------------------------------------------------------------------------------------
// Memory shared without an fd: DMA_READ/DMA_WRITE round trips.

#[test]
fn commands_on_memory_without_an_fd() {
    let rig = Rig::new();
    let c = rig.client();
    let size = 8 * MIB;
    let ram = Arc::new(OwnedMemory::new(size as usize).unwrap());
    c.dma_map_memory(RAM, size, ram.clone(), 0, Prot::READ_WRITE)
        .unwrap();
    let ro = Arc::new(OwnedMemory::new(PAGE as usize).unwrap());
    c.dma_map_memory(RAM + size, PAGE, ro.clone(), 0, Prot::READ)
        .unwrap();
    let (served_before, _) = c.dma_requests();

    // Larger than one message (1 MiB): the server splits it.
    let data = pattern(3 * MIB as usize + 5, 21);
    ram.write_at(0, &data).unwrap();
    rig.program(RAM, RAM + 4 * MIB + 1, data.len() as u32);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert!(read_memory(&*ram, 4 * MIB + 1, data.len()) == data);

    // Overlapping, through messages too.
    let mut expect = read_memory(&*ram, 0, 2 * MIB as usize);
    expect.copy_within(0..MIB as usize, 1000);
    rig.program(RAM, RAM + 1000, MIB as u32);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert!(read_memory(&*ram, 0, 2 * MIB as usize) == expect);

    rig.w32(PATTERN, 0xd4c3_b2a1);
    rig.program(0, RAM + 7 * MIB + 0x1_0002, 6);
    assert_eq!(rig.run(CMD_FILL), (STATUS_DONE, 0));
    assert_eq!(
        read_memory(&*ram, 7 * MIB + 0x1_0000, 9),
        [0, 0, 0xa1, 0xb2, 0xc3, 0xd4, 0xa1, 0xb2, 0]
    );

    rig.program(RAM + 4 * MIB + 1, 0, data.len() as u32);
    assert_eq!(rig.run(CMD_CRC32), (STATUS_DONE, 0));
    assert_eq!(rig.r32(RESULT), crc32fast::hash(&data));

    // Failures change nothing here either.
    let before = read_memory(&*ram, 0, size as usize);
    rig.program(RAM, RAM + size, 64);
    assert_eq!(rig.run(CMD_COPY), (STATUS_ERROR, libc::EPERM));
    rig.program(RAM, RAM + size - 8, 64);
    assert_eq!(rig.run(CMD_COPY), (STATUS_ERROR, libc::EPERM));
    rig.program(RAM + size, RAM, 2 * PAGE as u32);
    assert_eq!(rig.run(CMD_COPY), (STATUS_ERROR, libc::EINVAL));
    assert!(read_memory(&*ram, 0, size as usize) == before);
    assert_eq!(read_memory(&*ro, 0, PAGE as usize), vec![0; PAGE as usize]);

    let (served, _) = c.dma_requests();
    assert!(served > served_before + 8, "{served_before} -> {served}");
}

// ---------------------------------------------------------------------------------------
// Dirty pages.

#[test]
fn dirty_report_shows_exactly_the_destination_pages() {
    let rig = Rig::new();
    let c = rig.client();
    let size = 64 * PAGE;
    let file = rig.map_memfd(RAM, size);
    file.write_all_at(&pattern(size as usize, 1), 0).unwrap();
    c.dma_logging_start(PAGE, &[(RAM, size)]).unwrap();

    // FILL [3 pages + 1, 5 pages + 1): pages 3, 4, 5.
    rig.program(0, RAM + 3 * PAGE + 1, 2 * PAGE as u32);
    assert_eq!(rig.run(CMD_FILL), (STATUS_DONE, 0));
    // COPY pages 10..13 to page 20 + 0x800 .. : pages 20, 21, 22, 23 (source not dirty).
    rig.program(RAM + 10 * PAGE, RAM + 20 * PAGE + 0x800, 3 * PAGE as u32);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    // CRC32 and failed commands write nothing.
    rig.program(RAM + 30 * PAGE, 0, 4 * PAGE as u32);
    assert_eq!(rig.run(CMD_CRC32), (STATUS_DONE, 0));
    rig.program(RAM + 40 * PAGE, RAM + 63 * PAGE, 2 * PAGE as u32);
    assert_eq!(rig.run(CMD_COPY), (STATUS_ERROR, libc::EINVAL));

    let bitmap = c.dma_logging_report(RAM, size, PAGE).unwrap();
    let dirty: Vec<u64> = (0..64)
        .filter(|&p| bitmap[p as usize / 8] & (1 << (p % 8)) != 0)
        .collect();
    assert_eq!(dirty, [3, 4, 5, 20, 21, 22, 23]);
    // The report cleared them.
    let again = c.dma_logging_report(RAM, size, PAGE).unwrap();
    assert!(again.iter().all(|&b| b == 0));
    c.dma_logging_stop().unwrap();
}

// ---------------------------------------------------------------------------------------
// Unmap.

#[test]
fn unmap_while_idle() {
    let rig = Rig::new();
    let c = rig.client();
    let file = rig.map_memfd(RAM, MIB);
    file.write_all_at(b"still here", 0).unwrap();
    rig.program(RAM, RAM + PAGE, 10);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    c.dma_unmap(RAM, MIB).unwrap();
    rig.program(RAM, RAM + 2 * PAGE, 10);
    assert_eq!(rig.run(CMD_COPY), (STATUS_ERROR, libc::EINVAL));
    rig.program(0, RAM + 2 * PAGE, 10);
    assert_eq!(rig.run(CMD_FILL), (STATUS_ERROR, libc::EINVAL));
    assert_eq!(read_file(&file, 2 * PAGE, 10), [0; 10]);
    // Mapped again, it works again.
    c.dma_map_fd(RAM, MIB, file.as_fd(), 0, Prot::READ_WRITE)
        .unwrap();
    rig.program(RAM, RAM + 2 * PAGE, 10);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert_eq!(read_file(&file, 2 * PAGE, 10), b"still here");
}

/// DMA_UNMAP does not wait for a command as a whole; it waits for a `dma_rw` in flight (the
/// core's rule), and the command writes its destination with one `dma_rw`. So a 16 MiB copy
/// whose destination is unmapped while it runs either finished writing before the unmap
/// returned (STATUS 2, all bytes there) or fails with EINVAL (no byte written); either way
/// no byte lands after the unmap returned.
#[test]
fn unmap_while_a_16_mib_copy_runs() {
    let rig = Rig::new();
    let c = rig.client();
    let file = memfd("dma-engine", 32 * MIB);
    let data = pattern(16 * MIB as usize, 99);
    file.write_all_at(&data, 0).unwrap();
    c.dma_map_fd(RAM, 16 * MIB, file.as_fd(), 0, Prot::READ_WRITE)
        .unwrap();
    c.dma_map_fd(
        RAM + 16 * MIB,
        16 * MIB,
        file.as_fd(),
        16 * MIB,
        Prot::READ_WRITE,
    )
    .unwrap();
    rig.program(RAM, RAM + 16 * MIB, MAX_LEN);
    rig.w32(CMD, CMD_COPY);
    c.dma_unmap(RAM + 16 * MIB, 16 * MIB).unwrap();
    let at_unmap = read_file(&file, 16 * MIB, data.len());
    let outcome = rig.wait();
    eprintln!("copy racing the unmap of its destination: {outcome:?}");
    let after = read_file(&file, 16 * MIB, data.len());
    assert!(after == at_unmap, "bytes landed after the unmap returned");
    match outcome {
        (STATUS_DONE, 0) => assert!(after == data, "a copy that succeeded wrote everything"),
        (STATUS_ERROR, libc::EINVAL) => {
            assert!(after.iter().all(|&b| b == 0), "a failed copy wrote bytes")
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    assert_eq!(rig.r32(COUNT), 1);
}

/// The failing side of the race, made certain: the command is stopped in its source read
/// (memory served by DMA_READ that the test holds back); the unmap of the destination is
/// published meanwhile (and then waits for the read in flight); when the read ends the
/// command's write finds no mapping: EINVAL, nothing written.
#[test]
fn unmap_of_the_destination_during_the_source_read_fails_the_command() {
    let rig = Rig::new();
    let c = rig.client();
    let gate = Gate::new(PAGE as usize);
    gate.inner.write_at(0, &[0xee; 64]).unwrap();
    c.dma_map_memory(RAM, PAGE, gate.clone(), 0, Prot::READ)
        .unwrap();
    let file = rig.map_memfd(RAM + MIB, MIB);
    gate.armed.store(true, Ordering::SeqCst);
    rig.program(RAM, RAM + MIB, 64);
    rig.w32(CMD, CMD_COPY);
    gate.entered.wait();

    // A handle to watch the server's address space with lock-free reads (taken now: getting
    // one takes the container's lock, which the unmap holds while it waits for the read).
    let probe = rig.server.container().group_handle(GroupId(0)).unwrap();
    let unmapping = c.send_dma_unmap(RAM + MIB, MIB).unwrap();
    // Watch until the destination is gone.
    let mut gone = false;
    for _ in 0..200_000 {
        if probe.read(Iova(RAM + MIB), &mut [0]).is_err() {
            gone = true;
            break;
        }
        thread::sleep(Duration::from_micros(50));
    }
    drop(probe);
    gate.release.wait();
    assert!(gone, "the unmap was never published");
    unmapping.wait().unwrap();
    assert_eq!(rig.wait(), (STATUS_ERROR, libc::EINVAL));
    assert_eq!(read_file(&file, 0, 64), [0; 64]);
}

/// A second client after the first one left gets a working device in its initial state (the
/// first client's DMA handle is gone, its registers cleared; the second one's handle is used).
#[test]
fn next_client_after_disconnect() {
    let n = RIGS.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("vdma-engine-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("engine.sock");
    let device = Arc::new(dma_engine(DmaEngineConfig::default()).unwrap());
    let server = Arc::new(Server::bind(&path, device.clone(), ServerConfig::default()).unwrap());
    let serving = thread::spawn({
        let server = Arc::clone(&server);
        move || {
            for _ in 0..2 {
                server.serve_one().unwrap();
            }
        }
    });
    for round in 0..2u8 {
        let client = Client::connect(&path).unwrap();
        let file = memfd("dma-engine", MIB);
        file.write_all_at(&[round + 1; 8], 0).unwrap();
        client
            .dma_map_fd(RAM, MIB, file.as_fd(), 0, Prot::READ_WRITE)
            .unwrap();
        let w = |offset: u64, value: u64| {
            client
                .region_write(0, offset, &value.to_le_bytes())
                .unwrap()
        };
        // No reset: the first client's disconnect left the registers as after power-on.
        let regs = client.region_read(0, 0, 0x40).unwrap();
        assert!(regs[8..].iter().all(|&b| b == 0), "round {round}: {regs:?}");
        for (offset, value) in [(PATTERN, 0x5555_5555u32), (IRQ_ENABLE, 1)] {
            client
                .region_write(0, offset, &value.to_le_bytes())
                .unwrap();
        }
        w(SRC_LO, RAM);
        w(DST_LO, RAM + PAGE);
        client.region_write(0, LEN, &8u32.to_le_bytes()).unwrap();
        client
            .region_write(0, CMD, &CMD_COPY.to_le_bytes())
            .unwrap();
        device.function().wait_idle();
        let status = client.region_read(0, STATUS, 4).unwrap();
        assert_eq!(status, STATUS_DONE.to_le_bytes());
        assert_eq!(read_file(&file, PAGE, 8), [round + 1; 8]);
        client.close();
    }
    serving.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_memfd_shrunk_under_its_mapping_fails_commands_with_efault() {
    // A hostile or buggy client truncates the file it mapped: the engine's accesses past the
    // new end must fail (EFAULT) instead of killing the server with SIGBUS, and the server
    // goes on serving.
    let rig = Rig::new();
    let file = rig.map_memfd(RAM, 4 * MIB);
    file.write_all_at(&pattern(8192, 3), 0).unwrap();
    rig.program(RAM, RAM + 2 * MIB, 8192);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));

    file.set_len(MIB).unwrap();
    // Source past the end.
    rig.program(RAM + 2 * MIB, RAM, 4096);
    assert_eq!(rig.run(CMD_COPY), (STATUS_ERROR, libc::EFAULT));
    // Destination past the end.
    rig.program(RAM, RAM + 3 * MIB, 4096);
    assert_eq!(rig.run(CMD_COPY), (STATUS_ERROR, libc::EFAULT));
    // The faulted mapping stays poisoned (even below the new end: its memory is no longer
    // trusted), but the server goes on: registers answer, and a new mapping of another file
    // works.
    rig.program(RAM, RAM + 4096, 4096);
    assert_eq!(rig.run(CMD_COPY), (STATUS_ERROR, libc::EFAULT));
    assert_eq!(rig.r32(ID), ID_VALUE);
    let other = rig.map_memfd(RAM + 16 * MIB, MIB);
    other.write_all_at(&pattern(4096, 9), 0).unwrap();
    rig.program(RAM + 16 * MIB, RAM + 16 * MIB + 8192, 4096);
    assert_eq!(rig.run(CMD_COPY), (STATUS_DONE, 0));
    assert_eq!(read_file(&other, 8192, 4096), pattern(4096, 9));
}
