//! The `session` target: a whole vfio-user server session fed arbitrary bytes and descriptors.
//!
//! Per input, a fresh dma-engine device (`vdma_cli::dma_engine`, the real one: a register
//! write starts real DMA through the core, on the engine's own thread) behind a fresh
//! [`Server`] with short timeouts ([`config`]) serves one end of a socketpair
//! (`serve_connection`, on a thread of the harness: the harness's threads are kept from one
//! input to the next, [`pool`]; the server's and the engine's own are made per input). The
//! client end plays the input ([`input`]): most of the time it opens with a valid VERSION,
//! then sends messages with a correct header whose command, flags and payload the fuzzer
//! picks (sizes fixed up), raw bytes, register writes, each with 0 to 5 real descriptors
//! (memfds of 1 to 64 KiB, eventfds, /dev/null); it shrinks memfds under their mappings, and
//! waits for the server or the engine when told (not when the server cannot answer: see
//! [`Peer::probe`]). A reader thread ([`peer`]) answers the server's DMA_READ/DMA_WRITE
//! requests (mappings without a file) as a script in the input says: correctly, with errors,
//! garbage, late, twice, or never.
//!
//! Checked, for every input:
//!
//! - after the client closes, the server thread returns within [`SERVER_DEADLINE`] (a hang
//!   is a failure), without a panic (a panic on any thread aborts the fuzzer anyway);
//! - the server's container has no mappings left;
//! - the session left no descriptor open (the server and device still alive: what a long-lived
//!   server would accumulate), and none is left once they are dropped; nothing else holds the
//!   device;
//! - when the harness negotiated the session, every DMA request of the server decodes in the
//!   negotiated layout and stays within the client's `max_data_xfer_size` ([`peer`]).

pub mod fds;
pub mod input;
pub mod messages;
pub mod peer;
pub mod pool;
pub mod scm;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use vdma_cli::dma_engine::registers::STATUS_BUSY;
use vdma_cli::dma_engine::{dma_engine, DmaEngineConfig};
use vdma_user::protocol::{Command, DmaLayout, Header, RegionAccess, Version};
use vdma_user::server::{Server, ServerConfig};

use self::fds::{open_fds, Descriptors};
use self::input::{command_number, Input, Op};
use self::peer::Peer;
use self::pool::Pool;

/// The threads that run `serve_connection`, one session at a time each ([`pool`]).
static SERVER_THREADS: Pool = Pool::new("fuzz-server");

/// How long the server may take to return after the client closed.
pub const SERVER_DEADLINE: Duration = Duration::from_secs(5);
/// The server's DMA reply timeout: what every unanswered DMA request costs. The client answers
/// the others within microseconds; at 1 ms, on a loaded machine (2 cores, fuzzing at nice 19),
/// about one session in 20 of a seed that needs 9 right answers saw one of them time out.
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(2);
/// The server's send timeout (the client always reads, so this is only a bound).
pub const SEND_TIMEOUT: Duration = Duration::from_millis(200);
/// The most descriptors the server takes in one message (so that 5 is too many).
pub const MAX_MSG_FDS: u32 = 4;
/// The most time one input spends waiting for the server and the engine (probes). Probes that
/// cannot be answered do not wait ([`Peer::probe`]): this bounds the waits for a busy engine.
pub const WAIT_BUDGET: Duration = Duration::from_millis(20);
/// The most time one probe waits for its reply.
const PROBE_WAIT: Duration = Duration::from_millis(10);
/// The pause between two reads of the engine's STATUS while it is busy.
const IDLE_POLL: Duration = Duration::from_micros(200);

/// The server's configuration: the defaults, with short timeouts and a small descriptor limit.
pub fn config() -> ServerConfig {
    ServerConfig {
        reply_timeout: REPLY_TIMEOUT,
        send_timeout: SEND_TIMEOUT,
        max_msg_fds: MAX_MSG_FDS,
        ..ServerConfig::default()
    }
}

/// Runs one input (any bytes).
pub fn run(data: &[u8]) {
    static WARM: Once = Once::new();
    // Whatever the first session creates once per process (the SIGBUS handler, thread-locals)
    // is not a leak of the input's.
    WARM.call_once(|| {
        session(&warm_up(), false);
    });
    session(&input::parse(data), true);
}

/// A session that maps a memfd and memory without a file, and copies between them.
fn warm_up() -> Input {
    use self::input::{command_selector, Fd, Setup};
    use vdma::Prot;
    use vdma_user::protocol::DmaMap;
    use zerocopy::IntoBytes;
    let map = |iova: u64, fd: bool| Op::Framed {
        command: command_selector(Command::DmaMap.number()),
        flags: 0,
        payload: DmaMap::new(iova, 0x4000, 0, Prot::READ_WRITE)
            .as_bytes()
            .to_vec(),
        fds: if fd {
            vec![Fd::Memfd { size: 15 }]
        } else {
            vec![]
        },
    };
    let reg = |offset: u16, value: u64| Op::RegionWrite {
        region: 0,
        offset,
        width: 3,
        value,
    };
    Input {
        setup: Setup { flags: 0x20 },
        script: vec![],
        ops: vec![
            map(0x10_0000, true),
            map(0x20_0000, false),
            reg(0x08, 0x10_0000),
            reg(0x10, 0x20_0000),
            reg(0x18, 1 << 32 | 0x100),
            Op::WaitIdle,
        ],
    }
}

/// What a session did, for the seed generator's checks.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// How `serve_connection` returned (`Debug`).
    pub end: String,
    /// The engine's STATUS each time the client saw it idle ([`Op::WaitIdle`]).
    pub statuses: Vec<u32>,
    /// The server's DMA_READ/DMA_WRITE requests the client received.
    pub dma_requests: usize,
}

