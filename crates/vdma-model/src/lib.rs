//! The reference model of a vdma address space, and the test memory behind it: one piece of
//! code for `crates/vdma/tests/model.rs` (proptest) and the `core_ops` fuzz target
//! (`fuzz/src/core_ops.rs`), which drive a real [`vdma::Container`] and this model with the same
//! operations and compare them after each one.
//!
//! [`Model`] holds what the space should be: the mappings (start, size, protection), the bytes
//! each one's memory should hold, which of them are held by segments, the dirty-tracking page
//! size and each mapping's dirty pages. Its `expect_*` methods give the result the rules of
//! `shared/spec/semantics.md` (§1 map and unmap, §3 access, §4–5 dirty tracking) demand, as an
//! errno or the mappings concerned; the other methods apply an operation that succeeded, and the
//! `check_*` functions compare the container's answer with the model's, returning what differs.
//!
//! [`Memories`] makes the memory a mapping is backed by (owned memory, a region of one memfd,
//! or [`MsgMemory`], which has no host address) and reads back what it really holds, without
//! going through vdma.
//!
//! Not published: it exists for the tests.

#![warn(missing_docs)]

mod memory;
mod model;

pub use memory::{eventfd, memfd, Made, Memories, MemoryKind, MsgMemory, Real};
pub use model::{check_bitmap, Mapped, Model, Verdict};
