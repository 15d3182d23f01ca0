//! The run loop: for each selected entity, stream the source in key order (merging embedded child
//! streams), map and validate each row, batch by rows and bytes, and write with bounded concurrency
//! and retry. Memory is bounded by the batches in flight, whatever the table size.
//!
//! This module holds the run as a whole (`migrate`: the lock, the snapshot, the plans, the
//! report); the layers below it are `decide` (what each entity needs, from the ledger), `adopt`
//! (steps an interrupted run completed), `stage` (preparing a step), `entity` (one entity's
//! stage), `read` (the reader), `write` (the writer) and `checkpoint` (the watermark).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::adopt::{adopt_step, carry_from};
use super::decide::{Decision, Interrupted, Since, another_pipelines_entities, decide};
use super::entity::run_entity;
pub use super::error::RunError;
pub use super::options::RunOptions;
use super::stage::{Resume, RunCtx, StageRun, prepare_step, wrote_before};
pub(crate) use super::write::Spawned;
use super::{Pipeline, Step};
use crate::ledger::{self, Ledger, StepRecord};
use crate::mapping::plan::{self, Plan};
use crate::monitor::Progress;
use crate::monitor::rejects::RejectsWriter;
use crate::monitor::report::{EntityReport, RunReport};
use crate::sink::target::Target;
use crate::source::SourceSession;
use crate::source::postgres;
use crate::transform::row::MapContext;

/// A new run id: UTC time plus a random suffix, sortable.
pub fn new_run_id() -> String {
    format!(
        "{}-{:04x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        fastrand::u16(..)
    )
}

/// Compiles the plans of `steps` against the source (describing each relation once).
pub async fn compile_plans(
    pipeline: &Pipeline,
    steps: &[Step],
    session: &mut SourceSession,
) -> Result<Vec<Plan>, RunError> {
    let mut plans = Vec::with_capacity(steps.len());
    let mut described: HashMap<String, Vec<postgres::SourceColumn>> = HashMap::new();
    for s in steps {
        let m = pipeline.mappings.get(&s.entity)?;
        let mut columns = Vec::new();
        for (i, rel) in plan::relations_of(m).into_iter().enumerate() {
            if !described.contains_key(&rel) {
                // Which part of which mapping names the relation, as a column error says.
                let cols = session.describe(&rel).await.map_err(|e| {
                    let part = match i.checked_sub(1).and_then(|e| m.spec.embeds.get(e)) {
                        Some(embed) => format!("embed[{}] ({})", i - 1, embed.path),
                        None => "source".to_string(),
                    };
                    RunError::Refused(format!("{}: `{part}`: {e}", m.path.display()))
                })?;
                described.insert(rel.clone(), cols);
            }
            columns.push(described[&rel].clone());
        }
        let mut p = plan::compile(&pipeline.mappings, m, &columns)?;
        if p.updated_at.is_some() {
            p.row_versions = session.has_row_versions(&p.relation).await?;
        }
        reference_types_agree(pipeline, &p, session, &mut described).await?;
        answer_exists_in_sql(pipeline, &mut p, session, &mut described).await?;
        plans.push(p);
    }
    Ok(plans)
}

/// A reference written as its column's value must have the referenced key's type: an `_id` is
/// matched by type and bytes, not as PostgreSQL's join would (a uuid held as text is a string, not
/// the binary uuid `_id`; an int is not the numeric key's text; a char(n) value keeps its blanks),
/// so a column of another type writes references that point nowhere — refused, saying how to
/// convert it. (Integers of any width are one type to MongoDB and Appwrite.)
async fn reference_types_agree(
    pipeline: &Pipeline,
    p: &Plan,
    session: &mut SourceSession,
    described: &mut HashMap<String, Vec<postgres::SourceColumn>>,
) -> Result<(), RunError> {
    use crate::source::ColKind as K;
    let family = |c: &postgres::SourceColumn| match c.kind {
        K::Int16 | K::Int32 | K::Int64 => "an integer".to_string(),
        K::Text if c.is_padded() => "blank-padded char(n)".to_string(),
        K::Text => "text".to_string(),
        K::Uuid => "uuid".to_string(),
        K::Numeric => "numeric".to_string(),
        _ => c.pg_type.to_lowercase(),
    };
    let top = p.fields.iter().map(|f| (f, &p.read));
    let embedded = p
        .embeds
        .iter()
        .flat_map(|e| e.fields.iter().map(move |f| (f, &e.read)));
    for (f, read) in top.chain(embedded) {
        let (Some(rule), plan::Input::Column(col)) = (&f.reference, &f.input) else {
            continue;
        };
        if rule.strategy != crate::mapping::spec::IdStrategy::Key
            || rule.key_names.len() != 1
            || !f.steps.is_empty()
        {
            continue;
        }
        let m = pipeline.mappings.get(&rule.entity)?;
        let rel = postgres::relation_sql(
            m.spec.source.table.as_deref(),
            m.spec.source.query.as_deref(),
        );
        if !described.contains_key(&rel) {
            let cols = session.describe(&rel).await?;
            described.insert(rel.clone(), cols);
        }
        let Some(key) = described[&rel].iter().find(|c| c.name == rule.key_names[0]) else {
            continue;
        };
        let column = &read.columns[*col];
        // An array of references is not one reference: each element would need finding (and
        // `exists`, verify and `reference_rejected` judge a field's one value). An embed of the
        // array's elements (`element = "value"`) writes the same array, each element judged.
        if matches!(column.kind, K::Array(_)) {
            return Err(RunError::Refused(format!(
                "{}: field `{}` (column `{}`, {}) references `{}`: a reference field holds one key, not an array of them; write the array as an embed of its elements (`[[embed]]` with `element = \"value\"` and a `query` that unnests the column in its order, e.g. `SELECT t.<key> AS parent, e.v AS {key}, e.n FROM <table> t, unnest(t.{col}) WITH ORDINALITY AS e(v, n)`, `foreign_key = \"parent\"`, `order_by = [\"n\"]`; a composite key gives one column per part and `foreign_key = [...]`): each element is then a reference of its own",
                p.entity,
                f.path_text,
                column.name,
                column.pg_type.to_lowercase(),
                rule.entity,
                col = column.name,
                key = rule.key_names[0],
            )));
        }
        let (have, want) = (family(column), family(key));
        if have != want {
            return Err(RunError::Refused(format!(
                "{}: field `{}` (column `{}`, {have}) references `{}`, whose key `{}` is {want}: its values would not be the referenced `_id`s (they would point nowhere); read the column as the key's type (a `query` source casting it, e.g. `{}::{}`)",
                p.entity,
                f.path_text,
                column.name,
                rule.entity,
                key.name,
                column.name,
                key.pg_type.to_lowercase(),
            )));
        }
    }
    Ok(())
}

