//! The client's side of the socket, all on the harness's thread: it sends the input's bytes,
//! and between them, and while it waits ([`Peer::probe`], [`Peer::pause`]), it reads what the
//! server sent: the replies (the probes' it hands back, the others it drops) and the server's
//! DMA_READ/DMA_WRITE requests, which it answers at once as the input's script says:
//! correctly, with an error, with garbage, late, twice, or not at all.
//!
//! There is no reader thread: a thread woken for every reply cost more than the rest of the
//! client. A request is read at the latest when the harness's current step ends (a send, a
//! memfd made or shrunk: microseconds) and at once while the harness waits; the harness waits
//! on the socket, not in a sleep, so requests that come while the engine works are answered
//! as they come. An answer due late is held and sent when due (if the client is still there).
//!
//! When the harness negotiated the session itself, the client also checks that every request
//! the server makes decodes in the negotiated DMA layout and stays within the client's
//! `max_data_xfer_size`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vdma_user::protocol::{
    error_reply, DecodeConfig, DmaAccess, DmaLayout, Header, MessageBuilder, Request,
};
use vdma_user::transport::{Connection, Limits, Message, Reader, Received};

use super::fds::dev_null;
use super::messages::PROBE_ID;
use crate::scm;

/// How long after the server's reply timeout a late answer comes.
pub const LATE_MARGIN: Duration = Duration::from_millis(1);

/// Where the server's reader stands in the stream the client sent, by the transport's framing
/// (a 16-byte header whose size field, bytes 4 to 8, counts the whole message; a size below
/// 16 loses the framing and the server closes). A probe sent between two messages is read as
/// a message of its own and answered; one sent inside a message (after bytes, or a header,
/// announcing more than came) is read as part of it and never answered.
#[derive(Default)]
struct Framing {
    /// The first bytes of the header being sent.
    head: [u8; Header::SIZE],
    /// How many of them.
    head_len: usize,
    /// Payload bytes of the current message not sent yet.
    rest: u64,
    /// The framing is lost (the server closes) or unknown (a send failed part-way).
    lost: bool,
}

impl Framing {
    /// Whether the next byte sent starts a message.
    fn between(&self) -> bool {
        !self.lost && self.head_len == 0 && self.rest == 0
    }

    /// Follows `bytes` sent.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.rest > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.rest).unwrap_or(usize::MAX));
                self.rest -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = bytes.len().min(Header::SIZE - self.head_len);
            self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
            self.head_len += n;
            bytes = &bytes[n..];
            if self.head_len == Header::SIZE {
                self.head_len = 0;
                let size = u32::from_le_bytes(self.head[4..8].try_into().unwrap());
                match size.checked_sub(Header::SIZE_U32) {
                    Some(rest) => self.rest = u64::from(rest),
                    None => self.lost = true,
                }
            }
        }
    }
}

/// A reply to a probe.
#[derive(Debug)]
pub struct Answer {
    /// The header.
    pub header: Header,
    /// The payload.
    pub payload: Vec<u8>,
    /// [`Peer::sends`] right after the probe went out: while it stays so, nothing was sent
    /// after the probe, and the server has handled everything sent.
    pub sent: u64,
}

/// What the harness knows of the negotiated session, for the checks and the answers.
#[derive(Clone, Copy, Debug, Default)]
struct Session {
    /// `None`: unknown (spec assumed, nothing checked).
    layout: Option<DmaLayout>,
    /// The client's `max_data_xfer_size` if the harness negotiated it, else 0 (not checked).
    xfer: u64,
}

/// The client end of a session.
pub struct Peer {
    socket: UnixStream,
    reader: Reader,
    /// Where the stream sent so far stands.
    framing: Framing,
    /// Sends so far (by the harness and the answers, failed ones too).
    sends: u64,
    script: Script,
    session: Session,
    /// The server's requests received.
    requests: usize,
    /// Answers held back, and when each is due.
    late: Vec<(Instant, Vec<u8>)>,
    /// The server closed the connection (or the client shut it down).
    ended: bool,
    /// The server's reply timeout: a late answer comes after it.
    reply_timeout: Duration,
}

