//! The descriptors the client sends (memfds, eventfds, /dev/null), and counting this
//! process's open descriptors.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use super::input::Fd;

/// The descriptors of one session: the memfds stay open (the client may shrink them later);
/// the others are closed as soon as they are sent.
#[derive(Default)]
pub struct Descriptors {
    /// Every memfd sent, in order.
    pub memfds: Vec<File>,
}

impl Descriptors {
    /// New descriptors for one message.
    pub fn make(&mut self, fds: &[Fd]) -> Vec<OwnedFd> {
        fds.iter()
            .map(|fd| match *fd {
                Fd::Memfd { size } => self.memfd((usize::from(size & 63) + 1) << 10),
                Fd::LastMemfd => match self.memfds.last() {
                    Some(last) => last.try_clone().expect("dup").into(),
                    None => self.memfd(4096),
                },
                Fd::EventFd => eventfd(),
                Fd::DevNull => File::open("/dev/null").expect("/dev/null").into(),
            })
            .collect()
    }

    /// A new memfd of `size` bytes, a pattern written in its first page; a duplicate is kept.
    fn memfd(&mut self, size: usize) -> OwnedFd {
        let file = memfd(size);
        let out = file.try_clone().expect("dup").into();
        self.memfds.push(file);
        out
    }

    /// Sets the length of memfd `index mod count` (nothing if there is none).
    pub fn truncate(&self, index: u8, len: u64) {
        if self.memfds.is_empty() {
            return;
        }
        let file = &self.memfds[usize::from(index) % self.memfds.len()];
        file.set_len(len).expect("ftruncate of a memfd");
    }
}

/// A memfd of `size` bytes.
pub fn memfd(size: usize) -> File {
    // SAFETY: a NUL-terminated name and valid flags; returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"vdma-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: the descriptor was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64).expect("ftruncate of a memfd");
    let pattern: Vec<u8> = (0..size.min(4096)).map(|i| (i * 13 + 7) as u8).collect();
    file.write_all_at(&pattern, 0).expect("write to a memfd");
    file
}

/// A new eventfd.
pub fn eventfd() -> OwnedFd {
    // SAFETY: an initial value and valid flags; returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: the descriptor was just created and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// This process's open descriptors.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}
