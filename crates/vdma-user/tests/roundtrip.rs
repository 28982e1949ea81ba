//! Every message encodes to bytes that decode back to it: requests through
//! `Request::decode_message`, replies through their own decoders. Proptest covers the header
//! and a few payloads.

use proptest::prelude::*;
use vdma::Prot;
use vdma_user::protocol::*;
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

fn config() -> DecodeConfig {
    DecodeConfig::default()
}

fn request_bytes(id: u16, command: Command, payload: &[u8]) -> Vec<u8> {
    MessageBuilder::request(id, command)
        .bytes(payload)
        .finish()
        .expect("small message")
}

/// Encodes `payload` as a `command` request, decodes it, and checks the header came back.
fn decode(command: Command, payload: &[u8], nfds: usize) -> Request<'static> {
    let bytes: &'static [u8] = Box::leak(request_bytes(42, command, payload).into_boxed_slice());
    let (header, request) = Request::decode_message(bytes, nfds, &config()).expect("decodes");
    assert_eq!(header.msg_id(), 42);
    assert_eq!(header.command().expect("known"), command);
    assert_eq!(header.size() as usize, 16 + payload.len());
    assert_eq!(request.command(), command);
    request
}

#[test]
fn version_round_trip() {
    let v = Version {
        major: 0,
        minor: 0,
        capabilities: Some(Capabilities {
            max_msg_fds: Some(8),
            max_data_xfer_size: Some(1 << 20),
            max_dma_maps: Some(65535),
            pgsizes: Some(4096),
            migration: Some(MigrationCapability {
                pgsize: Some(4096),
                max_bitmap_size: Some(256 << 20),
            }),
            write_multiple: Some(true),
            twin_socket: Some(TwinSocket {
                supported: Some(true),
                fd_index: Some(0),
            }),
        }),
    };
    let payload = v.encode().expect("encodes");
    assert_eq!(payload.last(), Some(&0));
    assert_eq!(decode(Command::Version, &payload, 0), Request::Version(v));
    // No JSON at all.
    let bare = Version::default();
    let payload = bare.encode().expect("encodes");
    assert_eq!(payload.len(), 4);
    assert_eq!(
        decode(Command::Version, &payload, 0),
        Request::Version(bare)
    );
}

#[test]
fn version_reply_fits_qemu_buffer() {
    // Everything QEMU reads back, compact: must fit in QEMU's 214-byte request buffer.
    let reply = Version {
        major: 0,
        minor: 0,
        capabilities: Some(Capabilities {
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
        }),
    };
    let bytes = MessageBuilder::reply(0, 1)
        .bytes(&reply.encode().expect("encodes"))
        .finish()
        .expect("small");
    assert!(bytes.len() <= 214, "{} bytes", bytes.len());
}

#[test]
fn unknown_capability_keys_are_ignored() {
    let json = br#"{"capabilities":{"max_msg_fds":4,"shiny_new":{"x":[1,2]}},"other":1}"#;
    let mut payload = vec![0, 0, 0, 0];
    payload.extend_from_slice(json);
    payload.push(0);
    let v = Version::decode(&payload, 0).expect("decodes");
    let caps = v.capabilities.expect("has capabilities");
    assert_eq!(caps.max_msg_fds, Some(4));
    assert_eq!(caps.max_data_xfer_size_or_default(), 1 << 20);
}

#[test]
fn capability_of_wrong_type_is_einval() {
    for json in [
        r#"{"capabilities":{"max_msg_fds":"8"}}"#,
        r#"{"capabilities":{"max_msg_fds":-1}}"#,
        r#"{"capabilities":{"max_msg_fds":1.5}}"#,
        r#"{"capabilities":{"max_msg_fds":4294967296}}"#,
        r#"{"capabilities":{"max_msg_fds":null}}"#,
        r#"{"capabilities":{"write_multiple":1}}"#,
        r#"{"capabilities":{"migration":[4096]}}"#,
        r#"{"capabilities":{"migration":{"pgsize":true}}}"#,
        r#"{"capabilities":[8,1048576]}"#,
        r#"[]"#,
        r#"{"capabilities":{"#,
    ] {
        let mut payload = vec![0, 0, 0, 0];
        payload.extend_from_slice(json.as_bytes());
        payload.push(0);
        let err = Version::decode(&payload, 0).expect_err(json);
        assert_eq!(err.errno(), libc::EINVAL, "{json}: {err}");
    }
}

