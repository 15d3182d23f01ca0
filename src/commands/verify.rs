//! `cutover verify`: the target compared with the source.

use anyhow::{Context, Result};

use super::shared::pipeline_for;
use crate::cli::{Cli, Outcome};

/// Entities above this many source rows are sampled unless --full.
const FULL_VERIFY_MAX_ROWS: u64 = 1_000_000;
const DEFAULT_SAMPLE: u64 = 100_000;

pub async fn verify(cli: &Cli, args: &crate::cli::VerifyArgs) -> Result<Outcome> {
    let (cfg, target, ledger) =
        super::shared::open_ledger_for(cli, &args.target, Some(&args.pipeline)).await?;
    let target_kind = target.kind();
    let target_name = target.display_name();
    let target_at = target.location();
    let pipeline = pipeline_for(&cfg, &args.pipeline)?;
    // Where the files of file stages are (their bytes on disk are compared when given).
    let files_root = args.files.files_root.clone().or(cfg.files_root.clone());
    let steps = pipeline.select(&args.names)?;
    let source = cfg.require_source()?.to_string();
    let mut session = crate::source::SourceSession::open(&source).await?;
    let plans = crate::pipeline::run::compile_plans(&pipeline, &steps, &mut session).await?;
    let mut ctx = crate::transform::row::MapContext {
        now_ms: chrono::Utc::now().timestamp_millis(),
        skip_validation: false,
        null_column: target_kind == crate::config::TargetKind::Appwrite,
        known_keys: crate::pipeline::run::load_known_keys(&pipeline, &plans, &mut session).await?,
        absent_ids: Default::default(),
    };
    let collections: std::collections::HashMap<String, String> = pipeline
        .mappings
        .mappings
        .iter()
        .map(|m| (m.name().to_string(), m.collection().to_string()))
        .collect();
    let user_entities: std::collections::HashSet<String> = pipeline
        .mappings
        .mappings
        .iter()
        .filter(|m| m.spec.appwrite.users.is_some())
        .map(|m| m.name().to_string())
        .collect();
    let path = args.output.clone().unwrap_or_else(|| {
        cfg.reports_dir.join(format!(
            "verify-{}.json",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ))
    });
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Every problem, one a line, next to the JSON (which holds the first ones of each kind).
    let problems_path = path.with_extension("problems.jsonl");
    let _ = std::fs::remove_file(&problems_path);
    let side_problems_path = path.with_extension("problems.independent.jsonl");
    let _ = std::fs::remove_file(&side_problems_path);
    let mut log = crate::verify::ProblemLog::new(problems_path);
    let mut results = Vec::new();
    // The entities that have run (as the run judges references into them).
    let current = crate::ledger::current_steps(&ledger.all_steps().await?);
    let ran: std::collections::HashSet<String> = current
        .iter()
        .filter(|(_, s)| s.status == crate::ledger::COMPLETED)
        .map(|(e, _)| e.clone())
        .collect();
    // The run number of each entity's current step: a referencing entity's run judged the
    // referenced rows as they were then (an entity run again since may have left out more).
    let run_of = |e: &str| current.get(e).map(|s| s.run_number);
    // Per referenced entity, the ids of the rows its run left out (following the references
    // that left rows out), as of the referencing entity's run when it ran again since.
    let mut left_out = crate::verify::LeftOut::new(
        &pipeline,
        &ledger,
        &cfg.rejects_dir,
        target.max_document_bytes(),
        &ran,
        ctx.clone(),
    );
    for p in &plans {
        // References to rows the target does not hold: the run rejected (or warned) them
        // (`reference_rejected`), so the comparison expects what the run wrote.
        ctx.absent_ids = crate::pipeline::run::absent_references(
            &pipeline,
            crate::pipeline::run::referenced_entities(p)
                .into_iter()
                .filter(|e| ran.contains(e)),
            &target,
            &mut session,
        )
        .await?;
        // Excused only where the run left the referenced row out (its mapping rejects it, or
        // the target refused it): a referenced document deleted since is not excused.
        for (e, absent) in ctx.absent_ids.iter_mut() {
            if absent.is_empty() {
                continue;
            }
            // The referenced entity ran again after this one: only what it left out both then
            // (when this entity's run wrote its references, with a warning) and now is excused
            // (the eighteenth tester's F1: a document a re-run removed was called "written with
            // a warning"; adv35 F2: the same rows rejected again failed verify).
            let as_of = if run_of(e) > run_of(&p.entity) {
                match run_of(&p.entity) {
                    Some(run) => Some(run),
                    None => {
                        *absent = Default::default();
                        continue;
                    }
                }
            } else {
                None
            };
            let keep = left_out.of(&mut session, e, as_of).await?;
            *absent = std::sync::Arc::new(absent.intersection(&keep).cloned().collect());
        }
        let rows = session.count(&p.relation).await?;
        let sample = match (args.full, args.sample) {
            (true, _) => None,
            (false, Some(n)) => Some(n),
            (false, None) if rows > FULL_VERIFY_MAX_ROWS => Some(DEFAULT_SAMPLE),
            _ => None,
        };
        // Rows the target refused in the runs that wrote the entity: not missing.
        let refused =
            crate::verify::write_rejects::load(&ledger, &cfg.rejects_dir, &p.entity).await?;
        // The independent comparison (PostgreSQL's own values against the target's, apart from
        // the converter) reads the source and the target a second time: it runs beside the main
        // comparison, on its own connection to the same snapshot and its own problem file
        // (appended to the main one after), so on two cores the passes overlap.
        if p.file.is_some() {
            // A file stage: its files against the rows (no document comparison applies).
            let v = match &target {
                crate::sink::target::Target::Mongo(m) => {
                    crate::verify::files::verify_files(
                        p,
                        &mut session,
                        m,
                        &ctx,
                        (files_root.as_deref(), args.full),
                        &refused,
                        &mut log,
                    )
                    .await?
                }
                crate::sink::target::Target::Appwrite(a) => {
                    crate::verify::files::verify_storage(
                        p,
                        &mut session,
                        a,
                        &ctx,
                        (files_root.as_deref(), args.full),
                        &refused,
                        &mut log,
                    )
                    .await?
                }
            };
            // Said, not left out silently (adv39 F14): a file entity's fields are compared by
            // mapping its rows again, its bytes against the files; PostgreSQL's own rendering
            // of them is not compared.
            const NOT_INDEPENDENT: &str = "not compared independently: a file entity (its fields are compared as the mapping writes them, its bytes against the files and the records)";
            if !args.json {
                print_verification(&v);
                crate::outln!("    {NOT_INDEPENDENT}");
            }
            let mut entity = serde_json::to_value(&v)?;
            entity["independent"] = serde_json::json!({ "not_compared": NOT_INDEPENDENT });
            results.push((v.ok, entity));
            continue;
        }
        let mut fork = session.fork().await?;
        let side_log = crate::verify::ProblemLog::new(side_problems_path.clone());
        let (plan, side_target, refs) = (p.clone(), target.clone(), collections.clone());
        let absent = ctx.absent_ids.clone();
        let side = crate::pipeline::run::Spawned::spawn(async move {
            let mut side_log = side_log;
            let i = crate::verify::oracle::independent_in(
                &side_target,
                &plan,
                &mut fork,
                sample,
                &crate::verify::oracle::EmbeddedRefs {
                    collections: &refs,
                    absent: &absent,
                },
                &mut side_log,
            )
            .await;
            fork.close().await;
            i.map(|i| (i, side_log))
        });
        let mut v = crate::verify::verify_entity_in(
            &target,
            p,
            &mut session,
            &crate::verify::Expecting {
                ctx: &ctx,
                sample,
                refused: &refused,
            },
            &crate::verify::appwrite::References {
                collections: &collections,
                user_entities: &user_entities,
            },
            &mut log,
        )
        .await?;
        // The destination's own settings the mapping declares (indexes, table access).
        v.settings = crate::verify::settings_differ(&target, p).await?;
        if !v.settings.is_empty() {
            v.ok = false;
        }
        let (i, side_log) = independent_result(side).await?;
        log.append(side_log)?;
        i.apply(&mut v);
        let independent = Some(i);
        if !args.json {
            print_verification(&v);
            for line in independent.iter().flat_map(|i| i.lines()) {
                crate::outln!("{line}");
            }
        }
        let mut entity = serde_json::to_value(&v)?;
        if let Some(i) = independent {
            entity["independent"] = serde_json::to_value(i)?;
        }
        results.push((v.ok, entity));
    }
    session.close().await;
    log.finish()?;
    let problems_file = log.written().map(|p| p.display().to_string());
    let ok = results.iter().all(|(ok, _)| *ok);
    // The mapping each entity was verified with: the sign-off joins a verification to a run
    // only when the run wrote with the same one (adv39 F7).
    let results: Vec<serde_json::Value> = results
        .into_iter()
        .map(|(_, mut e)| {
            let checksum = e["entity"]
                .as_str()
                .and_then(|name| pipeline.mappings.get(name).ok())
                .map(|m| m.checksum.clone());
            if let (Some(checksum), Some(o)) = (checksum, e.as_object_mut()) {
                o.insert("mapping_checksum".into(), checksum.into());
            }
            e
        })
        .collect();
    let json = serde_json::json!({
        "verified_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "target": target_name,
        "target_kind": target_kind,
        // Which source and which server: the sign-off joins a verification to a run by these.
        "source": crate::redact::endpoint_of(&source),
        "target_at": target_at,
        "pipeline": pipeline.spec.name,
        "ok": ok,
        "problems_file": problems_file,
        "entities": results,
    });
    crate::monitor::report::write_whole(
        &path,
        (crate::redact::scrub_secrets(&serde_json::to_string_pretty(&json)?) + "\n").as_bytes(),
    )
    .with_context(|| format!("cannot write {}", path.display()))?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        if let Some(f) = &problems_file {
            crate::outln!("every problem found, one a line: {f}");
        }
        // A sample proves the rows it compared and the counts, not the others (adv43 F7).
        let sampled: Vec<&str> = json["entities"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["mode"].as_str().is_some_and(|m| m.starts_with("sample")))
            .filter_map(|e| e["entity"].as_str())
            .collect();
        let verdict = match (ok, sampled.is_empty()) {
            (true, true) => "verified: the target matches the source".to_string(),
            (true, false) => format!(
                "verified: the target matches the source in the rows compared and in its counts ({} compared by a sample: `cutover verify --full` compares every row)",
                sampled.join(", ")
            ),
            (false, _) => "verification FAILED: the target differs from the source".to_string(),
        };
        crate::outln!("{verdict} (details: {})", path.display());
    }
    Ok(if ok {
        Outcome::Success
    } else {
        Outcome::FinishedWithRejects
    })
}

