//! One source row (and its embedded children) → one document, following a compiled plan.
//! Pure and synchronous: the engine calls it for every row.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bson::{Bson, RawDocumentBuf};

use super::{Converted, Issue, Stage, apply, convert, encode};
use crate::mapping::plan::{Combine, EmbedPlan, FieldPlan, Input, Layout, LayoutNode, Plan};
use crate::mapping::spec::{EmbedElement, NullPolicy, RuleName, Severity};
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
    /// By referenced entity, the ids (`id_text`) of rows that are in the source but whose
    /// documents are not in the target — rejected (or skipped) when that entity ran. A reference
    /// to one would point nowhere: rule `reference_rejected`, at the severity of the field's
    /// `exists` rule when it has one (an error unless the mapping says otherwise), else a warning.
    pub absent_ids: HashMap<String, Arc<HashSet<String>>>,
    /// The target holds an SQL NULL as a null value whatever `nulls` says (an Appwrite column):
    /// a JSON `null` written there is alike, and said (`json_null`).
    pub null_column: bool,
}

/// What became of one row.
#[derive(Debug)]
pub struct Mapped {
    /// The source key as text (`a|b` for composite keys).
    pub key: String,
    /// The document as raw BSON, unless an error-severity issue rejected the row.
    pub doc: Option<RawDocumentBuf>,
    pub issues: Vec<Issue>,
}

impl Mapped {
    pub fn warnings(&self) -> impl Iterator<Item = &Issue> {
        self.issues.iter().filter(|i| !i.is_error())
    }
}

/// Writes the slot values as elements of the document being built in `buf`, following
/// `nodes`; nested documents with no value are left out (as a NULL-omitted field is).
/// `arrays`: embedded arrays already encoded (an array document's bytes) by slot; they take the
/// place of the slot's value.
fn at_key(key: &str) -> impl Fn(String) -> (String, String) + '_ {
    move |m| (key.to_string(), m)
}

