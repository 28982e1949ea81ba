//! `vdma`: serve the sample dma-engine device, probe a vfio-user socket.

fn main() {}
