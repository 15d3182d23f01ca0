//! Draft mappings and a pipeline from the source's catalog (`cutover scaffold`): pure text
//! generation, no I/O. Every option written is one [`super::parse`] accepts; the command parses
//! the drafts before it writes them.
//!
//! What a draft decides, and says so in comments: the key (primary key, else a NOT NULL unique
//! key), references (single-column foreign keys to a drafted table's key), rules (NOT NULL,
//! `varchar(n)`, checks that are ranges or lists), stage order (foreign keys, cycles inside one
//! stage), and the safe choice for each type that needs a decision (`# decide:`). Embedding
//! proposals are written commented out: uncommenting the lines that start with `# ` (not `## `)
//! turns one on.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::TargetKind;
use crate::source::catalog::{Catalog, Column, ForeignKey, SAMPLE_ROWS, Table, Width};

/// What to draft.
#[derive(Debug, Clone)]
pub struct DraftOptions {
    pub target: TargetKind,
    /// The pipeline's name (its file is `pipelines/<name>.toml`).
    pub name: String,
}

/// The drafted files: the pipeline and one mapping per table, each as (file stem, text).
#[derive(Debug, Clone, Default)]
pub struct Drafts {
    pub pipeline_name: String,
    pub pipeline: String,
    pub mappings: Vec<(String, String)>,
    /// Tables not drafted and other things the user must know (also written into the files).
    pub notes: Vec<String>,
}

/// `snake_case` (or any separators) → `camelCase`; never empty, never starting with a digit.
pub fn camel(name: &str) -> String {
    let mut out = String::new();
    for word in name
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        // A word in capitals is a word, not initials to keep (adv29 S8: `ALLCAPS` became
        // `aLLCAPS`, `USER_ID` `uSERID`).
        let shouted =
            word.chars().any(char::is_alphabetic) && !word.chars().any(char::is_lowercase);
        let word: String = if shouted {
            word.chars().flat_map(char::to_lowercase).collect()
        } else {
            word.to_string()
        };
        let mut chars = word.chars();
        let Some(first) = chars.next() else { continue };
        if out.is_empty() {
            out.extend(first.to_lowercase());
        } else {
            out.extend(first.to_uppercase());
        }
        out.extend(chars);
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'f');
    }
    out
}

/// A name a mapping accepts (letters, digits, `_` and `-`).
pub fn entity_name(table: &str) -> String {
    let s: String = table
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "table".into() } else { s }
}

/// A TOML basic string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn q_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
    )
}

/// A comment line (every line of `text` commented).
fn comment(out: &mut String, prefix: &str, text: &str) {
    for line in text.lines() {
        out.push_str(prefix);
        if !line.is_empty() {
            out.push(' ');
            out.push_str(line);
        }
        out.push('\n');
    }
}

/// The tables drafted, with their entity names and keys.
struct Model<'a> {
    catalog: &'a Catalog,
    opts: &'a DraftOptions,
    /// table → (entity, key)
    drafted: BTreeMap<&'a str, (String, Vec<String>)>,
    /// Position of each drafted table in run order.
    position: BTreeMap<&'a str, usize>,
    /// Reference edges dropped to break a cycle: (table, fk name).
    broken: BTreeSet<(String, String)>,
    /// table → its collection, and why it is not its camelCase name (when it is not).
    collections: BTreeMap<&'a str, (String, Option<String>)>,
}

impl Model<'_> {
    fn entity(&self, table: &str) -> Option<&str> {
        self.drafted.get(table).map(|(e, _)| e.as_str())
    }

    fn key(&self, table: &str) -> Option<&[String]> {
        self.drafted.get(table).map(|(_, k)| k.as_slice())
    }

    /// Whether the foreign key points at a drafted table of this schema.
    fn internal<'f>(&self, fk: &'f ForeignKey) -> Option<&'f str> {
        (fk.ref_schema == self.catalog.main_schema()
            && self.drafted.contains_key(fk.ref_table.as_str()))
        .then_some(fk.ref_table.as_str())
    }

    /// Why a foreign key cannot be a `reference`, if it cannot.
    fn reference_problem(&self, table: &str, fk: &ForeignKey) -> Option<String> {
        let Some(target) = self.internal(fk) else {
            return Some(format!(
                "`{}.{}` is not drafted here",
                fk.ref_schema, fk.ref_table
            ));
        };
        if fk.columns.len() != 1 {
            return Some("a composite foreign key (references need one column)".into());
        }
        let key = self.key(target).unwrap_or_default();
        if key != fk.ref_columns.as_slice() {
            return Some(format!(
                "it points at {} of `{target}`, not at its key ({})",
                fk.ref_columns.join(", "),
                key.join(", ")
            ));
        }
        if self
            .broken
            .contains(&(table.to_string(), fk.name.to_string()))
        {
            return Some(format!(
                "`{target}` and `{table}` reference each other (a cycle): they run in one stage, `{target}` after `{table}`, so this one is kept as a plain value"
            ));
        }
        None
    }
}

