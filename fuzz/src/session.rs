//! The `session` target: a whole vfio-user server session fed arbitrary bytes and descriptors.
//!
//! Per input, a fresh [`Server`] with short timeouts ([`config`]) serves one end of a
//! socketpair (`serve_connection`) for the dma-engine device (`vdma_cli::dma_engine`, the real
//! one: a register write starts real DMA through the core, on the engine's own thread). The
//! device outlives its clients, as a long-lived server's does: one device serves
//! [`SESSIONS_PER_DEVICE`] sessions, then it is dropped (and checked) and a new one made. The
//! server's handler and its reader loop run on threads of the harness kept from one input to
//! the next ([`pool`], [`Server::with_reader_spawner`]). The client end plays the input
//! ([`input`]) on the fuzzer's thread: most of the time it opens with a valid VERSION, then
//! sends messages with a correct header whose command, flags and payload the fuzzer picks
//! (sizes fixed up), raw bytes, register writes, each with 0 to 5 real descriptors (memfds of
//! 1 to 64 KiB, eventfds, /dev/null); it shrinks memfds under their mappings, and waits for
//! the server or the engine when told (not when the server cannot answer, see
//! [`Peer::probe`], nor when the last answer already showed it and nothing was sent since).
//! Between its steps and while it waits, it reads what the server sent ([`peer`]) and answers
//! the server's DMA_READ/DMA_WRITE requests (mappings without a file) as a script in the input
//! says: correctly, with errors, garbage, late, twice, or never.
//!
//! Checked, for every input:
//!
//! - after the client closes, `serve_connection` returns within [`SERVER_DEADLINE`] (a hang
//!   is a failure), without a panic (a panic on any thread aborts the fuzzer anyway);
//! - the server's container has no mappings left;
//! - the session left no descriptor open (the server still alive: what a long-lived server
//!   would accumulate), and none is left once the server is dropped; then nothing but the
//!   harness holds the device;
//! - the device reads as it did before its first client: the engine's registers, the MSI-X
//!   table and PBA, config space (`device_state`): the next client must find it as after
//!   power-on, or its session would depend on the ones before (and a crash would not
//!   reproduce from its input alone);
//! - when the harness negotiated the session, every DMA request of the server decodes in the
//!   negotiated layout and stays within the client's `max_data_xfer_size` ([`peer`]).
//!
//! And for every device, when it is dropped: nothing else holds it, and it leaves no
//! descriptor open.
//!
//! # Speed
//!
//! libFuzzer counts mallocs and frees during each input and scans for leaks when an input
//! keeps more than it frees (twice in a row); the harness leaves nothing behind from one input
//! to the next but the device, whose allocations after the first sessions are steady, so such
//! scans stay as rare as with a device per input (see [`pool`]).
//!
//! Session 4 made an input about twice as cheap. One input cost about 2 ms of CPU, most of it
//! in the kernel: the dma-engine's thread, made and joined per input under AddressSanitizer,
//! cost more than most sessions (now the device is kept); so did the server's reader thread
//! (now pooled, [`Server::with_reader_spawner`]) and the client's reader thread, woken for
//! every reply (now the client reads on the fuzzer's thread); a probe that could only repeat
//! the last answer is skipped, and while a command runs the client reads STATUS on the device
//! instead of sleeping 200 us between probes. Measured with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir T session W fuzz/corpus/session --
//! -max_total_time=60 -timeout=20 -print_final_stats=1` on the 2-core machine, next to
//! another engineer's `core_ops` fuzzer (about 60% of a core): 370 and 391 exec/s before,
//! 750 and 860 after. What is left is mostly the server's own thread handoffs (three or four
//! wake-ups per message) and libFuzzer's per-input work (a quarter of the time).
//!
//! Two fuzzers pinned to the two cores, sharing the corpus directory, run about twice one's
//! executions (unpinned, `-jobs=2`, about 20% fewer):
//!
//! ```sh
//! # after `RUSTC_BOOTSTRAP=1 cargo fuzz build --target-dir T session`, from the repository
//! B=T/x86_64-unknown-linux-gnu/release/session
//! A="-timeout=20 -print_final_stats=1 -artifact_prefix=fuzz/artifacts/session/"
//! mkdir -p W
//! taskset -c 0 $B W fuzz/corpus/session $A -runs=5000000 &
//! taskset -c 1 $B W fuzz/corpus/session $A -runs=5000000; wait
//! ```
//!
//! Measured so, before and after one after the other: 1,846 exec/s together against 1,037
//! (40 s, next to another engineer's niced benchmark; a build that lacked only this session's
//! last small changes), and 1,138 against 847 (60 s, next to the `core_ops` fuzzer). At about
//! 1,850 exec/s, 10 million executions take an hour and a half.