#[test]
fn dma_map_and_unmap_round_trip() {
    let map = DmaMap::new(0x1_0000_0000, 0x20_0000, 0x1000, Prot::READ);
    assert_eq!(
        decode(Command::DmaMap, map.as_bytes(), 1),
        Request::DmaMap(map)
    );
    assert_eq!(
        decode(Command::DmaMap, map.as_bytes(), 0),
        Request::DmaMap(map)
    );

    let plain = DmaUnmapRequest {
        unmap: DmaUnmap::new(0x1000, 0x2000),
        bitmap: None,
    };
    assert_eq!(
        decode(Command::DmaUnmap, &plain.encode(), 0),
        Request::DmaUnmap(plain)
    );

    let mut all = DmaUnmap::new(0, 0);
    all.flags = U32::new(DMA_UNMAP_FLAG_ALL);
    let all = DmaUnmapRequest {
        unmap: all,
        bitmap: None,
    };
    assert_eq!(
        decode(Command::DmaUnmap, &all.encode(), 0),
        Request::DmaUnmap(all)
    );

    let mut dirty = DmaUnmap::new(0x10_0000, 0x10_0000);
    dirty.flags = U32::new(DMA_UNMAP_FLAG_GET_DIRTY_BITMAP);
    dirty.argsz = U32::new(24 + 16 + 32);
    let bitmap = DmaBitmap {
        pgsize: U64::new(4096),
        size: U64::new(32),
    };
    let dirty_req = DmaUnmapRequest {
        unmap: dirty,
        bitmap: Some(bitmap),
    };
    assert_eq!(
        decode(Command::DmaUnmap, &dirty_req.encode(), 0),
        Request::DmaUnmap(dirty_req)
    );

    let reply = DmaUnmapReply {
        unmap: dirty,
        bitmap: Some((bitmap, (0..32).collect())),
    };
    assert_eq!(
        DmaUnmapReply::decode(&reply.encode(), 0).expect("decodes"),
        reply
    );
    let plain_reply = DmaUnmapReply {
        unmap: plain.unmap,
        bitmap: None,
    };
    assert_eq!(
        DmaUnmapReply::decode(&plain_reply.encode(), 0).expect("decodes"),
        plain_reply
    );
}

#[test]
fn device_info_round_trip() {
    let req = DeviceInfo::request();
    assert_eq!(
        decode(Command::DeviceGetInfo, req.as_bytes(), 0),
        Request::DeviceGetInfo(req)
    );
    let reply = DeviceInfo::reply(DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET, 9, 5);
    assert_eq!(
        DeviceInfo::decode_reply(reply.as_bytes(), 0).expect("decodes"),
        reply
    );
}

#[test]
fn region_info_round_trip_with_capability_chain() {
    let req = RegionInfo::request(2, 32);
    assert_eq!(
        decode(Command::DeviceGetRegionInfo, req.as_bytes(), 0),
        Request::DeviceGetRegionInfo(req)
    );
    let reply = RegionInfoReply {
        argsz: 0,
        flags: REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE | REGION_INFO_FLAG_MMAP,
        index: 2,
        size: 0x4000,
        offset: 0x1_0000,
        caps: vec![
            RegionCap::SparseMmap(vec![
                SparseMmapArea::new(0x1000, 0x1000),
                SparseMmapArea::new(0x3000, 0x1000),
            ]),
            RegionCap::Type {
                kind: 1,
                subtype: 3,
            },
            RegionCap::Other {
                id: 9,
                version: 2,
                body: vec![1, 2, 3, 4, 5, 6, 7, 8],
            },
        ],
    };
    let full = reply.encode(4096);
    let back = RegionInfoReply::decode(&full, 1).expect("decodes");
    assert_eq!(back.argsz as usize, full.len());
    assert_eq!(back.flags, reply.flags | REGION_INFO_FLAG_CAPS);
    assert_eq!(back.caps, reply.caps);
    assert_eq!((back.index, back.size, back.offset), (2, 0x4000, 0x1_0000));

    // A request for 32 bytes gets the structure alone, with the size it needs.
    let cut = reply.encode(32);
    assert_eq!(cut.len(), 32);
    let back = RegionInfoReply::decode(&cut, 1).expect("decodes");
    assert_eq!(back.argsz as usize, full.len());
    assert_eq!(back.flags & REGION_INFO_FLAG_CAPS, 0);
    assert!(back.caps.is_empty());
}

