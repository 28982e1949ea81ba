//! vfio-user: an in-process [`Server`] on one end of a socketpair with a tiny bench device, a
//! [`Client`] on the other. The client maps memory it serves itself (DMA_READ/DMA_WRITE
//! messages), so the device's handle reaches it through the socket: the message-backed
//! contender of the copy cases. The REGION_WRITE case times the client's round trip to the
//! device's register file.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use vdma::{DeviceHandle, Iova, Memory, OwnedMemory, Prot};
use vdma_user::client::Client;
use vdma_user::server::{
    Device, DeviceDescription, DeviceError, IrqDescription, IrqRequest, RegionDescription, Server,
    ServerConfig, ServerError, SessionEnd,
};
use vdma_user::transport::{Connection, Limits};

use super::guest::vdma_err;
use super::BenchError;

/// IOVA of the client's message-backed memory.
pub(crate) const MSG_BASE: u64 = 0x4000_0000;
/// Its size.
pub(crate) const MSG_LEN: u64 = 2 << 20;
/// Size of the bench device's one region (a register file).
const REGION_SIZE: u64 = 4096;

/// The bench device: one read-write region held in memory, no interrupts; it keeps the DMA
/// handle it is given.
#[derive(Default)]
struct BenchDevice {
    region: Mutex<Vec<u8>>,
    dma: Mutex<Option<Arc<DeviceHandle>>>,
}

impl BenchDevice {
    fn span(offset: u64, len: usize) -> Result<std::ops::Range<usize>, DeviceError> {
        let start = usize::try_from(offset).map_err(|_| DeviceError::Invalid("offset"))?;
        let end = start
            .checked_add(len)
            .filter(|&e| e as u64 <= REGION_SIZE)
            .ok_or(DeviceError::Invalid("outside the region"))?;
        Ok(start..end)
    }
}

impl Device for BenchDevice {
    fn description(&self) -> DeviceDescription {
        DeviceDescription {
            flags: 0,
            num_regions: 1,
            num_irqs: 0,
        }
    }

    fn region(&self, index: u32) -> Result<RegionDescription, DeviceError> {
        if index != 0 {
            return Err(DeviceError::Invalid("no such region"));
        }
        Ok(RegionDescription {
            size: REGION_SIZE,
            flags: vdma_user::protocol::REGION_INFO_FLAG_READ
                | vdma_user::protocol::REGION_INFO_FLAG_WRITE,
            ..Default::default()
        })
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        if index != 0 {
            return Err(DeviceError::Invalid("no such region"));
        }
        let span = Self::span(offset, buf.len())?;
        let region = self.region.lock().unwrap_or_else(PoisonError::into_inner);
        buf.copy_from_slice(&region[span]);
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if index != 0 {
            return Err(DeviceError::Invalid("no such region"));
        }
        let span = Self::span(offset, data.len())?;
        let mut region = self.region.lock().unwrap_or_else(PoisonError::into_inner);
        region[span].copy_from_slice(data);
        Ok(())
    }

    fn irq_info(&self, _index: u32) -> Result<IrqDescription, DeviceError> {
        Err(DeviceError::Invalid("no interrupts"))
    }

    fn set_irqs(&self, _request: IrqRequest<'_>) -> Result<(), DeviceError> {
        Err(DeviceError::Invalid("no interrupts"))
    }

    fn reset(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    fn connect(&self, dma: DeviceHandle) {
        *self.dma.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(dma));
    }

