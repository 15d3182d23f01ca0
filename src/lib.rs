//! cutover moves an application's data out of PostgreSQL into MongoDB or Appwrite for a one-time
//! cutover:
//! staged pipelines, mappings as data, exact conversions, every row accounted for.
//!
//! # Layers
//! Each module may use only the modules of its own layer and of the layers below it; nothing
//! imports upward, and no file imports a file of another module that imports it back
//! (`tests/architecture.rs` reads `src/` and fails otherwise). Top to bottom:
//!
//! 1. [`commands`]: one file per subcommand, and what they share (configuration, logging, the
//!    target and its ledger). The only place that prints results · [`serve`]: `cutover serve`,
//!    the HTTP API and status page over the commands, the changes and the ledger (it runs the
//!    commands' own code; `commands` only dispatches to it).
//! 2. [`cli`]: the clap types (their doc comments are the help), the output macros, the outcome.
//! 3. [`check`]: the pre-flight · [`verify`]: the target compared with the source, with an
//!    independent oracle ([`verify::oracle`]).
//! 4. [`pipeline`]: the engine — stage order and selection, the run loop ([`pipeline::run`]), the
//!    one expected-documents stream every reader shares ([`pipeline::expected`]), sync-deletes,
//!    rollback · [`changes`]: versioned changes to the target after the cutover.
//! 5. [`ledger`]: runs, steps, checkpoints, the lock and backups, recorded in the target.
//! 6. [`monitor`]: counters, progress bars, rejects files, the run report and the sign-off.
//! 7. [`sink`]: the targets — MongoDB and Appwrite writers, their ids, limits and `_id` order,
//!    the retry loop.
//! 8. [`mapping`]: mapping files parsed, checked and compiled to a plan · [`transform`]: pure
//!    conversions of rows to documents · [`validate`]: pure validation rules.
//! 9. [`source`]: PostgreSQL snapshot sessions and key-ordered row streams.
//! 10. [`config`]: `cutover.toml` + environment + flags → one checked config · [`redact`]: keeps
//!     credentials out of output.
//!
//! # Errors
//! Each module has its `thiserror` enum; `anyhow` only in [`commands`] and `main`. An error's
//! message says its cause (a driver's in a readable form) and does not also hand it out as
//! `source()`: `main` prints the chain (`{:#}`: the contexts, then the error), so each cause
//! appears once.
//!
//! The Appwrite stand-in used by the tests is its own package (`tests/appwrite-standin`).

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
pub mod serve;
pub mod sink;
pub mod source;
pub mod transform;
pub mod validate;
pub mod verify;
