//! The expected documents: the source rows of one plan read in key order, their embedded
//! children merged in, and each row mapped exactly as `migrate` maps it — and, where the merge
//! meets them, the child rows that belong to no parent row (every one, the child read's rows
//! past the last parent included), so that each reader accounts for them alike. One stream for every
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
use crate::transform::{Issue, RULE_ORPHAN_CHILD, Stage};

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
    /// when the row itself could not be decoded; `decoded` then holds the columns read before
    /// the one that failed (the key among them when it came first).
    Rejected {
        key: String,
        issues: Vec<Issue>,
        row: Option<Vec<Value>>,
        decoded: Vec<Value>,
    },
    /// A document the run writes; `mapped.doc` is set and `mapped.issues` holds only warnings.
    Document {
        row: Vec<Value>,
        /// Child rows embedded, per embed.
        child_counts: Vec<usize>,
        mapped: Mapped,
    },
    /// A child row no parent row of the read has (not a source row of the plan itself: not
    /// counted as read). Handed out where the child stream has it: before the first parent row
    /// whose key sorts after its foreign key, or after the last parent row (a foreign key past
    /// every parent key, NULL or NULL in part, or one that cannot be decoded).
    Orphan(Orphan),
}

/// A child row embedded nowhere (see [`ExpectedRow::Orphan`]).
pub(crate) struct Orphan {
    /// Index of the embed (into `plan.embeds`).
    pub embed: usize,
    /// The child's foreign key and `order_by` values, as rejects files write keys.
    pub key: String,
    /// Its foreign key alone.
    pub foreign_key: String,
}

impl Orphan {
    /// The line of the rejects file that accounts for it.
    pub(crate) fn issue(&self, plan: &Plan) -> Issue {
        let e = &plan.embeds[self.embed];
        let fk: Vec<&str> = e.read.columns[..e.fk_len]
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        Issue::error(
            Stage::Embed,
            RULE_ORPHAN_CHILD,
            &e.path_text,
            format!(
                "a row of {} whose {} ({}) no row of {} has was not embedded in `{}`",
                e.source_name,
                if fk.len() == 1 {
                    "foreign key"
                } else {
                    "foreign keys"
                },
                fk.join(", "),
                plan.source_name,
                e.path_text
            ),
            self.foreign_key.clone(),
        )
    }
}

/// The source rows of a plan, mapped (see the module's documentation).
pub(crate) struct ExpectedRows<'c, 'p> {
    plan: &'p Plan,
    rows: BoxStream<'c, Result<DecodedRow, SourceError>>,
    /// The parent row read whose preceding orphans are being handed out.
    parent: Option<DecodedRow>,
    /// Every parent row read: what the child streams still hold are orphans.
    parents_done: bool,
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
            .map(|(conn, spec)| ChildCursor::new(postgres::copy_stream(conn, spec)))
            .collect();
        ExpectedRows {
            plan,
            rows: postgres::copy_stream(&mut readers.parent, read),
            parent: None,
            parents_done: false,
            cursors,
            max_document_bytes,
            last_key: None,
        }
    }

    /// The next row or orphan child row, `None` at the end.
    pub(crate) async fn next(&mut self, ctx: &MapContext) -> Result<Option<ExpectedRow>, RunError> {
        let plan = self.plan;
        let width = plan.key.len();
        if self.parent.is_none() && !self.parents_done {
            match self.rows.try_next().await? {
                Some(item) => self.parent = Some(item),
                None => self.parents_done = true,
            }
        }
        // The children sorting before this parent's key (after the last parent: every child
        // left) are orphans, handed out one by one: none is held in memory. A parent whose key
        // could not be decoded bounds nothing; the next one does.
        let bound: Option<Option<&[Value]>> = match &self.parent {
            None => Some(None),
            Some(Ok(row)) => Some(Some(&row[..width])),
            Some(Err(err)) => err.key(width).map(|_| Some(&err.decoded[..width])),
        };
        if let Some(bound) = bound {
            for (i, c) in self.cursors.iter_mut().enumerate() {
                if let Some(child) = c.next_orphan(bound, width).await? {
                    return Ok(Some(ExpectedRow::Orphan(orphan(plan, i, child))));
                }
            }
        }
        let Some(item) = self.parent.take() else {
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
                // The children of a row rejected past its key are its own, not orphans; so are
                // those whose foreign key is named as its key is, though neither can be decoded
                // (text that is not UTF-8: the fourteenth tester's U6).
                if err.key(plan.key.len()).is_some() {
                    for c in self.cursors.iter_mut() {
                        c.children_of(&err.decoded, plan).await?;
                    }
                } else if err.raw.is_some() {
                    let name = err.key_text(width);
                    for c in self.cursors.iter_mut() {
                        c.children_named(&name, width).await?;
                    }
                }
                return Ok(Some(ExpectedRow::Rejected {
                    key: err.key_text(plan.key.len()),
                    issues: vec![issue],
                    row: None,
                    decoded: err.decoded,
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
                    decoded: Vec::new(),
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
                decoded: Vec::new(),
            }));
        }
        let mapped = map_row(plan, &row, &children, ctx);
        let size = match &mapped.doc {
            None => {
                return Ok(Some(ExpectedRow::Rejected {
                    key: mapped.key,
                    issues: mapped.issues,
                    row: Some(row),
                    decoded: Vec::new(),
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
                decoded: Vec::new(),
            }));
        }
        Ok(Some(ExpectedRow::Document {
            row,
            child_counts: children.iter().map(Vec::len).collect(),
            mapped,
        }))
    }
}

