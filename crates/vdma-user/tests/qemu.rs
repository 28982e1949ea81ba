//! What QEMU's client (hw/vfio-user, 10.1) really sends, built byte by byte the way its C code
//! builds it, decodes; and both DMA layouts move the right bytes with a client that handles
//! them as QEMU does and one that handles them as libvfio-user does.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread;

use vdma_user::protocol::*;
use vdma_user::transport::*;

/// Little-endian field writer, for building messages as C structs lay them out.
#[derive(Default)]
struct C(Vec<u8>);

impl C {
    fn u16(mut self, v: u16) -> C {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> C {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> C {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> C {
        self.0.extend_from_slice(b);
        self
    }
    /// QEMU's `vfio_user_request_msg`: id, command, size, flags (type REQUEST), error 0.
    fn header(id: u16, command: u16, size: u32, flags: u32) -> C {
        C::default()
            .u16(id)
            .u16(command)
            .u32(size)
            .u32(flags)
            .u32(0)
    }
}

/// QEMU's QDict iterates its 512 hash buckets in order (`tdb_hash(key) % 512`), and
/// `qobject_to_json` writes `"key": value` pairs separated by `", "`. This reproduces the order.
fn qdict_json(members: &[(&str, String)]) -> String {
    fn tdb_hash(name: &str) -> u32 {
        let mut value = 0x238F_13AFu32.wrapping_mul(name.len() as u32);
        for (i, c) in name.bytes().enumerate() {
            value = value.wrapping_add(u32::from(c) << (i * 5 % 24));
        }
        1_103_515_243u32.wrapping_mul(value).wrapping_add(12345)
    }
    let mut sorted: Vec<_> = members.iter().enumerate().collect();
    // Same bucket: the later insertion comes first (QLIST_INSERT_HEAD).
    sorted.sort_by_key(|(i, (k, _))| (tdb_hash(k) % 512, usize::MAX - i));
    let body: Vec<String> = sorted
        .iter()
        .map(|(_, (k, v))| format!("\"{k}\": {v}"))
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// QEMU's `caps_json()` and `vfio_user_validate_version()`: the first message of a connection.
fn qemu_version_request() -> Vec<u8> {
    let migration = qdict_json(&[
        ("pgsize", "4096".into()),
        ("max_bitmap_size", (256u64 << 20).to_string()),
    ]);
    let caps = qdict_json(&[
        ("migration", migration),
        ("max_msg_fds", "16".into()),
        ("max_data_xfer_size", (1u32 << 20).to_string()),
        ("pgsizes", "4096".into()),
        ("max_dma_maps", "65535".into()),
        ("write_multiple", "true".into()),
    ]);
    let json = qdict_json(&[("capabilities", caps)]);
    let caplen = json.len() + 1;
    let size = (16 + 4 + caplen) as u32; // sizeof(VFIOUserVersion) + caplen
    C::header(0, 1, size, 0)
        .u16(0)
        .u16(0)
        .bytes(json.as_bytes())
        .bytes(&[0])
        .0
}

#[test]
fn qemu_version_request_decodes() {
    let bytes = qemu_version_request();
    assert_eq!(bytes.len(), 214);
    assert_eq!(
        std::str::from_utf8(&bytes[20..213]).expect("utf-8"),
        r#"{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}}"#
    );
    let (header, request) =
        Request::decode_message(&bytes, 0, &DecodeConfig::default()).expect("decodes");
    assert_eq!((header.msg_id(), header.size()), (0, 214));
    let Request::Version(v) = request else {
        panic!("not VERSION");
    };
    assert_eq!((v.major, v.minor), (0, 0));
    let caps = v.capabilities.expect("capabilities");
    assert_eq!(
        caps,
        Capabilities {
            max_msg_fds: Some(16),
            max_data_xfer_size: Some(1 << 20),
            max_dma_maps: Some(65535),
            pgsizes: Some(4096),
            migration: Some(MigrationCapability {
                pgsize: Some(4096),
                max_bitmap_size: Some(256 << 20),
            }),
            write_multiple: Some(true),
            twin_socket: None,
        }
    );
    assert_eq!(DmaLayout::detect(Some(&caps)), DmaLayout::Qemu);
    assert_eq!(DmaLayoutChoice::Auto.resolve(Some(&caps)), DmaLayout::Qemu);
    assert_eq!(
        DmaLayoutChoice::Force(DmaLayout::Spec).resolve(Some(&caps)),
        DmaLayout::Spec
    );
}

#[test]
fn other_clients_get_the_spec_layout() {
    let version = |json: &str| {
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(json.as_bytes());
        p.push(0);
        Version::decode(&p, 0).expect("decodes")
    };
    // libvfio-user's sample client.
    let v = version(r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}}"#);
    assert_eq!(DmaLayout::detect(v.capabilities.as_ref()), DmaLayout::Spec);
    // rust-vmm's vfio-user client: no "capabilities" wrapper.
    let v =
        version(r#"{"max_msg_fds":1,"max_data_xfer_size":1048576,"migration":{"pgsize":4096}}"#);
    assert_eq!(v.capabilities, None);
    assert_eq!(DmaLayout::detect(None), DmaLayout::Spec);
    // A client of the current specification offering twin sockets, whatever else it sends.
    let v = version(r#"{"capabilities":{"write_multiple":true,"twin_socket":{"supported":true}}}"#);
    assert_eq!(DmaLayout::detect(v.capabilities.as_ref()), DmaLayout::Spec);
}

/// QEMU's messages other than VERSION, laid out as its structs are, with the sizes, argsz and
/// descriptors it uses.
#[test]
fn qemu_requests_decode() {
    let config = DecodeConfig {
        dma_layout: DmaLayout::Qemu,
        ..DecodeConfig::default()
    };
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        // vfio_user_get_device_info: sizeof(VFIOUserDeviceInfo), argsz 16.
        (
            "GET_INFO",
            C::header(1, 4, 32, 0).u32(16).u32(0).u32(0).u32(0).0,
            0,
        ),
        // vfio_user_get_region_info: message sizeof(*msgp) = 48, argsz as large as the
        // client's buffer.
        (
            "GET_REGION_INFO",
            C::header(2, 5, 48, 0)
                .u32(104)
                .u32(0)
                .u32(0)
                .u32(0)
                .u64(0)
                .u64(0)
                .0,
            0,
        ),
        // vfio_user_device_io_get_irq_info.
        (
            "GET_IRQ_INFO",
            C::header(3, 7, 32, 0).u32(16).u32(0).u32(2).u32(0).0,
            0,
        ),
        // SET_IRQS with eventfds: argsz 20, the descriptors only as ancillary data...
        (
            "SET_IRQS eventfds",
            C::header(4, 8, 36, 0)
                .u32(20)
                .u32(0x24)
                .u32(2)
                .u32(0)
                .u32(2)
                .0,
            2,
        ),
        // ...a run of -1 entries: same message, no descriptor (de-assign).
        (
            "SET_IRQS de-assign",
            C::header(5, 8, 36, 0)
                .u32(20)
                .u32(0x24)
                .u32(2)
                .u32(2)
                .u32(6)
                .0,
            0,
        ),
        // INTx unmask: DATA_NONE | ACTION_UNMASK.
        (
            "SET_IRQS unmask",
            C::header(6, 8, 36, 0)
                .u32(20)
                .u32(0x11)
                .u32(0)
                .u32(0)
                .u32(1)
                .0,
            0,
        ),
        ("RESET", C::header(7, 13, 16, 0).0, 0),
        // vfio_user_dma_map with an fd (offset into the RAM block), and a read-only ROM
        // without one.
        (
            "DMA_MAP fd",
            C::header(8, 2, 48, 0)
                .u32(32)
                .u32(3)
                .u64(0x10_0000)
                .u64(0x10_0000)
                .u64(0x7ff0_0000)
                .0,
            1,
        ),
        (
            "DMA_MAP rom",
            C::header(9, 2, 48, 0)
                .u32(32)
                .u32(1)
                .u64(0)
                .u64(0xc_0000)
                .u64(0x2_0000)
                .0,
            0,
        ),
        // vfio_user_dma_unmap: argsz sizeof(vfio_iommu_type1_dma_unmap) = 24; and unmap-all.
        (
            "DMA_UNMAP",
            C::header(10, 3, 40, 0)
                .u32(24)
                .u32(0)
                .u64(0xc_0000)
                .u64(0x2_0000)
                .0,
            0,
        ),
        (
            "DMA_UNMAP all",
            C::header(11, 3, 40, 0).u32(24).u32(2).u64(0).u64(0).0,
            0,
        ),
        // REGION_READ: sizeof(*msgp) = 32.
        (
            "REGION_READ",
            C::header(12, 9, 32, 0).u64(0x10).u32(7).u32(4).0,
            0,
        ),
        // A posted REGION_WRITE: NO_REPLY.
        (
            "REGION_WRITE posted",
            C::header(13, 10, 36, 0x10)
                .u64(0x10)
                .u32(0)
                .u32(4)
                .bytes(&[1, 2, 3, 4])
                .0,
            0,
        ),
        // vfio_user_flush_multi: NO_REPLY, size cut to the writes made.
        (
            "WRITE_MULTI",
            C::header(14, 15, 16 + 8 + 2 * 24, 0x10)
                .u64(2)
                .u64(0x100)
                .u32(0)
                .u32(4)
                .bytes(&[1, 2, 3, 4, 0, 0, 0, 0])
                .u64(0x104)
                .u32(0)
                .u32(2)
                .bytes(&[5, 6, 0, 0, 0, 0, 0, 0])
                .0,
            0,
        ),
    ];
    for (name, bytes, nfds) in cases {
        let (header, request) = Request::decode_message(&bytes, nfds, &config)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(header.size() as usize, bytes.len(), "{name}");
        match (name, request) {
            ("SET_IRQS eventfds", Request::DeviceSetIrqs(s)) => {
                assert_eq!(s.data, IrqData::EventFds { assign: true });
                assert_eq!(s.action, IrqAction::Trigger);
            }
            ("SET_IRQS de-assign", Request::DeviceSetIrqs(s)) => {
                assert_eq!(s.data, IrqData::EventFds { assign: false });
                assert_eq!((s.set.start.get(), s.set.count.get()), (2, 6));
            }
            ("DMA_MAP rom", Request::DmaMap(m)) => assert_eq!(m.prot(), vdma::Prot::READ),
            ("DMA_UNMAP all", Request::DmaUnmap(u)) => assert!(u.unmap.is_all()),
            ("REGION_WRITE posted", Request::RegionWrite(_, data)) => {
                assert!(!header.wants_reply());
                assert_eq!(data, &[1, 2, 3, 4]);
            }
            ("WRITE_MULTI", Request::RegionWriteMulti(w)) => {
                assert!(!header.wants_reply());
                assert_eq!(
                    (w[0].bytes(), w[1].bytes()),
                    (&[1u8, 2, 3, 4][..], &[5u8, 6][..])
                );
            }
            _ => {}
        }
    }
    // QEMU asks for region info with argsz 32 first, receives into 16 + argsz bytes, and
    // fails the region if CAPS is set with a cap_offset outside [32, argsz]; then it asks
    // again with the argsz the reply named.
    let reply = RegionInfoReply {
        flags: REGION_INFO_FLAG_READ | REGION_INFO_FLAG_MMAP,
        size: 0x4000,
        caps: vec![RegionCap::SparseMmap(vec![SparseMmapArea::new(0, 0x1000)])],
        ..RegionInfoReply::default()
    };
    let qemu_accepts = |payload: &[u8], argsz: usize| {
        let flags = u32::from_le_bytes(payload[4..8].try_into().expect("4"));
        let cap_offset = u32::from_le_bytes(payload[12..16].try_into().expect("4")) as usize;
        let reply_argsz = u32::from_le_bytes(payload[..4].try_into().expect("4")) as usize;
        payload.len() <= argsz
            && (flags & REGION_INFO_FLAG_CAPS == 0 || (32..=reply_argsz).contains(&cap_offset))
    };
    let first = reply.encode(32);
    assert!(qemu_accepts(&first, 32));
    let needed = u32::from_le_bytes(first[..4].try_into().expect("4"));
    let second = reply.encode(needed);
    assert!(qemu_accepts(&second, needed as usize));
    let back = RegionInfoReply::decode(&second, 1).expect("decodes");
    assert_eq!(back.caps, reply.caps);
}

/// QEMU's `vfio_user_dma_write`: size at least sizeof(VFIOUserDMARW) (32), count a u32 at 24,
/// count at most size - 32, data at 28. Returns (address, data) or the errno it replies.
fn qemu_dma_write(msg: &[u8]) -> Result<(u64, Vec<u8>), i32> {
    let size = u32::from_le_bytes(msg[4..8].try_into().expect("4")) as usize;
    if size < 32 {
        return Err(libc::EINVAL);
    }
    let offset = u64::from_le_bytes(msg[16..24].try_into().expect("8"));
    let count = u32::from_le_bytes(msg[24..28].try_into().expect("4")) as usize;
    if count > size - 32 {
        return Err(libc::E2BIG);
    }
    Ok((offset, msg[28..28 + count].to_vec()))
}

/// QEMU's `vfio_user_dma_read`: copies sizeof(VFIOUserDMARW) = 32 bytes of the request, puts
/// `count` bytes of guest memory at 28, sets size = count + 32 and the reply type.
fn qemu_dma_read_reply(msg: &[u8], guest: &[u8]) -> Vec<u8> {
    let offset = u64::from_le_bytes(msg[16..24].try_into().expect("8")) as usize;
    let count = u32::from_le_bytes(msg[24..28].try_into().expect("4")) as usize;
    let mut res = vec![0u8; count + 32];
    res[..32].copy_from_slice(&msg[..32]);
    res[28..28 + count].copy_from_slice(&guest[offset..offset + count]);
    res[4..8].copy_from_slice(&((count + 32) as u32).to_le_bytes());
    res[8..12].copy_from_slice(&1u32.to_le_bytes());
    res
}

/// libvfio-user's client: `struct vfio_user_dma_region_access` {u64 addr, u64 count}, data at
/// 16; it answers DMA_WRITE with that 16-byte structure.
fn libvfio_user_dma_write(msg: &[u8]) -> (u64, Vec<u8>) {
    let addr = u64::from_le_bytes(msg[16..24].try_into().expect("8"));
    let count = u64::from_le_bytes(msg[24..32].try_into().expect("8")) as usize;
    (addr, msg[32..32 + count].to_vec())
}

/// Sends one message from `server` and returns the raw bytes the client side reads.
fn over_the_wire(server: &Connection, client: &mut Connection, msg: &[u8]) -> Vec<u8> {
    server.send(msg, &[]).expect("send");
    let Received::Message(m) = client.receive().expect("receive") else {
        panic!("expected a message");
    };
    let mut raw = m.header.to_bytes().to_vec();
    raw.extend_from_slice(&m.payload);
    raw
}

#[test]
fn dma_write_lands_right_with_both_clients() {
    let (server, mut client) = Connection::pair(Limits::default()).expect("pair");
    let data: Vec<u8> = (1..=64).collect();
    let addr = 0x8000_0000;

    // QEMU's layout, read as QEMU reads it.
    let qemu_msg = MessageBuilder::request(1, Command::DmaWrite)
        .bytes(&DmaAccess::encode_write_request(
            addr,
            &data,
            DmaLayout::Qemu,
        ))
        .finish()
        .expect("fits");
    assert_eq!(qemu_msg.len(), 32 + data.len());
    let raw = over_the_wire(&server, &mut client, &qemu_msg);
    assert_eq!(qemu_dma_write(&raw), Ok((addr, data.clone())));

    // The spec layout sent to QEMU: it writes four zero bytes and the data shifted (the trap).
    let spec_msg = MessageBuilder::request(2, Command::DmaWrite)
        .bytes(&DmaAccess::encode_write_request(
            addr,
            &data,
            DmaLayout::Spec,
        ))
        .finish()
        .expect("fits");
    let raw = over_the_wire(&server, &mut client, &spec_msg);
    let (_, landed) = qemu_dma_write(&raw).expect("QEMU accepts it");
    assert_eq!(&landed[..4], &[0, 0, 0, 0]);
    assert_eq!(&landed[4..], &data[..60]);

    // The spec layout, read as libvfio-user reads it.
    let raw = over_the_wire(&server, &mut client, &spec_msg);
    assert_eq!(libvfio_user_dma_write(&raw), (addr, data.clone()));

    // Replies: QEMU's bare header, libvfio-user's 16 bytes; both accepted.
    let access = DmaAccess::new(addr, 64);
    access.decode_write_reply(&[], 0).expect("QEMU's reply");
    access
        .decode_write_reply(&raw[16..32], 0)
        .expect("libvfio-user's reply");
}

#[test]
fn dma_read_reply_from_qemu_decodes_with_its_layout() {
    let (server, client) = Connection::pair(Limits::default()).expect("pair");
    let guest: Vec<u8> = (0..=255u8).cycle().take(1 << 16).collect();
    // The client: answers DMA_READs the way QEMU does.
    let client_thread = thread::spawn(move || {
        let (mut reader, writer) = client.split();
        for _ in 0..3 {
            let Received::Message(m) = reader.receive().expect("receive") else {
                panic!("expected a message");
            };
            let mut raw = m.header.to_bytes().to_vec();
            raw.extend_from_slice(&m.payload);
            let reply = qemu_dma_read_reply(&raw, &guest);
            writer.send(&reply, &[]).expect("reply");
        }
    });
    let (mut reader, writer) = server.split();
    let guest: Vec<u8> = (0..=255u8).cycle().take(1 << 16).collect();
    for (i, (addr, count)) in [(0x100u64, 64u64), (0x1001, 4096), (0x10, 1)]
        .into_iter()
        .enumerate()
    {
        let access = DmaAccess::new(addr, count);
        // The request is the same bytes in both layouts.
        assert_eq!(
            access.encode_read_request(DmaLayout::Qemu),
            access.encode_read_request(DmaLayout::Spec)
        );
        let req = MessageBuilder::request(i as u16, Command::DmaRead)
            .bytes(&access.encode_read_request(DmaLayout::Qemu))
            .finish()
            .expect("fits");
        writer.send(&req, &[]).expect("send");
        let Received::Message(m) = reader.receive().expect("receive") else {
            panic!("expected a message");
        };
        assert!(m.header.is_reply());
        assert_eq!(m.header.size() as u64, 32 + count);
        let data = access
            .decode_read_reply(&m.payload, m.fds.len(), DmaLayout::Qemu)
            .expect("decodes");
        assert_eq!(data, &guest[addr as usize..(addr + count) as usize]);
        // Read with the spec layout, QEMU's data sits in the count's high half.
        if guest[addr as usize..addr as usize + 4] != [0, 0, 0, 0] {
            let err = access
                .decode_read_reply(&m.payload, 0, DmaLayout::Spec)
                .expect_err("wrong layout");
            assert_eq!(err.errno(), libc::EINVAL);
        }
    }
    client_thread.join().expect("client");
}

/// QEMU answers a DMA request that carries descriptors with EINVAL; vdma never sends one, and
/// the transport passes a DMA_MAP's descriptor through with QEMU's message bytes.
#[test]
fn qemu_dma_map_with_descriptor_over_the_wire() {
    let (qemu, mut server) = Connection::pair(Limits::default()).expect("pair");
    let (memfd_stand_in, _other) = UnixStream::pair().expect("pair");
    let map = C::header(8, 2, 48, 0)
        .u32(32)
        .u32(3)
        .u64(0)
        .u64(0)
        .u64(0x8000_0000)
        .0;
    qemu.send(&map, &[memfd_stand_in.as_fd()]).expect("send");
    let Received::Message(m) = server.receive().expect("receive") else {
        panic!("expected a message");
    };
    let Request::DmaMap(got) = m.request(&DecodeConfig::default()).expect("decodes") else {
        panic!("not DMA_MAP");
    };
    assert_eq!((got.size.get(), m.fds.len()), (0x8000_0000, 1));
}