/// Drafts the pipeline and mappings of every table of `catalog`.
pub fn draft(catalog: &Catalog, opts: &DraftOptions) -> Drafts {
    let mut notes = Vec::new();
    let mut drafted = BTreeMap::new();
    let mut used = BTreeSet::new();
    // The catalog's own schema's tables first: they keep their names when another schema's
    // `schema_table` comes out the same (adv42 F8: `public.things` took `public_things` from the
    // first schema's `public_things`).
    let mut tables: Vec<&crate::source::catalog::Table> = catalog.tables.iter().collect();
    tables.sort_by_key(|t| t.relation.is_some());
    for t in tables {
        if let Some(why) = &t.unreadable {
            notes.push(format!("`{}` is not drafted: {why}", t.name));
            continue;
        }
        let key = match usable_key(t) {
            Ok(k) => k,
            Err(why) => {
                notes.push(format!("`{}` is not drafted: {why}", t.name));
                continue;
            }
        };
        let mut e = entity_name(&t.name);
        while !used.insert(e.clone()) {
            e.push('_');
        }
        drafted.insert(t.name.as_str(), (e, key));
    }
    if !catalog.views.is_empty() {
        // Not drafted, said (adv29 S8: skipped without a word).
        notes.push(format!(
            "views are not drafted: {} (a view has no key a read can rely on; read one through a `query` source with the key its rows have)",
            catalog
                .views
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut collections = collections(&drafted);
    // Appwrite table ids: fitted to its id rule and unique whatever the case (adv26 F3: `caseT`
    // and `caset` were both drafted), in table order; each change said.
    if opts.target == TargetKind::Appwrite {
        let mut taken: BTreeSet<String> = BTreeSet::new();
        for (name, why) in collections.values_mut() {
            let id = unique_appwrite_key(&mut taken, name);
            if id != *name {
                let said = format!(
                    "`{name}` as an Appwrite table id: at most 36 of A-Z, a-z, 0-9 and `_`, unique whatever the case."
                );
                *why = Some(match why.take() {
                    Some(w) => format!("{w}\n{said}"),
                    None => said,
                });
                *name = id;
            }
        }
    }
    let mut model = Model {
        catalog,
        opts,
        drafted,
        position: BTreeMap::new(),
        broken: BTreeSet::new(),
        collections,
    };
    let stages = order(&mut model);

    let mut mappings = Vec::new();
    for t in &catalog.tables {
        if let Some((entity, _)) = model.drafted.get(t.name.as_str()) {
            mappings.push((entity.clone(), mapping_text(&model, t)));
        }
    }
    // Columns left out of a draft are said where the summary is read too (adv36 F4: only a
    // comment in the mapping said that a whole column would not be migrated).
    if opts.target == TargetKind::Appwrite {
        for t in &catalog.tables {
            if !model.drafted.contains_key(t.name.as_str()) {
                continue;
            }
            for col in t
                .columns
                .iter()
                .filter(|c| c.probe.array_dims.is_some_and(|d| d >= 2))
            {
                notes.push(format!(
                    "column `{}.{}` is left out (its values are not migrated): the sample holds arrays of {} dimensions, which no Appwrite column holds; its mapping says how to keep it",
                    t.name,
                    col.name,
                    col.probe.array_dims.unwrap_or(2)
                ));
            }
        }
    }
    let pipeline = pipeline_text(&model, &stages, &notes);
    Drafts {
        pipeline_name: opts.name.clone(),
        pipeline,
        mappings,
        notes,
    }
}

/// Each drafted table's collection: its name in camelCase, unless another drafted table's name
/// camelCases to the same (`order_items` and `orderItems`, `Order_Items`): then a table whose
/// own name is that camelCase keeps it, and the others are named like their mapping (the
/// entity's name, unique, close to the table's); a name still taken gets the first free number
/// suffix, in table order. The same for any set of tables, whatever order they come in; the
/// reason goes into the mapping as a comment.
fn collections<'a>(
    drafted: &BTreeMap<&'a str, (String, Vec<String>)>,
) -> BTreeMap<&'a str, (String, Option<String>)> {
    let mut by_camel: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for table in drafted.keys() {
        by_camel.entry(camel(table)).or_default().push(table);
    }
    let mut out = BTreeMap::new();
    let mut used = BTreeSet::new();
    // Those that keep their camelCase name first, so that no suffix takes it from them.
    for (name, tables) in &by_camel {
        if let [only] = tables.as_slice() {
            used.insert(name.clone());
            out.insert(*only, (name.clone(), None));
        } else if let Some(own) = tables.iter().find(|t| **t == name.as_str()) {
            used.insert(name.clone());
            out.insert(*own, (name.clone(), None));
        }
    }
    for (name, tables) in &by_camel {
        if tables.len() < 2 {
            continue;
        }
        let all = tables
            .iter()
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let renamed: Vec<&str> = tables
            .iter()
            .copied()
            .filter(|t| !out.contains_key(*t))
            .collect();
        for table in renamed {
            let base = drafted[table].0.clone();
            let mut c = base.clone();
            let mut n = 2;
            while !used.insert(c.clone()) {
                c = format!("{base}{n}");
                n += 1;
            }
            let why = format!(
                "Tables {all} all camelCase to `{name}`: this one's collection is `{c}` (its mapping's name) so that each table has its own; rename it at will."
            );
            out.insert(table, (c, Some(why)));
        }
    }
    out
}

/// Base types a key scan can order by (mappings/README.md, `source.key`).
const KEY_TYPES: &[&str] = &[
    "int2",
    "int4",
    "int8",
    "numeric",
    "text",
    "varchar",
    "bpchar",
    "uuid",
    "date",
    "timestamp",
    "timestamptz",
];

/// The table's key, when it has one a key scan can order: its primary key, else the first
/// unique key of NOT NULL columns; each column of a type in [`KEY_TYPES`].
pub(crate) fn usable_key(t: &Table) -> Result<Vec<String>, String> {
    let orderable = |cols: &[String]| {
        cols.iter().all(|c| {
            t.column(c).is_some_and(|c| {
                c.element_type.is_none()
                    && KEY_TYPES.contains(&c.base_type.as_str())
                    && c.nondeterministic_collation.is_none()
            })
        })
    };
    let candidates = std::iter::once(t.primary_key.clone())
        .filter(|k| !k.is_empty())
        .chain(
            t.unique
                .iter()
                .filter(|u| u.iter().all(|c| t.column(c).is_some_and(|c| c.not_null)))
                .cloned(),
        );
    let mut seen_any = false;
    for k in candidates {
        seen_any = true;
        if orderable(&k) {
            return Ok(k);
        }
    }
    Err(if seen_any {
        format!(
            "no key of types a key scan can order ({}; not enums, arrays or other types, nor text under a non-deterministic collation)",
            KEY_TYPES.join(", ")
        )
    } else {
        "it has no primary key and no unique key of NOT NULL columns (a mapping needs a unique key)"
            .to_string()
    })
}

/// One stage: its tables in run order, the stages it depends on, and its cycles.
struct Stage {
    tables: Vec<String>,
    depends_on: BTreeSet<usize>,
    cycles: Vec<Vec<String>>,
}

/// Orders the drafted tables by their foreign keys: strongly connected components (Tarjan),
/// each at the level one past the deepest component it references. Records run positions and
/// the reference edges a cycle forces to drop.
fn order(model: &mut Model) -> Vec<Stage> {
    let names: Vec<&str> = model.drafted.keys().copied().collect();
    let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); names.len()];
    for (i, n) in names.iter().enumerate() {
        let t = model
            .catalog
            .table(n)
            .expect("a drafted table is in the catalog");
        for fk in &t.foreign_keys {
            if let Some(target) = model.internal(fk)
                && let Some(&j) = index.get(target)
                && j != i
            {
                deps[i].insert(j);
            }
        }
    }
    let comps = tarjan(&deps);
    // Tarjan yields components dependencies first.
    let mut comp_of = vec![0; names.len()];
    for (c, members) in comps.iter().enumerate() {
        for &m in members {
            comp_of[m] = c;
        }
    }
    let mut level = vec![0usize; comps.len()];
    for (c, members) in comps.iter().enumerate() {
        let mut l = 0;
        for &m in members {
            for &d in &deps[m] {
                if comp_of[d] != c {
                    l = l.max(level[comp_of[d]] + 1);
                }
            }
        }
        level[c] = l;
    }
    let levels = level.iter().copied().max().map_or(0, |m| m + 1);
    let mut stages: Vec<Stage> = (0..levels)
        .map(|_| Stage {
            tables: Vec::new(),
            depends_on: BTreeSet::new(),
            cycles: Vec::new(),
        })
        .collect();
    for (c, members) in comps.iter().enumerate() {
        let mut ms: Vec<&str> = members.iter().map(|&m| names[m]).collect();
        ms.sort();
        if ms.len() > 1 {
            stages[level[c]]
                .cycles
                .push(ms.iter().map(|s| s.to_string()).collect());
        }
        for &m in members {
            for &d in &deps[m] {
                if comp_of[d] != c {
                    stages[level[c]].depends_on.insert(level[comp_of[d]]);
                }
            }
        }
        stages[level[c]]
            .tables
            .extend(ms.iter().map(|s| s.to_string()));
    }
    // No table of a stage references another of it but within a cycle (whose members are
    // ordered by name too): by name reads best.
    for s in &mut stages {
        s.tables.sort();
    }
    let mut pos = 0;
    for s in &stages {
        for t in &s.tables {
            let name = names[index[t.as_str()]];
            model.position.insert(name, pos);
            pos += 1;
        }
    }
    // A reference to a table of one's own cycle placed at or after oneself cannot be kept.
    for (i, n) in names.iter().enumerate() {
        let t = model.catalog.table(n).expect("drafted");
        for fk in &t.foreign_keys {
            if let Some(target) = model.internal(fk)
                && let Some(&j) = index.get(target)
                && j != i
                && comp_of[j] == comp_of[i]
                && model.position[target] > model.position[n]
            {
                model.broken.insert((n.to_string(), fk.name.clone()));
            }
        }
    }
    stages
}

