//! `cutover check`, the pre-flight: connectivity and server versions, every mapping against the
//! live source (tables, columns, types, key uniqueness and index), and a type-fidelity scan that
//! runs the mappings over a sample (or all) of the rows and counts every conversion that would
//! lose information or reject a row. Writes nothing anywhere.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bson::doc;
use serde::Serialize;
use sqlx::AssertSqlSafe;

use crate::mapping::spec::Severity;
use crate::pipeline::Pipeline;
use crate::pipeline::expected::{ExpectedRow, ExpectedRows, Readers};
use crate::pipeline::run::{compile_plans, load_known_keys, referenced_entities};
use crate::sink::appwrite::schema::{self, ChildTable, TableSpec};
use crate::sink::mongodb::MongoTarget;
use crate::sink::target::{AppwriteTarget, KeyLost, Target};
use crate::source::postgres::quote_ident;
use crate::source::{SourceSession, Value};
use crate::transform::row::MapContext;

mod ttl;
mod unique;

#[derive(Debug, Default, Serialize)]
pub struct Finding {
    pub entity: String,
    pub path: String,
    pub rule: String,
    /// `blocking`, `reject` (rows the run will reject) or `warning`.
    pub severity: String,
    pub rows: u64,
    pub example_key: String,
    pub example: String,
}

#[derive(Debug, Default, Serialize)]
pub struct EntityCheck {
    pub entity: String,
    pub source: String,
    pub rows: u64,
    pub scanned: u64,
    pub key_unique: Option<bool>,
    pub key_indexed: Option<bool>,
    pub estimated_ms: Option<u64>,
    pub estimate_basis: String,
    /// Scanned rows the run will reject (a row with two reject findings counts once).
    pub rejected_rows: u64,
    /// Per embed (by path), the child rows met by the scan that belong to no parent row: the
    /// run embeds them nowhere and lists each in the rejects file (rule `orphan_child`).
    pub orphan_children: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub source: String,
    pub target: String,
    pub blocking: Vec<String>,
    pub entities: Vec<EntityCheck>,
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// Scanned rows the run will reject, over the entities.
    pub fn rejected_rows(&self) -> u64 {
        self.entities.iter().map(|e| e.rejected_rows).sum()
    }

    pub fn ok(&self) -> bool {
        self.blocking.is_empty()
    }
}

pub async fn source_version(session: &mut SourceSession) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SHOW server_version")
        .fetch_one(session.conn())
        .await
}

pub async fn target_description(target: &MongoTarget) -> Result<String, mongodb::error::Error> {
    let admin = target.client().database("admin");
    let build = admin.run_command(doc! { "buildInfo": 1 }).await?;
    let hello = admin.run_command(doc! { "hello": 1 }).await?;
    let version = build.get_str("version").unwrap_or("?").to_string();
    let set = hello.get_str("setName").ok().map(str::to_string);
    let writable = hello.get_bool("isWritablePrimary").unwrap_or(false);
    Ok(format!(
        "MongoDB {version}, {}, {}, transactions {}",
        match &set {
            Some(s) => format!("replica set {s}"),
            None => "standalone (no replica set)".into(),
        },
        if writable {
            "writable primary"
        } else {
            "NOT writable"
        },
        if set.is_some() {
            "available"
        } else {
            "unavailable"
        }
    ))
}

/// Reaches an Appwrite target: its version (from an error body, which carries it), its health,
/// and whether the API key may read databases.
pub async fn appwrite_description(a: &AppwriteTarget) -> Result<String, String> {
    let c = &a.client;
    let version = c.server_version().await.map_err(|e| match e {
        crate::sink::appwrite::AppwriteError::Transport { .. } => {
            format!(
                "cannot reach {}: {e}",
                crate::redact::redact_url(c.endpoint())
            )
        }
        e if matches!(e.status(), Some(401 | 403)) => format!("the API key was refused: {e}"),
        e => format!("the server's version cannot be read: {e}"),
    })?;
    let health = match c.call(reqwest::Method::GET, "/health", None).await {
        Ok(v) => v["status"].as_str().unwrap_or("?").to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    c.call(reqwest::Method::GET, "/tablesdb", None)
        .await
        .map_err(|e| format!("the API key cannot list databases: {e}"))?;
    Ok(format!(
        "Appwrite {version}, health {health}, API key accepted, database {}",
        a.database
    ))
}

/// What the target's ledger tells the check.
#[derive(Debug, Default)]
pub struct TargetHistory {
    /// The rate (rows per second) each entity last ran at.
    pub rates: BTreeMap<String, f64>,
    /// The entities whose rows the target holds as a completed run left them: references into
    /// one that this check does not scan are judged by the target, as the run judges them.
    pub completed: HashSet<String>,
    /// Each entity's current step (`ledger::current_steps`): where its data is.
    pub current: BTreeMap<String, crate::ledger::StepRecord>,
}

/// What a check scans and which run it judges.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions<'a> {
    /// Rows per entity (`None`: all).
    pub sample: Option<u64>,
    pub files_root: Option<&'a std::path::Path>,
    /// The run judged deletes the records of rows gone from the source before its load
    /// (`check --sync-deletes`, as `migrate --rerun --sync-deletes`): their unique keys are
    /// free then; without it they keep them.
    pub sync_deletes: bool,
    /// The run judged re-runs the selected entities that completed (`check --rerun`): a
    /// reference into one this check scans is judged by the rows the check rejects of it (the
    /// re-run removes their documents), not by the target as it is.
    pub rerun: bool,
}

