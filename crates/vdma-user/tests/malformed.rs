//! The malformed-message table: every way a peer's message can be wrong gives a typed error
//! with the right errno, and nothing of the message is trusted before it is checked.

use vdma::Prot;
use vdma_user::protocol::*;
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

const EINVAL: i32 = libc::EINVAL;
const E2BIG: i32 = libc::E2BIG;
const ENOTSUP: i32 = libc::ENOTSUP;

fn config() -> DecodeConfig {
    DecodeConfig::default()
}

fn message(command: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    MessageBuilder::new(1, command, flags)
        .bytes(payload)
        .finish()
        .expect("small")
}

fn request(command: Command, payload: &[u8]) -> Vec<u8> {
    message(command.number(), 0, payload)
}

/// Decodes `bytes` with `nfds` descriptors and returns the errno of the failure.
fn errno_of(bytes: &[u8], nfds: usize) -> i32 {
    match Request::decode_message(bytes, nfds, &config()) {
        Ok((_, r)) => panic!("accepted: {r:?}"),
        Err(e) => e.errno(),
    }
}

fn with_u32_at(mut payload: Vec<u8>, at: usize, value: u32) -> Vec<u8> {
    payload[at..at + 4].copy_from_slice(&value.to_le_bytes());
    payload
}

#[test]
fn short_header() {
    for len in [0, 1, 15] {
        let bytes = vec![0u8; len];
        let err = Request::decode_message(&bytes, 0, &config()).expect_err("short");
        assert!(matches!(err, ProtocolError::ShortHeader { .. }), "{err}");
        assert_eq!(err.errno(), EINVAL);
    }
}

#[test]
fn size_below_header() {
    let mut bytes = request(Command::DeviceReset, &[]);
    for size in [0u32, 1, 15] {
        bytes[4..8].copy_from_slice(&size.to_le_bytes());
        let err = Request::decode_message(&bytes, 0, &config()).expect_err("below");
        assert!(
            matches!(err, ProtocolError::SizeBelowHeader { .. }),
            "{err}"
        );
        assert_eq!(err.errno(), EINVAL);
    }
}

#[test]
fn size_above_maximum() {
    let max = config().max_message_size;
    let bytes = request(Command::RegionWrite, &vec![0; max as usize - 16 + 1]);
    let err = Request::decode_message(&bytes, 0, &config()).expect_err("too big");
    assert!(matches!(err, ProtocolError::TooLarge { .. }), "{err}");
    assert_eq!(err.errno(), E2BIG);
    // The header alone says so too.
    let header = Header::new(1, 10, u32::MAX, 0, 0);
    assert_eq!(header.check(max).expect_err("too big").errno(), E2BIG);
}

#[test]
fn size_field_disagrees_with_the_bytes() {
    let mut bytes = request(Command::DeviceReset, &[0; 8]);
    bytes[4..8].copy_from_slice(&20u32.to_le_bytes());
    assert_eq!(errno_of(&bytes, 0), EINVAL);
}

#[test]
fn unknown_command() {
    for number in [0u16, 14, 19, 0xffff] {
        let bytes = message(number, 0, &[0; 32]);
        let err = Request::decode_message(&bytes, 0, &config()).expect_err("unknown");
        assert!(matches!(err, ProtocolError::UnknownCommand { .. }), "{err}");
        assert_eq!(err.errno(), ENOTSUP, "command {number}");
    }
}