/// Strongly connected components of a graph given as each node's successors, in an order
/// where a component comes after every component it reaches (dependencies first).
fn tarjan(succ: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    struct St<'a> {
        succ: &'a [BTreeSet<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut St, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on[v] = true;
        let succ: Vec<usize> = s.succ[v].iter().copied().collect();
        for w in succ {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            comp.sort();
            s.out.push(comp);
        }
    }
    let n = succ.len();
    let mut s = St {
        succ,
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

fn stage_name(i: usize) -> String {
    format!("stage_{}", i + 1)
}

fn pipeline_text(model: &Model, stages: &[Stage], notes: &[String]) -> String {
    let c = model.catalog;
    let mut out = String::new();
    comment(
        &mut out,
        "#",
        &format!(
            "Drafted by `cutover scaffold` from schema `{}` of database `{}`: review, edit, commit.\nStages follow the foreign keys: a stage's tables reference only tables of earlier stages\n(or themselves, or a table of a cycle within the stage).",
            c.schema, c.database
        ),
    );
    for n in notes {
        comment(&mut out, "#", &format!("Not drafted: {n}"));
    }
    out.push_str("version = 1\n");
    out.push_str(&format!("name = {}\n", q(&model.opts.name)));
    out.push_str(&format!(
        "description = {}\n",
        q(&format!(
            "Every table of schema {} of {}, in foreign-key order.",
            c.schema, c.database
        ))
    ));
    out.push_str("mappings_dir = \"../mappings\"\n");
    out.push_str(&format!(
        "target = {}\n",
        q(match model.opts.target {
            TargetKind::Mongodb => "mongodb",
            TargetKind::Appwrite => "appwrite",
        })
    ));
    for (i, s) in stages.iter().enumerate() {
        out.push('\n');
        for cycle in &s.cycles {
            comment(
                &mut out,
                "#",
                &format!(
                    "A cycle of foreign keys ({}): these run in this one stage; a reference to one placed later is\nwritten as a plain value (see the comment in its mapping).",
                    cycle.join(", ")
                ),
            );
        }
        for t in &s.tables {
            let table = c.table(t).expect("drafted");
            if table
                .foreign_keys
                .iter()
                .any(|fk| fk.ref_table == *t && fk.ref_schema == c.main_schema())
            {
                comment(
                    &mut out,
                    "#",
                    &format!(
                        "`{t}` references itself: its references are resolved within the stage (the rows are all written by it)."
                    ),
                );
            }
        }
        out.push_str("[[stage]]\n");
        out.push_str(&format!("name = {}\n", q(&stage_name(i))));
        let entities: Vec<String> = s
            .tables
            .iter()
            .map(|t| model.entity(t).unwrap_or_default().to_string())
            .collect();
        out.push_str(&format!("entities = {}\n", q_list(&entities)));
        if !s.depends_on.is_empty() {
            let deps: Vec<String> = s.depends_on.iter().map(|&d| stage_name(d)).collect();
            out.push_str(&format!("depends_on = {}\n", q_list(&deps)));
        }
    }
    out
}

fn estimate_text(t: &Table) -> String {
    match t.row_estimate {
        Some(n) => format!("~{n} rows"),
        None => "rows unknown (never analyzed)".into(),
    }
}

/// Names (lower case, without `_`) of a column that says when a row last changed.
const UPDATED_AT: [&str; 6] = [
    "updatedat",
    "modifiedat",
    "lastmodified",
    "lastupdated",
    "updatedon",
    "modifiedon",
];

/// The note of a time whose sub-millisecond digits are truncated (its draft's choice).
const TRUNCATED: &str = "sub-millisecond digits are truncated with a warning (sub_millis = \"truncate\"); \"keep_string\" with exact_path keeps them, \"reject\" refuses the row.";

fn mapping_text(model: &Model, t: &Table) -> String {
    let c = model.catalog;
    let (entity, key) = model.drafted.get(t.name.as_str()).expect("drafted");
    let mut out = String::new();
    comment(
        &mut out,
        "#",
        &format!(
            "Drafted by `cutover scaffold` from `{}` ({}).",
            match &t.relation {
                Some(r) => r.clone(),
                None => format!("{}.{}", c.main_schema(), t.name),
            },
            estimate_text(t)
        ),
    );
    out.push_str("version = 1\n");
    out.push_str(&format!("name = {}\n", q(entity)));
    let (collection, why) = &model.collections[t.name.as_str()];
    if let Some(why) = why {
        comment(&mut out, "#", why);
    }
    out.push_str(&format!("collection = {}\n", q(collection)));
    if let Some(d) = &t.comment {
        out.push_str(&format!("description = {}\n", q(d)));
    }
    if model.opts.target == TargetKind::Mongodb {
        comment(
            &mut out,
            "#",
            "decide: no validator (the default); validator = \"strict\" sets a $jsonSchema of the rules below\non the collection after the load, so that mongod refuses later writes that break them.",
        );
        out.push_str("# validator = \"strict\"\n");
    }
    out.push_str("\n[source]\n");
    let table = c.relation_of(t);
    if t.inherited_by.is_empty() {
        out.push_str(&format!("table = {}\n", q(&table)));
    } else {
        // A read of the parent reads its children's rows too: they would be written twice,
        // here and by the children's own mappings (adv29 S5).
        comment(
            &mut out,
            "#",
            &format!(
                "decide: {} inherit from this table, and a read of it reads their rows too (PostgreSQL's inheritance); this draft reads its own rows only (FROM ONLY), as each child has its own mapping. To keep the whole hierarchy in one collection instead, write table = {} and leave the children's mappings out of the pipeline.",
                t.inherited_by.join(", "),
                q(&table)
            ),
        );
        out.push_str(&format!(
            "query = {}\n",
            q(&format!(
                "SELECT * FROM ONLY {}",
                crate::source::postgres::quote_relation(&table)
            ))
        ));
    }
    if t.primary_key.is_empty() {
        comment(
            &mut out,
            "#",
            "No primary key: the key is a unique key of NOT NULL columns.",
        );
    }
    out.push_str(&format!("key = {}\n", q_list(key)));
    // A column that says when a row changed: what `migrate --since-last` reads (adv36 F8: not
    // drafted, every catch-up copied every table whole).
    if let Some(col) = t.columns.iter().find(|c| {
        matches!(c.base_type.as_str(), "timestamp" | "timestamptz")
            && c.element_type.is_none()
            && UPDATED_AT.contains(&c.name.to_ascii_lowercase().replace('_', "").as_str())
    }) {
        comment(
            &mut out,
            "#",
            &format!(
                "decide: `{}` is read as when a row last changed: `migrate --since-last` copies the rows changed since the last run by it. It must be set on every insert and update (a trigger, or the application); remove this line if it is not, and a catch-up copies the table whole.",
                col.name
            ),
        );
        out.push_str(&format!("updated_at = {}\n", q(&col.name)));
    }
    if key.len() > 1 {
        out.push('\n');
        comment(
            &mut out,
            "#",
            "A composite key: _id is the sub-document {column: value, …} (strategy = \"key\");\nstrategy = \"uuid5\" makes a deterministic UUID instead.",
        );
        out.push_str("[id]\nstrategy = \"key\"\n");
    }

    // Which column's foreign key makes it a reference (or why not).
    let mut refs: BTreeMap<&str, Result<String, String>> = BTreeMap::new();
    for fk in &t.foreign_keys {
        let outcome = match model.reference_problem(&t.name, fk) {
            None => Ok(model
                .entity(fk.ref_table.as_str())
                .unwrap_or_default()
                .to_string()),
            Some(problem) => Err(format!(
                "foreign key {} → {}.{} ({}) is not a reference: {problem}",
                fk.name,
                fk.ref_schema,
                fk.ref_table,
                fk.ref_columns.join(", ")
            )),
        };
        for col in &fk.columns {
            // A column in two foreign keys keeps the first that is a reference.
            match refs.get(col.as_str()) {
                Some(Ok(_)) => {}
                _ => {
                    refs.insert(col.as_str(), outcome.clone());
                }
            }
        }
    }

    let mut paths = BTreeSet::new();
    let mut path_of: BTreeMap<&str, String> = BTreeMap::new();
    // The key is the _id; a key column is also a field when it references another table, into
    // Appwrite (where a hashed row id would not keep its value), or when the table has no
    // other column (a mapping needs a field).
    let only_key = t.columns.iter().all(|c| key.contains(&c.name));
    for col in &t.columns {
        let is_key = key.contains(&col.name);
        let reference = refs.get(col.name.as_str());
        if is_key && model.opts.target == TargetKind::Mongodb && reference.is_none() && !only_key {
            continue;
        }
        out.push('\n');
        if model.opts.target == TargetKind::Appwrite && col.probe.array_dims.is_some_and(|d| d >= 2)
        {
            // Every row holding such a value would be rejected (adv26 F1): left out, said.
            comment(
                &mut out,
                "#",
                &format!(
                    "decide: column `{}` is left out: the sample holds arrays of {} dimensions, which no Appwrite column holds (an array column takes one). Its values are not migrated unless you map it: read the table through a `query` source that selects array_to_json({})::text, and map that as JSON text.",
                    col.name,
                    col.probe.array_dims.unwrap_or(2),
                    crate::source::postgres::quote_ident(&col.name)
                ),
            );
            continue;
        }
        let path = match model.opts.target {
            TargetKind::Appwrite => {
                let fitted = unique_appwrite_key(&mut paths, &camel(&col.name));
                if fitted != camel(&col.name) {
                    comment(
                        &mut out,
                        "#",
                        &format!(
                            "`{}` as an Appwrite column key: at most 36 of A-Z, a-z, 0-9 and `_`, unique whatever the case.",
                            camel(&col.name)
                        ),
                    );
                }
                fitted
            }
            TargetKind::Mongodb => unique_path(&mut paths, &camel(&col.name)),
        };
        field_text(
            &mut out,
            "[[field]]",
            &path,
            t,
            col,
            reference,
            model.opts.target,
        );
        path_of.insert(col.name.as_str(), path);
    }
    // Checks no field shows: over several columns (or none), or over a column that is no field
    // (the key, which is the _id): a rule reads one field, so they are kept as comments.
    for check in &t.checks {
        let why = match check.columns.as_slice() {
            [one] if path_of.contains_key(one.as_str()) => continue,
            [one] => format!("it is on `{one}`, which is the _id here, not a field"),
            [] => "it names no column".to_string(),
            many => format!(
                "it relates {} (a rule reads one field)",
                many.iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        out.push('\n');
        comment(
            &mut out,
            "#",
            &format!(
                "check {} is not a rule here, {why}: {}",
                check.name, check.definition
            ),
        );
    }
    index_text(&mut out, t, key, &path_of, model.opts.target);

    if model.opts.target == TargetKind::Appwrite {
        out.push('\n');
        comment(
            &mut out,
            "#",
            "decide: who may read and write the table. Appwrite's default for a table cutover creates is no\npermission and no row security: only API keys (as cutover's) reach its rows, no client does.\nUncomment and set what the application's clients need (see mappings/README.md, [appwrite]).",
        );
        out.push_str("# [appwrite]\n# permissions = ['read(\"users\")']\n# row_security = false\n");
    }
    for (table, fk) in embed_candidates(model, t) {
        out.push('\n');
        embed_proposal(&mut out, model, t, table, fk, &mut paths);
    }
    for (join, other_fk, own_fk) in join_candidates(model, t) {
        out.push('\n');
        join_proposal(&mut out, model, join, own_fk, other_fk, &mut paths);
    }
    out
}

/// The source's indexes as `[[index]]` tables (MongoDB builds them after the load): those on
/// plain columns mapped to fields; others said in a comment. A unique index over a nullable
/// column indexes only the documents that hold it (PostgreSQL lets any number of rows be NULL;
/// a MongoDB unique index would count each missing field as one null).
fn index_text(
    out: &mut String,
    t: &Table,
    key: &[String],
    path_of: &BTreeMap<&str, String>,
    target: TargetKind,
) {
    let mut seen: BTreeSet<&[String]> = BTreeSet::new();
    for ix in t.indexes.iter().filter(|i| !i.primary) {
        if ix.columns == key {
            continue;
        }
        // MongoDB keeps one index per key pattern: the first (a unique one sorts first).
        if !ix.columns.is_empty() && !seen.insert(ix.columns.as_slice()) {
            continue;
        }
        out.push('\n');
        if ix.columns.is_empty() {
            comment(
                out,
                "#",
                &format!(
                    "source index {} is on an expression or partial: not drafted ({})",
                    ix.name, ix.definition
                ),
            );
            continue;
        }
        let paths: Option<Vec<&String>> =
            ix.columns.iter().map(|c| path_of.get(c.as_str())).collect();
        let Some(paths) = paths else {
            comment(
                out,
                "#",
                &format!(
                    "source index {} names a column that is no field here: not drafted ({})",
                    ix.name, ix.definition
                ),
            );
            continue;
        };
        // A MongoDB unique index over an array (or a JSON value) keys each element: rows
        // PostgreSQL holds apart as whole values would collide.
        if ix.unique
            && let Some(c) = ix.columns.iter().find(|c| {
                t.column(c).is_some_and(|c| {
                    c.element_type.is_some() || matches!(c.base_type.as_str(), "json" | "jsonb")
                })
            })
        {
            comment(
                out,
                "#",
                &format!(
                    "source unique index {} is over {c}, an array or JSON value: not drafted (a MongoDB unique index keys each array element, so rows the source holds apart would collide) ({})",
                    ix.name, ix.definition
                ),
            );
            continue;
        }
        // Appwrite (its MariaDB) compares text without case, accents or trailing spaces, and
        // indexes long text only by a prefix: an index over text could refuse rows the source
        // holds apart, or not be made. Those over numbers, booleans and dates are drafted.
        if target == TargetKind::Appwrite
            && let Some(c) = ix.columns.iter().find(|c| {
                !t.column(c).is_some_and(|c| {
                    c.element_type.is_none()
                        && matches!(
                            c.base_type.as_str(),
                            "int2"
                                | "int4"
                                | "int8"
                                | "float4"
                                | "float8"
                                | "bool"
                                | "date"
                                | "timestamp"
                                | "timestamptz"
                        )
                })
            })
        {
            comment(
                out,
                "#",
                &format!(
                    "decide: source {}index {} is over {c}, which Appwrite holds as text: not drafted (an Appwrite index compares text without case, accents or trailing spaces, so a unique one may refuse rows the source holds apart; long text is indexed by a prefix only); add it as an [[index]] if that is what the application needs ({})",
                    if ix.unique { "unique " } else { "" },
                    ix.name,
                    ix.definition
                ),
            );
            continue;
        }
        comment(out, "#", &format!("From source index {}.", ix.name));
        out.push_str("[[index]]\n");
        let keys: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        out.push_str(&format!("keys = {}\n", q_list(&keys)));
        if ix.unique {
            out.push_str("unique = true\n");
        }
        out.push_str(&format!("name = {}\n", q(&ix.name)));
        let nullable: Vec<&String> = ix
            .columns
            .iter()
            .zip(&paths)
            .filter(|(c, _)| t.column(c).is_some_and(|c| !c.not_null))
            .map(|(_, p)| *p)
            .collect();
        // Appwrite's unique index lets NULLs repeat (and makes no partial index).
        if ix.unique && !nullable.is_empty() && target == TargetKind::Mongodb {
            let conds: Vec<String> = nullable
                .iter()
                .map(|p| format!("{} = {{ \"$exists\" = true }}", q(p)))
                .collect();
            out.push_str(&format!("partial = {{ {} }}\n", conds.join(", ")));
        }
    }
}

fn unique_path(used: &mut BTreeSet<String>, base: &str) -> String {
    let mut p = base.to_string();
    let mut n = 2;
    while !used.insert(p.clone()) {
        p = format!("{base}{n}");
        n += 1;
    }
    p
}

/// A name as an Appwrite key or id can hold it (`[A-Za-z0-9_]`, at most 36, a letter first):
/// other characters dropped, a name too long (or with nothing left) cut and told apart from
/// others cut alike by a hash of the whole name.
fn appwrite_fit(name: &str) -> String {
    use sha2::Digest;
    let kept: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let kept = kept.trim_start_matches(|c: char| !c.is_ascii_alphabetic());
    if !kept.is_empty() && kept.len() <= 36 && kept.len() == name.len() {
        return kept.to_string();
    }
    let hash = sha2::Sha256::digest(name.as_bytes());
    let tag: String = hash.iter().take(3).map(|b| format!("{b:02x}")).collect();
    let head: String = if kept.is_empty() {
        "f".into()
    } else {
        kept.chars().take(29).collect()
    };
    format!("{head}_{tag}")
}

/// A field's path among `used`: [`unique_path`], or for Appwrite (whose child tables and
/// columns are named from it) [`unique_appwrite_key`] (adv26 F12: a proposal's raw child name).
fn unique_key(used: &mut BTreeSet<String>, base: &str, target: TargetKind) -> String {
    match target {
        TargetKind::Appwrite => unique_appwrite_key(used, base),
        TargetKind::Mongodb => unique_path(used, base),
    }
}

/// [`unique_path`] for an Appwrite column key: fitted ([`appwrite_fit`]) and unique without
/// regard to case (Appwrite compares keys so).
pub(crate) fn unique_appwrite_key(used: &mut BTreeSet<String>, base: &str) -> String {
    let base = appwrite_fit(base);
    let mut p = base.clone();
    let mut n = 2;
    while !used.insert(p.to_lowercase()) {
        let suffix = n.to_string();
        let head: String = base.chars().take(36 - suffix.len()).collect();
        p = format!("{head}{suffix}");
        n += 1;
    }
    p
}

/// The base type a column's values convert like (an array's element type).
fn scalar_type(col: &Column) -> &str {
    col.element_type.as_deref().unwrap_or(&col.base_type)
}

fn is_text(ty: &str) -> bool {
    matches!(ty, "text" | "varchar" | "bpchar" | "name")
}

/// Writes one `[[field]]` (or `# [[embed.field]]` lines, with `header` and a `prefix`).
fn field_text(
    out: &mut String,
    header: &str,
    path: &str,
    t: &Table,
    col: &Column,
    reference: Option<&Result<String, String>>,
    target: TargetKind,
) {
    field_text_prefixed(out, "", header, path, t, col, reference, target)
}

#[allow(clippy::too_many_arguments)]
fn field_text_prefixed(
    out: &mut String,
    prefix: &str,
    header: &str,
    path: &str,
    t: &Table,
    col: &Column,
    reference: Option<&Result<String, String>>,
    target: TargetKind,
) {
    let note = if prefix.is_empty() { "#" } else { "##" };
    if let Some(c) = &col.comment {
        comment(out, note, c);
    }
    match &col.default {
        Some(d) if col.generated => comment(out, note, &format!("generated: {d}")),
        Some(d) => comment(
            out,
            note,
            &format!("source default: {d} (applies to inserts only; existing NULLs stay NULL)"),
        ),
        None => {}
    }
    if let Some(Err(why)) = reference {
        comment(out, note, why);
    }
    let ty = scalar_type(col);
    let mut options: Vec<String> = Vec::new();
    let mut decide: Vec<String> = Vec::new();
    // A time in a unique index (or key) of the source: truncating its microseconds could make two
    // rows one value (the index then fails after the load): such rows are refused instead.
    let unique = t
        .indexes
        .iter()
        .any(|i| i.unique && i.columns.iter().any(|c| c == &col.name));
    let sub_millis = if unique { "reject" } else { "truncate" };
    if unique && matches!(ty, "timestamp" | "timestamptz") {
        decide.push("unique in the source: truncating sub-millisecond digits could make two values one, so rows with such digits are refused (sub_millis = \"reject\"); \"keep_string\" with exact_path keeps them.".into());
    }
    match ty {
        "timestamp" => {
            options.push("timezone = \"UTC\"".into());
            options.push(format!("sub_millis = \"{sub_millis}\""));
            decide.push(format!(
                "{} has no time zone: read as UTC (timezone = \"UTC\"), or the offset the application wrote in (\"+01:00\").",
                col.type_sql
            ));
            if !unique {
                decide.push(TRUNCATED.into());
            }
        }
        "timestamptz" => {
            options.push(format!("sub_millis = \"{sub_millis}\""));
            // One note per decision: a unique time's is said above (adv36 F2).
            if !unique {
                decide.push(TRUNCATED.into());
            }
        }
        "numeric" => decide.push(match target {
            TargetKind::Mongodb => "numeric is written as Decimal128, exactly (the default); type = \"double\" is smaller but inexact (lossy = \"reject\" | \"warn\").".into(),
            TargetKind::Appwrite => "numeric is written as its exact text (Appwrite has no decimal column); type = \"double\" makes a float column, inexact (lossy = \"reject\" | \"warn\").".into(),
        }),
        // Drafted as text below when the sample holds NaN or an infinity for Appwrite: one
        // note, that one (adv42 F9: both were drafted, contradicting each other).
        "float4" | "float8" if col.probe.nonfinite_float && target == TargetKind::Appwrite => {}
        "float4" | "float8" => decide.push(format!(
            "{} is written as a double, bit for bit; type = \"decimal\" would give the decimal of its shortest text.",
            col.type_sql
        )),
        "money" => decide.push("money is kept as its text as lc_monetary prints it (\"$1,234.50\"); for a number, read it through a `query` source as money::numeric.".into()),
        "interval" => decide.push("interval is kept as its text (IntervalStyle); for a number, read it through a `query` source as extract(epoch FROM …).".into()),
        "point" if col.element_type.is_none() => {
            options.push("type = \"point\"".into());
            decide.push(match target {
                TargetKind::Mongodb => "point becomes a GeoJSON point (type = \"point\": x the longitude, y the latitude; a 2dsphere [[index]] can use it); a row outside [-180, 180] × [-90, 90] is rejected (point_range). Without `type` it stays the text \"(x,y)\".",
                TargetKind::Appwrite => "point becomes a point column [lon, lat] (type = \"point\": x the longitude, y the latitude); a row outside [-180, 180] × [-90, 90] is rejected (point_range). Without `type` it stays the text \"(x,y)\".",
            }.into());
        }
        "bpchar" => decide.push("char(n) values keep their blank padding; transform = [\"trim\"] drops it.".into()),
        "bytea" if target == TargetKind::Appwrite => decide.push("bytea is stored as extended-JSON text; type = \"base64\" or \"hex\" gives plain text.".into()),
        _ => {}
    }
    // What the sample of rows showed that the default conversion would reject: the safe
    // choice, said (adv23 F3, F13: the drafts passed plan, then check and migrate rejected rows).
    let p = col.probe;
    if p.infinite && matches!(ty, "date" | "timestamp" | "timestamptz") {
        match target {
            TargetKind::Mongodb => {
                options.push("infinity = \"string\"".into());
                decide.push("the sample holds infinity / -infinity, which no date holds: written as that text (infinity = \"string\"); \"null\" writes null, \"reject\" (the default) rejects the row.".into());
            }
            // A NOT NULL column (a key's) cannot take the null: such rows are rejected, said
            // (adv36 F2: `infinity = "null"` was drafted, and its `not_null` rejected them).
            TargetKind::Appwrite if col.not_null => {
                decide.push("the sample holds infinity / -infinity, which a datetime column cannot hold, and the column is NOT NULL (no null in its place): such rows are rejected (infinity = \"reject\", the default); to keep them, read the column through a `query` source as text.".into());
            }
            TargetKind::Appwrite => {
                options.push("infinity = \"null\"".into());
                decide.push("the sample holds infinity / -infinity, which a datetime column cannot hold: written as null (infinity = \"null\"), which loses which infinity it was; \"reject\" (the default) rejects the row; to keep it, read the column through a `query` source as text.".into());
            }
        }
    }
    if p.long_numeric && ty == "numeric" {
        options.push("type = \"string\"".into());
        decide.push("the sample holds numbers of more than 34 significant digits (more than a Decimal128 holds): written as their exact text (type = \"string\"); without it such rows are rejected (decimal_precision).".into());
    }
    if p.nonfinite_float && target == TargetKind::Appwrite && matches!(ty, "float4" | "float8") {
        options.push("type = \"string\"".into());
        decide.push("the sample holds NaN or an infinity, which Appwrite's JSON cannot carry in a number: written as text (type = \"string\"); without it such rows are rejected (appwrite_unrepresentable).".into());
    }
    // An Appwrite text column is 1,000,000 characters unless a `max_length` says more.
    let long_text = match p.max_chars {
        Some(n)
            if target == TargetKind::Appwrite
                && is_text(ty)
                && col.max_length.is_none()
                && n > 1_000_000 =>
        {
            let size = (n.saturating_mul(2)).min(crate::mapping::spec::MAX_COLUMN_SIZE);
            decide.push(format!("the sample holds text of {n} characters, more than an Appwrite text column's default 1,000,000: the column is made {size} characters (max_length = {size}, twice the longest seen); a longer row is rejected (max_length)."));
            Some(size)
        }
        _ => None,
    };
    // So is a JSON column, whose size only `size` sets (adv26 F5).
    if let Some(n) = p.max_chars
        && target == TargetKind::Appwrite
        && matches!(ty, "json" | "jsonb")
        && n > 1_000_000
    {
        let size = (n.saturating_mul(2)).min(crate::mapping::spec::MAX_COLUMN_SIZE);
        if prefix.is_empty() {
            options.push(format!("size = {size}"));
            decide.push(format!("the sample holds JSON of up to {n} characters as written (each number a double cannot hold written as {{\"$numberDecimal\": …}}), more than an Appwrite column's default 1,000,000: the column is made {size} characters (size = {size}, twice the longest seen); a longer value is rejected (appwrite_string_size)."));
        } else {
            // Embedded, the value is part of the embed's one JSON column (adv29 S1: the
            // `size` drafted here did nothing).
            decide.push(format!("the sample holds JSON of up to {n} characters as written: embedded, it is part of the array's one JSON column, which holds 1,000,000 characters unless the [[embed]] says `size` (e.g. size = {size}, or more for several children); a longer array rejects its parent row (appwrite_string_size)."));
        }
    }
    // An Appwrite array column holds no NULL element; the catalog cannot tell whether the
    // column has any (data-blind), so every array drops them: the draft passes `check` and the
    // run writes every row, and the comment says what that loses and the alternatives.
    // An embedded element's array is inside the JSON text of the embed (the proposal's
    // default), which holds NULLs (adv29 S7: taken as proposed, they were dropped).
    let in_json_embed = !prefix.is_empty();
    let drop_nulls = col.element_type.is_some() && target == TargetKind::Appwrite && !in_json_embed;
    if col.element_type.is_some() && target == TargetKind::Appwrite && in_json_embed {
        decide.push("embedded as JSON text (the default), the array keeps its NULL elements; with appwrite = \"table\" it becomes an array column, which holds none: add transform = [\"drop_nulls\"] then (or such rows are rejected).".into());
    }
    if drop_nulls {
        decide.push("Appwrite array columns hold no NULL element: NULL elements are dropped (transform = [\"drop_nulls\"]; the other elements keep their order, but where the NULLs were and how many is lost). Without the transform such rows are rejected instead (appwrite_unrepresentable; `cutover check` counts them); to keep the array whole, read it through a `query` source as array_to_json(column)::text (a JSON text column). Arrays of two or more dimensions are rejected either way.".into());
    }
    for d in &decide {
        comment(out, note, &format!("decide: {d}"));
    }

    let mut rules: Vec<String> = Vec::new();
    if col.not_null && matches!(ty, "json" | "jsonb") && col.element_type.is_none() {
        // A JSON `null` is a value of a NOT NULL column, written as null: `required` would
        // refuse it.
        comment(
            out,
            note,
            "NOT NULL, but a JSON null is a value: no `required` rule (it would refuse it).",
        );
    } else if col.not_null {
        // Not `required`, which refuses blank text and empty arrays too.
        rules.push("not_null = true".into());
    }
    match col.max_length {
        // On an array, `max_length` counts its elements: varchar(n)[] limits each element.
        Some(n) if col.element_type.is_some() => comment(
            out,
            note,
            &format!(
                "each element is at most {n} characters (varchar({n})[]): not a rule here (`max_length` on an array counts its elements)."
            ),
        ),
        Some(n) => rules.push(format!("max_length = {n}")),
        None => {
            if let Some(size) = long_text {
                rules.push(format!("max_length = {size}"));
            }
        }
    }
    let mut range = Range::default();
    for check in t
        .checks
        .iter()
        .filter(|c| c.columns.len() == 1 && c.columns[0] == col.name)
    {
        match parse_check(&check.definition, &col.name, ty) {
            Some(r) if range.merge(&r) => {}
            _ => comment(
                out,
                note,
                &format!(
                    "check {} is not a rule here: {}",
                    check.name, check.definition
                ),
            ),
        }
    }
    if let (Some(lo), Some(hi)) = (range.min, range.max)
        && lo > hi
    {
        comment(
            out,
            note,
            &format!(
                "the checks ask for a value at least {} and at most {}: only NULL passes them in the source; not drafted as rules.",
                number(lo),
                number(hi)
            ),
        );
        range.min = None;
        range.max = None;
    }
    if let Some(m) = range.min {
        rules.push(format!("min = {}", number(m)));
    }
    if let Some(m) = range.max {
        rules.push(format!("max = {}", number(m)));
    }
    if let Some(list) = &range.one_of {
        rules.push(format!("one_of = [{}]", list.join(", ")));
    }

    out.push_str(prefix);
    out.push_str(header);
    out.push('\n');
    let mut line = |s: String| {
        out.push_str(prefix);
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("path = {}", q(path)));
    line(format!("column = {}", q(&col.name)));
    if let Some(Ok(entity)) = reference {
        line(format!("reference = {}", q(entity)));
    }
    if drop_nulls {
        line("transform = [\"drop_nulls\"]".to_string());
    }
    for o in options {
        line(o);
    }
    if !rules.is_empty() {
        line(format!("validate = {{ {} }}", rules.join(", ")));
    }
}

/// A number as TOML: an integer when it is one.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:?}")
    }
}

/// What a check constraint says of one column, as rules.
#[derive(Debug, Default, Clone, PartialEq)]
struct Range {
    min: Option<f64>,
    max: Option<f64>,
    /// TOML values.
    one_of: Option<Vec<String>>,
}

impl Range {
    /// Adds another constraint's bounds; false when they cannot combine (two lists).
    fn merge(&mut self, o: &Range) -> bool {
        if self.one_of.is_some() && o.one_of.is_some() {
            return false;
        }
        if let Some(m) = o.min {
            self.min = Some(self.min.map_or(m, |x| x.max(m)));
        }
        if let Some(m) = o.max {
            self.max = Some(self.max.map_or(m, |x| x.min(m)));
        }
        if o.one_of.is_some() {
            self.one_of = o.one_of.clone();
        }
        true
    }
}

fn is_integer(ty: &str) -> bool {
    matches!(ty, "int2" | "int4" | "int8")
}

fn is_number(ty: &str) -> bool {
    is_integer(ty) || matches!(ty, "numeric" | "float4" | "float8")
}

/// Strips one pair of parentheses around the whole text, if they enclose it.
fn strip_parens(s: &str) -> &str {
    let s = s.trim();
    if !(s.starts_with('(') && s.ends_with(')')) {
        return s;
    }
    let mut depth = 0i32;
    let mut in_quote = false;
    for (i, ch) in s.char_indices() {
        match ch {
            '\'' => in_quote = !in_quote,
            '(' if !in_quote => depth += 1,
            ')' if !in_quote => {
                depth -= 1;
                if depth == 0 && i != s.len() - 1 {
                    return s;
                }
            }
            _ => {}
        }
    }
    &s[1..s.len() - 1]
}

fn strip_all_parens(mut s: &str) -> &str {
    loop {
        let t = strip_parens(s);
        if t == s {
            return s;
        }
        s = t;
    }
}

/// Splits on a separator outside parentheses, brackets and quotes.
fn split_top<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut in_quote = false;
    let mut start = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => in_quote = !in_quote,
            b'(' | b'[' if !in_quote => depth += 1,
            b')' | b']' if !in_quote => depth -= 1,
            _ => {}
        }
        if !in_quote && depth == 0 && s[i..].starts_with(sep) {
            parts.push(&s[start..i]);
            i += sep.len();
            start = i;
            continue;
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts
}

