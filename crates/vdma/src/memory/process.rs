//! [`ProcessMemory`]: memory of another process, reached with `process_vm_readv/writev`.
//!
//! Nothing is pinned and nothing is mapped here; each access is one system call, like the
//! kernel's access to a task's mm. A pid can be reused once its process is gone and reaped, so
//! the process is held by a pidfd taken when the object is made, and every access is checked
//! against it:
//! - a read is issued only after the pidfd shows the process alive, and its bytes are kept only
//!   if the process is still alive after the copy (a process alive then was alive during the
//!   copy, so the bytes are its own); otherwise `buf` is zeroed and the read fails with ESRCH;
//! - a write is issued only after the pidfd shows the process alive, and reports ESRCH if it is
//!   gone afterwards.
//!
//! What remains is the window between that check and the system call: the process
//! would have to exit, be reaped and have its pid handed to a new process within it. The pid
//! allocator hands out pids cyclically, so that takes a wrap of the whole pid space inside
//! microseconds.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};
use crate::memory::Memory;

/// The address space of another process, by pid; offsets are its virtual addresses.
#[derive(Debug)]
pub struct ProcessMemory {
    pid: i32,
    pidfd: OwnedFd,
}

impl ProcessMemory {
    /// Opens the process `pid`. ESRCH if there is none.
    pub fn open(pid: i32) -> Result<ProcessMemory> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let err = Error::last_os("pidfd_open");
            return Err(if err.errno() == libc::ESRCH {
                Error::ProcessGone { pid }
            } else {
                err
            });
        }
        // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(ProcessMemory { pid, pidfd })
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the process has exited (its pidfd polls readable).
    pub fn is_gone(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n != 0
    }

    fn gone(&self) -> Error {
        Error::ProcessGone { pid: self.pid }
    }

    /// Maps a failed or short transfer to an error.
    fn transferred(&self, done: isize, want: usize) -> Result<()> {
        if done == want as isize {
            return Ok(());
        }
        let errno = if done < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            libc::EFAULT
        };
        if errno == libc::ESRCH || self.is_gone() {
            return Err(self.gone());
        }
        Err(Error::Fault {
            iova: crate::Iova(0),
        })
    }
}

impl Memory for ProcessMemory {
    fn len(&self) -> u64 {
        u64::MAX
    }

    fn check(&self) -> Result<()> {
        if self.is_gone() {
            return Err(self.gone());
        }
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if self.is_gone() {
            return Err(self.gone());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: offset as usize as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which we hold mutably; the remote side is another
        // process's memory, which the kernel checks.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        let done = self.transferred(n, buf.len());
        if self.is_gone() {
            // The bytes may come from a process that took over the pid: never hand them out.
            buf.fill(0);
            return Err(self.gone());
        }
        done
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if self.is_gone() {
            return Err(self.gone());
        }
        let local = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: offset as usize as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which the kernel only reads; the remote side is
        // another process's memory, which the kernel checks.
        let n = unsafe { libc::process_vm_writev(self.pid, &local, 1, &remote, 1, 0) };
        self.transferred(n, buf.len())?;
        if self.is_gone() {
            return Err(self.gone());
        }
        Ok(())
    }
}