    fn disconnect(&self) {
        *self.dma.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// A served session: the server's thread, the client, and the device's DMA handle.
pub(crate) struct Session {
    /// The device's handle on the client's address space ([`MSG_BASE`] is message-backed).
    dev: Option<Arc<DeviceHandle>>,
    client: Option<Client>,
    server: Arc<Server>,
    thread: Option<JoinHandle<Result<SessionEnd, ServerError>>>,
}

impl Session {
    /// Starts the server on a socketpair, connects the client, maps [`MSG_LEN`] bytes of
    /// client memory without a file at [`MSG_BASE`], and checks both ways through it.
    pub(crate) fn new() -> Result<Session, BenchError> {
        let device = Arc::new(BenchDevice {
            region: Mutex::new(vec![0; REGION_SIZE as usize]),
            dma: Mutex::new(None),
        });
        let server = Arc::new(Server::new(device.clone(), ServerConfig::default())?);
        let (ours, theirs) = UnixStream::pair().map_err(|source| BenchError::Io {
            what: "socketpair".into(),
            source,
        })?;
        let thread = std::thread::Builder::new()
            .name("bench-vfio-user-server".into())
            .spawn({
                let server = server.clone();
                move || server.serve_connection(theirs)
            })
            .map_err(|source| BenchError::Io {
                what: "spawn the server thread".into(),
                source,
            })?;
        let mut session = Session {
            dev: None,
            client: None,
            server,
            thread: Some(thread),
        };
        let connection = Connection::new(ours, Limits::default())
            .map_err(|e| BenchError::VfioUser(format!("connection: {e}")))?;
        let client = Client::from_connection(connection)
            .map_err(|e| BenchError::VfioUser(format!("negotiate: {e}")))?;
        let memory =
            Arc::new(OwnedMemory::new(MSG_LEN as usize).map_err(vdma_err("client memory"))?);
        memory
            .write_at(0, &vec![0x3c; MSG_LEN as usize])
            .map_err(vdma_err("touch the client memory"))?;
        client
            .dma_map_memory(MSG_BASE, MSG_LEN, memory.clone(), 0, Prot::READ_WRITE)
            .map_err(|e| BenchError::VfioUser(format!("DMA_MAP without a file: {e}")))?;
        session.client = Some(client);
        // The device got its handle when the client's VERSION was answered.
        let dev = device
            .dma
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| BenchError::VfioUser("the device got no DMA handle".into()))?;
        session.dev = Some(dev);
        session.check(&memory)?;
        Ok(session)
    }

    /// The device's handle.
    pub(crate) fn dev(&self) -> Result<&DeviceHandle, BenchError> {
        self.dev
            .as_deref()
            .ok_or_else(|| BenchError::VfioUser("session closed".into()))
    }

    /// The client.
    pub(crate) fn client(&self) -> Result<&Client, BenchError> {
        self.client
            .as_ref()
            .ok_or_else(|| BenchError::VfioUser("session closed".into()))
    }

    /// Bytes written through the device's handle land in the client's memory and come back;
    /// a REGION_WRITE is read back by REGION_READ.
    fn check(&self, memory: &OwnedMemory) -> Result<(), BenchError> {
        let dev = self.dev()?;
        let pattern: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        dev.write(Iova(MSG_BASE + 100), &pattern)
            .map_err(vdma_err("DMA_WRITE"))?;
        let mut in_client = vec![0u8; pattern.len()];
        memory
            .read_at(100, &mut in_client)
            .map_err(vdma_err("client memory"))?;
        let mut back = vec![0u8; pattern.len()];
        dev.read(Iova(MSG_BASE + 100), &mut back)
            .map_err(vdma_err("DMA_READ"))?;
        if in_client != pattern || back != pattern {
            return Err(BenchError::Check {
                what: "message-backed memory".into(),
                reason: "bytes written through DMA_WRITE did not come back".into(),
            });
        }
        let client = self.client()?;
        client
            .region_write(0, 8, b"vdma")
            .map_err(|e| BenchError::VfioUser(format!("REGION_WRITE: {e}")))?;
        let read = client
            .region_read(0, 8, 4)
            .map_err(|e| BenchError::VfioUser(format!("REGION_READ: {e}")))?;
        if read != b"vdma" {
            return Err(BenchError::Check {
                what: "REGION_WRITE".into(),
                reason: format!("read back {read:02x?}"),
            });
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The handle first, then the client (the session ends when its socket closes).
        drop(self.dev.take());
        drop(self.client.take());
        self.server.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl From<ServerError> for BenchError {
    fn from(e: ServerError) -> BenchError {
        BenchError::VfioUser(format!("server: {e}"))
    }
}

/// REGION_WRITE of `size` bytes at offset 0, each answered before the next is sent.
pub(crate) fn region_write(
    session: &Session,
    size: u64,
) -> Result<super::timing::Contender<'_>, BenchError> {
    let client = session.client()?;
    let data = vec![0xa5u8; size as usize];
    Ok(super::timing::Contender::looped(
        "vfio-user client",
        move || {
            client
                .region_write(0, 0, &data)
                .map_err(|e| BenchError::VfioUser(format!("REGION_WRITE: {e}")))
        },
    ))
}
