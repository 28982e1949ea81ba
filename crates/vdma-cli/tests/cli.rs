//! The `vdma` binary end to end: `serve` on a temporary socket (mode, ids, signals, errors),
//! `probe` against it, and `probe` against in-process servers with hand-made config spaces
//! (BAR sizing restored over the wire, a hostile capability list).

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vdma::{DeviceHandle, OwnedMemory, Prot};
use vdma_user::client::Client;
use vdma_user::protocol::{
    DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE,
};
use vdma_user::server::{
    Device, DeviceDescription, DeviceError, IrqDescription, IrqRequest, RegionDescription, Server,
    ServerConfig,
};

const VDMA: &str = env!("CARGO_BIN_EXE_vdma");
const WAIT: Duration = Duration::from_secs(20);

/// A fresh private directory, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("vdma-cli-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).expect("temp dir");
        TempDir(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running `vdma serve`, its stderr in a file; killed if still running at the end.
struct Served {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl Served {
    /// Starts `vdma serve --socket <tmp> <extra...>` and waits for the socket to appear.
    fn start(extra: &[&str]) -> Served {
        Served::start_with_log_level(extra, "info")
    }

    /// [`Served::start`] with `RUST_LOG` set to `level`.
    fn start_with_log_level(extra: &[&str], level: &str) -> Served {
        let dir = TempDir::new();
        let socket = dir.path("s.sock");
        let log = dir.path("serve.log");
        let child = Command::new(VDMA)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn vdma serve");
        let mut served = Served {
            child,
            socket,
            log,
            dir,
        };
        served.wait_for_socket();
        served
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if fs::symlink_metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("vdma serve exited ({status}) early: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no socket after {WAIT:?}: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) only sends a signal; `pid` is our own child, not yet waited for
        // (so the pid cannot have been reused), and the signal is a valid number.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the process to exit (bounded).
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("vdma serve did not exit within {WAIT:?}: {}", self.log());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGINT, then: exit status 0 and the socket gone.
    fn interrupt_cleanly(&mut self) {
        self.signal(libc::SIGINT);
        let status = self.wait();
        assert!(status.success(), "exit {status}: {}", self.log());
        assert!(
            fs::symlink_metadata(&self.socket).is_err(),
            "the socket is still there"
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `vdma <args>` to the end (bounded) and returns its output.
fn vdma(args: &[&str]) -> Output {
    let mut child = Command::new(VDMA)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vdma");
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let out = thread::spawn(move || read_all(stdout));
    let err = thread::spawn(move || read_all(stderr));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vdma {args:?} did not exit within {WAIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().expect("stdout"),
        stderr: err.join().expect("stderr"),
    }
}

fn read_all(pipe: Option<impl std::io::Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut buf);
    }
    buf
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn probe(socket: &Path) -> (Output, String) {
    let out = vdma(&["probe", "--socket", socket.to_str().expect("utf-8 path")]);
    let stdout = text(&out.stdout);
    (out, stdout)
}

fn config_u16(client: &Client, offset: u64) -> u16 {
    let bytes = client.region_read(7, offset, 2).expect("config read");
    u16::from_le_bytes([bytes[0], bytes[1]])
}

#[test]
fn serve_makes_a_0600_socket_with_the_device_and_stops_on_sigint() {
    let mut served = Served::start(&[]);
    let meta = fs::symlink_metadata(&served.socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let client = Client::connect(&served.socket).expect("connect");
    let info = client.device_info().expect("device info");
    assert_ne!(info.flags.get() & DEVICE_FLAGS_PCI, 0);
    assert!(info.num_regions.get() >= 8);
    let config = client.region_info(7).expect("config region");
    assert!(config.info.size >= 256);
    assert_eq!(config_u16(&client, 0x00), 0x1234);
    assert_eq!(config_u16(&client, 0x02), 0xd3a0);
    assert_eq!(config_u16(&client, 0x2c), 0x1234);
    assert_eq!(config_u16(&client, 0x2e), 0xd3a0);
    drop(client);

    served.interrupt_cleanly();
    let log = served.log();
    assert!(log.contains("serving"), "{log}");
    assert!(log.contains("client connected"), "{log}");
    assert!(log.contains("client disconnected"), "{log}");
}

#[test]
fn serve_takes_ids_in_hex_or_decimal() {
    let mut served = Served::start(&["--vendor-id", "0x1af4", "--device-id", "4096"]);
    let client = Client::connect(&served.socket).expect("connect");
    assert_eq!(config_u16(&client, 0x00), 0x1af4);
    assert_eq!(config_u16(&client, 0x02), 0x1000);
    drop(client);
    let (out, stdout) = probe(&served.socket);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("Device [1af4:1000]"), "{stdout}");
    assert!(stdout.contains("Subsystem: Device [1af4:1000]"), "{stdout}");
    served.interrupt_cleanly();
}

#[test]
fn sigint_with_a_client_connected_and_memory_mapped() {
    let mut served = Served::start(&[]);
    let client = Client::connect(&served.socket).expect("connect");
    // One mapping of a file, one reached by DMA_READ/DMA_WRITE messages.
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(served.dir.path("guest-ram"))
        .expect("file");
    file.set_len(1 << 20).expect("set_len");
    client
        .dma_map_fd(0x10_0000, 1 << 20, file.as_fd(), 0, Prot::READ_WRITE)
        .expect("map the file");
    let ram = Arc::new(OwnedMemory::new(1 << 20).expect("memory"));
    client
        .dma_map_memory(0x20_0000, 1 << 20, ram, 0, Prot::READ_WRITE)
        .expect("map memory");
    assert_eq!(client.dma_mappings().len(), 2);

    served.interrupt_cleanly();
    // The server hung up on the client.
    let deadline = Instant::now() + WAIT;
    while client.is_connected() {
        assert!(Instant::now() < deadline, "the client is still connected");
        thread::sleep(Duration::from_millis(10));
    }
    assert!(client.device_info().is_err());
    let log = served.log();
    assert!(log.contains("client disconnected"), "{log}");
}

#[test]
fn sigterm_stops_too() {
    let mut served = Served::start(&[]);
    served.signal(libc::SIGTERM);
    let status = served.wait();
    assert!(status.success(), "exit {status}: {}", served.log());
    assert!(fs::symlink_metadata(&served.socket).is_err());
}

#[test]
fn clients_are_served_one_after_another() {
    let mut served = Served::start(&[]);
    for _ in 0..3 {
        let client = Client::connect(&served.socket).expect("connect");
        assert_eq!(config_u16(&client, 0x00), 0x1234);
        client.close();
    }
    served.interrupt_cleanly();
    assert_eq!(served.log().matches("client connected").count(), 3);
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve"], "--socket"),
        (
            &["serve", "--socket", "/tmp/x", "--vendor-id", "0x10000"],
            "16-bit",
        ),
        (
            &["serve", "--socket", "/tmp/x", "--device-id", "zz"],
            "16-bit",
        ),
        (&["serve", "--socket", "/tmp/x", "--vendor-id=-1"], "16-bit"),
        (
            &["serve", "--socket", "/tmp/x", "--device", "nic"],
            "dma-engine",
        ),
        (&["probe"], "--socket"),
        (&["frobnicate"], "frobnicate"),
        (&[], "Usage"),
    ];
    for (args, needle) in cases {
        let out = vdma(args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn serve_on_a_live_socket_fails_and_leaves_it_alone() {
    let mut served = Served::start(&[]);
    let socket = served.socket.to_str().expect("utf-8").to_string();
    let out = vdma(&["serve", "--socket", &socket]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("in use by a live server"), "{stderr}");
    assert!(stderr.contains(&socket), "{stderr}");
    // The first server still serves.
    let client = Client::connect(&served.socket).expect("connect");
    assert_eq!(config_u16(&client, 0x00), 0x1234);
    drop(client);
    served.interrupt_cleanly();
}

#[test]
fn serve_on_a_path_that_is_not_a_socket_or_cannot_be_made() {
    let dir = TempDir::new();
    let file = dir.path("plain");
    fs::write(&file, b"keep me").expect("write");
    let out = vdma(&["serve", "--socket", file.to_str().expect("utf-8")]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(fs::read(&file).expect("read"), b"keep me");

    let missing = dir.path("no/such/dir/s.sock");
    let out = vdma(&["serve", "--socket", missing.to_str().expect("utf-8")]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot bind"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn probe_while_another_client_is_served_times_out_with_a_hint() {
    let mut served = Served::start(&[]);
    let client = Client::connect(&served.socket).expect("connect");
    let (out, _) = probe(&served.socket);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no reply"), "{stderr}");
    assert!(stderr.contains("one client at a time"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    drop(client);
    served.interrupt_cleanly();
}

#[test]
fn probe_without_a_server_fails_with_a_message() {
    let dir = TempDir::new();
    let (out, _) = probe(&dir.path("nobody.sock"));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[test]
fn probe_prints_the_served_device() {
    let mut served = Served::start(&[]);
    let (out, stdout) = probe(&served.socket);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for line in [
        "vfio-user version 0.0",
        "Device: flags 0x3 (RESET PCI), 9 regions, 5 interrupt types",
        "  0 BAR0: size 0x1000 [4K], flags 0x3 (READ WRITE)\n",
        "  7 config: size 0x100 [256]",
        "  2 MSI-X: count 1, ",
        "System peripheral [0880]: Device [1234:d3a0] (rev 01)\n",
        "\tSubsystem: Device [1234:d3a0]\n",
        "\tControl: I/O- Mem- BusMaster-",
        "\tStatus: Cap+ ",
        "\tInterrupt: pin A routed to IRQ 0\n",
        "\tRegion 0: Memory at <unassigned> (32-bit, non-prefetchable) [disabled] [size=4K]\n",
        "] MSI: Enable- Count=1/1 Maskable",
        "\tCapabilities: [40] MSI: ",
        "] MSI-X: Enable- Count=1 Masked-\n",
        "\t\tVector table: BAR=1 offset=00000000\n",
        "\t\tPBA: BAR=1 offset=00000800\n",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("Expansion ROM"), "{stdout}");
    assert!(!stdout.contains("note:"), "{stdout}");
    // Probing twice gives the same answer: the sizing left the BARs as they were.
    let (again, stdout_again) = probe(&served.socket);
    assert!(again.status.success());
    assert_eq!(stdout_again, stdout);
    served.interrupt_cleanly();
}

/// BAR0 registers of the dma-engine (../shared/spec/dma-engine.md).
mod engine {
    pub const ID: u64 = 0x00;
    pub const SRC_LO: u64 = 0x08;
    pub const DST_LO: u64 = 0x10;
    pub const LEN: u64 = 0x18;
    pub const CMD: u64 = 0x1c;
    pub const STATUS: u64 = 0x20;
    pub const COUNT: u64 = 0x38;
    pub const CMD_COPY: u32 = 1;
    pub const STATUS_DONE: u32 = 2;
}

fn bar0_read(client: &Client, offset: u64) -> u32 {
    let b = client.region_read(0, offset, 4).expect("BAR0 read");
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn bar0_write(client: &Client, offset: u64, value: u32) {
    client
        .region_write(0, offset, &value.to_le_bytes())
        .expect("BAR0 write");
}

#[test]
fn the_served_engine_copies_then_stops_on_sigint() {
    use std::os::unix::fs::FileExt;

    let mut served = Served::start(&[]);
    let client = Client::connect(&served.socket).expect("connect");
    assert_eq!(bar0_read(&client, engine::ID), 0x5644_4d41);
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(served.dir.path("guest-ram"))
        .expect("file");
    file.set_len(1 << 20).expect("set_len");
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    file.write_all_at(&pattern, 0).expect("write");
    client
        .dma_map_fd(0x10_0000, 1 << 20, file.as_fd(), 0, Prot::READ_WRITE)
        .expect("map the file");

    bar0_write(&client, engine::SRC_LO, 0x10_0000);
    bar0_write(&client, engine::DST_LO, 0x10_8000);
    bar0_write(&client, engine::LEN, 4096);
    bar0_write(&client, engine::CMD, engine::CMD_COPY);
    let deadline = Instant::now() + WAIT;
    while bar0_read(&client, engine::STATUS) != engine::STATUS_DONE {
        assert!(Instant::now() < deadline, "the copy did not finish");
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(bar0_read(&client, engine::COUNT), 1);
    let mut copied = vec![0u8; 4096];
    file.read_exact_at(&mut copied, 0x8000).expect("read");
    assert_eq!(copied, pattern);

    // Stop with the mapping still there.
    served.interrupt_cleanly();
    let deadline = Instant::now() + WAIT;
    while client.is_connected() {
        assert!(Instant::now() < deadline, "the client is still connected");
        thread::sleep(Duration::from_millis(10));
    }
}

// In-process servers with hand-made config spaces.

/// A PCI device that is only config space: BAR registers keep the bits their mask allows
/// (as hardware does), every other byte is plain memory.
struct FakePci {
    config: Mutex<Vec<u8>>,
    bar_masks: [u32; 6],
    /// A region whose DEVICE_GET_REGION_INFO fails.
    broken_region: Option<u32>,
}

impl FakePci {
    fn config(&self) -> Vec<u8> {
        self.config.lock().expect("lock").clone()
    }
}

impl Device for FakePci {
    fn description(&self) -> DeviceDescription {
        DeviceDescription {
            flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
            num_regions: 9,
            num_irqs: 5,
        }
    }

    fn region(&self, index: u32) -> Result<RegionDescription, DeviceError> {
        if self.broken_region == Some(index) {
            return Err(DeviceError::Invalid("broken on purpose"));
        }
        let size = match index {
            0 => 0x1000,
            7 => self.config.lock().expect("lock").len() as u64,
            _ => 0,
        };
        Ok(RegionDescription {
            size,
            flags: REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE,
            ..RegionDescription::default()
        })
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        if index == 7 {
            let config = self.config.lock().expect("lock");
            let at = offset as usize;
            buf.copy_from_slice(&config[at..at + buf.len()]);
        } else {
            buf.fill(0);
        }
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if index != 7 {
            return Ok(());
        }
        let mut config = self.config.lock().expect("lock");
        let at = offset as usize;
        if (0x10..0x28).contains(&at) && data.len() == 4 {
            let mask = self.bar_masks[(at - 0x10) / 4];
            let old = u32::from_le_bytes(config[at..at + 4].try_into().expect("4 bytes"));
            let new = u32::from_le_bytes(data.try_into().expect("4 bytes"));
            let value = (new & mask) | (old & !mask);
            config[at..at + 4].copy_from_slice(&value.to_le_bytes());
        } else if at == 0x30 {
            // No expansion ROM.
        } else {
            config[at..at + data.len()].copy_from_slice(data);
        }
        Ok(())
    }

    fn irq_info(&self, index: u32) -> Result<IrqDescription, DeviceError> {
        Ok(IrqDescription {
            count: u32::from(index <= 2),
            flags: 1,
        })
    }

    fn set_irqs(&self, _request: IrqRequest<'_>) -> Result<(), DeviceError> {
        Ok(())
    }

    fn reset(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    fn connect(&self, _dma: DeviceHandle) {}

    fn disconnect(&self) {}
}

/// A server for `device` on a thread; stopped and joined at the end.
struct InProcess {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    socket: PathBuf,
    _dir: TempDir,
}

impl InProcess {
    fn start(device: Arc<dyn Device>) -> InProcess {
        let dir = TempDir::new();
        let socket = dir.path("fake.sock");
        let server =
            Arc::new(Server::bind(&socket, device, ServerConfig::default()).expect("bind"));
        let thread = thread::spawn({
            let server = Arc::clone(&server);
            move || {
                let _ = server.serve();
            }
        });
        InProcess {
            server,
            thread: Some(thread),
            socket,
            _dir: dir,
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.server.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn base_config() -> Vec<u8> {
    let mut c = vec![0u8; 256];
    c[0..2].copy_from_slice(&0x8086u16.to_le_bytes());
    c[2..4].copy_from_slice(&0x10d3u16.to_le_bytes());
    c[4..6].copy_from_slice(&0x0006u16.to_le_bytes()); // Mem+ BusMaster+
    c[6..8].copy_from_slice(&0x0010u16.to_le_bytes()); // Cap+
    c[8] = 0x03;
    c[0x0b] = 0x02; // Ethernet controller
    c[0x10..0x14].copy_from_slice(&0xfebf_1000u32.to_le_bytes());
    c[0x14..0x18].copy_from_slice(&0x0000_000cu32.to_le_bytes()); // 64-bit prefetchable
    c[0x18..0x1c].copy_from_slice(&0x0000_0002u32.to_le_bytes());
    c[0x1c..0x20].copy_from_slice(&0x0000_c001u32.to_le_bytes()); // I/O
    c[0x34] = 0x40;
    c[0x3c] = 11;
    c[0x3d] = 1;
    c[0x40] = 0x05; // MSI, 64-bit, maskable
    c[0x41] = 0x60;
    c[0x42..0x44].copy_from_slice(&0x0180u16.to_le_bytes());
    c[0x60] = 0x11; // MSI-X, 5 vectors, table BAR3, PBA BAR3
    c[0x61] = 0x00;
    c[0x62..0x64].copy_from_slice(&0x0004u16.to_le_bytes());
    c[0x64..0x68].copy_from_slice(&0x0000_0003u32.to_le_bytes());
    c[0x68..0x6c].copy_from_slice(&0x0000_2003u32.to_le_bytes());
    c
}

#[test]
fn probe_sizes_bars_and_restores_them() {
    let original = base_config();
    let device = Arc::new(FakePci {
        config: Mutex::new(original.clone()),
        bar_masks: [0xffff_f000, 0xfff0_0000, 0xffff_ffff, 0x0000_ffe0, 0, 0],
        broken_region: None,
    });
    let served = InProcess::start(device.clone());
    let (out, stdout) = probe(&served.socket);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for line in [
        "Ethernet controller [0200]: Device [8086:10d3] (rev 03)",
        "\tControl: I/O- Mem+ BusMaster+",
        "\tInterrupt: pin A routed to IRQ 11",
        "\tRegion 0: Memory at febf1000 (32-bit, non-prefetchable) [size=4K]\n",
        "\tRegion 1: Memory at 200000000 (64-bit, prefetchable) [size=1M]\n",
        "\tRegion 3: I/O ports at c000 [disabled] [size=32]\n",
        "\tCapabilities: [40] MSI: Enable- Count=1/1 Maskable+ 64bit+\n",
        "\tCapabilities: [60] MSI-X: Enable- Count=5 Masked-\n",
        "\t\tVector table: BAR=3 offset=00000000\n",
        "\t\tPBA: BAR=3 offset=00002000\n",
        "  0 BAR0: size 0x1000 [4K], flags 0x3 (READ WRITE)",
        "  2 MSI-X: count 1",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("Region 2"), "{stdout}");
    assert!(!stdout.contains("Expansion ROM"), "{stdout}");
    assert_eq!(device.config(), original, "probe left config space changed");
}

#[test]
fn probe_survives_a_hostile_capability_list() {
    let mut config = base_config();
    config[0x61] = 0x40; // MSI-X -> MSI -> MSI-X -> ...
    let device = Arc::new(FakePci {
        config: Mutex::new(config.clone()),
        bar_masks: [0; 6],
        broken_region: None,
    });
    let served = InProcess::start(device.clone());
    let (out, stdout) = probe(&served.socket);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert_eq!(stdout.matches("MSI-X: Enable").count(), 1, "{stdout}");
    assert!(
        stdout.contains("\tCapabilities: [40] <chain looped>"),
        "{stdout}"
    );

    // A pointer past the end of a short config space.
    let mut short = base_config();
    short.truncate(0x50);
    short[0x41] = 0x4e;
    let device = Arc::new(FakePci {
        config: Mutex::new(short),
        bar_masks: [0; 6],
        broken_region: None,
    });
    let served2 = InProcess::start(device);
    let (out, stdout) = probe(&served2.socket);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("Config space (80 bytes)"), "{stdout}");
    assert!(
        stdout.contains(
            "\t\t<mask bits past the end of config space>\n\tCapabilities: [4c] Capability #00\n"
        ),
        "{stdout}"
    );
    drop(served);
}

#[test]
fn probe_reports_a_failed_step_and_exits_non_zero() {
    let device = Arc::new(FakePci {
        config: Mutex::new(base_config()),
        bar_masks: [0xffff_f000, 0, 0, 0, 0, 0],
        broken_region: Some(3),
    });
    let served = InProcess::start(device);
    let (out, stdout) = probe(&served.socket);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("  3 BAR3: error: "), "{stdout}");
    assert!(stdout.contains("errno 22"), "{stdout}");
    // The rest is there.
    assert!(stdout.contains("  4 BAR4: absent"), "{stdout}");
    assert!(stdout.contains("Device [8086:10d3]"), "{stdout}");
    assert!(stderr.contains("1 step(s) failed"), "{stderr}");
}

#[test]
fn rust_log_sets_the_level() {
    let mut served = Served::start_with_log_level(&[], "warn");
    let client = Client::connect(&served.socket).expect("connect");
    client.close();
    served.interrupt_cleanly();
    let log = served.log();
    assert!(!log.contains("client connected"), "{log}");
    assert!(!log.contains("serving"), "{log}");
}

#[test]
fn bench_quick_filtered_writes_json_with_every_contender() {
    let dir = std::env::temp_dir().join(format!("vdma-cli-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = vdma(&[
        "bench",
        "--quick",
        "--filter",
        "copy_read/8B",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "vdma bench: {}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 1, "the filter keeps one case");
    assert_eq!(cases[0]["id"], "copy_read/8B");
    let names: Vec<&str> = cases[0]["contenders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // The other process's memory comes from `vdma bench-peer`, started by the command itself.
    for want in ["memcpy", "vm-memory", "vdma fd", "vdma process"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for c in cases[0]["contenders"].as_array().unwrap() {
        assert!(c["median_ns"].as_f64().unwrap() > 0.0, "{c}");
    }
    assert!(
        text(&out.stdout).contains("copy_read"),
        "{}",
        text(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