/// Lets PostgreSQL answer the `exists` rules of top-level fields in the read itself — a computed
/// `EXISTS (…)` column probing the referenced key — so no key set is held in memory, however
/// large the referenced table. Used where the field is a column as it is (no transform, no
/// default) of the referenced key's own type; other `exists` rules load the referenced keys.
async fn answer_exists_in_sql(
    pipeline: &Pipeline,
    p: &mut Plan,
    session: &mut SourceSession,
    described: &mut HashMap<String, Vec<postgres::SourceColumn>>,
) -> Result<(), RunError> {
    let outer = postgres::qualifier(&p.read.relation);
    for i in 0..p.fields.len() {
        let f = &p.fields[i];
        let (Some(entity), plan::Input::Column(col)) = (f.exists_in.clone(), &f.input) else {
            continue;
        };
        if !f.steps.is_empty() || f.default.is_some() {
            continue;
        }
        let col = *col;
        let m = pipeline.mappings.get(&entity)?;
        let Some(key) = m
            .spec
            .source
            .key
            .first()
            .filter(|_| m.spec.source.key.len() == 1)
        else {
            continue;
        };
        // A probe per row is cheap only into a table with an index led by the key; a query
        // source or an unindexed key keeps the loaded keys (one scan).
        let Some(table) = m.spec.source.table.as_deref() else {
            continue;
        };
        let indexed: Result<bool, _> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass($1) AND a.attname = $2)",
        )
        .bind(postgres::quote_relation(table))
        .bind(key.clone())
        .fetch_one(session.conn())
        .await;
        if !matches!(indexed, Ok(true)) {
            continue;
        }
        let rel = postgres::relation_sql(
            m.spec.source.table.as_deref(),
            m.spec.source.query.as_deref(),
        );
        if !described.contains_key(&rel) {
            let cols = session.describe(&rel).await?;
            described.insert(rel.clone(), cols);
        }
        let Some(key_col) = described[&rel].iter().find(|c| &c.name == key) else {
            continue;
        };
        let column = &p.read.columns[col];
        if column.pg_type != key_col.pg_type || column.expr.is_some() {
            continue;
        }
        let name = format!("cutover_exists_{i}");
        let expr = format!(
            "EXISTS (SELECT 1 FROM {rel} AS cutover_ref WHERE cutover_ref.{} = {outer}.{})",
            postgres::quote_ident(key),
            postgres::quote_ident(&column.name)
        );
        p.read.columns.push(postgres::SourceColumn {
            name,
            pg_type: "BOOL".into(),
            kind: crate::source::ColKind::Bool,
            expr: Some(expr),
            nullable: true,
            infinity: postgres::Infinity::Reject,
            nondeterministic_collation: None,
            raw_bytes: false,
        });
        p.fields[i].exists_at = Some(p.read.columns.len() - 1);
        tracing::info!(entity = %p.entity, field = %p.fields[i].path_text, references = %entity, "exists rule answered by PostgreSQL in the read (no keys held in memory)");
    }
    Ok(())
}

/// Loads the source keys of entities named by `exists` rules.
pub(crate) async fn load_known_keys(
    pipeline: &Pipeline,
    plans: &[Plan],
    session: &mut SourceSession,
) -> Result<HashMap<String, Arc<HashSet<String>>>, RunError> {
    let mut out = HashMap::new();
    let wanted: HashSet<String> = plans
        .iter()
        .flat_map(|p| {
            p.fields
                .iter()
                .chain(p.embeds.iter().flat_map(|e| e.fields.iter()))
        })
        .filter(|f| f.exists_at.is_none())
        .filter_map(|f| f.exists_in.clone())
        .collect();
    for entity in wanted {
        // Held as the `_id`s they are (decoded as the run decodes them, then the referenced
        // entity's id rule), and looked up by the referencing value's `_id`: the same existence
        // the target will have, whatever the texts (`2020-01-01 00:00:00+00` and RFC 3339, a BC
        // date, `1.50` and `1.5` were different texts of one key).
        let mut keys = HashSet::new();
        each_source_id(pipeline, &entity, session, |ids| {
            keys.extend(ids.iter().map(plan::id_text));
            async { Ok(()) }
        })
        .await?;
        tracing::info!(entity = %entity, keys = keys.len(), "keys held in memory for exists rules that PostgreSQL cannot answer in the read");
        out.insert(entity, Arc::new(keys));
    }
    Ok(out)
}

/// Streams the `_id`s of `entity`'s source rows (decoded as the run decodes them, then its id
/// rule), a thousand at a time, to `f`. A key that cannot be decoded is no document's `_id`.
async fn each_source_id<F, Fut>(
    pipeline: &Pipeline,
    entity: &str,
    session: &mut SourceSession,
    mut f: F,
) -> Result<(), RunError>
where
    F: FnMut(Vec<bson::Bson>) -> Fut,
    Fut: std::future::Future<Output = Result<(), RunError>>,
{
    let m = pipeline.mappings.get(entity)?;
    let rel = postgres::relation_sql(
        m.spec.source.table.as_deref(),
        m.spec.source.query.as_deref(),
    );
    let key = m.spec.source.key[0].clone();
    let columns = session.describe(&rel).await?;
    let spec = postgres::ReadSpec::new(
        &rel,
        &columns,
        std::slice::from_ref(&key),
        std::slice::from_ref(&key),
    )?;
    let rule = plan::IdRule::of(m);
    let mut chunk = Vec::with_capacity(1000);
    let mut rows = postgres::stream(session.conn(), &spec);
    while let Some(row) = futures::TryStreamExt::try_next(&mut rows).await? {
        if let Ok(row) = row
            && let Some(id) = row.first().and_then(|v| rule.id_for(&[v]).ok())
        {
            chunk.push(id);
            if chunk.len() == 1000 {
                f(std::mem::take(&mut chunk)).await?;
            }
        }
    }
    if !chunk.is_empty() {
        f(chunk).await?;
    }
    Ok(())
}

/// The entities `p`'s reference fields (its own and its embeds') point into.
pub(crate) fn referenced_entities(p: &Plan) -> HashSet<String> {
    p.fields
        .iter()
        .chain(p.embeds.iter().flat_map(|e| e.fields.iter()))
        .filter_map(|f| f.reference.as_ref().map(|r| r.entity.clone()))
        .collect()
}

/// For each of `entities` (those a plan references), the ids (`id_text`) of its rows that are in the source but
/// whose documents are not in the target now — rejected or skipped when it ran: a reference to
/// one would point nowhere (rule `reference_rejected`). The referenced stages ran before `p`
/// (the pipeline orders them so). Holds only those ids; the target is asked a thousand ids at a
/// time.
pub(crate) async fn absent_references(
    pipeline: &Pipeline,
    entities: impl IntoIterator<Item = String>,
    target: &Target,
    session: &mut SourceSession,
) -> Result<HashMap<String, Arc<HashSet<String>>>, RunError> {
    let mut out = HashMap::new();
    for entity in entities {
        let m = pipeline.mappings.get(&entity)?;
        // The target must know what the referenced collection is (Appwrite: users or a table).
        let step = Step {
            stage: String::new(),
            entity: entity.clone(),
        };
        let referenced = compile_plans(pipeline, std::slice::from_ref(&step), session).await?;
        for r in &referenced {
            target.describe(r);
        }
        let collection = m.collection().to_string();
        let absent = std::sync::Mutex::new(HashSet::new());
        each_source_id(pipeline, &entity, session, |ids| {
            let (absent, collection) = (&absent, &collection);
            async move {
                let there = target.referable(collection, &ids).await?;
                let there: HashSet<String> = there.iter().map(plan::id_text).collect();
                absent.lock().unwrap_or_else(|p| p.into_inner()).extend(
                    ids.iter()
                        .map(plan::id_text)
                        .filter(|id| !there.contains(id)),
                );
                Ok(())
            }
        })
        .await?;
        let absent = absent.into_inner().unwrap_or_else(|p| p.into_inner());
        if !absent.is_empty() {
            tracing::info!(references = %entity, absent = absent.len(), "referenced rows in the source whose documents are not in the target: references to them are `reference_rejected`");
        }
        out.insert(entity, Arc::new(absent));
    }
    Ok(out)
}

