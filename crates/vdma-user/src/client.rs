//! The vfio-user client: connect to a device server, negotiate, map memory, drive the device.
//!
//! A [`Client`] is what a VMM holds for one device. It negotiates the version and
//! capabilities when it is made, then offers one method per command, blocking (`dma_map_fd`)
//! or, for DMA_MAP and DMA_UNMAP, also sent now and waited for later (`send_dma_map_fd`
//! returns a [`Pending`]), so that many commands may be in flight at once, from one thread
//! or from many (`Client` is `Sync`).
//!
//! # Threads
//!
//! - Callers send commands on the shared [`Writer`] (one whole message at a time) after
//!   reserving a message id in the in-flight table; they then wait on their own channel, at
//!   most [`ClientConfig::timeout`].
//! - The reader thread receives every message. A reply goes to the caller waiting for its
//!   message id, in whatever order the server answers; a request from the server goes to the
//!   DMA service thread. The reader never writes, so it keeps reading however slow the
//!   answers to the server are.
//! - The DMA service thread answers the server's DMA_READ/DMA_WRITE from the client's memory
//!   (mappings made with [`Client::dma_map_memory`]) and refuses anything else with an errno.
//!
//! When the server closes the connection (or it fails), every call in flight and every later
//! call fails with [`ClientError::Disconnected`]. Dropping the client shuts the socket down
//! and joins both threads.
//!
//! # DMA layout
//!
//! The client speaks the specification's DMA_READ/DMA_WRITE layout by default and advertises
//! it so that a vdma server's automatic detection picks it ([`ClientConfig`]);
//! [`ClientConfig::qemu`] makes a client that speaks and looks like QEMU's.
//!
//! ```no_run
//! use std::sync::Arc;
//! use vdma::{OwnedMemory, Prot};
//! use vdma_user::client::Client;
//!
//! let client = Client::connect("/run/device.sock")?;
//! let ram = Arc::new(OwnedMemory::new(1 << 20)?);
//! client.dma_map_memory(0x10_0000, 1 << 20, ram, 0, Prot::READ_WRITE)?;
//! let bar0 = client.region_info(0)?;
//! let id = client.region_read(0, 0, 4)?;
//! # let _ = (bar0, id);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod device;
mod dma;
mod dma_service;
mod dma_table;
mod error;
mod inner;
mod logging;
mod pending;
mod reader;

pub use config::ClientConfig;
pub use device::Region;
pub use dma_table::MappedRange;
pub use error::ClientError;
pub use pending::Pending;

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use crate::client::inner::Inner;
use crate::client::pending::Hook;
use crate::protocol::{
    flags, Capabilities, Command, DecodeConfig, DmaLayout, Header, ProtocolError, Version,
};
use crate::transport::{Connection, Message, Writer};

/// Requests from the server queued for the DMA service thread before the reader waits.
const WORK_QUEUE: usize = 64;

/// A connection to one vfio-user device server. See the [module documentation](self).
#[derive(Debug)]
pub struct Client {
    inner: Arc<Inner>,
    config: ClientConfig,
    /// The capabilities sent (the configuration's, lowered to the connection's limits).
    sent: Capabilities,
    /// The server's VERSION reply.
    server: Version,
    /// The server's capabilities (its defaults where it sent none).
    server_caps: Capabilities,
    threads: Vec<JoinHandle<()>>,
}

