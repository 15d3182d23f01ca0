//! What changed in the source's schema against existing mappings (`cutover scaffold --diff`):
//! tables and columns added or gone, keys, nullability, lengths and foreign keys that no longer
//! agree with what the mappings say. Pure: the catalog and the parsed mappings in, findings out.

use std::collections::BTreeSet;

use super::Mapping;
use super::draft::camel;
use super::spec::FieldSpec;
use crate::config::TargetKind;
use crate::source::catalog::{Catalog, Table};

/// One difference, on a mapping (or on the schema, for a table no mapping reads).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Drift {
    /// The mapping's name, or `-` for a table no mapping reads.
    pub entity: String,
    pub message: String,
}

/// A table name as a mapping writes it (`t` or `schema.t`), in `schema`: the bare name.
fn in_schema(name: &str, schema: &str) -> Option<String> {
    let mut parts = crate::source::postgres::relation_parts(name);
    match parts.len() {
        1 => parts.pop(),
        2 if parts[0] == schema => parts.pop(),
        _ => None,
    }
}

/// The table of a query as scaffold drafts an inheritance parent's (`SELECT * FROM ONLY t`):
/// compared as that table is.
fn only_table(query: &str) -> Option<String> {
    let rest = query.trim().strip_prefix("SELECT * FROM ONLY ")?;
    let parts = crate::source::postgres::relation_parts(rest.trim());
    (!parts.is_empty()).then(|| {
        parts
            .iter()
            .map(|p| crate::source::postgres::relation_part(p))
            .collect::<Vec<_>>()
            .join(".")
    })
}

fn field_columns(f: &FieldSpec) -> Vec<String> {
    let mut out: Vec<String> = f.column.iter().cloned().collect();
    out.extend(f.columns.iter().flatten().cloned());
    out
}