/// Refuses a run writing where the ledger says another entity's data is (a collection, a table,
/// a bucket — of another pipeline in the same database, or an entity renamed): its records
/// would replace the other's under the same ids (adv45 F6: a second pipeline's files stage with
/// the default bucket `fs` overwrote the first's files, into Appwrite irreversibly). One pipeline's
/// own mappings are refused so when they load; `--accept-changed` takes the place over.
fn shared_destinations(
    plans: &[Plan],
    target: &Target,
    history: &[StepRecord],
    opts: &RunOptions,
) -> Result<(), RunError> {
    if opts.accept_changed {
        return Ok(());
    }
    let current = ledger::current_steps(history);
    let clashes: Vec<String> = plans
        .iter()
        .flat_map(|p| destination_clashes(p, target, &current))
        .collect();
    if clashes.is_empty() {
        return Ok(());
    }
    Err(RunError::Refused(format!(
        "{}: {SHARED_HINT}; --accept-changed writes there all the same",
        clashes.join("; ")
    )))
}

/// What to do about a destination another entity's data is in (see [`shared_destinations`]).
pub(crate) const SHARED_HINT: &str = "two entities in one place replace each other's records under the same ids. Give this mapping a collection, table or bucket of its own (or the pipeline a database of its own), or roll the other entity back";

/// Where `p` would write what the ledger's `current` steps (see `ledger::current_steps`) say
/// another entity's data is, each said (empty: nowhere). `check` asks it too.
pub(crate) fn destination_clashes(
    p: &Plan,
    target: &Target,
    current: &std::collections::BTreeMap<String, StepRecord>,
) -> Vec<String> {
    target.describe(p);
    let ours = match (&p.file, target) {
        // A files stage not made ready (`check` without the files root): its GridFS bucket.
        (Some(f), Target::Mongo(m)) if m.bucket(&p.collection).is_none() => {
            crate::sink::target::Destination::Bucket {
                name: f.bucket.clone(),
                documents: f.documents.clone(),
            }
        }
        _ => target.destination(&p.collection),
    };
    let mut out = Vec::new();
    for (entity, s) in current {
        if *entity == p.entity || s.status == ledger::ROLLED_BACK {
            continue;
        }
        let shared = ours.shared_with(&s.destination);
        if !shared.is_empty() {
            out.push(format!(
                "{} would write {}, which holds entity {entity}'s data (run {}, {})",
                p.entity,
                shared.join(", "),
                s.run_id,
                s.status
            ));
        }
    }
    out
}

/// How many passes [`settle_left_out`] makes at most down a chain of self-references.
const MAX_SELF_REFERENCE_PASSES: usize = 32;

/// Whether `plan` has a field (or an embedded one) whose `exists` names its own entity: rows
/// left out then leave out the rows naming them, level by level.
pub(crate) fn cascades_into_itself(plan: &Plan) -> bool {
    plan.fields
        .iter()
        .chain(plan.embeds.iter().flat_map(|e| e.fields.iter()))
        .any(|f| f.exists_in.as_deref() == Some(plan.entity.as_str()))
}

/// The ids `pass` leaves out of `entity`, with the rows naming them judged: when `cascades`
/// ([`cascades_into_itself`]), `pass` runs again with the ids left out so far as `entity`'s
/// absent ids in its context, until the set stops growing (a chain of N rows: N passes; at most
/// [`MAX_SELF_REFERENCE_PASSES`], warned). The run ([`rejected_by_mapping`]) and verify's
/// `LeftOut` judge with this one loop, so they stop at the same place. Returns the context of
/// the last pass too.
pub(crate) async fn settle_left_out(
    entity: &str,
    cascades: bool,
    mut ctx: MapContext,
    mut pass: impl AsyncFnMut(&MapContext) -> Result<HashSet<String>, RunError>,
) -> Result<(HashSet<String>, MapContext), RunError> {
    ctx.absent_ids.remove(entity);
    let mut out = pass(&ctx).await?;
    let mut passes = 1;
    while cascades && !out.is_empty() {
        if passes == MAX_SELF_REFERENCE_PASSES {
            tracing::warn!(%entity, passes, left_out = out.len(), "a chain of self-references deeper than this many passes: rows further down it are judged by the rows left out so far");
            break;
        }
        ctx.absent_ids
            .insert(entity.to_string(), Arc::new(out.clone()));
        let next = pass(&ctx).await?;
        passes += 1;
        // More rows absent reject more rows, never fewer: the same size is the same set.
        if next.len() == out.len() {
            break;
        }
        out = next;
    }
    Ok((out, ctx))
}

/// The ids (`id_text`) of the rows of `plan` that its mapping (with `ctx`) rejects, or that the
/// target refuses whatever the other rows: what a stage reading all of them leaves out of the
/// target, for an entity that references itself (an employee's `reportsTo`). Passes of its own
/// over the source (the snapshot the stage reads), settled by [`settle_left_out`].
pub(crate) async fn rejected_by_mapping(
    plan: &Plan,
    session: &SourceSession,
    target: Option<&Target>,
    ctx: &MapContext,
) -> Result<HashSet<String>, RunError> {
    let (out, _) = settle_left_out(
        &plan.entity,
        cascades_into_itself(plan),
        ctx.clone(),
        async |ctx: &MapContext| left_out_once(plan, session, target, ctx).await,
    )
    .await?;
    Ok(out)
}

/// One pass of [`rejected_by_mapping`].
async fn left_out_once(
    plan: &Plan,
    session: &SourceSession,
    target: Option<&Target>,
    ctx: &MapContext,
) -> Result<HashSet<String>, RunError> {
    use super::expected::{ExpectedRow, ExpectedRows, Readers};
    let mut readers = Readers::open(session, plan).await?;
    let max_bytes = target.and_then(Target::max_document_bytes);
    let mut rows = ExpectedRows::new(&mut readers, plan, max_bytes);
    let mut out = HashSet::new();
    let id_of = |values: &[crate::source::Value]| {
        let key: Option<Vec<&crate::source::Value>> =
            plan.key.iter().map(|&k| values.get(k)).collect();
        key.and_then(|k| plan.id.id_for(&k).ok())
            .map(|id| plan::id_text(&id))
    };
    while let Some(row) = rows.next(ctx).await? {
        let left_out = match &row {
            ExpectedRow::Rejected { row, decoded, .. } => id_of(row.as_deref().unwrap_or(decoded)),
            ExpectedRow::Document { row, mapped, .. } => mapped
                .doc
                .as_ref()
                .zip(target)
                .and_then(|(d, t)| t.row_refusal(&plan.collection, d))
                .and_then(|_| id_of(row)),
            ExpectedRow::Orphan(_) => None,
        };
        out.extend(left_out);
    }
    Ok(out)
}

/// Runs `steps` of `pipeline` from the source into the MongoDB target, holding the target's lock.
pub async fn migrate(
    pipeline: &Pipeline,
    steps: Vec<Step>,
    source_url: &str,
    target: &Target,
    ledger: &Ledger,
    opts: &RunOptions,
) -> Result<RunReport, RunError> {
    migrate_as(
        &new_run_id(),
        pipeline,
        steps,
        source_url,
        target,
        ledger,
        opts,
    )
    .await
}