/// Drops `::type` casts (and the parentheses they leave) from a literal or column reference.
fn uncast(s: &str) -> &str {
    let mut s = strip_all_parens(s);
    loop {
        // A cast at the end: `'x'::text`, `(1)::numeric`, `(ARRAY[…])::text[]`.
        let Some(i) = s.rfind("::") else { return s };
        let ty = &s[i + 2..];
        let ty = ty.strip_suffix("[]").unwrap_or(ty);
        if ty.is_empty()
            || !ty
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ' ')
        {
            return s;
        }
        s = strip_all_parens(&s[..i]);
    }
}

/// A literal as (number, TOML text): `'x'` → a string, `10` / `'-180'` → a number.
fn literal(s: &str, numeric: bool) -> Option<(Option<f64>, String)> {
    let s = uncast(s);
    if let Some(inner) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        let text = inner.replace("''", "'");
        if numeric {
            let n: f64 = text.trim().parse().ok()?;
            return Some((Some(n), number(n)));
        }
        return Some((None, q(&text)));
    }
    let n: f64 = s.parse().ok()?;
    if !n.is_finite() {
        return None;
    }
    Some((Some(n), number(n)))
}

fn is_column(s: &str, col: &str) -> bool {
    let s = uncast(s);
    s == col || s == format!("\"{}\"", col.replace('"', "\"\""))
}

