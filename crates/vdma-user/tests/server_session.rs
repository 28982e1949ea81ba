//! The server, driven by a hand-rolled client made of the protocol and transport layers, with a
//! small test device: BAR0 holds DMA registers (source, destination, length, doorbell) whose
//! doorbell makes the device copy bytes from one IOVA to another through the core and signal
//! its interrupt eventfd; region 1 is 1 MiB of scratch; region 2 is a memfd the client may
//! mmap in sparse areas.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;

use vdma::{DeviceHandle, Iova, Prot};
use vdma_user::protocol::*;
use vdma_user::server::*;
use vdma_user::transport::*;
use zerocopy::IntoBytes;

// ---------------------------------------------------------------------------------------
// The test device.

const REG_SRC: u64 = 0x00;
const REG_DST: u64 = 0x08;
const REG_LEN: u64 = 0x10;
const REG_DOORBELL: u64 = 0x14;
const REG_STATUS: u64 = 0x18;
const BAR0_SIZE: u64 = 0x1000;
const SCRATCH_SIZE: u64 = 1 << 20;
const MMAP_SIZE: u64 = 0x4000;

#[derive(Default)]
struct TestDevice {
    bar0: Mutex<Vec<u8>>,
    scratch: Mutex<Vec<u8>>,
    dma: Mutex<Option<DeviceHandle>>,
    irq: Mutex<Option<OwnedFd>>,
    mmap_file: Mutex<Option<File>>,
    connects: Mutex<u32>,
    disconnects: Mutex<u32>,
    resets: Mutex<u32>,
}

impl TestDevice {
    fn new() -> Arc<TestDevice> {
        let d = TestDevice::default();
        *d.bar0.lock().unwrap() = vec![0; BAR0_SIZE as usize];
        *d.scratch.lock().unwrap() = vec![0; SCRATCH_SIZE as usize];
        let file = memfd("bar2");
        file.set_len(MMAP_SIZE).unwrap();
        *d.mmap_file.lock().unwrap() = Some(file);
        Arc::new(d)
    }

    fn reg(&self, at: u64, len: usize) -> u64 {
        let bar = self.bar0.lock().unwrap();
        let mut b = [0u8; 8];
        b[..len].copy_from_slice(&bar[at as usize..at as usize + len]);
        u64::from_le_bytes(b)
    }

    /// The doorbell: copy LEN bytes from SRC to DST through the core, then interrupt.
    fn ring(&self) {
        let (src, dst, len) = (
            self.reg(REG_SRC, 8),
            self.reg(REG_DST, 8),
            self.reg(REG_LEN, 4),
        );
        let status = {
            let dma = self.dma.lock().unwrap();
            match dma.as_ref() {
                None => libc::ENODEV,
                Some(dma) => {
                    let mut buf = vec![0u8; len as usize];
                    match dma
                        .read(Iova(src), &mut buf)
                        .and_then(|()| dma.write(Iova(dst), &buf))
                    {
                        Ok(()) => 0,
                        Err(e) => e.errno(),
                    }
                }
            }
        };
        self.bar0.lock().unwrap()[REG_STATUS as usize..REG_STATUS as usize + 4]
            .copy_from_slice(&(status as u32).to_le_bytes());
        if let Some(fd) = self.irq.lock().unwrap().as_ref() {
            let file = File::from(fd.try_clone().unwrap());
            use std::io::Write;
            let _ = (&file).write(&1u64.to_le_bytes());
        }
    }
}

impl Device for TestDevice {
    fn description(&self) -> DeviceDescription {
        DeviceDescription {
            flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
            num_regions: 3,
            num_irqs: 1,
        }
    }

    fn region(&self, index: u32) -> Result<RegionDescription, DeviceError> {
        let rw = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
        Ok(match index {
            0 => RegionDescription {
                size: BAR0_SIZE,
                flags: rw,
                ..Default::default()
            },
            1 => RegionDescription {
                size: SCRATCH_SIZE,
                flags: rw,
                ..Default::default()
            },
            2 => {
                let file = self.mmap_file.lock().unwrap();
                let fd = OwnedFd::from(file.as_ref().unwrap().try_clone()?);
                RegionDescription {
                    size: MMAP_SIZE,
                    flags: rw,
                    mmap: Some(RegionMmap {
                        fd,
                        offset: 0,
                        sparse: vec![
                            SparseMmapArea::new(0, 0x1000),
                            SparseMmapArea::new(0x2000, 0x2000),
                        ],
                    }),
                    region_type: None,
                }
            }
            _ => return Err(DeviceError::Invalid("region")),
        })
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let o = offset as usize;
        match index {
            0 => buf.copy_from_slice(&self.bar0.lock().unwrap()[o..o + buf.len()]),
            1 => buf.copy_from_slice(&self.scratch.lock().unwrap()[o..o + buf.len()]),
            2 => self
                .mmap_file
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .read_exact_at(buf, offset)?,
            _ => return Err(DeviceError::Invalid("region")),
        }
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let o = offset as usize;
        match index {
            0 => {
                self.bar0.lock().unwrap()[o..o + data.len()].copy_from_slice(data);
                if offset == REG_DOORBELL {
                    self.ring();
                }
            }
            1 => self.scratch.lock().unwrap()[o..o + data.len()].copy_from_slice(data),
            2 => self
                .mmap_file
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .write_all_at(data, offset)?,
            _ => return Err(DeviceError::Invalid("region")),
        }
        Ok(())
    }

    fn irq_info(&self, _index: u32) -> Result<IrqDescription, DeviceError> {
        Ok(IrqDescription {
            count: 1,
            flags: IRQ_INFO_EVENTFD,
        })
    }

    fn set_irqs(&self, request: IrqRequest<'_>) -> Result<(), DeviceError> {
        let mut irq = self.irq.lock().unwrap();
        match request.data {
            IrqSetData::EventFds(mut fds) => *irq = fds.pop(),
            IrqSetData::ClearEventFds => *irq = None,
            IrqSetData::None if request.count == 0 => *irq = None,
            _ => {}
        }
        Ok(())
    }

