//! Writes the seed corpora of the fuzz targets into `fuzz/corpus/` (run from anywhere):
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! `decode`: one valid request of every command (several forms of some), both DMA layouts,
//! and a reply for every command that has one, each made with the crate's encoders and checked
//! to decode. Each file is the target's control byte (descriptor count, transport bit) and the
//! message.
//!
//! `core_ops`: a few operation sequences, encoded with `core_ops::encode`, checked to parse back
//! to the same operations and to pass against the model.
//!
//! `session`: a few whole sessions with the dma-engine (a COPY between memfd mappings; memory
//! without a file, its DMA_READ/DMA_WRITE answered well and badly; dirty logging; a memfd shrunk
//! under a COPY; interrupts; bytes before VERSION), encoded with `session::input::encode`,
//! checked to parse back and to pass the target's checks.

use std::path::{Path, PathBuf};

use vdma::Prot;
use vdma_fuzz::core_ops::{self, Flaw, Kind, Op, Setup};
use vdma_fuzz::session;
use vdma_user::protocol::*;
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

/// The control byte's transport bit.
const TRANSPORT: u8 = 8;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let n = decode_seeds(&root.join("decode"));
    let m = core_ops_seeds(&root.join("core_ops"));
    let k = session_seeds(&root.join("session"));
    println!(
        "wrote {n} decode seeds, {m} core_ops seeds and {k} session seeds under {}",
        root.display()
    );
}