/// Differences between the schema `catalog` describes and `mappings` (those of table sources
/// in its schema; query sources are named and not compared).
pub fn drift(catalog: &Catalog, mappings: &[Mapping], target: TargetKind) -> Vec<Drift> {
    let mut out = Vec::new();
    let mut read: BTreeSet<String> = BTreeSet::new();
    let mut push = |entity: &str, message: String| {
        out.push(Drift {
            entity: entity.to_string(),
            message,
        })
    };
    for m in mappings {
        let entity = m.name();
        for e in &m.spec.embeds {
            if let Some(t) = e
                .table
                .as_deref()
                .and_then(|t| in_schema(t, &catalog.schema))
            {
                read.insert(t.to_string());
            }
        }
        let only = m.spec.source.query.as_deref().and_then(only_table);
        let Some(table_name) = m.spec.source.table.as_deref().or(only.as_deref()) else {
            push(
                entity,
                "a query source: not compared with the catalog".into(),
            );
            continue;
        };
        let Some(bare) = in_schema(table_name, &catalog.schema) else {
            continue;
        };
        read.insert(bare.to_string());
        let Some(t) = catalog.table(&bare) else {
            push(
                entity,
                format!(
                    "table `{bare}` no longer exists in schema `{}`",
                    catalog.schema
                ),
            );
            continue;
        };
        table_drift(catalog, mappings, m, t, target, &mut push);
        for e in &m.spec.embeds {
            let Some(child) = e
                .table
                .as_deref()
                .and_then(|n| in_schema(n, &catalog.schema))
            else {
                continue;
            };
            let Some(ct) = catalog.table(&child) else {
                push(
                    entity,
                    format!("embed {}: table `{child}` no longer exists", e.path),
                );
                continue;
            };
            let mut cols = e.foreign_key.names();
            cols.extend(e.order_by.iter().cloned());
            cols.extend(e.fields.iter().flat_map(field_columns));
            for c in cols {
                if ct.column(&c).is_none() {
                    push(
                        entity,
                        format!("embed {}: column `{child}.{c}` no longer exists", e.path),
                    );
                }
            }
        }
    }
    for t in &catalog.tables {
        // A table scaffold leaves out (no key a scan can order) is said when it drafts.
        if !read.contains(&t.name) && super::draft::usable_key(t).is_ok() {
            push(
                "-",
                format!(
                    "new table `{}` ({} columns): no mapping reads it (a draft: mappings/{}.toml)",
                    t.name,
                    t.columns.len(),
                    super::draft::entity_name(&t.name)
                ),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The entity a foreign key could reference: the mapping reading its table by that table's key,
/// unless it references `m` back (directly or through others: a cycle, which scaffold breaks
/// by leaving one edge a plain value).
fn reference_candidate<'a>(
    catalog: &Catalog,
    all: &'a [Mapping],
    m: &Mapping,
    fk: &crate::source::catalog::ForeignKey,
) -> Option<&'a str> {
    let target = all.iter().find(|x| {
        x.spec
            .source
            .table
            .as_deref()
            .and_then(|t| in_schema(t, &catalog.schema))
            == Some(fk.ref_table.clone())
            && x.spec.source.key == fk.ref_columns
    })?;
    if target.name() == m.name() {
        return Some(target.name());
    }
    // Does `target` reach `m` through references?
    let mut seen = BTreeSet::new();
    let mut queue = vec![target.name().to_string()];
    while let Some(e) = queue.pop() {
        if e == m.name() {
            return None;
        }
        if !seen.insert(e.clone()) {
            continue;
        }
        if let Some(x) = all.iter().find(|x| x.name() == e) {
            queue.extend(x.references());
        }
    }
    Some(target.name())
}

fn table_drift(
    catalog: &Catalog,
    all: &[Mapping],
    m: &Mapping,
    t: &Table,
    target: TargetKind,
    push: &mut impl FnMut(&str, String),
) {
    let entity = m.name();
    let key = &m.spec.source.key;
    match t.key() {
        Some(k) if &k != key => push(
            entity,
            format!(
                "the table's key is ({}), the mapping's ({})",
                k.join(", "),
                key.join(", ")
            ),
        ),
        None => push(
            entity,
            "the table no longer has a primary key or NOT NULL unique key".into(),
        ),
        _ => {}
    }
    let mut mapped: BTreeSet<String> = key.iter().cloned().collect();
    mapped.extend(m.spec.source.updated_at.iter().cloned());
    if let Some(f) = &m.spec.file {
        mapped.insert(f.path_column.clone());
        for c in [
            &f.name_column,
            &f.size_column,
            &f.checksum_column,
            &f.mime_column,
        ] {
            mapped.extend(c.iter().cloned());
        }
    }
    for c in key {
        if t.column(c).is_none() {
            push(entity, format!("key column `{c}` no longer exists"));
        }
    }
    for f in &m.spec.fields {
        for c in field_columns(f) {
            mapped.insert(c.clone());
            let Some(col) = t.column(&c) else {
                push(
                    entity,
                    format!("column `{c}` (field {}) no longer exists", f.path),
                );
                continue;
            };
            let rules = f.validate.as_ref();
            let required = rules.is_some_and(|r| r.required || r.not_null);
            if f.column.is_some() && required && !col.not_null {
                push(
                    entity,
                    format!(
                        "column `{c}` is nullable; field {} is `required` or `not_null` (NULL rows would be rejected)",
                        f.path
                    ),
                );
            }
            if let (Some(n), Some(r)) = (col.max_length, rules.and_then(|r| r.max_length))
                && u64::from(n) != r
            {
                push(
                    entity,
                    format!(
                        "column `{c}` is {}; field {} has max_length = {r}",
                        col.type_sql, f.path
                    ),
                );
            }
            if f.column.is_some() && f.reference.is_none() {
                for fk in &t.foreign_keys {
                    if fk.columns == [c.clone()]
                        && fk.ref_schema == catalog.schema
                        && let Some(target) = reference_candidate(catalog, all, m, fk)
                    {
                        push(
                            entity,
                            format!(
                                "column `{c}` has a foreign key to `{}` ({}); field {} is no reference (a draft: reference = \"{target}\")",
                                fk.ref_table, fk.name, f.path
                            ),
                        );
                    }
                }
            }
        }
    }
    // A draft path as scaffold would give it, beside the mapping's own (an Appwrite column key
    // fitted to its rule: adv26 F7 proposed `新`).
    let mut paths: BTreeSet<String> = m
        .spec
        .fields
        .iter()
        .map(|f| f.path.split('.').next().unwrap_or_default().to_lowercase())
        .collect();
    for col in &t.columns {
        if !mapped.contains(&col.name) {
            let path = match target {
                TargetKind::Appwrite => {
                    super::draft::unique_appwrite_key(&mut paths, &camel(&col.name))
                }
                TargetKind::Mongodb => camel(&col.name),
            };
            push(
                entity,
                format!(
                    "column `{}` ({}) is not mapped (a draft: path = \"{path}\")",
                    col.name, col.type_sql,
                ),
            );
        }
    }
}
