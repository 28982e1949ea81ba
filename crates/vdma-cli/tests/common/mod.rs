//! What the tests that run the `vdma` binary share: `vdma serve` on a fresh socket, stopped
//! (and its directory removed) when dropped.
#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `vdma serve --socket <dir>/engine.sock`, logging at `RUST_LOG=error`.
pub struct Serve {
    pub child: Child,
    pub socket: PathBuf,
    dir: PathBuf,
}

impl Serve {
    /// Starts it in a directory named after `tag` and this process, and waits (bounded) for
    /// the socket.
    pub fn start(tag: &str) -> Serve {
        let dir = std::env::temp_dir().join(format!("vdma-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("engine.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_vdma"))
            .args(["serve", "--socket"])
            .arg(&socket)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&socket);
        Serve { child, socket, dir }
    }

    /// Whether the server process is still running (not exited, not a zombie).
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .map(|s| !s.contains("State:\tZ"))
            .unwrap_or(false)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "vdma serve did not create {path:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
