//! Descriptors a message may not carry are closed: counted in /proc/self/fd. One test in its
//! own binary, so that no other test opens or closes descriptors meanwhile.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread;

use vdma::Prot;
use vdma_user::protocol::*;
use vdma_user::transport::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("procfs").count()
}

#[test]
fn excess_fds_are_closed() {
    let baseline = open_fds();
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
    let ready = open_fds();
    assert_eq!(ready, baseline + 2 + 10);

    // Five descriptors, two allowed by the transport: rejected, none kept.
    let reset = MessageBuilder::request(1, Command::DeviceReset)
        .finish()
        .expect("fits");
    a.send(&reset, &fds).expect("send");
    assert!(matches!(
        b.receive().expect("receive"),
        Received::Rejected {
            error: ProtocolError::FdLimit { .. },
            ..
        }
    ));
    assert_eq!(
        open_fds(),
        ready,
        "descriptors of a rejected message leaked"
    );

    // Two descriptors on a DMA_MAP (which takes at most one): the transport hands them over,
    // decoding refuses, dropping the message closes both.
    let map = MessageBuilder::request(2, Command::DmaMap)
        .push(&DmaMap::new(0, 4096, 0, Prot::READ))
        .finish()
        .expect("fits");
    a.send(&map, &fds[..2]).expect("send");
    let Received::Message(m) = b.receive().expect("receive") else {
        panic!("expected a message");
    };
    assert_eq!(open_fds(), ready + 2, "the two descriptors arrived");
    let err = m
        .request(&DecodeConfig::default())
        .expect_err("two fds on DMA_MAP");
    assert_eq!(err.errno(), libc::EINVAL);
    drop(m);
    assert_eq!(open_fds(), ready);

    // One descriptor on a command that takes none.
    let info = MessageBuilder::request(3, Command::DeviceGetInfo)
        .push(&DeviceInfo::request())
        .finish()
        .expect("fits");
    a.send(&info, &fds[..1]).expect("send");
    let Received::Message(m) = b.receive().expect("receive") else {
        panic!("expected a message");
    };
    assert!(m.request(&DecodeConfig::default()).is_err());
    drop(m);
    assert_eq!(open_fds(), ready);

    // A message over the size limit with a descriptor: drained, closed.
    let big = MessageBuilder::request(4, Command::RegionWrite)
        .bytes(&RegionAccess::new(0, 0, 0).encode_with_data(&[0; 200_000]))
        .finish()
        .expect("fits");
    let fd = pairs[0].0.try_clone().expect("dup");
    let sender = thread::spawn(move || {
        a.send(&big, &[fd.as_fd()]).expect("send");
        drop(fd);
        a
    });
    assert!(matches!(
        b.receive().expect("receive"),
        Received::Rejected {
            error: ProtocolError::TooLarge { .. },
            ..
        }
    ));
    let a = sender.join().expect("sender");
    assert_eq!(open_fds(), ready);

    drop((a, b, pairs));
    assert_eq!(open_fds(), baseline);
}