/// Scans each selected entity.
pub async fn check(
    pipeline: &Pipeline,
    names: &[String],
    source_url: &str,
    targets: &[Target],
    history: &TargetHistory,
    opts: CheckOptions<'_>,
) -> CheckReport {
    let rates = &history.rates;
    let CheckOptions {
        sample,
        files_root,
        sync_deletes,
        rerun,
    } = opts;
    let mut report = CheckReport::default();
    let steps = match pipeline.select(names) {
        Ok(s) => s,
        Err(e) => {
            report.blocking.push(e.to_string());
            return report;
        }
    };
    let mut described = Vec::new();
    for target in targets {
        match target {
            Target::Mongo(t) => match target_description(t).await {
                Ok(d) => {
                    if d.contains("NOT writable") {
                        report
                            .blocking
                            .push(format!("the target is not writable: {d}"));
                    }
                    described.push(d);
                }
                Err(e) => report
                    .blocking
                    .push(format!("target: {}", crate::sink::mongodb::error_text(&e))),
            },
            Target::Appwrite(a) => match appwrite_description(a).await {
                Ok(d) => described.push(d),
                Err(e) => report.blocking.push(format!("target: {e}")),
            },
        }
    }
    report.target = if targets.is_empty() {
        "no target configured".into()
    } else {
        described.join("; ")
    };
    let appwrite = targets.iter().any(|t| matches!(t, Target::Appwrite(_)));
    // The strictest document size limit of the targets (MongoDB's when none is configured).
    let max_document_bytes = if targets.is_empty() {
        Some(crate::sink::mongodb::MAX_DOCUMENT_BYTES)
    } else {
        targets.iter().filter_map(Target::max_document_bytes).min()
    };
    let mut session = match SourceSession::open(source_url).await {
        Ok(s) => s,
        Err(e) => {
            report
                .blocking
                .push(crate::redact::redact_text(&e.to_string()));
            return report;
        }
    };
    report.source = match source_version(&mut session).await {
        Ok(v) => format!("PostgreSQL {v}"),
        Err(e) => format!(
            "PostgreSQL (version unknown: {})",
            crate::source::postgres::error_text(&e)
        ),
    };

    // Compile one by one so that every broken mapping is listed, not only the first. Each runs
    // under a savepoint: a failed lookup must not abort the snapshot for those after it.
    let mut plans = Vec::new();
    for s in &steps {
        savepoint(&mut session, "SAVEPOINT cutover_check").await;
        match compile_plans(pipeline, std::slice::from_ref(s), &mut session).await {
            Ok(mut p) => {
                savepoint(&mut session, "RELEASE SAVEPOINT cutover_check").await;
                plans.append(&mut p)
            }
            Err(e) => {
                savepoint(&mut session, "ROLLBACK TO SAVEPOINT cutover_check").await;
                report.blocking.push(e.to_string())
            }
        }
    }
    let mut ctx = MapContext {
        now_ms: chrono::Utc::now().timestamp_millis(),
        skip_validation: false,
        null_column: targets
            .iter()
            .any(|t| t.kind() == crate::config::TargetKind::Appwrite),
        absent_ids: HashMap::new(),
        known_keys: match load_known_keys(pipeline, &plans, &mut session).await {
            Ok(k) => k,
            Err(e) => {
                report.blocking.push(e.to_string());
                Default::default()
            }
        },
    };

    // The entities a later plan references, and the ids of the rows this check rejects of each
    // (the run leaves them out of the target): a reference to one is `reference_rejected`.
    let referenced: HashSet<String> = plans.iter().flat_map(referenced_entities).collect();
    let mut rejected_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for plan in &plans {
        let m = match pipeline.mappings.get(&plan.entity) {
            Ok(m) => m,
            Err(_) => continue,
        };
        // A referenced entity a completed run left in the target is skipped by the next run
        // (without --rerun), which asks the target — so does the check, even when it scans the
        // entity too (the eighteenth tester's F2: documents deleted since were not counted).
        // A re-run rewrites a scanned entity: what it leaves out is what this check rejects.
        let (asked, scanned): (Vec<String>, Vec<String>) = referenced_entities(plan)
            .into_iter()
            .filter(|e| rejected_ids.contains_key(e) || history.completed.contains(e))
            .partition(|e| {
                history.completed.contains(e) && !(rerun && rejected_ids.contains_key(e))
            });
        ctx.absent_ids = scanned
            .into_iter()
            .map(|e| {
                let ids = rejected_ids[&e].clone();
                (e, Arc::new(ids))
            })
            .collect();
        // A referenced entity this check does not scan but that ran: the target holds its
        // rows as that run left them, and the run asks it which are absent — so does the check
        // (found by the seventeenth tester: `check orders` alone predicted none of them).
        if let Some(target) = targets.first()
            && !asked.is_empty()
        {
            savepoint(&mut session, "SAVEPOINT cutover_check").await;
            match crate::pipeline::run::absent_references(pipeline, asked, target, &mut session)
                .await
            {
                Ok(absent) => {
                    savepoint(&mut session, "RELEASE SAVEPOINT cutover_check").await;
                    ctx.absent_ids.extend(absent);
                }
                Err(e) => {
                    savepoint(&mut session, "ROLLBACK TO SAVEPOINT cutover_check").await;
                    report.blocking.push(format!(
                        "{}: cannot ask the target which referenced rows it holds: {e}",
                        plan.entity
                    ));
                }
            }
        }
        // An entity that references itself (an employee's `reportsTo`) and that the run reads
        // in full judges those references by the rows it leaves out, as the run's own passes do
        // (a chain of `exists` references rejected down to its end).
        let own = referenced_entities(plan).contains(&plan.entity)
            && (rerun || !history.completed.contains(&plan.entity));
        if own {
            // The target judges the rows by the table the run makes (adv43 F11: without it, a
            // JSON column's array holding a null read as an array column refusing it).
            if let Some(t) = targets.first() {
                t.describe(plan);
            }
            savepoint(&mut session, "SAVEPOINT cutover_check").await;
            match crate::pipeline::run::rejected_by_mapping(plan, &session, targets.first(), &ctx)
                .await
            {
                Ok(ids) => {
                    savepoint(&mut session, "RELEASE SAVEPOINT cutover_check").await;
                    ctx.absent_ids.insert(plan.entity.clone(), Arc::new(ids));
                }
                Err(e) => {
                    savepoint(&mut session, "ROLLBACK TO SAVEPOINT cutover_check").await;
                    report.blocking.push(format!(
                        "{}: cannot judge its references to itself: {e}",
                        plan.entity
                    ));
                }
            }
        }
        let collect_rejected = referenced.contains(&plan.entity);
        if collect_rejected {
            // Scanned: a later plan judges its references by this scan's rejects (none yet).
            rejected_ids.entry(plan.entity.clone()).or_default();
        }
        // Appwrite users: the emails and phones the project's users hold already.
        let mut claims: Option<UserClaims> = None;
        // The destination as it exists: a view or a non-binary collation blocks (migrate
        // refuses it too); a validator may refuse rows, which only the run can tell.
        for t in targets.iter() {
            if let Some(why) = t.unfit_columns(plan)
                && !report.blocking.contains(&why)
            {
                report.blocking.push(why);
            }
            // Where the ledger says another entity's data is (adv45 F6): migrate refuses it.
            for clash in crate::pipeline::run::destination_clashes(plan, t, &history.current) {
                report.blocking.push(format!(
                    "{clash}: {} (migrate refuses it unless --accept-changed)",
                    crate::pipeline::run::SHARED_HINT
                ));
            }
            if let Some(why) = t.unfit_name(
                &plan.entity,
                &plan.collection,
                plan.appwrite_users.is_some(),
            ) && !report.blocking.contains(&why)
            {
                report.blocking.push(why);
            }
            // On Appwrite the ledger's tables share the database (its prefix is fixed).
            if let Target::Appwrite(_) = t
                && let Some(why) = crate::pipeline::ledger_name_problem(
                    &plan.entity,
                    m,
                    crate::ledger::Ledger::APPWRITE_PREFIX,
                    true,
                )
                && !report.blocking.contains(&why)
            {
                report.blocking.push(why);
            }
            // The table's columns as they exist: one whose type the mapping changed since it
            // was made is kept as it is by the run (Appwrite changes no column's type in place),
            // and the server then refuses the rows with a value there.
            if let Target::Appwrite(a) = t
                && plan.appwrite_users.is_none()
                && plan.file.is_none()
            {
                let spec = schema::table_spec(plan);
                let children = schema::child_tables(plan);
                for table in std::iter::once(&spec).chain(children.iter().map(|c| &c.table)) {
                    let live = match a.client.columns(&a.database, &table.id).await {
                        Ok(live) => live,
                        Err(e) if e.is_missing() => continue,
                        Err(e) => {
                            report.blocking.push(format!(
                                "{}: cannot list the columns of Appwrite table {}: {e}",
                                plan.entity, table.id
                            ));
                            continue;
                        }
                    };
                    for c in &table.columns {
                        if let Some(have) = live.iter().find(|l| l["key"].as_str() == Some(&c.key))
                            && let Some(schema::ColumnChange::Kept(why)) =
                                schema::column_change(have, c)
                        {
                            report.blocking.push(format!(
                                "{}: Appwrite column {}.{} exists and {why}; the server would refuse every row with a value there",
                                plan.entity, table.id, c.key
                            ));
                        }
                    }
                }
            }
            if let Target::Appwrite(a) = t
                && let Some(spec) = &plan.appwrite_users
            {
                report.findings.push(Finding {
                    entity: plan.entity.clone(),
                    path: String::new(),
                    rule: "appwrite_users_shared".into(),
                    severity: "warning".into(),
                    rows: 0,
                    example_key: String::new(),
                    example: format!(
                        "Appwrite users belong to the project, not to database `{}`: a run into another database of the same project (a rehearsal) writes these same users",
                        a.database
                    ),
                });
                match UserClaims::load(a, spec, &plan.entity).await {
                    Ok(c) => claims = Some(c),
                    Err(e) => report.blocking.push(format!(
                        "{}: cannot list the project's users: {e}",
                        plan.entity
                    )),
                }
            }
            let Target::Mongo(mt) = t else { continue };
            let shape = match mt.destination(&plan.collection).await {
                Ok(shape) => shape,
                Err(e) => {
                    report.blocking.push(format!("{}: {e}", plan.entity));
                    continue;
                }
            };
            if let Some(why) = shape.unfit {
                report.blocking.push(format!("{}: {why}", plan.entity));
            }
            if shape.validator {
                report.findings.push(Finding {
                    entity: plan.entity.clone(),
                    path: String::new(),
                    rule: "target_validator".into(),
                    severity: "warning".into(),
                    rows: 0,
                    example_key: String::new(),
                    example: format!(
                        "`{}` has a validator in the target: documents it refuses are rejected when written (check cannot tell which)",
                        plan.collection
                    ),
                });
            }
        }
        if plan.file.is_some() && files_root.is_none() {
            report.blocking.push(format!(
                "{}: its mapping reads files ([file]): give their root with --files-root, CUTOVER_FILES_ROOT or [files] root in cutover.toml",
                plan.entity
            ));
        }
        if plan.file.is_some()
            && let Some(why) = files_root.and_then(crate::sink::gridfs::root_problem)
        {
            report.blocking.push(format!("{}: {why}", plan.entity));
        }
        savepoint(&mut session, "SAVEPOINT cutover_check").await;
        let rows = match session.count(&plan.relation).await {
            Ok(n) => n,
            Err(e) => {
                savepoint(&mut session, "ROLLBACK TO SAVEPOINT cutover_check").await;
                report.blocking.push(format!(
                    "{}: cannot read the source: {}",
                    plan.entity,
                    crate::redact::redact_text(&e.to_string())
                ));
                continue;
            }
        };
        let mut ec = EntityCheck {
            entity: plan.entity.clone(),
            source: plan.relation.clone(),
            rows,
            ..Default::default()
        };
        // Key: unique? indexed?
        let keys = m
            .spec
            .source
            .key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        // Rows with a NULL key part are no duplicates: the run rejects them (rule `id`), and
        // this check counts them so with the other rejects.
        let not_null = m
            .spec
            .source
            .key
            .iter()
            .map(|k| format!("{} IS NOT NULL", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let dup_sql = format!(
            "SELECT count(*) FROM (SELECT 1 FROM {} WHERE {not_null} GROUP BY {keys} HAVING count(*) > 1) d",
            plan.relation
        );
        match sqlx::query_scalar::<_, i64>(AssertSqlSafe(dup_sql))
            .fetch_one(session.conn())
            .await
        {
            Ok(0) => ec.key_unique = Some(true),
            Ok(n) => {
                ec.key_unique = Some(false);
                report.blocking.push(format!(
                    "{}: the key ({}) is not unique: {n} values occur more than once",
                    plan.entity,
                    m.spec.source.key.join(", ")
                ));
            }
            Err(e) => {
                savepoint(&mut session, "ROLLBACK TO SAVEPOINT cutover_check").await;
                savepoint(&mut session, "SAVEPOINT cutover_check").await;
                report
                    .blocking
                    .push(format!("{}: cannot check the key: {e}", plan.entity))
            }
        }
        if let Some(table) = &m.spec.source.table {
            let idx_sql = "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass($1) AND a.attname = $2)";
            let indexed: Result<bool, _> = sqlx::query_scalar(idx_sql)
                .bind(crate::source::postgres::quote_relation(table))
                .bind(m.spec.source.key[0].clone())
                .fetch_one(session.conn())
                .await;
            ec.key_indexed = indexed.ok();
            if ec.key_indexed == Some(false) {
                report.findings.push(Finding {
                    entity: plan.entity.clone(),
                    path: m.spec.source.key.join(", "),
                    rule: "key_not_indexed".into(),
                    severity: "warning".into(),
                    rows,
                    example: format!(
                        "no index starts with the key: the key-ordered scan sorts all {rows} rows"
                    ),
                    ..Default::default()
                });
            }
        }

        // Type fidelity: the rows as the run reads and maps them, children embedded.
        let mut tally: BTreeMap<(String, String, String), Finding> = BTreeMap::new();
        let started = std::time::Instant::now();
        let mut scanned = 0u64;
        let mut bad_ids = 0u64;
        let mut bad_id_example = String::new();
        let table = (appwrite && plan.appwrite_users.is_none()).then(|| schema::table_spec(plan));
        // As the run decides it: the rows whose hashed row id loses the key are counted.
        let key_lost = targets.iter().find_map(|t| t.key_lost(plan));
        let children = match &table {
            Some(_) => schema::child_tables(plan),
            None => Vec::new(),
        };
        // A file stage into Appwrite: the target that fills each file's permissions from its
        // row (as the run does, from the row the document becomes).
        let storage = targets.iter().find_map(|t| match t {
            Target::Appwrite(a) if plan.file.is_some() => Some(a),
            _ => None,
        });
        if let Some(a) = storage {
            a.describe(plan);
        }
        // Its bucket as the run will meet it (the existing bucket's settings, else the
        // mapping's): the files Storage would refuse are the run's `file_upload` rejects, as
        // the run refuses them before sending a byte.
        let mut limits_known = false;
        if let (Some(a), Some(f), Some(root)) = (storage, m.spec.file.as_ref(), files_root) {
            a.register_storage(f, root);
            match a.bucket_limits(&plan.collection).await {
                Ok(limits) => {
                    limits_known = true;
                    if let Some(said) = limits.and_then(|l| l.differences()) {
                        report.findings.push(Finding {
                            entity: plan.entity.clone(),
                            path: String::new(),
                            rule: "bucket_settings".into(),
                            severity: "warning".into(),
                            rows: 0,
                            example_key: String::new(),
                            example: said,
                        });
                    }
                }
                Err(e) => report.blocking.push(format!(
                    "{}: cannot read the Storage bucket `{}` in the target: {}",
                    plan.entity,
                    f.bucket,
                    crate::redact::redact_text(&e.to_string())
                )),
            }
        }
        // A scan that fails is a blocking finding: "no data" would pass a check that read nothing.
        match Readers::open(&session, plan).await {
            Err(e) => report.blocking.push(format!(
                "{}: cannot scan the source: {}",
                plan.entity,
                crate::redact::redact_text(&e.to_string())
            )),
            Ok(mut readers) => {
                let mut rows = ExpectedRows::new(&mut readers, plan, max_document_bytes);
                // MongoDB builds the unique indexes after the load: keys the data repeats fail
                // the run at its end (Appwrite's own unique semantics are not modelled here).
                let mut uniques = if targets.iter().any(|t| matches!(t, Target::Mongo(_))) {
                    unique::UniqueIndex::of(&plan.indexes)
                } else {
                    Vec::new()
                };
                // On a re-run the collection has them already: a row repeating a key is
                // refused by mongod (the first in key order keeps it) and rejected.
                if plan.file.is_none()
                    && let Some(Target::Mongo(m)) =
                        targets.iter().find(|t| matches!(t, Target::Mongo(_)))
                    && !uniques.is_empty()
                {
                    match m.note_unique_indexes(&plan.collection, &plan.indexes).await {
                        Ok(there) => {
                            for u in &mut uniques {
                                u.exists = there.iter().any(|t| t.pattern == *u.pattern());
                            }
                        }
                        Err(e) => report.blocking.push(format!(
                            "{}: cannot read the indexes of {} in the target: {}",
                            plan.entity,
                            plan.collection,
                            crate::redact::redact_text(&e.to_string())
                        )),
                    }
                }
                // mongod's TTL monitor deletes a document already past its expiry within a
                // minute of its write (the eleventh tester's 8: a completed run, then missing).
                let mut ttls = if targets.iter().any(|t| matches!(t, Target::Mongo(_))) {
                    ttl::TtlIndex::of(&plan.indexes)
                } else {
                    Vec::new()
                };
                // Appwrite makes the unique indexes before the load: it refuses each row that
                // repeats a key a written row holds, and the run rejects it.
                let mut table_uniques = match &table {
                    Some(spec) if appwrite => {
                        crate::sink::appwrite::unique::AppwriteUnique::of(spec)
                    }
                    _ => Vec::new(),
                };
                // Unique indexes Appwrite cannot hold are not made there: said, since
                // Appwrite then keeps nothing unique that the mapping asks it to.
                if appwrite {
                    let made: Vec<Vec<String>> = table
                        .iter()
                        .flat_map(|t| t.indexes.iter())
                        .filter(|i| i.kind == "unique")
                        .map(|i| i.columns.clone())
                        .collect();
                    for ix in plan.indexes.iter().filter(|i| i.unique && i.kind.is_none()) {
                        let paths: Vec<String> =
                            ix.key_pairs().into_iter().map(|(p, _)| p).collect();
                        let why = if plan.appwrite_users.is_some() {
                            "the entity's documents are Appwrite users, which have no indexes (Appwrite keeps only emails and phones unique)"
                        } else if ix.partial.is_some() {
                            "a partial unique index has no Appwrite counterpart (Appwrite indexes every row)"
                        } else if made.contains(&paths) {
                            continue;
                        } else {
                            "its paths are not top-level columns of the table (a path inside a JSON column, an embedded document's field in a child table, or no field at all)"
                        };
                        report.findings.push(Finding {
                            entity: plan.entity.clone(),
                            path: paths.join(", "),
                            rule: "appwrite_index_not_made".into(),
                            severity: "warning".into(),
                            example: format!(
                                "unique index over {}: not made in Appwrite, so Appwrite does not keep these keys unique: {why}",
                                paths.join(", ")
                            ),
                            ..Default::default()
                        });
                    }
                }
                // A re-run leaves the records of rows gone from the source as they are (unless
                // with --sync-deletes): their keys are held before the first row, as the run
                // meets them — a row taking one is refused whatever its place (the outside
                // tester's F8).
                if !sync_deletes {
                    let mongo_fields: Vec<String> = uniques
                        .iter()
                        .filter(|u| u.exists && u.unchecked.is_none())
                        .flat_map(|u| u.fields())
                        .collect();
                    let aw_columns: Vec<String> = table_uniques
                        .iter()
                        .flat_map(|u| u.columns().to_vec())
                        .collect();
                    let asked = targets.iter().find_map(|t| match t {
                        Target::Mongo(_) if !mongo_fields.is_empty() && plan.file.is_none() => {
                            Some((t, &mongo_fields))
                        }
                        Target::Appwrite(_) if !aw_columns.is_empty() => Some((t, &aw_columns)),
                        _ => None,
                    });
                    if let Some((t, fields)) = asked {
                        let mut fields = fields.clone();
                        fields.sort();
                        fields.dedup();
                        let kept = crate::pipeline::kept::kept_records(
                            plan,
                            &session,
                            t,
                            None,
                            false,
                            &fields,
                            |k| match &k.fields {
                                crate::pipeline::kept::KeptFields::Document(d) => {
                                    for u in uniques.iter_mut().filter(|u| u.exists) {
                                        u.keep(&k.said, d);
                                    }
                                }
                                crate::pipeline::kept::KeptFields::Row(r) => {
                                    for u in &mut table_uniques {
                                        u.keep(&k.said, r);
                                    }
                                }
                            },
                        )
                        .await;
                        if let Err(e) = kept {
                            report.blocking.push(format!(
                                "{}: cannot read the records of {} in the target (those of rows gone from the source keep their unique keys): {}",
                                plan.entity,
                                plan.collection,
                                crate::redact::redact_text(&e.to_string())
                            ));
                        }
                    }
                }
                // Per embed: the orphans and the key of the first.
                let mut orphans: Vec<(u64, String)> = vec![(0, String::new()); plan.embeds.len()];
                while sample.is_none_or(|n| scanned < n) {
                    let row = match rows.next(&ctx).await {
                        Ok(Some(row)) => row,
                        Ok(None) => break,
                        Err(e) => {
                            report.blocking.push(format!(
                                "{}: the scan failed after {scanned} rows: {}",
                                plan.entity,
                                crate::redact::redact_text(&e.to_string())
                            ));
                            break;
                        }
                    };
                    if let ExpectedRow::Orphan(o) = row {
                        let (n, example) = &mut orphans[o.embed];
                        *n += 1;
                        if example.is_empty() {
                            *example = o.key;
                        }
                        continue;
                    }
                    scanned += 1;
                    // A file stage: the file's permissions the row fills (Appwrite), then the
                    // file each row names, checked as the upload will (in the run's order).
                    let file_problem = match (&plan.file, &row) {
                        (
                            Some(f),
                            ExpectedRow::Document {
                                row: values,
                                mapped,
                                ..
                            },
                        ) => {
                            let permission = match (storage, f.permissions.as_deref()) {
                                (Some(a), Some(templates)) => mapped
                                    .doc
                                    .as_ref()
                                    .and_then(|d| d.to_document().ok())
                                    .and_then(|d| {
                                        a.file_permissions(&plan.collection, Some(templates), &d)
                                            .err()
                                    })
                                    .map(|why| {
                                        (crate::sink::appwrite::storage::RULE_PERMISSION, why)
                                    }),
                                _ => None,
                            };
                            let on_disk = match (permission.is_none(), files_root) {
                                (true, Some(root)) => {
                                    let file = crate::sink::gridfs::FileRef::of_row(f, values);
                                    match storage.filter(|_| limits_known) {
                                        // Appwrite: then the bucket's extensions and size
                                        // (read above: no request here, so no error).
                                        Some(a) => a
                                            .file_refusal(&plan.collection, &file)
                                            .await
                                            .unwrap_or(None),
                                        None => {
                                            crate::sink::gridfs::inspect(root, &file, f.algorithm)
                                                .await
                                                .err()
                                        }
                                    }
                                }
                                _ => None,
                            };
                            permission
                                .or(on_disk)
                                .map(|(rule, message)| (mapped.key.clone(), rule, message))
                        }
                        _ => None,
                    };
                    // The user this row becomes (Appwrite users): it claims its email and
                    // phone only when nothing else rejects the row (a rejected row never
                    // reaches the project, so it takes nothing from a later row).
                    let user = match (&row, claims.is_some()) {
                        (ExpectedRow::Document { mapped, .. }, true) => mapped
                            .doc
                            .as_ref()
                            .and_then(|d| d.to_document().ok())
                            .map(|d| (mapped.key.clone(), d)),
                        _ => None,
                    };
                    // A row that could not be decoded has its key among the columns read
                    // before the one that failed, when the key came first.
                    let values = match &row {
                        ExpectedRow::Document { row, .. } => Some(row),
                        ExpectedRow::Rejected { row, decoded, .. } => {
                            Some(row.as_ref().unwrap_or(decoded))
                        }
                        ExpectedRow::Orphan(_) => None,
                    };
                    let row_id = values.filter(|_| collect_rejected).and_then(|values| {
                        let key: Option<Vec<&Value>> =
                            plan.key.iter().map(|&i| values.get(i)).collect();
                        plan.id.id_for(&key?).ok()
                    });
                    let indexed = match &row {
                        ExpectedRow::Document { mapped, .. }
                            if !uniques.is_empty()
                                || !ttls.is_empty()
                                || !table_uniques.is_empty() =>
                        {
                            mapped
                                .doc
                                .as_ref()
                                .and_then(|d| d.to_document().ok())
                                .map(|d| (mapped.key.clone(), d))
                        }
                        _ => None,
                    };
                    let rejected = scan_row(
                        plan,
                        row,
                        &mut tally,
                        (key_lost.as_ref(), &mut bad_ids, &mut bad_id_example),
                        table.as_ref(),
                        &children,
                    );
                    let claimed = match (user, claims.as_mut()) {
                        (Some((key, d)), Some(c)) if !rejected && file_problem.is_none() => {
                            // Prefs Appwrite would give back otherwise refuse the user before
                            // it claims anything.
                            crate::sink::target::users_refusal(&d)
                                .or_else(|| c.claim(&d))
                                .map(|why| (key, why))
                        }
                        _ => None,
                    };
                    let refused = claimed.is_some();
                    if let Some((key, (rule, message))) = claimed {
                        count_reject(&mut tally, &plan.entity, rule, &key, || message);
                    }
                    let file_refused = file_problem.is_some();
                    if let Some((key, rule, message)) = file_problem {
                        count_reject(&mut tally, &plan.entity, rule, &key, || message);
                    }
                    let mut unique_refused = false;
                    if let (Some((key, doc)), Some(spec)) = (&indexed, &table)
                        && !table_uniques.is_empty()
                        && !(rejected || refused || file_refused)
                    {
                        let as_row = schema::to_row(doc, spec);
                        match table_uniques
                            .iter()
                            .find_map(|u| u.repeats(&as_row).map(|r| (u.name.clone(), r)))
                        {
                            Some((index, (first, shown))) => {
                                unique_refused = true;
                                count_reject(
                                    &mut tally,
                                    &plan.entity,
                                    crate::sink::target::RULE_UNIQUE_INDEX,
                                    key,
                                    || {
                                        format!(
                                            "Appwrite's unique index `{index}` of table {} refuses the row: {first} holds its key [{shown}] ({}text compares without case, accents or trailing spaces; NULLs repeat freely)",
                                            spec.id,
                                            if first.is_row() {
                                                "the row written first keeps it; "
                                            } else {
                                                ""
                                            }
                                        )
                                    },
                                );
                            }
                            None => {
                                for u in &mut table_uniques {
                                    u.hold(key, &as_row);
                                }
                            }
                        }
                    }
                    // A unique index the MongoDB collection has already (a re-run).
                    if let Some((key, doc)) = &indexed
                        && !(rejected || unique_refused || refused || file_refused)
                        && let Some((index, (first, shown))) = uniques
                            .iter()
                            .filter(|u| u.exists)
                            .find_map(|u| u.repeats(doc).map(|r| (u.name.clone(), r)))
                    {
                        unique_refused = true;
                        count_reject(
                            &mut tally,
                            &plan.entity,
                            crate::sink::target::RULE_DUPLICATE_KEY,
                            key,
                            || {
                                format!(
                                    "MongoDB's unique index `{index}` of {} (there from an earlier run) refuses the document: {first} holds its key [{shown}]{}",
                                    plan.collection,
                                    if first.is_row() {
                                        " (the first in key order keeps it)"
                                    } else {
                                        ""
                                    }
                                )
                            },
                        );
                    }
                    let rejected = rejected || unique_refused;
                    ec.rejected_rows += u64::from(rejected || refused || file_refused);
                    if let Some((key, doc)) = indexed
                        && !(rejected || refused || file_refused)
                    {
                        for u in &mut uniques {
                            u.add(&key, &doc);
                        }
                        for t in &mut ttls {
                            t.add(&key, &doc, ctx.now_ms);
                        }
                    }
                    if let Some(id) = row_id
                        && (rejected || refused || file_refused)
                    {
                        rejected_ids
                            .entry(plan.entity.clone())
                            .or_default()
                            .insert(crate::mapping::plan::id_text(&id));
                    }
                }
                for t in ttls {
                    if let Some(why) = t.unchecked {
                        report.findings.push(Finding {
                            entity: plan.entity.clone(),
                            path: t.path.clone(),
                            rule: "ttl_expired_unchecked".into(),
                            severity: "warning".into(),
                            example: format!(
                                "TTL index `{}`: not checked against the data ({why}); documents already past their expiry are deleted by mongod within a minute of the run",
                                t.name
                            ),
                            ..Default::default()
                        });
                    } else if t.expired > 0 {
                        report.findings.push(Finding {
                            entity: plan.entity.clone(),
                            path: t.path.clone(),
                            rule: "ttl_expired".into(),
                            severity: "warning".into(),
                            rows: t.expired,
                            example_key: t.example.unwrap_or_default(),
                            example: format!(
                                "TTL index `{}` (ttl_seconds = {}): these documents are past their expiry when written; mongod deletes them within about a minute, and verify then finds them missing",
                                t.name, t.ttl_seconds
                            ),
                        });
                    }
                }
                for u in uniques {
                    if let Some(why) = u.unchecked {
                        report.findings.push(Finding {
                            entity: plan.entity.clone(),
                            rule: "unique_index_unchecked".into(),
                            severity: "warning".into(),
                            example: format!(
                                "unique index `{}`: not checked against the data ({why}); a key the data repeats fails the run at the index build, after the load",
                                u.name
                            ),
                            ..Default::default()
                        });
                    } else if let Some((key, first, value)) = u.example {
                        report.blocking.push(format!(
                            "{}: unique index `{}` cannot be built over this data: {} document(s) repeat a key another holds (e.g. row {key} repeats row {first}'s [{value}]); the run would write every document and then fail at the index build. Fix the rows, the transforms that make keys equal, or the index (a `partial` filter, not `unique`)",
                            plan.entity, u.name, u.repeats
                        ));
                    }
                }
                for (e, (n, example_key)) in plan.embeds.iter().zip(orphans) {
                    ec.orphan_children.insert(e.path_text.clone(), n);
                    if n == 0 {
                        continue;
                    }
                    // Not a reject: no source row of the entity is lost with them.
                    report.findings.push(Finding {
                        entity: plan.entity.clone(),
                        path: e.path_text.clone(),
                        rule: crate::transform::RULE_ORPHAN_CHILD.into(),
                        severity: "warning".into(),
                        rows: n,
                        example_key,
                        example: format!(
                            "{n} rows of {} belong to no {} row: not embedded, each listed in the run's rejects file",
                            e.source_name, plan.source_name
                        ),
                    });
                }
            }
        }
        savepoint(&mut session, "RELEASE SAVEPOINT cutover_check").await;
        if bad_ids > 0 {
            report.findings.push(Finding {
                entity: plan.entity.clone(),
                path: "_id".into(),
                rule: "appwrite_id".into(),
                severity: "warning".into(),
                rows: bad_ids,
                example_key: bad_id_example,
                example: "keys that do not fit an Appwrite row id (a capital, a character outside [a-z0-9._-], more than 36, or several key columns) get a hashed row id, and no column keeps the key: map the key column(s) as fields to keep the value".into(),
            });
        }
        report.findings.extend(tally.into_values());
        ec.scanned = scanned;
        let elapsed = started.elapsed().as_millis() as u64;
        match rates.get(&plan.entity) {
            Some(r) if *r > 0.0 => {
                ec.estimated_ms = Some((rows as f64 * 1000.0 / r) as u64);
                ec.estimate_basis = "throughput of the last completed run".into();
            }
            _ if scanned > 0 => {
                ec.estimated_ms = Some(elapsed.max(1) * rows / scanned);
                ec.estimate_basis =
                    "read and transform rate of this scan (writes not included)".into();
            }
            _ => ec.estimate_basis = "no data".into(),
        }
        report.entities.push(ec);
    }
    session.close().await;
    report
}

/// Appwrite users: the emails and phone numbers users of the project hold, and those the scan
/// gave to earlier rows. Appwrite keeps one user per email and per phone (a second is refused:
/// 409), so a row whose user would take one another user holds is rejected by the run
/// (`user_email_already_exists`, `user_phone_already_exists`). Emails compare with their ASCII
/// letters in lower case, as Appwrite stores them.
struct UserClaims {
    spec: crate::mapping::spec::AppwriteUsersSpec,
    entity: String,
    /// Value → the user holding it, and user → the value it holds (a user that takes a new
    /// email gives its old one up, as the run's update does).
    emails: Held,
    phones: Held,
}

#[derive(Default)]
struct Held {
    by_value: std::collections::HashMap<String, String>,
    by_user: std::collections::HashMap<String, String>,
}

impl Held {
    fn insert(&mut self, value: String, user: String) {
        if let Some(old) = self.by_user.insert(user.clone(), value.clone())
            && old != value
            && self.by_value.get(&old) == Some(&user)
        {
            self.by_value.remove(&old);
        }
        self.by_value.insert(value, user);
    }

    /// The other user holding `value`, if any.
    fn holder(&self, value: &str, user: &str) -> Option<String> {
        self.by_value
            .get(value)
            .filter(|other| !value.is_empty() && *other != user)
            .cloned()
    }
}

impl UserClaims {
    async fn load(
        a: &AppwriteTarget,
        spec: &crate::mapping::spec::AppwriteUsersSpec,
        entity: &str,
    ) -> Result<UserClaims, crate::sink::appwrite::AppwriteError> {
        let mut claims = UserClaims {
            spec: spec.clone(),
            entity: entity.to_string(),
            emails: Default::default(),
            phones: Default::default(),
        };
        let mut pages = crate::sink::appwrite::tables::Pages::users(&a.client);
        while let Some(page) = pages.next().await? {
            for u in page {
                let id = u["$id"].as_str().unwrap_or_default().to_string();
                if let Some(email) = u["email"].as_str().filter(|e| !e.is_empty()) {
                    claims.emails.insert(email.to_ascii_lowercase(), id.clone());
                }
                if let Some(phone) = u["phone"].as_str().filter(|p| !p.is_empty()) {
                    claims.phones.insert(phone.to_string(), id);
                }
            }
        }
        Ok(claims)
    }

    /// Takes the email and phone of the user `doc` becomes; the rule and message when another
    /// user has either.
    fn claim(&mut self, doc: &bson::Document) -> Option<(&'static str, String)> {
        let u = crate::sink::target::user_of(doc, &self.spec, &self.entity);
        let email = u.email.to_ascii_lowercase();
        if let Some(other) = self.emails.holder(&email, &u.id) {
            return Some((
                "user_email_already_exists",
                format!(
                    "another user ({other}) has the email {}: Appwrite keeps one user per email",
                    u.email
                ),
            ));
        }
        if let Some(phone) = &u.phone
            && let Some(other) = self.phones.holder(phone, &u.id)
        {
            return Some((
                "user_phone_already_exists",
                format!(
                    "another user ({other}) has the phone {phone}: Appwrite keeps one user per phone number"
                ),
            ));
        }
        // Both free: the user takes them (and gives up what it held before).
        if !email.is_empty() {
            self.emails.insert(email, u.id.clone());
        }
        if let Some(phone) = u.phone.filter(|p| !p.is_empty()) {
            self.phones.insert(phone, u.id);
        }
        None
    }
}

/// Runs a savepoint statement on the snapshot's connection (errors are for the checks to tell).
async fn savepoint(session: &mut SourceSession, sql: &'static str) {
    if let Err(e) = sqlx::query(sql).execute(session.conn()).await {
        tracing::warn!(error = %e, "{sql}");
    }
}

/// A finding's path without element positions (`guardians[3].email` → `guardians[].email`): one
/// finding per field and rule, whichever element of an array or child row broke it.
fn path_shape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '[' {
            let mut digits = String::new();
            while let Some(&d) = chars.peek()
                && d.is_ascii_digit()
            {
                digits.push(d);
                chars.next();
            }
            if chars.peek() != Some(&']') {
                out.push_str(&digits);
            }
        }
    }
    out
}

