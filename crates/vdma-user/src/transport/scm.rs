//! The two system calls that move file descriptors: `sendmsg` and `recvmsg` with SCM_RIGHTS.
//! Every `unsafe` of the transport is here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The most descriptors one `sendmsg` may carry (Linux's `SCM_MAX_FD`).
pub(crate) const MAX_SEND_FDS: usize = 253;

/// Bytes of control buffer for `n` descriptors (0 for none).
fn control_space(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let data = (n * size_of::<RawFd>()) as libc::c_uint;
    // SAFETY: CMSG_SPACE is arithmetic on its argument; it touches no memory.
    (unsafe { libc::CMSG_SPACE(data) }) as usize
}

/// A zeroed control buffer of `bytes`, aligned for `cmsghdr` (u64 words).
fn control_buffer(bytes: usize) -> Vec<u64> {
    vec![0u64; bytes.div_ceil(size_of::<u64>())]
}

/// One `sendmsg` of the concatenation of `parts`, with `fds` attached (SCM_RIGHTS) if any.
/// Returns the bytes sent (possibly fewer than all); retries on EINTR. Never raises SIGPIPE.
pub(crate) fn send(
    socket: BorrowedFd<'_>,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_SEND_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut iov: Vec<libc::iovec> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let space = control_space(fds.len());
    let mut control = control_buffer(space);
    // SAFETY: msghdr is plain data for which all-zero bytes are a valid value (null pointers,
    // zero lengths); the fields that matter are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, aligned bytes, at least CMSG_SPACE of
        // the descriptors, so CMSG_FIRSTHDR returns a header inside that buffer (not null),
        // and CMSG_DATA of it has room for `fds.len()` descriptors. The writes are unaligned
        // writes of plain integers inside the buffer, which outlives `msg`'s use below.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * size_of::<RawFd>()) as _) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` (slices of `parts`, alive and unchanged for the call)
        // and at `control`, both alive until this function returns; sendmsg only reads them.
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// What one `recvmsg` brought.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes read into the buffer (0: the peer closed).
    pub(crate) len: usize,
    /// The peer sent more descriptors than the control buffer had room for; the kernel closed
    /// the ones that did not fit.
    pub(crate) fds_cut: bool,
}

/// One `recvmsg` into `buf`, taking up to `max_fds` descriptors (close-on-exec), which are
/// appended to `fds` as owned descriptors (so they close on every path). Retries on EINTR.
pub(crate) fn receive(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // No sendmsg carries more than MAX_SEND_FDS; a larger limit needs no larger buffer.
    let space = control_space(max_fds.min(MAX_SEND_FDS));
    let mut control = control_buffer(space);
    loop {
        // SAFETY: as in `send`: all-zero is a valid msghdr.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if space != 0 {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
        }
        // SAFETY: `iov` describes `buf`, writable for its length; `control` is writable for
        // `space` bytes; both outlive the call. The kernel writes at most those lengths.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: after a successful recvmsg, msg_control/msg_controllen describe the control
        // messages the kernel wrote into `control`; CMSG_FIRSTHDR/CMSG_NXTHDR walk them and
        // stay inside that length (returning null at the end). For SCM_RIGHTS, the data holds
        // (cmsg_len - CMSG_LEN(0)) / 4 descriptors, read unaligned; each is a new descriptor
        // the kernel installed in this process for us, so owning it is sound.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let header = libc::CMSG_LEN(0) as usize;
                    let bytes = ((*cmsg).cmsg_len as usize).saturating_sub(header);
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..bytes / size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        return Ok(Received {
            len: n as usize,
            fds_cut: msg.msg_flags & libc::MSG_CTRUNC != 0,
        });
    }
}

/// The credentials (pid, uid, gid) of the process at the other end of a connected Unix
/// socket, as the kernel recorded them at `connect` (SO_PEERCRED).
pub(crate) fn peer_credentials(socket: BorrowedFd<'_>) -> io::Result<(i32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live, writable `ucred` and `len` its exact size; the kernel writes at
    // most `len` bytes into it and the new length into `len`.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid, cred.gid))
}
