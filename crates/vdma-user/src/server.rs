//! The vfio-user server: serves one device to one client at a time over a Unix socket.
//!
//! A device author implements [`Device`] (regions, interrupts, reset, and what to do with the
//! DMA handle it gets while a client is connected); [`Server`] does the rest: the socket, VERSION
//! negotiation, the client's address space (a [`vdma::Container`]: DMA_MAP with a file is a
//! shared mapping of it, DMA_MAP without one is [`DmaMemory`], reached with DMA_READ/DMA_WRITE
//! messages), every command, and the cleanup when the client leaves.
//!
//! # Threads, and how replies find their requests
//!
//! Per client, a reader thread receives every message and a handler thread (the one that
//! called [`Server::serve`] or [`Server::serve_one`]) handles commands in order. The reader
//! tells a reply from a command by the header's type bits: replies answer the server's own
//! DMA_READ/DMA_WRITE and go straight to the thread waiting for that message id; commands are
//! queued for the handler. So a command whose device work blocks in a DMA round trip (on the
//! handler thread or any device thread) still gets its reply while later commands wait.
//!
//! The reader is a new thread per client unless [`Server::with_reader_spawner`] gives the
//! server a way to run it on a thread kept from one client to the next.
//!
//! # A DMA round trip and DMA_UNMAP from the same client
//!
//! A DMA access to message-backed memory runs inside the core's read section, which lasts the
//! whole round trip. A DMA_UNMAP is handled after the commands before it; `unmap` publishes the
//! new table and waits for every read section that may still see the old one. If a device
//! thread is in a round trip on that memory, the unmap waits for it: the reader keeps routing
//! replies, so the round trip ends (with the data, the client's error, or ETIMEDOUT after the
//! reply timeout) and the unmap then completes; when it replies, no access to the removed
//! memory is in flight. A client that answers DMA_READ only after its DMA_UNMAP is answered
//! makes the unmap wait for the reply timeout (QEMU answers server requests while it waits).
//! A device that does DMA on the handler thread (from a region write) blocks later commands,
//! DMA_UNMAP included, until its round trip ends.
//!
//! # What the client gets
//!
//! VERSION 0.0 with compact capabilities (`max_msg_fds`, `max_data_xfer_size`,
//! `max_dma_maps`, `pgsizes`, `migration` {`pgsize`, `max_bitmap_size`}, `write_multiple`):
//! the reply is shorter than QEMU's 214-byte request. The DMA layout is detected from the
//! client's VERSION ([`crate::protocol::DmaLayout::detect`]) unless
//! [`ServerConfig::dma_layout`] forces one. Every failed command gets an error reply with the
//! core's, the protocol's or the device's errno (none if it asked for no reply); a message too
//! large or with too many descriptors is drained and refused; when the framing is lost the
//! client is disconnected. Migration (MIGRATION, MIG_DEVICE_STATE, MIG_DATA_*) is ENOTSUP.
//! DMA_UNMAP with GET_DIRTY_BITMAP needs dirty tracking: the device's DMA log
//! (DMA_LOGGING_START; the range is unmapped, then its logged bits are read and cleared at the
//! client's page size) or container-level tracking ([`vdma::Container::dirty_start`] on
//! [`Server::container`], at its page size); EINVAL otherwise. The bitmap the client asks for
//! is bounded by `max_bitmap_size` (E2BIG past it).
//! DMA_LOGGING_START without ranges logs the memory mapped at that moment.

mod commands;
mod config;
mod device;
mod dma_memory;
mod error;
mod pending;
mod queue;
mod session;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vdma::{Container, DeviceId, GroupId};

pub use config::ServerConfig;
pub use device::{
    Device, DeviceDescription, DeviceError, IrqAction, IrqDescription, IrqRequest, IrqSetData,
    RegionDescription, RegionMmap,
};
pub use dma_memory::DmaMemory;
pub use error::{CommandError, ServerError};

use crate::transport::{PeerCredentials, TransportError};

/// How often an idle accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// The group and device id the served device has in the client's address space.
const DEVICE_NAME: &str = "vfio-user";

/// How a session ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The client closed the connection.
    Closed,
    /// The server was stopped ([`Server::stop`]).
    Stopped,
    /// The connection failed: framing lost, a socket error, or a reply that could not be sent.
    Failed(TransportError),
    /// The peer's user id is not in [`ServerConfig::allowed_uids`]: closed before any message
    /// was read.
    Refused {
        /// The peer's user id.
        uid: u32,
    },
}

/// Runs a job on a thread other than the caller's, and returns without waiting for it: how
/// [`Server::with_reader_spawner`] runs each session's reader loop.
pub type ReaderSpawner = dyn Fn(Box<dyn FnOnce() + Send>) -> io::Result<()> + Send + Sync;

/// What the server and its sessions share.
pub(crate) struct Shared {
    pub(crate) device: Arc<dyn Device>,
    pub(crate) container: Container,
    pub(crate) device_id: DeviceId,
    pub(crate) config: ServerConfig,
    pub(crate) stop: AtomicBool,
    /// Where sessions run their reader loop (`None`: a new thread each).
    pub(crate) spawn_reader: Option<Box<ReaderSpawner>>,
}