#[test]
fn region_io_fds_round_trip() {
    let req = RegionIoFds::request(0, 1024);
    assert_eq!(
        decode(Command::DeviceGetRegionIoFds, req.as_bytes(), 0),
        Request::DeviceGetRegionIoFds(req)
    );
    let sub = SubRegionIoFd {
        offset: U64::new(0x100),
        size: U64::new(4),
        fd_index: U32::new(0),
        kind: U32::new(IO_FD_TYPE_IOEVENTFD),
        flags: U32::new(0),
        padding: U32::new(0),
        data: U64::new(0xdead),
    };
    let reply = RegionIoFdsReply {
        index: 0,
        sub_regions: vec![sub, sub],
    };
    let (argsz, back) = RegionIoFdsReply::decode(&reply.encode(1024), 1).expect("decodes");
    assert_eq!((argsz, back), (16 + 80, reply.clone()));
    let (argsz, back) = RegionIoFdsReply::decode(&reply.encode(16), 0).expect("decodes");
    assert_eq!(argsz, 96);
    assert!(back.sub_regions.is_empty());
}

#[test]
fn irq_round_trip() {
    let req = IrqInfo::request(PCI_MSIX_IRQ_INDEX);
    assert_eq!(
        decode(Command::DeviceGetIrqInfo, req.as_bytes(), 0),
        Request::DeviceGetIrqInfo(req)
    );
    let reply = IrqInfo::reply(PCI_MSIX_IRQ_INDEX, IRQ_INFO_EVENTFD | IRQ_INFO_NORESIZE, 32);
    assert_eq!(
        IrqInfo::decode(reply.as_bytes(), 0).expect("decodes"),
        reply
    );

    let cases: [(u32, u32, usize, &[u8]); 4] = [
        (IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 3, 3, &[]),
        (IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 3, 0, &[]),
        (IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, 1, 0, &[]),
        (IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_MASK, 4, 0, &[1, 0, 1, 1]),
    ];
    for (flags, count, nfds, bools) in cases {
        let set = IrqSet::new(flags, PCI_MSIX_IRQ_INDEX, 2, count);
        let data = if flags & IRQ_SET_DATA_BOOL != 0 {
            IrqData::Bool(bools)
        } else if flags & IRQ_SET_DATA_EVENTFD != 0 {
            IrqData::EventFds { assign: nfds != 0 }
        } else {
            IrqData::None
        };
        let action = if flags & IRQ_SET_ACTION_TRIGGER != 0 {
            IrqAction::Trigger
        } else if flags & IRQ_SET_ACTION_MASK != 0 {
            IrqAction::Mask
        } else {
            IrqAction::Unmask
        };
        let s = SetIrqs { set, action, data };
        let payload = s.encode();
        let Request::DeviceSetIrqs(back) = decode(Command::DeviceSetIrqs, &payload, nfds) else {
            panic!("not SET_IRQS");
        };
        assert_eq!(back.action, action);
        assert_eq!(back.data, data);
        assert_eq!(back.set.count.get(), count);
        assert_eq!(back.set.argsz.get() as usize, payload.len());
    }
}

#[test]
fn region_access_round_trip() {
    let read = RegionAccess::new(7, 0x10, 4);
    assert_eq!(
        decode(Command::RegionRead, read.as_bytes(), 0),
        Request::RegionRead(read)
    );
    let reply = read.encode_with_data(&[1, 2, 3, 4]);
    assert_eq!(
        read.decode_read_reply(&reply).expect("decodes"),
        &[1, 2, 3, 4]
    );

    let data = [9u8; 100];
    let write = RegionAccess::new(0, 0x2000, 0);
    let payload = write.encode_with_data(&data);
    let Request::RegionWrite(access, back) = decode(Command::RegionWrite, &payload, 0) else {
        panic!("not REGION_WRITE");
    };
    assert_eq!((access.count.get(), back), (100, &data[..]));
    assert_eq!(
        access
            .decode_write_reply(access.as_bytes())
            .expect("decodes"),
        100
    );

    let writes = [
        WriteOne::new(0, 0x10, &[1, 2, 3, 4]),
        WriteOne::new(1, 0x20, &[5; 8]),
        WriteOne::new(2, 0x30, &[6]),
    ];
    let Request::RegionWriteMulti(back) =
        decode(Command::RegionWriteMulti, &encode_write_multi(&writes), 0)
    else {
        panic!("not WRITE_MULTI");
    };
    assert_eq!(back, &writes);
    assert_eq!(back[2].bytes(), &[6]);
    let reply = WriteMultiCount {
        wr_cnt: U64::new(3),
    };
    assert_eq!(reply.as_bytes().len(), 8);
}

