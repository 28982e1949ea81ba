//! The `vdma` command's library: the sample `dma-engine` device and the pieces of the command
//! line tool (serve, probe).
#![warn(missing_docs)]

pub mod bench;
pub mod dma_engine;
pub mod probe;
pub mod serve;
