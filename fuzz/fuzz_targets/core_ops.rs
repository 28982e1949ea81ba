//! Fuzz target `core_ops`: arbitrary operation sequences against the vdma core and a reference
//! model (see `vdma_fuzz::core_ops` for the operations, the rules and the input format).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdma_fuzz::core_ops::run(data));