    fn reset(&self) -> Result<(), DeviceError> {
        *self.resets.lock().unwrap() += 1;
        Ok(())
    }

    fn connect(&self, dma: DeviceHandle) {
        *self.connects.lock().unwrap() += 1;
        *self.dma.lock().unwrap() = Some(dma);
    }

    fn disconnect(&self) {
        *self.disconnects.lock().unwrap() += 1;
        *self.dma.lock().unwrap() = None;
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn memfd(name: &str) -> File {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name and no flags; returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: the descriptor was just created and nothing else owns it.
    unsafe { File::from_raw_fd(fd) }
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd takes an initial value and flags; returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd");
    // SAFETY: the descriptor was just created and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// libvfio-user's client capabilities (spec layout).
fn spec_caps() -> Capabilities {
    Capabilities {
        max_msg_fds: Some(8),
        max_data_xfer_size: Some(4096),
        ..Default::default()
    }
}

/// QEMU's client capabilities (QEMU layout), with a small transfer size to force splitting.
fn qemu_caps(max_xfer: u64) -> Capabilities {
    Capabilities {
        max_msg_fds: Some(16),
        max_data_xfer_size: Some(max_xfer),
        max_dma_maps: Some(65535),
        pgsizes: Some(4096),
        migration: Some(MigrationCapability {
            pgsize: Some(4096),
            max_bitmap_size: Some(256 << 20),
        }),
        write_multiple: Some(true),
        twin_socket: None,
    }
}

/// A client: a connection, its next message id, and memory it shares without an fd (answers
/// the server's DMA_READ/DMA_WRITE in `layout`).
struct Client {
    conn: Connection,
    /// The same socket, for raw bytes.
    raw: UnixStream,
    next_id: u16,
    layout: DmaLayout,
    mem_base: u64,
    mem: Vec<u8>,
    dma_requests: usize,
    /// The most bytes one DMA request asked for.
    largest_dma: u64,
}

/// A reply: header and payload, with its descriptors.
struct Answer {
    header: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Answer {
    fn errno(&self) -> Option<u32> {
        self.header.is_error().then(|| self.header.error())
    }
}

impl Client {
    fn new(socket: UnixStream, layout: DmaLayout) -> Client {
        Client {
            raw: socket.try_clone().unwrap(),
            conn: Connection::new(socket, Limits::default()).unwrap(),
            next_id: 1,
            layout,
            mem_base: 0x4000_0000,
            mem: vec![0; 0x40000],
            dma_requests: 0,
            largest_dma: 0,
        }
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn send(
        &mut self,
        command: Command,
        payload: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> u16 {
        let id = self.id();
        let msg = MessageBuilder::request(id, command)
            .bytes(payload)
            .finish()
            .unwrap();
        self.conn.send(&msg, fds).unwrap();
        id
    }

    /// Receives until the reply to `id` comes, answering DMA requests meanwhile.
    fn wait(&mut self, id: u16) -> Answer {
        loop {
            let m = match self.conn.receive().unwrap() {
                Received::Message(m) => m,
                other => panic!("unexpected {other:?}"),
            };
            if m.header.is_reply() {
                assert_eq!(m.header.msg_id(), id, "reply to another request");
                return Answer {
                    header: m.header,
                    payload: m.payload,
                    fds: m.fds,
                };
            }
            self.serve_dma(&m);
        }
    }

    fn serve_dma(&mut self, m: &Message) {
        self.dma_requests += 1;
        let config = DecodeConfig::new(1 << 20, self.layout);
        let request = m.request(&config).expect("a valid DMA request");
        let reply = match request {
            Request::DmaRead(access) => {
                self.largest_dma = self.largest_dma.max(access.count);
                let at = (access.addr - self.mem_base) as usize;
                let data = &self.mem[at..at + access.count as usize];
                MessageBuilder::reply(m.header.msg_id(), Command::DmaRead.number())
                    .bytes(&DmaAccess::encode_read_reply(
                        access.addr,
                        data,
                        self.layout,
                    ))
                    .finish()
                    .unwrap()
            }
            Request::DmaWrite(access, data) => {
                self.largest_dma = self.largest_dma.max(data.len() as u64);
                let at = (access.addr - self.mem_base) as usize;
                self.mem[at..at + data.len()].copy_from_slice(data);
                MessageBuilder::reply(m.header.msg_id(), Command::DmaWrite.number())
                    .bytes(&access.encode_write_reply(self.layout))
                    .finish()
                    .unwrap()
            }
            other => panic!("the server sent {other:?}"),
        };
        self.conn.send(&reply, &[]).unwrap();
    }

    fn call(&mut self, command: Command, payload: &[u8]) -> Answer {
        let id = self.send(command, payload, &[]);
        self.wait(id)
    }

    fn call_fd(
        &mut self,
        command: Command,
        payload: &[u8],
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Answer {
        let id = self.send(command, payload, &[fd]);
        self.wait(id)
    }

    fn version(&mut self, caps: Capabilities) -> Answer {
        let payload = Version {
            major: 0,
            minor: 0,
            capabilities: Some(caps),
        }
        .encode()
        .unwrap();
        let answer = self.call(Command::Version, &payload);
        assert_eq!(answer.errno(), None);
        answer
    }

    fn write_bar0(&mut self, offset: u64, data: &[u8]) {
        let payload = RegionAccess::new(0, offset, data.len() as u32).encode_with_data(data);
        let a = self.call(Command::RegionWrite, &payload);
        assert_eq!(a.errno(), None);
    }

    fn read_region(&mut self, region: u32, offset: u64, count: u32) -> Vec<u8> {
        let access = RegionAccess::new(region, offset, count);
        let a = self.call(Command::RegionRead, access.as_bytes());
        assert_eq!(a.errno(), None);
        access.decode_read_reply(&a.payload).unwrap().to_vec()
    }

    /// Programs the device's copy and rings; returns the status register.
    fn device_copy(&mut self, src: u64, dst: u64, len: u32) -> u32 {
        self.write_bar0(REG_SRC, &src.to_le_bytes());
        self.write_bar0(REG_DST, &dst.to_le_bytes());
        self.write_bar0(REG_LEN, &len.to_le_bytes());
        self.write_bar0(REG_DOORBELL, &1u32.to_le_bytes());
        let s = self.read_region(0, REG_STATUS, 4);
        u32::from_le_bytes(s.try_into().unwrap())
    }

    fn dma_map_fd(&mut self, iova: u64, size: u64, offset: u64, file: &File) -> Answer {
        let map = DmaMap::new(iova, size, offset, Prot::READ_WRITE);
        self.call_fd(Command::DmaMap, map.as_bytes(), file.as_fd())
    }
}

/// Runs `test` with a client connected to a server over a socketpair; returns how the session
/// ended.
fn with_session<T>(
    device: Arc<TestDevice>,
    layout: DmaLayout,
    test: impl FnOnce(&mut Client, &Server) -> T,
) -> (T, SessionEnd) {
    with_session_config(device, layout, ServerConfig::default(), test)
}

/// [`with_session`] with a server configuration.
fn with_session_config<T>(
    device: Arc<TestDevice>,
    layout: DmaLayout,
    config: ServerConfig,
    test: impl FnOnce(&mut Client, &Server) -> T,
) -> (T, SessionEnd) {
    let server = Server::new(device, config).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    thread::scope(|s| {
        let serving = s.spawn(|| server.serve_connection(a).unwrap());
        let mut client = Client::new(b, layout);
        let out = test(&mut client, &server);
        drop(client);
        let end = serving.join().unwrap();
        assert!(server.container().mappings().is_empty(), "left mapped");
        (out, end)
    })
}

// ---------------------------------------------------------------------------------------
// Tests.

#[test]
fn version_reply_is_compact_and_qemu_gets_its_layout() {
    let device = TestDevice::new();
    let ((), end) = with_session(device.clone(), DmaLayout::Qemu, |client, _| {
        let answer = client.version(qemu_caps(1 << 20));
        assert!(
            Header::SIZE + answer.payload.len() <= 214,
            "VERSION reply of {} bytes",
            Header::SIZE + answer.payload.len()
        );
        let v = Version::decode(&answer.payload, 0).unwrap();
        let caps = v.capabilities.unwrap();
        assert_eq!(caps.pgsizes, Some(4096));
        assert_eq!(caps.max_dma_maps, Some(65535));
        assert_eq!(caps.write_multiple, Some(true));
        assert!(caps.migration.unwrap().max_bitmap_size.is_some());
        // The layout shows in the DMA requests: the client decodes them with QEMU's.
        client.mem[..8].copy_from_slice(b"qemu-lay");
        let map = DmaMap::new(client.mem_base, 0x10000, 0, Prot::READ_WRITE);
        assert_eq!(client.call(Command::DmaMap, map.as_bytes()).errno(), None);
        let base = client.mem_base;
        assert_eq!(client.device_copy(base, base + 0x100, 8), 0);
        assert_eq!(&client.mem[0x100..0x108], b"qemu-lay");
        assert_eq!(*device.connects.lock().unwrap(), 1);
    });
    assert!(matches!(end, SessionEnd::Closed));
    assert_eq!(*device.disconnects.lock().unwrap(), 1);
    assert!(device.dma.lock().unwrap().is_none());
}

#[test]
fn commands_before_version_are_refused() {
    with_session(TestDevice::new(), DmaLayout::Spec, |client, _| {
        let a = client.call(Command::DeviceGetInfo, DeviceInfo::request().as_bytes());
        assert_eq!(a.errno(), Some(libc::EINVAL as u32));
        client.version(spec_caps());
        let a = client.call(Command::DeviceGetInfo, DeviceInfo::request().as_bytes());
        let info = DeviceInfo::decode_reply(&a.payload, 0).unwrap();
        assert_eq!((info.num_regions.get(), info.num_irqs.get()), (3, 1));
        // A second VERSION is refused.
        let payload = Version::default().encode().unwrap();
        assert_eq!(
            client.call(Command::Version, &payload).errno(),
            Some(libc::EINVAL as u32)
        );
    });
}

#[test]
fn dma_map_with_memfd_and_device_copy() {
    with_session(TestDevice::new(), DmaLayout::Spec, |client, server| {
        client.version(spec_caps());
        let file = memfd("guest");
        file.set_len(0x20000).unwrap();
        file.write_all_at(b"hello, device!", 0x1100).unwrap();
        // Mapped from offset 0x1000 of the file.
        assert_eq!(
            client.dma_map_fd(0x10_0000, 0x10000, 0x1000, &file).errno(),
            None
        );
        assert_eq!(server.container().mappings().len(), 1);
        assert_eq!(client.device_copy(0x10_0100, 0x10_5000, 14), 0);
        let mut back = [0u8; 14];
        file.read_exact_at(&mut back, 0x6000).unwrap();
        assert_eq!(&back, b"hello, device!");
        // Unmapped memory: the device sees EINVAL.
        assert_eq!(
            client.device_copy(0x20_0000, 0x10_5000, 4),
            libc::EINVAL as u32
        );
    });
}

#[test]
fn dma_map_without_fd_both_layouts() {
    for (layout, caps) in [
        (DmaLayout::Spec, spec_caps()),
        (DmaLayout::Qemu, qemu_caps(4096)),
    ] {
        with_session(TestDevice::new(), layout, |client, _| {
            client.version(caps.clone());
            let pattern: Vec<u8> = (0..10000u32).map(|i| (i * 7 + 3) as u8).collect();
            client.mem[0x10..0x10 + pattern.len()].copy_from_slice(&pattern);
            let map = DmaMap::new(client.mem_base, 0x10000, 0, Prot::READ_WRITE);
            assert_eq!(client.call(Command::DmaMap, map.as_bytes()).errno(), None);
            let base = client.mem_base;
            // 10000 bytes at the client's 4096-byte maximum: 3 reads and 3 writes.
            assert_eq!(client.device_copy(base + 0x10, base + 0x8000, 10000), 0);
            assert_eq!(
                &client.mem[0x8000..0x8000 + 10000],
                &pattern[..],
                "{layout:?}"
            );
            assert_eq!(client.dma_requests, 6, "{layout:?}");
        });
    }
}

#[test]
fn message_backed_memory_cannot_be_pinned() {
    let device = TestDevice::new();
    with_session(device.clone(), DmaLayout::Spec, |client, _| {
        client.version(spec_caps());
        let map = DmaMap::new(client.mem_base, 0x10000, 0, Prot::READ_WRITE);
        assert_eq!(client.call(Command::DmaMap, map.as_bytes()).errno(), None);
        let dma = device.dma.lock().unwrap();
        let err = dma
            .as_ref()
            .unwrap()
            .translate(Iova(client.mem_base), 16, Prot::READ)
            .unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
    });
}

#[test]
fn many_dma_maps_in_flight() {
    with_session(TestDevice::new(), DmaLayout::Spec, |client, server| {
        client.version(spec_caps());
        let file = memfd("guest");
        file.set_len(0x100000).unwrap();
        let mut ids = HashSet::new();
        for i in 0..200u64 {
            let map = DmaMap::new(0x1000_0000 + i * 0x2000, 0x1000, i * 0x1000, Prot::READ);
            ids.insert(client.send(Command::DmaMap, map.as_bytes(), &[file.as_fd()]));
        }
        for _ in 0..200 {
            let Received::Message(m) = client.conn.receive().unwrap() else {
                panic!("closed");
            };
            assert!(m.header.is_reply() && !m.header.is_error());
            assert!(ids.remove(&m.header.msg_id()), "unknown or repeated id");
        }
        assert!(ids.is_empty());
        assert_eq!(server.container().mappings().len(), 200);
        // UNMAP_ALL removes them.
        let mut all = DmaUnmap::new(0, 0);
        all.flags.set(DMA_UNMAP_FLAG_ALL);
        assert_eq!(client.call(Command::DmaUnmap, all.as_bytes()).errno(), None);
        assert!(server.container().mappings().is_empty());
    });
}

#[test]
fn dma_unmap_straddling_is_einval() {
    with_session(TestDevice::new(), DmaLayout::Spec, |client, server| {
        client.version(spec_caps());
        let file = memfd("guest");
        file.set_len(0x10000).unwrap();
        assert_eq!(client.dma_map_fd(0x10000, 0x2000, 0, &file).errno(), None);
        let a = client.call(Command::DmaUnmap, DmaUnmap::new(0x11000, 0x1000).as_bytes());
        assert_eq!(a.errno(), Some(libc::EINVAL as u32));
        assert_eq!(server.container().mappings().len(), 1);
        // Overlapping map: EEXIST.
        assert_eq!(
            client.dma_map_fd(0x11000, 0x1000, 0, &file).errno(),
            Some(libc::EEXIST as u32)
        );
        // The exact range works and echoes the request.
        let a = client.call(Command::DmaUnmap, DmaUnmap::new(0x10000, 0x2000).as_bytes());
        assert_eq!(a.errno(), None);
        let reply = DmaUnmapReply::decode(&a.payload, 0).unwrap();
        assert_eq!(reply.unmap.addr.get(), 0x10000);
        assert!(server.container().mappings().is_empty());
    });
}

#[test]
fn dma_unmap_dirty_bitmap_with_tracking() {
    with_session(TestDevice::new(), DmaLayout::Spec, |client, server| {
        client.version(spec_caps());
        let file = memfd("guest");
        file.set_len(0x10000).unwrap();
        assert_eq!(
            client.dma_map_fd(0x10_0000, 0x10000, 0, &file).errno(),
            None
        );
        let request = |size: u64| DmaUnmapRequest {
            unmap: DmaUnmap {
                argsz: (24 + 16 + size as u32).into(),
                flags: DMA_UNMAP_FLAG_GET_DIRTY_BITMAP.into(),
                addr: 0x10_0000.into(),
                size: 0x10000.into(),
            },
            bitmap: Some(DmaBitmap {
                pgsize: 4096.into(),
                size: size.into(),
            }),
        };
        // Tracking off: EINVAL, nothing unmapped.
        let a = client.call(Command::DmaUnmap, &request(8).encode());
        assert_eq!(a.errno(), Some(libc::EINVAL as u32));
        server.container().dirty_start(4096).unwrap();
        assert_eq!(client.device_copy(0x10_0000, 0x10_3000, 16), 0);
        let a = client.call(Command::DmaUnmap, &request(8).encode());
        assert_eq!(a.errno(), None);
        let reply = DmaUnmapReply::decode(&a.payload, 0).unwrap();
        let (_, bits) = reply.bitmap.unwrap();
        assert_eq!(bits, vec![0b1000, 0, 0, 0, 0, 0, 0, 0]);
        assert!(server.container().mappings().is_empty());
    });
}

/// DMA_LOGGING_START over one range at 4 KiB pages; the reply's errno.
fn start_logging(client: &mut Client, iova: u64, length: u64) -> Option<u32> {
    let mut start = DmaLoggingControl {
        page_size: 4096.into(),
        num_ranges: 1.into(),
        reserved: 0.into(),
    }
    .as_bytes()
    .to_vec();
    start.extend_from_slice(DmaLoggingRange::new(iova, length).as_bytes());
    let flags = FEATURE_SET | u32::from(FEATURE_DMA_LOGGING_START);
    client
        .call(Command::DeviceFeature, &encode_feature(flags, &start))
        .errno()
}

#[test]
fn dma_unmap_dirty_bitmap_from_the_device_log() {
    with_session(TestDevice::new(), DmaLayout::Spec, |client, server| {
        client.version(spec_caps());
        let file = memfd("guest");
        file.set_len(0x10000).unwrap();
        assert_eq!(
            client.dma_map_fd(0x10_0000, 0x10000, 0, &file).errno(),
            None
        );
        let request = |pgsize: u64, size: u64| DmaUnmapRequest {
            unmap: DmaUnmap {
                argsz: (24 + 16 + size as u32).into(),
                flags: DMA_UNMAP_FLAG_GET_DIRTY_BITMAP.into(),
                addr: 0x10_0000.into(),
                size: 0x10000.into(),
            },
            bitmap: Some(DmaBitmap {
                pgsize: pgsize.into(),
                size: size.into(),
            }),
        };
        assert_eq!(start_logging(client, 0x10_0000, 0x10000), None);
        // Pages 5 and 6 written (a copy that crosses a page boundary).
        assert_eq!(client.device_copy(0x10_0000, 0x10_5ff8, 16), 0);
        // A bitmap larger than max_bitmap_size: E2BIG, a page size that is no power of two:
        // EINVAL; neither unmaps.
        let a = client.call(Command::DmaUnmap, &request(4096, 2 << 20).encode());
        assert_eq!(a.errno(), Some(libc::E2BIG as u32));
        let a = client.call(Command::DmaUnmap, &request(3000, 8).encode());
        assert_eq!(a.errno(), Some(libc::EINVAL as u32));
        assert_eq!(server.container().mappings().len(), 1);
        // The device log answers at the client's page size: 4 KiB pages 5 and 6 lie in
        // 8 KiB pages 2 and 3.
        let a = client.call(Command::DmaUnmap, &request(8192, 8).encode());
        assert_eq!(a.errno(), None);
        let reply = DmaUnmapReply::decode(&a.payload, 0).unwrap();
        let (_, bits) = reply.bitmap.unwrap();
        assert_eq!(bits, vec![0b1100, 0, 0, 0, 0, 0, 0, 0]);
        assert!(server.container().mappings().is_empty());
    });
}

/// One DMA_LOGGING_START may not make the server hold more bitmap than `max_dma_log_bytes`
/// (64 MiB by default): a range of 2^50 bytes at 4 KiB pages (32 GiB of bitmap) is E2BIG and
/// nothing starts; a log that fits then starts.
#[test]
fn dma_logging_start_past_the_bitmap_bound_is_e2big() {
    with_session(TestDevice::new(), DmaLayout::Spec, |client, _| {
        client.version(spec_caps());
        assert_eq!(start_logging(client, 0, 1 << 50), Some(libc::E2BIG as u32));
        // One page past 2 TiB at 4 KiB: 8 bytes past the 64 MiB bound.
        assert_eq!(
            start_logging(client, 0, (2 << 40) + 4096),
            Some(libc::E2BIG as u32)
        );
        assert_eq!(start_logging(client, 0x10_0000, 0x10000), None);
    });
}

#[test]
fn dma_logging_start_report_stop() {
    with_session(TestDevice::new(), DmaLayout::Spec, |client, _| {
        client.version(spec_caps());
        let file = memfd("guest");
        file.set_len(0x10000).unwrap();
        assert_eq!(
            client.dma_map_fd(0x10_0000, 0x10000, 0, &file).errno(),
            None
        );
        assert_eq!(start_logging(client, 0x10_0000, 0x10000), None);
        assert_eq!(client.device_copy(0x10_0000, 0x10_2000, 16), 0);
        let report = DmaLoggingReport {
            iova: 0x10_0000.into(),
            length: 0x10000.into(),
            page_size: 4096.into(),
        };
        let flags = FEATURE_GET | u32::from(FEATURE_DMA_LOGGING_REPORT);
        let mut payload = encode_feature(flags, report.as_bytes());
        payload[..4].copy_from_slice(&(8u32 + 24 + 8).to_le_bytes());
        let a = client.call(Command::DeviceFeature, &payload);
        assert_eq!(a.errno(), None);
        let reply = DeviceFeatureReply::decode(&a.payload, 0).unwrap();
        let (_, bitmap) = reply.logging_report().unwrap();
        assert_eq!(bitmap, &[0b100, 0, 0, 0, 0, 0, 0, 0]);
        let flags = FEATURE_SET | u32::from(FEATURE_DMA_LOGGING_STOP);
        assert_eq!(
            client
                .call(Command::DeviceFeature, &encode_feature(flags, &[]))
                .errno(),
            None
        );
        // Migration is not supported.
        let flags = FEATURE_GET | u32::from(FEATURE_MIGRATION);
        let mut payload = encode_feature(flags, &[]);
        payload[..4].copy_from_slice(&16u32.to_le_bytes());
        let a = client.call(Command::DeviceFeature, &payload);
        assert_eq!(a.errno(), Some(libc::ENOTSUP as u32));
    });
}

#[test]
fn region_info_read_write() {
    with_session(TestDevice::new(), DmaLayout::Spec, |client, _| {
        client.version(spec_caps());
        // Region 2 with a 32-byte argsz: cut, no CAPS, the full size in argsz, and the fd.
        let a = client.call(
            Command::DeviceGetRegionInfo,
            RegionInfo::request(2, 32).as_bytes(),
        );
        assert_eq!(a.errno(), None);
        assert_eq!(a.payload.len(), 32);
        assert_eq!(a.fds.len(), 1);
        let cut = RegionInfoReply::decode(&a.payload, 1).unwrap();
        assert!(cut.caps.is_empty());
        assert_eq!(cut.flags & REGION_INFO_FLAG_CAPS, 0);
        assert_ne!(cut.flags & REGION_INFO_FLAG_MMAP, 0);
        let full = cut.argsz;
        assert!(full > 32);
        let a = client.call(
            Command::DeviceGetRegionInfo,
            RegionInfo::request(2, full).as_bytes(),
        );
        assert_eq!(a.payload.len(), full as usize);
        let info = RegionInfoReply::decode(&a.payload, 1).unwrap();
        assert_eq!(info.size, MMAP_SIZE);
        assert_eq!(
            info.caps,
            vec![RegionCap::SparseMmap(vec![
                SparseMmapArea::new(0, 0x1000),
                SparseMmapArea::new(0x2000, 0x2000)
            ])]
        );
        // The fd is the region's file: a write through it shows in REGION_READ.
        let file = File::from(a.fds.into_iter().next().unwrap());
        file.write_all_at(b"mmapped", 0x2000).unwrap();
        assert_eq!(client.read_region(2, 0x2000, 7), b"mmapped");
        // BAR0: no fd, no caps.
        let a = client.call(
            Command::DeviceGetRegionInfo,
            RegionInfo::request(0, 32).as_bytes(),
        );
        assert!(a.fds.is_empty());
        let bar0 = RegionInfoReply::decode(&a.payload, 0).unwrap();
        assert_eq!(
            (bar0.size, bar0.flags),
            (BAR0_SIZE, REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE)
        );
        // No such region; past the end.
        let a = client.call(
            Command::DeviceGetRegionInfo,
            RegionInfo::request(9, 32).as_bytes(),
        );
        assert_eq!(a.errno(), Some(libc::EINVAL as u32));
        let a = client.call(
            Command::RegionRead,
            RegionAccess::new(0, BAR0_SIZE - 2, 4).as_bytes(),
        );
        assert_eq!(a.errno(), Some(libc::EINVAL as u32));
        // Write and read back; io fds: none.
        client.write_bar0(0x100, b"abcdefgh");
        assert_eq!(client.read_region(0, 0x102, 4), b"cdef");
        let a = client.call(
            Command::DeviceGetRegionIoFds,
            RegionIoFds::request(0, 64).as_bytes(),
        );
        let (_, fds) = RegionIoFdsReply::decode(&a.payload, a.fds.len()).unwrap();
        assert!(fds.sub_regions.is_empty());
        // IRQ info, reset.
        let a = client.call(Command::DeviceGetIrqInfo, IrqInfo::request(0).as_bytes());
        let irq = IrqInfo::decode(&a.payload, 0).unwrap();
        assert_eq!((irq.count.get(), irq.flags.get()), (1, IRQ_INFO_EVENTFD));
        assert_eq!(client.call(Command::DeviceReset, &[]).errno(), None);
        // WRITE_MULTI with NO_REPLY, then a read shows it.
        let writes = [
            WriteOne::new(0, 0x200, b"12"),
            WriteOne::new(0, 0x202, b"34"),
        ];
        let id = client.id();
        let msg = MessageBuilder::request(id, Command::RegionWriteMulti)
            .no_reply()
            .bytes(&encode_write_multi(&writes))
            .finish()
            .unwrap();
        client.conn.send(&msg, &[]).unwrap();
        assert_eq!(client.read_region(0, 0x200, 4), b"1234");
    });
}

#[test]
fn set_irqs_eventfd_is_signalled() {
    let device = TestDevice::new();
    with_session(device.clone(), DmaLayout::Spec, |client, _| {
        client.version(spec_caps());
        let file = memfd("guest");
        file.set_len(0x10000).unwrap();
        assert_eq!(client.dma_map_fd(0, 0x10000, 0, &file).errno(), None);
        let efd = eventfd();
        let set = IrqSet::new(IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 0, 1);
        let a = client.call_fd(Command::DeviceSetIrqs, set.as_bytes(), efd.as_fd());
        assert_eq!(a.errno(), None);
        assert_eq!(client.device_copy(0, 0x1000, 4), 0);
        let mut counter = [0u8; 8];
        File::from(efd.try_clone().unwrap())
            .read_exact(&mut counter)
            .unwrap();
        assert_eq!(u64::from_le_bytes(counter), 1);
        // Past the type's vectors: EINVAL.
        let set = IrqSet::new(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 0, 1, 1);
        assert_eq!(
            client.call(Command::DeviceSetIrqs, set.as_bytes()).errno(),
            Some(libc::EINVAL as u32)
        );
    });
    // The disconnect disabled the interrupt: the device dropped its eventfd.
    assert!(device.irq.lock().unwrap().is_none());
}

#[test]
fn region_write_of_one_mib() {
    with_session(TestDevice::new(), DmaLayout::Spec, |client, _| {
        client.version(spec_caps());
        let data: Vec<u8> = (0..SCRATCH_SIZE as u32)
            .map(|i| (i ^ (i >> 9)) as u8)
            .collect();
        let payload = RegionAccess::new(1, 0, data.len() as u32).encode_with_data(&data);
        let a = client.call(Command::RegionWrite, &payload);
        assert_eq!(a.errno(), None);
        assert_eq!(client.read_region(1, 0, SCRATCH_SIZE as u32), data);
    });
}

#[test]
fn malformed_messages_get_error_replies() {
    with_session(TestDevice::new(), DmaLayout::Spec, |client, _| {
        client.version(spec_caps());
        // DMA_MAP shorter than its fixed part.
        assert_eq!(
            client.call(Command::DmaMap, &[0u8; 8]).errno(),
            Some(libc::EINVAL as u32)
        );
        // An unknown command.
        let id = client.id();
        let msg = MessageBuilder::new(id, 99, 0).finish().unwrap();
        client.conn.send(&msg, &[]).unwrap();
        assert_eq!(client.wait(id).errno(), Some(libc::ENOTSUP as u32));
        // A bad type.
        let id = client.id();
        let msg = MessageBuilder::new(id, Command::DeviceReset.number(), 3)
            .finish()
            .unwrap();
        client.conn.send(&msg, &[]).unwrap();
        assert_eq!(client.wait(id).errno(), Some(libc::EINVAL as u32));
        // Too large: drained and refused.
        let id = client.id();
        let big = vec![0u8; (2 << 20) + 64];
        let msg = MessageBuilder::request(id, Command::RegionWrite)
            .bytes(&big)
            .finish()
            .unwrap();
        client.conn.send(&msg, &[]).unwrap();
        assert_eq!(client.wait(id).errno(), Some(libc::E2BIG as u32));
        // A descriptor where none belongs.
        let efd = eventfd();
        let a = client.call_fd(
            Command::DeviceGetInfo,
            DeviceInfo::request().as_bytes(),
            efd.as_fd(),
        );
        assert_eq!(a.errno(), Some(libc::EINVAL as u32));
        // A stray reply is ignored; the session goes on.
        let stray = MessageBuilder::reply(4242, Command::DmaRead.number())
            .finish()
            .unwrap();
        client.conn.send(&stray, &[]).unwrap();
        let a = client.call(Command::DeviceGetInfo, DeviceInfo::request().as_bytes());
        assert_eq!(a.errno(), None);
    });
}

#[test]
fn lost_framing_disconnects() {
    let ((), end) = with_session(TestDevice::new(), DmaLayout::Spec, |client, _| {
        client.version(spec_caps());
        let file = memfd("guest");
        file.set_len(0x10000).unwrap();
        assert_eq!(client.dma_map_fd(0, 0x10000, 0, &file).errno(), None);
        // A header whose size is below 16: no one knows where the next message starts.
        let bad = Header::new(9, Command::DeviceReset.number(), 8, 0, 0).to_bytes();
        use std::io::Write;
        let mut raw = client.raw.try_clone().unwrap();
        raw.write_all(&bad).unwrap();
        let mut rest = Vec::new();
        let _ = raw.read_to_end(&mut rest);
        assert!(rest.is_empty(), "no reply after lost framing");
    });
    assert!(matches!(end, SessionEnd::Failed(_)));
}

#[test]
fn disconnect_cleans_up_and_next_client_is_served() {
    let dir = std::env::temp_dir().join(format!("vdma-server-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dev.sock");
    // A stale socket file is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let device = TestDevice::new();
    let server = Server::bind(&path, device.clone(), ServerConfig::default()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    thread::scope(|s| {
        let serving = s.spawn(|| {
            let first = server.serve_one().unwrap();
            let mapped_after_first = server.container().mappings().len();
            let second = server.serve_one().unwrap();
            (first, mapped_after_first, second)
        });
        let mut client = Client::new(UnixStream::connect(&path).unwrap(), DmaLayout::Spec);
        client.version(spec_caps());
        let file = memfd("guest");
        file.set_len(0x10000).unwrap();
        assert_eq!(client.dma_map_fd(0, 0x10000, 0, &file).errno(), None);
        let map = DmaMap::new(client.mem_base, 0x10000, 0, Prot::READ_WRITE);
        assert_eq!(client.call(Command::DmaMap, map.as_bytes()).errno(), None);
        let efd = eventfd();
        let set = IrqSet::new(IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 0, 1);
        assert_eq!(
            client
                .call_fd(Command::DeviceSetIrqs, set.as_bytes(), efd.as_fd())
                .errno(),
            None
        );
        drop(client);

        let mut second = Client::new(UnixStream::connect(&path).unwrap(), DmaLayout::Spec);
        second.version(spec_caps());
        assert_eq!(second.device_copy(0, 0x1000, 4), libc::EINVAL as u32);
        drop(second);
        let (first, mapped, end) = serving.join().unwrap();
        assert!(matches!(first, SessionEnd::Closed));
        assert!(matches!(end, SessionEnd::Closed));
        assert_eq!(mapped, 0);
    });
    assert!(server.container().mappings().is_empty());
    assert!(device.irq.lock().unwrap().is_none());
    assert!(device.dma.lock().unwrap().is_none());
    assert_eq!(*device.connects.lock().unwrap(), 2);
    assert_eq!(*device.disconnects.lock().unwrap(), 2);
    // A live socket is not replaced (the probe connection waits in the backlog, unserved).
    assert_eq!(
        Server::bind(&path, device.clone(), ServerConfig::default())
            .unwrap_err()
            .errno(),
        libc::EADDRINUSE
    );
    drop(server);
    assert!(!path.exists(), "socket removed on drop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stop_ends_an_idle_accept_and_a_session() {
    let dir = std::env::temp_dir().join(format!("vdma-server-stop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dev.sock");
    let server = Server::bind(&path, TestDevice::new(), ServerConfig::default()).unwrap();
    thread::scope(|s| {
        let serving = s.spawn(|| server.serve_one().unwrap());
        let mut client = Client::new(UnixStream::connect(&path).unwrap(), DmaLayout::Spec);
        client.version(spec_caps());
        server.stop();
        assert!(matches!(serving.join().unwrap(), SessionEnd::Stopped));
        assert!(matches!(
            client.conn.receive(),
            Ok(Received::Closed) | Err(_)
        ));
    });
    assert!(server.serve().is_ok());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Receives the next message, which must be one of the server's DMA requests.
fn next_dma_request(client: &mut Client) -> Message {
    let Received::Message(m) = client.conn.receive().unwrap() else {
        panic!("closed");
    };
    assert!(!m.header.is_reply());
    m
}

#[test]
fn dma_unmap_waits_for_a_round_trip_in_flight() {
    let device = TestDevice::new();
    with_session(device.clone(), DmaLayout::Spec, |client, server| {
        client.version(spec_caps());
        client.mem[..4].copy_from_slice(b"data");
        let map = DmaMap::new(client.mem_base, 0x10000, 0, Prot::READ_WRITE);
        assert_eq!(client.call(Command::DmaMap, map.as_bytes()).errno(), None);
        let base = client.mem_base;
        thread::scope(|s| {
            // A device thread reads client memory.
            let reading = s.spawn(|| {
                let dma = device.dma.lock().unwrap();
                let mut buf = [0u8; 4];
                dma.as_ref()
                    .unwrap()
                    .read(Iova(base), &mut buf)
                    .map(|()| buf)
            });
            let request = next_dma_request(client);
            // The client unmaps that memory before it answers.
            let unmap_id = client.send(
                Command::DmaUnmap,
                DmaUnmap::new(base, 0x10000).as_bytes(),
                &[],
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
            // No reply yet: the unmap waits for the access in flight.
            client.raw.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 1];
            let peeked = (&client.raw).read(&mut byte);
            client.raw.set_nonblocking(false).unwrap();
            assert_eq!(
                peeked.unwrap_err().kind(),
                std::io::ErrorKind::WouldBlock,
                "unmap waits"
            );
            client.serve_dma(&request);
            assert_eq!(client.wait(unmap_id).errno(), None);
            assert_eq!(&reading.join().unwrap().unwrap(), b"data");
            assert!(server.container().mappings().is_empty());
        });
    });
}

#[test]
fn dma_reply_timeout_and_late_reply() {
    let device = TestDevice::new();
    let config = ServerConfig {
        reply_timeout: std::time::Duration::from_millis(200),
        ..ServerConfig::default()
    };
    with_session_config(device.clone(), DmaLayout::Spec, config, |client, _| {
        client.version(spec_caps());
        let map = DmaMap::new(client.mem_base, 0x10000, 0, Prot::READ_WRITE);
        assert_eq!(client.call(Command::DmaMap, map.as_bytes()).errno(), None);
        let base = client.mem_base;
        let err = thread::scope(|s| {
            let reading = s.spawn(|| {
                let dma = device.dma.lock().unwrap();
                let mut buf = [0u8; 4];
                dma.as_ref().unwrap().read(Iova(base), &mut buf)
            });
            let request = next_dma_request(client);
            let err = reading.join().unwrap().unwrap_err();
            // The late reply is dropped.
            client.serve_dma(&request);
            err
        });
        assert_eq!(err.errno(), libc::ETIMEDOUT);
        let a = client.call(Command::DeviceGetInfo, DeviceInfo::request().as_bytes());
        assert_eq!(a.errno(), None);
    });
}

#[test]
fn disconnect_during_a_round_trip() {
    let device = TestDevice::new();
    let ((), end) = with_session(device.clone(), DmaLayout::Spec, |client, _| {
        client.version(spec_caps());
        let map = DmaMap::new(client.mem_base, 0x10000, 0, Prot::READ_WRITE);
        assert_eq!(client.call(Command::DmaMap, map.as_bytes()).errno(), None);
        let base = client.mem_base;
        let dma = device.dma.lock().unwrap().take().unwrap();
        thread::scope(|s| {
            let reading = s.spawn(|| {
                let mut buf = [0u8; 4];
                dma.read(Iova(base), &mut buf)
            });
            next_dma_request(client);
            client.raw.shutdown(std::net::Shutdown::Both).unwrap();
            assert_eq!(reading.join().unwrap().unwrap_err().errno(), libc::ENODEV);
        });
    });
    assert!(matches!(end, SessionEnd::Closed));
}

#[test]
fn allowed_uids_refuse_other_users() {
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    let refusing = ServerConfig {
        allowed_uids: Some(vec![me.wrapping_add(1)]),
        ..ServerConfig::default()
    };
    let server = Server::new(TestDevice::new(), refusing).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let end = server.serve_connection(a).unwrap();
    assert!(matches!(end, SessionEnd::Refused { uid } if uid == me));
    // Closed before anything was read: the client sees end of file.
    let mut client = Client::new(b, DmaLayout::Spec);
    assert!(matches!(
        client.conn.receive(),
        Ok(Received::Closed) | Err(_)
    ));
    // A listed uid is served as usual.
    let allowing = ServerConfig {
        allowed_uids: Some(vec![me]),
        ..ServerConfig::default()
    };
    with_session_config(TestDevice::new(), DmaLayout::Spec, allowing, |client, _| {
        client.version(spec_caps());
        let a = client.call(Command::DeviceGetInfo, DeviceInfo::request().as_bytes());
        assert_eq!(a.errno(), None);
    });
}

#[test]
fn dma_requests_to_qemu_stay_within_qemu_dma_chunk() {
    // QEMU loses the part of a DMA_READ reply that does not fit in its socket buffer, so a
    // QEMU client gets requests of at most `qemu_dma_chunk` (64 KiB) even if it takes 1 MiB.
    with_session(TestDevice::new(), DmaLayout::Qemu, |client, _| {
        client.version(qemu_caps(1 << 20));
        let base = client.mem_base;
        for (i, b) in client.mem[..0x20000].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let map = DmaMap::new(base, 0x40000, 0, Prot::READ_WRITE);
        assert_eq!(client.call(Command::DmaMap, map.as_bytes()).errno(), None);
        assert_eq!(client.device_copy(base, base + 0x20000, 0x20000), 0);
        assert_eq!(client.mem[..0x20000], client.mem[0x20000..0x40000]);
        assert_eq!(client.largest_dma, 64 << 10);
        assert!(client.dma_requests >= 4, "{} requests", client.dma_requests);
    });
    // A client with the specification's layout gets its own maximum, even above 64 KiB.
    with_session(TestDevice::new(), DmaLayout::Spec, |client, _| {
        client.version(Capabilities {
            max_data_xfer_size: Some(1 << 20),
            ..spec_caps()
        });
        let base = client.mem_base;
        let map = DmaMap::new(base, 0x40000, 0, Prot::READ_WRITE);
        assert_eq!(client.call(Command::DmaMap, map.as_bytes()).errno(), None);
        assert_eq!(client.device_copy(base, base + 0x20000, 0x20000), 0);
        assert_eq!(client.largest_dma, 0x20000);
    });
}
