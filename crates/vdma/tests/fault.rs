//! A file that shrinks under its mapping: accesses fail with EFAULT, the process lives on
//! (semantics §3), and SIGBUS that is not vdma's still reaches the default action.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vdma::{Backing, Iova, Memory, OwnedMemory, Prot};

mod common;
use common::{group, memfd, space};

/// The name of the memfds here.
const NAME: &str = "vdma-fault-test";

#[test]
fn shrunk_file_gives_efault_not_sigbus() {
    let file = memfd(NAME, 4 * 4096);
    let space = space();
    space
        .map(
            Iova(0x10000),
            4 * 4096,
            Backing::file(&file, 0),
            Prot::READ_WRITE,
        )
        .unwrap();
    // An unrelated mapping, to see that other memory is unaffected.
    let other = Arc::new(OwnedMemory::new(4096).unwrap());
    space
        .map(
            Iova(0x40000),
            4096,
            Backing::memory(other, 0),
            Prot::READ_WRITE,
        )
        .unwrap();
    let h = group(&space);
    h.write(Iova(0x10000 + 3 * 4096), b"before").unwrap();

    file.set_len(4096).unwrap(); // pages 1..3 are gone from under the mapping

    let mut buf = [0u8; 8];
    let err = h.read(Iova(0x10000 + 2 * 4096), &mut buf).unwrap_err();
    assert_eq!(err.errno(), libc::EFAULT, "{err}");
    assert!(matches!(err, vdma::Error::Fault { iova } if iova == Iova(0x12000)));
    let err = h.write(Iova(0x10000 + 3 * 4096), b"after").unwrap_err();
    assert_eq!(err.errno(), libc::EFAULT);
    // The host mapping is poisoned as a whole: even the surviving page fails now.
    assert_eq!(
        h.read(Iova(0x10000), &mut buf).unwrap_err().errno(),
        libc::EFAULT
    );
    // Other memory is untouched.
    h.write(Iova(0x40000), b"fine").unwrap();
    h.read(Iova(0x40000), &mut buf[..4]).unwrap();
    assert_eq!(&buf[..4], b"fine");

    // The file grows back; a new mapping gets a fresh host mapping and works.
    file.set_len(4 * 4096).unwrap();
    space.unmap(Iova(0x10000), 4 * 4096).unwrap();
    space
        .map(
            Iova(0x10000),
            4 * 4096,
            Backing::file(&file, 0),
            Prot::READ_WRITE,
        )
        .unwrap();
    h.write(Iova(0x10000 + 3 * 4096), b"again").unwrap();
    h.read(Iova(0x10000 + 3 * 4096), &mut buf[..5]).unwrap();
    assert_eq!(&buf[..5], b"again");
}

#[test]
fn memory_kinds_report_fault_through_memory_trait() {
    let file = memfd(NAME, 2 * 4096);
    let mem = vdma::FileMemory::shared(std::os::fd::AsFd::as_fd(&file), Prot::READ_WRITE, 2 * 4096)
        .unwrap();
    mem.write_at(4096, b"x").unwrap();
    file.set_len(0).unwrap();
    let err = mem.read_at(4096, &mut [0u8; 1]).unwrap_err();
    assert_eq!(err.errno(), libc::EFAULT);
    assert!(mem.is_poisoned());
}

#[test]
fn sigbus_outside_vdma_mappings_still_kills() {
    // Make sure vdma's handler is installed, then fault on a mapping vdma does not know.
    let file = memfd(NAME, 4096);
    let space = space();
    space
        .map(Iova(0), 4096, Backing::file(&file, 0), Prot::READ)
        .unwrap();
    let foreign = memfd(NAME, 2 * 4096);
    // SAFETY: a new shared mapping of our own memfd.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * 4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            foreign.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    foreign.set_len(0).unwrap();
    // SAFETY: fork in a test; the child only reads memory and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: reading the foreign mapping past its file's end: SIGBUS, not vdma's.
        let v = unsafe { std::ptr::read_volatile(p as *const u8) };
        // SAFETY: _exit is async-signal-safe; reached only if no SIGBUS came.
        unsafe { libc::_exit(v as i32 + 100) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFSIGNALED(status), "status {status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGBUS);
}