/// [`migrate`] as the run `run_id` (from [`new_run_id`]), for a caller that names the run before
/// it starts (`cutover serve` answers with it).
pub async fn migrate_as(
    run_id: &str,
    pipeline: &Pipeline,
    steps: Vec<Step>,
    source_url: &str,
    target: &Target,
    ledger: &Ledger,
    opts: &RunOptions,
) -> Result<RunReport, RunError> {
    let run_id = run_id.to_string();
    // The ledger's own collections (runs, steps, lock, backups, changes) are never a mapping's:
    // a rollback of that step would wipe the ledger.
    for step in &steps {
        let mapping = pipeline.mappings.get(&step.entity).ok();
        let collection = mapping
            .map(|m| m.collection().to_string())
            .unwrap_or_default();
        // A file stage needs its files' root, and a target that takes files.
        if let Some(f) = mapping.and_then(|m| m.spec.file.as_ref()) {
            let root = match &opts.files_root {
                Some(r) => r.clone(),
                None => {
                    return Err(RunError::Refused(format!(
                        "{}: its mapping reads files ([file]): give their root with --files-root, CUTOVER_FILES_ROOT or [files] root in cutover.toml",
                        step.entity
                    )));
                }
            };
            // A root that is not there (a typo, a share not mounted) would make every row
            // `file_missing` — and a re-run remove every file migrated before (adv25 F5).
            if let Some(why) = crate::sink::gridfs::root_problem(&root) {
                return Err(RunError::Refused(format!("{}: {why}", step.entity)));
            }
            target
                .register_files(f, &root, opts.recheck_files)
                .map_err(|e| RunError::Refused(e.to_string()))?;
        }
        let users = mapping.is_some_and(|m| m.spec.appwrite.users.is_some());
        if let Some(why) = target.unfit_name(&step.entity, &collection, users) {
            return Err(RunError::Refused(why));
        }
        if let Some(m) = mapping
            && let Some(why) = super::ledger_name_problem(
                &step.entity,
                m,
                ledger.prefix(),
                matches!(target, Target::Appwrite(_)),
            )
        {
            return Err(RunError::Refused(why));
        }
    }
    if opts.dry_run {
        return migrate_locked(
            pipeline,
            steps,
            source_url,
            target,
            ledger,
            opts,
            (&run_id, None),
        )
        .await;
    }
    let lock = ledger
        .acquire_lock(&run_id, "migrate", opts.lock_ttl)
        .await
        .map_err(Box::new)?;
    // Holding the lock, no other run is alive: runs still marked running died.
    let result = match ledger.interrupt_stale_runs(&run_id).await {
        Ok(dead) => {
            for r in dead {
                tracing::warn!(run = %r, "marked interrupted: it ended without finishing, or lost its lock to this run (it stops writing when it next looks at the lock)");
            }
            let fence = lock.fence().stopping_on_request();
            migrate_locked(
                pipeline,
                steps,
                source_url,
                target,
                ledger,
                opts,
                (&run_id, Some(&fence)),
            )
            .await
        }
        Err(e) => Err(e.into()),
    };
    lock.release().await?;
    result
}

