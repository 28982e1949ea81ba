//! vdma: user-space DMA for emulated devices, after Linux's `vfio_dma_rw()`.
//!
//! A [`Container`] is a type1-style IOMMU address space: IOVA ranges mapped with READ/WRITE
//! permissions onto files (memfd, hugetlbfs), memory of this process, or memory of another
//! process. Groups and devices get handles ([`GroupHandle`], [`DeviceHandle`]) that keep the
//! space alive across calls; `dma_rw` on a handle reads or writes any byte range, across mapping
//! boundaries, without a lock. `unmap` returns only once no access to the removed memory is in
//! flight.
//!
//! ```
//! use std::os::fd::FromRawFd;
//! use vdma::{Backing, Config, Container, DeviceId, Direction, GroupId, Iova, Prot};
//!
//! // Guest memory as a VMM would share it: a memfd.
//! // SAFETY: a valid C string and flags; the result is checked below.
//! let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), 0) };
//! assert!(fd >= 0);
//! // SAFETY: the descriptor was just created and nothing else owns it.
//! let file = unsafe { std::fs::File::from_raw_fd(fd) };
//! file.set_len(1 << 20).unwrap();
//!
//! let space = Container::new(Config::default())?;
//! space.map(Iova(0x8000_0000), 1 << 20, Backing::file(&file, 0), Prot::READ_WRITE)?;
//! space.attach_group(GroupId(7))?;
//! space.add_device(GroupId(7), DeviceId::new("0000:00:04.0"))?;
//! let dev = space.device_handle(&DeviceId::new("0000:00:04.0"))?;
//!
//! let mut data = *b"descriptor";
//! dev.dma_rw(Iova(0x8000_0100), &mut data, Direction::Write)?;
//! let mut back = [0u8; 10];
//! dev.dma_rw(Iova(0x8000_0100), &mut back, Direction::Read)?;
//! assert_eq!(&back, b"descriptor");
//! # Ok::<(), vdma::Error>(())
//! ```
#![warn(missing_docs)]

mod address;
mod backing;
mod config;
mod container;
mod dirty;
mod dma;
mod error;
mod handle;
mod mapping;
mod memory;
mod pin;
mod prot;
mod rcu;
mod segments;
mod sync;
mod table;
mod tracking;

pub use address::{HostAddr, Iova, IovaRange};
pub use backing::Backing;
pub use config::Config;
pub use container::Container;
pub use dirty::Bitmap;
pub use error::{Error, Result};
pub use handle::{DeviceHandle, DeviceId, GroupHandle, GroupId};
pub use mapping::MappingInfo;
pub use memory::{FileMemory, HostRegion, Memory, OwnedMemory, ProcessMemory, RawMemory};
pub use pin::{Pinned, UnmapCallback, MAX_PIN_PAGES};
pub use prot::{Direction, Prot};
pub use segments::{Segment, Segments};
pub use tracking::{MAX_BITMAP_PAGES, MAX_LOG_RANGES};
