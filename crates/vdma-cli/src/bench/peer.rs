//! Another process's memory: a child (this program again, in its hidden peer mode) allocates
//! memory, touches it, prints where it is and waits until its standard input closes; the
//! bench opens it as [`ProcessMemory`] and maps it.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdma::{Memory, OwnedMemory, ProcessMemory};

use super::BenchError;

/// How much memory the peer offers.
pub(crate) const PEER_LEN: u64 = 2 << 20;

/// What starts the peer's announcement (anything else on its standard output, e.g. a test
/// harness's chatter, is skipped).
const ANNOUNCE: &str = "vdma-bench-peer ";

/// How long the peer may take to announce itself.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start the peer process.
#[derive(Clone, Debug)]
pub struct PeerCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub envs: Vec<(OsString, OsString)>,
}

impl PeerCommand {
    /// This program again with the hidden subcommand [`super::PEER_SUBCOMMAND`].
    pub fn current_exe() -> Result<PeerCommand, BenchError> {
        let program = std::env::current_exe().map_err(|source| BenchError::Io {
            what: "current_exe".into(),
            source,
        })?;
        Ok(PeerCommand {
            program,
            args: vec![super::PEER_SUBCOMMAND.into()],
            envs: Vec::new(),
        })
    }
}

/// The peer's side: allocates 2 MiB, writes all of it, prints
/// `vdma-bench-peer addr=0x... len=...` and waits until standard input reaches its end (the
/// bench closes it, or dies), then exits. What the bench's hidden peer subcommand runs.
pub fn peer_main() -> ! {
    let code = match serve_memory() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vdma bench peer: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn serve_memory() -> Result<(), String> {
    let memory = OwnedMemory::new(PEER_LEN as usize).map_err(|e| format!("allocate: {e}"))?;
    memory
        .write_at(0, &vec![0x5a; PEER_LEN as usize])
        .map_err(|e| format!("touch: {e}"))?;
    let addr = memory
        .host_region()
        .map(|r| r.base().as_ptr() as usize)
        .ok_or("owned memory without a host region")?;
    let mut out = io::stdout().lock();
    writeln!(out, "{ANNOUNCE}addr={addr:#x} len={PEER_LEN}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("announce: {e}"))?;
    drop(out);
    // Reads until the end: the bench never writes, so this returns when it closes the pipe
    // (or dies).
    let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
    drop(memory);
    Ok(())
}

/// A running peer; its memory stays until this value is dropped.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Its memory, opened by pidfd; offsets are its virtual addresses.
    pub(crate) memory: Arc<ProcessMemory>,
    /// The address of the memory it offers, in its own address space.
    pub(crate) addr: u64,
    _child: Running,
}

impl Peer {
    /// Starts the peer and waits for its announcement; checks that its memory is reachable.
    pub(crate) fn spawn(command: &PeerCommand) -> Result<Peer, BenchError> {
        let mut cmd = Command::new(&command.program);
        cmd.args(&command.args)
            .envs(command.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|source| BenchError::Io {
            what: format!("spawn the peer {}", command.program.display()),
            source,
        })?;
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        let running = Running { child, stdin };
        let stdout = stdout.ok_or_else(|| BenchError::Peer("no standard output".into()))?;
        let (addr, len) = read_announcement(stdout, ANNOUNCE_TIMEOUT)?;
        if len < PEER_LEN {
            return Err(BenchError::Peer(format!(
                "offers {len} bytes, the bench needs {PEER_LEN}"
            )));
        }
        let id = running.child.id();
        let pid =
            i32::try_from(id).map_err(|_| BenchError::Peer(format!("pid {id} out of range")))?;
        let memory = ProcessMemory::open(pid).map_err(|source| BenchError::Vdma {
            what: format!("open the peer's memory (pid {pid})"),
            source,
        })?;
        // The peer wrote 0x5a everywhere: check that its memory is really reachable.
        let mut probe = [0u8; 8];
        memory
            .read_at(addr, &mut probe)
            .map_err(|source| BenchError::Vdma {
                what: format!("read the peer's memory (pid {pid}, {addr:#x})"),
                source,
            })?;
        if probe != [0x5a; 8] {
            return Err(BenchError::Peer(format!(
                "its memory at {addr:#x} holds {probe:02x?}, not what it wrote"
            )));
        }
        Ok(Peer {
            memory: Arc::new(memory),
            addr,
            _child: running,
        })
    }
}

/// The peer process: ended when dropped (its standard input closed, killed if it stays).
#[derive(Debug)]
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
}

/// Reads lines from the peer's standard output (on a helper thread, so a silent peer cannot
/// hang the bench) until the announcement; returns its address and length.
fn read_announcement(
    stdout: impl Read + Send + 'static,
    timeout: Duration,
) -> Result<(u64, u64), BenchError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bench-peer-stdout".into())
        .spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let found = loop {
                match lines.next() {
                    None => break Err("exited before announcing its memory".to_string()),
                    Some(Err(e)) => break Err(format!("reading its output: {e}")),
                    Some(Ok(line)) => {
                        // Anywhere in the line: a harness may have printed before it.
                        if let Some(at) = line.find(ANNOUNCE) {
                            break parse_announcement(&line[at + ANNOUNCE.len()..]);
                        }
                    }
                }
            };
            let _ = tx.send(found);
            // Keep draining whatever else it prints, so it never blocks on a full pipe.
            for _ in lines {}
        })
        .map_err(|source| BenchError::Io {
            what: "spawn a thread".into(),
            source,
        })?;
    match rx.recv_timeout(timeout) {
        Ok(found) => found.map_err(BenchError::Peer),
        Err(_) => Err(BenchError::Peer(format!(
            "no announcement within {timeout:?}"
        ))),
    }
}

/// Parses `addr=0x... len=...`.
fn parse_announcement(text: &str) -> Result<(u64, u64), String> {
    let mut addr = None;
    let mut len = None;
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("addr=") {
            let hex = v.strip_prefix("0x").unwrap_or(v);
            addr = u64::from_str_radix(hex, 16).ok();
        } else if let Some(v) = field.strip_prefix("len=") {
            len = v.parse::<u64>().ok();
        }
    }
    match (addr, len) {
        (Some(a), Some(l)) if a != 0 && a % super::PAGE as u64 == 0 => Ok((a, l)),
        _ => Err(format!("unreadable announcement `{text}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse_or_are_refused() {
        assert_eq!(
            parse_announcement("addr=0x7f0000001000 len=2097152"),
            Ok((0x7f00_0000_1000, 2 << 20))
        );
        assert!(
            parse_announcement("addr=0x7f0000001001 len=1").is_err(),
            "unaligned"
        );
        assert!(parse_announcement("addr=zz len=1").is_err());
        assert!(parse_announcement("len=1").is_err());
        assert!(parse_announcement("").is_err());
    }

    #[test]
    fn a_silent_or_dying_peer_is_an_error() {
        let r = read_announcement(
            io::Cursor::new(b"running 1 test\nbye\n".to_vec()),
            ANNOUNCE_TIMEOUT,
        );
        assert!(matches!(r, Err(BenchError::Peer(m)) if m.contains("exited")));
        let r = read_announcement(
            io::Cursor::new(b"noise\ntest x ... vdma-bench-peer addr=0x10000 len=4096\n".to_vec()),
            ANNOUNCE_TIMEOUT,
        );
        assert_eq!(r.ok(), Some((0x10000, 4096)));
    }
}
