//! The transport over a socketpair: whole messages however the kernel splits them, descriptors
//! passed through, limits that drain and reject while keeping the framing, lost framing that
//! shuts the connection, and writers on many threads that never interleave.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use vdma::Prot;
use vdma_user::protocol::*;
use vdma_user::transport::*;
use zerocopy::IntoBytes;

fn connection(socket: UnixStream) -> Connection {
    Connection::new(socket, Limits::default()).expect("connection")
}

fn expect_message(received: Received) -> Message {
    match received {
        Received::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// A 1 MiB REGION_WRITE (the largest the default limits take), written by another thread in
/// pieces of odd sizes with pauses, arrives as one message with every byte in place.
#[test]
fn one_mib_message_split_by_the_kernel_arrives_whole() {
    let (ours, mut theirs) = UnixStream::pair().expect("pair");
    let mut conn = connection(ours);
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let payload = RegionAccess::new(0, 0x1000, 0).encode_with_data(&data);
    let bytes = MessageBuilder::request(9, Command::RegionWrite)
        .bytes(&payload)
        .finish()
        .expect("fits");
    assert_eq!(bytes.len() as u32, Limits::default().max_message_size);
    let writer = thread::spawn(move || {
        let mut at = 0;
        let mut piece = 1;
        while at < bytes.len() {
            let end = (at + piece).min(bytes.len());
            theirs.write_all(&bytes[at..end]).expect("write");
            at = end;
            piece = piece * 7 % 4093 + 1; // 1, 8, 57, ... never a header's worth at once
            if at % 7 == 0 {
                thread::sleep(Duration::from_micros(50));
            }
        }
        theirs
    });
    let m = expect_message(conn.receive().expect("receive"));
    let _theirs = writer.join().expect("writer");
    assert_eq!(m.header.msg_id(), 9);
    assert_eq!(m.header.size() as usize, 16 + 16 + (1 << 20));
    let Request::RegionWrite(access, got) = m.request(&DecodeConfig::default()).expect("decodes")
    else {
        panic!("not REGION_WRITE");
    };
    assert_eq!(access.offset.get(), 0x1000);
    assert!(got == &data[..], "payload differs");
}

/// The same message sent by a Writer while the reader drains it on another thread.
#[test]
fn one_mib_message_through_writer() {
    let (a, b) = Connection::pair(Limits::default()).expect("pair");
    let data = vec![0xa5u8; 1 << 20];
    let payload = RegionAccess::new(1, 0, 0).encode_with_data(&data);
    let header = Header::new(
        3,
        Command::RegionWrite.number(),
        16 + payload.len() as u32,
        0,
        0,
    );
    let sender = thread::spawn(move || {
        a.writer()
            .send_payload(&header, &payload, &[])
            .expect("send");
        a
    });
    let (mut reader, _writer) = b.split();
    let m = expect_message(reader.receive().expect("receive"));
    let _a = sender.join().expect("sender");
    assert_eq!(m.payload.len(), 16 + (1 << 20));
    assert!(m.payload[16..].iter().all(|&b| b == 0xa5));
}

/// A DMA_MAP's descriptor arrives and is the same open file: what one end of a socketpair
/// writes through the received descriptor, the other end reads.
#[test]
fn fds_pass_through() {
    let (a, mut b) = Connection::pair(Limits::default()).expect("pair");
    let (passed, mut kept) = UnixStream::pair().expect("pair");
    let map = MessageBuilder::request(1, Command::DmaMap)
        .push(&DmaMap::new(0x10_0000, 0x1000, 0, Prot::READ_WRITE))
        .finish()
        .expect("small");
    a.send(&map, &[passed.as_fd()]).expect("send");
    drop(passed);
    let mut m = expect_message(b.receive().expect("receive"));
    let Request::DmaMap(got) = m.request(&DecodeConfig::default()).expect("decodes") else {
        panic!("not DMA_MAP");
    };
    assert_eq!(got.addr.get(), 0x10_0000);
    assert_eq!(m.fds.len(), 1);
    let fd: OwnedFd = m.fds.remove(0);
    let mut through = UnixStream::from(fd);
    through.write_all(b"through").expect("write");
    let mut buf = [0u8; 7];
    kept.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"through");

    // Eventfds for SET_IRQS: three descriptors for a count of three, in order.
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..3).map(|_| UnixStream::pair().expect("pair")).collect();
    let set = IrqSet::new(IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 2, 0, 3);
    let msg = MessageBuilder::request(2, Command::DeviceSetIrqs)
        .push(&set)
        .finish()
        .expect("small");
    let fds: Vec<_> = pairs.iter().map(|(p, _)| p.as_fd()).collect();
    a.send(&msg, &fds).expect("send");
    let m = expect_message(b.receive().expect("receive"));
    m.request(&DecodeConfig::default())
        .expect("three for three");
    for (i, fd) in m.fds.into_iter().enumerate() {
        let mut s = UnixStream::from(fd);
        s.write_all(&[i as u8]).expect("write");
        let mut one = [0u8; 1];
        (&pairs[i].1).read_exact(&mut one).expect("read");
        assert_eq!(one[0], i as u8);
    }
}

