//! The descriptors the client sends (memfds, eventfds, /dev/null), and counting this
//! process's open descriptors.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, OnceLock};

use zerocopy::IntoBytes;

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
                Fd::DevNull => dev_null(),
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

/// A new descriptor of /dev/null (a duplicate of one kept open from the first call on: a
/// `dup` costs less than an `open`).
pub fn dev_null() -> OwnedFd {
    static DEV_NULL: OnceLock<File> = OnceLock::new();
    DEV_NULL
        .get_or_init(|| File::open("/dev/null").expect("/dev/null"))
        .try_clone()
        .expect("dup of /dev/null")
        .into()
}

/// A new eventfd.
pub fn eventfd() -> OwnedFd {
    // SAFETY: an initial value and valid flags; returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: the descriptor was just created and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// This process's open descriptors: the entries of `/proc/self/fd`, read through a
/// descriptor of the directory kept open from the first call on (counted, like any other), so
/// that a count is an `lseek` and a `getdents64` or two rather than a whole `opendir` and
/// `closedir`.
pub fn open_fds() -> usize {
    static DIR: Mutex<Option<OwnedFd>> = Mutex::new(None);
    let mut dir = DIR.lock().unwrap_or_else(|e| e.into_inner());
    let fd = dir
        .get_or_insert_with(|| {
            let dir = File::open("/proc/self/fd").expect("/proc/self/fd");
            OwnedFd::from(dir)
        })
        .as_raw_fd();
    // SAFETY: `fd` is the open directory, held (and kept from other threads) by the lock.
    let at = unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    assert_eq!(
        at,
        0,
        "lseek of /proc/self/fd: {}",
        io::Error::last_os_error()
    );
    // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, then the name.
    let mut buf = [0u64; 512];
    let mut count = 0;
    loop {
        // SAFETY: the buffer is writable for its whole length, which is what the kernel is
        // told; it writes whole records only.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd,
                buf.as_mut_ptr(),
                std::mem::size_of_val(&buf),
            )
        };
        assert!(n >= 0, "getdents64: {}", io::Error::last_os_error());
        if n == 0 {
            return count;
        }
        let bytes = buf.as_bytes();
        let mut at = 0;
        while at < n as usize {
            let reclen = usize::from(u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]));
            let name = &bytes[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                count += 1;
            }
            at += reclen;
        }
    }
}