/// The rules a check constraint makes of column `col` (of base type `ty`), if all of it is
/// ranges (`>=`, `<=`, and `>`, `<` on integers) and lists (`IN`, `= ANY (ARRAY[…])`).
fn parse_check(def: &str, col: &str, ty: &str) -> Option<Range> {
    // A constraint NOT VALID was never checked against the rows already there: as a rule it
    // would reject those (adv26 F2).
    if def.trim().ends_with("NOT VALID") {
        return None;
    }
    let body = def.trim();
    let body = body.strip_prefix("CHECK")?.trim();
    let body = strip_all_parens(body);
    let mut range = Range::default();
    for part in split_top(body, " AND ") {
        let part = strip_all_parens(part);
        if let [lhs, rhs] = split_top(part, " = ANY ").as_slice() {
            if !is_column(lhs, col) {
                return None;
            }
            // one_of compares values as the document holds them: text, and 32-bit integers
            // (a TOML integer is read as an int32 when it fits). Not char(n): its values keep
            // the padding the literals lack.
            if !(is_text(ty) || matches!(ty, "int2" | "int4")) || ty == "bpchar" {
                return None;
            }
            let list = uncast(rhs);
            let items = list.strip_prefix("ARRAY[")?.strip_suffix(']')?;
            let mut values = Vec::new();
            for item in split_top(items, ", ") {
                let (_, v) = literal(item, !is_text(ty))?;
                values.push(v);
            }
            range
                .merge(&Range {
                    one_of: Some(values),
                    ..Range::default()
                })
                .then_some(())?;
            continue;
        }
        let ops = [" >= ", " <= ", " > ", " < "];
        let (op, lhs, rhs) = ops.iter().find_map(|op| {
            let parts = split_top(part, op);
            (parts.len() == 2).then(|| (op.trim(), parts[0], parts[1]))
        })?;
        if !is_number(ty) {
            return None;
        }
        // `col OP n` or `n OP col`.
        let (op, value) = if is_column(lhs, col) {
            (op, rhs)
        } else if is_column(rhs, col) {
            (
                match op {
                    ">=" => "<=",
                    "<=" => ">=",
                    ">" => "<",
                    _ => ">",
                },
                lhs,
            )
        } else {
            return None;
        };
        let (n, _) = literal(value, true)?;
        let n = n?;
        // A rule's bound is a double: past 2^53 it is not the source's number.
        if n.abs() >= 9_007_199_254_740_992.0 {
            return None;
        }
        let strict_ok = is_integer(ty) && n.fract() == 0.0;
        let r = match op {
            ">=" => Range {
                min: Some(n),
                ..Range::default()
            },
            "<=" => Range {
                max: Some(n),
                ..Range::default()
            },
            ">" if strict_ok => Range {
                min: Some(n + 1.0),
                ..Range::default()
            },
            "<" if strict_ok => Range {
                max: Some(n - 1.0),
                ..Range::default()
            },
            _ => return None,
        };
        range.merge(&r);
    }
    Some(range)
}