#[test]
fn payload_shorter_than_its_fixed_part() {
    let fixed: [(Command, usize); 16] = [
        (Command::Version, 4),
        (Command::DmaMap, 32),
        (Command::DmaUnmap, 24),
        (Command::DeviceGetInfo, 16),
        (Command::DeviceGetRegionInfo, 32),
        (Command::DeviceGetRegionIoFds, 16),
        (Command::DeviceGetIrqInfo, 16),
        (Command::DeviceSetIrqs, 20),
        (Command::RegionRead, 16),
        (Command::RegionWrite, 16),
        (Command::DmaRead, 16),
        (Command::DmaWrite, 16),
        (Command::RegionWriteMulti, 8),
        (Command::DeviceFeature, 8),
        (Command::MigDataRead, 8),
        (Command::MigDataWrite, 8),
    ];
    for (command, len) in fixed {
        for short in [0, len - 1] {
            let bytes = request(command, &vec![0u8; short]);
            let err = Request::decode_message(&bytes, 0, &config()).expect_err("short");
            assert!(
                matches!(err, ProtocolError::PayloadTooShort { .. }),
                "{command} with {short}: {err}"
            );
            assert_eq!(err.errno(), EINVAL);
        }
    }
    // A DMA_UNMAP that asks for a bitmap but lacks its description.
    let mut unmap = DmaUnmap::new(0x1000, 0x1000);
    unmap.flags = U32::new(DMA_UNMAP_FLAG_GET_DIRTY_BITMAP);
    assert_eq!(
        errno_of(&request(Command::DmaUnmap, unmap.as_bytes()), 0),
        EINVAL
    );
    // A DEVICE_FEATURE REPORT without its range; SET MIG_DEVICE_STATE without its state.
    let report = encode_feature(FEATURE_GET | u32::from(FEATURE_DMA_LOGGING_REPORT), &[0; 8]);
    assert_eq!(
        errno_of(&request(Command::DeviceFeature, &report), 0),
        EINVAL
    );
    let state = encode_feature(FEATURE_SET | u32::from(FEATURE_MIG_DEVICE_STATE), &[2, 0]);
    assert_eq!(
        errno_of(&request(Command::DeviceFeature, &state), 0),
        EINVAL
    );
}

#[test]
fn lengths_that_disagree_with_counts() {
    // REGION_WRITE: count 8, 4 bytes of data (and the reverse).
    let short = RegionAccess::new(0, 0, 8).as_bytes().to_vec();
    let mut p = short.clone();
    p.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(errno_of(&request(Command::RegionWrite, &p), 0), EINVAL);
    let mut p = RegionAccess::new(0, 0, 2).as_bytes().to_vec();
    p.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(errno_of(&request(Command::RegionWrite, &p), 0), EINVAL);
    // WRITE_MULTI: says 3 writes, carries 2; a write of 9 bytes; a count that overflows.
    let two = encode_write_multi(&[WriteOne::new(0, 0, &[1]), WriteOne::new(0, 8, &[2])]);
    let lying = with_u32_at(two.clone(), 0, 3);
    assert_eq!(
        errno_of(&request(Command::RegionWriteMulti, &lying), 0),
        EINVAL
    );
    let nine = with_u32_at(two.clone(), 8 + 12, 9);
    assert_eq!(
        errno_of(&request(Command::RegionWriteMulti, &nine), 0),
        EINVAL
    );
    let mut huge = two;
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(
        errno_of(&request(Command::RegionWriteMulti, &huge), 0),
        EINVAL
    );
    // SET_IRQS BOOL: count 4, 3 bools.
    let mut p = IrqSet::new(IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_MASK, 0, 0, 4)
        .as_bytes()
        .to_vec();
    p.extend_from_slice(&[1, 1, 1]);
    let p = with_u32_at(p, 0, 23);
    assert_eq!(errno_of(&request(Command::DeviceSetIrqs, &p), 0), EINVAL);
    // DMA_LOGGING_START: 2 ranges announced, 1 sent.
    let mut data = DmaLoggingControl {
        page_size: U64::new(4096),
        num_ranges: U32::new(2),
        reserved: U32::new(0),
    }
    .as_bytes()
    .to_vec();
    data.extend_from_slice(DmaLoggingRange::new(0, 4096).as_bytes());
    let p = encode_feature(FEATURE_SET | u32::from(FEATURE_DMA_LOGGING_START), &data);
    assert_eq!(errno_of(&request(Command::DeviceFeature, &p), 0), EINVAL);
    // MIG_DATA_WRITE: size 10, 5 bytes.
    let p = with_u32_at(MigData::encode_with_data(&[0; 5]), 4, 10);
    assert_eq!(errno_of(&request(Command::MigDataWrite, &p), 0), EINVAL);
}

