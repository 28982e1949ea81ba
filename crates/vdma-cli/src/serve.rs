//! `vdma serve`: serve a device over vfio-user on a Unix socket, one client after another,
//! until SIGINT or SIGTERM.
//!
//! The socket is created with mode 0600 and removed at the end (both by
//! [`vdma_user::server::Server`]). The first SIGINT or SIGTERM stops the server: the client
//! (if any) is disconnected, everything it mapped is unmapped, the socket is removed and
//! [`run`] returns `Ok`. A second signal while stopping exits at once (status 130), after
//! removing the socket.
//!
//! Connects and disconnects are logged (by a thin [`Device`] wrapper, which sees both), and so
//! are connections that fail.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vdma::{DeviceHandle, Iova};
use vdma_user::server::{
    Device, DeviceDescription, DeviceError, IrqDescription, IrqRequest, RegionDescription, Server,
    ServerConfig, ServerError, SessionEnd,
};

use crate::dma_engine::{dma_engine, DmaEngineConfig};

/// The devices `vdma serve` can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceKind {
    /// The sample DMA engine (`../shared/spec/dma-engine.md`).
    DmaEngine,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceKind::DmaEngine => f.write_str("dma-engine"),
        }
    }
}

/// What `vdma serve` was asked to do.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The socket path.
    pub socket: PathBuf,
    /// The device.
    pub device: DeviceKind,
    /// The PCI vendor id.
    pub vendor_id: u16,
    /// The PCI device id.
    pub device_id: u16,
}

/// Why `vdma serve` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The device could not be built (its errno).
    #[error("cannot build the {kind} device: {source}")]
    Device {
        /// The device.
        kind: DeviceKind,
        /// Why.
        source: DeviceError,
    },
    /// The signal handlers could not be installed (the system call's errno).
    #[error("cannot handle SIGINT and SIGTERM: {0}")]
    Signals(io::Error),
    /// Binding or serving failed (the server's errno).
    #[error("{0}")]
    Server(#[from] ServerError),
}

impl ServeError {
    /// The errno this error maps to.
    pub fn errno(&self) -> i32 {
        match self {
            ServeError::Device { source, .. } => source.errno(),
            ServeError::Signals(e) => e.raw_os_error().unwrap_or(libc::EIO),
            ServeError::Server(e) => e.errno(),
        }
    }
}

/// Builds the device to serve.
pub fn build_device(options: &ServeOptions) -> Result<Arc<dyn Device>, DeviceError> {
    match options.device {
        DeviceKind::DmaEngine => Ok(Arc::new(dma_engine(DmaEngineConfig {
            vendor_id: options.vendor_id,
            device_id: options.device_id,
        })?)),
    }
}

/// Serves `options.device` on `options.socket` until SIGINT or SIGTERM.
pub fn run(options: &ServeOptions) -> Result<(), ServeError> {
    let device = build_device(options).map_err(|source| ServeError::Device {
        kind: options.device,
        source,
    })?;
    // Before the socket exists: a signal sent as soon as it appears must stop the server.
    let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(ServeError::Signals)?;
    let signals_handle = signals.handle();
    let device: Arc<dyn Device> = Arc::new(Logged::new(device));
    let server = Server::bind(&options.socket, device, ServerConfig::default())?;
    tracing::info!(
        socket = %options.socket.display(),
        device = %options.device,
        vendor_id = format_args!("{:#06x}", options.vendor_id),
        device_id = format_args!("{:#06x}", options.device_id),
        "serving"
    );
    let result = thread::scope(|scope| {
        let server = &server;
        let socket = &options.socket;
        scope.spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                let name = if signal == SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                if stopping {
                    tracing::warn!("{name} again: exiting now");
                    let _ = std::fs::remove_file(socket);
                    std::process::exit(130);
                }
                tracing::info!("{name}: stopping");
                stopping = true;
                server.stop();
            }
        });
        let result = serve_clients(server);
        signals_handle.close();
        result
    });
    drop(server);
    result?;
    tracing::info!("stopped; socket removed");
    Ok(())
}

/// [`Server::serve`], with each connection's end logged.
fn serve_clients(server: &Server) -> Result<(), ServerError> {
    while !server.is_stopped() {
        match server.serve_one()? {
            SessionEnd::Failed(e) => tracing::warn!("connection failed: {e}"),
            end => tracing::debug!("connection ended: {end:?}"),
        }
    }
    Ok(())
}

/// A device that logs its clients coming and going, and passes everything on.
struct Logged {
    inner: Arc<dyn Device>,
    clients: AtomicU64,
}

impl Logged {
    fn new(inner: Arc<dyn Device>) -> Logged {
        Logged {
            inner,
            clients: AtomicU64::new(0),
        }
    }
}

impl Device for Logged {
    fn description(&self) -> DeviceDescription {
        self.inner.description()
    }

    fn region(&self, index: u32) -> Result<RegionDescription, DeviceError> {
        self.inner.region(index)
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.inner.region_read(index, offset, buf)
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.inner.region_write(index, offset, data)
    }

    fn irq_info(&self, index: u32) -> Result<IrqDescription, DeviceError> {
        self.inner.irq_info(index)
    }

    fn set_irqs(&self, request: IrqRequest<'_>) -> Result<(), DeviceError> {
        self.inner.set_irqs(request)
    }

    fn reset(&self) -> Result<(), DeviceError> {
        tracing::debug!("device reset");
        self.inner.reset()
    }

    fn connect(&self, dma: DeviceHandle) {
        let n = self.clients.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(client = n, "client connected");
        self.inner.connect(dma);
    }

    fn disconnect(&self) {
        self.inner.disconnect();
        let n = self.clients.load(Ordering::Relaxed);
        tracing::info!(client = n, "client disconnected; its mappings are gone");
    }

    fn dma_unmapped(&self, iova: Iova, size: u64) {
        self.inner.dma_unmapped(iova, size);
    }
}