/// Child tables to propose embedding into `parent`: a child whose only foreign key points at
/// `parent`'s key and that no other table references.
fn embed_candidates<'a>(model: &Model<'a>, parent: &Table) -> Vec<(&'a Table, &'a ForeignKey)> {
    let mut out = Vec::new();
    let Some(parent_key) = model.key(&parent.name) else {
        return out;
    };
    for child in &model.catalog.tables {
        if child.name == parent.name || model.entity(&child.name).is_none() {
            continue;
        }
        let [fk] = child.foreign_keys.as_slice() else {
            continue;
        };
        if model.internal(fk) != Some(parent.name.as_str()) || fk.ref_columns != parent_key {
            continue;
        }
        let referenced = model.catalog.tables.iter().any(|t| {
            t.foreign_keys
                .iter()
                .any(|f| f.ref_schema == model.catalog.main_schema() && f.ref_table == child.name)
        });
        if referenced || is_join_table(model, child).is_some() {
            continue;
        }
        out.push((child, fk));
    }
    out
}

/// A pure join table: exactly two single-column foreign keys to drafted tables' keys, and no
/// other column. Returns its two foreign keys.
fn is_join_table<'a>(model: &Model, t: &'a Table) -> Option<(&'a ForeignKey, &'a ForeignKey)> {
    let [a, b] = t.foreign_keys.as_slice() else {
        return None;
    };
    let all: BTreeSet<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
    let fk_cols: BTreeSet<&str> = a
        .columns
        .iter()
        .chain(&b.columns)
        .map(String::as_str)
        .collect();
    let ok = |fk: &ForeignKey| {
        fk.columns.len() == 1
            && model
                .internal(fk)
                .is_some_and(|r| model.key(r) == Some(fk.ref_columns.as_slice()))
    };
    (all == fk_cols && all.len() == 2 && ok(a) && ok(b) && a.ref_table != b.ref_table)
        .then_some((a, b))
}

