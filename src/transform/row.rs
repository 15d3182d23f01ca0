//! One source row (and its embedded children) → one document, following a compiled plan.
//! Pure and synchronous: the engine calls it for every row.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bson::{Bson, Document};

use super::{Issue, Stage, apply, to_bson};
use crate::mapping::plan::{Combine, EmbedPlan, FieldPlan, Input, Plan};
use crate::mapping::spec::{EmbedElement, NullPolicy, Severity};
use crate::source::Value;
use crate::source::value::key_text;

/// Per-run inputs of the row mapper.
#[derive(Debug, Clone, Default)]
pub struct MapContext {
    /// "Now" for `not_in_future`, fixed at the start of the run so results are reproducible.
    pub now_ms: i64,
    pub skip_validation: bool,
    /// Source keys of referenced entities, for `exists` rules (by entity name).
    pub known_keys: HashMap<String, Arc<HashSet<String>>>,
}

/// What became of one row.
#[derive(Debug)]
pub struct Mapped {
    /// The source key as text (`a|b` for composite keys).
    pub key: String,
    /// The document, unless an error-severity issue rejected the row.
    pub doc: Option<Document>,
    pub issues: Vec<Issue>,
}

impl Mapped {
    pub fn warnings(&self) -> impl Iterator<Item = &Issue> {
        self.issues.iter().filter(|i| !i.is_error())
    }
}

/// Inserts `value` at `path`, creating sub-documents as needed.
pub fn insert_path(doc: &mut Document, path: &[String], value: Bson) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = doc;
    for p in parents {
        if !matches!(cur.get(p), Some(Bson::Document(_))) {
            cur.insert(p.clone(), Document::new());
        }
        cur = match cur.get_mut(p) {
            Some(Bson::Document(d)) => d,
            _ => unreachable!("inserted above"),
        };
    }
    cur.insert(last.clone(), value);
}

fn combine(c: &Combine, row: &[Value], idx: &[usize]) -> Value {
    match c {
        Combine::Array => Value::Array(idx.iter().map(|&i| row[i].clone()).collect()),
        Combine::Concat(sep) => {
            let parts: Vec<String> = idx
                .iter()
                .map(|&i| &row[i])
                .filter(|v| !v.is_null())
                .map(|v| v.to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if parts.is_empty() {
                Value::Null
            } else {
                Value::Text(parts.join(sep))
            }
        }
    }
}

/// Evaluates one field; `None` means the field is left out of the document.
fn eval_field(
    f: &FieldPlan,
    row: &[Value],
    ctx: &MapContext,
    prefix: &str,
    issues: &mut Vec<Issue>,
    exact_out: &mut Option<Bson>,
) -> Option<Bson> {
    let path = format!("{prefix}{}", f.path_text);
    let mut value = match &f.input {
        Input::Column(i) => row[*i].clone(),
        Input::Const(v) => v.clone(),
        Input::Columns(idx) => match &f.combine {
            Some(c) => combine(c, row, idx),
            None => Value::Null,
        },
    };
    let original = value.to_string();
    for step in &f.steps {
        match apply(step, value) {
            Ok(v) => value = v,
            Err(message) => {
                issues.push(Issue::error(
                    Stage::Transform,
                    step_rule(step),
                    &path,
                    message,
                    original,
                ));
                return None;
            }
        }
    }
    if value.is_null()
        && let Some(d) = &f.default
    {
        value = d.clone();
    }
    let bson = if value.is_null() {
        Bson::Null
    } else if let Some(rule) = &f.reference {
        if let Some(entity) = &f.exists_in
            && !ctx.skip_validation
            && let Some(keys) = ctx.known_keys.get(entity)
            && !keys.contains(&value.to_string())
        {
            let sev = f
                .rules
                .as_ref()
                .map(|r| r.severity)
                .unwrap_or(Severity::Error);
            issues.push(Issue {
                stage: Stage::Validate,
                severity: sev,
                rule: "exists".into(),
                path: path.clone(),
                message: format!("{path} refers to a {entity} row that does not exist"),
                value: value.to_string(),
            });
            if sev == Severity::Error {
                return None;
            }
        }
        match rule.id_for(&[&value]) {
            Ok(b) => b,
            Err(message) => {
                issues.push(Issue::error(
                    Stage::Transform,
                    "reference",
                    &path,
                    message,
                    original,
                ));
                return None;
            }
        }
    } else {
        match to_bson(&value, &f.output) {
            Ok(conv) => {
                for (rule, message) in conv.warnings {
                    issues.push(Issue {
                        stage: Stage::Transform,
                        severity: Severity::Warning,
                        rule,
                        path: path.clone(),
                        message,
                        value: original.clone(),
                    });
                }
                if let Some(exact) = conv.exact {
                    *exact_out = Some(Bson::String(exact));
                }
                conv.value.unwrap_or(Bson::Null)
            }
            Err((rule, message)) => {
                issues.push(Issue::error(
                    Stage::Transform,
                    &rule,
                    &path,
                    message,
                    original,
                ));
                return None;
            }
        }
    };
    if !ctx.skip_validation
        && let Some(rules) = &f.rules
    {
        let present = if bson == Bson::Null {
            None
        } else {
            Some(&bson)
        };
        rules.check(&path, present, ctx.now_ms, issues);
    }
    if bson == Bson::Null && f.nulls == NullPolicy::Omit {
        return None;
    }
    Some(bson)
}

fn step_rule(step: &super::Step) -> &'static str {
    use super::Step::*;
    match step {
        Trim | Lower | Upper => "text",
        Split(_) => "split",
        Map { .. } => "map",
        Phone { .. } => "phone",
        Json => "json",
    }
}