fn write_layout(
    nodes: &[(String, LayoutNode)],
    slots: &mut [Option<Bson>],
    arrays: &mut [Option<EmbedArray>],
    buf: &mut Vec<u8>,
) -> Result<(), (String, String)> {
    // A value that cannot be encoded is named by its path (adv24 F6: the reject had none).
    for (key, node) in nodes {
        match node {
            LayoutNode::Slot(i) => {
                if let Some(a) = arrays.get_mut(*i).and_then(Option::take) {
                    encode::element_key(buf, 0x04, key).map_err(at_key(key))?;
                    buf.extend_from_slice(&a.bytes);
                } else if let Some(v) = slots[*i].take() {
                    encode::element(buf, key, &v).map_err(at_key(key))?;
                }
            }
            LayoutNode::Doc(children) => {
                let header = buf.len();
                // placeholder tag + key
                encode::element(buf, key, &Bson::Null).map_err(at_key(key))?;
                buf[header] = 0x03;
                let at = encode::begin(buf);
                write_layout(children, slots, arrays, buf)
                    .map_err(|(p, m)| (format!("{key}.{p}"), m))?;
                if buf.len() == at + 4 {
                    buf.truncate(header);
                } else {
                    encode::end(buf, at).map_err(at_key(key))?;
                }
            }
        }
    }
    Ok(())
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

/// The field's input as text, for reject records (computed only when something went wrong).
fn input_text(f: &FieldPlan, row: &[Value]) -> String {
    match &f.input {
        Input::Column(i) => issue_text(&row[*i]),
        Input::Const(v) => issue_text(v),
        Input::Columns(idx) => idx
            .iter()
            .map(|&i| issue_text(&row[i]))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A value as a reject or warning line shows it: an array's text elements quoted, so that a
/// NULL element and the text `NULL` (or an empty text) differ (adv39 F8: `[a,NULL,NULL,]`).
fn issue_text(v: &Value) -> String {
    fn element(v: &Value, out: &mut String) {
        match v {
            Value::Text(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    element(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    match v {
        Value::Array(_) => {
            let mut out = String::new();
            element(v, &mut out);
            out
        }
        other => other.to_string(),
    }
}

/// Evaluates one field; `None` means the field is left out of the document.
/// A field's path within the document, written out only when an issue names it.
struct FieldPath<'a> {
    prefix: &'a str,
    path: &'a str,
}

impl std::fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.prefix)?;
        f.write_str(self.path)
    }
}

/// The warning of a ±infinity written as NULL (`infinity = "null"`, adv35 F8: the values became
/// NULL with nothing said, indistinguishable from SQL NULLs).
fn infinity_null(path: &FieldPath<'_>, v: &Value) -> Issue {
    let text = match v {
        Value::Text(t) => t.clone(),
        _ => String::new(),
    };
    Issue {
        severity: Severity::Warning,
        ..Issue::error(
            Stage::Transform,
            "infinity_null",
            &path.to_string(),
            format!(
                "`{text}` written as NULL (the mapping's infinity = \"null\"; which infinity it was is not kept)"
            ),
            text.clone(),
        )
    }
}

fn eval_field(
    f: &FieldPlan,
    row: &[Value],
    ctx: &MapContext,
    prefix: &str,
    issues: &mut Vec<Issue>,
    exact_out: &mut Option<Bson>,
) -> Option<Bson> {
    // Written out only for an issue: an embedded field's path is its element's prefix and its
    // own (formatting it for every field of every child cost an allocation each).
    let path = FieldPath {
        prefix,
        path: &f.path_text,
    };
    let infinite = |v: &Value| matches!(v, Value::Text(t) if t == "infinity" || t == "-infinity");
    let mut value: Cow<'_, Value> = match &f.input {
        Input::Column(i) if f.infinity_null && infinite(&row[*i]) => {
            issues.push(infinity_null(&path, &row[*i]));
            Cow::Owned(Value::Null)
        }
        Input::Column(i) => Cow::Borrowed(&row[*i]),
        Input::Const(v) => Cow::Borrowed(v),
        Input::Columns(idx) if f.infinity_null && idx.iter().any(|&i| infinite(&row[i])) => {
            let mut own = row.to_vec();
            for &i in idx {
                if infinite(&own[i]) {
                    issues.push(infinity_null(&path, &own[i]));
                    own[i] = Value::Null;
                }
            }
            match &f.combine {
                Some(c) => Cow::Owned(combine(c, &own, idx)),
                None => Cow::Owned(Value::Null),
            }
        }
        Input::Columns(idx) => match &f.combine {
            Some(c) => Cow::Owned(combine(c, row, idx)),
            None => Cow::Owned(Value::Null),
        },
    };
    for step in &f.steps {
        // `drop_nulls` loses where the NULL elements were: said with a warning on each row it
        // changes (the mapping chose it; the row is written).
        if matches!(step, crate::transform::Step::DropNulls)
            && let Value::Array(items) = value.as_ref()
            && let n @ 1.. = items.iter().filter(|v| v.is_null()).count()
        {
            issues.push(Issue {
                severity: Severity::Warning,
                ..Issue::error(
                    Stage::Transform,
                    "nulls_dropped",
                    &path.to_string(),
                    format!("{n} NULL element(s) of {} dropped", items.len()),
                    input_text(f, row),
                )
            });
        }
        match apply(step, value.into_owned()) {
            Ok(v) => value = Cow::Owned(v),
            Err(message) => {
                issues.push(Issue::error(
                    Stage::Transform,
                    step_rule(step),
                    &path.to_string(),
                    message,
                    input_text(f, row),
                ));
                return None;
            }
        }
    }
    if value.is_null()
        && let Some(d) = &f.default
    {
        value = Cow::Borrowed(d);
    }
    // SQL NULL, the one absence the `nulls` policy is about: a JSON `null` is a value, kept.
    let sql_null = value.is_null();
    let bson = if sql_null {
        Bson::Null
    } else if let Some(rule) = &f.reference {
        let missing = match f.exists_at {
            // PostgreSQL answered in the read.
            Some(i) => !matches!(row.get(i), Some(Value::Bool(true))),
            None => f
                .exists_in
                .as_ref()
                .and_then(|e| ctx.known_keys.get(e))
                .is_some_and(|keys| {
                    rule.id_for(&[&value])
                        .is_ok_and(|id| !keys.contains(&crate::mapping::plan::id_text(&id)))
                }),
        };
        if let Some(entity) = &f.exists_in
            && !ctx.skip_validation
            && missing
        {
            let sev = f
                .rules
                .as_ref()
                .map(|r| r.severity_of(RuleName::Exists))
                .unwrap_or(Severity::Error);
            issues.push(Issue {
                stage: Stage::Validate,
                severity: sev,
                rule: "exists".into(),
                path: path.to_string(),
                message: format!("{path} refers to a {entity} row that does not exist"),
                value: value.to_string(),
            });
            if sev == Severity::Error {
                return None;
            }
        }
        match rule.id_for(&[&value]) {
            Ok(b) => {
                if !ctx.skip_validation
                    && let Some(absent) = ctx.absent_ids.get(&rule.entity)
                    && absent.contains(&crate::mapping::plan::id_text(&b))
                {
                    let sev = match (&f.exists_in, &f.rules) {
                        (Some(_), Some(r)) => r.severity_of(RuleName::Exists),
                        (Some(_), None) => Severity::Error,
                        (None, _) => Severity::Warning,
                    };
                    issues.push(Issue {
                        stage: Stage::Validate,
                        severity: sev,
                        rule: "reference_rejected".into(),
                        path: path.to_string(),
                        message: format!(
                            "{path} refers to a {} row that is in the source but not in the target (it was rejected or skipped when {} ran): the reference would point nowhere",
                            rule.entity, rule.entity
                        ),
                        value: value.to_string(),
                    });
                    if sev == Severity::Error {
                        return None;
                    }
                }
                b
            }
            Err(message) => {
                issues.push(Issue::error(
                    Stage::Transform,
                    "reference",
                    &path.to_string(),
                    message,
                    input_text(f, row),
                ));
                return None;
            }
        }
    } else {
        let mut conv = Converted::default();
        match convert(&value, &f.output, &mut conv) {
            Ok(bson) => {
                for (rule, message) in conv.warnings {
                    issues.push(Issue {
                        stage: Stage::Transform,
                        severity: Severity::Warning,
                        rule,
                        path: path.to_string(),
                        message,
                        value: input_text(f, row),
                    });
                }
                if let Some(exact) = conv.exact {
                    *exact_out = Some(Bson::String(exact));
                }
                bson
            }
            Err((rule, message)) => {
                issues.push(Issue::error(
                    Stage::Transform,
                    &rule,
                    &path.to_string(),
                    message,
                    input_text(f, row),
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
    if sql_null && f.nulls == NullPolicy::Omit {
        return None;
    }
    if !sql_null && let Some(why) = json_null_alike(&value, &bson, f.nulls, ctx) {
        issues.push(Issue {
            severity: Severity::Warning,
            ..Issue::error(
                Stage::Transform,
                "json_null",
                &path.to_string(),
                format!(
                    "a JSON null written as null, as {why}: which of the two it was is not kept"
                ),
                "null".to_string(),
            )
        });
    }
    Some(bson)
}

/// Why a JSON `null` in `value` (written as `bson`) is written as an SQL NULL is (adv41 F1):
/// `nulls = "keep"`, a target whose column holds NULL as null, or an array's NULL element.
fn json_null_alike(
    value: &Value,
    bson: &Bson,
    nulls: NullPolicy,
    ctx: &MapContext,
) -> Option<&'static str> {
    fn holds_json_null(v: &Value) -> bool {
        match v {
            Value::Json(s) => s.trim() == "null",
            Value::Array(items) => items.iter().any(holds_json_null),
            _ => false,
        }
    }
    match (value, bson) {
        (Value::Json(_), Bson::Null) if holds_json_null(value) => {
            if nulls == NullPolicy::Keep {
                Some("an SQL NULL is (`nulls = \"keep\"`)")
            } else if ctx.null_column {
                Some("the target's column holds an SQL NULL")
            } else {
                None
            }
        }
        (Value::Array(_), Bson::Array(_)) if holds_json_null(value) => {
            Some("an array's NULL element is")
        }
        _ => None,
    }
}

fn step_rule(step: &super::Step) -> &'static str {
    use super::Step::*;
    match step {
        Trim | Lower | Upper => "text",
        Split(_) => "split",
        Map { .. } => "map",
        Phone { .. } => "phone",
        Json => "json",
        DropNulls => "drop_nulls",
    }
}

/// Evaluates `fields` into `slots` (by field index; exact copies into their own slots).
fn fill(
    fields: &[FieldPlan],
    layout: &Layout,
    row: &[Value],
    ctx: &MapContext,
    prefix: &str,
    slots: &mut [Option<Bson>],
    issues: &mut Vec<Issue>,
) {
    for (i, f) in fields.iter().enumerate() {
        let mut exact = None;
        slots[i] = eval_field(f, row, ctx, prefix, issues, &mut exact);
        if let Some(slot) = layout.exact_slot[i] {
            // An instant's exact text; for what is no instant (an infinity written as text or
            // null, a NULL kept) the field's own value, so `exact_path` is there whenever the
            // field is (verify reads it so).
            slots[slot] = exact.or_else(|| slots[i].clone());
        }
    }
}

/// An embedded array, encoded: the bytes of its array document and how many elements it has.
#[derive(Debug)]
struct EmbedArray {
    bytes: Vec<u8>,
    len: usize,
}

/// Encodes the array of `e` from the child rows straight into BSON (each element document is
/// written once, into the array's bytes, which the parent's writer copies).
fn embed(
    e: &EmbedPlan,
    children: &[Vec<Value>],
    ctx: &MapContext,
    issues: &mut Vec<Issue>,
) -> Result<EmbedArray, String> {
    let mut buf = Vec::with_capacity(16 + 128 * children.len());
    let array = encode::begin(&mut buf);
    let mut slots: Vec<Option<Bson>> = vec![None; e.layout.slots];
    let mut index = String::with_capacity(8);
    // One buffer for every child's path prefix (`guardians[3].`).
    let mut prefix = String::with_capacity(e.path_text.len() + 8);
    for (n, child) in children.iter().enumerate() {
        {
            use std::fmt::Write;
            prefix.clear();
            let _ = write!(prefix, "{}[{n}].", e.path_text);
        }
        let prefix = prefix.as_str();
        let key = encode::array_key(&mut index, n);
        match e.element {
            EmbedElement::Value => {
                let mut exact = None;
                let v = eval_field(&e.fields[0], child, ctx, prefix, issues, &mut exact);
                encode::element(&mut buf, key, &v.unwrap_or(Bson::Null))?;
            }
            EmbedElement::Document => {
                fill(&e.fields, &e.layout, child, ctx, prefix, &mut slots, issues);
                encode::element_key(&mut buf, 0x03, key)?;
                let at = encode::begin(&mut buf);
                write_layout(&e.layout.root, &mut slots, &mut [], &mut buf)
                    .map_err(|(p, m)| format!("{}.{p}: {m}", e.path_text))?;
                encode::end(&mut buf, at)?;
            }
        }
    }
    encode::end(&mut buf, array)?;
    Ok(EmbedArray {
        bytes: buf,
        len: children.len(),
    })
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
    let layout = &plan.layout;
    let mut slots: Vec<Option<Bson>> = vec![None; layout.slots];
    fill(&plan.fields, layout, row, ctx, "", &mut slots, &mut issues);
    let mut arrays: Vec<Option<EmbedArray>> = Vec::new();
    for ((e, kids), &slot) in plan.embeds.iter().zip(children).zip(&layout.embed_slot) {
        match embed(e, kids, ctx, &mut issues) {
            Ok(arr) => {
                if arrays.len() <= slot {
                    arrays.resize_with(slot + 1, || None);
                }
                arrays[slot] = Some(arr);
            }
            Err(message) => issues.push(Issue::error(
                Stage::Transform,
                "bson",
                &e.path_text,
                message,
                String::new(),
            )),
        }
    }
    if !ctx.skip_validation {
        let present = |i: usize| match arrays.get(i).and_then(Option::as_ref) {
            Some(a) => a.len > 0,
            None => crate::validate::is_present(slots.get(i).and_then(Option::as_ref)),
        };
        for r in &plan.row_rules {
            r.check(present, &mut issues);
        }
    }
    if issues.iter().any(Issue::is_error) {
        return Mapped {
            key,
            doc: None,
            issues,
        };
    }
    let mut buf = Vec::with_capacity(1024);
    let at = encode::begin(&mut buf);
    let written = encode::element(&mut buf, "_id", &id)
        .map_err(|m| ("_id".to_string(), m))
        .and_then(|()| write_layout(&layout.root, &mut slots, &mut arrays, &mut buf))
        .and_then(|()| encode::end(&mut buf, at).map_err(|m| (String::new(), m)))
        .and_then(|()| encode::finish(buf).map_err(|m| (String::new(), m)));
    let doc = match written {
        Ok(doc) => doc,
        Err((path, message)) => {
            issues.push(Issue::error(
                Stage::Transform,
                "bson",
                &path,
                message,
                String::new(),
            ));
            return Mapped {
                key,
                doc: None,
                issues,
            };
        }
    };
    Mapped {
        key,
        doc: Some(doc),
        issues,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::spec::{Lossy, SubMillis, UuidFormat};
    use crate::transform::Output;

    fn column_field(nulls: NullPolicy) -> FieldPlan {
        FieldPlan {
            path: vec!["meta".into()],
            path_text: "meta".into(),
            input: Input::Column(0),
            combine: None,
            steps: vec![],
            output: Output {
                cast: None,
                uuid: UuidFormat::Binary,
                sub_millis: SubMillis::Reject,
                timezone: None,
                lossy: Lossy::Reject,
                duplicate_keys: Severity::Error,
                json_levels: crate::transform::json::MAX_DEPTH,
            },
            default: None,
            nulls,
            reference: None,
            exists_in: None,
            exists_at: None,
            rules: None,
            exact_path: None,
            column_size: None,
            infinity_null: false,
        }
    }

    fn eval(f: &FieldPlan, v: Value) -> (Option<Bson>, Vec<Issue>) {
        let mut issues = Vec::new();
        let mut exact = None;
        let out = eval_field(f, &[v], &MapContext::default(), "", &mut issues, &mut exact);
        (out, issues)
    }

    #[test]
    fn a_json_null_is_a_value_whatever_the_nulls_policy() {
        for nulls in [NullPolicy::Omit, NullPolicy::Keep] {
            let f = column_field(nulls);
            let (out, issues) = eval(&f, Value::Json("null".into()));
            assert_eq!(out, Some(Bson::Null), "{nulls:?}");
            // Alike an SQL NULL when that is kept as null too: said (adv41 F1).
            let rules: Vec<&str> = issues.iter().map(|i| i.rule.as_str()).collect();
            let want: &[&str] = match nulls {
                NullPolicy::Omit => &[],
                NullPolicy::Keep => &["json_null"],
            };
            assert_eq!(rules, want, "{nulls:?}");
            // A target whose column holds NULL as null (Appwrite): said whatever `nulls`.
            let ctx = MapContext {
                null_column: true,
                ..Default::default()
            };
            let mut issues = Vec::new();
            let out = eval_field(
                &f,
                &[Value::Json("null".into())],
                &ctx,
                "",
                &mut issues,
                &mut None,
            );
            assert_eq!(out, Some(Bson::Null));
            assert_eq!(issues.len(), 1, "{issues:?}");
            assert_eq!(issues[0].severity, Severity::Warning);
            // Any other JSON value is no such thing.
            let mut issues = Vec::new();
            eval_field(
                &f,
                &[Value::Json("{}".into())],
                &ctx,
                "",
                &mut issues,
                &mut None,
            );
            assert!(issues.is_empty(), "{issues:?}");
        }
        // SQL NULL follows the policy.
        assert_eq!(eval(&column_field(NullPolicy::Omit), Value::Null).0, None);
        assert_eq!(
            eval(&column_field(NullPolicy::Keep), Value::Null).0,
            Some(Bson::Null)
        );
        // A default fills SQL NULL only.
        let mut f = column_field(NullPolicy::Omit);
        f.default = Some(Value::Int32(0));
        assert_eq!(eval(&f, Value::Null).0, Some(Bson::Int32(0)));
        assert_eq!(eval(&f, Value::Json(" null ".into())).0, Some(Bson::Null));
    }

    #[test]
    fn empty_nested_documents_are_left_out() {
        let nodes = vec![
            (
                "a".to_string(),
                LayoutNode::Doc(vec![("b".to_string(), LayoutNode::Slot(0))]),
            ),
            ("c".to_string(), LayoutNode::Slot(1)),
        ];
        let render = |mut slots: Vec<Option<Bson>>| {
            let mut buf = Vec::new();
            let at = encode::begin(&mut buf);
            write_layout(&nodes, &mut slots, &mut [], &mut buf).unwrap();
            encode::end(&mut buf, at).unwrap();
            encode::finish(buf).unwrap().to_document().unwrap()
        };
        assert_eq!(
            render(vec![None, Some(Bson::Int32(1))]),
            bson::doc! { "c": 1 }
        );
        assert_eq!(
            render(vec![Some(Bson::Null), None]),
            bson::doc! { "a": { "b": null } }
        );
    }

    /// adv39 F8: a NULL element, the text `NULL` and an empty text are told apart.
    #[test]
    fn an_arrays_null_element_and_the_text_null_read_apart_in_an_issue() {
        let v = Value::Array(vec![
            Value::Text("a".into()),
            Value::Null,
            Value::Text("NULL".into()),
            Value::Text(String::new()),
            Value::Array(vec![Value::Int32(1), Value::Null]),
        ]);
        assert_eq!(issue_text(&v), r#"["a",NULL,"NULL","",[1,NULL]]"#);
        assert_eq!(issue_text(&Value::Text("NULL".into())), "NULL");
    }
}
