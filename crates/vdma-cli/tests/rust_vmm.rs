//! An independent client: rust-vmm's `vfio_user` crate drives `vdma serve` (the dma-engine)
//! over a real socket: negotiation, device and region info, a DMA mapping of a memfd, register
//! reads and writes, a FILL and a COPY whose bytes show in the client's own view of the memfd,
//! irq info, unmap and reset.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;

use vdma_cli::dma_engine::registers::*;
use vdma_model::memfd;

use common::Serve;

const BAR0: u32 = 0;
const CONFIG: u32 = 7;

fn read32(client: &mut vfio_user::Client, region: u32, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    client.region_read(region, offset, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn write32(client: &mut vfio_user::Client, region: u32, offset: u64, value: u32) {
    client
        .region_write(region, offset, &value.to_le_bytes())
        .unwrap();
}

/// Runs one command and waits for it to end; returns (STATUS, ERRNO).
fn run(client: &mut vfio_user::Client, cmd: u32) -> (u32, u32) {
    write32(client, BAR0, CMD, cmd);
    for _ in 0..100_000 {
        let status = read32(client, BAR0, STATUS);
        if status != 1 {
            return (status, read32(client, BAR0, ERRNO));
        }
        std::thread::yield_now();
    }
    panic!("the engine stayed busy");
}

fn set_range(client: &mut vfio_user::Client, src: u64, dst: u64, len: u32) {
    write32(client, BAR0, SRC_LO, src as u32);
    write32(client, BAR0, SRC_HI, (src >> 32) as u32);
    write32(client, BAR0, DST_LO, dst as u32);
    write32(client, BAR0, DST_HI, (dst >> 32) as u32);
    write32(client, BAR0, LEN, len);
}

#[test]
fn rust_vmm_client_drives_the_dma_engine() {
    let serve = Serve::start("engine");
    let mut client = vfio_user::Client::new(&serve.socket).expect("negotiate with vdma serve");

    // Device and region info, as the client gathered them at connect. (Not
    // `client.resettable()`: vfio_user 0.1.7 inverts the RESET flag test, so it says false
    // for a device that sets DEVICE_FLAGS_RESET; the reset below works all the same.)
    let bar0 = client.region(BAR0).expect("BAR0");
    assert_eq!(bar0.size, 4096);
    assert_ne!(bar0.flags & 0b11, 0, "BAR0 readable and writable");
    assert_eq!(client.region(CONFIG).expect("config space").size, 256);
    assert_eq!(client.region(6).expect("ROM").size, 0);

    // Config space: ids and class.
    let id = read32(&mut client, CONFIG, 0);
    assert_eq!(id, 0xd3a0_1234, "vendor 0x1234, device 0xd3a0");
    let class = read32(&mut client, CONFIG, 8);
    assert_eq!(class >> 8, 0x088000);
    assert_eq!(class & 0xff, 1, "revision 1");

    // Registers.
    assert_eq!(read32(&mut client, BAR0, 0x00), 0x5644_4d41);
    assert_eq!(read32(&mut client, BAR0, 0x04), 1);
    write32(&mut client, BAR0, PATTERN, 0xa1b2_c3d4);
    assert_eq!(read32(&mut client, BAR0, PATTERN), 0xa1b2_c3d4);

    // MSI-X: one vector.
    let msix = client.get_irq_info(2).unwrap();
    assert_eq!(msix.count, 1);

    // Guest memory: a memfd mapped read-write at IOVA 1 MiB.
    let iova = 0x10_0000u64;
    let mut guest = memfd("guest", 0x10000);
    client.dma_map(0, iova, 0x10000, guest.as_raw_fd()).unwrap();

    // FILL 0x1000 bytes at +0x2000 with the pattern, then COPY them to +0x8000 (+3 bytes).
    set_range(&mut client, 0, iova + 0x2000, 0x1000);
    assert_eq!(run(&mut client, 2), (2, 0));
    set_range(&mut client, iova + 0x2000, iova + 0x8003, 0x1000);
    assert_eq!(run(&mut client, 1), (2, 0));
    assert_eq!(read32(&mut client, BAR0, COUNT), 2);

    let mut bytes = vec![0u8; 0x10000];
    guest.seek(SeekFrom::Start(0)).unwrap();
    guest.read_exact(&mut bytes).unwrap();
    let pattern = 0xa1b2_c3d4u32.to_le_bytes();
    for i in 0..0x1000 {
        assert_eq!(bytes[0x2000 + i], pattern[i % 4], "fill byte {i}");
        assert_eq!(bytes[0x8003 + i], pattern[i % 4], "copy byte {i}");
    }
    assert_eq!(bytes[0x1fff], 0);
    assert_eq!(bytes[0x3000], 0);
    assert_eq!(bytes[0x8002], 0);
    assert_eq!(bytes[0x9003], 0);

    // Bytes the client writes are what the engine reads: CRC32 of them.
    guest.seek(SeekFrom::Start(0x4000)).unwrap();
    guest.write_all(b"123456789").unwrap();
    set_range(&mut client, iova + 0x4000, 0, 9);
    assert_eq!(run(&mut client, 3), (2, 0));
    assert_eq!(
        read32(&mut client, BAR0, 0x28),
        0xcbf4_3926,
        "CRC32 check value"
    );

    // After the unmap, the same COPY fails with EINVAL and changes nothing.
    client.dma_unmap(iova, 0x10000).unwrap();
    set_range(&mut client, iova + 0x2000, iova + 0x8003, 0x1000);
    assert_eq!(run(&mut client, 1), (3, libc::EINVAL as u32));

    // Reset clears the registers.
    client.reset().unwrap();
    assert_eq!(read32(&mut client, BAR0, PATTERN), 0);
    assert_eq!(read32(&mut client, BAR0, COUNT), 0);
    assert_eq!(read32(&mut client, BAR0, STATUS), 0);
    client.shutdown().unwrap();
}
