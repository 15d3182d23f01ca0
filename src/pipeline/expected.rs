//! The expected documents: the source rows of one plan read in key order, their embedded
//! children merged in, and each row mapped exactly as `migrate` maps it. One stream for every
//! reader that must agree with the run — the run itself, `check` (which counts in advance what
//! the run will reject), `verify` (which re-derives what the target should hold) and the bench.

use futures::TryStreamExt;
use futures::stream::BoxStream;
use sqlx::PgConnection;

use super::error::RunError;
use crate::mapping::plan::Plan;
use crate::source::postgres::{self, DecodedRow, ReadSpec, SourceError};
use crate::source::value::key_text;
use crate::source::{SourceSession, Value};
use crate::transform::row::{MapContext, Mapped, map_row};
use crate::transform::{Issue, Stage};

/// The connections one expected-documents stream reads over: the parent's and one per embed,
/// all in the session's snapshot.
pub(crate) struct Readers {
    parent: PgConnection,
    children: Vec<PgConnection>,
}

impl Readers {
    pub(crate) async fn open(session: &SourceSession, plan: &Plan) -> Result<Readers, SourceError> {
        let parent = session.reader().await?;
        let mut children = Vec::with_capacity(plan.embeds.len());
        for _ in &plan.embeds {
            children.push(session.reader().await?);
        }
        Ok(Readers { parent, children })
    }
}

/// One source row, as the run will treat it.
pub(crate) enum ExpectedRow {
    /// Rejected before any write: a column (its own or a child's) that cannot be decoded, a
    /// mapping or validation error, or a document too large. `row` is the decoded row, `None`
    /// when the row itself could not be decoded.
    Rejected {
        key: String,
        issues: Vec<Issue>,
        row: Option<Vec<Value>>,
    },
    /// A document the run writes; `mapped.doc` is set and `mapped.issues` holds only warnings.
    Document {
        row: Vec<Value>,
        /// Child rows embedded, per embed.
        child_counts: Vec<usize>,
        mapped: Mapped,
    },
}

/// The source rows of a plan, mapped (see the module's documentation).
pub(crate) struct ExpectedRows<'c, 'p> {
    plan: &'p Plan,
    rows: BoxStream<'c, Result<DecodedRow, SourceError>>,
    cursors: Vec<ChildCursor<'c>>,
    /// The target's document size limit (MongoDB's), if it has one: larger documents are
    /// rejected.
    max_document_bytes: Option<usize>,
    /// The key of the last row read, to tell a key given twice (a query source, a table
    /// without a unique key): rows arrive in key order, so a repeated key follows its first.
    last_key: Option<Vec<Value>>,
}

/// The reject rule of a row whose key an earlier row of the same read has (its document would
/// replace the first's).
pub const RULE_DUPLICATE_KEY: &str = "duplicate_key";

impl<'c, 'p> ExpectedRows<'c, 'p> {
    /// The plan's own reads, for a target that takes documents up to `max_document_bytes`
    /// ([`crate::sink::target::Target::max_document_bytes`]).
    pub(crate) fn new(
        readers: &'c mut Readers,
        plan: &'p Plan,
        max_document_bytes: Option<usize>,
    ) -> ExpectedRows<'c, 'p> {
        let children: Vec<&ReadSpec> = plan.embeds.iter().map(|e| &e.read).collect();
        Self::with_reads(readers, plan, &plan.read, &children, max_document_bytes)
    }

    /// Other reads of the same plan (a resume's `after`, a `--since` filter); `children` has one
    /// read per embed, each starting with the foreign key.
    pub(crate) fn with_reads(
        readers: &'c mut Readers,
        plan: &'p Plan,
        read: &ReadSpec,
        children: &[&ReadSpec],
        max_document_bytes: Option<usize>,
    ) -> ExpectedRows<'c, 'p> {
        let cursors = readers
            .children
            .iter_mut()
            .zip(children)
            .map(|(conn, spec)| ChildCursor::new(postgres::stream(conn, spec)))
            .collect();
        ExpectedRows {
            plan,
            rows: postgres::stream(&mut readers.parent, read),
            cursors,
            max_document_bytes,
            last_key: None,
        }
    }

    /// Child rows whose parent is not in the source (not embedded anywhere), so far.
    pub(crate) fn orphans(&self) -> u64 {
        self.cursors.iter().map(|c| c.orphans).sum()
    }

