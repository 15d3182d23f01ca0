//! Targets: the MongoDB writer and the shared plumbing (retry with back-off).

pub mod mongodb;
pub mod retry;
