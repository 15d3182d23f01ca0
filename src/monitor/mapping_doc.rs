//! The data-mapping document (`cutover docs`): for a sign-off, per target collection its source
//! table(s), every field with its source column and type, target type, transforms, default, rules,
//! reference and options, its embeds, row rules, and the conversions that lose information or
//! need a decision. Built from the mappings and the source's column types; rendered to Markdown
//! or a self-contained HTML page (tables through [`super::table`], so every value is escaped).

use std::collections::BTreeMap;

use maud::{DOCTYPE, PreEscaped, html};

use super::table::{Column, Table, md_escape};
use crate::config::TargetKind;
use crate::mapping::Mapping;
use crate::mapping::spec::Infinity;
use crate::mapping::spec::{
    CastType, EmailRule, EmbedElement, EmbedStore, FieldSpec, IdStrategy, Lossy, NullPolicy,
    RulesSpec, Severity, SubMillis, TransformSpec, UuidFormat, ValidatorLevel,
};

/// A source column's type: as shown, and the base type name the conversion follows
/// (`int4`, `timestamptz`; an array's element type with `array`).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceType {
    pub shown: String,
    pub base: String,
    pub array: bool,
}

/// The columns of each relation a mapping reads (by the table name or query text as written).
/// A relation absent from the map was not described (no source, or an error: `problems`).
#[derive(Debug, Clone, Default)]
pub struct SourceTypes {
    pub relations: BTreeMap<String, BTreeMap<String, SourceType>>,
    /// Row estimates of tables, by the name as written.
    pub estimates: BTreeMap<String, u64>,
    /// Why a relation could not be described.
    pub problems: BTreeMap<String, String>,
}

/// One entity of the document, in run order.
pub struct DocEntity<'a> {
    pub stage: String,
    pub mapping: &'a Mapping,
}

struct Section {
    entity: String,
    /// (label, value) lines.
    facts: Vec<(String, String)>,
    fields: Table,
    embeds: Vec<(Vec<(String, String)>, Table)>,
    rules: Option<Table>,
    decisions: Vec<String>,
}

/// Part of a line of text: plain, or a name shown as code.
enum Span {
    Text(String),
    Code(String),
}

/// The whole document.
pub struct MappingDoc {
    title: String,
    intro: Vec<Vec<Span>>,
    sections: Vec<Section>,
}

/// A Markdown code span of `s`, as it is: fenced by more backticks than any run inside it (and
/// padded with a space when it starts or ends with one), so nothing in it needs an escape — an
/// escape inside a code span is shown, not read (`` `a\_b` `` shows the backslash).
fn md_code(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ");
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

fn md_spans(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| match s {
            Span::Text(t) => md_escape(t),
            Span::Code(c) => md_code(c),
        })
        .collect()
}

fn field_columns() -> Vec<Column> {
    vec![
        Column::left("path", 0),
        Column::left("source (column, columns or value)", 0),
        Column::left("source type", 0),
        Column::left("target type", 0),
        Column::left("transform", 0),
        Column::left("default", 0),
        Column::left("validate", 0),
        Column::left("reference", 0),
        Column::left("options", 0),
    ]
}

fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn transform_text(t: &TransformSpec) -> String {
    match t {
        TransformSpec::Trim => "trim".into(),
        TransformSpec::Lower => "lower".into(),
        TransformSpec::Upper => "upper".into(),
        TransformSpec::Split(sep) => format!("split {sep:?}"),
        TransformSpec::Map(m) => format!(
            "map {{{}}}",
            m.iter()
                .map(|(k, v)| format!("{k:?} → {}", toml_text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        TransformSpec::Phone(p) => {
            let mut s = format!("phone (default_country = {:?}", p.default_country);
            if let Some(t) = &p.trunk_prefix {
                s.push_str(&format!(", trunk_prefix = {t:?}, ignored"));
            }
            s.push(')');
            s
        }
        TransformSpec::Concat(c) => format!("concat (sep = {:?})", c.sep),
        TransformSpec::Array => "array".into(),
        TransformSpec::Json => "json".into(),
        TransformSpec::DropNulls => "drop_nulls (NULL elements of the array dropped)".into(),
    }
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

fn rules_text(r: &RulesSpec) -> String {
    let mut out = Vec::new();
    if r.required {
        out.push("required".to_string());
    }
    if r.not_null {
        out.push("not_null".to_string());
    }
    match r.email {
        EmailRule::Off => {}
        EmailRule::International => out.push("email".into()),
        EmailRule::Ascii => out.push("email = ascii".into()),
    }
    if r.url {
        out.push("url".into());
    }
    if let Some(n) = r.min_length {
        out.push(format!("min_length = {n}"));
    }
    if let Some(n) = r.max_length {
        out.push(format!("max_length = {n}"));
    }
    if let Some(n) = r.min {
        out.push(format!("min = {n}"));
    }
    if let Some(n) = r.max {
        out.push(format!("max = {n}"));
    }
    if let Some(re) = &r.regex {
        out.push(format!("regex = /{re}/"));
    }
    if let Some(list) = &r.one_of {
        out.push(format!(
            "one_of = [{}]",
            list.iter().map(toml_text).collect::<Vec<_>>().join(", ")
        ));
    }
    if r.not_in_future {
        out.push("not_in_future".into());
    }
    if r.exists {
        out.push("exists".into());
    }
    if !out.is_empty() {
        out.push(format!("severity = {}", severity(r.severity)));
    }
    if !r.severities.is_empty() {
        out.push(format!(
            "severities = {{{}}}",
            r.severities
                .iter()
                .map(|(k, v)| format!("{} = {}", k.as_str(), severity(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out.join("; ")
}

fn uuid_text(u: UuidFormat) -> &'static str {
    match u {
        UuidFormat::Binary => "binary",
        UuidFormat::String => "string",
    }
}

fn cast_text(c: CastType) -> &'static str {
    match c {
        CastType::String => "string",
        CastType::Base64 => "base64",
        CastType::Hex => "hex",
        CastType::Int => "int",
        CastType::Long => "long",
        CastType::Double => "double",
        CastType::Decimal => "decimal",
        CastType::Bool => "bool",
        CastType::Date => "date",
        CastType::Uuid => "uuid",
        CastType::Point => "point",
    }
}

fn options_text(f: &FieldSpec) -> String {
    let mut out = Vec::new();
    if let Some(c) = f.cast {
        out.push(format!("type = {}", cast_text(c)));
    }
    if let Some(n) = f.nulls {
        out.push(format!(
            "nulls = {}",
            match n {
                NullPolicy::Omit => "omit",
                NullPolicy::Keep => "keep",
            }
        ));
    }
    if let Some(u) = f.uuid {
        out.push(format!("uuid = {}", uuid_text(u)));
    }
    if let Some(s) = f.sub_millis {
        out.push(format!(
            "sub_millis = {}",
            match s {
                SubMillis::Reject => "reject",
                SubMillis::Truncate => "truncate",
                SubMillis::KeepString => "keep_string",
            }
        ));
    }
    if let Some(p) = &f.exact_path {
        out.push(format!("exact_path = {p}"));
    }
    if let Some(i) = f.index {
        out.push(format!("index = {i}"));
    }
    if let Some(tz) = &f.timezone {
        out.push(format!("timezone = {tz}"));
    }
    if let Some(i) = f.infinity {
        out.push(format!("infinity = {}", infinity_text(i)));
    }
    if let Some(l) = f.lossy {
        out.push(format!(
            "lossy = {}",
            match l {
                Lossy::Reject => "reject",
                Lossy::Warn => "warn",
            }
        ));
    }
    out.join("; ")
}

fn infinity_text(i: Infinity) -> &'static str {
    match i {
        Infinity::Reject => "reject",
        Infinity::Null => "null",
        Infinity::String => "string",
    }
}

fn is_text(base: &str) -> bool {
    matches!(base, "text" | "varchar" | "bpchar" | "name" | "char")
}

/// The type a column's value has in the target, without a cast or transform.
fn natural(t: &SourceType, uuid: UuidFormat, target: TargetKind) -> String {
    let scalar = match (target, t.base.as_str()) {
        (TargetKind::Mongodb, "int2" | "int4") => "int32".to_string(),
        (TargetKind::Mongodb, "int8") => "int64".into(),
        (TargetKind::Mongodb, "float4" | "float8") => "double".into(),
        (TargetKind::Mongodb, "numeric") => "decimal128".into(),
        (TargetKind::Mongodb, "bool") => "bool".into(),
        (TargetKind::Mongodb, "uuid") => format!("uuid ({})", uuid_text(uuid)),
        (TargetKind::Mongodb, "date" | "timestamp" | "timestamptz") => "date".into(),
        (TargetKind::Mongodb, "json" | "jsonb") => "document / array / value".into(),
        (TargetKind::Mongodb, "bytea") => "binary".into(),
        (TargetKind::Mongodb, b) if is_text(b) => "string".into(),
        (TargetKind::Mongodb, _) => "string (PostgreSQL's text)".into(),
        (TargetKind::Appwrite, "int2" | "int4" | "int8") => "integer".into(),
        (TargetKind::Appwrite, "float4" | "float8") => "float".into(),
        (TargetKind::Appwrite, "numeric") => "string (exact decimal text)".into(),
        (TargetKind::Appwrite, "bool") => "boolean".into(),
        (TargetKind::Appwrite, "date" | "timestamp" | "timestamptz") => "datetime".into(),
        (TargetKind::Appwrite, "json" | "jsonb") => "string (JSON text)".into(),
        (TargetKind::Appwrite, "bytea") => "string (extended JSON)".into(),
        (TargetKind::Appwrite, _) => "string".into(),
    };
    if t.array {
        format!("array of {scalar}")
    } else {
        scalar
    }
}

fn cast_target(c: CastType, target: TargetKind) -> &'static str {
    match (target, c) {
        (_, CastType::String | CastType::Base64 | CastType::Hex) => "string",
        (TargetKind::Mongodb, CastType::Int) => "int32",
        (TargetKind::Mongodb, CastType::Long) => "int64",
        (TargetKind::Mongodb, CastType::Double) => "double",
        (TargetKind::Mongodb, CastType::Decimal) => "decimal128",
        (TargetKind::Mongodb, CastType::Bool) => "bool",
        (TargetKind::Mongodb, CastType::Date) => "date",
        (TargetKind::Mongodb, CastType::Uuid) => "uuid",
        (TargetKind::Appwrite, CastType::Int | CastType::Long) => "integer",
        (TargetKind::Appwrite, CastType::Double) => "float",
        (TargetKind::Appwrite, CastType::Decimal) => "string (exact decimal text)",
        (TargetKind::Appwrite, CastType::Bool) => "boolean",
        (TargetKind::Appwrite, CastType::Date) => "datetime",
        (TargetKind::Appwrite, CastType::Uuid) => "string",
        (TargetKind::Mongodb, CastType::Point) => "GeoJSON Point {type, coordinates: [lon, lat]}",
        (TargetKind::Appwrite, CastType::Point) => "point [lon, lat]",
    }
}

struct Ctx<'a> {
    target: TargetKind,
    uuid: UuidFormat,
    /// The relation's columns, when described.
    columns: Option<&'a BTreeMap<String, SourceType>>,
}

impl Ctx<'_> {
    fn column(&self, c: &str) -> Result<&SourceType, &'static str> {
        match self.columns {
            None => Err("unknown (not described)"),
            Some(cols) => cols.get(c).ok_or("not in the source"),
        }
    }
}

/// A field's row, and the decisions it carries.
fn field_row(f: &FieldSpec, ctx: &Ctx, decisions: &mut Vec<String>) -> Vec<String> {
    let cols: Vec<String> = match (&f.column, &f.columns) {
        (Some(c), _) => vec![c.clone()],
        (None, Some(cs)) => cs.clone(),
        _ => Vec::new(),
    };
    let source = match &f.value {
        Some(v) => format!("value = {}", toml_text(v)),
        None => cols.join(", "),
    };
    let types: Vec<Result<&SourceType, &str>> = cols.iter().map(|c| ctx.column(c)).collect();
    let source_type = types
        .iter()
        .map(|t| match t {
            Ok(t) => t.shown.clone(),
            Err(e) => e.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let uuid = f.uuid.unwrap_or(ctx.uuid);
    let last = f.transform.last();
    let arrayed = f
        .transform
        .iter()
        .any(|t| matches!(t, TransformSpec::Array));
    let target = if let Some(r) = &f.reference {
        format!("the _id of `{r}`")
    } else if let Some(c) = f.cast {
        let t = cast_target(c, ctx.target);
        if arrayed {
            format!("array of {t}")
        } else {
            t.to_string()
        }
    } else if let Some(t) = last {
        match t {
            TransformSpec::Split(_) => "array of string".into(),
            TransformSpec::Json => "document / array / value".into(),
            TransformSpec::Array => "array".into(),
            TransformSpec::Map(_) => "the map's values".into(),
            _ => "string".into(),
        }
    } else if let Some(v) = &f.value {
        match v {
            toml::Value::String(_) => "string".into(),
            toml::Value::Integer(_) => "integer".into(),
            toml::Value::Float(_) => "double".into(),
            toml::Value::Boolean(_) => "bool".into(),
            toml::Value::Array(_) => "array".into(),
            _ => "document".into(),
        }
    } else {
        match types.first() {
            Some(Ok(t)) => natural(t, uuid, ctx.target),
            _ => "as the source".into(),
        }
    };
    // What loses information or needs a decision.
    let p = &f.path;
    if let Some(Ok(t)) = types.first() {
        let trims = f.transform.iter().any(|t| matches!(t, TransformSpec::Trim));
        match t.base.as_str() {
            "timestamp" | "timestamptz" => {
                if t.base == "timestamp" {
                    decisions.push(format!(
                        "{p}: a timestamp without time zone, read at {}",
                        f.timezone
                            .as_deref()
                            .unwrap_or("(no timezone: refused by check)")
                    ));
                }
                decisions.push(match f.sub_millis.unwrap_or_default() {
                    SubMillis::Reject => format!("{p}: values with sub-millisecond digits are rejected (BSON dates hold milliseconds)"),
                    SubMillis::Truncate => format!("{p}: sub-millisecond digits truncated, with a warning per row"),
                    SubMillis::KeepString => format!(
                        "{p}: truncated to milliseconds; the exact text kept at {}",
                        f.exact_path.as_deref().unwrap_or("?")
                    ),
                });
            }
            "numeric"
                if matches!(
                    f.cast,
                    Some(CastType::Double | CastType::Int | CastType::Long)
                ) =>
            {
                decisions.push(format!(
                    "{p}: numeric to {}: inexact values {}",
                    cast_text(f.cast.unwrap_or(CastType::Double)),
                    if f.lossy == Some(Lossy::Warn) {
                        "written with a warning"
                    } else {
                        "rejected"
                    }
                ))
            }
            "numeric" if ctx.target == TargetKind::Appwrite => decisions.push(format!(
                "{p}: numeric kept as exact text (Appwrite has no decimal)"
            )),
            "bpchar" if !trims => {
                decisions.push(format!("{p}: char(n) values keep their blank padding"))
            }
            "money" | "interval" => decisions.push(format!(
                "{p}: {} kept as PostgreSQL's text of the value",
                t.shown
            )),
            _ => {}
        }
    }
    if let Some(i) = f.infinity
        && i != Infinity::Reject
    {
        decisions.push(format!("{p}: ±infinity becomes {}", infinity_text(i)));
    }
    if f.lossy == Some(Lossy::Warn) && f.cast.is_none() {
        decisions.push(format!(
            "{p}: JSON numbers no BSON number holds exactly are written as the nearest double, with a warning"
        ));
    }
    if f.transform
        .iter()
        .any(|t| matches!(t, TransformSpec::DropNulls))
    {
        decisions.push(format!(
            "{p}: NULL elements of the array are dropped (where they were is lost)"
        ));
    }
    vec![
        p.clone(),
        source,
        source_type,
        target,
        f.transform
            .iter()
            .map(transform_text)
            .collect::<Vec<_>>()
            .join(", "),
        f.default.as_ref().map(toml_text).unwrap_or_default(),
        f.validate.as_ref().map(rules_text).unwrap_or_default(),
        f.reference.clone().unwrap_or_default(),
        options_text(f),
    ]
}

/// The relation key a table or query is described under.
pub fn relation_key(table: Option<&str>, query: Option<&str>) -> String {
    match (table, query) {
        (Some(t), _) => t.to_string(),
        (None, Some(q)) => q.to_string(),
        _ => String::new(),
    }
}

impl MappingDoc {
    pub fn build(
        pipeline: &str,
        target: TargetKind,
        entities: &[DocEntity],
        types: &SourceTypes,
    ) -> MappingDoc {
        let mut intro = vec![vec![
            Span::Text("Pipeline ".into()),
            Span::Code(pipeline.to_string()),
            Span::Text(format!(
                ", into {}: {} collections in run order.",
                match target {
                    TargetKind::Mongodb => "MongoDB",
                    TargetKind::Appwrite => "Appwrite",
                },
                entities.len()
            )),
        ]];
        for (rel, why) in &types.problems {
            intro.push(vec![
                Span::Text("Source types of ".into()),
                Span::Code(rel.clone()),
                Span::Text(format!(" not shown: {why}")),
            ]);
        }
        let sections = entities.iter().map(|e| section(e, target, types)).collect();
        MappingDoc {
            title: format!("Data mapping: {pipeline}"),
            intro,
            sections,
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("# {}\n\n", md_escape(&self.title));
        for l in &self.intro {
            out.push_str(&format!("{}\n\n", md_spans(l)));
        }
        for s in &self.sections {
            out.push_str(&format!("## {}\n\n", md_escape(&s.entity)));
            for (k, v) in &s.facts {
                out.push_str(&format!("- **{}**: {}\n", md_escape(k), md_escape(v)));
            }
            out.push_str("\n### Fields\n\n");
            out.push_str(&s.fields.markdown());
            for (facts, t) in &s.embeds {
                out.push_str(&format!("\n### Embed {}\n\n", md_code(&facts[0].1)));
                for (k, v) in facts {
                    out.push_str(&format!("- **{}**: {}\n", md_escape(k), md_escape(v)));
                }
                out.push('\n');
                out.push_str(&t.markdown());
            }
            if let Some(r) = &s.rules {
                out.push_str("\n### Row rules\n\n");
                out.push_str(&r.markdown());
            }
            out.push_str("\n### Conversions that lose information or need a decision\n\n");
            if s.decisions.is_empty() {
                out.push_str("none\n");
            }
            for d in &s.decisions {
                out.push_str(&format!("- {}\n", md_escape(d)));
            }
            out.push('\n');
        }
        out
    }

    pub fn html(&self) -> String {
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (self.title) }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    h1 { (self.title) }
                    @for l in &self.intro {
                        p class="muted" {
                            @for s in l {
                                @match s {
                                    Span::Text(t) => (t),
                                    Span::Code(c) => code { (c) },
                                }
                            }
                        }
                    }
                    @for s in &self.sections {
                        section class="entity" id={ "entity-" (s.entity) } {
                            h2 { (s.entity) }
                            ul { @for (k, v) in &s.facts { li { b { (k) } ": " (v) } } }
                            h3 { "Fields" }
                            (s.fields.html())
                            @for (facts, t) in &s.embeds {
                                h3 { "Embed " code { (facts[0].1) } }
                                ul { @for (k, v) in facts { li { b { (k) } ": " (v) } } }
                                (t.html())
                            }
                            @if let Some(r) = &s.rules {
                                h3 { "Row rules" }
                                (r.html())
                            }
                            h3 { "Conversions that lose information or need a decision" }
                            @if s.decisions.is_empty() { p class="muted" { "none" } }
                            ul class="decisions" { @for d in &s.decisions { li { (d) } } }
                        }
                    }
                }
            }
        }
        .into_string()
    }
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1b1b;max-width:1400px}
h1{font-size:22px} h2{font-size:18px;margin:32px 0 6px;border-bottom:2px solid #1565c0} h3{font-size:15px;margin:16px 0 6px}
.muted{color:#666} table{border-collapse:collapse;width:100%;font-size:12px}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top} th{background:#f3f6fa}
code{background:#f6f6f6;padding:0 3px}
";

fn section(e: &DocEntity, target: TargetKind, types: &SourceTypes) -> Section {
    let m = e.mapping;
    let s = &m.spec;
    let mut facts = vec![
        ("entity".to_string(), s.name.clone()),
        ("collection".to_string(), m.collection().to_string()),
        ("stage".to_string(), e.stage.clone()),
    ];
    if let Some(d) = &s.description {
        facts.push(("description".into(), d.clone()));
    }
    let rel = relation_key(s.source.table.as_deref(), s.source.query.as_deref());
    match (&s.source.table, &s.source.query) {
        (Some(t), _) => facts.push(("source table".into(), t.clone())),
        (None, Some(q)) => facts.push(("source query".into(), q.clone())),
        _ => {}
    }
    if let Some(n) = types.estimates.get(&rel) {
        facts.push(("rows (estimate)".into(), format!("~{n}")));
    }
    facts.push(("key".into(), s.source.key.join(", ")));
    if let Some(u) = &s.source.updated_at {
        facts.push(("updated_at (delta runs)".into(), u.clone()));
    }
    let mut id = format!(
        "strategy = {}; uuid = {}",
        match s.id.strategy {
            IdStrategy::Key => "key",
            IdStrategy::Uuid5 => "uuid5",
        },
        uuid_text(s.id.uuid)
    );
    if let Some(ns) = &s.id.namespace {
        id.push_str(&format!("; namespace = {ns}"));
    }
    facts.push(("_id".into(), id));
    facts.push((
        "options".into(),
        format!(
            "nulls = {}; uuid = {}",
            match s.options.nulls {
                NullPolicy::Omit => "omit (NULL leaves the field out)",
                NullPolicy::Keep => "keep (NULL written as null)",
            },
            uuid_text(s.options.uuid)
        ),
    ));
    if let Some(f) = &s.file {
        let mut parts = vec![format!("path_column = {}", f.path_column)];
        for (k, v) in [
            ("name_column", &f.name_column),
            ("size_column", &f.size_column),
            ("checksum_column", &f.checksum_column),
            ("mime_column", &f.mime_column),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k} = {v}"));
            }
        }
        parts.push(format!("checksum = {}", f.checksum.as_str()));
        parts.push(format!("bucket = {}", f.bucket));
        parts.push(format!("chunk_size = {}", f.chunk_size));
        if let Some(c) = &f.document_collection {
            parts.push(format!("document_collection = {c}"));
        }
        // Appwrite Storage: the bucket's settings when cutover creates it.
        let a = &f.appwrite;
        for (k, list) in [
            ("permissions", &a.permissions),
            ("file_permissions", &a.file_permissions),
            ("allowed_file_extensions", &a.allowed_file_extensions),
        ] {
            for v in list.iter().flatten() {
                parts.push(format!("{k} = {v}"));
            }
        }
        for (k, v) in [
            ("file_security", a.file_security),
            ("encryption", a.encryption),
            ("antivirus", a.antivirus),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k} = {v}"));
            }
        }
        if let Some(v) = a.maximum_file_size {
            parts.push(format!("maximum_file_size = {v}"));
        }
        if let Some(v) = &a.compression {
            parts.push(format!("compression = {v}"));
        }
        facts.push(("file (GridFS / Appwrite Storage)".into(), parts.join("; ")));
    }
    if s.appwrite.permissions.is_some() || s.appwrite.row_security.is_some() {
        let mut parts = Vec::new();
        if let Some(p) = &s.appwrite.permissions {
            parts.push(format!("permissions = [{}]", p.join(", ")));
        }
        if let Some(r) = s.appwrite.row_security {
            parts.push(format!("row_security = {r}"));
        }
        facts.push(("appwrite (table access)".into(), parts.join("; ")));
    }
    if let Some(u) = &s.appwrite.users {
        let mut parts = vec![
            format!("email = {}", u.email),
            format!("password_hash = {}", u.password_hash),
            format!("algorithm = {}", u.algorithm),
        ];
        if !u.hash_options.is_empty() {
            parts.push(format!(
                "hash_options = {{{}}}",
                u.hash_options
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", toml_text(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        } else {
            parts.push("hash_options = {}".into());
        }
        for (k, v) in [
            ("name", &u.name),
            ("phone", &u.phone),
            ("email_verified", &u.email_verified),
            ("status", &u.status),
            ("labels", &u.labels),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k} = {v}"));
            }
        }
        parts.push(format!("active = [{}]", u.active.join(", ")));
        facts.push(("appwrite.users".into(), parts.join("; ")));
    }

    match s.validator {
        ValidatorLevel::Off => {}
        level => facts.push((
            "validator".into(),
            format!(
                "{} ($jsonSchema of the rules of severity error, set after the load)",
                if level == ValidatorLevel::Strict {
                    "strict"
                } else {
                    "moderate"
                }
            ),
        )),
    }
    let refs = crate::mapping::reference_index_paths(s);
    if !s.index_references || !refs.is_empty() {
        facts.push((
            "reference indexes (built after the load)".into(),
            format!(
                "index_references = {}: {}",
                s.index_references,
                if refs.is_empty() {
                    "none".to_string()
                } else {
                    refs.join(", ")
                }
            ),
        ));
    }
    for ix in &s.indexes {
        let mut parts = vec![format!("keys = [{}]", ix.keys.join(", "))];
        if ix.unique {
            parts.push("unique".into());
        }
        if let Some(k) = ix.kind {
            parts.push(format!("type = {}", k.as_str()));
        }
        if let Some(n) = &ix.name {
            parts.push(format!("name = {n}"));
        }
        if let Some(p) = &ix.partial {
            parts.push(format!(
                "partial = {}",
                toml_text(&toml::Value::Table(p.clone()))
            ));
        }
        if let Some(t) = ix.ttl_seconds {
            parts.push(format!("ttl_seconds = {t}"));
        }
        if let Some(c) = &ix.collation {
            parts.push(format!("collation = {c}"));
        }
        facts.push(("index (built after the load)".into(), parts.join("; ")));
    }

    let mut decisions = Vec::new();
    let ctx = Ctx {
        target,
        uuid: s.options.uuid,
        columns: types.relations.get(&rel),
    };
    let mut fields = Table::new(None, field_columns());
    for f in &s.fields {
        fields.push(field_row(f, &ctx, &mut decisions));
    }
    let mut embeds = Vec::new();
    for em in &s.embeds {
        let erel = relation_key(em.table.as_deref(), em.query.as_deref());
        let mut ef = vec![("path".to_string(), em.path.clone())];
        match (&em.table, &em.query) {
            (Some(t), _) => ef.push(("table".into(), t.clone())),
            (None, Some(q)) => ef.push(("query".into(), q.clone())),
            _ => {}
        }
        ef.push(("foreign_key".into(), em.foreign_key.names().join(", ")));
        if !em.order_by.is_empty() {
            ef.push(("order_by".into(), em.order_by.join(", ")));
        }
        ef.push((
            "element".into(),
            match em.element {
                EmbedElement::Document => "document".into(),
                EmbedElement::Value => "value".into(),
            },
        ));
        if let Some(a) = &em.after {
            ef.push(("after".into(), a.clone()));
        }
        {
            ef.push((
                "appwrite".into(),
                match em.appwrite {
                    EmbedStore::Json => "json (into Appwrite: the array as JSON text)".into(),
                    EmbedStore::Table => {
                        "table (into Appwrite: a child table, one row per element)".into()
                    }
                },
            ));
        }
        if let Some(n) = types.estimates.get(&erel) {
            ef.push(("rows (estimate)".into(), format!("~{n}")));
        }
        let ectx = Ctx {
            columns: types.relations.get(&erel),
            ..ctx
        };
        let mut t = Table::new(None, field_columns());
        for f in &em.fields {
            let mut row = field_row(f, &ectx, &mut decisions);
            row[0] = format!("{}[].{}", em.path, f.path);
            t.push(row);
        }
        embeds.push((ef, t));
    }
    let rules = (!s.rules.is_empty()).then(|| {
        let mut t = Table::new(
            None,
            vec![
                Column::left("name", 0),
                Column::left("any_of", 0),
                Column::left("severity", 0),
                Column::left("message", 0),
            ],
        );
        for r in &s.rules {
            t.push(vec![
                r.name.clone(),
                r.any_of.join(", "),
                severity(r.severity).into(),
                r.message.clone().unwrap_or_default(),
            ]);
        }
        t
    });
    if s.id.strategy == IdStrategy::Uuid5 {
        decisions.push(
            "_id is a UUIDv5 of the key: the key's values are in the document only where a field maps them".into(),
        );
    }
    Section {
        entity: s.name.clone(),
        facts,
        fields,
        embeds,
        rules,
        decisions,
    }
}

#[cfg(test)]
mod tests {
    use super::md_code;

    #[test]
    fn code_spans_hold_names_as_they_are() {
        assert_eq!(md_code("my_pipe"), "`my_pipe`");
        assert_eq!(md_code("a`b"), "``a`b``");
        assert_eq!(md_code("`x"), "`` `x ``");
        assert_eq!(md_code("a\nb"), "`a b`");
    }
}