fn build(
    fields: &[FieldPlan],
    row: &[Value],
    ctx: &MapContext,
    prefix: &str,
    doc: &mut Document,
    issues: &mut Vec<Issue>,
    mut after_field: impl FnMut(usize, &mut Document, &mut Vec<Issue>),
) {
    for (i, f) in fields.iter().enumerate() {
        let mut exact = None;
        if let Some(v) = eval_field(f, row, ctx, prefix, issues, &mut exact) {
            insert_path(doc, &f.path, v);
        }
        if let (Some(e), Some(p)) = (exact, &f.exact_path) {
            insert_path(doc, p, e);
        }
        after_field(i, doc, issues);
    }
}

fn embed(
    e: &EmbedPlan,
    children: &[Vec<Value>],
    ctx: &MapContext,
    issues: &mut Vec<Issue>,
) -> Bson {
    let mut items = Vec::with_capacity(children.len());
    for (n, child) in children.iter().enumerate() {
        let prefix = format!("{}[{n}].", e.path_text);
        match e.element {
            EmbedElement::Value => {
                let mut exact = None;
                let v = eval_field(&e.fields[0], child, ctx, &prefix, issues, &mut exact);
                items.push(v.unwrap_or(Bson::Null));
            }
            EmbedElement::Document => {
                let mut d = Document::new();
                build(&e.fields, child, ctx, &prefix, &mut d, issues, |_, _, _| {});
                items.push(Bson::Document(d));
            }
        }
    }
    Bson::Array(items)
}

/// Maps one row. `children[i]` holds the child rows of `plan.embeds[i]` for this row.
pub fn map_row(
    plan: &Plan,
    row: &[Value],
    children: &[Vec<Vec<Value>>],
    ctx: &MapContext,
) -> Mapped {
    let key_values: Vec<&Value> = plan.key.iter().map(|&i| &row[i]).collect();
    let key = key_text(&key_values);
    let mut issues = Vec::new();
    let id = match plan.id.id_for(&key_values) {
        Ok(id) => id,
        Err(message) => {
            issues.push(Issue::error(
                Stage::Transform,
                "id",
                "_id",
                message,
                key.clone(),
            ));
            return Mapped {
                key,
                doc: None,
                issues,
            };
        }
    };
    let mut doc = Document::new();
    doc.insert("_id", id);
    let place =
        |e: &EmbedPlan, kids: &[Vec<Value>], doc: &mut Document, issues: &mut Vec<Issue>| {
            let arr = embed(e, kids, ctx, issues);
            insert_path(doc, &e.path, arr);
        };
    build(
        &plan.fields,
        row,
        ctx,
        "",
        &mut doc,
        &mut issues,
        |i, doc, issues| {
            for (e, kids) in plan.embeds.iter().zip(children) {
                if e.after == Some(i) {
                    place(e, kids, doc, issues);
                }
            }
        },
    );
    for (e, kids) in plan.embeds.iter().zip(children) {
        if e.after.is_none() {
            place(e, kids, &mut doc, &mut issues);
        }
    }
    if !ctx.skip_validation {
        for r in &plan.row_rules {
            r.check(&doc, &mut issues);
        }
    }
    let rejected = issues.iter().any(Issue::is_error);
    Mapped {
        key,
        doc: if rejected { None } else { Some(doc) },
        issues,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_path_builds_nested_documents_in_order() {
        let mut d = Document::new();
        insert_path(&mut d, &["a".into(), "b".into()], Bson::Int32(1));
        insert_path(&mut d, &["a".into(), "c".into()], Bson::Int32(2));
        insert_path(&mut d, &["z".into()], Bson::Int32(3));
        assert_eq!(d, bson::doc! { "a": { "b": 1, "c": 2 }, "z": 3 });
    }
}