/// One session: see the module documentation.
pub fn session(input: &Input, check_fds: bool) -> Outcome {
    let mut outcome = Outcome::default();
    let baseline = open_fds();
    let device = Arc::new(dma_engine(DmaEngineConfig::default()).expect("the dma-engine starts"));
    let server = Arc::new(Server::new(device.clone(), config()).expect("a server"));
    let before = open_fds();
    {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let serving = {
            let server = server.clone();
            SERVER_THREADS.spawn(move || format!("{:?}", server.serve_connection(theirs)))
        };
        let peer = Peer::start(ours, input.script.clone(), REPLY_TIMEOUT);
        let mut client = Client {
            peer: &peer,
            descriptors: Descriptors::default(),
            next_id: 0,
            budget_end: Instant::now() + WAIT_BUDGET,
            statuses: Vec::new(),
        };
        client.play(input);
        outcome.statuses = std::mem::take(&mut client.statuses);
        // The client's own memfds go; the server keeps what it mapped.
        drop(client);
        peer.close();
        match serving.join_timeout(SERVER_DEADLINE) {
            Some(Ok(end)) => {
                assert!(end.starts_with("Ok("), "serve_connection failed: {end}");
                outcome.end = end;
            }
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => panic!(
                "the server did not return within {SERVER_DEADLINE:?} after the client closed"
            ),
        }
        outcome.dma_requests = peer.finish();
        let left = server.container().mappings();
        assert!(left.is_empty(), "mapped after the session: {left:?}");
    }
    if check_fds {
        assert_eq!(open_fds(), before, "the session leaked a descriptor");
    }
    drop(server);
    assert_eq!(
        Arc::strong_count(&device),
        1,
        "the device is still referenced after the server is gone"
    );
    drop(device);
    if check_fds {
        assert_eq!(
            open_fds(),
            baseline,
            "the server or the device leaked a descriptor"
        );
    }
    outcome
}

/// The client's state while it plays an input.
struct Client<'a> {
    peer: &'a Peer,
    descriptors: Descriptors,
    next_id: u16,
    budget_end: Instant,
    statuses: Vec<u32>,
}

impl Client<'_> {
    fn play(&mut self, input: &Input) {
        let setup = input.setup;
        if setup.version() {
            let caps = messages::capabilities(setup);
            self.peer
                .set_session(DmaLayout::detect(Some(&caps)), setup.xfer_size());
            if self.send(&messages::version(setup), &[]).is_err() {
                return;
            }
        }
        for op in &input.ops {
            let sent = match op {
                Op::Framed {
                    command,
                    flags,
                    payload,
                    fds,
                } => {
                    let id = if flags & messages::framed::SAME_ID != 0 {
                        self.next_id
                    } else {
                        self.id()
                    };
                    let message = messages::framed(id, *command, *flags, payload);
                    self.note_version(*command, &message);
                    let fds = self.descriptors.make(fds);
                    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                    self.send(&message, &borrowed)
                }
                Op::Raw { bytes, fds } => {
                    let fds = self.descriptors.make(fds);
                    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                    self.send(bytes, &borrowed)
                }
                Op::Sync => {
                    self.sync();
                    Ok(())
                }
                Op::Truncate { memfd, size } => {
                    self.descriptors.truncate(*memfd, u64::from(*size) * 256);
                    Ok(())
                }
                Op::RegionWrite {
                    region,
                    offset,
                    width,
                    value,
                } => {
                    let id = self.id();
                    self.send(
                        &messages::region_write(id, *region, *offset, *width, *value),
                        &[],
                    )
                }
                Op::WaitIdle => {
                    self.wait_idle();
                    Ok(())
                }
            };
            if sent.is_err() {
                // The server closed the connection (or stopped reading): nothing more to say.
                return;
            }
        }
        if setup.settle() {
            self.sync();
            self.wait_idle();
        }
    }

    /// The next message id: 1 to 0xfffe, round and round.
    fn id(&mut self) -> u16 {
        self.next_id = self.next_id % (messages::PROBE_ID - 1) + 1;
        self.next_id
    }

    fn send(&self, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> std::io::Result<()> {
        self.peer.sender().send(bytes, fds)
    }

    /// A VERSION the fuzzer sent (when the harness sent none): its layout, for the answers.
    fn note_version(&self, command: u8, message: &[u8]) {
        if command_number(command) != Command::Version.number() || self.peer.has_session() {
            return;
        }
        if let Ok(v) = Version::decode(&message[Header::SIZE..], 0) {
            self.peer
                .set_session(DmaLayout::detect(v.capabilities.as_ref()), 0);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        (now < self.budget_end).then(|| self.budget_end.min(now + PROBE_WAIT))
    }

    /// Waits until the server handled everything sent so far.
    fn sync(&self) -> bool {
        match self.deadline() {
            Some(deadline) => self.peer.probe(&messages::ping(), deadline).is_some(),
            None => false,
        }
    }

    /// Waits until the engine is idle (STATUS not BUSY).
    fn wait_idle(&mut self) {
        let access = RegionAccess::new(0, vdma_cli::dma_engine::registers::STATUS, 4);
        while let Some(deadline) = self.deadline() {
            let Some(answer) = self.peer.probe(&messages::read_status(), deadline) else {
                return;
            };
            if answer.header.is_error() {
                return;
            }
            let Some(status) = access
                .decode_read_reply(&answer.payload)
                .ok()
                .and_then(|d| Some(u32::from_le_bytes(d.try_into().ok()?)))
            else {
                return;
            };
            if status != STATUS_BUSY {
                self.statuses.push(status);
                return;
            }
            thread::sleep(IDLE_POLL);
        }
    }
}