#[test]
fn argsz_that_lies() {
    // DMA_MAP's argsz is its own size: more than the payload, or less than the structure.
    let map = DmaMap::new(0, 4096, 0, Prot::READ);
    for argsz in [33, 64, u32::MAX, 0, 31] {
        let p = with_u32_at(map.as_bytes().to_vec(), 0, argsz);
        let err =
            Request::decode_message(&request(Command::DmaMap, &p), 0, &config()).expect_err("lies");
        assert!(
            matches!(
                err,
                ProtocolError::ArgszTooLarge { .. } | ProtocolError::ArgszTooSmall { .. }
            ),
            "{argsz}: {err}"
        );
        assert_eq!(err.errno(), EINVAL);
    }
    // SET_IRQS likewise.
    let set = IrqSet::new(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 0, 0, 1);
    let p = with_u32_at(set.as_bytes().to_vec(), 0, 24);
    assert_eq!(errno_of(&request(Command::DeviceSetIrqs, &p), 0), EINVAL);
    // Replies that cannot fit in what argsz offers.
    let cases: Vec<(Command, Vec<u8>)> = vec![
        (
            Command::DeviceGetInfo,
            with_u32_at(DeviceInfo::request().as_bytes().to_vec(), 0, 15),
        ),
        (
            Command::DeviceGetRegionInfo,
            RegionInfo::request(0, 31).as_bytes().to_vec(),
        ),
        (
            Command::DeviceGetRegionIoFds,
            RegionIoFds::request(0, 8).as_bytes().to_vec(),
        ),
        (
            Command::DeviceGetIrqInfo,
            with_u32_at(IrqInfo::request(0).as_bytes().to_vec(), 0, 4),
        ),
        (
            Command::DmaUnmap,
            with_u32_at(DmaUnmap::new(0, 4096).as_bytes().to_vec(), 0, 8),
        ),
        (
            Command::MigDataRead,
            with_u32_at(MigData::new(100).as_bytes().to_vec(), 0, 50),
        ),
        (
            Command::DeviceFeature,
            with_u32_at(
                encode_feature(FEATURE_GET | u32::from(FEATURE_MIGRATION), &[]),
                0,
                8,
            ),
        ),
    ];
    for (command, payload) in cases {
        let err = Request::decode_message(&request(command, &payload), 0, &config())
            .expect_err("argsz too small");
        assert!(
            matches!(err, ProtocolError::ArgszTooSmall { .. }),
            "{command}: {err}"
        );
        assert_eq!(err.errno(), EINVAL);
    }
    // DMA_UNMAP with a bitmap: argsz must cover the bitmap too.
    let mut unmap = DmaUnmap::new(0, 0x10_0000);
    unmap.flags = U32::new(DMA_UNMAP_FLAG_GET_DIRTY_BITMAP);
    unmap.argsz = U32::new(40 + 31);
    let req = DmaUnmapRequest {
        unmap,
        bitmap: Some(DmaBitmap {
            pgsize: U64::new(4096),
            size: U64::new(32),
        }),
    };
    assert_eq!(
        errno_of(&request(Command::DmaUnmap, &req.encode()), 0),
        EINVAL
    );
    // DMA_LOGGING_REPORT: the bitmap of 1 GiB at 4 KiB is 32 KiB.
    let report = DmaLoggingReport {
        iova: U64::new(0),
        length: U64::new(1 << 30),
        page_size: U64::new(4096),
    };
    let p = encode_feature(
        FEATURE_GET | u32::from(FEATURE_DMA_LOGGING_REPORT),
        report.as_bytes(),
    );
    let p = with_u32_at(p, 0, 8 + 24 + 32768 - 1);
    assert_eq!(errno_of(&request(Command::DeviceFeature, &p), 0), EINVAL);
    let p = with_u32_at(p, 0, 8 + 24 + 32768);
    Request::decode_message(&request(Command::DeviceFeature, &p), 0, &config()).expect("fits");
}

