//! Removing target records with a note in the ledger first, so that what a killed run removed
//! is still counted by the run that resumes its step: the records are gone by then, and only
//! the note says they were there (see `Ledger::note_removal`). Used for the older documents of
//! rows rejected now and for `--sync-deletes`.

use bson::Bson;

use super::error::RunError;
use crate::ledger::{Ledger, NotedRemoval, Removal};
use crate::sink::target::Target;

/// Notes and removes records for one step (no notes in a dry run: there is no ledger).
#[derive(Clone)]
pub(super) struct Remover {
    pub(super) ledger: Option<Ledger>,
    pub(super) run_id: String,
    pub(super) entity: String,
}

/// A removal noted and not yet done: the records there when it was noted.
pub(super) struct Noted {
    note: Option<String>,
    pub(super) ids: Vec<Bson>,
}

impl Remover {
    /// Notes those of `ids` that are there now (only they can be removed, so only they may be
    /// counted); the caller removes `Noted::ids` and then calls [`Remover::done`].
    pub(super) async fn note(
        &self,
        target: &Target,
        collection: &str,
        kind: Removal,
        ids: &[Bson],
    ) -> Result<Noted, RunError> {
        let Some(ledger) = &self.ledger else {
            return Ok(Noted {
                note: None,
                ids: ids.to_vec(),
            });
        };
        let there = target.present(collection, ids).await?;
        self.note_listed(ledger, kind, there).await
    }

    /// Notes records just listed from the target (there now, as the target names them: for
    /// Appwrite the row ids, as `Bson::String`).
    pub(super) async fn note_listed(
        &self,
        ledger: &Ledger,
        kind: Removal,
        ids: Vec<Bson>,
    ) -> Result<Noted, RunError> {
        if ids.is_empty() {
            return Ok(Noted { note: None, ids });
        }
        let note = ledger
            .note_removal(&self.run_id, &self.entity, kind, &ids)
            .await?;
        Ok(Noted {
            note: Some(note),
            ids,
        })
    }

    /// The noted removal is done: `removed` records went.
    pub(super) async fn done(&self, noted: Noted, removed: u64) -> Result<(), RunError> {
        if let (Some(ledger), Some(note)) = (&self.ledger, noted.note) {
            ledger.removal_done(&note, removed).await?;
        }
        Ok(())
    }

    /// Notes, removes and records the older documents `ids` of rows rejected now: how many
    /// went (Appwrite users: were blocked).
    pub(super) async fn remove_stale(
        &self,
        target: &Target,
        collection: &str,
        ids: &[Bson],
    ) -> Result<u64, RunError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let noted = self.note(target, collection, Removal::Stale, ids).await?;
        let removed = target.remove_documents(collection, &noted.ids).await?;
        self.done(noted, removed).await?;
        Ok(removed)
    }
}

/// What a killed step removed, by its notes: (older documents of rejected rows, records whose
/// source rows are gone). A removal it did not say was done counts the noted records that are
/// not there any more.
pub(super) async fn removed_by(
    target: &Target,
    collection: &str,
    notes: &[NotedRemoval],
) -> Result<(u64, u64), RunError> {
    let (mut stale, mut deleted) = (0, 0);
    for n in notes {
        let gone = match n.removed {
            Some(k) => k,
            None => {
                let there = match (target, n.kind) {
                    // `--sync-deletes` notes Appwrite's own record ids.
                    (Target::Appwrite(a), Removal::SyncDeletes) => {
                        let ids: Vec<String> = n
                            .ids
                            .iter()
                            .filter_map(|b| b.as_str().map(str::to_string))
                            .collect();
                        a.present_records(collection, &ids)
                            .await
                            .map_err(|e| RunError::Sink(e.into()))?
                            .len()
                    }
                    _ => target.present(collection, &n.ids).await?.len(),
                };
                n.ids.len().saturating_sub(there) as u64
            }
        };
        match n.kind {
            Removal::Stale => stale += gone,
            Removal::SyncDeletes => deleted += gone,
        }
    }
    Ok((stale, deleted))
}
