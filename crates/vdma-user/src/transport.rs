//! Framed vfio-user messages over a Unix stream socket, with file descriptors.
//!
//! A [`Connection`] splits into a [`Reader`] (one thread receives) and a [`Writer`] (any number
//! of threads send; clones share one lock, so the bytes of one message are never interleaved
//! with another's). Both halves use the same socket.
//!
//! Receiving reads exactly one whole message however the kernel cuts the stream: first the
//! 16-byte header, then `size - 16` bytes, each with as many `recvmsg` calls as it takes.
//! Descriptors are taken from every call of the message (a sender attaches them to its first
//! bytes) and owned ([`OwnedFd`]), so whatever is not handed on is closed. What comes back:
//!
//! - [`Received::Message`]: a whole message within the limits;
//! - [`Received::Rejected`]: a message whose size exceeds the maximum, or that brought more
//!   descriptors than the maximum: its body was read and dropped and its descriptors closed,
//!   the stream is at the next message, and the header is there to send the error reply;
//! - [`Received::Closed`]: the peer closed the connection between messages;
//! - an error: the socket failed, the peer closed in the middle of a message, or a header's
//!   size is below 16 so no one can tell where the next message starts. After such an error
//!   the framing is gone: the socket is shut down and every later call fails.
//!
//! Header flags, command numbers and payloads are the protocol's business
//! ([`crate::protocol::Request::decode`], or [`Message::request`]); the transport only frames.

mod scm;

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use crate::protocol::{DecodeConfig, Header, ProtocolError, Request};

/// Who is at the other end of a Unix socket, as the kernel recorded it when the peer
/// connected (SO_PEERCRED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's process id.
    pub pid: i32,
    /// The peer's user id.
    pub uid: u32,
    /// The peer's group id.
    pub gid: u32,
}

impl PeerCredentials {
    /// The credentials of `socket`'s peer.
    pub fn of(socket: &UnixStream) -> io::Result<PeerCredentials> {
        let (pid, uid, gid) = scm::peer_credentials(socket.as_fd())?;
        Ok(PeerCredentials { pid, uid, gid })
    }
}

/// What one side accepts in one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest message, header included; larger ones are drained and rejected (E2BIG).
    pub max_message_size: u32,
    /// The most file descriptors in one message (the `max_msg_fds` this side advertises);
    /// a message with more is rejected and all its descriptors closed.
    pub max_fds: usize,
}

impl Default for Limits {
    /// Messages of 1 MiB of data plus headers ([`DecodeConfig::default`]); 16 descriptors
    /// (the most QEMU's client takes as a server's `max_msg_fds`).
    fn default() -> Limits {
        Limits {
            max_message_size: DecodeConfig::default().max_message_size,
            max_fds: 16,
        }
    }
}

/// A whole received message.
#[derive(Debug)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// The `size - 16` bytes after the header.
    pub payload: Vec<u8>,
    /// The descriptors that came with it, in order.
    pub fds: Vec<OwnedFd>,
}

impl Message {
    /// Decodes the message as a command (see [`Request::decode`]).
    pub fn request(&self, config: &DecodeConfig) -> Result<Request<'_>, ProtocolError> {
        Request::decode(&self.header, &self.payload, self.fds.len(), config)
    }
}

/// The outcome of [`Reader::receive`].
#[derive(Debug)]
pub enum Received {
    /// A whole message within the limits.
    Message(Message),
    /// A message refused by the limits; its body was drained and its descriptors closed. The
    /// stream is at the next message. Reply with `error.errno()` if the header asks for a
    /// reply.
    Rejected {
        /// The refused message's header.
        header: Header,
        /// Why: [`ProtocolError::TooLarge`] or [`ProtocolError::FdLimit`].
        error: ProtocolError,
    },
    /// The peer closed the connection at a message boundary.
    Closed,
}

/// Why the transport failed. After any of these on receive, the connection is shut down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// The peer closed the connection in the middle of a message (ECONNRESET).
    #[error("the peer closed the connection {got} bytes into a {want}-byte read")]
    Truncated {
        /// Bytes of the header or body that came.
        got: usize,
        /// Bytes that were due.
        want: usize,
    },
    /// A header whose size is below 16: where the next message starts is unknown (EPROTO).
    #[error("framing lost: {reason}")]
    FramingLost {
        /// What the header said.
        reason: ProtocolError,
    },
    /// The connection failed before (framing lost, or a send stopped part-way) and is no longer
    /// usable (EPIPE).
    #[error("the connection is unusable after an earlier failure")]
    Broken,
    /// A message to send whose length is not its header's size, or below 16 (EINVAL).
    #[error("a message of {len} bytes whose header says {size}")]
    BadMessage {
        /// Bytes given.
        len: usize,
        /// The header's size field (0 if there is no header).
        size: u32,
    },
}