/// Join tables to propose as an array of references on `side`: (join table, its foreign key to
/// the other side, its foreign key to `side`). The array goes on the side placed later in the
/// run, so that the other side is migrated before it.
fn join_candidates<'a>(
    model: &Model<'a>,
    side: &Table,
) -> Vec<(&'a Table, &'a ForeignKey, &'a ForeignKey)> {
    let mut out = Vec::new();
    for t in &model.catalog.tables {
        if model.entity(&t.name).is_none() {
            continue;
        }
        let Some((a, b)) = is_join_table(model, t) else {
            continue;
        };
        for (own, other) in [(a, b), (b, a)] {
            if own.ref_table != side.name {
                continue;
            }
            let later = |x: &str| model.position.get(x).copied().unwrap_or(0);
            if later(&own.ref_table) > later(&other.ref_table) {
                out.push((t, other, own));
            }
        }
    }
    out
}

/// MongoDB's largest document.
const MAX_DOCUMENT_BYTES: f64 = 16.0 * 1024.0 * 1024.0;

/// The size an average `parent` document would have with `child` embedded: the parent row's
/// width plus the child's times the children per parent (the planner's row estimates). A width
/// is the average uncompressed length of a row's values over a bounded sample of the table
/// ([`Width::Sampled`], see `source::catalog`), else `pg_stats`' average width (the stored,
/// compressed size: low for compressible text), said which. Field names and BSON framing come
/// on top. Without row estimates (a table never analyzed, or no rows in the parent) it says so.
fn embedded_size_text(parent: &Table, child: &Table) -> String {
    let (Some(pw), Some(cw), Some(c), Some(p)) = (
        parent.avg_row_bytes,
        child.avg_row_bytes,
        child.row_estimate,
        parent.row_estimate,
    ) else {
        return "; document size: no statistics — run ANALYZE".into();
    };
    if p == 0 {
        return format!(
            "; document size: `{}` has no rows to estimate from — run ANALYZE after loading it",
            parent.name
        );
    }
    let children = cw as f64 * c as f64 / p as f64;
    let total = pw as f64 + children;
    let near = if total > MAX_DOCUMENT_BYTES / 2.0 {
        " — near MongoDB's 16 MiB document limit: keep it a collection"
    } else {
        ""
    };
    let basis = match (parent.width, child.width) {
        (Width::Sampled(_), Width::Sampled(_)) => format!(
            "widths of the values uncompressed, averaged over up to {SAMPLE_ROWS} rows of each table"
        ),
        _ => "pg_stats average widths, compressed: low for long text".to_string(),
    };
    format!(
        "; an average `{parent}` document ~{total:.0} bytes (its row ~{pw} + the children ~{children:.0}; {basis}){near}",
        parent = parent.name
    )
}

fn embed_proposal(
    out: &mut String,
    model: &Model,
    parent: &Table,
    child: &Table,
    fk: &ForeignKey,
    paths: &mut BTreeSet<String>,
) {
    let child_entity = model.entity(&child.name).unwrap_or_default();
    let per_parent = match (child.row_estimate, parent.row_estimate) {
        (Some(c), Some(p)) if p > 0 => {
            format!(", ~{:.1} per `{}` row", c as f64 / p as f64, parent.name)
        }
        _ => String::new(),
    };
    let size = embedded_size_text(parent, child);
    comment(
        out,
        "##",
        &format!(
            "Proposal (opt-in): embed `{child}` as an array here. Why: its only foreign key ({fkname}) points at\n`{parent}` and no table references `{child}`. Rows: {est}{per_parent}{size}.\nTo take it: uncomment the lines below starting with `# ` and remove `{child_entity}` from the pipeline\n(otherwise its rows are written twice: embedded here and as their own collection).",
            child = child.name,
            fkname = fk.name,
            parent = parent.name,
            est = estimate_text(child),
        ),
    );
    // A row whose foreign key is NULL belongs to no parent: embedded, it would be in no
    // document (adv23 F23: a quarter of a child table left out, the run "completed").
    let nullable: Vec<&str> = fk
        .columns
        .iter()
        .filter(|c| child.column(c).is_none_or(|c| !c.not_null))
        .map(String::as_str)
        .collect();
    if !nullable.is_empty() {
        comment(
            out,
            "##",
            &format!(
                "Mind: {} may be NULL, and a `{}` row whose foreign key is NULL belongs to no `{}` row: taken, this proposal leaves such rows out of the target (listed in the run's rejects file as orphan_child; `cutover check` counts them). Keep `{child_entity}` as its own entity if they matter.",
                nullable
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                child.name,
                parent.name
            ),
        );
    }
    if model.opts.target == TargetKind::Appwrite {
        comment(
            out,
            "##",
            "decide: into Appwrite the array is one JSON text column of 1,000,000 characters (appwrite = \"json\", the default): a parent whose children take more as JSON is rejected (appwrite_string_size; `cutover check` counts them) unless the [[embed]] says `size = N`; appwrite = \"table\" writes one row per child instead.",
        );
    }
    let path = unique_key(paths, &camel(&child.name), model.opts.target);
    out.push_str("# [[embed]]\n");
    out.push_str(&format!("# path = {}\n", q(&path)));
    let table = model.catalog.relation_of(child);
    out.push_str(&format!("# table = {}\n", q(&table)));
    // One child column per parent key column, in the parent key's order.
    let fk_cols: Vec<String> = fk.columns.clone();
    if fk_cols.len() == 1 {
        out.push_str(&format!("# foreign_key = {}\n", q(&fk_cols[0])));
    } else {
        out.push_str(&format!("# foreign_key = {}\n", q_list(&fk_cols)));
    }
    let order: Vec<String> = model
        .key(&child.name)
        .map(|k| k.to_vec())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !fk_cols.contains(c))
        .collect();
    if !order.is_empty() {
        out.push_str(&format!("# order_by = {}\n", q_list(&order)));
    }
    let mut inner = BTreeSet::new();
    for col in &child.columns {
        if fk_cols.contains(&col.name) {
            continue;
        }
        out.push_str("#\n");
        let path = unique_key(&mut inner, &camel(&col.name), model.opts.target);
        field_text_prefixed(
            out,
            "# ",
            "[[embed.field]]",
            &path,
            child,
            col,
            None,
            model.opts.target,
        );
    }
}