    /// The next row, `None` at the end.
    pub(crate) async fn next(&mut self, ctx: &MapContext) -> Result<Option<ExpectedRow>, RunError> {
        let plan = self.plan;
        let Some(item) = self.rows.try_next().await? else {
            return Ok(None);
        };
        let row = match item {
            Ok(row) => row,
            Err(err) => {
                let column = &plan.read.columns[err.column].name;
                let issue = Issue::error(
                    Stage::Transform,
                    err.rule,
                    column,
                    format!("cannot decode column {column}: {}", err.message),
                    String::new(),
                );
                // The children of a row rejected past its key are its own, not orphans.
                if err.key(plan.key.len()).is_some() {
                    for c in self.cursors.iter_mut() {
                        c.children_of(&err.decoded, plan).await?;
                    }
                }
                return Ok(Some(ExpectedRow::Rejected {
                    key: err.key_text(plan.key.len()),
                    issues: vec![issue],
                    row: None,
                }));
            }
        };
        let key: Vec<&Value> = plan.key.iter().map(|&k| &row[k]).collect();
        if !key.iter().any(|v| v.is_null()) {
            let repeated = self.last_key.as_ref().is_some_and(|last| {
                last.len() == key.len()
                    && last
                        .iter()
                        .zip(&key)
                        .all(|(a, b)| a.key_cmp(b) == std::cmp::Ordering::Equal)
            });
            if repeated {
                // Its children were embedded in the first row of the key. Named by the written
                // row's key (equal, yet maybe written otherwise: 1.0 and 1.00).
                let kept: Vec<&Value> = self.last_key.iter().flatten().collect();
                let issue = Issue::error(
                    Stage::Transform,
                    RULE_DUPLICATE_KEY,
                    "_id",
                    format!(
                        "an earlier row has the key {}, which PostgreSQL holds equal: that row is written, this one would replace it (make the key unique, or choose another key)",
                        key_text(&kept)
                    ),
                    String::new(),
                );
                return Ok(Some(ExpectedRow::Rejected {
                    key: key_text(&key),
                    issues: vec![issue],
                    row: Some(row),
                }));
            }
            self.last_key = Some(key.iter().map(|v| (*v).clone()).collect());
        }
        let mut children = Vec::with_capacity(self.cursors.len());
        let mut undecodable = Vec::new();
        for (i, c) in self.cursors.iter_mut().enumerate() {
            let got = c.children_of(&row, plan).await?;
            children.push(got.rows);
            let e = &plan.embeds[i];
            undecodable.extend(got.undecodable.into_iter().map(|err| {
                Issue::error(
                    Stage::Transform,
                    err.rule,
                    &format!("{}.{}", e.path_text, e.read.columns[err.column].name),
                    format!("a child row of `{}`: {}", e.path_text, err.message),
                    String::new(),
                )
            }));
        }
        if !undecodable.is_empty() {
            // The document would lack these children: the parent is rejected, never cut short.
            let key: Vec<&Value> = plan.key.iter().map(|&k| &row[k]).collect();
            return Ok(Some(ExpectedRow::Rejected {
                key: key_text(&key),
                issues: undecodable,
                row: Some(row),
            }));
        }
        let mapped = map_row(plan, &row, &children, ctx);
        let size = match &mapped.doc {
            None => {
                return Ok(Some(ExpectedRow::Rejected {
                    key: mapped.key,
                    issues: mapped.issues,
                    row: Some(row),
                }));
            }
            Some(doc) => doc.as_bytes().len(),
        };
        if let Some(max) = self.max_document_bytes
            && size > max
        {
            let issue = Issue::error(
                Stage::Transform,
                "document_too_large",
                "",
                format!("the document is {size} bytes; MongoDB's limit is {max}"),
                String::new(),
            );
            return Ok(Some(ExpectedRow::Rejected {
                key: mapped.key,
                issues: vec![issue],
                row: Some(row),
            }));
        }
        Ok(Some(ExpectedRow::Document {
            row,
            child_counts: children.iter().map(Vec::len).collect(),
            mapped,
        }))
    }
}

/// Reads child rows of one embed in foreign-key order, handing out those of each parent.
pub(crate) struct ChildCursor<'c> {
    stream: BoxStream<'c, Result<DecodedRow, SourceError>>,
    pending: Option<DecodedRow>,
    done: bool,
    orphans: u64,
}

/// The child rows of one parent, and those of its children that could not be decoded (which
/// reject the parent: its document would silently lack them).
pub(crate) struct Children {
    pub rows: Vec<Vec<Value>>,
    pub undecodable: Vec<postgres::DecodeError>,
}

impl<'c> ChildCursor<'c> {
    pub(crate) fn new(stream: BoxStream<'c, Result<DecodedRow, SourceError>>) -> ChildCursor<'c> {
        ChildCursor {
            stream,
            pending: None,
            done: false,
            orphans: 0,
        }
    }

    /// The child rows of the parent row `parent` (children of keys before its key are orphans).
    /// Children start with the foreign-key columns, one per parent key column. A child whose
    /// foreign key could be decoded but another column not is handed out as undecodable; one
    /// whose foreign key cannot be decoded belongs to no parent that can be written.
    pub(crate) async fn children_of(
        &mut self,
        parent: &[Value],
        plan: &Plan,
    ) -> Result<Children, RunError> {
        let width = plan.key.len();
        let mut out = Children {
            rows: Vec::new(),
            undecodable: Vec::new(),
        };
        loop {
            if self.pending.is_none() {
                if self.done {
                    return Ok(out);
                }
                match self.stream.try_next().await? {
                    None => {
                        self.done = true;
                        return Ok(out);
                    }
                    // A foreign key that cannot be decoded (a date `infinity`) equals no
                    // parent key that can: its parent, if any, is itself rejected for that key
                    // (`date_out_of_range`), so the child goes with it, counted as an orphan.
                    Some(Err(err)) if err.key(width).is_none() => {
                        self.orphans += 1;
                        continue;
                    }
                    Some(row) => self.pending = Some(row),
                }
            }
            let fk: &[Value] = match self.pending.as_ref().expect("set above") {
                Ok(child) => child,
                Err(err) => &err.decoded,
            };
            let order = plan
                .key
                .iter()
                .zip(fk)
                .map(|(&k, fk)| fk.key_cmp(&parent[k]))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal);
            match order {
                std::cmp::Ordering::Less => {
                    self.orphans += 1;
                    self.pending = None;
                }
                std::cmp::Ordering::Equal => match self.pending.take().expect("set above") {
                    Ok(child) => out.rows.push(child),
                    Err(err) => out.undecodable.push(err),
                },
                std::cmp::Ordering::Greater => return Ok(out),
            }
        }
    }
}
