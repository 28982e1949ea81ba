//! Shared code of the fuzz targets: the operations and reference model of `core_ops`, the
//! session harness of `session`, which the seed generator (`examples/seeds.rs`) uses too, and
//! sending raw bytes with descriptors ([`scm`], for `session` and `decode`).

pub mod core_ops;
pub mod scm;
pub mod session;
