//! [`EventFd`]: an eventfd a client handed over with SET_IRQS, checked and signalled.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::server::DeviceError;

/// An eventfd the device signals.
#[derive(Debug)]
pub(crate) struct EventFd {
    file: File,
}

impl EventFd {
    /// Takes `fd`; EINVAL if the kernel says it is not an eventfd (as vfio-pci refuses other
    /// files: a pipe could fill up and block the device). Where `/proc` cannot tell, the file
    /// is taken as it is.
    pub(crate) fn new(fd: OwnedFd) -> Result<EventFd, DeviceError> {
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if let Ok(target) = std::fs::read_link(link) {
            if target.as_os_str() != "anon_inode:[eventfd]" {
                return Err(DeviceError::Invalid("SET_IRQS: not an eventfd"));
            }
        }
        Ok(EventFd {
            file: File::from(fd),
        })
    }

    /// Adds 1 to the counter: the interrupt. The write can only wait or fail when the counter
    /// is at its maximum (2^64 - 2, a reader that never reads); a failure is dropped.
    pub(crate) fn signal(&self) {
        let _ = (&self.file).write(&1u64.to_ne_bytes());
    }
}
