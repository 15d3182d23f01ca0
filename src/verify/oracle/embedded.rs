//! The independent comparison inside embedded arrays (MongoDB): each child row's columns, as
//! PostgreSQL renders them (the child table's own query), against the element at the child's
//! position in its parent's array — with the same checks as top-level fields.
//!
//! The child rows stream in the embed's order (foreign key, then `order_by`): a parent's children
//! are consecutive, the n-th of them is the array's n-th element. Parents are looked up by `_id`
//! in batches, so memory holds one batch of parents' children. A parent or element that is not
//! in the target is left to the main comparison (which counts the elements).

use bson::{Bson, doc};
use futures::TryStreamExt;
use sqlx::AssertSqlSafe;

use super::{
    Comparer, FieldCheck, LOOKUP_CHUNK, NotCompared, at_path, field_checks, key_sql, key_value,
    merr, qerr,
};
use crate::mapping::plan::{EmbedPlan, Plan};
use crate::mapping::spec::EmbedElement;
use crate::pipeline::run::RunError;
use crate::source::postgres::{qualifier, quote_ident};
use crate::source::{ColKind, SourceSession, Value};

/// The checks of one embed (paths inside the element; `path_text` as `<array>.<field>`).
pub(super) struct EmbedChecks {
    embed: usize,
    checks: Vec<FieldCheck>,
}

impl EmbedChecks {
    pub(super) fn checks(&self) -> &[FieldCheck] {
        &self.checks
    }

    /// The embed's index in the plan.
    pub(super) fn embed(&self) -> usize {
        self.embed
    }

    pub(super) fn into_checks(self) -> Vec<FieldCheck> {
        self.checks
    }
}

/// The independently compared fields of each embed of `plan`, and those that are not.
pub(super) fn embed_fields(plan: &Plan) -> (Vec<EmbedChecks>, Vec<NotCompared>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, e) in plan.embeds.iter().enumerate() {
        let name = |p: &str| format!("{}.{}", e.path_text, p);
        // Without an order beyond the foreign key, a child's position is not defined.
        if e.read.order.len() <= e.fk_len {
            skipped.extend(e.fields.iter().map(|f| NotCompared {
                path: name(&f.path_text),
                why: "embedded without order_by (no defined element order)".into(),
            }));
            continue;
        }
        let (mut checks, not) = field_checks(&e.read.relation, &e.read, &e.fields);
        skipped.extend(not.into_iter().map(|n| NotCompared {
            path: name(&n.path),
            why: n.why,
        }));
        for c in &mut checks {
            c.path_text = name(&c.path_text);
            if e.element == EmbedElement::Value {
                // The element is the value; a NULL is a null element.
                c.path = Vec::new();
                c.keep_nulls = true;
            }
        }
        if !checks.is_empty() {
            out.push(EmbedChecks { embed: i, checks });
        }
    }
    (out, skipped)
}

/// One parent's children: its key text, `_id`, and each child's renderings in order.
type Family = (String, Bson, Vec<Vec<Option<String>>>);

/// The child query of `e`: the foreign-key renderings, then each check's, in the embed's order.
pub(super) fn child_query(e: &EmbedPlan, checks: &[FieldCheck]) -> String {
    let qual = qualifier(&e.read.relation);
    let col = |i: usize| format!("{qual}.{}", quote_ident(&e.read.columns[i].name));
    let mut select: Vec<String> = (0..e.fk_len)
        .map(|i| {
            let c = &e.read.columns[i];
            key_sql(c.kind, &c.pg_type, &col(i))
        })
        .collect();
    select.extend(checks.iter().map(|c| c.sql.clone()));
    let order: Vec<String> = e
        .read
        .order
        .iter()
        .map(|&i| crate::source::postgres::order_expr(&e.read.columns[i], &col(i)))
        .collect();
    format!(
        "SELECT {} FROM {} ORDER BY {}",
        select.join(", "),
        e.read.relation,
        order.join(", ")
    )
}

/// Looks the parents of `families` up and compares their children's fields; empties it.
/// Returns how many parent documents were compared.
async fn lookup(
    coll: &mongodb::Collection<bson::RawDocumentBuf>,
    e: &EmbedPlan,
    checks: &[FieldCheck],
    families: &mut Vec<Family>,
    cmp: &mut Comparer<'_>,
) -> Result<u64, RunError> {
    if families.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Bson> = families.iter().map(|(_, id, _)| id.clone()).collect();
    let op = || format!("read {}", coll.name());
    let mut cursor = coll
        .find(doc! { "_id": { "$in": ids } })
        .projection(doc! { e.path_text.clone(): 1 })
        .await
        .map_err(merr(op()))?;
    let mut found = std::collections::HashMap::new();
    while let Some(d) = cursor.try_next().await.map_err(merr(op()))? {
        let d = super::stored(&d, coll.name())?;
        let id = d.get("_id").cloned().unwrap_or(Bson::Null);
        found.insert(crate::verify::id_bytes(&id), d);
    }
    let mut compared = 0;
    for (key, id, children) in families.drain(..) {
        let Some(d) = found.get(&crate::verify::id_bytes(&id)) else {
            continue;
        };
        compared += 1;
        let Some(Bson::Array(elements)) = at_path(d, &e.path) else {
            continue;
        };
        for (pos, (texts, element)) in children.iter().zip(elements).enumerate() {
            for (c, text) in checks.iter().zip(texts) {
                let target = if c.path.is_empty() {
                    Some(element)
                } else {
                    match element {
                        Bson::Document(el) => at_path(el, &c.path),
                        _ => None,
                    }
                };
                cmp.field(&key, &id, c, text, target, Some(pos))?;
            }
        }
    }
    Ok(compared)
}

