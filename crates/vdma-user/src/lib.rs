//! vfio-user for vdma: the protocol, a server and a client.
#![warn(missing_docs)]
