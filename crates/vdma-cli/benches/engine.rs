//! The vfio-user path, side by side in one process: a client (`vdma_user::client::Client`)
//! and `vdma_user::server::Server` serving the dma-engine over a real Unix socket.
//!
//! - `region_write_rtt`: one 4-byte REGION_WRITE (the PATTERN register) and its reply.
//!   `socket-pingpong` is the limit: the same 36-byte message and 32-byte reply bounced
//!   between two threads over a socketpair, with nothing decoded.
//! - `engine_copy`: one COPY command, programmed and waited for as a driver would (write CMD,
//!   read STATUS until done), of 4 KiB, 64 KiB and 1 MiB, on guest memory that is a shared
//!   memfd (`fd`: the engine copies it directly) or memory the client serves through
//!   DMA_READ/DMA_WRITE messages (`message`).
//!
//! Run: `cargo bench -p vdma-cli --bench engine`. Compare only figures of one run.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vdma::{OwnedMemory, Prot};
use vdma_cli::dma_engine::registers::*;
use vdma_cli::dma_engine::{dma_engine, DmaEngineConfig};
use vdma_model::memfd;
use vdma_user::client::Client;
use vdma_user::server::{Server, ServerConfig};

const BAR0: u32 = 0;
const MIB: u64 = 1 << 20;
const SIZES: [u64; 3] = [4096, 64 * 1024, MIB];

/// A served dma-engine and a connected client; the server thread ends when dropped.
struct Session {
    client: Option<Client>,
    server: Arc<Server>,
    serving: Option<thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl Session {
    fn start(name: &str) -> Session {
        let dir = std::env::temp_dir().join(format!("vdma-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bench dir");
        let socket = dir.join("engine.sock");
        let device = Arc::new(dma_engine(DmaEngineConfig::default()).expect("dma-engine"));
        let server =
            Arc::new(Server::bind(&socket, device, ServerConfig::default()).expect("bind"));
        let serving = {
            let server = server.clone();
            thread::spawn(move || {
                let _ = server.serve_one();
            })
        };
        let client = Client::connect(&socket).expect("connect");
        Session {
            client: Some(client),
            server,
            serving: Some(serving),
            dir,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("connected")
    }

    fn write32(&self, offset: u64, value: u32) {
        self.client()
            .region_write(BAR0, offset, &value.to_le_bytes())
            .expect("region write");
    }

    /// Starts a COPY and waits for it (STATUS 2).
    fn copy(&self) {
        self.write32(CMD, CMD_COPY);
        loop {
            let status = self.client().region_read(BAR0, STATUS, 4).expect("status");
            match status[0] {
                1 => continue,
                2 => return,
                other => panic!("COPY ended with status {other}"),
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.client.take());
        self.server.stop();
        if let Some(t) = self.serving.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn region_write_rtt(c: &mut Criterion) {
    let mut g = c.benchmark_group("region_write_rtt");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);

    // The limit: a REGION_WRITE-sized message and a reply-sized answer over a socketpair.
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let echo = thread::spawn(move || {
        let mut request = [0u8; 36];
        let reply = [0u8; 32];
        while b.read_exact(&mut request).is_ok() {
            if b.write_all(&reply).is_err() {
                break;
            }
        }
    });
    g.bench_function("socket-pingpong", |bench| {
        let request = [0u8; 36];
        let mut reply = [0u8; 32];
        bench.iter(|| {
            a.write_all(&request).expect("send");
            a.read_exact(&mut reply).expect("receive");
            black_box(&reply);
        })
    });
    drop(a);
    let _ = echo.join();

    let session = Session::start("rtt");
    g.bench_function("vdma", |bench| {
        let mut value = 0u32;
        bench.iter(|| {
            value = value.wrapping_add(1);
            session.write32(PATTERN, value);
        })
    });
    g.finish();
}

fn engine_copy(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine_copy");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    let iova = 0x1000_0000u64;
    let span = 2 * MIB;

    let fd_session = Session::start("fd");
    let file = memfd("bench", span);
    fd_session
        .client()
        .dma_map_fd(iova, span, file.as_fd(), 0, Prot::READ_WRITE)
        .expect("map memfd");

    let msg_session = Session::start("message");
    let memory = OwnedMemory::new(span as usize).expect("client memory");
    msg_session
        .client()
        .dma_map_memory(iova, span, Arc::new(memory), 0, Prot::READ_WRITE)
        .expect("map by message");

    for s in [&fd_session, &msg_session] {
        s.write32(SRC_LO, iova as u32);
        s.write32(SRC_LO + 4, (iova >> 32) as u32);
        s.write32(DST_LO, (iova + MIB) as u32);
        s.write32(DST_LO + 4, ((iova + MIB) >> 32) as u32);
    }
    for size in SIZES {
        g.throughput(Throughput::Bytes(size));
        for (name, s) in [("fd", &fd_session), ("message", &msg_session)] {
            s.write32(LEN, size as u32);
            g.bench_with_input(BenchmarkId::new(name, size), &size, |bench, _| {
                bench.iter(|| s.copy())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, region_write_rtt, engine_copy);
criterion_main!(benches);
