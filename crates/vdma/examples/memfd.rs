//! Maps a memfd the way a VMM shares guest RAM, moves data through a device handle across two
//! mappings, and checks it through a second, independent view of the same file.
//!
//! Run: `cargo run -p vdma --example memfd`

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use vdma::{Backing, Config, Container, DeviceId, Direction, GroupId, Iova, Prot};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Guest RAM: 2 MiB in a memfd, as QEMU's memory-backend-memfd shares it.
    // SAFETY: memfd_create with a valid C string; the result is checked before use.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    let ram = unsafe { File::from_raw_fd(fd) };
    ram.set_len(2 << 20)?;

    // The address space: two mappings of the file, adjacent in IOVA, swapped in the file.
    let space = Container::new(Config::default())?;
    space.map(
        Iova(0x1_0000_0000),
        1 << 20,
        Backing::file(&ram, 1 << 20),
        Prot::READ_WRITE,
    )?;
    space.map(
        Iova(0x1_0010_0000),
        1 << 20,
        Backing::file(&ram, 0),
        Prot::READ_WRITE,
    )?;
    for m in space.mappings() {
        println!("mapped   {} + {:#x} {}", m.iova, m.size, m.prot);
    }

    space.attach_group(GroupId(1))?;
    let dev_id = DeviceId::new("0000:00:04.0");
    space.add_device(GroupId(1), dev_id.clone())?;
    let dev = space.device_handle(&dev_id)?;

    // A 4 KiB write that straddles the two mappings.
    let at = Iova(0x1_0010_0000 - 2048);
    let mut out: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    dev.dma_rw(at, &mut out, Direction::Write)?;
    println!("wrote    4096 bytes at {at} (across the mapping boundary)");

    // The bytes are in the file: the first half at the end of the second MiB, the second half
    // at the start of the first MiB.
    let mut tail = vec![0u8; 2048];
    let mut head = vec![0u8; 2048];
    ram.read_exact_at(&mut tail, (2 << 20) - 2048)?;
    ram.read_exact_at(&mut head, 0)?;
    assert_eq!(&tail[..], &out[..2048]);
    assert_eq!(&head[..], &out[2048..]);
    println!("verified through an independent read of the memfd");

    // And back through the device.
    let mut back = vec![0u8; 4096];
    dev.dma_rw(at, &mut back, Direction::Read)?;
    assert_eq!(back, out);
    println!("read     4096 bytes back through the device handle: identical");

    // An access that runs past the mapped range fails whole, naming the first unmapped IOVA.
    let err = dev
        .read(Iova(0x1_0020_0000 - 8), &mut [0u8; 16])
        .unwrap_err();
    println!("past end {err} (errno {})", err.errno());

    drop(dev);
    let removed = space.unmap_all()?;
    println!("unmapped {removed:#x} bytes");
    Ok(())
}