fn scan_row(
    plan: &crate::mapping::plan::Plan,
    row: ExpectedRow,
    tally: &mut BTreeMap<(String, String, String), Finding>,
    (key_lost, bad_ids, bad_id_example): (Option<&KeyLost>, &mut u64, &mut String),
    table: Option<&TableSpec>,
    children: &[ChildTable],
) -> bool {
    let mut rejected = matches!(row, ExpectedRow::Rejected { .. });
    // A finding counts rows: a row with two violations of one rule at one path (two elements of
    // an array, two child rows) counts once, as the run rejects it once.
    let mut counted: std::collections::HashSet<(String, String, String)> =
        std::collections::HashSet::new();
    let (key, issues, doc) = match row {
        ExpectedRow::Rejected { key, issues, .. } => (key, issues, None),
        ExpectedRow::Document { mapped, .. } => (mapped.key, mapped.issues, mapped.doc),
        ExpectedRow::Orphan(_) => return false, // counted by the caller
    };
    // Appwrite: a key its row ids cannot hold is hashed; unless the key is mapped as a field too,
    // its value is kept nowhere (the run warns for each such row, as counted here).
    if let (Some(k), Some(d)) = (key_lost, doc.as_ref())
        && k.warning(d).is_some()
    {
        *bad_ids += 1;
        if bad_id_example.is_empty() {
            *bad_id_example = key.clone();
        }
    }
    // Appwrite: text longer than its column's size is refused by the server.
    if let (Some(spec), Some(doc)) = (table, doc.as_ref().and_then(|d| d.to_document().ok())) {
        if let Some(message) = crate::sink::target::unrepresentable(&doc, Some(spec), children) {
            let f = tally
                .entry((
                    String::new(),
                    "appwrite_unrepresentable".into(),
                    "reject".into(),
                ))
                .or_insert_with(|| Finding {
                    entity: plan.entity.clone(),
                    rule: "appwrite_unrepresentable".into(),
                    severity: "reject".into(),
                    example_key: key.clone(),
                    example: message,
                    ..Default::default()
                });
            f.rows += 1;
            rejected = true;
        }
        // The row and its child tables' rows (a refused child row fails its parent).
        let long = crate::sink::target::too_long(&doc, spec, children);
        for (path, size) in long {
            let path = path_shape(&path);
            let k = (
                path.clone(),
                "appwrite_string_size".to_string(),
                "reject".to_string(),
            );
            let first = counted.insert(k.clone());
            let f = tally
                .entry(k)
                .or_insert_with(|| Finding {
                    entity: plan.entity.clone(),
                    path,
                    rule: "appwrite_string_size".into(),
                    severity: "reject".into(),
                    example_key: key.clone(),
                    example: format!(
                        "longer than the Appwrite column's {size} characters: Appwrite will refuse the row"
                    ),
                    ..Default::default()
                });
            f.rows += u64::from(first);
            rejected = true;
        }
    }
    for issue in &issues {
        let severity = if issue.severity == Severity::Error {
            rejected = true;
            "reject"
        } else {
            "warning"
        };
        let path = path_shape(&issue.path);
        let k = (path.clone(), issue.rule.clone(), severity.to_string());
        let first = counted.insert(k.clone());
        let f = tally.entry(k).or_insert_with(|| Finding {
            entity: plan.entity.clone(),
            path,
            rule: issue.rule.clone(),
            severity: severity.to_string(),
            rows: 0,
            example_key: key.clone(),
            example: issue.message.clone(),
        });
        f.rows += u64::from(first);
    }
    rejected
}

/// Counts one row of `entity` rejected under `rule` into `tally`: the first such row (`key`)
/// gives the finding its example.
fn count_reject(
    tally: &mut BTreeMap<(String, String, String), Finding>,
    entity: &str,
    rule: &str,
    key: &str,
    example: impl FnOnce() -> String,
) {
    let f = tally
        .entry((String::new(), rule.to_string(), "reject".into()))
        .or_insert_with(|| Finding {
            entity: entity.to_string(),
            rule: rule.to_string(),
            severity: "reject".into(),
            example_key: key.to_string(),
            example: example(),
            ..Default::default()
        });
    f.rows += 1;
}

#[cfg(test)]
mod tests {
    use super::path_shape;

    #[test]
    fn a_finding_path_drops_element_positions_only() {
        assert_eq!(path_shape("guardians[3].email"), "guardians[].email");
        assert_eq!(path_shape("a[0][12].b"), "a[][].b");
        assert_eq!(path_shape("tags"), "tags");
        // A bracket that is not a position stays as written.
        assert_eq!(path_shape("x[1a]"), "x[1a]");
        assert_eq!(path_shape("x["), "x[");
    }
}
