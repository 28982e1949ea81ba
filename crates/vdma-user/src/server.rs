//! The vfio-user server: serves one device to one client at a time over a Unix socket.