/// A vfio-user server for one device.
///
/// ```no_run
/// # use std::sync::Arc;
/// # fn device() -> Arc<dyn vdma_user::server::Device> { unimplemented!() }
/// use vdma_user::server::{Server, ServerConfig};
/// let server = Server::bind("/run/my-device.sock", device(), ServerConfig::default())?;
/// server.serve()?; // one client after another, until `server.stop()`
/// # Ok::<(), vdma_user::server::ServerError>(())
/// ```
pub struct Server {
    shared: Shared,
    listener: Option<UnixListener>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.path)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server without a socket: serve connections made elsewhere
    /// ([`Server::serve_connection`], e.g. one end of a socketpair).
    pub fn new(device: Arc<dyn Device>, config: ServerConfig) -> Result<Server, ServerError> {
        let container = Container::new(config.address_space.clone())?;
        let group = GroupId(0);
        let device_id = DeviceId::new(DEVICE_NAME);
        container.attach_group(group)?;
        container.add_device(group, device_id.clone())?;
        Ok(Server {
            shared: Shared {
                device,
                container,
                device_id,
                config,
                stop: AtomicBool::new(false),
                spawn_reader: None,
            },
            listener: None,
            path: None,
        })
    }

    /// A server listening on a Unix socket at `path`, created with mode 0600 (bound in a
    /// private directory, then moved into place, so no one can connect before the mode is
    /// set). A stale socket at the path (no server answers) is replaced; a live one is
    /// EADDRINUSE; anything else at the path is left alone (EEXIST). The socket file is
    /// removed when the server is dropped.
    pub fn bind(
        path: impl AsRef<Path>,
        device: Arc<dyn Device>,
        config: ServerConfig,
    ) -> Result<Server, ServerError> {
        let path = path.as_ref().to_path_buf();
        let mut server = Server::new(device, config)?;
        remove_stale(&path)?;
        let listener = bind_private(&path)?;
        server.listener = Some(listener);
        server.path = Some(path);
        Ok(server)
    }

    /// Runs each session's reader loop (the thread that receives the client's messages,
    /// see the module documentation) through `spawn` rather than on a thread made for the
    /// session: for a caller that keeps threads from one client to the next, when a thread
    /// made per client costs more than a client's whole session (a fuzzer serving thousands
    /// of short sessions a second, under AddressSanitizer).
    ///
    /// `spawn` must start the job on another thread and return without waiting for it: the
    /// job runs until the session's connection ends, and the session waits for it to end
    /// (to return, or to unwind from a panic) before it cleans up. An error from `spawn`
    /// fails [`Server::serve_connection`] as a failed thread creation does
    /// ([`ServerError::Io`], before any message is read).
    pub fn with_reader_spawner(
        mut self,
        spawn: impl Fn(Box<dyn FnOnce() + Send>) -> io::Result<()> + Send + Sync + 'static,
    ) -> Server {
        self.shared.spawn_reader = Some(Box::new(spawn));
        self
    }

    /// The socket path, for a bound server.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The client's address space (empty between clients).
    pub fn container(&self) -> &Container {
        &self.shared.container
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// Asks [`Server::serve`], [`Server::serve_one`] and a running session to stop (within
    /// about 50 ms; a session then disconnects its client). Stays set.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// Whether [`Server::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Serves clients one at a time until [`Server::stop`].
    pub fn serve(&self) -> Result<(), ServerError> {
        while !self.is_stopped() {
            self.serve_one()?;
        }
        Ok(())
    }

    /// Accepts one client and serves it until it leaves; [`SessionEnd::Stopped`] if the
    /// server is stopped first.
    pub fn serve_one(&self) -> Result<SessionEnd, ServerError> {
        let listener = self.listener.as_ref().ok_or(ServerError::NotListening)?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ServerError::Io {
                op: "fcntl",
                source,
            })?;
        loop {
            if self.is_stopped() {
                return Ok(SessionEnd::Stopped);
            }
            match listener.accept() {
                Ok((socket, _)) => return self.serve_connection(socket),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ServerError::Io {
                        op: "accept",
                        source,
                    })
                }
            }
        }
    }

    /// Serves one connected client until it leaves. At the end nothing is mapped, the device
    /// has given back its DMA handle, and the server can serve the next client.
    /// A peer whose user id is not in [`ServerConfig::allowed_uids`] is closed at once
    /// ([`SessionEnd::Refused`]).
    pub fn serve_connection(&self, socket: UnixStream) -> Result<SessionEnd, ServerError> {
        if let Some(allowed) = &self.shared.config.allowed_uids {
            let peer = match PeerCredentials::of(&socket) {
                Ok(peer) => peer,
                Err(source) => {
                    let op = "getsockopt(SO_PEERCRED)";
                    return Ok(SessionEnd::Failed(TransportError::Io { op, source }));
                }
            };
            if !allowed.contains(&peer.uid) {
                return Ok(SessionEnd::Refused { uid: peer.uid });
            }
        }
        session::run(&self.shared, socket)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = fs::remove_file(path);
        }
    }
}