impl Client {
    /// Connects to the server's socket at `path` with the default configuration and
    /// negotiates.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        Client::connect_with(path, ClientConfig::default())
    }

    /// Connects to the server's socket at `path` and negotiates.
    pub fn connect_with(
        path: impl AsRef<Path>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let socket = UnixStream::connect(path).map_err(|source| ClientError::Io {
            op: "connect",
            source,
        })?;
        let connection = Connection::new(socket, config.limits)?;
        Client::from_connection_with(connection, config)
    }

    /// Negotiates on a connection made elsewhere, with the default configuration.
    pub fn from_connection(connection: Connection) -> Result<Client, ClientError> {
        Client::from_connection_with(connection, ClientConfig::default())
    }

    /// Negotiates on a connection made elsewhere (its limits stay; `config.limits` is not
    /// used). Starts the reader and DMA service threads, sends VERSION and waits for the
    /// reply; fails if the server's version or capabilities are unusable.
    pub fn from_connection_with(
        connection: Connection,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let (reader, writer) = connection.split();
        let limits = reader.limits();
        let mut sent = config.capabilities.clone();
        let fds = u32::try_from(limits.max_fds).unwrap_or(u32::MAX);
        if sent.max_msg_fds_or_default() > fds {
            sent.max_msg_fds = Some(fds);
        }
        let xfer = u64::from(
            limits
                .max_message_size
                .saturating_sub(DecodeConfig::DATA_OVERHEAD),
        );
        if sent.max_data_xfer_size_or_default() > xfer {
            sent.max_data_xfer_size = Some(xfer);
        }
        let decode = DecodeConfig {
            max_message_size: limits.max_message_size,
            max_data_xfer_size: u32::try_from(sent.max_data_xfer_size_or_default())
                .unwrap_or(u32::MAX),
            dma_layout: config.dma_layout,
        };
        let inner = Arc::new(Inner::new(writer.clone(), decode));
        let (work_tx, work_rx) = mpsc::sync_channel(WORK_QUEUE);
        let mut client = Client {
            inner: Arc::clone(&inner),
            config,
            sent,
            server: Version::default(),
            server_caps: Capabilities::default(),
            threads: Vec::new(),
        };
        let spawned = thread::Builder::new()
            .name("vfio-user-client-rx".into())
            .spawn({
                let inner = Arc::clone(&inner);
                move || reader::run(reader, inner, work_tx)
            });
        client
            .threads
            .push(spawned.map_err(|source| spawn_failed(&writer, source))?);
        let spawned = thread::Builder::new()
            .name("vfio-user-client-dma".into())
            .spawn(move || dma_service::run(work_rx, inner));
        // On failure, dropping `client` shuts the connection down and joins the reader.
        client
            .threads
            .push(spawned.map_err(|source| spawn_failed(&writer, source))?);
        client.negotiate()?;
        Ok(client)
    }

    /// VERSION: send ours, check the server's reply.
    fn negotiate(&mut self) -> Result<(), ClientError> {
        let payload = Version {
            major: 0,
            minor: 0,
            capabilities: Some(self.sent.clone()),
        }
        .encode()?;
        let reply = self
            .send_command(
                Command::Version,
                &payload,
                &[],
                None,
                Box::new(|m: Message| Ok(Version::decode(&m.payload, m.fds.len())?)),
            )?
            .wait()?;
        if reply.major != 0 {
            return Err(ClientError::Version {
                reason: format!("the server speaks major version {}, not 0", reply.major),
            });
        }
        if reply.minor != 0 {
            return Err(ClientError::Version {
                reason: format!(
                    "the server answered minor version {}, above the 0 asked for",
                    reply.minor
                ),
            });
        }
        let caps = reply.capabilities.clone().unwrap_or_default();
        if caps.max_data_xfer_size_or_default() == 0 {
            return Err(ClientError::Version {
                reason: "the server takes no data (max_data_xfer_size 0)".into(),
            });
        }
        self.server = reply;
        self.server_caps = caps;
        Ok(())
    }

    /// The server's VERSION reply (version and capabilities as sent).
    pub fn server_version(&self) -> &Version {
        &self.server
    }

    /// The server's capabilities; absent members take the protocol's defaults through the
    /// `*_or_default` accessors.
    pub fn server_capabilities(&self) -> &Capabilities {
        &self.server_caps
    }

    /// The capabilities this client sent.
    pub fn capabilities(&self) -> &Capabilities {
        &self.sent
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The DMA_READ/DMA_WRITE layout this client speaks.
    pub fn dma_layout(&self) -> DmaLayout {
        self.inner.decode.dma_layout
    }

    /// The DMA mappings, in IOVA order: every mapping whose DMA_MAP was sent and not refused,
    /// and whose DMA_UNMAP is not yet confirmed.
    pub fn dma_mappings(&self) -> Vec<MappedRange> {
        self.inner.table().ranges()
    }

    /// Commands sent and not yet answered (timed-out ones included: their ids stay reserved
    /// until the reply comes).
    pub fn in_flight(&self) -> usize {
        self.inner.inflight.len()
    }

    /// DMA_READ/DMA_WRITE requests served, and requests refused with an error reply, so far.
    pub fn dma_requests(&self) -> (u64, u64) {
        (
            self.inner.dma_served.load(Ordering::Relaxed),
            self.inner.dma_refused.load(Ordering::Relaxed),
        )
    }

    /// Whether the connection is still up (as far as the reader thread knows).
    pub fn is_connected(&self) -> bool {
        self.inner.inflight.closed().is_none()
    }

    /// Shuts the connection down (what QEMU does on quitting) and waits for the threads.
    /// Calls in flight on other threads fail with [`ClientError::Disconnected`].
    pub fn close(self) {
        drop(self);
    }

    /// The most data one message may carry to the server (its `max_data_xfer_size`, within
    /// a 32-bit count).
    fn write_chunk(&self) -> usize {
        let max = self.server_caps.max_data_xfer_size_or_default();
        usize::try_from(max.min(u64::from(u32::MAX))).unwrap_or(usize::MAX)
    }

    /// The most data one reply may carry back: the server's maximum, and what this client
    /// advertised it receives.
    fn read_chunk(&self) -> usize {
        self.write_chunk()
            .min(self.inner.decode.max_data_xfer_size as usize)
    }

    /// The most descriptors one message may carry to the server.
    fn server_max_fds(&self) -> u32 {
        self.server_caps.max_msg_fds_or_default()
    }

    /// Reserves an id, sends the command and returns the wait for its reply. `hook` runs on
    /// the reader thread when the reply comes (with `false` if the send fails).
    fn send_command<T>(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        hook: Option<Hook>,
        decode: Box<dyn FnOnce(Message) -> Result<T, ClientError> + Send>,
    ) -> Result<Pending<T>, ClientError> {
        let (msg_id, rx) = self.inner.inflight.register(command, hook)?;
        if let Err(error) = self.send_raw(msg_id, command, flags::TYPE_COMMAND, payload, fds) {
            if let Some(hook) = self.inner.inflight.cancel(msg_id) {
                hook(false);
            }
            return Err(error);
        }
        Ok(Pending::new(
            rx,
            command,
            msg_id,
            self.config.timeout,
            decode,
        ))
    }

    /// Sends a command and waits for its reply, which `decode` turns into the result.
    fn request<T>(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        decode: impl FnOnce(Message) -> Result<T, ClientError> + Send + 'static,
    ) -> Result<T, ClientError> {
        self.send_command(command, payload, fds, None, Box::new(decode))?
            .wait()
    }

    /// Sends a command with NO_REPLY. Its id is reserved only while it is written, so a reply
    /// the server sends anyway is dropped as a stray.
    fn post(&self, command: Command, payload: &[u8]) -> Result<(), ClientError> {
        let (msg_id, _rx) = self.inner.inflight.register(command, None)?;
        let sent = self.send_raw(
            msg_id,
            command,
            flags::TYPE_COMMAND | flags::NO_REPLY,
            payload,
            &[],
        );
        self.inner.inflight.cancel(msg_id);
        sent
    }

    fn send_raw(
        &self,
        msg_id: u16,
        command: Command,
        flags: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let size = Header::SIZE
            .checked_add(payload.len())
            .and_then(|s| u32::try_from(s).ok())
            .ok_or(ProtocolError::EncodeTooLarge { len: payload.len() })?;
        let header = Header::new(msg_id, command.number(), size, flags, 0);
        self.inner.writer.send_payload(&header, payload, fds)?;
        Ok(())
    }
}

impl Drop for Client {
    /// Shuts the socket down (the server sees the connection close), fails whatever is in
    /// flight, and joins the reader and DMA service threads.
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::Release);
        let _ = self.inner.writer.shutdown();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A thread could not be started: shut the connection down (so the threads already started
/// end) and report.
fn spawn_failed(writer: &Writer, source: std::io::Error) -> ClientError {
    let _ = writer.shutdown();
    ClientError::Io {
        op: "spawning a thread",
        source,
    }
}