#[test]
fn flags_with_unknown_bits() {
    // Header: unknown bits, unknown type, ERROR on a command, NO_REPLY on a reply.
    for flags in [0x40, 0x8000_0000, 0x2, 0xf, 0x20, 0x11] {
        let bytes = message(Command::DeviceReset.number(), flags, &[]);
        assert_eq!(errno_of(&bytes, 0), EINVAL, "flags {flags:#x}");
    }
    // A reply is not a command.
    let bytes = message(Command::DeviceReset.number(), 1, &[]);
    assert!(matches!(
        Request::decode_message(&bytes, 0, &config()),
        Err(ProtocolError::WrongType { .. })
    ));
    // Payload flags.
    let map = with_u32_at(
        DmaMap::new(0, 4096, 0, Prot::READ).as_bytes().to_vec(),
        4,
        0x7,
    );
    let unmap = with_u32_at(DmaUnmap::new(0, 4096).as_bytes().to_vec(), 4, 0x4);
    let both = with_u32_at(DmaUnmap::new(0, 0).as_bytes().to_vec(), 4, 0x3);
    let irqs = IrqSet::new(0x40 | IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_NONE, 0, 0, 0);
    let two_actions = IrqSet::new(
        IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_DATA_NONE,
        0,
        0,
        0,
    );
    let two_types = IrqSet::new(
        IRQ_SET_ACTION_MASK | IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL,
        0,
        0,
        0,
    );
    let io_fds = with_u32_at(RegionIoFds::request(0, 64).as_bytes().to_vec(), 4, 1);
    let feature = encode_feature(1 << 19 | FEATURE_GET | u32::from(FEATURE_MIGRATION), &[]);
    let get_and_set = encode_feature(
        FEATURE_GET | FEATURE_SET | u32::from(FEATURE_MIGRATION),
        &[],
    );
    let no_op = encode_feature(u32::from(FEATURE_MIGRATION), &[]);
    let cases: Vec<(Command, Vec<u8>)> = vec![
        (Command::DmaMap, map),
        (Command::DmaUnmap, unmap),
        (Command::DmaUnmap, both),
        (Command::DeviceSetIrqs, irqs.as_bytes().to_vec()),
        (Command::DeviceSetIrqs, two_actions.as_bytes().to_vec()),
        (Command::DeviceSetIrqs, two_types.as_bytes().to_vec()),
        (Command::DeviceGetRegionIoFds, io_fds),
        (Command::DeviceFeature, feature),
        (Command::DeviceFeature, get_and_set),
        (Command::DeviceFeature, no_op),
    ];
    for (command, payload) in cases {
        assert_eq!(
            errno_of(&request(command, &payload), 0),
            EINVAL,
            "{command} {payload:?}"
        );
    }
}

#[test]
fn invalid_field_values() {
    // UNMAP_ALL with a range.
    let mut all = DmaUnmap::new(0x1000, 0x1000);
    all.flags = U32::new(DMA_UNMAP_FLAG_ALL);
    assert_eq!(
        errno_of(&request(Command::DmaUnmap, all.as_bytes()), 0),
        EINVAL
    );
    // A migration state that does not exist.
    let p = encode_feature(
        FEATURE_SET | u32::from(FEATURE_MIG_DEVICE_STATE),
        MigDeviceState {
            device_state: U32::new(8),
            data_fd: U32::new(0),
        }
        .as_bytes(),
    );
    assert_eq!(errno_of(&request(Command::DeviceFeature, &p), 0), EINVAL);
    // A report with page size 0.
    let p = encode_feature(
        FEATURE_GET | u32::from(FEATURE_DMA_LOGGING_REPORT),
        DmaLoggingReport::default().as_bytes(),
    );
    let p = with_u32_at(p, 0, u32::MAX);
    assert_eq!(errno_of(&request(Command::DeviceFeature, &p), 0), EINVAL);
    // An unknown feature, or an operation a feature lacks: ENOTSUP.
    for flags in [
        FEATURE_GET | 3,
        FEATURE_SET | u32::from(FEATURE_MIGRATION),
        FEATURE_GET | u32::from(FEATURE_DMA_LOGGING_START),
    ] {
        let p = with_u32_at(encode_feature(flags, &[0; 16]), 0, 1024);
        assert_eq!(errno_of(&request(Command::DeviceFeature, &p), 0), ENOTSUP);
    }
    // Capability JSON without its NUL.
    let mut p = vec![0, 0, 0, 0];
    p.extend_from_slice(b"{}");
    assert_eq!(errno_of(&request(Command::Version, &p), 0), EINVAL);
}