pub mod fds;
pub mod input;
pub mod messages;
pub mod peer;
pub mod pool;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use vdma_cli::dma_engine::registers::{
    COUNT, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, STATUS, STATUS_BUSY,
};
use vdma_cli::dma_engine::{dma_engine, DmaEngine, DmaEngineConfig};
use vdma_user::pci::{PciDevice, CONFIG_REGION};
use vdma_user::protocol::{Command, DmaLayout, Header, RegionAccess, Version};
use vdma_user::server::{Device, Server, ServerConfig};

use self::fds::{dev_null, open_fds, Descriptors};
use self::input::{command_number, Input, Op};
use self::peer::{Answer, Peer};
use self::pool::{Pool, Task};

/// The threads that run `serve_connection`, one session at a time each ([`pool`]).
static SERVER_THREADS: Pool = Pool::new("fuzz-server");
/// The threads that run the server's reader loops ([`Server::with_reader_spawner`]).
static SERVER_READERS: Pool = Pool::new("fuzz-server-reader");
/// The device of the next session ([`kept`]).
static KEPT: Mutex<Option<Kept>> = Mutex::new(None);

/// The bytes of BAR0 that hold the engine's registers (the last is COUNT).
const REGISTERS_SIZE: u64 = COUNT + 4;

/// How many sessions one device serves before it is dropped (and checked) and a new one made.
pub const SESSIONS_PER_DEVICE: u32 = 1000;

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
/// How long the client reads the engine's STATUS (on the device) back to back, yielding in
/// between, before it pauses between reads.
const IDLE_SPIN: Duration = Duration::from_micros(100);
/// The pauses between two reads of the engine's STATUS (on the device) while it is still busy
/// after [`IDLE_SPIN`]: the first, doubled after each read up to the second.
const IDLE_POLL: (Duration, Duration) = (Duration::from_micros(10), Duration::from_micros(320));

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
    // is not a leak of the input's; its server and device are not checked either.
    WARM.call_once(|| {
        session(&warm_up(), false);
        if let Some(first) = KEPT.lock().unwrap_or_else(|e| e.into_inner()).take() {
            first.retire(false);
        }
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

/// The device the sessions are served by, kept for [`SESSIONS_PER_DEVICE`] sessions (a
/// device outlives its clients, as in a long-lived server).
struct Kept {
    device: Arc<PciDevice<DmaEngine>>,
    /// How many descriptors the device held when it was made. (Counted then and when it is
    /// dropped, not against a count from before it was made: the fuzzer opens descriptors of
    /// its own between inputs, e.g. pipes to a symbolizer.)
    own_fds: usize,
    /// What the device showed before its first client ([`device_state`]).
    power_on: Vec<u8>,
    /// Sessions served so far.
    sessions: u32,
}

impl Kept {
    fn new() -> Kept {
        let before = open_fds();
        let device =
            Arc::new(dma_engine(DmaEngineConfig::default()).expect("the dma-engine starts"));
        let own_fds = open_fds() - before;
        let power_on = device_state(&*device);
        Kept {
            device,
            own_fds,
            power_on,
            sessions: 0,
        }
    }

    /// Drops the device: nothing else may hold it, and (with `check_fds`) no descriptor it
    /// held may stay open.
    fn retire(self, check_fds: bool) {
        assert_eq!(
            Arc::strong_count(&self.device),
            1,
            "the device is still referenced after its last server is gone"
        );
        let open = open_fds();
        drop(self.device);
        if check_fds {
            assert_eq!(
                open_fds(),
                open - self.own_fds,
                "the device leaked a descriptor"
            );
        }
    }
}

/// What [`device_state`] concatenates, for messages.
const STATE_PARTS: &str = "BAR0 registers, then the MSI-X table's first 16 bytes, the PBA's \
                           first 8, then config space";

/// What a client can read of the device: the engine's registers (the start of BAR0; the rest
/// reads 0 whatever happens), the MSI-X table and PBA (BAR1) and config space. Each client
/// must find it as the first did (the dma-engine's and the PCI layer's promise at
/// disconnect).
fn device_state(device: &dyn Device) -> Vec<u8> {
    let config_size = device.region(CONFIG_REGION).expect("config space").size;
    let reads = [
        (0, 0, REGISTERS_SIZE),
        (1, u64::from(MSIX_TABLE_OFFSET), 16),
        (1, u64::from(MSIX_PBA_OFFSET), 8),
        (CONFIG_REGION, 0, config_size),
    ];
    let mut state = Vec::new();
    for (region, offset, len) in reads {
        let at = state.len();
        state.resize(at + len as usize, 0);
        device
            .region_read(region, offset, &mut state[at..])
            .unwrap_or_else(|e| panic!("read of region {region} at {offset:#x}: {e}"));
    }
    state
}

/// The device of the next session: the kept one, or a new one (when the kept one has served
/// [`SESSIONS_PER_DEVICE`] sessions it is dropped, and checked with `check_fds`).
fn kept(check_fds: bool) -> Kept {
    let mut slot = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    match slot.take() {
        Some(kept) if kept.sessions < SESSIONS_PER_DEVICE => kept,
        Some(old) => {
            old.retire(check_fds);
            Kept::new()
        }
        None => Kept::new(),
    }
}

/// One session: see the module documentation.
pub fn session(input: &Input, check_fds: bool) -> Outcome {
    static KEEP: Once = Once::new();
    // The descriptors the harness keeps open from their first use on, opened before any count.
    KEEP.call_once(|| {
        open_fds();
        drop(dev_null());
    });
    let mut outcome = Outcome::default();
    let mut kept = kept(check_fds);
    let baseline = open_fds();
    // The server's reader loops run on pooled threads; their tasks, to wait for.
    let readers: Arc<Mutex<Vec<Task<()>>>> = Arc::default();
    let server = Server::new(kept.device.clone(), config())
        .expect("a server")
        .with_reader_spawner({
            let readers = readers.clone();
            move |job| {
                let task = SERVER_READERS.spawn(job);
                readers.lock().unwrap_or_else(|e| e.into_inner()).push(task);
                Ok(())
            }
        });
    let server = Arc::new(server);
    let before = open_fds();
    {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let serving = {
            let server = server.clone();
            SERVER_THREADS.spawn(move || format!("{:?}", server.serve_connection(theirs)))
        };
        let mut client = Client {
            peer: Peer::new(ours, input.script.clone(), REPLY_TIMEOUT),
            device: &*kept.device,
            descriptors: Descriptors::default(),
            next_id: 0,
            budget_end: Instant::now() + WAIT_BUDGET,
            statuses: Vec::new(),
            settled: None,
            trusted: true,
        };
        client.play(input);
        let Client {
            mut peer,
            descriptors,
            statuses,
            ..
        } = client;
        outcome.statuses = statuses;
        // The client's own memfds go; the server keeps what it mapped.
        drop(descriptors);
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
        drop(serving);
        // The server waited for its reader loop; the pooled thread is done with it too.
        let tasks = std::mem::take(&mut *readers.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            if let Err(panic) = task.join() {
                std::panic::resume_unwind(panic);
            }
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
        Arc::strong_count(&kept.device),
        1,
        "the device is still referenced after the server is gone"
    );
    if check_fds {
        assert_eq!(open_fds(), baseline, "the server leaked a descriptor");
    }
    let state = device_state(&*kept.device);
    assert_eq!(
        state.len(),
        kept.power_on.len(),
        "the device's state changed size"
    );
    if let Some(at) = (0..state.len()).find(|&i| state[i] != kept.power_on[i]) {
        panic!(
            "the device after the session differs from the device before its first client: \
             byte {at} of the state ({}) is {:#04x}, was {:#04x}",
            STATE_PARTS, state[at], kept.power_on[at]
        );
    }
    kept.sessions += 1;
    *KEPT.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept);
    outcome
}

/// The client's state while it plays an input.
struct Client<'a> {
    peer: Peer,
    /// The served device, whose STATUS the client reads directly while it waits.
    device: &'a dyn Device,
    descriptors: Descriptors,
    next_id: u16,
    budget_end: Instant,
    statuses: Vec<u32>,
    /// What the last answered probe showed ([`Client::settled`]).
    settled: Option<Settled>,
    /// No probe went unanswered so far (see [`Client::probe`]).
    trusted: bool,
}

/// What an answered probe showed ([`Client::settled`]).
#[derive(Clone, Copy, Debug)]
struct Settled {
    /// [`peer::Sender::sends`] right after the probe.
    sent: u64,
    /// The engine's STATUS, not BUSY, if the probe read it.
    status: Option<u32>,
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

    fn send(&mut self, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> std::io::Result<()> {
        self.peer.send(bytes, fds)
    }

    /// A VERSION the fuzzer sent (when the harness sent none): its layout, for the answers.
    fn note_version(&mut self, command: u8, message: &[u8]) {
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

    /// What the last answered probe showed, if nothing was sent since (by the harness or the
    /// reader): then the server has handled everything, and a probe would only repeat it.
    fn settled(&self) -> Option<Settled> {
        self.settled.filter(|s| s.sent == self.peer.sends())
    }

    /// Sends a probe and waits for its reply, within the wait budget.
    fn probe(&mut self, message: &[u8]) -> Option<Answer> {
        let deadline = self.deadline()?;
        let answer = self.peer.probe(message, deadline);
        if answer.is_none() {
            // Its reply may still come and be taken for a later probe's: from here on, what
            // a probe shows is not trusted to skip the next.
            self.trusted = false;
        }
        answer
    }

    /// Records what an answered probe showed (if probes are trusted).
    fn settle(&mut self, answer: &Answer, status: Option<u32>) {
        if self.trusted {
            self.settled = Some(Settled {
                sent: answer.sent,
                status,
            });
        }
    }

    /// Waits until the server handled everything sent so far.
    fn sync(&mut self) {
        if self.settled().is_some() {
            return;
        }
        if let Some(answer) = self.probe(&messages::ping()) {
            self.settle(&answer, None);
        }
    }

    /// Waits until the engine is idle (STATUS not BUSY).
    fn wait_idle(&mut self) {
        if let Some(Settled {
            status: Some(status),
            ..
        }) = self.settled()
        {
            // Seen idle, and no command written since.
            self.statuses.push(status);
            return;
        }
        let access = RegionAccess::new(0, STATUS, 4);
        loop {
            let Some(answer) = self.probe(&messages::read_status()) else {
                return;
            };
            self.settle(&answer, None);
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
                self.settle(&answer, Some(status));
                self.statuses.push(status);
                return;
            }
            // Everything sent is handled, and no command starts before the client sends
            // again: wait for this one on the device itself (register reads, no messages),
            // then read STATUS through the server again.
            let spin_end = Instant::now() + IDLE_SPIN;
            let mut pause = IDLE_POLL.0;
            while self.engine_busy() && Instant::now() < self.budget_end {
                if Instant::now() < spin_end {
                    // Most commands end within microseconds: let the engine's thread run (on
                    // this core, if the fuzzer is pinned to one), answering what came.
                    self.peer.pause(Duration::ZERO);
                    std::thread::yield_now();
                } else {
                    self.peer.pause(pause);
                    pause = (pause * 2).min(IDLE_POLL.1);
                }
            }
        }
    }

    /// Whether the engine's STATUS reads BUSY, read on the device (not through the server).
    fn engine_busy(&self) -> bool {
        let mut status = [0u8; 4];
        self.device
            .region_read(0, STATUS, &mut status)
            .is_ok_and(|()| u32::from_le_bytes(status) == STATUS_BUSY)
    }
}
