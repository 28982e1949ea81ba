//! The client against a fake server written here with the protocol and transport layers on a
//! socketpair: negotiation and the DMA layout a server detects, many commands in flight from
//! one and from several threads answered out of order, the server's DMA_READ/DMA_WRITE served
//! from client memory while commands are in flight, error replies, the region-info argsz
//! retry, chunked region access, timeouts and disconnects.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vdma::{Memory, OwnedMemory, Prot};
use vdma_user::client::{Client, ClientConfig, ClientError, MappedRange};
use vdma_user::protocol::*;
use vdma_user::transport::*;
use zerocopy::IntoBytes;

/// The server end: receives whole messages, keeps those it did not wait for.
struct Fake {
    conn: Connection,
    writer: Writer,
    backlog: VecDeque<Message>,
    layout: DmaLayout,
    next_id: u16,
}

impl Fake {
    fn new(conn: Connection) -> Fake {
        let writer = conn.writer();
        Fake {
            conn,
            writer,
            backlog: VecDeque::new(),
            layout: DmaLayout::Spec,
            next_id: 0x8000,
        }
    }

    fn receive(&mut self) -> Option<Message> {
        match self.conn.receive().expect("receive") {
            Received::Message(m) => Some(m),
            Received::Closed => None,
            Received::Rejected { header, error } => panic!("rejected {header:?}: {error}"),
        }
    }

    /// The next command from the client (backlog first).
    fn recv(&mut self) -> Message {
        if let Some(m) = self.backlog.pop_front() {
            return m;
        }
        self.receive().expect("the client closed")
    }

    /// The client's reply to our request `id`; commands that come first go to the backlog.
    fn recv_reply(&mut self, id: u16) -> Message {
        loop {
            let m = self.receive().expect("the client closed");
            if m.header.is_reply() && m.header.msg_id() == id {
                return m;
            }
            assert!(!m.header.is_reply(), "a stray reply {:?}", m.header);
            self.backlog.push_back(m);
        }
    }

    fn reply(&self, to: &Header, payload: &[u8]) {
        self.reply_fds(to, payload, &[]);
    }

    fn reply_fds(&self, to: &Header, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        let bytes = MessageBuilder::reply(to.msg_id(), to.command_number())
            .bytes(payload)
            .finish()
            .expect("fits");
        self.writer.send(&bytes, fds).expect("send reply");
    }

    fn error(&self, to: &Header, errno: i32) {
        self.writer
            .send(&error_reply(to, errno), &[])
            .expect("send error");
    }

    /// Answers VERSION with `caps`; returns what the client sent.
    fn negotiate(&mut self, caps: Option<Capabilities>) -> Version {
        let m = self.recv();
        let Request::Version(theirs) = m.request(&DecodeConfig::default()).expect("decodes") else {
            panic!("not VERSION: {:?}", m.header);
        };
        self.layout = DmaLayout::detect(theirs.capabilities.as_ref());
        let ours = Version {
            major: 0,
            minor: 0,
            capabilities: caps,
        };
        self.reply(&m.header, &ours.encode().expect("encodes"));
        theirs
    }

    /// Sends a DMA_READ and returns the client's reply.
    fn dma_read(&mut self, addr: u64, count: u64) -> Message {
        let id = self.id();
        let bytes = MessageBuilder::request(id, Command::DmaRead)
            .bytes(&DmaAccess::new(addr, count).encode_read_request(self.layout))
            .finish()
            .expect("fits");
        self.writer.send(&bytes, &[]).expect("send");
        self.recv_reply(id)
    }

    /// Sends a DMA_WRITE and returns the client's reply.
    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Message {
        let id = self.id();
        let bytes = MessageBuilder::request(id, Command::DmaWrite)
            .bytes(&DmaAccess::encode_write_request(addr, data, self.layout))
            .finish()
            .expect("fits");
        self.writer.send(&bytes, &[]).expect("send");
        self.recv_reply(id)
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Answers every command until the client closes, with a successful empty reply.
    fn ack_all(mut self) {
        while let Some(m) = self.receive() {
            if m.header.wants_reply() {
                self.reply(&m.header, &[]);
            }
        }
    }
}

fn server_caps() -> Capabilities {
    Capabilities {
        max_msg_fds: Some(8),
        max_data_xfer_size: Some(1 << 20),
        max_dma_maps: Some(4096),
        pgsizes: Some(4096),
        ..Capabilities::default()
    }
}

/// A client and the fake server, negotiated; also what the client sent in VERSION.
fn start_with(config: ClientConfig, caps: Option<Capabilities>) -> (Client, Fake, Version) {
    let (ours, theirs) = Connection::pair(Limits::default()).expect("pair");
    let server = thread::spawn(move || {
        let mut fake = Fake::new(theirs);
        let sent = fake.negotiate(caps);
        (fake, sent)
    });
    let client = Client::from_connection_with(ours, config).expect("negotiates");
    let (fake, sent) = server.join().expect("server");
    (client, fake, sent)
}

fn start() -> (Client, Fake) {
    let (client, fake, _) = start_with(ClientConfig::default(), Some(server_caps()));
    (client, fake)
}

/// Memory with a known pattern: byte i is i * 7 + 3 (mod 256).
fn patterned(len: usize) -> Arc<OwnedMemory> {
    let mem = OwnedMemory::new(len).expect("memory");
    let bytes: Vec<u8> = (0..len).map(pattern).collect();
    mem.write_at(0, &bytes).expect("write");
    Arc::new(mem)
}

fn pattern(i: usize) -> u8 {
    (i * 7 + 3) as u8
}

fn some_fd() -> File {
    File::open("/dev/zero").expect("open")
}

fn decode(m: &Message) -> Request<'_> {
    m.request(&DecodeConfig::default()).expect("decodes")
}