/// Names an orphan child row of embed `embed` by its leading (ordering) columns.
fn orphan(plan: &Plan, embed: usize, child: DecodedRow) -> Orphan {
    let e = &plan.embeds[embed];
    let (key, foreign_key) = match &child {
        Ok(values) => {
            let refs: Vec<&Value> = values.iter().collect();
            (
                key_text(&refs[..e.child_key_len.min(refs.len())]),
                key_text(&refs[..e.fk_len.min(refs.len())]),
            )
        }
        Err(err) => (err.key_text(e.child_key_len), err.key_text(e.fk_len)),
    };
    Orphan {
        embed,
        key,
        foreign_key,
    }
}

/// Reads child rows of one embed in foreign-key order, handing out those of each parent and
/// those of none.
pub(crate) struct ChildCursor<'c> {
    stream: BoxStream<'c, Result<DecodedRow, SourceError>>,
    pending: Option<DecodedRow>,
    done: bool,
}

/// The child rows of one parent, and those of its children that could not be decoded (which
/// reject the parent: its document would silently lack them).
pub(crate) struct Children {
    pub rows: Vec<Vec<Value>>,
    pub undecodable: Vec<postgres::DecodeError>,
}

/// The foreign key of a child row, when it could be decoded. Children start with the
/// foreign-key columns, one per parent key column.
fn foreign_key(child: &DecodedRow, width: usize) -> Option<&[Value]> {
    match child {
        Ok(values) => values.get(..width),
        Err(err) => err.key(width).map(|_| &err.decoded[..width]),
    }
}

/// How a child's foreign key stands to a parent key: `Equal` only when it is that parent's (a
/// NULL part equals nothing, as in SQL).
fn fk_order(fk: &[Value], parent: &[Value]) -> std::cmp::Ordering {
    let order = fk
        .iter()
        .zip(parent)
        .map(|(fk, p)| fk.key_cmp(p))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal);
    if order.is_eq() && fk.iter().any(Value::is_null) {
        // Sorts with a parent key holding NULL at the same place, yet belongs to none.
        return std::cmp::Ordering::Less;
    }
    order
}

impl<'c> ChildCursor<'c> {
    pub(crate) fn new(stream: BoxStream<'c, Result<DecodedRow, SourceError>>) -> ChildCursor<'c> {
        ChildCursor {
            stream,
            pending: None,
            done: false,
        }
    }

    /// The next child row, read when none is pending; `None` at the end.
    async fn peek(&mut self) -> Result<Option<&DecodedRow>, RunError> {
        if self.pending.is_none() && !self.done {
            match self.stream.try_next().await? {
                Some(row) => self.pending = Some(row),
                None => self.done = true,
            }
        }
        Ok(self.pending.as_ref())
    }

    /// The next child row that belongs to no parent row, given the key of the parent row read
    /// next (`None`: every parent row was read): one whose foreign key sorts before that key,
    /// holds a NULL, or cannot be decoded (a date `infinity`: it equals no parent key that can
    /// be, and a parent of that key is itself rejected for it, `date_out_of_range`).
    pub(crate) async fn next_orphan(
        &mut self,
        parent: Option<&[Value]>,
        width: usize,
    ) -> Result<Option<DecodedRow>, RunError> {
        let Some(child) = self.peek().await? else {
            return Ok(None);
        };
        let orphan = match (foreign_key(child, width), parent) {
            (None, _) | (Some(_), None) => true,
            (Some(fk), Some(parent)) => fk_order(fk, parent).is_lt(),
        };
        Ok(if orphan { self.pending.take() } else { None })
    }

    /// Takes the child rows next in the stream whose foreign key could not be decoded and is
    /// named `name` (as rejects files name keys): the children of a parent row whose key is
    /// named so and could not be decoded either. How many.
    pub(crate) async fn children_named(
        &mut self,
        name: &str,
        width: usize,
    ) -> Result<usize, RunError> {
        let mut n = 0;
        while let Some(Err(err)) = self.peek().await? {
            if err.key(width).is_some() || err.key_text(width) != name {
                break;
            }
            self.pending = None;
            n += 1;
        }
        Ok(n)
    }

    /// The child rows of the parent row `parent`, once the orphans before it were handed out
    /// ([`ChildCursor::next_orphan`]). A child whose foreign key could be decoded but another
    /// column not is handed out as undecodable.
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
            let Some(child) = self.peek().await? else {
                return Ok(out);
            };
            let mine =
                foreign_key(child, width).is_some_and(|fk| fk_order(fk, &parent[..width]).is_eq());
            if !mine {
                // A later parent's, or an orphan handed out before the next parent.
                return Ok(out);
            }
            match self.pending.take().expect("peeked above") {
                Ok(child) => out.rows.push(child),
                Err(err) => out.undecodable.push(err),
            }
        }
    }
}
