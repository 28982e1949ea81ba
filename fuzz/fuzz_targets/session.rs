//! Fuzz target `session`: a whole vfio-user server session (the dma-engine device) fed
//! arbitrary bytes and descriptors over a socketpair (see `vdma_fuzz::session` for the input
//! format and the checks).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdma_fuzz::session::run(data));