// ---------------------------------------------------------------------------------------------
// Negotiation

/// The default client advertises the spec layout the way a vdma server detects it, and
/// exposes the server's capabilities.
#[test]
fn negotiation_spec_layout_and_server_capabilities() {
    let (client, fake, sent) = start_with(ClientConfig::default(), Some(server_caps()));
    let caps = sent.capabilities.expect("capabilities sent");
    assert_eq!((sent.major, sent.minor), (0, 0));
    assert_eq!(DmaLayout::detect(Some(&caps)), DmaLayout::Spec);
    assert_eq!(
        DmaLayoutChoice::Auto.resolve(Some(&caps)),
        DmaLayout::Spec,
        "a vdma server on Auto picks the spec layout"
    );
    assert_eq!(caps.max_msg_fds, Some(16));
    assert_eq!(caps.max_data_xfer_size, Some(1 << 20));
    assert_eq!(caps.write_multiple, None);
    assert_eq!(client.dma_layout(), DmaLayout::Spec);
    assert_eq!(client.server_capabilities(), &server_caps());
    assert_eq!(client.server_capabilities().max_dma_maps_or_default(), 4096);
    assert!(client.is_connected());
    drop(client);
    fake.ack_all();
}

/// The QEMU-like configuration is detected as QEMU; a server without capabilities gets the
/// protocol's defaults.
#[test]
fn negotiation_qemu_like_and_defaults() {
    let (client, fake, sent) = start_with(ClientConfig::qemu(), None);
    let caps = sent.capabilities.expect("capabilities sent");
    assert_eq!(DmaLayout::detect(Some(&caps)), DmaLayout::Qemu);
    assert_eq!(caps.write_multiple, Some(true));
    assert_eq!(client.dma_layout(), DmaLayout::Qemu);
    let server = client.server_capabilities();
    assert_eq!(server.max_msg_fds_or_default(), 1);
    assert_eq!(server.max_data_xfer_size_or_default(), 1 << 20);
    drop(client);
    fake.ack_all();
}

/// A server answering another major version, or an error, fails the connect.
#[test]
fn negotiation_refused() {
    let (ours, theirs) = Connection::pair(Limits::default()).expect("pair");
    let server = thread::spawn(move || {
        let mut fake = Fake::new(theirs);
        let m = fake.recv();
        let v = Version {
            major: 1,
            minor: 0,
            capabilities: None,
        };
        fake.reply(&m.header, &v.encode().expect("encodes"));
        fake
    });
    let err = Client::from_connection(ours).expect_err("major 1");
    assert!(matches!(err, ClientError::Version { .. }), "{err}");
    assert_eq!(err.errno(), libc::ENOTSUP);
    server.join().expect("server");

    let (ours, theirs) = Connection::pair(Limits::default()).expect("pair");
    let server = thread::spawn(move || {
        let mut fake = Fake::new(theirs);
        let m = fake.recv();
        fake.error(&m.header, libc::EPROTO);
        fake
    });
    let err = Client::from_connection(ours).expect_err("error reply");
    assert_eq!(err.errno(), libc::EPROTO);
    server.join().expect("server");
}

// ---------------------------------------------------------------------------------------------
// Commands in flight

/// 64 DMA_MAPs sent before any reply is read, answered in reverse order: every wait gets its
/// own answer (one refused in the middle), and the table follows the answers.
#[test]
fn many_dma_maps_in_flight_answered_in_reverse() {
    let (client, mut fake) = start();
    let file = some_fd();
    let mem = patterned(64 * 4096);
    let mut pendings = Vec::new();
    for i in 0..64u64 {
        let iova = 0x1000_0000 + i * 0x1_0000;
        let p = if i % 2 == 0 {
            client.send_dma_map_fd(iova, 0x1_0000, file.as_fd(), i * 0x1_0000, Prot::READ_WRITE)
        } else {
            client.send_dma_map_memory(iova, 4096, mem.clone(), i * 4096, Prot::READ)
        }
        .expect("sent");
        pendings.push(p);
    }
    assert_eq!(client.in_flight(), 64);
    let mut got = Vec::new();
    for _ in 0..64 {
        got.push(fake.recv());
    }
    let mut ids: Vec<u16> = got.iter().map(|m| m.header.msg_id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 64, "distinct message ids");
    for (i, m) in got.iter().enumerate() {
        let Request::DmaMap(map) = decode(m) else {
            panic!("not DMA_MAP")
        };
        assert_eq!(map.addr.get(), 0x1000_0000 + i as u64 * 0x1_0000);
        assert_eq!(m.fds.len(), if i % 2 == 0 { 1 } else { 0 });
        if i % 2 == 1 {
            assert_eq!(map.offset.get(), 0, "no file, no offset on the wire");
            assert_eq!(map.prot(), Prot::READ);
        }
    }
    for (i, m) in got.iter().enumerate().rev() {
        if i == 31 {
            fake.error(&m.header, libc::ENOSPC);
        } else {
            fake.reply(&m.header, &[]);
        }
    }
    for (i, p) in pendings.into_iter().enumerate() {
        let r = p.wait();
        if i == 31 {
            let err = r.expect_err("refused");
            assert!(matches!(
                err,
                ClientError::Server {
                    command: Command::DmaMap,
                    errno: libc::ENOSPC
                }
            ));
            assert_eq!(err.errno(), libc::ENOSPC);
        } else {
            r.expect("mapped");
        }
    }
    let maps = client.dma_mappings();
    assert_eq!(maps.len(), 63, "the refused mapping left the table");
    assert!(!maps.iter().any(|m| m.iova == 0x1000_0000 + 31 * 0x1_0000));
    assert_eq!(client.in_flight(), 0);
    drop(client);
    fake.ack_all();
}