/// `migrate` once the lock is taken (or in a dry run, which takes none): the run `run_id`,
/// writing while `fence` (the lock's fencing check; `None` in a dry run) says the lock is its.
async fn migrate_locked(
    pipeline: &Pipeline,
    steps: Vec<Step>,
    source_url: &str,
    target: &Target,
    ledger: &Ledger,
    opts: &RunOptions,
    (run_id, fence): (&str, Option<&ledger::lock::Fence>),
) -> Result<RunReport, RunError> {
    let started_at = chrono::Utc::now();
    let run_started = Instant::now();

    let prereqs = pipeline.prerequisites(&steps);
    if !opts.ignore_dependencies && !prereqs.is_empty() {
        let done = ledger.completed_entities().await?;
        let missing: Vec<String> = prereqs.into_iter().filter(|e| !done.contains(e)).collect();
        if !missing.is_empty() {
            // Each entity that waits for one of them, with those it waits for (adv22 F10: the
            // message named every entity asked for, those depending on nothing missing too).
            let blocked: Vec<String> = steps
                .iter()
                .filter_map(|s| {
                    let own = pipeline.prerequisites(std::slice::from_ref(s));
                    let waits: Vec<&str> = missing
                        .iter()
                        .filter(|m| own.contains(*m))
                        .map(String::as_str)
                        .collect();
                    (!waits.is_empty()).then(|| {
                        format!(
                            "{} ({})",
                            s.entity,
                            pipeline.why_needed(s, &waits).join("; ")
                        )
                    })
                })
                .collect();
            return Err(RunError::Refused(format!(
                "cannot migrate {}: {} not migrated yet into this target; migrate {} first (cutover migrate {}) or pass --ignore-dependencies",
                blocked.join(", "),
                if missing.len() == 1 {
                    "that is"
                } else {
                    "those are"
                },
                if missing.len() == 1 { "it" } else { "them" },
                missing.join(" ")
            )));
        }
    }
    let history = ledger.all_steps().await?;
    let all_runs = ledger.runs_newest_first(i64::MAX, None).await?;
    another_pipelines_entities(pipeline, &steps, &history, &all_runs, opts)?;
    // A dry run takes no lock and marks nothing: the runs still `running` it finds died, or
    // are alive beside it — it previews as if they died (this session's review, G).
    let interrupted = Interrupted {
        runs: all_runs
            .into_iter()
            .filter(|r| {
                r.status == ledger::INTERRUPTED
                    || (opts.dry_run && r.status == ledger::RUNNING && r.run_id != run_id)
            })
            .collect(),
    };
    let decisions = decide(&steps, pipeline, &history, opts, &interrupted)?;
    let mut already_applied = Vec::new();
    let mut to_run = Vec::new();
    for (step, d) in decisions {
        match d {
            Decision::AlreadyApplied => already_applied.push(step.entity),
            Decision::AcceptChange { step_id } => {
                if !opts.dry_run {
                    let m = pipeline.mappings.get(&step.entity)?;
                    ledger.accept_checksum(&step_id, &m.checksum).await?;
                }
                already_applied.push(step.entity);
            }
            Decision::Run {
                resume,
                since,
                origin,
                sync_deletes,
                finishing,
            } => to_run.push((step, resume, since, origin, (sync_deletes, finishing))),
        }
    }

    // Entities applied by a run that was interrupted before it ended wrote no report: this run's
    // report accounts for them (from the ledger), so that its totals cover the whole selection.
    let adopted: Vec<StepRecord> = if opts.dry_run || already_applied.is_empty() {
        Vec::new()
    } else {
        let current = ledger::current_steps(&history);
        already_applied
            .iter()
            .filter_map(|e| current.get(e))
            .filter(|s| {
                s.status == ledger::COMPLETED
                    && s.reported_by.is_none()
                    && interrupted.runs.iter().any(|r| r.run_id == s.run_id)
            })
            .cloned()
            .collect()
    };

    // Reported in full below, not as merely "already applied".
    already_applied.retain(|e| !adopted.iter().any(|s| &s.entity == e));

    let mut session = SourceSession::open(source_url).await?;
    let run_steps: Vec<Step> = to_run.iter().map(|(s, ..)| s.clone()).collect();
    let snapshot_at = session
        .snapshot_at()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tracing::info!(run = %run_id, snapshot_at = %snapshot_at, "source snapshot taken");
    let plans = compile_plans(pipeline, &run_steps, &mut session).await?;
    // The next delta starts at this snapshot's time: said when this role could not see when
    // the transactions open at it began (adv44 F1: an update committed after the snapshot, with
    // an earlier time, was never copied).
    // A table's next delta also reads the rows those transactions write (by their `xmin`); a
    // view's or a query's cannot.
    let hidden = session.hidden_transactions();
    let blind: Vec<&str> = plans
        .iter()
        .filter(|p| p.updated_at.is_some() && !p.row_versions)
        .map(|p| p.entity.as_str())
        .collect();
    if hidden > 0 && !blind.is_empty() && !opts.dry_run {
        crate::errln!(
            "warning: {hidden} transaction(s) were open in the source at the snapshot, and this role cannot see when another role's began (it is no superuser nor a member of pg_read_all_stats): rows they commit with times before {snapshot_at} can escape the next `--since-last` of {} (a view or a query: its rows carry no transaction id to read them by); grant pg_read_all_stats to the role (or run the last delta when the application is stopped, then `cutover verify`)",
            blind.join(", ")
        );
    }
    // Refused before anything is written: columns the target cannot create.
    if let Some(why) = plans.iter().find_map(|p| target.unfit_columns(p)) {
        return Err(RunError::Refused(why));
    }
    shared_destinations(&plans, target, &history, opts)?;
    let ctx = MapContext {
        now_ms: started_at.timestamp_millis(),
        skip_validation: opts.skip_validation,
        null_column: target.kind() == crate::config::TargetKind::Appwrite,
        known_keys: load_known_keys(pipeline, &plans, &mut session).await?,
        absent_ids: HashMap::new(),
    };
    let entity_names: Vec<String> = plans.iter().map(|p| p.entity.clone()).collect();
    // A run that only accounts for steps an interrupted run completed is a run too: its report
    // is the sign-off's, so history lists it.
    let run_number = if opts.dry_run || (plans.is_empty() && adopted.is_empty()) {
        0
    } else {
        let n = ledger.next_run_number().await?;
        ledger
            .start_run(run_id, n, &pipeline.spec.name, &entity_names, opts.intent())
            .await?;
        n
    };

    let rejects = Arc::new(RejectsWriter::new(&opts.rejects_dir.join(run_id)));
    let progress = Progress::new(opts.quiet);
    let total_rejected = Arc::new(AtomicU64::new(0));
    let (mut entities, found): (Vec<EntityReport>, Vec<bool>) = adopted
        .iter()
        .map(|step| adopt_step(step, opts, &rejects))
        .unzip();
    for e in &mut entities {
        inherit_backup(ledger, e).await;
    }
    // Those whose rejects were not found are reported again by a later run.
    let adopted: Vec<StepRecord> = adopted
        .into_iter()
        .zip(found)
        .filter_map(|(s, found)| found.then_some(s))
        .collect();
    let mut run_error: Option<RunError> = None;
    let mut estimate_ms: u64 = 0;
    let run = RunCtx {
        target,
        ledger,
        opts,
        run_id,
        run_number,
        snapshot_at: &snapshot_at,
        unseen_xid: session.unseen_from_xid(),
        map: &ctx,
        rejects: &rejects,
        progress: &progress,
        total_rejected: &total_rejected,
    };

    // A dry run: the ids of the rows rejected by the stages of entities a later stage references.
    let dry_rejected: HashMap<String, Arc<std::sync::Mutex<HashSet<String>>>> = if opts.dry_run {
        plans
            .iter()
            .flat_map(referenced_entities)
            .filter(|e| plans.iter().any(|p| &p.entity == e))
            .map(|e| (e, Default::default()))
            .collect()
    } else {
        HashMap::new()
    };
    // The entities whose rows the target holds as a run left them: completed before this run,
    // or by an earlier stage of it. The references into an entity that has not run (a stage run
    // alone with --ignore-dependencies) are not judged by the target: its rows may come later.
    // What the target was asked of each referenced entity (see `absent_references`).
    let mut absent_known: HashMap<String, Arc<HashSet<String>>> = HashMap::new();
    let mut ran: HashSet<String> = ledger::current_steps(&history)
        .into_iter()
        .filter(|(_, s)| s.status == ledger::COMPLETED)
        .map(|(e, _)| e)
        .collect();
    for (p, (_, resume, since, origin, (sync_deletes, finishing))) in plans.iter().zip(&to_run) {
        // The step cut short that this one resumes, or starts over. It deletes what its
        // interrupted run was to delete, whatever this command's flags (as a resumed step keeps
        // that run's `since`; see `decide`), and counts what that run removed.
        let interrupted = resume.as_deref().or(origin.as_deref());
        let sync_deletes = *sync_deletes;
        // What the interrupted step removed is read from the target: it must know first what
        // the collection is (Appwrite users are looked up as users, not as rows of a table —
        // all of a killed run's noted users were counted gone: the fourteenth tester's U5).
        target.describe(p);
        // References to rows the target does not hold (rejected when their entity ran, in
        // this run or an earlier one) are known before the first row is mapped. A dry run
        // writes nothing: the rows its earlier stages rejected stand for those.
        let stage_map;
        let referenced = referenced_entities(p);
        // A stage reading all the rows of an entity that references itself (an employee's
        // `reportsTo`): what it leaves out of the target is what its mapping rejects now. A
        // resumed stage too: the rows before its checkpoint, which the killed run rejected,
        // are left out as well (adv38 F6: the rows naming them were written, dangling). A
        // delta too, as a fresh run would judge it: a row it writes was absent from the target
        // when it began (new, or rejected by the run before), and the rows naming it were
        // `reference_rejected` (adv44 F2) — at the cost of a pass over the entity's rows.
        let own = referenced.contains(&p.entity);
        let run = if referenced.is_empty() {
            run
        } else {
            let (in_dry_run, asked): (Vec<String>, Vec<String>) = referenced
                .into_iter()
                .filter(|e| dry_rejected.contains_key(e) || ran.contains(e))
                .partition(|e| dry_rejected.contains_key(e));
            // Asked once a run after the referenced entity's stage (or before the run): the
            // stages that reference it do not write it.
            let fresh: Vec<String> = asked
                .iter()
                .filter(|e| !absent_known.contains_key(*e))
                .cloned()
                .collect();
            match absent_references(pipeline, fresh, target, &mut session).await {
                Ok(found) => {
                    absent_known.extend(found);
                    let mut absent_ids: HashMap<String, Arc<HashSet<String>>> = asked
                        .iter()
                        .filter_map(|e| Some((e.clone(), absent_known.get(e)?.clone())))
                        .collect();
                    for e in in_dry_run {
                        let ids = dry_rejected[&e].lock().unwrap_or_else(|p| p.into_inner());
                        absent_ids.insert(e, Arc::new(ids.clone()));
                    }
                    if own {
                        // Judged by a pass of its own over the rows (adv36 F1: a reference to
                        // a row the stage rejects was judged by the target as the stage began:
                        // no warning for it, and one for a row the stage writes again).
                        let first = MapContext {
                            absent_ids: absent_ids.clone(),
                            ..ctx.clone()
                        };
                        match rejected_by_mapping(p, &session, Some(target), &first).await {
                            Ok(ids) => {
                                absent_ids.insert(p.entity.clone(), Arc::new(ids));
                            }
                            Err(e) => {
                                run_error = Some(e);
                                break;
                            }
                        }
                    }
                    stage_map = MapContext {
                        absent_ids,
                        ..ctx.clone()
                    };
                    RunCtx {
                        map: &stage_map,
                        ..run
                    }
                }
                Err(e) => {
                    run_error = Some(e);
                    break;
                }
            }
        };
        ran.insert(p.entity.clone());
        // What the target held of this entity was asked before its stage wrote (a stage
        // referencing its own entity asks it: an employee's `reportsTo`): the stages after it
        // ask again (adv36 F1: its rows rejected now, their documents removed, were not
        // `reference_rejected` in a later stage, and rows written now were).
        absent_known.remove(&p.entity);
        let (removed, deleted) = match interrupted {
            Some(r) => match inherited(ledger, target, &p.collection, r).await {
                Ok(n) => n,
                Err(e) => {
                    run_error = Some(e);
                    break;
                }
            },
            None => (0, 0),
        };
        let mut stage = StageRun {
            sync_deletes,
            run_started,
            since: since.clone(),
            run_id: run_id.to_string(),
            inherited: (removed, deleted),
            interrupted_run: interrupted.map(|r| r.run_id.clone()),
            finishing: finishing.clone(),
            resume: resume.as_ref().map(|r| Resume {
                from_run: r.run_id.clone(),
                from_dir: r
                    .rejects_dir
                    .as_ref()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| opts.rejects_dir.join(&r.run_id)),
                key: r.checkpoint_key.clone().unwrap_or_default(),
                rows: r.checkpoint_rows.max(0) as u64,
                covered: ledger::Covered {
                    rows: r.checkpoint_rows.max(0) as u64,
                    rejected: r.checkpoint_rejected.max(0) as u64,
                    warned: r.checkpoint_warned.max(0) as u64,
                    batches: 0,
                    removed,
                },
                from_batches: r.checkpoint_batches.max(0) as u64,
                orphans: Default::default(),
            }),
            mode: None,
            ledger: (!opts.dry_run).then(|| ledger.clone()),
            fence: fence.cloned(),
            // Known once the step is prepared (Appwrite learns the layout, users or tables).
            prior: false,
            schema_changes: Vec::new(),
            dry_rejected: dry_rejected.get(&p.entity).cloned(),
        };
        // --max-rejects counts the entity's rejects, those of the part it resumes included: a
        // limit re-run after re-run would otherwise let any number through.
        if let Some(r) = &stage.resume {
            let n = total_rejected.fetch_add(r.covered.rejected, Ordering::Relaxed)
                + r.covered.rejected;
            if let Some(max) = opts.max_rejects
                && n > max
                && !opts.dry_run
            {
                // Already past the limit before this run reads a row.
                run_error = Some(RunError::TooManyRejects { rejected: n, max });
                break;
            }
        }
        // The rejects and warnings of the rows the interrupted run's checkpoint covers go into
        // this run's files (the rest are read again): each row of the entity is in them once.
        // On disk before the ledger records this step (which a later resume continues): a run
        // killed in between must leave a file holding every covered line.
        let carried = match stage.resume.as_ref().filter(|_| !opts.dry_run) {
            Some(r) => {
                let fallback = opts.rejects_dir.join(&r.from_run);
                match carry_from(
                    &rejects,
                    &[&r.from_dir, &fallback],
                    &p.entity,
                    r.from_batches,
                ) {
                    // Rows were rejected below the checkpoint, and no line of them is found.
                    Ok((c, _)) if c.rejected_rows == 0 && r.covered.rejected > 0 => {
                        Err(RunError::Refused(format!(
                            "cannot resume {}: the checkpoint of run {} covers {} rejected row(s), but no rejects file of that run is in {}{}; without it those rows would be in no rejects file. Put that run's rejects directory back there (or copy it to {}), or roll {} back and migrate it again",
                            p.entity,
                            r.from_run,
                            r.covered.rejected,
                            r.from_dir.display(),
                            if fallback != r.from_dir {
                                format!(" nor in {}", fallback.display())
                            } else {
                                String::new()
                            },
                            fallback.display(),
                            p.entity
                        )))
                    }
                    Ok((c, from)) => {
                        tracing::info!(entity = %p.entity, from = %from.display(), lines = c.lines, warnings = c.warnings, "carried the covered rejects of the interrupted run");
                        Ok(c.orphans)
                    }
                    Err((from, cause)) => Err(RunError::Io { path: from, cause }),
                }
            }
            None => Ok(Default::default()),
        };
        let carried = carried.map(|orphans| {
            if let Some(r) = stage.resume.as_mut() {
                r.orphans = orphans;
            }
        });
        // What the ledger records as the step's destination: the table group or the users.
        let mut destination = target.destination(&p.collection);
        let mut backup = None;
        let mut backup_taken = None;
        let mut was_empty = false;
        let prepared = if let Err(e) = carried {
            Err(e)
        } else if opts.dry_run {
            target.describe(p);
            // What the run would change in columns that exist, said by the rehearsal too.
            match target.planned_changes(p).await {
                Ok(changes) => stage.schema_changes = changes,
                Err(e) => {
                    tracing::warn!(entity = %p.entity, error = %e, "could not read the target's columns for the rehearsal")
                }
            }
            Ok(())
        } else if let Some(Err(lost)) = match fence {
            // Each stage starts only while the lock is this run's.
            Some(f) => Some(f.check().await),
            None => None,
        } {
            Err(RunError::LockLost(lost))
        } else {
            prepare_step(p, &run, resume.as_deref().or(origin.as_deref()), &mut stage)
                .await
                .map(|(dest, empty, b, taken)| {
                    stage.prior = wrote_before(&history, &p.entity, &dest);
                    destination = dest;
                    was_empty = empty;
                    backup = b;
                    backup_taken = taken;
                })
        };
        if let Err(e) = prepared {
            // The stage failed before its first row: it is reported (and recorded) as failed.
            // A step it resumes stays the interrupted run's, which the next run resumes (and
            // carries the lines of) again: the lines carried here are not this run's (adv38
            // F3: its report counted none of them, yet listed them by rule).
            if stage.resume.is_some() && !opts.dry_run {
                let began = ledger
                    .all_steps()
                    .await
                    .map(|steps| {
                        steps
                            .iter()
                            .any(|s| s.run_id == run_id && s.entity == p.entity)
                    })
                    .unwrap_or(true);
                if !began && let Err(cause) = rejects.discard(&p.entity) {
                    tracing::warn!(entity = %p.entity, error = %cause, "could not remove the carried lines of a step that never began");
                }
            }
            let mut report = EntityReport::new(&p.entity, &p.collection, Default::default(), 0);
            report.status = if matches!(e, RunError::LockLost(_)) {
                ledger::INTERRUPTED.into()
            } else {
                "failed".into()
            };
            report.error = Some(crate::redact::redact_text(&e.to_string()));
            if !opts.dry_run && run_number > 0 {
                let _ = ledger.finish_step(run_id, &report).await;
            }
            entities.push(report);
            run_error = Some(e);
            break;
        }
        let delta = match (&stage.since, opts.since_last) {
            // A query's rows change with every table it reads; its updated_at follows the ones
            // it names (adv44 F6: a joined value changed and the delta kept the old one).
            (Some(Since { at, .. }), _) if p.source_name.starts_with("the query of") => Some(format!(
                "rows changed since {at} by the query's updated_at: a value it reads from another table changes no such row unless its updated_at takes that table's time too (greatest(…)); `cutover verify` compares them all"
            )),
            (Some(Since { at, xid: Some(x), .. }), _) if p.row_versions => Some(format!(
                "rows changed since {at}, and rows written by transactions from id {x} on (some were open at that snapshot and this role could not see when they began)"
            )),
            (Some(Since { at, .. }), _) => Some(format!("rows changed since {at}")),
            (None, true) if p.updated_at.is_none() => {
                Some("copied in full: the mapping names no source.updated_at".to_string())
            }
            (None, true) if p.file.is_some() && p.updated_at.is_some() => Some(
                "copied in full: a file rewritten on disk leaves its row as it was (the files the target holds already, byte for byte, are not uploaded again)"
                    .to_string(),
            ),
            (None, true) if !p.embeds.is_empty() => Some(
                "copied in full: its embedded children have no change column of their own (a child changed alone leaves source.updated_at as it was)"
                    .to_string(),
            ),
            (None, true) => Some("copied in full: no completed run to start from".to_string()),
            _ => None,
        };
        // The rows the step it continues rejected are read again (adv44 F2).
        let delta = match (delta, super::read::retried_keys(p, &stage)) {
            (Some(d), Ok((keys, unnamed))) if !keys.is_empty() || unnamed > 0 => {
                let mut d = format!(
                    "{d}; and the {} row(s) the run it continues rejected for another row's sake (a reference, a unique key), read again",
                    keys.len() as u64 + unnamed
                );
                if unnamed > 0 {
                    d.push_str(&format!(
                        " — {unnamed} of them NOT: their key's text is not PostgreSQL's input (a float, date, time or bytes part, or NULL); `--rerun` reads them"
                    ));
                }
                Some(d)
            }
            (d, _) => d,
        };
        // A validator an earlier mapping set is off during the load (set again after it).
        if !opts.dry_run
            && p.validator.is_some()
            && let crate::sink::target::Target::Mongo(m) = target
            && let Err(e) = m.clear_validator(&p.collection).await
        {
            tracing::warn!(entity = %p.entity, error = %e, "cannot clear the collection's validator before the load");
        }
        // A destination with a unique index (the mapping's, or an Appwrite table's): the
        // records of rows gone from the source are deleted before the load, not after — a new
        // row taking a gone row's key would be refused by the server while the gone row still
        // held it.
        let early = stage.sync_deletes
            && (target.writes_in_key_order(&p.collection) || p.indexes.iter().any(|i| i.unique));
        // A dry run: the target's records this pass leaves as they are (of rows gone from the
        // source without --sync-deletes, of rows before the checkpoint it resumes after) keep
        // their unique keys — held before the rehearsal's first row, as the run meets them.
        let held = if opts.dry_run {
            super::kept::hold_for_rehearsal(p, &session, target, &stage)
                .await
                .map(|_| ())
        } else {
            Ok(())
        };
        let early_deleted = if let Err(e) = held {
            Some(Err(e))
        } else if early {
            let fenced = match fence {
                Some(f) => f.check().await.map_err(RunError::LockLost),
                None => Ok(()),
            };
            let remover = super::removal::Remover {
                ledger: stage.ledger.clone(),
                run_id: run_id.to_string(),
                entity: p.entity.clone(),
            };
            Some(match fenced {
                Ok(()) => {
                    super::sync_deletes::sync_deletes(
                        p,
                        &mut session,
                        target,
                        opts.dry_run,
                        &remover,
                    )
                    .await
                }
                Err(e) => Err(e),
            })
        } else {
            None
        };
        let (mut report, err) = match early_deleted {
            Some(Err(e)) => {
                let mut report = EntityReport::new(&p.entity, &p.collection, Default::default(), 0);
                report.status = "failed".into();
                report.error = Some(crate::redact::redact_text(&e.to_string()));
                (report, Some(e))
            }
            Some(Ok(n)) => {
                let (mut report, err) = run_entity(p, &mut session, &run, &stage).await;
                report.deleted += n;
                (report, err)
            }
            None => run_entity(p, &mut session, &run, &stage).await,
        };
        report.delta = delta;
        report.schema_changes = stage.schema_changes.clone();
        // Older documents removed (or users blocked) for rows rejected now may be what other
        // entities' documents reference (adv32 F6: dangling, and nothing said so).
        if report.stale_removed + report.stale_blocked > 0 {
            let referrers = pipeline.referrers(&p.entity);
            if !referrers.is_empty() {
                report.notes.push(format!(
                    "{} of its documents were removed for rows rejected now; {} reference {}: `cutover verify {}` names the references that point nowhere now",
                    report.stale_removed + report.stale_blocked,
                    referrers.join(", "),
                    p.entity,
                    referrers.join(" ")
                ));
            }
        }
        if let Some(b) = backup_taken {
            report.set_backup(b);
        } else if report.backup.is_none() {
            // A resumed step's backup is the one its interrupted run took.
            report.backup = backup.clone();
            inherit_backup(ledger, &mut report).await;
        }
        let mut err = err;
        if err.is_none()
            && stage.sync_deletes
            && !early
            && let Some(f) = fence
            && let Err(lost) = f.check().await
        {
            err = Some(RunError::LockLost(lost));
        }
        if err.is_none() && stage.sync_deletes && !early {
            let remover = super::removal::Remover {
                ledger: stage.ledger.clone(),
                run_id: run_id.to_string(),
                entity: p.entity.clone(),
            };
            match super::sync_deletes::sync_deletes(p, &mut session, target, opts.dry_run, &remover)
                .await
            {
                Ok(n) => report.deleted += n,
                Err(e) => err = Some(e),
            }
        }
        // Indexes and the validator once the collection is loaded (not in a dry run, not after
        // a failed load: a resume finishes it).
        if err.is_none()
            && !opts.dry_run
            && (!p.indexes.is_empty() || !p.reference_indexes.is_empty() || p.validator.is_some())
            && let crate::sink::target::Target::Mongo(m) = target
        {
            // The mapping's own indexes, then the references' (none duplicates one of them).
            let indexes: Vec<_> = p
                .indexes
                .iter()
                .chain(&p.reference_indexes)
                .cloned()
                .collect();
            match m
                .finish_collection(&p.collection, &indexes, p.validator.as_ref())
                .await
            {
                Ok(built) => {
                    report.indexes = built
                        .into_iter()
                        .map(|(name, ms)| crate::monitor::report::IndexBuild { name, ms })
                        .collect();
                    report.validator = p.validator.as_ref().map(|(level, _)| {
                        match level {
                            crate::mapping::spec::ValidatorLevel::Moderate => "moderate",
                            _ => "strict",
                        }
                        .to_string()
                    });
                }
                Err(e) => err = Some(RunError::from(crate::sink::target::SinkError::from(e))),
            }
        }
        // A dry run rehearsed the unique indexes the run builds after its load: one the data
        // breaks fails the run at its end, so the rehearsal fails too (adv35 F7).
        if err.is_none()
            && opts.dry_run
            && let crate::sink::target::Target::Mongo(m) = target
            && let Some(why) = m.rehearsed_build_failure(&p.collection)
        {
            err = Some(RunError::Refused(format!("{}: {why}", p.entity)));
        }
        if let Some(e) = &err {
            report.status = if matches!(e, RunError::LockLost(_)) {
                ledger::INTERRUPTED.into()
            } else {
                "failed".into()
            };
            report.error = Some(crate::redact::redact_text(&e.to_string()));
        }
        if !report.balanced() {
            let e = RunError::Invariant {
                entity: report.name.clone(),
                read: report.read,
                written: report.written,
                rejected: report.rejected,
                skipped: report.skipped,
            };
            report.status = "failed".into();
            report.error = Some(crate::redact::redact_text(&e.to_string()));
            run_error.get_or_insert(e);
        }
        if opts.dry_run {
            let rate = ledger.last_rate(&p.entity).await.ok().flatten();
            estimate_ms += match rate {
                Some(r) => (report.read as f64 * 1000.0 / r) as u64,
                None => report.duration_ms,
            };
        } else {
            // The step's rejects are on disk before the ledger says it is done: a run killed
            // after that is never re-read, so rejects still in memory would be recorded nowhere.
            // When they cannot be (a full disk), the step is failed — recorded so, its
            // checkpoint before the rows whose rejects may be lost — and the run ends.
            if let Err(cause) = rejects.sync() {
                let e = RunError::Io {
                    path: rejects.dir().to_path_buf(),
                    cause,
                };
                report.status = "failed".into();
                report.error = Some(crate::redact::redact_text(&e.to_string()));
                err.get_or_insert(e);
            }
            // A restore only while the lock is this run's (another run may be writing now).
            let still_ours = match fence {
                Some(f) => f.check().await.is_ok(),
                None => true,
            };
            let restore = report.status == "failed" && opts.restore_on_failure && still_ours;
            // A step that stops before its end — or went on past batches the target did not
            // take (--continue-on-error: its checkpoint stays before the first) — counts up to
            // its checkpoint (a resume reads the rest again; adv31 F4: its rejects past it were
            // listed again); one restored undoes all it did, and says what it had read.
            if err.is_some()
                && !restore
                && let Err(e) =
                    super::checkpoint::count_to_checkpoint(ledger, &rejects, run_id, &mut report)
                        .await
            {
                tracing::warn!(entity = %p.entity, error = %e, "could not count the stopped step up to its checkpoint");
            }
            ledger.finish_step(run_id, &report).await?;
            if restore {
                let step_id = format!("{run_id}:{}", p.entity);
                super::rollback::restore_failed_step(
                    ledger,
                    &step_id,
                    &p.entity,
                    &destination,
                    was_empty,
                    backup.as_deref(),
                )
                .await?;
                report.status = "failed, restored".into();
            }
        }
        entities.push(report);
        if let Some(e) = err {
            run_error = Some(e);
            break;
        }
    }
    session.close().await;
    if let Err(cause) = rejects.flush() {
        run_error.get_or_insert(RunError::Io {
            path: rejects.dir().to_path_buf(),
            cause,
        });
    }
    // Each entity's rejects by rule, from the rejects files (resumed parts' lines included).
    let by_rule = crate::monitor::signoff::rule_counts(rejects.dir(), false);
    for e in &mut entities {
        e.rejected_by_rule = by_rule
            .iter()
            .filter(|c| c.entity == e.name && c.rule != "orphan_child")
            .fold(Default::default(), |mut m, c| {
                *m.entry(c.rule.clone()).or_default() += c.rows;
                m
            });
    }

    for e in &mut entities {
        e.mapping_checksum = pipeline
            .mappings
            .get(&e.name)
            .ok()
            .map(|m| m.checksum.clone());
    }
    let mut report = RunReport {
        run_id: run_id.to_string(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        dry_run: opts.dry_run,
        target: opts.target_name.clone(),
        target_kind: Some(target.kind()),
        pipeline: pipeline.spec.name.clone(),
        status: String::new(),
        entities,
        already_applied,
        totals: Default::default(),
        success_rate: 0.0,
        estimated_full_run_ms: opts.dry_run.then_some(estimate_ms),
        error: run_error
            .as_ref()
            .map(|e| crate::redact::redact_text(&e.to_string())),
        rejects_dir: rejects.dir().display().to_string(),
        config: serde_json::json!({
            "source": crate::redact::redact_url(source_url),
            "target": opts.target_name,
            "target_at": target.location(),
            "batch_size": opts.batch_size,
            "batch_bytes": opts.batch_bytes,
            "concurrency": opts.concurrency,
            "file_concurrency": opts.file_concurrency,
            "continue_on_error": opts.continue_on_error,
            "skip_validation": opts.skip_validation,
            "max_rejects": opts.max_rejects,
            "retries": opts.retry.max_retries,
            "since_last": opts.since_last,
            "sync_deletes": opts.sync_deletes,
        }),
        file_error: None,
    };
    report.compute_totals();
    report.status = if matches!(run_error, Some(RunError::LockLost(_))) {
        ledger::INTERRUPTED.into()
    } else if run_error.is_some() {
        "failed".into()
    } else if report.totals.rejected > 0 {
        "completed_with_rejects".into()
    } else {
        "completed".into()
    };
    // The report file first, then the ledger: a run killed between the two has its report, and
    // the next run finds it unfinished in the ledger (interrupted) and accounts for its
    // completed steps again — never a run in no report. The ledger records the run whether or
    // not the file could be written; a report that cannot be is said by the caller.
    let path = opts
        .report_path
        .clone()
        .unwrap_or_else(|| opts.reports_dir.join(format!("{run_id}.json")));
    let written = match report.write_json(&path) {
        Ok(()) => true,
        Err(cause) => {
            report.file_error = Some(format!(
                "the run report could not be written to {}: {cause} (the ledger records the run: `cutover history`)",
                path.display()
            ));
            false
        }
    };
    if !opts.dry_run && run_number > 0 {
        ledger.finish_run(&report).await?;
    }
    if written && !opts.dry_run {
        // Its report written, this run is the one that accounts for the adopted steps.
        for step in &adopted {
            ledger.mark_reported(&step.id, run_id).await?;
        }
    }
    Ok(report)
}

