//! vdma's client against the `vdma serve` binary over a real socket, the whole device path:
//! COPY, FILL and CRC32 on a memfd, the completion interrupt through an MSI-X eventfd, the
//! dirty report of DMA logging, the same commands on memory the client serves through
//! DMA_READ/DMA_WRITE messages, and unmap while the engine is idle and while it is busy.

mod common;

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vdma::{Memory, OwnedMemory, Prot};
use vdma_cli::dma_engine::registers::*;
use vdma_model::{eventfd, memfd};
use vdma_user::client::Client;
use vdma_user::protocol::PCI_MSIX_IRQ_INDEX;

use common::Serve;

const MIB: u64 = 1 << 20;
const RAM: u64 = 0x1_0000_0000;
const WAIT: Duration = Duration::from_secs(30);

/// Waits (bounded) until the eventfd has been signalled `n` times since it was last read.
fn wait_signals(fd: &OwnedFd, n: u64) {
    let mut file = File::from(fd.try_clone().unwrap());
    let deadline = Instant::now() + WAIT;
    let mut count = 0;
    while count < n {
        let mut b = [0u8; 8];
        match file.read(&mut b) {
            Ok(8) => count += u64::from_ne_bytes(b),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "{count} of {n} interrupts came");
                thread::sleep(Duration::from_millis(1));
            }
            other => panic!("eventfd read: {other:?}"),
        }
    }
    assert_eq!(count, n, "more interrupts than commands");
}

fn w32(c: &Client, offset: u64, value: u32) {
    c.region_write(0, offset, &value.to_le_bytes()).unwrap();
}

fn r32(c: &Client, offset: u64) -> u32 {
    u32::from_le_bytes(c.region_read(0, offset, 4).unwrap().try_into().unwrap())
}

fn program(c: &Client, src: u64, dst: u64, len: u32) {
    for (offset, value) in [
        (SRC_LO, src as u32),
        (SRC_HI, (src >> 32) as u32),
        (DST_LO, dst as u32),
        (DST_HI, (dst >> 32) as u32),
        (LEN, len),
    ] {
        w32(c, offset, value);
    }
}