/// 8 threads each map 16 ranges with blocking calls; the server collects one command from
/// every thread before answering the batch in reverse.
#[test]
fn dma_maps_from_many_threads() {
    let (client, mut fake) = start();
    let mem = patterned(8 * 16 * 4096);
    let server = thread::spawn(move || {
        for _ in 0..16 {
            let batch: Vec<Message> = (0..8).map(|_| fake.recv()).collect();
            for m in batch.iter().rev() {
                assert!(matches!(decode(m), Request::DmaMap(_)));
                fake.reply(&m.header, &[]);
            }
        }
        fake
    });
    thread::scope(|s| {
        for t in 0..8u64 {
            let client = &client;
            let mem = mem.clone();
            s.spawn(move || {
                for i in 0..16u64 {
                    let n = t * 16 + i;
                    client
                        .dma_map_memory(n * 4096, 4096, mem.clone(), n * 4096, Prot::READ_WRITE)
                        .expect("mapped");
                }
            });
        }
    });
    let fake = server.join().expect("server");
    assert_eq!(client.dma_mappings().len(), 128);
    drop(client);
    fake.ack_all();
}

/// Replies to different commands, out of order, each decoded as its own command's.
#[test]
fn different_commands_out_of_order() {
    let (client, mut fake) = start();
    let server = thread::spawn(move || {
        let a = fake.recv();
        let b = fake.recv();
        let (info, irq) = match (decode(&a), decode(&b)) {
            (Request::DeviceGetInfo(_), Request::DeviceGetIrqInfo(_)) => (a, b),
            (Request::DeviceGetIrqInfo(_), Request::DeviceGetInfo(_)) => (b, a),
            other => panic!("{other:?}"),
        };
        fake.reply(
            &irq.header,
            IrqInfo::reply(PCI_MSIX_IRQ_INDEX, IRQ_INFO_EVENTFD, 32).as_bytes(),
        );
        fake.reply(
            &info.header,
            DeviceInfo::reply(DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET, 9, 5).as_bytes(),
        );
        fake
    });
    thread::scope(|s| {
        let c = &client;
        let h = s.spawn(move || c.device_info().expect("info"));
        let irq = client.irq_info(PCI_MSIX_IRQ_INDEX).expect("irq");
        assert_eq!(irq.count.get(), 32);
        let info = h.join().expect("thread");
        assert_eq!(info.num_regions.get(), 9);
        assert_eq!(info.num_irqs.get(), 5);
    });
    let fake = server.join().expect("server");
    drop(client);
    fake.ack_all();
}

// ---------------------------------------------------------------------------------------------
// DMA requests from the server

/// While DMA_MAPs are in flight, the server reads and writes client memory (across two
/// adjacent mappings, at an offset into the memory), then answers the maps.
#[test]
fn dma_requests_served_while_commands_in_flight() {
    let (client, mut fake) = start();
    let mem = patterned(0x4000);
    // Two adjacent mappings of one memory, the first at offset 0x1000 into it.
    let first = client
        .send_dma_map_memory(0x10_0000, 0x1000, mem.clone(), 0x1000, Prot::READ_WRITE)
        .expect("sent");
    let second = client
        .send_dma_map_memory(0x10_1000, 0x1000, mem.clone(), 0x2000, Prot::READ_WRITE)
        .expect("sent");
    let file = some_fd();
    let third = client
        .send_dma_map_fd(0x20_0000, 0x1000, file.as_fd(), 0, Prot::READ_WRITE)
        .expect("sent");
    let maps: Vec<Message> = (0..3).map(|_| fake.recv()).collect();

    // A read inside the first mapping.
    let reply = fake.dma_read(0x10_0100, 64);
    assert!(!reply.header.is_error(), "{:?}", reply.header);
    let data = DmaAccess::new(0x10_0100, 64)
        .decode_read_reply(&reply.payload, reply.fds.len(), DmaLayout::Spec)
        .expect("reply decodes");
    let want: Vec<u8> = (0x1100..0x1100 + 64).map(pattern).collect();
    assert_eq!(data, &want[..]);

    // A read across both mappings.
    let reply = fake.dma_read(0x10_0ff0, 32);
    let data = DmaAccess::new(0x10_0ff0, 32)
        .decode_read_reply(&reply.payload, 0, DmaLayout::Spec)
        .expect("reply decodes");
    let want: Vec<u8> = (0x1ff0..0x2010).map(pattern).collect();
    assert_eq!(data, &want[..]);

    // A write across both, seen in the memory.
    let bytes: Vec<u8> = (0..48u8).map(|b| b ^ 0xa5).collect();
    let reply = fake.dma_write(0x10_0fe0, &bytes);
    assert!(!reply.header.is_error());
    DmaAccess::new(0x10_0fe0, 48)
        .decode_write_reply(&reply.payload, 0)
        .expect("write reply");
    let mut back = vec![0u8; 48];
    mem.read_at(0x1fe0, &mut back).expect("read");
    assert_eq!(back, bytes);

    // The commands are still waiting; answer them now, out of order.
    assert_eq!(client.in_flight(), 3);
    for m in maps.iter().rev() {
        fake.reply(&m.header, &[]);
    }
    first.wait().expect("first");
    second.wait().expect("second");
    third.wait().expect("third");
    assert_eq!(client.dma_requests(), (3, 0));
    drop(client);
    fake.ack_all();
}

