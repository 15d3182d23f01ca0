//! The PostgreSQL source: snapshot sessions, key-ordered row streams, decoded values.

pub mod catalog;
pub mod float;
pub mod postgres;
pub mod value;

pub use postgres::{ColKind, ReadSpec, SourceColumn, SourceError, SourceSession};
pub use value::Value;