impl TransportError {
    /// The errno this error maps to.
    pub fn errno(&self) -> i32 {
        match self {
            TransportError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            TransportError::Truncated { .. } => libc::ECONNRESET,
            TransportError::FramingLost { .. } => libc::EPROTO,
            TransportError::Broken => libc::EPIPE,
            TransportError::BadMessage { .. } => libc::EINVAL,
        }
    }
}

/// What both halves share.
#[derive(Debug)]
struct Shared {
    socket: UnixStream,
    /// Held for the whole of one message's send; true once a send stopped part-way (the peer's
    /// framing is then lost, so nothing more may be sent).
    send: Mutex<bool>,
}

/// A connection: both halves of one socket.
#[derive(Debug)]
pub struct Connection {
    reader: Reader,
    writer: Writer,
}

impl Connection {
    /// Wraps a connected socket (switched to blocking mode: a message is read or written
    /// whole).
    pub fn new(socket: UnixStream, limits: Limits) -> Result<Connection, TransportError> {
        socket
            .set_nonblocking(false)
            .map_err(|source| TransportError::Io {
                op: "fcntl",
                source,
            })?;
        let shared = Arc::new(Shared {
            socket,
            send: Mutex::new(false),
        });
        Ok(Connection {
            reader: Reader {
                shared: Arc::clone(&shared),
                limits,
                broken: false,
            },
            writer: Writer { shared },
        })
    }

    /// Two connected ends (a socketpair), for tests and in-process peers.
    pub fn pair(limits: Limits) -> Result<(Connection, Connection), TransportError> {
        let (a, b) = UnixStream::pair().map_err(|source| TransportError::Io {
            op: "socketpair",
            source,
        })?;
        Ok((Connection::new(a, limits)?, Connection::new(b, limits)?))
    }

    /// The two halves, for two threads.
    pub fn split(self) -> (Reader, Writer) {
        (self.reader, self.writer)
    }

    /// Receives one message (see [`Reader::receive`]).
    pub fn receive(&mut self) -> Result<Received, TransportError> {
        self.reader.receive()
    }

    /// Sends one message (see [`Writer::send`]).
    pub fn send(&self, message: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
        self.writer.send(message, fds)
    }

    /// A writer for another thread.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }
}

/// The receiving half. One thread receives; it is `Send`, not shared.
#[derive(Debug)]
pub struct Reader {
    shared: Arc<Shared>,
    limits: Limits,
    broken: bool,
}

/// How a read of a fixed number of bytes ended.
enum Fill {
    /// The buffer is full.
    Full,
    /// The peer closed after this many bytes.
    Eof(usize),
}

impl Reader {
    /// This side's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Receives one whole message. See the module documentation for what comes back; after
    /// an error, the socket is shut down and every later call returns
    /// [`TransportError::Broken`].
    pub fn receive(&mut self) -> Result<Received, TransportError> {
        if self.broken {
            return Err(TransportError::Broken);
        }
        let result = self.receive_one();
        if result.is_err() {
            self.broken = true;
            let _ = self.shared.socket.shutdown(Shutdown::Both);
        }
        result
    }

    fn receive_one(&mut self) -> Result<Received, TransportError> {
        let mut fds = Vec::new();
        let mut fds_cut = false;
        let mut head = [0u8; Header::SIZE];
        match self.fill(&mut head, &mut fds, &mut fds_cut)? {
            Fill::Full => {}
            Fill::Eof(0) => return Ok(Received::Closed),
            Fill::Eof(got) => {
                return Err(TransportError::Truncated {
                    got,
                    want: Header::SIZE,
                })
            }
        }
        let header =
            Header::parse(&head).map_err(|reason| TransportError::FramingLost { reason })?;
        let size = header.size();
        if size < Header::SIZE_U32 {
            return Err(TransportError::FramingLost {
                reason: ProtocolError::SizeBelowHeader { size },
            });
        }
        let body = header.payload_len();
        if size > self.limits.max_message_size {
            self.drain(body, &mut fds, &mut fds_cut)?;
            return Ok(Received::Rejected {
                header,
                error: ProtocolError::TooLarge {
                    size,
                    max: self.limits.max_message_size,
                },
            });
        }
        let mut payload = vec![0u8; body];
        if let Fill::Eof(got) = self.fill(&mut payload, &mut fds, &mut fds_cut)? {
            return Err(TransportError::Truncated { got, want: body });
        }
        if fds_cut || fds.len() > self.limits.max_fds {
            return Ok(Received::Rejected {
                header,
                error: ProtocolError::FdLimit {
                    got: fds.len() + usize::from(fds_cut),
                    max: self.limits.max_fds,
                },
            });
        }
        Ok(Received::Message(Message {
            header,
            payload,
            fds,
        }))
    }