/// Requests the client cannot serve get error replies, never a crash: outside every mapping,
/// past 2^64, in a mapping made with an fd, against its permissions, above the transfer
/// maximum, malformed, and commands a client does not take.
#[test]
fn dma_requests_refused_with_errno() {
    let (client, mut fake) = start();
    let mem = patterned(0x2000);
    let server = thread::spawn(move || {
        let m = fake.recv();
        fake.reply(&m.header, &[]);
        let m = fake.recv();
        fake.reply(&m.header, &[]);
        fake
    });
    client
        .dma_map_memory(0x1000, 0x1000, mem.clone(), 0, Prot::READ)
        .expect("read-only map");
    client
        .dma_map_fd(0x8000, 0x1000, some_fd().as_fd(), 0, Prot::READ_WRITE)
        .expect("fd map");
    let mut fake = server.join().expect("server");

    let errno = |m: &Message| {
        assert!(m.header.is_reply() && m.header.is_error(), "{:?}", m.header);
        m.header.error() as i32
    };
    assert_eq!(errno(&fake.dma_read(0x0, 16)), libc::EFAULT, "below");
    assert_eq!(
        errno(&fake.dma_read(0x1ff0, 32)),
        libc::EFAULT,
        "past the end"
    );
    assert_eq!(
        errno(&fake.dma_read(u64::MAX - 3, 8)),
        libc::EFAULT,
        "wraps"
    );
    assert_eq!(
        errno(&fake.dma_read(0x8000, 16)),
        libc::EFAULT,
        "fd mapping"
    );
    assert_eq!(
        errno(&fake.dma_write(0x1000, b"nope")),
        libc::EPERM,
        "read-only"
    );
    assert_eq!(
        errno(&fake.dma_read(0x1000, (1 << 20) + 1)),
        libc::E2BIG,
        "above max_data_xfer_size"
    );
    // A DMA_WRITE whose count disagrees with its data.
    let id = fake.id();
    let mut payload = DmaAccess::encode_write_request(0x1000, b"abcd", DmaLayout::Spec);
    payload.truncate(payload.len() - 1);
    let bytes = MessageBuilder::request(id, Command::DmaWrite)
        .bytes(&payload)
        .finish()
        .expect("fits");
    fake.writer.send(&bytes, &[]).expect("send");
    assert_eq!(errno(&fake.recv_reply(id)), libc::EINVAL, "malformed");
    // A client command sent to the client, and an unknown command.
    let id = fake.id();
    let bytes = MessageBuilder::request(id, Command::DeviceReset)
        .finish()
        .expect("fits");
    fake.writer.send(&bytes, &[]).expect("send");
    assert_eq!(errno(&fake.recv_reply(id)), libc::ENOTSUP, "DEVICE_RESET");
    let id = fake.id();
    let bytes = MessageBuilder::new(id, 99, flags::TYPE_COMMAND)
        .finish()
        .expect("fits");
    fake.writer.send(&bytes, &[]).expect("send");
    assert_eq!(errno(&fake.recv_reply(id)), libc::ENOTSUP, "unknown");

    // Nothing was written, and the client still works.
    let mut back = vec![0u8; 4];
    mem.read_at(0, &mut back).expect("read");
    assert_eq!(back, (0..4).map(pattern).collect::<Vec<_>>());
    let ok = fake.dma_read(0x1000, 4);
    assert!(!ok.header.is_error());
    assert_eq!(client.dma_requests().1, 9);
    assert!(client.is_connected());
    drop(client);
    fake.ack_all();
}

/// A QEMU-layout client serves DMA in QEMU's layout (data at offset 12, empty write reply).
#[test]
fn qemu_layout_dma_requests() {
    let (client, mut fake, _) = start_with(ClientConfig::qemu(), Some(server_caps()));
    assert_eq!(fake.layout, DmaLayout::Qemu);
    let mem = patterned(0x1000);
    let server = thread::spawn(move || {
        let m = fake.recv();
        fake.reply(&m.header, &[]);
        fake
    });
    client
        .dma_map_memory(0x4000, 0x1000, mem.clone(), 0, Prot::READ_WRITE)
        .expect("map");
    let mut fake = server.join().expect("server");
    let reply = fake.dma_read(0x4010, 20);
    assert_eq!(reply.payload.len(), 16 + 20);
    let data = DmaAccess::new(0x4010, 20)
        .decode_read_reply(&reply.payload, 0, DmaLayout::Qemu)
        .expect("qemu layout");
    assert_eq!(
        data,
        &(0x10..0x10 + 20).map(pattern).collect::<Vec<_>>()[..]
    );
    let reply = fake.dma_write(0x4100, b"qemu!");
    assert!(
        reply.payload.is_empty(),
        "QEMU's DMA_WRITE reply is a bare header"
    );
    let mut back = [0u8; 5];
    mem.read_at(0x100, &mut back).expect("read");
    assert_eq!(&back, b"qemu!");
    drop(client);
    fake.ack_all();
}

// ---------------------------------------------------------------------------------------------
// Unmapping