/// Runs `cmd`, waits for it to end: (STATUS, ERRNO).
fn run(c: &Client, cmd: u32) -> (u32, u32) {
    w32(c, CMD, cmd);
    let deadline = Instant::now() + WAIT;
    loop {
        let status = r32(c, STATUS);
        if status != STATUS_BUSY {
            return (status, r32(c, ERRNO));
        }
        assert!(Instant::now() < deadline, "the engine stayed busy");
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn vdma_client_drives_vdma_serve() {
    let serve = Serve::start("e2e");
    let client = Client::connect(&serve.socket).unwrap();

    // Guest memory as a memfd; DMA logging over it at 4 KiB.
    let file = memfd("guest", 4 * MIB);
    client
        .dma_map_fd(RAM, 4 * MIB, file.as_fd(), 0, Prot::READ_WRITE)
        .unwrap();
    client.dma_logging_start(4096, &[(RAM, 4 * MIB)]).unwrap();

    // The completion interrupt through MSI-X vector 0.
    let irq = eventfd();
    client
        .set_irqs_eventfd(PCI_MSIX_IRQ_INDEX, 0, &[irq.as_fd()])
        .unwrap();
    w32(&client, IRQ_ENABLE, 1);

    // COPY 10,000 bytes from +0x1000 to +0x10_0003 (pages 256..=258).
    let data = pattern(10_000, 7);
    file.write_all_at(&data, 0x1000).unwrap();
    program(&client, RAM + 0x1000, RAM + 0x10_0003, data.len() as u32);
    assert_eq!(run(&client, CMD_COPY), (STATUS_DONE, 0));
    wait_signals(&irq, 1);
    assert_eq!(r32(&client, IRQ_STATUS), 1);
    w32(&client, IRQ_STATUS, 1);
    assert_eq!(r32(&client, IRQ_STATUS), 0);
    let mut got = vec![0u8; data.len()];
    file.read_exact_at(&mut got, 0x10_0003).unwrap();
    assert_eq!(got, data);

    // The dirty report: exactly the destination's pages.
    let bitmap = client.dma_logging_report(RAM, 4 * MIB, 4096).unwrap();
    let dirty: Vec<usize> = (0..bitmap.len() * 8)
        .filter(|&bit| bitmap[bit / 8] & (1 << (bit % 8)) != 0)
        .collect();
    assert_eq!(dirty, vec![256, 257, 258]);

    // FILL and CRC32.
    w32(&client, PATTERN, 0xa1b2_c3d4);
    program(&client, 0, RAM + 0x20_0001, 6);
    assert_eq!(run(&client, CMD_FILL), (STATUS_DONE, 0));
    let mut filled = [0u8; 8];
    file.read_exact_at(&mut filled, 0x20_0000).unwrap();
    assert_eq!(filled, [0, 0xd4, 0xc3, 0xb2, 0xa1, 0xd4, 0xc3, 0]);
    program(&client, RAM + 0x1000, 0, data.len() as u32);
    assert_eq!(run(&client, CMD_CRC32), (STATUS_DONE, 0));
    assert_eq!(r32(&client, RESULT), crc32fast::hash(&data));
    wait_signals(&irq, 2);

    // Memory the client serves through DMA_READ/DMA_WRITE.
    let served = Arc::new(OwnedMemory::new(2 * MIB as usize).unwrap());
    served.write_at(0, &data).unwrap();
    let by_msg = RAM + 16 * MIB;
    client
        .dma_map_memory(by_msg, 2 * MIB, served.clone(), 0, Prot::READ_WRITE)
        .unwrap();
    program(&client, by_msg, by_msg + MIB + 5, data.len() as u32);
    assert_eq!(run(&client, CMD_COPY), (STATUS_DONE, 0));
    let mut back = vec![0u8; data.len()];
    served.read_at(MIB + 5, &mut back).unwrap();
    assert_eq!(back, data);
    program(&client, by_msg, 0, data.len() as u32);
    assert_eq!(run(&client, CMD_CRC32), (STATUS_DONE, 0));
    assert_eq!(r32(&client, RESULT), crc32fast::hash(&data));

    // Unmap while idle: the same COPY now fails with EINVAL.
    client.dma_unmap(by_msg, 2 * MIB).unwrap();
    program(&client, by_msg, by_msg + MIB, 16);
    assert_eq!(run(&client, CMD_COPY), (STATUS_ERROR, libc::EINVAL as u32));

    // Unmap while busy: a 16 MiB COPY on a fresh memfd, unmapped at once. The unmap returns,
    // the command ends (done if it finished first, EINVAL if not), and no byte changes after
    // the unmap returned.
    let big = memfd("big", 32 * MIB);
    let big_iova = RAM + 64 * MIB;
    big.write_all_at(&pattern(4096, 1), 0).unwrap();
    client
        .dma_map_fd(big_iova, 32 * MIB, big.as_fd(), 0, Prot::READ_WRITE)
        .unwrap();
    program(&client, big_iova, big_iova + 16 * MIB, 16 * MIB as u32);
    w32(&client, CMD, CMD_COPY);
    client.dma_unmap(big_iova, 32 * MIB).unwrap();
    let mut after = vec![0u8; 4096];
    big.read_exact_at(&mut after, 16 * MIB).unwrap();
    let (status, errno) = {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = r32(&client, STATUS);
            if s != STATUS_BUSY {
                break (s, r32(&client, ERRNO));
            }
            assert!(Instant::now() < deadline, "the engine stayed busy");
        }
    };
    assert!(
        (status, errno) == (STATUS_DONE, 0)
            || (status, errno) == (STATUS_ERROR, libc::EINVAL as u32),
        "status {status}, errno {errno}"
    );
    let mut later = vec![0u8; 4096];
    big.read_exact_at(&mut later, 16 * MIB).unwrap();
    assert_eq!(later, after, "a byte landed after the unmap returned");
    assert_eq!(r32(&client, ID), ID_VALUE);
}
