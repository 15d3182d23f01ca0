//! cutover moves an application's data out of PostgreSQL into MongoDB for a one-time cutover:
//! staged pipelines, mappings as data, exact conversions, every row accounted for.
//!
//! # Layout
//! - [`cli`]: the command line (clap types, dispatch, `migrate`, `plan`); `commands` holds the other
//!   commands. These are the only places that print results.
//! - [`config`]: `cutover.toml` + environment + flags → one checked config.
//! - [`mapping`]: mapping files: parse, check, compile to a plan against the source's types.
//! - [`pipeline`]: stage ordering and selection; [`pipeline::run`] is the run loop.
//! - [`source`]: PostgreSQL snapshot sessions and key-ordered row streams.
//! - [`transform`]: pure functions from rows to documents.
//! - [`validate`]: pure validation rules.
//! - [`sink`]: the MongoDB writer and the retry loop.
//! - [`ledger`]: runs and steps recorded in the target.
//! - [`monitor`]: counters, progress bars, rejects files, the run report.
//! - [`check`]: the pre-flight; [`verify`]: post-run comparison.
//! - [`redact`]: keeps credentials out of output.
//! - [`changes`]: versioned changes to the target after the cutover (change files, up/down), on
//!   top of the ledger.

pub mod changes;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod ledger;
pub mod mapping;
pub mod monitor;
pub mod pipeline;
pub mod redact;
pub mod sink;
pub mod source;
pub mod transform;
pub mod validate;
pub mod verify;
