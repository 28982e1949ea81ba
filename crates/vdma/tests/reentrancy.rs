//! Changing the address space from inside a DMA access on the same thread would wait for itself:
//! it fails with EDEADLK and changes nothing.

use std::sync::{Arc, Mutex};

use vdma::{Backing, Container, Iova, Memory, OwnedMemory, Prot};

mod common;
use common::{group, space};

/// Memory whose reads try to map and unmap the space they are read through.
#[derive(Debug)]
struct Meddler {
    space: Mutex<Option<Container>>,
    seen: Mutex<Vec<i32>>,
}

impl Memory for Meddler {
    fn len(&self) -> u64 {
        1 << 20
    }
    fn read_at(&self, _offset: u64, buf: &mut [u8]) -> vdma::Result<()> {
        let space = self.space.lock().unwrap().clone().unwrap();
        let mut seen = self.seen.lock().unwrap();
        seen.push(space.unmap(Iova(0x10000), 4096).unwrap_err().errno());
        seen.push(space.unmap_all().unwrap_err().errno());
        let other = Arc::new(OwnedMemory::new(4096).unwrap());
        let r = space.map(Iova(0x90000), 4096, Backing::memory(other, 0), Prot::READ);
        seen.push(r.unwrap_err().errno());
        buf.fill(0x5a);
        Ok(())
    }
    fn write_at(&self, _offset: u64, _buf: &[u8]) -> vdma::Result<()> {
        Ok(())
    }
}

#[test]
fn map_and_unmap_from_inside_an_access_is_edeadlk() {
    let space = space();
    let meddler = Arc::new(Meddler {
        space: Mutex::new(Some(space.clone())),
        seen: Mutex::new(Vec::new()),
    });
    space
        .map(
            Iova(0x10000),
            4096,
            Backing::memory(meddler.clone(), 0),
            Prot::READ,
        )
        .unwrap();
    let h = group(&space);
    let mut buf = [0u8; 4];
    h.read(Iova(0x10000), &mut buf).unwrap();
    assert_eq!(buf, [0x5a; 4]);
    assert_eq!(*meddler.seen.lock().unwrap(), vec![libc::EDEADLK; 3]);
    // Nothing changed.
    let maps = space.mappings();
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0].iova, Iova(0x10000));
    // Outside the access the same calls work; break the Arc cycle first.
    *meddler.space.lock().unwrap() = None;
    assert_eq!(space.unmap(Iova(0x10000), 4096).unwrap(), 4096);
}