/// A numeric's text without trailing fractional zeros (`-0` as `0`): one text for every scale
/// of one value.
fn numeric_text(t: &str) -> String {
    let t = if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.')
    } else {
        t
    };
    if t == "-0" { "0".into() } else { t.to_string() }
}

/// A child row of a compared parent, as [`Families::child`] reads it.
pub(super) struct Child<'a> {
    /// The parent's key text and `_id`.
    pub parent: &'a (String, Bson),
    /// Its position among the parent's children (0: the first).
    pub pos: u64,
    /// Each check's rendering, in the checks' order.
    pub texts: Vec<Option<String>>,
}

/// Reads the rows of [`child_query`] (foreign-key renderings first, then the checks') in their
/// order, telling each child's parent and position: a parent's children are consecutive. Every
/// `step`-th parent is compared, when its key gives an `_id`; the children of the others are
/// passed over.
pub(super) struct Families<'p> {
    plan: &'p Plan,
    fk_len: usize,
    checks: usize,
    kinds: Vec<ColKind>,
    step: u64,
    parents: u64,
    fk: Option<Vec<Option<String>>>,
    parent: Option<(String, Bson)>,
    next: u64,
    context: String,
}

impl<'p> Families<'p> {
    pub(super) fn new(plan: &'p Plan, embed: usize, checks: usize, step: u64) -> Self {
        let e = &plan.embeds[embed];
        Families {
            plan,
            fk_len: e.fk_len,
            checks,
            kinds: plan
                .key
                .iter()
                .map(|&k| plan.read.columns[k].kind)
                .collect(),
            step: step.max(1),
            parents: 0,
            fk: None,
            parent: None,
            next: 0,
            context: format!("read {} for the independent comparison", e.read.relation),
        }
    }

    /// What a failing read of the child rows is named in errors.
    pub(super) fn context(&self) -> &str {
        &self.context
    }

    /// The next child row: `None` when its parent is not compared.
    pub(super) fn child(
        &mut self,
        row: &sqlx::postgres::PgRow,
    ) -> Result<Option<Child<'_>>, RunError> {
        // Bytes that are no UTF-8 (a SQL_ASCII database): the run rejected the child's parent
        // (rule `encoding`), which is not compared.
        let context = self.context.clone();
        let text = |i: usize| super::utf8_text(row, i, &context);
        let mut fk = Vec::with_capacity(self.fk_len);
        for i in 0..self.fk_len {
            let Some(t) = text(i)? else {
                return Ok(None);
            };
            // Numerics PostgreSQL holds equal (1, 1.0, 1.00) are one parent's.
            fk.push(match self.kinds.get(i) {
                Some(ColKind::Numeric) => t.map(|t| numeric_text(&t)),
                _ => t,
            });
        }
        if self.fk.as_ref() != Some(&fk) {
            let sampled = self.parents.is_multiple_of(self.step);
            self.parents += 1;
            let parent = fk
                .iter()
                .zip(&self.kinds)
                .map(|(t, kind)| t.as_deref().and_then(|t| key_value(*kind, t)))
                .collect::<Option<Vec<Value>>>();
            self.parent = parent.filter(|_| sampled).and_then(|p| {
                let refs: Vec<&Value> = p.iter().collect();
                self.plan
                    .id
                    .id_for(&refs)
                    .ok()
                    .map(|id| (crate::source::value::key_text(&refs), id))
            });
            self.fk = Some(fk);
            self.next = 0;
        }
        let pos = self.next;
        self.next += 1;
        if self.parent.is_none() {
            return Ok(None);
        }
        let mut texts = Vec::with_capacity(self.checks);
        for i in 0..self.checks {
            let Some(t) = text(self.fk_len + i)? else {
                return Ok(None);
            };
            texts.push(t);
        }
        let parent = self.parent.as_ref().expect("checked above");
        Ok(Some(Child { parent, pos, texts }))
    }
}

/// Compares the embedded fields of `plan` in the target with the child tables' own values.
/// `step`: every `step`-th parent (by its children's order) when sampling.
pub(super) async fn compare(
    plan: &Plan,
    session: &mut SourceSession,
    coll: &mongodb::Collection<bson::RawDocumentBuf>,
    step: u64,
    embeds: &[EmbedChecks],
    cmp: &mut Comparer<'_>,
) -> Result<(), RunError> {
    for ec in embeds {
        let e = &plan.embeds[ec.embed];
        let checks = &ec.checks;
        let mut reader = Families::new(plan, ec.embed, checks.len(), step);
        let context = reader.context().to_string();
        let mut conn = session.reader().await?;
        super::pin_renderings(&mut conn).await?;
        let mut rows = sqlx::query(AssertSqlSafe(child_query(e, checks))).fetch(&mut conn);
        let mut families: Vec<Family> = Vec::new();
        let mut parents = 0u64;
        while let Some(row) = rows.try_next().await.map_err(qerr(context.clone()))? {
            let Some(child) = reader.child(&row)? else {
                continue;
            };
            if child.pos == 0 {
                if families.len() >= LOOKUP_CHUNK {
                    parents += lookup(coll, e, checks, &mut families, cmp).await?;
                }
                let (key, id) = child.parent.clone();
                families.push((key, id, Vec::new()));
            }
            families
                .last_mut()
                .expect("pushed at its first child")
                .2
                .push(child.texts);
        }
        drop(rows);
        parents += lookup(coll, e, checks, &mut families, cmp).await?;
        // Documents whose values were compared: those of the top-level fields, else those
        // whose embedded values were.
        cmp.documents = cmp.documents.max(parents);
    }
    Ok(())
}
