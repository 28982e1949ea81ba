//! The vfio-user client: connect to a device server, negotiate, map memory, drive the device.