/// The table follows unmaps the server confirms (mappings wholly inside the range), and
/// keeps what a refused unmap covers; UNMAP_ALL clears it; the dirty form returns the bitmap.
#[test]
fn unmap_follows_the_server() {
    let (client, mut fake) = start();
    let mem = patterned(0x10000);
    let server = thread::spawn(move || {
        for _ in 0..4 {
            let m = fake.recv();
            fake.reply(&m.header, &[]);
        }
        // dma_unmap(0x0, 0x2000): confirmed with the echoed structure.
        let m = fake.recv();
        let Request::DmaUnmap(u) = decode(&m) else {
            panic!("not DMA_UNMAP")
        };
        assert_eq!((u.unmap.addr.get(), u.unmap.size.get()), (0, 0x2000));
        fake.reply(&m.header, u.unmap.as_bytes());
        // dma_unmap(0x2000, 0x1000): refused.
        let m = fake.recv();
        fake.error(&m.header, libc::EBUSY);
        // dma_unmap_dirty(0x2000, 0x1000, 4096)
        let m = fake.recv();
        let Request::DmaUnmap(u) = decode(&m) else {
            panic!("not DMA_UNMAP")
        };
        let bitmap = u.bitmap.expect("bitmap asked");
        assert_eq!((bitmap.pgsize.get(), bitmap.size.get()), (4096, 8));
        let reply = DmaUnmapReply {
            unmap: u.unmap,
            bitmap: Some((bitmap, vec![1, 0, 0, 0, 0, 0, 0, 0])),
        };
        fake.reply(&m.header, &reply.encode());
        // dma_unmap_all
        let m = fake.recv();
        let Request::DmaUnmap(u) = decode(&m) else {
            panic!("not DMA_UNMAP")
        };
        assert!(u.unmap.is_all());
        fake.reply(&m.header, &[]);
        fake
    });
    for i in 0..4u64 {
        client
            .dma_map_memory(
                i * 0x1000,
                0x1000,
                mem.clone(),
                i * 0x1000,
                Prot::READ_WRITE,
            )
            .expect("map");
    }
    client.dma_unmap(0, 0x2000).expect("unmap");
    let iovas: Vec<u64> = client.dma_mappings().iter().map(|m| m.iova).collect();
    assert_eq!(iovas, [0x2000, 0x3000]);
    let err = client.dma_unmap(0x2000, 0x1000).expect_err("refused");
    assert_eq!(err.errno(), libc::EBUSY);
    assert_eq!(client.dma_mappings().len(), 2);
    let bits = client.dma_unmap_dirty(0x2000, 0x1000, 4096).expect("dirty");
    assert_eq!(bits, [1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        client.dma_mappings(),
        [MappedRange {
            iova: 0x3000,
            size: 0x1000,
            prot: Prot::READ_WRITE,
            with_fd: false
        }]
    );
    client.dma_unmap_all().expect("unmap all");
    assert!(client.dma_mappings().is_empty());
    let fake = server.join().expect("server");
    drop(client);
    fake.ack_all();
}

/// Arguments refused before anything is sent.
#[test]
fn local_argument_checks() {
    let (client, fake) = start();
    let mem = patterned(0x1000);
    let e = client
        .dma_map_memory(0, 0, mem.clone(), 0, Prot::READ)
        .expect_err("size 0");
    assert_eq!(e.errno(), libc::EINVAL);
    let e = client
        .dma_map_memory(0, 0x2000, mem.clone(), 0, Prot::READ)
        .expect_err("past the memory");
    assert_eq!(e.errno(), libc::EINVAL);
    let e = client
        .dma_map_memory(u64::MAX, 2, mem.clone(), 0, Prot::READ)
        .expect_err("wraps");
    assert_eq!(e.errno(), libc::EINVAL);
    let e = client
        .dma_map_memory(0, 0x1000, mem.clone(), 0, Prot::NONE)
        .expect_err("no permission");
    assert_eq!(e.errno(), libc::EINVAL);
    assert_eq!(client.in_flight(), 0);
    // An overlap with a mapping still in flight is refused locally.
    let p = client
        .send_dma_map_memory(0x1000, 0x1000, mem.clone(), 0, Prot::READ)
        .expect("sent");
    let e = client
        .dma_map_memory(0x1800, 0x1000, mem, 0, Prot::READ)
        .expect_err("overlap");
    assert!(matches!(
        e,
        ClientError::Overlap {
            existing: 0x1000,
            ..
        }
    ));
    assert_eq!(e.errno(), libc::EEXIST);
    let server = thread::spawn(move || fake.ack_all());
    p.wait().expect("mapped");
    drop(client);
    server.join().expect("server");
}

// ---------------------------------------------------------------------------------------------
// Device commands

/// A region whose capabilities do not fit the first request's argsz: the client asks again
/// with the size the server said, and gets the capabilities and the fd.
#[test]
fn region_info_argsz_retry() {
    let (client, mut fake) = start();
    let full = RegionInfoReply {
        argsz: 0,
        flags: REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE | REGION_INFO_FLAG_MMAP,
        index: 2,
        size: 0x10000,
        offset: 0x4_0000_0000,
        caps: vec![RegionCap::SparseMmap(vec![
            SparseMmapArea::new(0, 0x1000),
            SparseMmapArea::new(0x8000, 0x8000),
        ])],
    };
    let sent = full.clone();
    let server = thread::spawn(move || {
        let full = sent;
        let mut asked = Vec::new();
        for _ in 0..2 {
            let m = fake.recv();
            let Request::DeviceGetRegionInfo(r) = decode(&m) else {
                panic!("not REGION_INFO")
            };
            assert_eq!(r.index.get(), 2);
            asked.push(r.argsz.get());
            let file = some_fd();
            fake.reply_fds(&m.header, &full.encode(r.argsz.get()), &[file.as_fd()]);
        }
        (fake, asked)
    });
    let region = client.region_info(2).expect("region info");
    let (fake, asked) = server.join().expect("server");
    let need = full.encode(u32::MAX).len() as u32;
    assert_eq!(asked, [32, need]);
    assert_eq!(region.info.size, 0x10000);
    assert_eq!(region.info.argsz, need);
    assert_eq!(region.info.caps, full.caps);
    assert!(region.fd.is_some());
    drop(client);
    fake.ack_all();
}

/// Region access split at the server's transfer size; posted writes carry NO_REPLY; a short
/// read fails.
#[test]
fn region_read_write_chunks_and_posted() {
    let caps = Capabilities {
        max_data_xfer_size: Some(4096),
        ..server_caps()
    };
    let (client, mut fake, _) = start_with(ClientConfig::default(), Some(caps));
    let server = thread::spawn(move || {
        // region_read(1, 0x100, 10000): 4096 + 4096 + 1808.
        let mut offsets = Vec::new();
        for _ in 0..3 {
            let m = fake.recv();
            let Request::RegionRead(a) = decode(&m) else {
                panic!("not REGION_READ")
            };
            offsets.push((a.offset.get(), a.count.get()));
            let data: Vec<u8> = (0..a.count.get() as u64)
                .map(|i| pattern((a.offset.get() + i) as usize))
                .collect();
            fake.reply(&m.header, &a.encode_with_data(&data));
        }
        assert_eq!(offsets, [(0x100, 4096), (0x1100, 4096), (0x2100, 1808)]);
        // region_write(1, 0, 5000): 4096 + 904, acknowledged.
        for want in [4096, 904] {
            let m = fake.recv();
            let Request::RegionWrite(a, data) = decode(&m) else {
                panic!("not REGION_WRITE")
            };
            assert_eq!(data.len(), want);
            assert!(m.header.wants_reply());
            let ack = RegionAccess::new(a.region.get(), a.offset.get(), a.count.get());
            fake.reply(&m.header, ack.as_bytes());
        }
        // region_write_posted(0, 0x10, [1, 2, 3, 4])
        let m = fake.recv();
        assert!(m.header.no_reply());
        let Request::RegionWrite(a, data) = decode(&m) else {
            panic!("not REGION_WRITE")
        };
        assert_eq!(
            (a.region.get(), a.offset.get(), data),
            (0, 0x10, &[1u8, 2, 3, 4][..])
        );
        // A short read.
        let m = fake.recv();
        let Request::RegionRead(a) = decode(&m) else {
            panic!("not REGION_READ")
        };
        let mut short = a;
        short.count = 2.into();
        fake.reply(&m.header, &short.encode_with_data(&[9, 9]));
        fake
    });
    let data = client.region_read(1, 0x100, 10000).expect("read");
    assert_eq!(
        data,
        (0x100..0x100 + 10000).map(pattern).collect::<Vec<_>>()
    );
    client.region_write(1, 0, &vec![7u8; 5000]).expect("write");
    client
        .region_write_posted(0, 0x10, &[1, 2, 3, 4])
        .expect("posted");
    let e = client.region_read(0, 0, 4).expect_err("short");
    assert!(matches!(
        e,
        ClientError::Short {
            wanted: 4,
            got: 2,
            ..
        }
    ));
    assert_eq!(e.errno(), libc::EIO);
    let fake = server.join().expect("server");
    drop(client);
    fake.ack_all();
}

/// Eventfds beyond the server's max_msg_fds go in several SET_IRQS; other SET_IRQS forms and
/// DEVICE_RESET; a malformed reply is a protocol error.
#[test]
fn irqs_reset_and_malformed_reply() {
    let caps = Capabilities {
        max_msg_fds: Some(2),
        ..server_caps()
    };
    let (client, mut fake, _) = start_with(ClientConfig::default(), Some(caps));
    let server = thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let m = fake.recv();
            let Request::DeviceSetIrqs(s) = decode(&m) else {
                panic!("not SET_IRQS")
            };
            assert_eq!(s.data, IrqData::EventFds { assign: true });
            seen.push((s.set.start.get(), s.set.count.get(), m.fds.len()));
            fake.reply(&m.header, &[]);
        }
        assert_eq!(seen, [(0, 2, 2), (2, 2, 2), (4, 1, 1)]);
        let m = fake.recv();
        let Request::DeviceSetIrqs(s) = decode(&m) else {
            panic!("not SET_IRQS")
        };
        assert_eq!((s.action, s.data), (IrqAction::Unmask, IrqData::None));
        fake.reply(&m.header, &[]);
        let m = fake.recv();
        let Request::DeviceSetIrqs(s) = decode(&m) else {
            panic!("not SET_IRQS")
        };
        assert_eq!((s.action, s.set.count.get()), (IrqAction::Trigger, 0));
        fake.reply(&m.header, &[]);
        let m = fake.recv();
        assert!(matches!(decode(&m), Request::DeviceReset));
        fake.reply(&m.header, &[]);
        // A DEVICE_GET_INFO reply too short for its structure.
        let m = fake.recv();
        fake.reply(&m.header, &[1, 2, 3]);
        fake
    });
    let files: Vec<File> = (0..5).map(|_| some_fd()).collect();
    let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
    client
        .set_irqs_eventfd(PCI_MSIX_IRQ_INDEX, 0, &fds)
        .expect("eventfds");
    client
        .set_irqs(PCI_INTX_IRQ_INDEX, IrqAction::Unmask, 0, 1)
        .expect("unmask");
    client.disable_irqs(PCI_MSIX_IRQ_INDEX).expect("disable");
    client.reset().expect("reset");
    let e = client.device_info().expect_err("malformed");
    assert!(matches!(e, ClientError::Protocol(_)), "{e}");
    assert_eq!(e.errno(), libc::EINVAL);
    let fake = server.join().expect("server");
    drop(client);
    fake.ack_all();
}

