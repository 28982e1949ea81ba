//! The client's side of the socket: one lock for everything sent (the harness's messages and
//! the answers never interleave), and a reader thread that takes the server's replies (the
//! harness waits for its probes) and answers the server's DMA_READ/DMA_WRITE requests as the
//! input's script says: correctly, with an error, with garbage, late, twice, or not at all.
//!
//! When the harness negotiated the session itself, the reader also checks that every request
//! the server makes decodes in the negotiated DMA layout and stays within the client's
//! `max_data_xfer_size`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vdma_user::protocol::{
    error_reply, DecodeConfig, DmaAccess, DmaLayout, Header, MessageBuilder, Request,
};
use vdma_user::transport::{Connection, Limits, Message, Received};

use super::messages::PROBE_ID;
use super::pool::{Pool, Task};
use super::scm;

/// How long after the server's reply timeout a late answer comes.
pub const LATE_MARGIN: Duration = Duration::from_millis(1);

/// The sending side, shared by the harness and the reader thread.
pub struct Sender {
    socket: UnixStream,
    /// Held for a whole send; where the stream sent so far stands.
    framing: Mutex<Framing>,
}

impl Sender {
    /// Sends `bytes` (anything) with `fds`, whole, not interleaved with another send.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.send_framed(bytes, fds).map(|_| ())
    }

    /// As [`Sender::send`]; also whether the bytes began between two messages of the stream
    /// (see [`Framing`]).
    fn send_framed(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<bool> {
        let mut framing = self.framing.lock().unwrap_or_else(|e| e.into_inner());
        let between = framing.between();
        match scm::send_all(&self.socket, bytes, fds) {
            Ok(()) => {
                framing.feed(bytes);
                Ok(between)
            }
            Err(e) => {
                // Part of the bytes may have gone: the stream's framing is unknown from here.
                framing.lost = true;
                Err(e)
            }
        }
    }
}

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
}

#[derive(Default)]
struct State {
    /// The last reply with [`PROBE_ID`] not yet taken.
    probe: Option<Answer>,
    /// The server closed the connection (or the client shut it down).
    ended: bool,
    /// The server's requests received.
    requests: usize,
    /// The client is closing: a late answer still waiting is not sent.
    closing: bool,
}

/// What the harness knows of the negotiated session, for the reader's checks and answers.
struct Session {
    /// 0: unknown (spec assumed, nothing checked); 1: spec; 2: QEMU.
    layout: AtomicU8,
    /// The client's `max_data_xfer_size` if the harness negotiated it, else 0 (not checked).
    xfer: AtomicU64,
}

/// What the harness and the reader share.
struct Shared {
    sender: Arc<Sender>,
    state: Mutex<State>,
    cond: Condvar,
    session: Session,
    reply_timeout: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits `delay`, or less if the client closes first (then true).
    fn wait_or_close(&self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            if state.closing {
                return true;
            }
            if now >= deadline {
                return false;
            }
            state = self
                .cond
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn layout(&self) -> DmaLayout {
        match self.session.layout.load(Ordering::SeqCst) {
            2 => DmaLayout::Qemu,
            _ => DmaLayout::Spec,
        }
    }
}

/// The threads that read the client's socket, one session at a time each ([`super::pool`]).
static READER_THREADS: Pool = Pool::new("fuzz-client-reader");

/// The client end of a session.
pub struct Peer {
    shared: Arc<Shared>,
    reader: Option<Task<()>>,
}

impl Peer {
    /// Starts the reader thread on `socket`; it answers DMA requests by `script`.
    /// `reply_timeout` is the server's: a late answer comes after it.
    pub fn start(socket: UnixStream, script: Vec<u8>, reply_timeout: Duration) -> Peer {
        socket
            .set_write_timeout(Some(Duration::from_secs(1)))
            .expect("SO_SNDTIMEO");
        let receiving = socket.try_clone().expect("dup of the client socket");
        let shared = Arc::new(Shared {
            sender: Arc::new(Sender {
                socket,
                framing: Mutex::new(Framing::default()),
            }),
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            session: Session {
                layout: AtomicU8::new(0),
                xfer: AtomicU64::new(0),
            },
            reply_timeout,
        });
        let limits = Limits {
            max_message_size: DecodeConfig::default().max_message_size,
            max_fds: 16,
        };
        let (reader, _) = Connection::new(receiving, limits)
            .expect("client connection")
            .split();
        let reader = {
            let shared = shared.clone();
            READER_THREADS.spawn(move || read_loop(reader, &shared, Script::new(script)))
        };
        Peer {
            shared,
            reader: Some(reader),
        }
    }

    /// The sending side.
    pub fn sender(&self) -> &Sender {
        &self.shared.sender
    }

    /// Records the session the harness negotiated (`xfer`: the client's
    /// `max_data_xfer_size`, checked) or saw the fuzzer send (`xfer` 0, not checked).
    pub fn set_session(&self, layout: DmaLayout, xfer: u64) {
        let l = match layout {
            DmaLayout::Spec => 1,
            DmaLayout::Qemu => 2,
        };
        self.shared.session.layout.store(l, Ordering::SeqCst);
        self.shared.session.xfer.store(xfer, Ordering::SeqCst);
    }

    /// Whether a layout is known.
    pub fn has_session(&self) -> bool {
        self.shared.session.layout.load(Ordering::SeqCst) != 0
    }