fn join_proposal(
    out: &mut String,
    model: &Model,
    join: &Table,
    own: &ForeignKey,
    other: &ForeignKey,
    paths: &mut BTreeSet<String>,
) {
    let other_entity = model.entity(&other.ref_table).unwrap_or_default();
    let join_entity = model.entity(&join.name).unwrap_or_default();
    comment(
        out,
        "##",
        &format!(
            "Proposal (opt-in): `{join}` is a pure join table ({a} ↔ {b}, {est}): an array of references to\n`{other_entity}` here instead of its own collection. To take it: uncomment the lines below starting\nwith `# ` and remove `{join_entity}` from the pipeline.",
            join = join.name,
            a = own.ref_table,
            b = other.ref_table,
            est = estimate_text(join),
        ),
    );
    let col = &other.columns[0];
    let singular = other
        .ref_table
        .strip_suffix('s')
        .filter(|s| !s.ends_with('s') && !s.is_empty())
        .unwrap_or(&other.ref_table);
    let path = unique_key(paths, &format!("{}Ids", camel(singular)), model.opts.target);
    out.push_str("# [[embed]]\n");
    out.push_str(&format!("# path = {}\n", q(&path)));
    let table = model.catalog.relation_of(join);
    out.push_str(&format!("# table = {}\n", q(&table)));
    out.push_str(&format!("# foreign_key = {}\n", q(&own.columns[0])));
    out.push_str(&format!(
        "# order_by = {}\n",
        q_list(std::slice::from_ref(col))
    ));
    out.push_str("# element = \"value\"\n#\n");
    out.push_str("# [[embed.field]]\n");
    out.push_str(&format!("# path = {}\n", q(&camel(col))));
    out.push_str(&format!("# column = {}\n", q(col)));
    out.push_str(&format!("# reference = {}\n", q(other_entity)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_paths() {
        assert_eq!(camel("address_postal_code"), "addressPostalCode");
        assert_eq!(camel("_id"), "id");
        assert_eq!(camel("Name"), "name");
        assert_eq!(camel("2fa"), "f2fa");
        assert_eq!(camel("__"), "f");
        assert_eq!(camel("a b.c"), "aBC");
        assert_eq!(camel("ALLCAPS"), "allcaps");
        assert_eq!(camel("USER_ID"), "userId");
        assert_eq!(camel("UserID"), "userID");
        assert_eq!(camel("orderNo_X"), "orderNoX");
    }

    #[test]
    fn checks_become_rules() {
        let r = parse_check(
            "CHECK (((dose_number >= 1) AND (dose_number <= 10)))",
            "dose_number",
            "int2",
        )
        .unwrap();
        assert_eq!((r.min, r.max), (Some(1.0), Some(10.0)));
        let r = parse_check(
            "CHECK ((status = ANY (ARRAY['due'::text, 'it''s'::text])))",
            "status",
            "text",
        )
        .unwrap();
        assert_eq!(r.one_of.unwrap(), ["\"due\"", "\"it's\""]);
        let r = parse_check(
            "CHECK (((kind)::text = ANY ((ARRAY['a'::character varying, 'b'::character varying])::text[])))",
            "kind",
            "varchar",
        )
        .unwrap();
        assert_eq!(r.one_of.unwrap(), ["\"a\"", "\"b\""]);
        let r = parse_check("CHECK ((qty > 0))", "qty", "int4").unwrap();
        assert_eq!(r.min, Some(1.0));
        let r = parse_check(
            "CHECK ((lon >= ('-180'::integer)::numeric))",
            "lon",
            "numeric",
        )
        .unwrap();
        assert_eq!(r.min, Some(-180.0));
        // Not rules: a strict bound on a decimal, a function, an OR, a list of bigints.
        assert!(parse_check("CHECK ((price > (0)::numeric))", "price", "numeric").is_none());
        assert!(parse_check("CHECK ((length(code) = 3))", "code", "text").is_none());
        assert!(parse_check("CHECK (((a > 1) OR (a < 0)))", "a", "int4").is_none());
        assert!(parse_check("CHECK ((a = ANY (ARRAY[1, 2])))", "a", "int8").is_none());
        assert!(parse_check("CHECK ((a = ANY (ARRAY[1, 2])))", "a", "int4").is_some());
    }

    fn col(name: &str, ty: &str, not_null: bool) -> Column {
        Column {
            name: name.into(),
            type_sql: ty.into(),
            base_type: ty.into(),
            not_null,
            ..Column::default()
        }
    }

    fn fk(name: &str, col: &str, table: &str, refcol: &str) -> ForeignKey {
        ForeignKey {
            name: name.into(),
            columns: vec![col.into()],
            ref_schema: "public".into(),
            ref_table: table.into(),
            ref_columns: vec![refcol.into()],
        }
    }

    fn table(name: &str, cols: Vec<Column>, fks: Vec<ForeignKey>) -> Table {
        Table {
            name: name.into(),
            primary_key: vec![cols[0].name.clone()],
            columns: cols,
            foreign_keys: fks,
            ..Table::default()
        }
    }

    /// Found by the outside tester of #17: tables whose names camelCase to one collection
    /// aborted scaffold. A table named as the camelCase keeps it, the others take their mapping's
    /// name, whatever order the tables come in; the drafts load together.
    #[test]
    fn tables_camelcasing_to_one_collection_get_their_own() {
        let names = ["order_items", "orderItems", "Order_Items", "plain_one"];
        let collections_of = |order: &[&str]| {
            let catalog = Catalog {
                schema: "public".into(),
                schemas: Vec::new(),
                views: Vec::new(),
                database: "db".into(),
                tables: order
                    .iter()
                    .map(|n| {
                        table(
                            n,
                            vec![col("id", "int4", true), col("v", "text", false)],
                            vec![],
                        )
                    })
                    .collect(),
            };
            let d = draft(
                &catalog,
                &DraftOptions {
                    target: TargetKind::Mongodb,
                    name: "p".into(),
                },
            );
            let dir = std::path::Path::new("mappings");
            let maps: Vec<_> = d
                .mappings
                .iter()
                .map(|(n, text)| super::super::parse(&dir.join(format!("{n}.toml")), text).unwrap())
                .collect();
            let out: BTreeMap<String, String> = maps
                .iter()
                .map(|m| {
                    (
                        m.spec.source.table.clone().unwrap(),
                        m.collection().to_string(),
                    )
                })
                .collect();
            super::super::MappingSet::from_mappings(maps).unwrap();
            (out, d)
        };
        let (got, d) = collections_of(&names);
        let want: BTreeMap<String, String> = [
            ("order_items", "order_items"),
            ("orderItems", "orderItems"),
            ("Order_Items", "Order_Items"),
            ("plain_one", "plainOne"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
        let text = &d
            .mappings
            .iter()
            .find(|(n, _)| n == "order_items")
            .unwrap()
            .1;
        assert!(
            text.contains(
                "# Tables `Order_Items`, `orderItems`, `order_items` all camelCase to `orderItems`"
            ),
            "{text}"
        );
        let reversed: Vec<&str> = names.iter().rev().copied().collect();
        assert_eq!(collections_of(&reversed).0, want);
    }

    /// Two tables referencing each other run in one stage; one reference is kept, the other
    /// written as a plain value; a self-reference is kept.
    #[test]
    fn cycles_share_a_stage_and_drafts_parse() {
        let catalog = Catalog {
            schema: "public".into(),
            schemas: Vec::new(),
            views: Vec::new(),
            database: "db".into(),
            tables: vec![
                table(
                    "a",
                    vec![col("id", "int4", true), col("b_id", "int4", false)],
                    vec![fk("a_b", "b_id", "b", "id")],
                ),
                table(
                    "b",
                    vec![
                        col("id", "int4", true),
                        col("a_id", "int4", false),
                        col("parent_id", "int4", false),
                    ],
                    vec![
                        fk("b_a", "a_id", "a", "id"),
                        fk("b_parent", "parent_id", "b", "id"),
                    ],
                ),
                table(
                    "c",
                    vec![col("id", "int4", true), col("a_id", "int4", true)],
                    vec![fk("c_a", "a_id", "a", "id")],
                ),
                // Only a key: its key column is its field (a mapping needs one).
                table("tags", vec![col("name", "text", true)], vec![]),
            ],
        };
        let d = draft(
            &catalog,
            &DraftOptions {
                target: TargetKind::Mongodb,
                name: "p".into(),
            },
        );
        let pipeline: toml::Value = toml::from_str(&d.pipeline).unwrap();
        let stages = pipeline["stage"].as_array().unwrap();
        let entities = |i: usize| -> Vec<&str> {
            stages[i]["entities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect()
        };
        assert_eq!(stages.len(), 2, "{}", d.pipeline);
        assert_eq!(entities(0), ["a", "b", "tags"]);
        assert_eq!(entities(1), ["c"]);
        assert_eq!(stages[1]["depends_on"].as_array().unwrap().len(), 1);
        let dir = std::path::Path::new("mappings");
        let maps: Vec<_> = d
            .mappings
            .iter()
            .map(|(n, text)| super::super::parse(&dir.join(format!("{n}.toml")), text).unwrap())
            .collect();
        let refs = |name: &str| {
            maps.iter()
                .find(|m| m.name() == name)
                .unwrap()
                .spec
                .fields
                .iter()
                .filter_map(|f| f.reference.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(refs("a"), Vec::<String>::new());
        assert_eq!(refs("b"), ["a", "b"]);
        assert_eq!(refs("c"), ["a"]);
        // c is a child of a only, referenced by none: proposed as an embed of a.
        let a_text = &d.mappings.iter().find(|(n, _)| n == "a").unwrap().1;
        assert!(a_text.contains("# [[embed]]\n# path = \"c\""), "{a_text}");
        super::super::MappingSet::from_mappings(maps).unwrap();
    }
}
