//! Sending bytes with descriptors (SCM_RIGHTS), whatever the bytes are: the transport's own
//! writer takes only well-formed messages, and the targets also send raw bytes and messages cut
//! into pieces (`session`'s client, `decode`'s transport check).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;

/// Sends all of `bytes`, `fds` attached to the first `sendmsg` (nothing at all, descriptors
/// included, if `bytes` is empty: descriptors travel with bytes).
pub fn send_all(socket: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let n = sendmsg(socket, &bytes[at..], if at == 0 { fds } else { &[] })?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        at += n;
    }
    Ok(())
}

/// One `sendmsg` of `bytes` with `fds` as SCM_RIGHTS (none: no control message); the bytes
/// sent, which may be fewer than `bytes`.
pub fn sendmsg(socket: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let data_len = std::mem::size_of_val(&raw[..]) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is valid: no name, no iov, no control data.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !raw.is_empty() {
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: `control` is `space` bytes, 8-byte aligned (as cmsghdr needs), room for one
        // header and `data_len` bytes of descriptors, so CMSG_FIRSTHDR is not null and
        // CMSG_DATA points at `data_len` writable bytes inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&hdr);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(cmsg).cast(), raw.len());
        }
    }
    // SAFETY: `hdr` points at `iov` (over `bytes`) and at `control`, alive for the call.
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