/// Removes a socket at `path` that no server answers on.
fn remove_stale(path: &Path) -> Result<(), ServerError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ServerError::InUse {
            path: path.to_path_buf(),
        });
    }
    fs::remove_file(path).map_err(|source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Binds a socket with mode 0600 at `path`: in a fresh 0700 directory next to it first, then
/// renamed into place. A path too long for that falls back to binding in place and setting
/// the mode right after.
fn bind_private(path: &Path) -> Result<UnixListener, ServerError> {
    let bind_err = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = parent.join(format!(".vdma-{}-{n}", std::process::id()));
    let staged = dir.join("s");
    let made = fs::DirBuilder::new().mode(0o700).create(&dir);
    if made.is_ok() {
        let result = UnixListener::bind(&staged).and_then(|listener| {
            fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))?;
            fs::rename(&staged, path)?;
            Ok(listener)
        });
        let _ = fs::remove_file(&staged);
        let _ = fs::remove_dir(&dir);
        if let Ok(listener) = result {
            return Ok(listener);
        }
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::protocol::{Capabilities, Command, MessageBuilder, Version};
    use crate::transport::{Connection, Limits, Received};

    /// A device with nothing: no regions, no interrupts.
    struct Empty;

    impl Device for Empty {
        fn description(&self) -> DeviceDescription {
            DeviceDescription::default()
        }
        fn region(&self, _: u32) -> Result<RegionDescription, DeviceError> {
            Err(DeviceError::Invalid("no regions"))
        }
        fn region_read(&self, _: u32, _: u64, _: &mut [u8]) -> Result<(), DeviceError> {
            Err(DeviceError::Invalid("no regions"))
        }
        fn region_write(&self, _: u32, _: u64, _: &[u8]) -> Result<(), DeviceError> {
            Err(DeviceError::Invalid("no regions"))
        }
        fn irq_info(&self, _: u32) -> Result<IrqDescription, DeviceError> {
            Err(DeviceError::Invalid("no interrupts"))
        }
        fn set_irqs(&self, _: IrqRequest<'_>) -> Result<(), DeviceError> {
            Err(DeviceError::Invalid("no interrupts"))
        }
        fn reset(&self) -> Result<(), DeviceError> {
            Ok(())
        }
        fn connect(&self, _: vdma::DeviceHandle) {}
        fn disconnect(&self) {}
    }

    /// A VERSION, its reply received (the server's reader loop routed it), then the client
    /// closes; how the session ended.
    fn one_session(server: &Server) -> Result<SessionEnd, ServerError> {
        let (ours, theirs) = UnixStream::pair().unwrap();
        std::thread::scope(|s| {
            let serving = s.spawn(|| server.serve_connection(theirs));
            let mut client = Connection::new(ours, Limits::default()).unwrap();
            let version = Version {
                major: 0,
                minor: 0,
                capabilities: Some(Capabilities::default()),
            };
            let message = MessageBuilder::request(1, Command::Version)
                .bytes(&version.encode().unwrap())
                .finish()
                .unwrap();
            client.send(&message, &[]).unwrap();
            match client.receive().unwrap() {
                Received::Message(m) => {
                    assert!(
                        m.header.is_reply() && !m.header.is_error(),
                        "{:?}",
                        m.header
                    );
                }
                other => panic!("no VERSION reply: {other:?}"),
            }
            drop(client);
            serving.join().unwrap()
        })
    }

    #[test]
    fn reader_loops_run_on_the_threads_the_spawner_gives() {
        let spawned = Arc::new(AtomicUsize::new(0));
        let server = Server::new(Arc::new(Empty), ServerConfig::default())
            .unwrap()
            .with_reader_spawner({
                let spawned = spawned.clone();
                move |job| {
                    spawned.fetch_add(1, Ordering::SeqCst);
                    std::thread::Builder::new()
                        .name("lent-reader".into())
                        .spawn(job)
                        .map(drop)
                }
            });
        for n in 1..=3 {
            let end = one_session(&server).unwrap();
            assert!(matches!(end, SessionEnd::Closed), "{end:?}");
            assert_eq!(spawned.load(Ordering::SeqCst), n);
            assert!(server.container().mappings().is_empty());
        }
    }

    #[test]
    fn a_spawner_that_fails_fails_the_session() {
        let server = Server::new(Arc::new(Empty), ServerConfig::default())
            .unwrap()
            .with_reader_spawner(|_job| Err(io::Error::from_raw_os_error(libc::EAGAIN)));
        let (_ours, theirs) = UnixStream::pair().unwrap();
        match server.serve_connection(theirs) {
            Err(ServerError::Io {
                op: "spawn",
                source,
            }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EAGAIN));
            }
            other => panic!("{other:?}"),
        }
    }
}
