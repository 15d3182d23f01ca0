//! The records of the target that a pass leaves as they are keep their unique keys: a row taking
//! one of those keys is refused by the target (mongod's E11000, Appwrite's 409) whatever its
//! place in key order. `check` and a dry run, which judge the rows they read, hold those keys
//! before the first row (the outside tester's F8 and F9):
//!
//! - the record of a row gone from the source, on a re-run without `--sync-deletes` (with it,
//!   such records are deleted before the load: their keys are free);
//! - the record of a row the pass does not read: before the checkpoint a resume starts after
//!   (the interrupted run wrote it), or unchanged since the last run (`--since-last`).
//!
//! They are found as `--sync-deletes` finds the records of rows gone
//! ([`super::sync_deletes::absent_records`]: two sorted streams, or an external sort), with the
//! fields the unique keys are formed from; memory holds their keys, as the rehearsal holds
//! those of the rows it reads.

use super::error::RunError;
use super::spill::Spill;
use super::stage::StageRun;
use super::sync_deletes::{absent_records, keys_of, keys_only, record_key, source_ids};
use crate::mapping::plan::Plan;
use crate::sink::target::Target;
use crate::source::SourceSession;
use crate::source::postgres::ReadSpec;

/// A record of the target that the pass leaves as it is.
pub(crate) struct Kept {
    /// The record named as the holder of its keys ("the document 7 of a row gone from the
    /// source (kept without --sync-deletes)").
    pub said: String,
    pub fields: KeptFields,
}

/// The fields of a kept record its unique keys are formed from, as the target gives them.
pub(crate) enum KeptFields {
    /// A MongoDB document (the fields asked for and `_id`).
    Document(bson::Document),
    /// An Appwrite row (its columns asked for), as JSON.
    Row(serde_json::Value),
}

fn io_err(cause: std::io::Error) -> RunError {
    RunError::Io {
        path: std::path::PathBuf::from("a temporary file (sorting the records a pass keeps)"),
        cause,
    }
}

/// Calls `keep` on each record of `plan`'s destination that a pass leaves as it is, with its
/// top-level `fields`: those of rows gone from the source (unless `sync_deletes`: they are deleted
/// before the load), and those of rows in the source the pass does not read. `pass`: what the
/// pass reads (a read of the key columns alone, in key order) and how to say a row it does not
/// ("before the checkpoint …"); `None`, the whole source. Returns how many. A destination that
/// does not exist keeps none.
pub(crate) async fn kept_records(
    plan: &Plan,
    session: &SourceSession,
    target: &Target,
    pass: Option<(&ReadSpec, &str)>,
    sync_deletes: bool,
    fields: &[String],
    mut keep: impl FnMut(Kept),
) -> Result<u64, RunError> {
    let not_read = pass.map(|(_, said)| said).unwrap_or_default();
    if let Target::Appwrite(a) = target {
        let exists = a
            .client
            .table_exists(&a.database, &plan.collection)
            .await
            .map_err(|e| RunError::Sink(crate::sink::target::SinkError::Appwrite(e)))?;
        if !exists {
            return Ok(0);
        }
    }
    let noun = match target {
        Target::Mongo(_) => "the document",
        Target::Appwrite(_) => "the record",
    };
    let kept = |id: &bson::Bson, gone: bool, payload: &[u8]| -> Option<Kept> {
        let id = crate::sink::mongo_unique::shown_id(id);
        let said = if gone {
            format!("{noun} {id} of a row gone from the source (kept without --sync-deletes)")
        } else {
            format!("{noun} {id} of a row {not_read}")
        };
        let fields = match target {
            Target::Mongo(_) => KeptFields::Document(bson::from_slice(payload).ok()?),
            Target::Appwrite(_) => KeptFields::Row(serde_json::from_slice(payload).ok()?),
        };
        Some(Kept { said, fields })
    };
    let mut n = 0u64;
    // A pass that reads every row: the records it keeps are those of rows gone.
    let Some(pass) = pass
        .map(|(p, _)| p)
        .filter(|p| p.after.is_some() || p.filter.is_some())
    else {
        if sync_deletes {
            return Ok(0);
        }
        absent_records(
            plan,
            session,
            target,
            &keys_only(plan),
            fields,
            async |id, payload| {
                if let Some(k) = kept(&id, true, &payload) {
                    n += 1;
                    keep(k);
                }
                Ok(())
            },
        )
        .await?;
        return Ok(n);
    };
    // The records the pass does not read, then each told apart: its row in the source (not
    // read), or gone.
    let mut unread = Spill::new();
    absent_records(
        plan,
        session,
        target,
        pass,
        fields,
        async |id, payload| -> Result<(), RunError> {
            unread
                .push(record_key(target, &id), payload)
                .map_err(io_err)?;
            Ok(())
        },
    )
    .await?;
    let mut unread = unread.sorted().map_err(io_err)?;
    let mut source = source_ids(plan, session, target, &keys_only(plan)).await?;
    while let Some((key, payload)) = unread.next_record().map_err(io_err)? {
        let gone = !source.holds(&key).map_err(io_err)?;
        if gone && sync_deletes {
            continue;
        }
        let id = match target {
            Target::Mongo(_) => crate::sink::order::id_from_bytes(&key),
            Target::Appwrite(_) => Some(bson::Bson::String(
                String::from_utf8_lossy(&key).into_owned(),
            )),
        };
        if let Some(k) = id.and_then(|id| kept(&id, gone, &payload)) {
            n += 1;
            keep(k);
        }
    }
    Ok(n)
}

/// A dry run's stage, before its first row: the unique keys of the target's records its pass
/// leaves as they are are held for the rehearsal ([`Target::refusal`]), each record named as
/// their holder. Nothing when the destination has no unique index to rehearse.
pub(super) async fn hold_for_rehearsal(
    plan: &Plan,
    session: &SourceSession,
    target: &Target,
    stage: &StageRun,
) -> Result<u64, RunError> {
    let fields = match target {
        Target::Mongo(m) => m.unique_fields(&plan.collection),
        Target::Appwrite(a) => a.unique_columns(&plan.collection),
    };
    if fields.is_empty() {
        return Ok(0);
    }
    let pass = keys_of(plan, &super::read::pass_read(plan, stage)?);
    let not_read = match (&stage.resume, &stage.since) {
        (Some(_), None) => {
            "before the checkpoint this run resumes after (the interrupted run wrote it)"
        }
        (None, Some(_)) => "unchanged since the last run (--since-last does not read it again)",
        _ => {
            "this run does not read again (before its checkpoint, or unchanged since the last run)"
        }
    };
    let n = kept_records(
        plan,
        session,
        target,
        Some((&pass, not_read)),
        stage.sync_deletes,
        &fields,
        |k| match (target, &k.fields) {
            (Target::Mongo(m), KeptFields::Document(d)) => {
                m.hold_kept(&plan.collection, &k.said, d)
            }
            (Target::Appwrite(a), KeptFields::Row(r)) => a.hold_kept(&plan.collection, &k.said, r),
            _ => {}
        },
    )
    .await?;
    if n > 0 {
        tracing::info!(entity = %plan.entity, records = n, "the rehearsal holds the unique keys of the target's records this run leaves as they are");
    }
    Ok(n)
}
