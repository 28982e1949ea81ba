//! Shared code of the fuzz targets: the operations and reference model of `core_ops`, and the
//! session harness of `session`, which the seed generator (`examples/seeds.rs`) uses too.

pub mod core_ops;
pub mod session;
