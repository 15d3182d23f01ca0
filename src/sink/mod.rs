//! Targets: the MongoDB writer and the shared plumbing (retry with back-off).

pub mod appwrite;
pub mod gridfs;
pub mod mongo_unique;
pub mod mongodb;
pub mod order;
pub mod retry;
pub mod target;