    /// Sends `message` (whose id is [`PROBE_ID`]) and waits for its reply until `deadline`;
    /// `None` if it does not come (the session ended, or it is late) or cannot come: sent
    /// inside a message whose rest never came, the probe is read as part of that message
    /// ([`Framing`]), and waiting for its reply would only wait out the deadline.
    pub fn probe(&self, message: &[u8], deadline: Instant) -> Option<Answer> {
        self.shared.lock().probe = None;
        if !self.shared.sender.send_framed(message, &[]).ok()? {
            return None;
        }
        let mut state = self.shared.lock();
        loop {
            if let Some(answer) = state.probe.take() {
                return Some(answer);
            }
            let now = Instant::now();
            if state.ended || now >= deadline {
                return None;
            }
            state = self
                .shared
                .cond
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Shuts the socket down both ways: the server sees the client close, the reader stops
    /// (at once, even while it holds back a late answer).
    pub fn close(&self) {
        self.shared.lock().closing = true;
        self.shared.cond.notify_all();
        let _ = self.shared.sender.socket.shutdown(std::net::Shutdown::Both);
    }

    /// Closes and waits for the reader thread (a panic there surfaces here); the number of
    /// requests the server made.
    pub fn finish(mut self) -> usize {
        self.close();
        if let Some(reader) = self.reader.take() {
            if let Err(panic) = reader.join() {
                std::panic::resume_unwind(panic);
            }
        }
        self.shared.lock().requests
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.close();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
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

fn read_loop(mut reader: vdma_user::transport::Reader, shared: &Shared, mut script: Script) {
    loop {
        match reader.receive() {
            Ok(Received::Message(m)) if m.header.is_reply() => {
                if m.header.msg_id() == PROBE_ID {
                    shared.lock().probe = Some(Answer {
                        header: m.header,
                        payload: m.payload,
                    });
                    shared.cond.notify_all();
                }
                // Descriptors in replies (none from this device) are closed here.
            }
            Ok(Received::Message(m)) => {
                shared.lock().requests += 1;
                let s = script.next();
                if answer(shared, &m, s).is_err() {
                    // The socket is gone; the reader sees it next.
                }
            }
            Ok(Received::Rejected { header, error }) => {
                panic!("the server sent a message the client refuses ({error}): {header:?}")
            }
            Ok(Received::Closed) | Err(_) => {
                shared.lock().ended = true;
                shared.cond.notify_all();
                return;
            }
        }
    }
}

/// The bytes a client's memory holds at `addr`.
fn pattern(addr: u64, count: usize) -> Vec<u8> {
    (0..count as u64)
        .map(|i| (addr.wrapping_add(i) as u8) ^ 0x5a)
        .collect()
}

/// Answers the server's request `m` as script byte `s` says.
fn answer(shared: &Shared, m: &Message, s: u8) -> io::Result<()> {
    let layout = shared.layout();
    let xfer = shared.session.xfer.load(Ordering::SeqCst);
    let id = m.header.msg_id();
    let number = m.header.command_number();
    let decoded = m.request(&DecodeConfig::new(1 << 20, layout));
    let (access, data) = match decoded {
        Ok(Request::DmaRead(a)) => (a, None),
        Ok(Request::DmaWrite(a, d)) => (a, Some(d.len())),
        other => {
            assert!(
                xfer == 0,
                "the server sent {:?} which does not decode as DMA_READ/DMA_WRITE in {layout:?}: \
                 {other:?}",
                m.header
            );
            return send(shared, &error_reply(&m.header, libc::EINVAL), &[]);
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
    match Reply::of(s) {
        Reply::Correct => send(shared, &correct(), &[]),
        Reply::Error => {
            let errno = [libc::EFAULT, libc::EIO, libc::EINVAL, 0][usize::from(s >> 3) % 4];
            let mut bytes = error_reply(&m.header, errno);
            if errno == 0 {
                // ERROR with errno 0.
                bytes[12..16].copy_from_slice(&0u32.to_le_bytes());
            }
            send(shared, &bytes, &[])
        }
        Reply::Silent => Ok(()),
        Reply::Garbage => {
            let mut right = correct();
            match (s >> 3) % 6 {
                0 => {
                    if right.len() > Header::SIZE {
                        right.pop();
                    }
                    fix_size(&mut right);
                    send(shared, &right, &[])
                }
                1 => {
                    right[2..4].copy_from_slice(&(number ^ 0x7).to_le_bytes());
                    send(shared, &right, &[])
                }
                2 => send(shared, &reply(id, number, &[s; 5]), &[]),
                3 if right.len() > 24 => {
                    // Address + 1 and count + 1 (both layouts start with the address).
                    let a = u64::from_le_bytes(right[16..24].try_into().unwrap());
                    right[16..24].copy_from_slice(&a.wrapping_add(1).to_le_bytes());
                    right[24] = right[24].wrapping_add(1);
                    send(shared, &right, &[])
                }
                3 => {
                    // A reply without a payload (QEMU's DMA_WRITE) gets one.
                    right.extend_from_slice(&[s; 8]);
                    fix_size(&mut right);
                    send(shared, &right, &[])
                }
                4 => {
                    let null = std::fs::File::open("/dev/null").expect("/dev/null");
                    send(shared, &right, &[null.as_fd()])
                }
                _ => {
                    let size = (right.len() + 64) as u32;
                    right[4..8].copy_from_slice(&size.to_le_bytes());
                    send(shared, &right, &[])
                }
            }
        }
        Reply::LateOrTwice => {
            let right = correct();
            if (s >> 3).is_multiple_of(2) {
                if shared.wait_or_close(shared.reply_timeout + LATE_MARGIN) {
                    // Closed before it was due: the send would fail on the shut socket.
                    return Ok(());
                }
                send(shared, &right, &[])
            } else {
                send(shared, &right, &[])?;
                send(shared, &right, &[])
            }
        }
    }
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

fn send(shared: &Shared, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    shared.sender.send(bytes, fds)
}