/// DMA logging start, report, stop.
#[test]
fn dma_logging() {
    let (client, mut fake) = start();
    let server = thread::spawn(move || {
        let m = fake.recv();
        let Request::DeviceFeature(f) = decode(&m) else {
            panic!("not DEVICE_FEATURE")
        };
        let FeatureRequest::DmaLoggingStart { page_size, ranges } = f.request else {
            panic!("not START: {f:?}")
        };
        assert_eq!(page_size, 4096);
        assert_eq!(ranges, [DmaLoggingRange::new(0x1000, 0x10000)]);
        fake.reply(&m.header, &[]);
        let m = fake.recv();
        let Request::DeviceFeature(f) = decode(&m) else {
            panic!("not DEVICE_FEATURE")
        };
        let FeatureRequest::DmaLoggingReport {
            iova,
            length,
            page_size,
        } = f.request
        else {
            panic!("not REPORT")
        };
        let mut data = DmaLoggingReport {
            iova: iova.into(),
            length: length.into(),
            page_size: page_size.into(),
        }
        .as_bytes()
        .to_vec();
        data.extend_from_slice(&[0b101, 0, 0, 0, 0, 0, 0, 0]);
        fake.reply(&m.header, &encode_feature(f.flags, &data));
        let m = fake.recv();
        let Request::DeviceFeature(f) = decode(&m) else {
            panic!("not DEVICE_FEATURE")
        };
        assert_eq!(f.request, FeatureRequest::DmaLoggingStop);
        fake.reply(&m.header, &[]);
        fake
    });
    client
        .dma_logging_start(4096, &[(0x1000, 0x10000)])
        .expect("start");
    let bits = client
        .dma_logging_report(0x1000, 0x10000, 4096)
        .expect("report");
    assert_eq!(bits, [0b101, 0, 0, 0, 0, 0, 0, 0]);
    client.dma_logging_stop().expect("stop");
    let fake = server.join().expect("server");
    drop(client);
    fake.ack_all();
}