/// A message over the size limit is drained and rejected; the next message arrives intact.
#[test]
fn oversized_message_is_drained_and_framing_kept() {
    let limits = Limits {
        max_message_size: 1024,
        max_fds: 4,
    };
    let (a, b) = UnixStream::pair().expect("pair");
    let a = Connection::new(a, Limits::default()).expect("a");
    let mut b = Connection::new(b, limits).expect("b");
    let big = MessageBuilder::request(5, Command::RegionWrite)
        .bytes(&RegionAccess::new(0, 0, 0).encode_with_data(&vec![1; 300_000]))
        .finish()
        .expect("fits");
    let (fd, _other) = UnixStream::pair().expect("pair");
    let small = MessageBuilder::request(6, Command::DeviceReset)
        .finish()
        .expect("fits");
    let sender = thread::spawn(move || {
        a.send(&big, &[fd.as_fd()]).expect("big");
        a.send(&small, &[]).expect("small");
        a
    });
    match b.receive().expect("receive") {
        Received::Rejected { header, error } => {
            assert_eq!(header.msg_id(), 5);
            assert_eq!(error.errno(), libc::E2BIG);
            assert!(header.wants_reply());
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let m = expect_message(b.receive().expect("receive"));
    assert_eq!(m.header.msg_id(), 6);
    assert_eq!(
        m.request(&DecodeConfig::default()).expect("decodes"),
        Request::DeviceReset
    );
    let _a = sender.join().expect("sender");
}

/// More descriptors than the limit: rejected (EINVAL), the stream goes on.
#[test]
fn too_many_fds_are_rejected() {
    let limits = Limits {
        max_message_size: 4096,
        max_fds: 2,
    };
    let (a, b) = UnixStream::pair().expect("pair");
    let a = Connection::new(a, Limits::default()).expect("a");
    let mut b = Connection::new(b, limits).expect("b");
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..5).map(|_| UnixStream::pair().expect("pair")).collect();
    let fds: Vec<_> = pairs.iter().map(|(p, _)| p.as_fd()).collect();
    let reset = MessageBuilder::request(1, Command::DeviceReset)
        .finish()
        .expect("fits");
    a.send(&reset, &fds).expect("send");
    a.send(&reset, &[]).expect("send");
    match b.receive().expect("receive") {
        Received::Rejected { error, .. } => {
            assert!(
                matches!(error, ProtocolError::FdLimit { max: 2, .. }),
                "{error}"
            );
            assert_eq!(error.errno(), libc::EINVAL);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    expect_message(b.receive().expect("receive"));
}

/// A header whose size is below 16 loses the framing: an error, the socket shut down, and
/// every later receive fails.
#[test]
fn size_below_header_loses_framing() {
    let (ours, mut theirs) = UnixStream::pair().expect("pair");
    let mut conn = connection(ours);
    theirs
        .write_all(&Header::new(1, 13, 8, 0, 0).to_bytes())
        .expect("write");
    let err = conn.receive().expect_err("lost");
    assert!(matches!(err, TransportError::FramingLost { .. }), "{err}");
    assert_eq!(err.errno(), libc::EPROTO);
    assert!(matches!(conn.receive(), Err(TransportError::Broken)));
    let mut buf = [0u8; 1];
    assert_eq!(
        theirs.read(&mut buf).expect("eof"),
        0,
        "peer sees the close"
    );
}

/// The peer closing in the middle of a message is an error; between messages, `Closed`.
#[test]
fn peer_closes() {
    let (ours, mut theirs) = UnixStream::pair().expect("pair");
    let mut conn = connection(ours);
    let reset = MessageBuilder::request(1, Command::DeviceReset)
        .finish()
        .expect("fits");
    theirs.write_all(&reset).expect("write");
    theirs
        .write_all(&Header::new(2, 10, 100, 0, 0).to_bytes())
        .expect("write");
    theirs.write_all(&[0; 10]).expect("write");
    drop(theirs);
    expect_message(conn.receive().expect("first"));
    let err = conn.receive().expect_err("truncated");
    assert!(
        matches!(err, TransportError::Truncated { got: 10, want: 84 }),
        "{err}"
    );
    assert_eq!(err.errno(), libc::ECONNRESET);

    let (ours, theirs) = UnixStream::pair().expect("pair");
    let mut conn = connection(ours);
    drop(theirs);
    assert!(matches!(conn.receive().expect("closed"), Received::Closed));

    // Half a header, then close.
    let (ours, mut theirs) = UnixStream::pair().expect("pair");
    let mut conn = connection(ours);
    theirs.write_all(&[1, 0, 13, 0]).expect("write");
    drop(theirs);
    assert!(matches!(
        conn.receive(),
        Err(TransportError::Truncated { got: 4, want: 16 })
    ));
}

/// Eight threads send 40 messages each of up to 192 KiB, bigger than the socket buffer, so
/// sends block part-way; every message arrives whole, uniform, and in its thread's order.
#[test]
fn concurrent_writers_never_interleave() {
    let limits = Limits {
        max_message_size: 256 * 1024,
        max_fds: 1,
    };
    let (a, b) = Connection::pair(limits).expect("pair");
    let (mut reader, _w) = b.split();
    let writers: Vec<_> = (0..8u8)
        .map(|t| {
            let w = a.writer();
            thread::spawn(move || {
                for i in 0..40u16 {
                    let len = 1000 + usize::from(i) * 4096 + usize::from(t) * 97;
                    let payload = RegionAccess::new(u32::from(t), u64::from(i), 0)
                        .encode_with_data(&vec![t; len]);
                    let bytes =
                        MessageBuilder::request(u16::from(t) << 8 | i, Command::RegionWrite)
                            .bytes(&payload)
                            .finish()
                            .expect("fits");
                    w.send(&bytes, &[]).expect("send");
                }
            })
        })
        .collect();
    let config = DecodeConfig {
        max_message_size: limits.max_message_size,
        ..DecodeConfig::default()
    };
    let mut next = [0u16; 8];
    for _ in 0..8 * 40 {
        let m = expect_message(reader.receive().expect("receive"));
        let Request::RegionWrite(access, data) = m.request(&config).expect("decodes") else {
            panic!("not REGION_WRITE");
        };
        let t = access.region.get() as usize;
        assert_eq!(
            access.offset.get(),
            u64::from(next[t]),
            "thread {t} out of order"
        );
        assert_eq!(m.header.msg_id(), (t as u16) << 8 | next[t]);
        assert!(
            data.iter().all(|&b| usize::from(b) == t),
            "interleaved bytes"
        );
        next[t] += 1;
    }
    for w in writers {
        w.join().expect("writer");
    }
    assert_eq!(next, [40; 8]);
}

/// Both directions at once on one socket: the server's reader thread takes the client's
/// DMA_MAPs while the server's writer sends DMA_READs, and the client answers them; each side
/// tells replies from requests by the header.
#[test]
fn both_directions_at_once() {
    let (server, client) = Connection::pair(Limits::default()).expect("pair");
    let (mut server_reader, server_writer) = server.split();
    let (mut client_reader, client_writer) = client.split();
    const N: u16 = 200;
    let client_thread = thread::spawn(move || {
        let sender = {
            let w = client_writer.clone();
            thread::spawn(move || {
                for i in 0..N {
                    let map = MessageBuilder::request(i, Command::DmaMap)
                        .push(&DmaMap::new(u64::from(i) << 12, 4096, 0, Prot::READ))
                        .finish()
                        .expect("fits");
                    w.send(&map, &[]).expect("send");
                }
            })
        };
        let (mut replies, mut reads) = (0, 0);
        while replies < N || reads < N {
            let m = expect_message(client_reader.receive().expect("receive"));
            if m.header.is_reply() {
                assert_eq!(m.header.command().expect("known"), Command::DmaMap);
                replies += 1;
            } else {
                let config = DecodeConfig::default();
                let Request::DmaRead(access) = m.request(&config).expect("decodes") else {
                    panic!("not DMA_READ");
                };
                let data = vec![access.addr as u8; access.count as usize];
                let reply = MessageBuilder::reply(m.header.msg_id(), m.header.command_number())
                    .bytes(&DmaAccess::encode_read_reply(
                        access.addr,
                        &data,
                        DmaLayout::Spec,
                    ))
                    .finish()
                    .expect("fits");
                client_writer.send(&reply, &[]).expect("reply");
                reads += 1;
            }
        }
        sender.join().expect("sender");
    });
    let dma_thread = {
        let w = server_writer.clone();
        thread::spawn(move || {
            for i in 0..N {
                let req = MessageBuilder::request(i, Command::DmaRead)
                    .bytes(&DmaAccess::new(u64::from(i), 100).encode_read_request(DmaLayout::Spec))
                    .finish()
                    .expect("fits");
                w.send(&req, &[]).expect("send");
            }
        })
    };
    let (mut maps, mut data_replies) = (0, 0);
    while maps < N || data_replies < N {
        let m = expect_message(server_reader.receive().expect("receive"));
        if m.header.is_reply() {
            let asked = DmaAccess::new(u64::from(m.header.msg_id()), 100);
            let data = asked
                .decode_read_reply(&m.payload, 0, DmaLayout::Spec)
                .expect("reply");
            assert!(data.iter().all(|&b| b == m.header.msg_id() as u8));
            data_replies += 1;
        } else {
            let Request::DmaMap(_) = m.request(&DecodeConfig::default()).expect("decodes") else {
                panic!("not DMA_MAP");
            };
            let reply = MessageBuilder::reply(m.header.msg_id(), m.header.command_number())
                .finish()
                .expect("fits");
            server_writer.send(&reply, &[]).expect("reply");
            maps += 1;
        }
    }
    dma_thread.join().expect("dma");
    client_thread.join().expect("client");
}

/// A Writer refuses bytes that are not one whole message.
#[test]
fn writer_checks_what_it_sends() {
    let (a, _b) = Connection::pair(Limits::default()).expect("pair");
    assert!(matches!(
        a.send(&[0; 8], &[]),
        Err(TransportError::BadMessage { .. })
    ));
    let mut bytes = MessageBuilder::request(1, Command::DeviceReset)
        .finish()
        .expect("fits");
    bytes.push(0);
    let err = a.send(&bytes, &[]).expect_err("size");
    assert_eq!(err.errno(), libc::EINVAL);
    let header = Header::new(1, 13, 20, 0, 0);
    assert!(a.writer().send_payload(&header, &[0; 3], &[]).is_err());
}

/// Shutting down from the writer wakes a reader blocked in receive.
#[test]
fn shutdown_wakes_the_reader() {
    let (a, _b) = Connection::pair(Limits::default()).expect("pair");
    let (mut reader, writer) = a.split();
    let t = thread::spawn(move || reader.receive());
    thread::sleep(Duration::from_millis(50));
    writer.shutdown().expect("shutdown");
    assert!(matches!(t.join().expect("reader"), Ok(Received::Closed)));
}

/// The header bytes `as_bytes` gives are the ones a peer reads (little-endian, no padding).
#[test]
fn wire_structures_have_no_padding() {
    assert_eq!(size_of::<Header>(), 16);
    assert_eq!(size_of::<DmaMap>(), 32);
    assert_eq!(size_of::<DmaUnmap>(), 24);
    assert_eq!(size_of::<RegionInfo>(), 32);
    assert_eq!(size_of::<IrqSet>(), 20);
    assert_eq!(size_of::<DmaAccessQemu>(), 12);
    assert_eq!(size_of::<DmaAccessSpec>(), 16);
    assert_eq!(size_of::<WriteOne>(), 24);
    assert_eq!(size_of::<SubRegionIoFd>(), 40);
    let h = Header::new(0x0102, 0x0304, 0x05060708, 0, 0);
    assert_eq!(&h.as_bytes()[..8], &[2, 1, 4, 3, 8, 7, 6, 5]);
}