#[test]
fn dma_access_round_trip_in_both_layouts() {
    for layout in [DmaLayout::Spec, DmaLayout::Qemu] {
        let config = DecodeConfig {
            dma_layout: layout,
            ..DecodeConfig::default()
        };
        let access = DmaAccess::new(0x8000_1000, 64);
        let bytes = request_bytes(1, Command::DmaRead, &access.encode_read_request(layout));
        assert_eq!(bytes.len(), 32);
        let (_, req) = Request::decode_message(&bytes, 0, &config).expect("decodes");
        assert_eq!(req, Request::DmaRead(access));

        let data: Vec<u8> = (0..64).collect();
        let reply = DmaAccess::encode_read_reply(access.addr, &data, layout);
        assert_eq!(reply.len(), 16 + 64);
        assert_eq!(
            access
                .decode_read_reply(&reply, 0, layout)
                .expect("decodes"),
            &data[..]
        );

        let payload = DmaAccess::encode_write_request(access.addr, &data, layout);
        assert_eq!(payload.len(), 16 + 64);
        let bytes = request_bytes(2, Command::DmaWrite, &payload);
        let (_, req) = Request::decode_message(&bytes, 0, &config).expect("decodes");
        assert_eq!(req, Request::DmaWrite(access, &data[..]));

        let reply = access.encode_write_reply(layout);
        access.decode_write_reply(&reply, 0).expect("accepted");
    }
    // Every DMA_WRITE reply form is accepted whatever the layout: empty, u32 and u64 count.
    let access = DmaAccess::new(0x4000, 8);
    let u32_reply = DmaAccessQemu {
        addr: U64::new(0x4000),
        count: U32::new(8),
    };
    let u64_reply = DmaAccessSpec {
        addr: U64::new(0x4000),
        count: U64::new(8),
    };
    for reply in [&[][..], u32_reply.as_bytes(), u64_reply.as_bytes()] {
        access.decode_write_reply(reply, 0).expect("accepted");
    }
}

#[test]
fn reset_round_trip() {
    assert_eq!(decode(Command::DeviceReset, &[], 0), Request::DeviceReset);
}