// ---------------------------------------------------------------------------------------------
// Timeouts and disconnects

/// A command the server does not answer times out; its late reply is dropped, its id is not
/// reused meanwhile, and the connection goes on.
#[test]
fn timeout_then_late_reply_is_dropped() {
    let config = ClientConfig::default().with_timeout(Duration::from_millis(100));
    let (client, mut fake, _) = start_with(config, Some(server_caps()));
    let t = Instant::now();
    let e = client.reset().expect_err("no reply");
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(matches!(
        e,
        ClientError::Timeout {
            command: Command::DeviceReset,
            ..
        }
    ));
    assert_eq!(e.errno(), libc::ETIMEDOUT);
    let late = fake.recv();
    assert_eq!(client.in_flight(), 1, "the id stays reserved");
    let server = thread::spawn(move || {
        let m = fake.recv();
        assert_ne!(m.header.msg_id(), late.header.msg_id());
        // The late reply first, then the answer.
        fake.reply(&late.header, &[]);
        fake.reply(&m.header, DeviceInfo::reply(0, 1, 1).as_bytes());
        fake
    });
    let info = client.device_info().expect("info");
    assert_eq!(info.num_regions.get(), 1);
    let fake = server.join().expect("server");
    assert_eq!(client.in_flight(), 0);
    drop(client);
    fake.ack_all();
}

