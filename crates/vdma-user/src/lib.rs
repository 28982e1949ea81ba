//! vfio-user for vdma: the protocol, a server and a client.
//!
//! This crate is built bottom up. Today it holds:
//!
//! - [`protocol`]: every vfio-user message as typed little-endian wire structures, with
//!   decoding that checks each message before any field is used (sizes, `argsz`, flags, file
//!   descriptor counts) and maps every failure to an errno, and exact encoding. QEMU's own
//!   DMA_READ/DMA_WRITE layout is supported next to the specification's ([`protocol::DmaLayout`]).
//! - [`transport`]: framed messages with file descriptors over a Unix stream socket, received
//!   whole however the kernel splits them, with reader and writer halves for different threads.
#![warn(missing_docs)]

pub mod client;
pub mod pci;
pub mod protocol;
pub mod server;
pub mod transport;