#[test]
fn device_feature_round_trip() {
    let cases: Vec<(u32, Vec<u8>, FeatureRequest<'static>)> = vec![
        (
            FEATURE_PROBE | FEATURE_GET | u32::from(FEATURE_MIGRATION),
            vec![],
            FeatureRequest::Probe {
                feature: FEATURE_MIGRATION,
                get: true,
                set: false,
            },
        ),
        (
            FEATURE_GET | u32::from(FEATURE_MIGRATION),
            vec![0; 8],
            FeatureRequest::GetMigration,
        ),
        (
            FEATURE_GET | u32::from(FEATURE_MIG_DEVICE_STATE),
            vec![0; 8],
            FeatureRequest::GetMigDeviceState,
        ),
        (
            FEATURE_SET | u32::from(FEATURE_MIG_DEVICE_STATE),
            MigDeviceState {
                device_state: U32::new(3),
                data_fd: U32::new(0),
            }
            .as_bytes()
            .to_vec(),
            FeatureRequest::SetMigDeviceState(DeviceState::StopCopy),
        ),
        (
            FEATURE_SET | u32::from(FEATURE_DMA_LOGGING_STOP),
            vec![],
            FeatureRequest::DmaLoggingStop,
        ),
        (
            FEATURE_GET | u32::from(FEATURE_DMA_LOGGING_REPORT),
            DmaLoggingReport {
                iova: U64::new(0x10_0000),
                length: U64::new(0x40_0000),
                page_size: U64::new(4096),
            }
            .as_bytes()
            .to_vec(),
            FeatureRequest::DmaLoggingReport {
                iova: 0x10_0000,
                length: 0x40_0000,
                page_size: 4096,
            },
        ),
    ];
    for (flags, data, expected) in cases {
        let mut payload = encode_feature(flags, &data);
        // The reply to a GET needs room: give argsz enough for anything.
        payload[..4].copy_from_slice(&65536u32.to_le_bytes());
        let Request::DeviceFeature(back) = decode(Command::DeviceFeature, &payload, 0) else {
            panic!("not DEVICE_FEATURE");
        };
        assert_eq!(back.request, expected);
        assert_eq!(back.flags, flags);
    }

    // START with ranges.
    let ranges = [
        DmaLoggingRange::new(0, 0x10_0000),
        DmaLoggingRange::new(0x20_0000, 0x10_0000),
    ];
    let mut data = DmaLoggingControl {
        page_size: U64::new(4096),
        num_ranges: U32::new(2),
        reserved: U32::new(0),
    }
    .as_bytes()
    .to_vec();
    data.extend_from_slice(ranges.as_bytes());
    let payload = encode_feature(FEATURE_SET | u32::from(FEATURE_DMA_LOGGING_START), &data);
    let Request::DeviceFeature(back) = decode(Command::DeviceFeature, &payload, 0) else {
        panic!("not DEVICE_FEATURE");
    };
    assert_eq!(
        back.request,
        FeatureRequest::DmaLoggingStart {
            page_size: 4096,
            ranges: &ranges,
        }
    );

    // Replies.
    let mig = FeatureMigration {
        flags: U64::new(MIGRATION_STOP_COPY | MIGRATION_PRE_COPY),
    };
    let reply = encode_feature(FEATURE_GET | u32::from(FEATURE_MIGRATION), mig.as_bytes());
    let back = DeviceFeatureReply::decode(&reply, 0).expect("decodes");
    assert_eq!(back.argsz, 16);
    assert_eq!(back.migration().expect("migration"), mig);

    let report = DmaLoggingReport {
        iova: U64::new(0),
        length: U64::new(65 * 4096),
        page_size: U64::new(4096),
    };
    let mut data = report.as_bytes().to_vec();
    data.extend_from_slice(&[0xff; 16]); // 65 pages: two u64 words
    let reply = encode_feature(FEATURE_GET | u32::from(FEATURE_DMA_LOGGING_REPORT), &data);
    let (r, bitmap) = DeviceFeatureReply::decode(&reply, 0)
        .expect("decodes")
        .logging_report()
        .expect("report");
    assert_eq!((r, bitmap.len()), (report, 16));
}

#[test]
fn mig_data_round_trip() {
    let read = MigData::new(4096);
    assert_eq!(
        decode(Command::MigDataRead, read.as_bytes(), 0),
        Request::MigDataRead(read)
    );
    let reply = MigData::encode_with_data(&[7; 100]);
    assert_eq!(read.decode_read_reply(&reply).expect("decodes"), &[7; 100]);

    let payload = MigData::encode_with_data(&[3; 10]);
    let Request::MigDataWrite(m, data) = decode(Command::MigDataWrite, &payload, 0) else {
        panic!("not MIG_DATA_WRITE");
    };
    assert_eq!((m.size.get(), data), (10, &[3u8; 10][..]));
}

#[test]
fn every_command_number_round_trips() {
    for command in Command::ALL {
        assert_eq!(
            Command::from_number(command.number()).expect("known"),
            command
        );
    }
    assert_eq!(
        Command::from_number(14).expect_err("gone").errno(),
        libc::ENOTSUP
    );
    assert_eq!(Command::DmaRead.sender(), Sender::Server);
    assert_eq!(Command::DmaMap.sender(), Sender::Client);
}

#[test]
fn error_reply_echoes_id_and_command() {
    let request = Header::new(0xbeef, 99, 16, 0, 0);
    let reply = Header::parse(&error_reply(&request, libc::ENOTSUP)).expect("header");
    assert_eq!(reply.msg_id(), 0xbeef);
    assert_eq!(reply.command_number(), 99);
    assert!(reply.is_reply() && reply.is_error());
    assert_eq!(reply.error(), libc::ENOTSUP as u32);
    assert_eq!(reply.check(16).expect("valid"), MessageKind::Reply);
}