fn fresh(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    dir.to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// decode

struct Seeds {
    dir: PathBuf,
    count: usize,
}

impl Seeds {
    fn write(&mut self, name: &str, control: u8, message: &[u8]) {
        let mut bytes = vec![control];
        bytes.extend_from_slice(message);
        std::fs::write(self.dir.join(name), bytes).unwrap();
        self.count += 1;
    }

    /// A request that must decode with `layout` and `nfds` descriptors.
    fn request(
        &mut self,
        name: &str,
        command: Command,
        payload: &[u8],
        nfds: u8,
        layout: DmaLayout,
    ) {
        let id = command.number() + 0x100;
        let message = MessageBuilder::request(id, command)
            .bytes(payload)
            .finish()
            .unwrap();
        let config = DecodeConfig::new(1 << 20, layout);
        if let Err(e) = Request::decode_message(&message, usize::from(nfds), &config) {
            panic!("seed {name} does not decode: {e}");
        }
        let control = nfds
            | if command.number().is_multiple_of(2) {
                TRANSPORT
            } else {
                0
            };
        self.write(
            &format!("req-{:02}-{name}", command.number()),
            control,
            &message,
        );
    }

    fn reply(&mut self, name: &str, command: Command, payload: &[u8], nfds: u8) {
        let message = MessageBuilder::reply(command.number() + 0x100, command.number())
            .bytes(payload)
            .finish()
            .unwrap();
        self.write(
            &format!("reply-{:02}-{name}", command.number()),
            nfds,
            &message,
        );
    }
}

fn decode_seeds(dir: &Path) -> usize {
    let mut s = Seeds {
        dir: fresh(dir),
        count: 0,
    };
    let spec = DmaLayout::Spec;
    let qemu = DmaLayout::Qemu;

    let caps = Capabilities {
        max_msg_fds: Some(8),
        max_data_xfer_size: Some(1 << 20),
        max_dma_maps: Some(65535),
        pgsizes: Some(4096),
        migration: Some(MigrationCapability {
            pgsize: Some(4096),
            max_bitmap_size: Some(256 << 20),
        }),
        write_multiple: Some(true),
        twin_socket: None,
    };
    let version = Version {
        major: 0,
        minor: 0,
        capabilities: Some(caps),
    };
    s.request(
        "version",
        Command::Version,
        &version.encode().unwrap(),
        0,
        spec,
    );
    let bare = Version::default().encode().unwrap();
    s.request("version-bare", Command::Version, &bare, 0, spec);

    let map = DmaMap::new(0x10_0000, 0x20_0000, 0x1000, Prot::READ_WRITE);
    s.request("dma-map-fd", Command::DmaMap, map.as_bytes(), 1, spec);
    let map = DmaMap::new(0x40_0000, 0x1000, 0, Prot::READ);
    s.request("dma-map", Command::DmaMap, map.as_bytes(), 0, spec);

    let unmap = DmaUnmapRequest {
        unmap: DmaUnmap::new(0x10_0000, 0x20_0000),
        bitmap: None,
    };
    s.request("dma-unmap", Command::DmaUnmap, &unmap.encode(), 0, spec);
    let mut with_bitmap = DmaUnmap::new(0x10_0000, 0x20_0000);
    with_bitmap.flags = U32::new(DMA_UNMAP_FLAG_GET_DIRTY_BITMAP);
    with_bitmap.argsz = U32::new(24 + 16 + 64);
    let unmap = DmaUnmapRequest {
        unmap: with_bitmap,
        bitmap: Some(DmaBitmap {
            pgsize: U64::new(4096),
            size: U64::new(64),
        }),
    };
    s.request(
        "dma-unmap-bitmap",
        Command::DmaUnmap,
        &unmap.encode(),
        0,
        spec,
    );
    let mut all = DmaUnmap::new(0, 0);
    all.flags = U32::new(DMA_UNMAP_FLAG_ALL);
    let unmap = DmaUnmapRequest {
        unmap: all,
        bitmap: None,
    };
    s.request("dma-unmap-all", Command::DmaUnmap, &unmap.encode(), 0, spec);

    s.request(
        "device-info",
        Command::DeviceGetInfo,
        DeviceInfo::request().as_bytes(),
        0,
        spec,
    );
    let info = RegionInfo::request(2, 256);
    s.request(
        "region-info",
        Command::DeviceGetRegionInfo,
        info.as_bytes(),
        0,
        spec,
    );
    let io = RegionIoFds::request(2, 256);
    s.request(
        "region-io-fds",
        Command::DeviceGetRegionIoFds,
        io.as_bytes(),
        0,
        spec,
    );
    let irq = IrqInfo::request(PCI_MSIX_IRQ_INDEX);
    s.request(
        "irq-info",
        Command::DeviceGetIrqInfo,
        irq.as_bytes(),
        0,
        spec,
    );

    let set = SetIrqs {
        set: IrqSet::new(
            IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            PCI_MSIX_IRQ_INDEX,
            0,
            2,
        ),
        action: IrqAction::Trigger,
        data: IrqData::EventFds { assign: true },
    };
    s.request(
        "set-irqs-eventfd",
        Command::DeviceSetIrqs,
        &set.encode(),
        2,
        spec,
    );
    let bools = [1u8, 0, 1];
    let set = SetIrqs {
        set: IrqSet::new(
            IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_MASK,
            PCI_MSI_IRQ_INDEX,
            1,
            3,
        ),
        action: IrqAction::Mask,
        data: IrqData::Bool(&bools),
    };
    s.request(
        "set-irqs-bool",
        Command::DeviceSetIrqs,
        &set.encode(),
        0,
        spec,
    );

    let read = RegionAccess::new(0, 0x10, 4);
    s.request("region-read", Command::RegionRead, read.as_bytes(), 0, spec);
    let write = RegionAccess::new(0, 0x10, 0).encode_with_data(b"abcd");
    s.request("region-write", Command::RegionWrite, &write, 0, spec);

    for (layout, name) in [(spec, "spec"), (qemu, "qemu")] {
        let read = DmaAccess::new(0x2000, 8).encode_read_request(layout);
        s.request(
            &format!("dma-read-{name}"),
            Command::DmaRead,
            &read,
            0,
            layout,
        );
        let write = DmaAccess::encode_write_request(0x2000, b"dma bytes", layout);
        s.request(
            &format!("dma-write-{name}"),
            Command::DmaWrite,
            &write,
            0,
            layout,
        );
    }

    s.request("device-reset", Command::DeviceReset, &[], 0, spec);
    let multi = encode_write_multi(&[WriteOne::new(0, 0, b"ab"), WriteOne::new(1, 8, &[7; 8])]);
    s.request("write-multi", Command::RegionWriteMulti, &multi, 0, spec);

    let feature = |flags: u32, data: &[u8]| encode_feature(flags, data);
    let get = FEATURE_GET | u32::from(FEATURE_MIGRATION);
    s.request(
        "feature-get-migration",
        Command::DeviceFeature,
        &feature(get, &[0; 8]),
        0,
        spec,
    );
    let state = MigDeviceState {
        device_state: U32::new(DeviceState::StopCopy as u32),
        data_fd: U32::new(0),
    };
    let set = FEATURE_SET | u32::from(FEATURE_MIG_DEVICE_STATE);
    let payload = feature(set, state.as_bytes());
    s.request(
        "feature-set-state",
        Command::DeviceFeature,
        &payload,
        0,
        spec,
    );
    let mut start = DmaLoggingControl {
        page_size: U64::new(4096),
        num_ranges: U32::new(2),
        reserved: U32::new(0),
    }
    .as_bytes()
    .to_vec();
    start.extend_from_slice(
        [
            DmaLoggingRange::new(0, 0x10_0000),
            DmaLoggingRange::new(0x20_0000, 0x1000),
        ]
        .as_bytes(),
    );
    let set = FEATURE_SET | u32::from(FEATURE_DMA_LOGGING_START);
    s.request(
        "feature-logging-start",
        Command::DeviceFeature,
        &feature(set, &start),
        0,
        spec,
    );
    let report = DmaLoggingReport {
        iova: U64::new(0),
        length: U64::new(0x10_0000),
        page_size: U64::new(4096),
    };
    let mut payload = feature(
        FEATURE_GET | u32::from(FEATURE_DMA_LOGGING_REPORT),
        report.as_bytes(),
    );
    // argsz takes the reply's bitmap too: 256 pages, 32 bytes.
    payload[..4].copy_from_slice(&(8u32 + 24 + 32).to_le_bytes());
    s.request(
        "feature-logging-report",
        Command::DeviceFeature,
        &payload,
        0,
        spec,
    );
    let probe = FEATURE_PROBE | FEATURE_SET | u32::from(FEATURE_DMA_LOGGING_STOP);
    s.request(
        "feature-probe",
        Command::DeviceFeature,
        &feature(probe, &[]),
        0,
        spec,
    );

    let read = MigData::new(64);
    s.request(
        "mig-data-read",
        Command::MigDataRead,
        read.as_bytes(),
        0,
        spec,
    );
    let write = MigData::encode_with_data(b"device state");
    s.request("mig-data-write", Command::MigDataWrite, &write, 0, spec);

    // Replies.
    let reply_version = Version {
        major: 0,
        minor: 0,
        capabilities: Some(Capabilities {
            max_msg_fds: Some(1),
            ..Capabilities::default()
        }),
    };
    s.reply(
        "version",
        Command::Version,
        &reply_version.encode().unwrap(),
        0,
    );
    let unmap_reply = DmaUnmapReply {
        unmap: with_bitmap,
        bitmap: Some((
            DmaBitmap {
                pgsize: U64::new(4096),
                size: U64::new(8),
            },
            vec![0xff, 1, 0, 0, 0, 0, 0, 0x80],
        )),
    };
    s.reply(
        "dma-unmap-bitmap",
        Command::DmaUnmap,
        &unmap_reply.encode(),
        0,
    );
    let info = DeviceInfo::reply(DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET, 9, 5);
    s.reply("device-info", Command::DeviceGetInfo, info.as_bytes(), 0);
    let region = RegionInfoReply {
        argsz: 0,
        flags: REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE | REGION_INFO_FLAG_MMAP,
        index: 2,
        size: 0x4000,
        offset: 0,
        caps: vec![
            RegionCap::SparseMmap(vec![SparseMmapArea::new(0x1000, 0x3000)]),
            RegionCap::Type {
                kind: 3,
                subtype: 1,
            },
        ],
    };
    s.reply(
        "region-info",
        Command::DeviceGetRegionInfo,
        &region.encode(u32::MAX),
        1,
    );
    let io = RegionIoFdsReply {
        index: 2,
        sub_regions: vec![SubRegionIoFd {
            offset: U64::new(0x40),
            size: U64::new(4),
            fd_index: U32::new(0),
            kind: U32::new(IO_FD_TYPE_IOEVENTFD),
            flags: U32::new(0),
            padding: U32::new(0),
            data: U64::new(0),
        }],
    };
    s.reply(
        "region-io-fds",
        Command::DeviceGetRegionIoFds,
        &io.encode(u32::MAX),
        1,
    );
    let irq = IrqInfo::reply(PCI_MSIX_IRQ_INDEX, IRQ_INFO_EVENTFD, 16);
    s.reply("irq-info", Command::DeviceGetIrqInfo, irq.as_bytes(), 0);
    let read = RegionAccess::new(0, 0x10, 4).encode_with_data(b"wxyz");
    s.reply("region-read", Command::RegionRead, &read, 0);
    let write = RegionAccess::new(0, 0x10, 4);
    s.reply("region-write", Command::RegionWrite, write.as_bytes(), 0);
    for (layout, name) in [(spec, "spec"), (qemu, "qemu")] {
        let read = DmaAccess::encode_read_reply(0x2000, b"8 bytes!", layout);
        s.reply(&format!("dma-read-{name}"), Command::DmaRead, &read, 0);
        let write = DmaAccess::new(0x2000, 9).encode_write_reply(layout);
        s.reply(&format!("dma-write-{name}"), Command::DmaWrite, &write, 0);
    }
    let migration = FeatureMigration {
        flags: U64::new(MIGRATION_STOP_COPY | MIGRATION_PRE_COPY),
    };
    let payload = encode_feature(get, migration.as_bytes());
    s.reply("feature-migration", Command::DeviceFeature, &payload, 0);
    let mut data = report.as_bytes().to_vec();
    data.extend_from_slice(&[0x0f; 32]);
    let payload = encode_feature(FEATURE_GET | u32::from(FEATURE_DMA_LOGGING_REPORT), &data);
    s.reply(
        "feature-logging-report",
        Command::DeviceFeature,
        &payload,
        0,
    );
    let mut mig = MigData::encode_with_data(b"state bytes");
    // A reply to a read of 64 bytes that got 11.
    mig[..4].copy_from_slice(&(8u32 + 64).to_le_bytes());
    s.reply("mig-data-read", Command::MigDataRead, &mig, 0);
    s.count
}

// ---------------------------------------------------------------------------------------------
// core_ops

fn map(page: u8, pages: u8, prot: u8, kind: Kind) -> Op {
    Op::Map {
        page,
        pages,
        prot,
        kind,
        offset_pages: 1,
        flaw: Flaw::None,
        fill: page.wrapping_mul(31),
    }
}

fn core_ops_seeds(dir: &Path) -> usize {
    let dir = fresh(dir);
    let across = |at: u16| Op::Write {
        at,
        len: 6000,
        device: true,
        fill: 9,
    };
    let read = |at: u16, len: u16| Op::Read {
        at,
        len,
        device: false,
    };
    let cases: Vec<(&str, Setup, Vec<Op>)> = vec![
        (
            "adjacent-kinds",
            Setup {
                window: 0,
                max_entries: 6,
            },
            vec![
                map(0, 1, 3, Kind::Owned),
                map(2, 1, 3, Kind::File),
                map(4, 1, 3, Kind::Msg),
                across(0x1800),
                read(0x0800, 8000),
                read(0x6000, 300),
                Op::Unmap {
                    page: 3,
                    pages: 1,
                    flaw: 0,
                },
                read(0x1000, 100),
                Op::UnmapAll,
                read(0, 1),
            ],
        ),
        (
            "top-of-space",
            Setup {
                window: 2,
                max_entries: 3,
            },
            vec![
                map(12, 3, 3, Kind::File),
                map(8, 3, 1, Kind::Owned),
                across(0xf000),
                read(0xfff0, 0x20),
                read(0xbff0, 0x20),
                Op::Unmap {
                    page: 13,
                    pages: 4,
                    flaw: 0,
                },
            ],
        ),
        (
            "dirty",
            Setup {
                window: 1,
                max_entries: 5,
            },
            vec![
                map(0, 3, 3, Kind::Owned),
                map(4, 3, 3, Kind::Msg),
                Op::DirtyStart { size: 1 },
                across(0x3000),
                Op::DirtyReport {
                    page: 1,
                    pages: 7,
                    other: false,
                },
                across(0x0100),
                Op::UnmapDirty { page: 1, pages: 3 },
                Op::DirtyReport {
                    page: 1,
                    pages: 7,
                    other: true,
                },
                Op::DirtyStop,
                Op::DirtyStart { size: 4 },
            ],
        ),
        (
            "flaws",
            Setup {
                window: 0,
                max_entries: 0,
            },
            vec![
                Op::Map {
                    page: 1,
                    pages: 1,
                    prot: 3,
                    kind: Kind::File,
                    offset_pages: 0,
                    flaw: Flaw::Short,
                    fill: 1,
                },
                Op::Map {
                    page: 1,
                    pages: 1,
                    prot: 0,
                    kind: Kind::Owned,
                    offset_pages: 0,
                    flaw: Flaw::None,
                    fill: 1,
                },
                Op::Map {
                    page: 1,
                    pages: 1,
                    prot: 2,
                    kind: Kind::Owned,
                    offset_pages: 0,
                    flaw: Flaw::IovaOff,
                    fill: 1,
                },
                map(1, 1, 2, Kind::Owned),
                map(2, 1, 1, Kind::Owned),
                map(3, 1, 1, Kind::Owned),
                read(0x1000, 10),
                across(0x1f00),
                Op::Unmap {
                    page: 2,
                    pages: 0,
                    flaw: 6,
                },
            ],
        ),
    ];
    for (name, setup, ops) in &cases {
        let bytes = core_ops::encode(setup, ops);
        let (s, o) = core_ops::parse(&bytes).expect("a setup");
        assert_eq!((&s, &o), (setup, ops), "seed {name} does not parse back");
        core_ops::run(&bytes);
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    cases.len()
}

// ---------------------------------------------------------------------------------------------
// session

mod session_seeds {
    use vdma::Prot;
    use vdma_cli::dma_engine::registers::{
        CMD_COPY, CMD_FILL, DST_LO, IRQ_ENABLE, IRQ_STATUS, LEN, PATTERN, SRC_LO, STATUS,
    };
    use vdma_fuzz::session::input::{command_selector, Fd, Input, Op, Setup};
    use vdma_fuzz::session::messages::framed::{NO_REPLY, RAW_FIELDS};
    use vdma_fuzz::session::peer::Reply;
    use vdma_user::protocol::*;
    use zerocopy::little_endian::{U32, U64};
    use zerocopy::IntoBytes;

    /// Setup flags: VERSION with libvfio-user's capabilities, 4 KiB transfers, settle at the end.
    pub const SPEC: u8 = 0x20;
    /// The same with QEMU's capabilities.
    pub const QEMU: u8 = 0x24;

    pub fn framed(command: Command, payload: &[u8], fds: Vec<Fd>) -> Op {
        framed_flags(command, 0, payload, fds)
    }

    pub fn framed_flags(command: Command, flags: u8, payload: &[u8], fds: Vec<Fd>) -> Op {
        Op::Framed {
            command: command_selector(command.number()),
            flags,
            payload: payload.to_vec(),
            fds,
        }
    }

    /// DMA_MAP of `size` bytes at `iova`, of a new memfd of `kib` KiB or without a file.
    pub fn map(iova: u64, size: u64, memfd_kib: Option<u8>) -> Op {
        let fds = memfd_kib.map_or(vec![], |k| vec![Fd::Memfd { size: k - 1 }]);
        framed(
            Command::DmaMap,
            DmaMap::new(iova, size, 0, Prot::READ_WRITE).as_bytes(),
            fds,
        )
    }

    pub fn unmap(iova: u64, size: u64) -> Op {
        framed(
            Command::DmaUnmap,
            DmaUnmap::new(iova, size).as_bytes(),
            vec![],
        )
    }

    /// A 64-bit register write (32-bit if `value` fits and `offset` is not 8-aligned).
    pub fn reg(offset: u64, value: u64) -> Op {
        Op::RegionWrite {
            region: 0,
            offset: offset as u16,
            width: if offset.is_multiple_of(8) { 3 } else { 2 },
            value,
        }
    }

    /// SRC, DST, then LEN and CMD in one 64-bit write (which starts the command).
    pub fn command(cmd: u32, src: u64, dst: u64, len: u32) -> Vec<Op> {
        vec![
            reg(SRC_LO, src),
            reg(DST_LO, dst),
            reg(LEN, u64::from(cmd) << 32 | u64::from(len)),
            Op::WaitIdle,
        ]
    }

    pub fn read_reg(offset: u64) -> Op {
        framed(
            Command::RegionRead,
            RegionAccess::new(0, offset, 4).as_bytes(),
            vec![],
        )
    }

    /// What each seed must have done.
    pub fn check(name: &str, outcome: &vdma_fuzz::session::Outcome) {
        use vdma_cli::dma_engine::registers::{STATUS_DONE, STATUS_ERROR};
        let (idle, done, error) = (0, STATUS_DONE, STATUS_ERROR);
        // The last is the settling at the end. Bad answers (timeouts) make no promise.
        let want: &[u32] = match name {
            "memfd-copy" => &[done, error, error],
            "msg-dma-spec" | "msg-dma-qemu" => &[done, done, done],
            "dirty-logging" => &[done, done],
            "memfd-shrunk" => &[error, done, done],
            "irqs-and-fds" => &[done, idle],
            _ => &[],
        };
        if name.starts_with("msg-dma") {
            assert!(outcome.dma_requests >= 9, "{name}: {outcome:?}");
        }
        if !want.is_empty() {
            assert_eq!(outcome.statuses, want, "{name}: {outcome:?}");
        }
    }

    pub fn seeds() -> Vec<(&'static str, Input)> {
        let mut out = Vec::new();

        // A COPY between two memfd mappings, with the interrupt enabled; unmapped after.
        let mut ops = vec![
            map(0x10_0000, 0x10000, Some(64)),
            map(0x20_0000, 0x4000, Some(16)),
            reg(IRQ_ENABLE, 1),
        ];
        ops.extend(command(CMD_COPY, 0x10_0010, 0x20_0100, 0x1000));
        ops.extend([
            read_reg(STATUS),
            reg(IRQ_STATUS, 1),
            unmap(0x10_0000, 0x10000),
        ]);
        // A COPY that ends past its mapping: EINVAL.
        ops.extend(command(CMD_COPY, 0x20_0000, 0x20_3f00, 0x1000));
        out.push((
            "memfd-copy",
            Input {
                setup: Setup { flags: SPEC },
                script: vec![],
                ops,
            },
        ));

        // Memory without a file in both directions, 10000 bytes in 4 KiB DMA_READs and
        // DMA_WRITEs, answered correctly; then a FILL.
        let mut ops = vec![map(0x4000_0000, 0x10000, None)];
        ops.extend(command(CMD_COPY, 0x4000_0010, 0x4000_8000, 10000));
        ops.extend(command(CMD_FILL, 0, 0x4000_0000, 0x3000));
        for (name, flags) in [("msg-dma-spec", SPEC), ("msg-dma-qemu", QEMU)] {
            out.push((
                name,
                Input {
                    setup: Setup { flags },
                    script: vec![],
                    ops: ops.clone(),
                },
            ));
        }

        // The same, with every kind of bad answer in turn (and a memfd mapping on the other
        // side, so some copies get through).
        let mut ops = vec![
            map(0x4000_0000, 0x10000, None),
            map(0x10_0000, 0x10000, Some(64)),
            reg(PATTERN, 0xdead_beef),
        ];
        for _ in 0..6 {
            ops.extend(command(CMD_COPY, 0x4000_0000, 0x10_0000, 0x2000));
            ops.extend(command(CMD_COPY, 0x10_0000, 0x4000_2000, 0x2000));
        }
        ops.push(unmap(0x4000_0000, 0x10000));
        let mut script = vec![
            Reply::Correct.byte(),
            Reply::Correct.byte(),
            Reply::Error.byte(),
            Reply::Error.byte() | 3 << 3,
            Reply::LateOrTwice.byte() | 1 << 3,
            Reply::Silent.byte(),
            Reply::LateOrTwice.byte(),
            Reply::Correct.byte(),
        ];
        for kind in 0..5u8 {
            script.push(Reply::Garbage.byte() | kind << 3);
        }
        // Last: a header announcing more than comes; the framing is lost.
        script.push(Reply::Garbage.byte() | 5 << 3);
        out.push((
            "msg-dma-bad-answers",
            Input {
                setup: Setup { flags: QEMU },
                script,
                ops,
            },
        ));

        // Dirty logging: start, a FILL into the memfd mapping, a report, an unmap with the
        // bitmap, stop. The report and the unmap carry argsz with their bitmaps (raw fields).
        let mut start = DmaLoggingControl {
            page_size: U64::new(4096),
            num_ranges: U32::new(1),
            reserved: U32::new(0),
        }
        .as_bytes()
        .to_vec();
        start.extend_from_slice(DmaLoggingRange::new(0x10_0000, 0x10000).as_bytes());
        let logging = |feature: u16, data: &[u8]| {
            let kind = if feature == FEATURE_DMA_LOGGING_REPORT {
                FEATURE_GET
            } else {
                FEATURE_SET
            };
            encode_feature(kind | u32::from(feature), data)
        };
        let report = DmaLoggingReport {
            iova: U64::new(0x10_0000),
            length: U64::new(0x10000),
            page_size: U64::new(4096),
        };
        let mut report = logging(FEATURE_DMA_LOGGING_REPORT, report.as_bytes());
        // 16 pages: 2 bytes of bitmap, rounded to 8.
        report[..4].copy_from_slice(&(8u32 + 24 + 8).to_le_bytes());
        let mut with_bitmap = DmaUnmap::new(0x10_0000, 0x10000);
        with_bitmap.flags = U32::new(DMA_UNMAP_FLAG_GET_DIRTY_BITMAP);
        with_bitmap.argsz = U32::new(24 + 16 + 8);
        let unmap_bitmap = DmaUnmapRequest {
            unmap: with_bitmap,
            bitmap: Some(DmaBitmap {
                pgsize: U64::new(4096),
                size: U64::new(8),
            }),
        };
        let mut ops = vec![
            map(0x10_0000, 0x10000, Some(64)),
            framed(
                Command::DeviceFeature,
                &logging(FEATURE_DMA_LOGGING_START, &start),
                vec![],
            ),
        ];
        ops.extend(command(CMD_FILL, 0, 0x10_3000, 0x2000));
        ops.extend([
            framed_flags(Command::DeviceFeature, RAW_FIELDS, &report, vec![]),
            framed_flags(
                Command::DmaUnmap,
                RAW_FIELDS,
                &unmap_bitmap.encode(),
                vec![],
            ),
            framed(
                Command::DeviceFeature,
                &logging(FEATURE_DMA_LOGGING_STOP, &[]),
                vec![],
            ),
        ]);
        out.push((
            "dirty-logging",
            Input {
                setup: Setup { flags: QEMU },
                script: vec![],
                ops,
            },
        ));

        // A memfd shrunk under its mapping: the COPY fails with EFAULT, a new mapping works.
        let mut ops = vec![map(0x10_0000, 0x8000, Some(32))];
        ops.push(Op::Truncate { memfd: 0, size: 0 });
        ops.extend(command(CMD_COPY, 0x10_0000, 0x10_4000, 0x1000));
        ops.push(read_reg(vdma_cli::dma_engine::registers::ERRNO));
        ops.push(map(0x20_0000, 0x4000, Some(16)));
        ops.extend(command(CMD_COPY, 0x20_0000, 0x20_2000, 0x1000));
        out.push((
            "memfd-shrunk",
            Input {
                setup: Setup { flags: SPEC },
                script: vec![],
                ops,
            },
        ));

        // Interrupts: an eventfd for INTx, a FILL that raises it; DEVICE_RESET; then too many
        // descriptors on one message, and descriptors on a command that takes none.
        let set = SetIrqs {
            set: IrqSet::new(
                IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
                PCI_INTX_IRQ_INDEX,
                0,
                1,
            ),
            action: IrqAction::Trigger,
            data: IrqData::EventFds { assign: true },
        };
        let mut ops = vec![
            framed(Command::DeviceSetIrqs, &set.encode(), vec![Fd::EventFd]),
            map(0x10_0000, 0x1000, Some(4)),
            reg(IRQ_ENABLE, 1),
        ];
        ops.extend(command(CMD_FILL, 0, 0x10_0000, 0x100));
        ops.extend([
            framed(Command::DeviceReset, &[], vec![]),
            framed(
                Command::DmaMap,
                DmaMap::new(0x30_0000, 0x1000, 0, Prot::READ).as_bytes(),
                vec![
                    Fd::LastMemfd,
                    Fd::DevNull,
                    Fd::EventFd,
                    Fd::Memfd { size: 0 },
                    Fd::DevNull,
                ],
            ),
            framed(
                Command::DeviceGetInfo,
                DeviceInfo::request().as_bytes(),
                vec![Fd::DevNull],
            ),
            framed(
                Command::DmaMap,
                DmaMap::new(0x40_0000, 0x1000, 0, Prot::READ).as_bytes(),
                vec![Fd::DevNull],
            ),
            framed_flags(
                Command::DeviceGetIrqInfo,
                NO_REPLY,
                IrqInfo::request(PCI_INTX_IRQ_INDEX).as_bytes(),
                vec![],
            ),
        ]);
        out.push((
            "irqs-and-fds",
            Input {
                setup: Setup { flags: SPEC },
                script: vec![],
                ops,
            },
        ));

        // No VERSION from the harness: a command first, then the fuzzer's own VERSION, then a
        // message whose header lies about its size.
        let version = Version {
            major: 0,
            minor: 0,
            capabilities: None,
        }
        .encode()
        .unwrap();
        let mut lie = MessageBuilder::request(9, Command::RegionRead)
            .bytes(RegionAccess::new(0, 0, 4).as_bytes())
            .finish()
            .unwrap();
        lie[4..8].copy_from_slice(&1000u32.to_le_bytes());
        out.push((
            "no-version",
            Input {
                setup: Setup { flags: 3 },
                script: vec![],
                ops: vec![
                    framed(
                        Command::DeviceGetInfo,
                        DeviceInfo::request().as_bytes(),
                        vec![],
                    ),
                    framed(Command::Version, &version, vec![]),
                    Op::Sync,
                    Op::Raw {
                        bytes: lie,
                        fds: vec![Fd::DevNull],
                    },
                ],
            },
        ));
        out
    }
}

fn session_seeds(dir: &Path) -> usize {
    let dir = fresh(dir);
    let seeds = session_seeds::seeds();
    for (name, input) in &seeds {
        let bytes = session::input::encode(input);
        assert_eq!(
            &session::input::parse(&bytes),
            input,
            "seed {name} does not parse back"
        );
        let outcome = session::session(input, true);
        println!("session seed {name}: {outcome:?}");
        // The two that end with a broken message end with the framing lost. After the
        // lying header of the last bad answer the server reads the next bytes as its rest and
        // then takes whatever follows for a header: too small (FramingLost), or too large
        // (drained until the client closes: Truncated), by where the answer fell among the
        // client's messages.
        let want: &[&str] = match *name {
            "msg-dma-bad-answers" => &["FramingLost", "Truncated"],
            "no-version" => &["Truncated"],
            _ => &["Closed"],
        };
        assert!(
            want.iter().any(|w| outcome.end.contains(w)),
            "{name}: {outcome:?}"
        );
        session_seeds::check(name, &outcome);
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    seeds.len()
}