    /// Reads until `buf` is full or the peer closes.
    fn fill(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        fds_cut: &mut bool,
    ) -> Result<Fill, TransportError> {
        let mut at = 0;
        while at < buf.len() {
            let got = scm::receive(
                self.shared.socket.as_fd(),
                &mut buf[at..],
                self.limits.max_fds,
                fds,
            )
            .map_err(|source| TransportError::Io {
                op: "recvmsg",
                source,
            })?;
            *fds_cut |= got.fds_cut;
            if got.len == 0 {
                return Ok(Fill::Eof(at));
            }
            at += got.len;
        }
        Ok(Fill::Full)
    }

    /// Reads and drops `len` bytes (a rejected message's body).
    fn drain(
        &self,
        mut len: usize,
        fds: &mut Vec<OwnedFd>,
        fds_cut: &mut bool,
    ) -> Result<(), TransportError> {
        let mut scratch = vec![0u8; len.min(64 * 1024)];
        let total = len;
        while len > 0 {
            let n = len.min(scratch.len());
            if let Fill::Eof(got) = self.fill(&mut scratch[..n], fds, fds_cut)? {
                return Err(TransportError::Truncated {
                    got: total - len + got,
                    want: total,
                });
            }
            // Descriptors of a rejected message are closed as they come.
            fds.clear();
            len -= n;
        }
        Ok(())
    }
}

/// The sending half. Clones share the socket and one lock: any number of threads may send,
/// and each message goes out whole, never interleaved with another.
#[derive(Clone, Debug)]
pub struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// Sends one message, `fds` attached to its first bytes. `message` must be a whole
    /// message (its header's size is its length). Blocks until every byte is written.
    pub fn send(&self, message: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
        let header = Header::parse(message).map_err(|_| TransportError::BadMessage {
            len: message.len(),
            size: 0,
        })?;
        if header.size() as usize != message.len() {
            return Err(TransportError::BadMessage {
                len: message.len(),
                size: header.size(),
            });
        }
        self.send_parts(&[message], fds)
    }

    /// Sends one message given as its header and payload (no copy of a large payload); the
    /// header's size must be 16 plus the payload's length.
    pub fn send_payload(
        &self,
        header: &Header,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), TransportError> {
        if header.size() as usize != Header::SIZE + payload.len() {
            return Err(TransportError::BadMessage {
                len: Header::SIZE + payload.len(),
                size: header.size(),
            });
        }
        self.send_parts(&[&header.to_bytes(), payload], fds)
    }

    fn send_parts(&self, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        // A panic while holding the lock may have left a message half-sent: treat a poisoned
        // lock as a broken connection.
        let mut broken = self
            .shared
            .send
            .lock()
            .map_err(|_| TransportError::Broken)?;
        if *broken {
            return Err(TransportError::Broken);
        }
        let mut sent = 0;
        while sent < total {
            let rest = remaining(parts, sent);
            let with = if sent == 0 { fds } else { &[] };
            match scm::send(self.shared.socket.as_fd(), &rest, with) {
                Ok(0) => {
                    *broken = sent > 0;
                    return Err(TransportError::Io {
                        op: "sendmsg",
                        source: io::Error::from(io::ErrorKind::WriteZero),
                    });
                }
                Ok(n) => sent += n,
                Err(source) => {
                    *broken = sent > 0;
                    return Err(TransportError::Io {
                        op: "sendmsg",
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Shuts the socket down in both directions: the reader's blocked `receive` returns, the
    /// peer sees the connection close.
    pub fn shutdown(&self) -> Result<(), TransportError> {
        self.shared
            .socket
            .shutdown(Shutdown::Both)
            .map_err(|source| TransportError::Io {
                op: "shutdown",
                source,
            })
    }
}

/// The parts after the first `skip` bytes.
fn remaining<'a>(parts: &[&'a [u8]], mut skip: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
        } else {
            out.push(&part[skip..]);
            skip = 0;
        }
    }
    out
}