#[test]
fn transfers_beyond_the_maximum_are_e2big() {
    let max = config().max_data_xfer_size;
    let read = RegionAccess::new(0, 0, max + 1);
    assert_eq!(
        errno_of(&request(Command::RegionRead, read.as_bytes()), 0),
        E2BIG
    );
    let mig = MigData::new(max + 1);
    assert_eq!(
        errno_of(&request(Command::MigDataRead, mig.as_bytes()), 0),
        E2BIG
    );
    let dma = DmaAccess::new(0, u64::from(max) + 1).encode_read_request(DmaLayout::Spec);
    assert_eq!(errno_of(&request(Command::DmaRead, &dma), 0), E2BIG);
    // A REGION_WRITE whose count says more than the maximum, whatever data follows.
    let write = RegionAccess::new(0, 0, u32::MAX);
    assert_eq!(
        errno_of(&request(Command::RegionWrite, write.as_bytes()), 0),
        E2BIG
    );
}

#[test]
fn more_fds_than_allowed() {
    let map = DmaMap::new(0, 4096, 0, Prot::READ);
    let err = Request::decode_message(&request(Command::DmaMap, map.as_bytes()), 2, &config())
        .expect_err("two fds");
    assert!(matches!(err, ProtocolError::FdCount { .. }), "{err}");
    assert_eq!(err.errno(), EINVAL);
    // SET_IRQS with eventfds: 0 or exactly count.
    let set = IrqSet::new(IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 2, 0, 2);
    let bytes = request(Command::DeviceSetIrqs, set.as_bytes());
    assert_eq!(errno_of(&bytes, 3), EINVAL);
    assert_eq!(errno_of(&bytes, 1), EINVAL);
    Request::decode_message(&bytes, 2, &config()).expect("two for two");
    Request::decode_message(&bytes, 0, &config()).expect("none: de-assign");
}

#[test]
fn fd_on_a_command_that_takes_none() {
    let mut unmap_all = DmaUnmap::new(0, 0);
    unmap_all.flags = U32::new(DMA_UNMAP_FLAG_ALL);
    let cases: Vec<(Command, Vec<u8>)> = vec![
        (
            Command::Version,
            Version::default().encode().expect("encodes"),
        ),
        (Command::DmaUnmap, unmap_all.as_bytes().to_vec()),
        (
            Command::DeviceGetInfo,
            DeviceInfo::request().as_bytes().to_vec(),
        ),
        (
            Command::DeviceGetRegionInfo,
            RegionInfo::request(0, 32).as_bytes().to_vec(),
        ),
        (
            Command::DeviceGetRegionIoFds,
            RegionIoFds::request(0, 64).as_bytes().to_vec(),
        ),
        (
            Command::DeviceGetIrqInfo,
            IrqInfo::request(0).as_bytes().to_vec(),
        ),
        (
            Command::DeviceSetIrqs,
            IrqSet::new(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, 0, 0, 1)
                .as_bytes()
                .to_vec(),
        ),
        (
            Command::RegionRead,
            RegionAccess::new(0, 0, 4).as_bytes().to_vec(),
        ),
        (
            Command::RegionWrite,
            RegionAccess::new(0, 0, 0).encode_with_data(&[1, 2]),
        ),
        (
            Command::DmaRead,
            DmaAccess::new(0, 4).encode_read_request(DmaLayout::Spec),
        ),
        (
            Command::DmaWrite,
            DmaAccess::encode_write_request(0, &[1], DmaLayout::Spec),
        ),
        (Command::DeviceReset, vec![]),
        (
            Command::RegionWriteMulti,
            encode_write_multi(&[WriteOne::new(0, 0, &[1])]),
        ),
        (
            Command::DeviceFeature,
            encode_feature(FEATURE_SET | u32::from(FEATURE_DMA_LOGGING_STOP), &[]),
        ),
        (Command::MigDataRead, MigData::new(8).as_bytes().to_vec()),
        (Command::MigDataWrite, MigData::encode_with_data(&[1])),
    ];
    for (command, payload) in cases {
        let bytes = request(command, &payload);
        Request::decode_message(&bytes, 0, &config())
            .unwrap_or_else(|e| panic!("{command} without fd: {e}"));
        let err = Request::decode_message(&bytes, 1, &config()).expect_err("fd");
        assert!(
            matches!(err, ProtocolError::FdCount { .. }),
            "{command}: {err}"
        );
        assert_eq!(err.errno(), EINVAL);
    }
}