impl Peer {
    /// The client end on `socket`; it answers DMA requests by `script`. `reply_timeout` is the
    /// server's: a late answer comes after it.
    pub fn new(socket: UnixStream, script: Vec<u8>, reply_timeout: Duration) -> Peer {
        socket
            .set_write_timeout(Some(Duration::from_secs(1)))
            .expect("SO_SNDTIMEO");
        let receiving = socket.try_clone().expect("dup of the client socket");
        let limits = Limits {
            max_message_size: DecodeConfig::default().max_message_size,
            max_fds: 16,
        };
        let (reader, _) = Connection::new(receiving, limits)
            .expect("client connection")
            .split();
        Peer {
            socket,
            reader,
            framing: Framing::default(),
            sends: 0,
            script: Script::new(script),
            session: Session::default(),
            requests: 0,
            late: Vec::new(),
            ended: false,
            reply_timeout,
        }
    }

    /// Sends `bytes` (anything) with `fds`, then answers what has come meanwhile.
    pub fn send(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let sent = self.send_framed(bytes, fds).map(|_| ());
        self.serve(None);
        sent
    }

    /// How many sends there were so far (by the harness and the answers, failed ones too).
    pub fn sends(&self) -> u64 {
        self.sends
    }

    /// Sends `bytes`; whether they began between two messages of the stream (see
    /// [`Framing`]).
    fn send_framed(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<bool> {
        let between = self.framing.between();
        self.sends += 1;
        match scm::send_all(&self.socket, bytes, fds) {
            Ok(()) => {
                self.framing.feed(bytes);
                Ok(between)
            }
            Err(e) => {
                // Part of the bytes may have gone: the stream's framing is unknown from here.
                self.framing.lost = true;
                Err(e)
            }
        }
    }

    /// Records the session the harness negotiated (`xfer`: the client's
    /// `max_data_xfer_size`, checked) or saw the fuzzer send (`xfer` 0, not checked).
    pub fn set_session(&mut self, layout: DmaLayout, xfer: u64) {
        self.session = Session {
            layout: Some(layout),
            xfer,
        };
    }

    /// Whether a layout is known.
    pub fn has_session(&self) -> bool {
        self.session.layout.is_some()
    }

    /// Sends `message` (whose id is [`PROBE_ID`]) and waits for its reply until `deadline`,
    /// answering the server's requests meanwhile; `None` if it does not come (the session
    /// ended, or it is late) or cannot come: sent inside a message whose rest never came, the
    /// probe is read as part of that message (`Framing`), and waiting for its reply would
    /// only wait out the deadline.
    pub fn probe(&mut self, message: &[u8], deadline: Instant) -> Option<Answer> {
        let between = self.send_framed(message, &[]).ok()?;
        let sent = self.sends;
        if !between {
            self.serve(None);
            return None;
        }
        self.serve(Some(deadline)).map(|(header, payload)| Answer {
            header,
            payload,
            sent,
        })
    }

    /// Waits for `pause`, answering the server's requests as they come (zero: answers what has
    /// come, and returns).
    pub fn pause(&mut self, pause: Duration) {
        // A probe reply cannot come: no probe is out.
        let until = (!pause.is_zero()).then(|| Instant::now() + pause);
        let _ = self.serve(until);
    }

    /// Reads and handles what the server sent: what has come (`until` `None`), or until
    /// `until`, returning early with a probe's reply if one comes.
    fn serve(&mut self, until: Option<Instant>) -> Option<(Header, Vec<u8>)> {
        loop {
            let now = Instant::now();
            self.send_due(now);
            if self.ended {
                return None;
            }
            let wait = match until {
                None => Duration::ZERO,
                Some(until) if until <= now => return None,
                Some(until) => {
                    let next_late = self.late.iter().map(|(due, _)| *due).min();
                    next_late.map_or(until, |due| due.min(until)) - now
                }
            };
            if !self.readable(wait) {
                if until.is_some() {
                    // Waited out `wait`: the loop looks at the time.
                    continue;
                }
                return None;
            }
            match self.reader.receive() {
                Ok(Received::Message(m)) if m.header.is_reply() => {
                    if m.header.msg_id() == PROBE_ID && until.is_some() {
                        return Some((m.header, m.payload));
                    }
                    // Other replies (and their descriptors: none from this device) are
                    // dropped.
                }
                Ok(Received::Message(m)) => {
                    self.requests += 1;
                    let s = self.script.next();
                    // An error means the socket is gone; the next read sees it.
                    let _ = self.answer(&m, s);
                }
                Ok(Received::Rejected { header, error }) => {
                    panic!("the server sent a message the client refuses ({error}): {header:?}")
                }
                Ok(Received::Closed) | Err(_) => self.ended = true,
            }
        }
    }

    /// Whether the socket has something to read (or has ended) within `wait`.
    fn readable(&self, wait: Duration) -> bool {
        let mut fds = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask; both outlive the call.
        let n = unsafe { libc::ppoll(&mut fds, 1, &timeout, std::ptr::null()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "ppoll: {e}");
            return false;
        }
        n > 0
    }

    /// Sends the held answers that are due.
    fn send_due(&mut self, now: Instant) {
        while let Some(i) = self.late.iter().position(|(due, _)| *due <= now) {
            let (_, bytes) = self.late.swap_remove(i);
            let _ = self.send_framed(&bytes, &[]);
        }
    }

    /// Shuts the socket down both ways: the server sees the client close; answers still held
    /// are not sent.
    pub fn close(&mut self) {
        self.late.clear();
        self.ended = true;
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    /// Closes; the number of requests the server made.
    pub fn finish(mut self) -> usize {
        self.close();
        self.requests
    }

    /// Answers the server's request `m` as script byte `s` says.
    fn answer(&mut self, m: &Message, s: u8) -> io::Result<()> {
        let layout = self.session.layout.unwrap_or(DmaLayout::Spec);
        let xfer = self.session.xfer;
        let id = m.header.msg_id();
        let number = m.header.command_number();
        let decoded = m.request(&DecodeConfig::new(1 << 20, layout));
        let (access, data) = match decoded {
            Ok(Request::DmaRead(a)) => (a, None),
            Ok(Request::DmaWrite(a, d)) => (a, Some(d.len())),
            other => {
                assert!(
                    xfer == 0,
                    "the server sent {:?} which does not decode as DMA_READ/DMA_WRITE in \
                     {layout:?}: {other:?}",
                    m.header
                );
                return self
                    .send_framed(&error_reply(&m.header, libc::EINVAL), &[])
                    .map(|_| ());
            }
        };
        if xfer != 0 {
            let count = data.map_or(access.count, |n| n as u64);
            assert!(
                count <= xfer,
                "the server asked for {count} bytes in one {:?}, past the client's \
                 max_data_xfer_size {xfer}",
                m.header.command()
            );
        }
        let correct = || -> Vec<u8> {
            let payload = match data {
                None => DmaAccess::encode_read_reply(
                    access.addr,
                    &pattern(access.addr, access.count as usize),
                    layout,
                ),
                Some(_) => access.encode_write_reply(layout),
            };
            reply(id, number, &payload)
        };
        let bytes = match Reply::of(s) {
            Reply::Correct => correct(),
            Reply::Error => {
                let errno = [libc::EFAULT, libc::EIO, libc::EINVAL, 0][usize::from(s >> 3) % 4];
                let mut bytes = error_reply(&m.header, errno);
                if errno == 0 {
                    // ERROR with errno 0.
                    bytes[12..16].copy_from_slice(&0u32.to_le_bytes());
                }
                bytes.to_vec()
            }
            Reply::Silent => return Ok(()),
            Reply::Garbage => {
                let mut right = correct();
                match (s >> 3) % 6 {
                    0 => {
                        if right.len() > Header::SIZE {
                            right.pop();
                        }
                        fix_size(&mut right);
                    }
                    1 => right[2..4].copy_from_slice(&(number ^ 0x7).to_le_bytes()),
                    2 => right = reply(id, number, &[s; 5]),
                    3 if right.len() > 24 => {
                        // Address + 1 and count + 1 (both layouts start with the address).
                        let a = u64::from_le_bytes(right[16..24].try_into().unwrap());
                        right[16..24].copy_from_slice(&a.wrapping_add(1).to_le_bytes());
                        right[24] = right[24].wrapping_add(1);
                    }
                    3 => {
                        // A reply without a payload (QEMU's DMA_WRITE) gets one.
                        right.extend_from_slice(&[s; 8]);
                        fix_size(&mut right);
                    }
                    4 => {
                        let null = dev_null();
                        return self.send_framed(&right, &[null.as_fd()]).map(|_| ());
                    }
                    _ => {
                        let size = (right.len() + 64) as u32;
                        right[4..8].copy_from_slice(&size.to_le_bytes());
                    }
                }
                right
            }
            Reply::LateOrTwice => {
                let right = correct();
                if (s >> 3).is_multiple_of(2) {
                    let due = Instant::now() + self.reply_timeout + LATE_MARGIN;
                    self.late.push((due, right));
                    return Ok(());
                }
                self.send_framed(&right, &[])?;
                right
            }
        };
        self.send_framed(&bytes, &[]).map(|_| ())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.close();
    }
}

/// The script: one byte per DMA request, in turn, round and round; empty means always answer
/// correctly.
struct Script {
    bytes: Vec<u8>,
    at: usize,
}

impl Script {
    fn new(bytes: Vec<u8>) -> Script {
        Script { bytes, at: 0 }
    }

    fn next(&mut self) -> u8 {
        if self.bytes.is_empty() {
            return 0;
        }
        let b = self.bytes[self.at % self.bytes.len()];
        self.at += 1;
        b
    }
}

/// How the client answers one DMA request, from a script byte `s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The right reply (`s mod 8` in 0..=3).
    Correct,
    /// An error reply with an errno (4): EFAULT, EIO, EINVAL or 0 by `s >> 3`.
    Error,
    /// No reply: the server times out (5).
    Silent,
    /// A malformed reply (6), by `(s >> 3) mod 6`: data one byte short, the other command's
    /// number, a few bytes of payload, address and count off by one (or a payload where there
    /// is none), a descriptor attached, a
    /// header announcing more than comes (the server then reads the next message's bytes as
    /// its rest).
    Garbage,
    /// The right reply after the server gave up, or twice (7, by `s >> 3` odd).
    LateOrTwice,
}

impl Reply {
    /// How script byte `s` answers.
    pub fn of(s: u8) -> Reply {
        match s % 8 {
            0..=3 => Reply::Correct,
            4 => Reply::Error,
            5 => Reply::Silent,
            6 => Reply::Garbage,
            _ => Reply::LateOrTwice,
        }
    }

    /// A script byte that answers so (its first form).
    pub fn byte(self) -> u8 {
        match self {
            Reply::Correct => 0,
            Reply::Error => 4,
            Reply::Silent => 5,
            Reply::Garbage => 6,
            Reply::LateOrTwice => 7,
        }
    }
}

/// The bytes a client's memory holds at `addr`.
fn pattern(addr: u64, count: usize) -> Vec<u8> {
    (0..count as u64)
        .map(|i| (addr.wrapping_add(i) as u8) ^ 0x5a)
        .collect()
}

fn reply(id: u16, number: u16, payload: &[u8]) -> Vec<u8> {
    MessageBuilder::reply(id, number)
        .bytes(payload)
        .finish()
        .unwrap()
}

/// Sets the header's size to the message's length.
fn fix_size(message: &mut [u8]) {
    let size = message.len() as u32;
    message[4..8].copy_from_slice(&size.to_le_bytes());
}