fn print_verification(v: &crate::verify::EntityVerification) {
    use crate::verify::SHOWN;
    let problems = v.problem_count();
    crate::outln!(
        "{:<24} {} comparison: {} source rows, {} rejected by the mapping, {} expected, {} in the target, {} compared — {}",
        v.entity,
        v.mode,
        v.source_rows,
        v.rejected_by_mapping,
        v.expected,
        v.target,
        v.compared,
        if v.ok {
            "OK".to_string()
        } else {
            format!("{problems} problem(s)")
        }
    );
    let list = |what: &str, count: u64, items: &[String]| {
        if count == 0 {
            return;
        }
        let shown: Vec<&str> = items.iter().take(SHOWN).map(String::as_str).collect();
        let more = match count.saturating_sub(shown.len() as u64) {
            0 => String::new(),
            n => format!(" … and {n} more"),
        };
        crate::outln!("    {what} ({count}): {}{more}", shown.join(", "));
    };
    list(
        "rejected when written — refused by the target, or found before sending to be what it refuses (Appwrite: a value it cannot hold), or a file stage's file missing, changed or without its permission's value (rejects of the run, excused; source key)",
        v.rejected_by_target,
        &v.rejected_by_target_keys,
    );
    if v.kept_earlier > 0 {
        crate::outln!(
            "    {} of them keep the file an earlier run uploaded (an Appwrite Storage bucket cannot be backed up): in the target, not compared",
            v.kept_earlier
        );
    }
    if v.blocked_kept > 0 {
        crate::outln!(
            "    {} user(s) blocked by cutover, kept: their rows are rejected now (they cannot sign in; delete them yourself if they must go)",
            v.blocked_kept
        );
    }
    if v.not_imported > 0 {
        crate::outln!(
            "    {} user(s) of the project not imported as {}'s (the application's own, or another entity's): not compared",
            v.not_imported,
            v.entity
        );
    }
    list(
        "missing in the target (source key)",
        v.missing_count,
        &v.missing,
    );
    list(
        "unexpected in the target (_id)",
        v.unexpected_count,
        &v.unexpected,
    );
    for d in v.different.iter().take(SHOWN) {
        crate::outln!(
            "    different: {} (fields: {})",
            d.key,
            if d.fields.is_empty() {
                "?".to_string()
            } else {
                d.fields.join(", ")
            }
        );
    }
    let shown = v.different.len().min(SHOWN) as u64;
    if v.different_count > shown {
        crate::outln!(
            "    … and {} more different documents",
            v.different_count - shown
        );
    }
    for e in &v.embedded {
        if e.orphan_children > 0 {
            // Not a failure: the run listed them (rule orphan_child); the count below is of
            // the written parents' children.
            crate::outln!(
                "    embedded {}: {} child rows of {} belong to no {} row: in no document (the run listed them as orphan_child), not counted among the child rows in the source",
                e.path,
                e.orphan_children,
                e.child_source,
                e.parent_source
            );
        }
        if e.source_children != e.target_elements {
            crate::outln!(
                "    embedded {}: {} child rows in the source, {} elements in the target",
                e.path,
                e.source_children,
                e.target_elements
            );
        }
    }
    for what in &v.settings {
        crate::outln!("    {what}");
    }
    if !v.counts_agree {
        // Said only when the missing and unexpected documents listed do not explain it.
        // The rows the target refused when written are expected to be absent (adv25 F4).
        let explained = (v.expected + v.unexpected_count)
            .checked_sub(v.missing_count + v.rejected_by_target)
            == Some(v.target);
        crate::outln!(
            "    counts differ: {} documents expected, {} in the target ({})",
            v.expected,
            v.target,
            if v.mode.starts_with("sample") {
                "a sample names the documents it compares only: `verify --full` names the others"
            } else if explained {
                "the missing and unexpected documents above"
            } else {
                "more than the missing and unexpected documents above account for"
            }
        );
    }
    for r in &v.broken_references {
        crate::outln!(
            "    broken references: {} → {}: {} value(s) point nowhere (e.g. {})",
            r.path,
            r.references,
            r.dangling,
            r.examples.join(", ")
        );
    }
    for r in &v.warned_references {
        crate::outln!(
            "    references written with a warning: {} → {}: {} value(s) name rows the run left out (rejected by the mapping or refused by the target; the run wrote these with a warning, rule reference_rejected: not a failure) (e.g. {})",
            r.path,
            r.references,
            r.dangling,
            r.examples.join(", ")
        );
    }
}

/// What the independent comparison's task gave: its result, or how the task itself stopped (it
/// panicked or was aborted) — one error either way.
async fn independent_result<T>(
    side: crate::pipeline::run::Spawned<Result<T, crate::pipeline::run::RunError>>,
) -> anyhow::Result<T> {
    let result = side.await.context("the independent comparison stopped")?;
    Ok(result?)
}