#[test]
fn dma_read_reply_with_wrong_count() {
    let asked = DmaAccess::new(0x8000, 64);
    let data = [0x5au8; 64];
    for layout in [DmaLayout::Spec, DmaLayout::Qemu] {
        // Count 32 for 64 asked, with 32 bytes of data.
        let short = DmaAccess::encode_read_reply(0x8000, &data[..32], layout);
        let err = asked
            .decode_read_reply(&short, 0, layout)
            .expect_err("count");
        assert!(matches!(err, ProtocolError::ReplyMismatch { .. }), "{err}");
        assert_eq!(err.errno(), EINVAL);
        // The right count, but not the data it announces.
        let mut cut = DmaAccess::encode_read_reply(0x8000, &data, layout);
        cut.truncate(cut.len() - 8);
        assert_eq!(
            asked
                .decode_read_reply(&cut, 0, layout)
                .expect_err("short")
                .errno(),
            EINVAL
        );
        // Another address.
        let other = DmaAccess::encode_read_reply(0x9000, &data, layout);
        assert_eq!(
            asked
                .decode_read_reply(&other, 0, layout)
                .expect_err("addr")
                .errno(),
            EINVAL
        );
        // A descriptor.
        let right = DmaAccess::encode_read_reply(0x8000, &data, layout);
        assert_eq!(
            asked
                .decode_read_reply(&right, 1, layout)
                .expect_err("fd")
                .errno(),
            EINVAL
        );
    }
    // QEMU's reply read with the spec layout: the data's first bytes land in the count.
    let qemu = DmaAccess::encode_read_reply(0x8000, &data, DmaLayout::Qemu);
    let err = asked
        .decode_read_reply(&qemu, 0, DmaLayout::Spec)
        .expect_err("layout");
    assert!(
        matches!(err, ProtocolError::ReplyMismatch { field: "count", .. }),
        "{err}"
    );
    // DMA_WRITE replies: wrong count, wrong size.
    let asked = DmaAccess::new(0x8000, 8);
    let wrong = DmaAccessSpec {
        addr: U64::new(0x8000),
        count: U64::new(4),
    };
    assert_eq!(
        asked
            .decode_write_reply(wrong.as_bytes(), 0)
            .expect_err("count")
            .errno(),
        EINVAL
    );
    assert_eq!(
        asked
            .decode_write_reply(&[0; 8], 0)
            .expect_err("size")
            .errno(),
        EINVAL
    );
}

#[test]
fn region_info_reply_with_a_broken_chain() {
    let reply = RegionInfoReply {
        flags: REGION_INFO_FLAG_READ,
        index: 0,
        size: 4096,
        caps: vec![
            RegionCap::SparseMmap(vec![SparseMmapArea::new(0, 4096)]),
            RegionCap::Type {
                kind: 1,
                subtype: 1,
            },
        ],
        ..RegionInfoReply::default()
    };
    let good = reply.encode(1024);
    RegionInfoReply::decode(&good, 0).expect("good");
    // cap_offset inside the fixed part; past the end; a loop back; too many areas.
    let inside = with_u32_at(good.clone(), 12, 8);
    let past = with_u32_at(good.clone(), 12, 4000);
    let first_next = 32 + 4;
    let looping = with_u32_at(good.clone(), first_next, 32);
    let areas = with_u32_at(good.clone(), 32 + 8, 1000);
    for bad in [inside, past, looping, areas] {
        assert_eq!(
            RegionInfoReply::decode(&bad, 0)
                .expect_err("broken")
                .errno(),
            EINVAL
        );
    }
    assert_eq!(
        RegionInfoReply::decode(&good, 2)
            .expect_err("two fds")
            .errno(),
        EINVAL
    );
}

#[test]
fn dma_read_reply_for_a_count_near_2_pow_64_is_a_length_error() {
    // Found by fuzzing: the expected length `16 + count` overflowed (a debug-build panic).
    let count = u64::MAX - 10;
    let access = DmaAccess::new(0x1000, count);
    for layout in [DmaLayout::Spec, DmaLayout::Qemu] {
        let mut payload = access.encode_read_request(layout);
        payload.extend_from_slice(&[0xff; 114]);
        let err = access
            .decode_read_reply(&payload, 0, layout)
            .expect_err("a reply this short cannot carry the count");
        assert_eq!(err.errno(), libc::EINVAL, "{layout:?}: {err}");
    }
}