proptest! {
    #[test]
    fn header_round_trips(id: u16, command: u16, size: u32, flags: u32, error: u32) {
        let h = Header::new(id, command, size, flags, error);
        let bytes = h.to_bytes();
        prop_assert_eq!(Header::parse(&bytes).expect("16 bytes"), h);
        prop_assert_eq!(h.msg_id(), id);
        prop_assert_eq!(h.command_number(), command);
        prop_assert_eq!(h.size(), size);
        prop_assert_eq!(h.flags(), flags);
        prop_assert_eq!(h.error(), error);
        prop_assert_eq!(&bytes[..2], &id.to_le_bytes());
        prop_assert_eq!(&bytes[4..8], &size.to_le_bytes());
    }

    #[test]
    fn header_check_accepts_exactly_the_valid_headers(size: u32, flags: u32) {
        let h = Header::new(0, 1, size, flags, 0);
        let max = 1 << 20;
        let valid = size >= 16
            && size <= max
            && flags & !0x3f == 0
            && (flags & 0xf == 0 && flags & 0x20 == 0 || flags & 0xf == 1 && flags & 0x10 == 0);
        prop_assert_eq!(h.check(max).is_ok(), valid);
    }

    #[test]
    fn builder_sets_size(id: u16, no_reply: bool, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut b = MessageBuilder::request(id, Command::RegionWrite);
        if no_reply {
            b = b.no_reply();
        }
        let bytes = b.bytes(&payload).finish().expect("small");
        let h = Header::parse(&bytes).expect("header");
        prop_assert_eq!(h.size() as usize, bytes.len());
        prop_assert_eq!(h.no_reply(), no_reply);
        prop_assert_eq!(&bytes[16..], &payload[..]);
    }

    #[test]
    fn dma_map_payload_round_trips(addr: u64, size: u64, offset: u64, prot in 1u8..4, fd in 0usize..2) {
        let map = DmaMap::new(addr, size, offset, Prot::from_bits(prot).expect("valid"));
        let bytes = request_bytes(3, Command::DmaMap, map.as_bytes());
        let (_, req) = Request::decode_message(&bytes, fd, &config()).expect("decodes");
        prop_assert_eq!(req, Request::DmaMap(map));
    }

    #[test]
    fn region_write_round_trips(region: u32, offset: u64, data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let payload = RegionAccess::new(region, offset, 0).encode_with_data(&data);
        let bytes = request_bytes(4, Command::RegionWrite, &payload);
        let (_, req) = Request::decode_message(&bytes, 0, &config()).expect("decodes");
        let Request::RegionWrite(access, back) = req else { panic!("not REGION_WRITE") };
        prop_assert_eq!(access.region.get(), region);
        prop_assert_eq!(access.offset.get(), offset);
        prop_assert_eq!(back, &data[..]);
    }

    #[test]
    fn dma_transfers_round_trip(addr: u64, qemu: bool, data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let layout = if qemu { DmaLayout::Qemu } else { DmaLayout::Spec };
        let access = DmaAccess::new(addr, data.len() as u64);
        let reply = DmaAccess::encode_read_reply(addr, &data, layout);
        prop_assert_eq!(access.decode_read_reply(&reply, 0, layout).expect("decodes"), &data[..]);
        let write = DmaAccess::encode_write_request(addr, &data, layout);
        let (back, bytes) = DmaAccess::decode_write_request(&write, 0, layout, 1 << 20).expect("decodes");
        prop_assert_eq!(back, access);
        prop_assert_eq!(bytes, &data[..]);
    }

    #[test]
    fn capabilities_round_trip(fds in proptest::option::of(0u32..64), xfer in proptest::option::of(any::<u64>()),
                               maps in proptest::option::of(any::<u32>()), multi in proptest::option::of(any::<bool>()),
                               pg in proptest::option::of(any::<u64>())) {
        let v = Version {
            major: 0,
            minor: 0,
            capabilities: Some(Capabilities {
                max_msg_fds: fds,
                max_data_xfer_size: xfer,
                max_dma_maps: maps,
                pgsizes: pg,
                migration: pg.map(|p| MigrationCapability { pgsize: Some(p), max_bitmap_size: None }),
                write_multiple: multi,
                twin_socket: None,
            }),
        };
        prop_assert_eq!(Version::decode(&v.encode().expect("encodes"), 0).expect("decodes"), v);
    }
}