/// What the interrupted step `r` (and those it continued) removed in all — older documents of
/// rows rejected now, records deleted by `--sync-deletes`: a step that ended recorded it; a
/// killed one left its removal notes, the last ones perhaps without their counts.
async fn inherited(
    ledger: &Ledger,
    target: &Target,
    collection: &str,
    r: &StepRecord,
) -> Result<(u64, u64), RunError> {
    let recorded = (r.checkpoint_removed.max(0) as u64, r.deleted.max(0) as u64);
    if r.finished_at.is_some() {
        return Ok(recorded);
    }
    let notes = ledger.removals_of(&r.run_id, &r.entity).await?;
    let (stale, deleted) = super::removal::removed_by(target, collection, &notes).await?;
    Ok((
        recorded.0.max(r.inherited_removed.max(0) as u64 + stale),
        r.inherited_deleted.max(0) as u64 + deleted,
    ))
}

/// Fills in what the ledger records of a backup an earlier run took for this step (its documents,
/// that run) — a resumed or adopted step names it with what it holds (found by the thirteenth
/// tester, T11: "of 0 documents in 0ms"). A backup the ledger no longer knows stays named alone.
async fn inherit_backup(ledger: &Ledger, e: &mut EntityReport) {
    let Some(name) = e.backup.clone() else {
        return;
    };
    if let Ok(Some(b)) = ledger.find_backup(&name).await {
        e.backup_documents = b.documents.max(0) as u64;
        e.backup_by = Some(b.run_id);
    }
}
