//! A client killed at random points, again and again, against one `vdma serve`: during
//! VERSION, between DMA_MAPs, while the engine runs a copy, and while the engine's DMA_READ
//! requests are outstanding. The server must keep serving, and its open descriptors, its
//! mappings and its memory must come back to where they started.
//!
//! The clients are this test binary run again (`kill_child_entry`, ignored in normal runs),
//! so each is a real process the kernel tears down with SIGKILL.

mod common;

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdma::{OwnedMemory, Prot};
use vdma_cli::dma_engine::registers::*;
use vdma_model::memfd;
use vdma_user::client::Client;

use common::Serve;

/// Rounds in one run (1,000 by default; `VDMA_KILL_ROUNDS` overrides).
fn rounds() -> usize {
    std::env::var("VDMA_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

const BAR0: u32 = 0;
const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// The child: one client that runs up to a point and then waits to be killed.

#[test]
#[ignore = "the client process of kill_at_random_points; runs only when that test starts it"]
fn kill_child_entry() {
    let (Ok(stage), Ok(socket)) = (
        std::env::var("VDMA_KILL_CHILD"),
        std::env::var("VDMA_KILL_SOCKET"),
    ) else {
        return;
    };
    match stage.as_str() {
        "version" => child_version(Path::new(&socket)),
        "maps" => child_maps(Path::new(&socket)),
        "engine" => child_engine(Path::new(&socket), false),
        "dma_read" => child_engine(Path::new(&socket), true),
        other => panic!("unknown stage {other}"),
    }
    // Wait to be killed (the parent always kills; never linger if it died).
    std::thread::sleep(Duration::from_secs(30));
}

/// Sends a VERSION header and half its body, then stops.
fn child_version(socket: &Path) {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return;
    };
    let json = br#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}}"#;
    let size = 16 + 4 + json.len() as u32 + 1;
    let mut header = Vec::new();
    header.extend_from_slice(&0u16.to_le_bytes()); // msg_id
    header.extend_from_slice(&1u16.to_le_bytes()); // VERSION
    header.extend_from_slice(&size.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // flags: command
    header.extend_from_slice(&0u32.to_le_bytes()); // error
    header.extend_from_slice(&0u16.to_le_bytes()); // major
    header.extend_from_slice(&0u16.to_le_bytes()); // minor
    header.extend_from_slice(&json[..json.len() / 2]);
    let _ = s.write_all(&header);
    std::thread::sleep(Duration::from_secs(30));
}

/// Maps 64 pieces of a memfd, many in flight, and keeps going.
fn child_maps(socket: &Path) {
    let Ok(client) = Client::connect(socket) else {
        return;
    };
    let file = memfd("maps", 64 * 64 * 1024);
    let mut pending = Vec::new();
    for i in 0..64u64 {
        match client.send_dma_map_fd(
            0x1000_0000 + i * 0x10000,
            0x10000,
            file.as_fd(),
            i * 0x10000,
            Prot::READ_WRITE,
        ) {
            Ok(p) => pending.push(p),
            Err(_) => return,
        }
    }
    for p in pending {
        let _ = p.wait();
    }
    std::thread::sleep(Duration::from_secs(30));
}

/// Maps 32 MiB (a memfd, or memory served through DMA_READ/DMA_WRITE) and starts a 16 MiB
/// COPY, then waits (the engine is running, or its DMA requests are outstanding).
fn child_engine(socket: &Path, by_message: bool) {
    let Ok(client) = Client::connect(socket) else {
        return;
    };
    let iova = 0x1_0000_0000u64;
    let _file;
    let mapped = if by_message {
        let Ok(memory) = OwnedMemory::new(32 * MIB as usize) else {
            return;
        };
        client.dma_map_memory(iova, 32 * MIB, Arc::new(memory), 0, Prot::READ_WRITE)
    } else {
        _file = memfd("engine", 32 * MIB);
        client.dma_map_fd(iova, 32 * MIB, _file.as_fd(), 0, Prot::READ_WRITE)
    };
    if mapped.is_err() {
        return;
    }
    let regs: [(u64, u32); 6] = [
        (SRC_LO, iova as u32),
        (SRC_LO + 4, (iova >> 32) as u32),
        (DST_LO, (iova + 16 * MIB) as u32),
        (DST_LO + 4, ((iova + 16 * MIB) >> 32) as u32),
        (LEN, 16 * MIB as u32),
        (CMD, CMD_COPY),
    ];
    for (offset, value) in regs {
        if client
            .region_write(BAR0, offset, &value.to_le_bytes())
            .is_err()
        {
            return;
        }
    }
    // Keep reading STATUS: commands in flight at the kill, too.
    loop {
        if client.region_read(BAR0, STATUS, 4).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The parent.

/// What the server holds: open descriptors, lines of /proc/PID/maps, resident KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    fds: usize,
    maps: usize,
    rss_kib: u64,
}

fn held(pid: u32) -> Held {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .count();
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    Held {
        fds,
        maps,
        rss_kib: pages * 4,
    }
}

/// A whole client session: connect, map, run a COPY of `len` bytes (through DMA_READ/WRITE
/// messages if `by_message`), check it ended, leave.
fn healthy_session(socket: &Path, len: u64, by_message: bool) {
    let client = Client::connect(socket).expect("the server still serves");
    let file = memfd("healthy", 2 * len);
    let iova = 0x2000_0000u64;
    if by_message {
        let memory = OwnedMemory::new(2 * len as usize).unwrap();
        client
            .dma_map_memory(iova, 2 * len, Arc::new(memory), 0, Prot::READ_WRITE)
            .unwrap();
    } else {
        client
            .dma_map_fd(iova, 2 * len, file.as_fd(), 0, Prot::READ_WRITE)
            .unwrap();
    }
    for (offset, value) in [
        (SRC_LO, iova as u32),
        (SRC_LO + 4, 0),
        (DST_LO, (iova + len) as u32),
        (DST_LO + 4, 0),
        (LEN, len as u32),
        (CMD, CMD_COPY),
    ] {
        client
            .region_write(BAR0, offset, &value.to_le_bytes())
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.region_read(BAR0, STATUS, 4).unwrap();
        match u32::from_le_bytes(status.try_into().unwrap()) {
            1 => assert!(Instant::now() < deadline, "the engine stayed busy"),
            2 => break,
            other => panic!("COPY ended with status {other}"),
        }
    }
    client.dma_unmap(iova, 2 * len).unwrap();
}

/// What the server holds with one idle client connected. A new client is served only after
/// the previous session has ended and been cleaned up (one client at a time), so measuring
/// while a fresh client is connected, negotiated and answered, never catches a teardown half
/// done.
fn held_with_probe(socket: &Path, pid: u32) -> Held {
    let client = Client::connect(socket).expect("the server still serves");
    client.device_info().expect("a round trip");
    let now = held(pid);
    drop(client);
    now
}

/// A small deterministic generator (xorshift), so a failure can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn kill_at_random_points() {
    let server = Serve::start("kill");
    let pid = server.child.id();
    // Warm up (thread-locals, allocator pools, the device's worker, its largest copy buffer:
    // the allocator keeps a freed 16 MiB buffer for the next one): whole sessions with the
    // largest copies the children start.
    healthy_session(&server.socket, 16 * MIB, true);
    healthy_session(&server.socket, 16 * MIB, false);
    healthy_session(&server.socket, 4096, false);
    let base = held_with_probe(&server.socket, pid);
    let exe = std::env::current_exe().unwrap();
    let stages = ["version", "maps", "engine", "dma_read"];
    let seed = std::env::var("VDMA_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    let mut rng = Rng(seed);
    let n = rounds();
    for round in 0..n {
        let stage = stages[round % stages.len()];
        let mut child = Command::new(&exe)
            .args(["--exact", "kill_child_entry", "--ignored", "--nocapture"])
            .env("VDMA_KILL_CHILD", stage)
            .env("VDMA_KILL_SOCKET", &server.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // 0 to 40 ms: before connecting, mid-negotiation, mid-maps, mid-copy.
        std::thread::sleep(Duration::from_micros(rng.next() % 40_000));
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            server.alive(),
            "the server died at round {round} ({stage}, seed {seed:#x})"
        );
        if round % 100 == 99 {
            healthy_session(&server.socket, 4096, round % 200 == 199);
        }
    }
    healthy_session(&server.socket, 4096, false);
    let end = held_with_probe(&server.socket, pid);
    assert_eq!(end.fds, base.fds, "descriptors leaked: {base:?} -> {end:?}");
    assert_eq!(end.maps, base.maps, "mappings leaked: {base:?} -> {end:?}");
    assert!(
        end.rss_kib <= base.rss_kib + 4096,
        "memory grew by more than 4 MiB: {base:?} -> {end:?}"
    );
    eprintln!("{n} kills: {base:?} -> {end:?}");
}