/// The server goes away with commands in flight on several threads and a pending DMA_MAP:
/// every one fails with Disconnected at once (no timeout), and so do later calls.
#[test]
fn server_disconnect_fails_pending_calls() {
    let (client, mut fake) = start();
    let mem = patterned(0x1000);
    let pending = client
        .send_dma_map_memory(0, 0x1000, mem, 0, Prot::READ)
        .expect("sent");
    let t = Instant::now();
    thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let c = &client;
                s.spawn(move || c.device_info())
            })
            .collect();
        for _ in 0..5 {
            fake.recv();
        }
        drop(fake);
        for w in workers {
            let e = w.join().expect("thread").expect_err("disconnected");
            assert!(matches!(e, ClientError::Disconnected { .. }), "{e}");
            assert_eq!(e.errno(), libc::ECONNRESET);
        }
    });
    let e = pending.wait().expect_err("disconnected");
    assert!(matches!(e, ClientError::Disconnected { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "no timeout waited");
    assert!(!client.is_connected());
    let e = client.reset().expect_err("gone");
    assert!(matches!(e, ClientError::Disconnected { .. }), "{e}");
}

/// Dropping the client closes the connection and joins its threads, with a command pending.
#[test]
fn drop_with_command_pending() {
    let (client, mut fake) = start();
    let p = client.send_dma_unmap(0, 0x1000).expect("sent");
    fake.recv();
    drop(client);
    assert!(matches!(p.wait(), Err(ClientError::Disconnected { .. })));
    assert!(fake.receive().is_none(), "the server sees the close");
}

/// A cut region-info reply that still claims capabilities at an offset it left out (as a
/// careless server might): the client reads only the fixed part and asks again.
#[test]
fn region_info_cut_reply_with_dangling_caps() {
    let (client, mut fake) = start();
    let server = thread::spawn(move || {
        let m = fake.recv();
        let cut = RegionInfo {
            argsz: 80.into(),
            flags: (REGION_INFO_FLAG_READ | REGION_INFO_FLAG_CAPS).into(),
            index: 0.into(),
            cap_offset: 32.into(),
            size: 0x100.into(),
            offset: 0.into(),
        };
        fake.reply(&m.header, cut.as_bytes());
        let m = fake.recv();
        let Request::DeviceGetRegionInfo(r) = decode(&m) else {
            panic!("not REGION_INFO")
        };
        assert_eq!(r.argsz.get(), 80);
        let full = RegionInfoReply {
            argsz: 0,
            flags: REGION_INFO_FLAG_READ,
            index: 0,
            size: 0x100,
            offset: 0,
            caps: vec![RegionCap::Type {
                kind: 1,
                subtype: 2,
            }],
        };
        fake.reply(&m.header, &full.encode(80));
        fake
    });
    let region = client.region_info(0).expect("region info");
    assert_eq!(
        region.info.caps,
        [RegionCap::Type {
            kind: 1,
            subtype: 2
        }]
    );
    assert!(region.fd.is_none());
    let fake = server.join().expect("server");
    drop(client);
    fake.ack_all();
}

/// A request larger than the client takes is drained and refused with E2BIG, one with a
/// descriptor it does not take with EINVAL; the connection stays in step.
#[test]
fn oversized_and_fd_carrying_requests_refused() {
    let (client, mut fake) = start();
    let mem = patterned(0x1000);
    let server = thread::spawn(move || {
        let m = fake.recv();
        fake.reply(&m.header, &[]);
        fake
    });
    client
        .dma_map_memory(0, 0x1000, mem, 0, Prot::READ_WRITE)
        .expect("map");
    let mut fake = server.join().expect("server");
    let id = fake.id();
    let big = vec![0u8; 2 << 20];
    let bytes = MessageBuilder::request(id, Command::DmaWrite)
        .bytes(&DmaAccess::encode_write_request(0, &big, DmaLayout::Spec))
        .finish()
        .expect("fits");
    fake.writer.send(&bytes, &[]).expect("send");
    let m = fake.recv_reply(id);
    assert_eq!(m.header.error() as i32, libc::E2BIG);
    let id = fake.id();
    let bytes = MessageBuilder::request(id, Command::DmaRead)
        .bytes(&DmaAccess::new(0, 8).encode_read_request(DmaLayout::Spec))
        .finish()
        .expect("fits");
    let file = some_fd();
    fake.writer.send(&bytes, &[file.as_fd()]).expect("send");
    let m = fake.recv_reply(id);
    assert_eq!(m.header.error() as i32, libc::EINVAL);
    let ok = fake.dma_read(0, 8);
    assert!(!ok.header.is_error());
    assert!(client.is_connected());
    drop(client);
    fake.ack_all();
}

/// 4 threads issue 50 REGION_READs each; before answering each, the server reads the
/// client's memory with DMA_READ and writes it with DMA_WRITE, and answers every second
/// batch out of order. Every read gets its own data, every DMA its bytes.
#[test]
fn dma_requests_interleaved_with_commands_from_threads() {
    let (client, mut fake) = start();
    let mem = patterned(0x10000);
    let server_mem = mem.clone();
    let server = thread::spawn(move || {
        let m = fake.recv();
        fake.reply(&m.header, &[]);
        let mut round = 0u64;
        let mut answered = 0;
        while answered < 200 {
            let batch: Vec<Message> = (0..4).map(|_| fake.recv()).collect();
            for k in 0..4u64 {
                let addr = 0x10_0000 + (round * 4 + k) * 64 % 0xff00;
                let r = fake.dma_read(addr, 64);
                let data = DmaAccess::new(addr, 64)
                    .decode_read_reply(&r.payload, 0, DmaLayout::Spec)
                    .expect("read reply")
                    .to_vec();
                let mut want = vec![0u8; 64];
                server_mem
                    .read_at(addr - 0x10_0000, &mut want)
                    .expect("read");
                assert_eq!(data, want);
                let w = fake.dma_write(addr, &[round as u8; 16]);
                assert!(!w.header.is_error());
            }
            let order: Vec<&Message> = if round % 2 == 0 {
                batch.iter().collect()
            } else {
                batch.iter().rev().collect()
            };
            for m in order {
                let Request::RegionRead(a) = decode(m) else {
                    panic!("not REGION_READ")
                };
                let data = a.offset.get().to_le_bytes();
                fake.reply(&m.header, &a.encode_with_data(&data));
            }
            answered += 4;
            round += 1;
        }
        fake
    });
    client
        .dma_map_memory(0x10_0000, 0x10000, mem, 0, Prot::READ_WRITE)
        .expect("map");
    thread::scope(|s| {
        for t in 0..4u64 {
            let c = &client;
            s.spawn(move || {
                for i in 0..50u64 {
                    let offset = t << 32 | i;
                    let got = c.region_read(0, offset, 8).expect("read");
                    assert_eq!(got, offset.to_le_bytes());
                }
            });
        }
    });
    let fake = server.join().expect("server");
    assert_eq!(client.dma_requests(), (400, 0));
    drop(client);
    fake.ack_all();
}

/// A client is shared by threads; a pending command may be waited for on another thread.
#[test]
fn client_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    fn sent<T: Send>() {}
    shared::<Client>();
    sent::<vdma_user::client::Pending<()>>();
    sent::<vdma_user::client::Pending<Vec<u8>>>();
}
