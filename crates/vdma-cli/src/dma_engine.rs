//! The sample `dma-engine` device.
