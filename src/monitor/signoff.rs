//! The sign-off report: a run's report joined with its verification, its rejects by rule (with
//! examples), its ledger entries and the configuration used — as text, JSON, Markdown or one
//! self-contained HTML page with charts (inline SVG; no network fetch).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::report::{RunReport, format_ms};
use super::table::{Column, Table, md_escape};
use crate::config::TargetKind;

/// A step's status once rolled back (the ledger's `ROLLED_BACK`; the ledger sits above).
const ROLLED_BACK_STATUS: &str = "rolled-back";

#[derive(Debug, Clone, Serialize)]
pub struct RuleCount {
    pub entity: String,
    pub stage: String,
    pub rule: String,
    pub rows: u64,
    /// (source key, message) of the first few rows.
    pub examples: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SignOff {
    pub run: RunReport,
    pub verification: Option<serde_json::Value>,
    pub rejects: Vec<RuleCount>,
    pub warnings: Vec<RuleCount>,
    pub ledger: Vec<serde_json::Value>,
    /// Steps of the run rolled back since: its verification no longer speaks of the target.
    #[serde(default)]
    pub rolled_back: Vec<String>,
    /// Later runs that wrote into the run's entities (`run … (status): entities`): the target
    /// is no longer as this run left it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_since: Vec<String>,
}

impl SignOff {
    /// Notes the run's entities whose steps were rolled back since; a verification made before
    /// a rollback no longer describes the target, so it is dropped (it said PASSED over an
    /// emptied collection).
    pub fn note_rollbacks(&mut self, rolled_back: Vec<String>) {
        self.rolled_back = rolled_back;
        if !self.rolled_back.is_empty() {
            self.verification = None;
        }
    }

    /// Joins the ledger's steps (every run's, as JSON records): this run's own are kept, the
    /// entities whose steps were rolled back since and the later runs that wrote into this run's
    /// entities (a killed one wrote no report) are noted, each dropping the verification.
    pub fn note_ledger(&mut self, steps: Vec<serde_json::Value>) {
        let text = |s: &serde_json::Value, k: &str| s[k].as_str().map(str::to_string);
        let entities: std::collections::HashSet<&str> =
            self.run.entities.iter().map(|e| e.name.as_str()).collect();
        // (started, run) -> (status, entities)
        let mut later: BTreeMap<(String, String), (String, Vec<String>)> = BTreeMap::new();
        let mut own = Vec::new();
        for s in steps {
            let (Some(run), Some(entity)) = (text(&s, "run_id"), text(&s, "entity")) else {
                continue;
            };
            if run == self.run.run_id {
                own.push(s);
                continue;
            }
            let started = text(&s, "started_at").unwrap_or_default();
            if entities.contains(entity.as_str())
                && started.as_str() > self.run.finished_at.as_str()
            {
                let status = text(&s, "status").unwrap_or_default();
                let e = later
                    .entry((started, run))
                    .or_insert_with(|| (status, Vec::new()));
                e.1.push(entity);
            }
        }
        let later = later
            .into_iter()
            .map(|((_, run), (status, entities))| {
                format!("run {run} ({status}): {}", entities.join(", "))
            })
            .collect();
        self.note_later_runs(later);
        let rolled_back = own
            .iter()
            .filter(|s| s["status"] == ROLLED_BACK_STATUS)
            .filter_map(|s| text(s, "entity"))
            .collect();
        self.ledger = own;
        self.note_rollbacks(rolled_back);
    }

    /// Notes later runs that wrote into this run's entities (adv38 F9: a re-run killed half way
    /// through left the target half rewritten, and the report of the run before it still said
    /// PASSED): no verification speaks of the target as this run left it.
    pub fn note_later_runs(&mut self, later: Vec<String>) {
        self.changed_since = later;
        if !self.changed_since.is_empty() && !self.run.dry_run {
            self.verification = None;
        }
    }

    fn not_verified(&self) -> String {
        if !self.changed_since.is_empty() && !self.run.dry_run {
            format!(
                "changed since by {}: no verification speaks of the target as this run left it (`cutover history` shows those runs; `cutover migrate` finishes an interrupted one)",
                self.changed_since.join("; ")
            )
        } else if self.run.dry_run {
            "a dry run: it wrote nothing, so no verification speaks of it".to_string()
        } else if self.rolled_back.is_empty() {
            "not verified since this run (run `cutover verify`)".to_string()
        } else {
            format!(
                "rolled back since ({}): no verification speaks of the target as this run left it",
                self.rolled_back.join(", ")
            )
        }
    }
}

fn is_run_report(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "json")
        && !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("verify-"))
}

/// The report file of `run_id`, or of the newest run that ran a stage (runs that found everything
/// applied are passed over; their number is returned with the path).
/// Which runs a report may be of: a target kind and a database, when the user named them.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub kind: Option<TargetKind>,
    pub database: Option<String>,
}

impl RunFilter {
    fn admits(&self, v: &serde_json::Value) -> bool {
        let target = v["target"].as_str().unwrap_or_default();
        let kind_ok = self.kind.is_none_or(|k| {
            v["target_kind"]
                .as_str()
                .and_then(TargetKind::from_name)
                .or_else(|| {
                    target
                        .split_whitespace()
                        .next()
                        .and_then(TargetKind::from_name)
                })
                == Some(k)
        });
        let db_ok = self
            .database
            .as_deref()
            .is_none_or(|db| run_database(target).as_deref() == Some(db));
        kind_ok && db_ok
    }
}

/// The database a run wrote to, from its target's name (`mongodb DB`, or Appwrite's
/// `appwrite URL (project P, database DB)`).
pub fn run_database(target: &str) -> Option<String> {
    if let Some(db) = target.strip_prefix("mongodb ") {
        return Some(db.to_string());
    }
    let (_, db) = target.rsplit_once("database ")?;
    Some(db.trim_end_matches(')').to_string())
}

pub fn find_run_report(
    reports_dir: &Path,
    run_id: Option<&str>,
    filter: &RunFilter,
) -> std::io::Result<(PathBuf, usize)> {
    if let Some(id) = run_id {
        let p = reports_dir.join(format!("{id}.json"));
        return if p.exists() {
            Ok((p, 0))
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "no report {} (run ids are the file names in {})",
                    p.display(),
                    reports_dir.display()
                ),
            ))
        };
    }
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    };
    let mut all: Vec<PathBuf> = std::fs::read_dir(reports_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_run_report(p))
        .collect();
    all.sort();
    let elsewhere = all
        .last()
        .and_then(read)
        .and_then(|v| v["target"].as_str().map(str::to_string))
        .map(|t| {
            format!("; the newest run report there is of {t}: name it with --target / --database")
        })
        .unwrap_or_default();
    let files: Vec<PathBuf> = all
        .into_iter()
        .filter(|p| read(p).is_some_and(|v| filter.admits(&v)))
        .collect();
    let newest = files.last().cloned().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no run report{} in {}{elsewhere}",
                match (&filter.kind, &filter.database) {
                    (None, None) => String::new(),
                    (kind, db) => format!(
                        " of {}{}",
                        kind.map(|k| k.to_string())
                            .unwrap_or_else(|| "the target".into()),
                        db.as_deref()
                            .map(|d| format!(" database {d}"))
                            .unwrap_or_default()
                    ),
                },
                reports_dir.display()
            ),
        )
    })?;
    let ran_something = |p: &PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| {
                v["dry_run"] != true && v["entities"].as_array().is_some_and(|a| !a.is_empty())
            })
    };
    for (passed, p) in files.iter().rev().enumerate() {
        if ran_something(p) {
            return Ok((p.clone(), passed));
        }
    }
    // No run did anything: the newest says so itself.
    Ok((newest, 0))
}

/// The verification files of `reports_dir` (`verify-*.json`), oldest first (their names start
/// with the time they were made); none when the directory cannot be read.
pub fn verification_files(reports_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(reports_dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .is_some_and(|n| n.starts_with("verify-") && n.ends_with(".json"))
        })
        .collect();
    files.sort();
    files
}

/// The newest verification of `run`'s target that covers every entity the run wrote and was
/// made after it ended; `None` when there is none ("not verified").
pub fn find_verification(reports_dir: &Path, run: &RunReport) -> Option<serde_json::Value> {
    verification_files(reports_dir)
        .into_iter()
        .rev()
        .find_map(|f| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(f).ok()?).ok()?;
            verification_matches(&v, run).then_some(v)
        })
}

/// Whether verification `v` speaks of `run`: same target (kind and database, and the same servers
/// and source where the run recorded them — a verification of a rehearsal copy, or of another
/// server with a database of the same name, is not this run's), made after the run, and covering
/// each of its entities.
fn verification_matches(v: &serde_json::Value, run: &RunReport) -> bool {
    let after = v["verified_at"].as_str().unwrap_or("") >= run.finished_at.as_str();
    let same_source = match run.config["source"].as_str() {
        Some(url) => v["source"].as_str() == Some(crate::redact::endpoint_of(url).as_str()),
        None => true,
    };
    let same_server = match run.config["target_at"].as_str() {
        Some(at) => v["target_at"].as_str() == Some(at),
        None => true,
    };
    let same_target =
        v["target"].as_str() == Some(run.target.as_str()) && same_source && same_server;
    let verified: std::collections::BTreeSet<&str> = v["entities"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["entity"].as_str()).collect())
        .unwrap_or_default();
    let covered = run
        .entities
        .iter()
        .all(|e| verified.contains(e.name.as_str()));
    // Made with the run's pipeline and each entity's mapping as the run wrote it (adv39 F7: a
    // verification with another pipeline, whose mapping left a row out, was shown as this
    // run's while the target missed that row).
    let same_pipeline =
        run.pipeline.is_empty() || v["pipeline"].as_str().is_none_or(|p| p == run.pipeline);
    let same_mappings = run.entities.iter().all(|e| {
        e.mapping_checksum.as_deref().is_none_or(|sum| {
            v["entities"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["entity"].as_str() == Some(e.name.as_str())
                        && x["mapping_checksum"].as_str() == Some(sum)
                })
            })
        })
    });
    after && same_target && covered && same_pipeline && same_mappings
}

/// `, source … → target …` of a verification that recorded them.
fn verified_where(v: &serde_json::Value) -> String {
    match (v["source"].as_str(), v["target_at"].as_str()) {
        (Some(source), Some(at)) => format!(", source {source} → {at}"),
        _ => String::new(),
    }
}

/// Rejects (or warnings) of a run, by entity and rule, with a few examples each.
pub fn rule_counts(dir: &Path, warnings: bool) -> Vec<RuleCount> {
    let mut by: BTreeMap<(String, String, String), RuleCount> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if name.ends_with(".warnings.csv") != warnings || !name.ends_with(".csv") {
            continue;
        }
        let Ok(mut r) = csv::Reader::from_path(&p) else {
            continue;
        };
        // A row rejected for one rule on several fields has one line per field, one after
        // the other (same key, batch and rule, another field): one row. Rows sharing a key
        // (duplicates) have the same field too, and count each. (A row rejected under several
        // rules counts under each.)
        let mut previous: Option<(String, String, String, String)> = None;
        for rec in r.records().flatten() {
            let (entity, key, stage, rule, message) = (&rec[0], &rec[1], &rec[2], &rec[3], &rec[5]);
            let this = (
                key.to_string(),
                rec.get(7).unwrap_or_default().to_string(),
                rule.to_string(),
                rec[4].to_string(),
            );
            let same_row = previous.as_ref().is_some_and(|p| {
                (&p.0, &p.1, &p.2) == (&this.0, &this.1, &this.2) && p.3 != this.3
            });
            previous = Some(this);
            if same_row {
                continue;
            }
            let c = by
                .entry((entity.to_string(), rule.to_string(), stage.to_string()))
                .or_insert_with(|| RuleCount {
                    entity: entity.to_string(),
                    stage: stage.to_string(),
                    rule: rule.to_string(),
                    rows: 0,
                    examples: Vec::new(),
                });
            c.rows += 1;
            if c.examples.len() < 3 {
                c.examples.push((key.to_string(), message.to_string()));
            }
        }
    }
    by.into_values().collect()
}

fn entity_ok(
    run: &RunReport,
    verification: Option<&serde_json::Value>,
    entity: &str,
) -> (bool, String) {
    let e = run.entities.iter().find(|e| e.name == entity);
    let verified = verification.and_then(|v| {
        v["entities"]
            .as_array()?
            .iter()
            .find(|x| x["entity"] == entity)
            .map(|x| x["ok"] == true)
    });
    let by = e
        .and_then(|e| e.completed_by.as_deref())
        .map(|r| format!(" (completed by interrupted run {r})"))
        .unwrap_or_default();
    let (ok, state) = match (e, verified) {
        (Some(e), _) if e.status != "completed" => (false, e.status.clone()),
        (Some(e), _) if run.dry_run && e.rejected == 0 => {
            (true, "rehearsed (dry run: nothing written)".into())
        }
        (Some(e), _) if run.dry_run => (
            false,
            format!("{} rows would be rejected (dry run)", e.rejected),
        ),
        (_, Some(false)) => (false, "verification failed".into()),
        (Some(e), Some(true)) if e.rejected == 0 => (true, "written and verified".into()),
        (Some(e), Some(true)) => (false, format!("verified; {} rows rejected", e.rejected)),
        (Some(e), None) if e.rejected == 0 => (true, "written (not verified)".into()),
        (Some(e), None) => (
            false,
            format!("{} rows rejected (not verified)", e.rejected),
        ),
        (None, _) => (true, "not run".into()),
    };
    (ok, state + &by)
}

/// How many problems of kind `k` (`missing`…) a verify JSON entity counts: `k_count`, or the
/// length of the list in files written before lists were bounded.
fn problem_count(e: &serde_json::Value, k: &str) -> u64 {
    e[format!("{k}_count")]
        .as_u64()
        .or_else(|| e[k].as_array().map(|a| a.len() as u64))
        .unwrap_or(0)
}

impl SignOff {
    pub fn load(
        reports_dir: &Path,
        rejects_root: &Path,
        run_id: Option<&str>,
        filter: &RunFilter,
    ) -> std::io::Result<SignOff> {
        let (path, passed_over) = find_run_report(reports_dir, run_id, filter)?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let run: RunReport = serde_json::from_str(&text)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        if passed_over > 0 {
            eprintln!(
                "report of run {}, the latest that ran a stage ({passed_over} later run(s) were dry runs or found everything applied; `cutover report RUN_ID` shows another)",
                run.run_id
            );
        }
        // A dry run wrote nothing: no verification speaks of it (adv39 F9: the target's
        // latest was joined, "written and verified").
        let verification = if run.dry_run {
            None
        } else {
            find_verification(reports_dir, &run)
        };
        let dir = rejects_root.join(&run.run_id);
        Ok(SignOff {
            rejects: rule_counts(&dir, false),
            warnings: rule_counts(&dir, true),
            verification,
            run,
            ledger: Vec::new(),
            rolled_back: Vec::new(),
            changed_since: Vec::new(),
        })
    }

    pub fn render_text(&self) -> String {
        let m = self.model();
        let mut s = self.run.render_text();
        let _ = writeln!(s, "\nVerification\n{}", m.verified_line);
        if let Some(t) = &m.verification {
            s.push_str(&t.text("  "));
        }
        for n in &m.verification_notes {
            let _ = writeln!(s, "  {n}");
        }
        for (title, t) in [
            ("Rejected rows by rule", &m.rejects),
            ("Warnings by rule", &m.warnings),
        ] {
            let _ = writeln!(s, "\n{title}");
            if t.rows.is_empty() {
                let _ = writeln!(s, "none");
            } else {
                s.push_str(&t.text("  "));
            }
        }
        let _ = writeln!(s, "\nConfiguration\n{}", m.config);
        s
    }

    pub fn render_markdown(&self) -> String {
        let r = &self.run;
        let m = self.model();
        let mut s = format!(
            "# cutover run {}\n\n- target: {}\n- started {}, finished {}\n- status: **{}**, success rate {:.2}%{}\n\n",
            md_escape(&r.run_id),
            md_escape(&r.target),
            md_escape(&r.started_at),
            md_escape(&r.finished_at),
            md_escape(&r.status),
            r.success_rate,
            if r.dry_run { " (dry run)" } else { "" }
        );
        s.push_str(&m.entities.markdown());
        if !m.entity_notes.is_empty() {
            s.push('\n');
            for n in &m.entity_notes {
                let _ = writeln!(s, "- {}", md_escape(n));
            }
        }
        let _ = writeln!(s, "\n## Verification\n\n{}\n", md_escape(&m.verified_line));
        if let Some(t) = &m.verification {
            s.push_str(&t.markdown());
            s.push('\n');
        }
        for n in &m.verification_notes {
            let _ = writeln!(s, "- {}", md_escape(n));
        }
        for (title, t) in [
            ("Rejected rows by rule", &m.rejects),
            ("Warnings by rule", &m.warnings),
        ] {
            let _ = writeln!(s, "\n## {title}\n");
            if t.rows.is_empty() {
                let _ = writeln!(s, "none");
            } else {
                s.push_str(&t.markdown());
            }
        }
        // Fenced, and no fence inside can end it.
        let _ = writeln!(
            s,
            "\n## Configuration\n\n```json\n{}\n```",
            m.config.replace("```", "`\u{200b}``")
        );
        s
    }

    /// One self-contained HTML page: summary, charts (inline SVG), tables — a `maud` template,
    /// so every value from the run is escaped by the template.
    pub fn render_html(&self) -> String {
        let r = &self.run;
        let m = self.model();
        let overall_ok =
            r.status == "completed" && self.verification.as_ref().is_none_or(|v| v["ok"] == true);
        let t = &r.totals;
        let cards = [
            ("read", Some("total-read"), t.read.to_string()),
            ("written", Some("total-written"), t.written.to_string()),
            ("rejected", Some("total-rejected"), t.rejected.to_string()),
            ("warnings", None, t.warnings.to_string()),
            ("retried", None, t.retried.to_string()),
            ("duration", None, format_ms(t.duration_ms)),
        ];
        let page = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "cutover run " (r.run_id) }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    h1 { "cutover run " (r.run_id) }
                    div class="muted" {
                        (r.target) " · " (r.started_at) " → " (r.finished_at)
                        @if r.dry_run { " · dry run: nothing was written" }
                    }
                    p {
                        span id="overall" class={ "badge " (if overall_ok { "ok" } else { "bad" }) } { (r.status) }
                        " success rate " b id="success-rate" { (format!("{:.2}%", r.success_rate)) }
                    }
                    div class="cards" {
                        @for (label, id, value) in &cards {
                            div class="card" { (label) b id=[id] { (value) } }
                        }
                    }
                    h2 { "Entities" }
                    div class="chips" {
                        @for e in &r.entities {
                            @let (ok, state) = entity_ok(r, self.verification.as_ref(), &e.name);
                            span class="entity-chip" style={ "background:" (if ok { GREEN } else { RED }) } title=(state) { (e.name) }
                        }
                    }
                    h2 { "Written and rejected per entity" }
                    (entities_chart(r))
                    h2 { "Throughput over the run" }
                    (throughput_chart(r))
                    h2 { "Per entity" }
                    (m.entities.html())
                    @if !m.entity_notes.is_empty() {
                        ul class="notes" { @for n in &m.entity_notes { li { (n) } } }
                    }
                    @for (title, table) in [("Rejected rows by rule", &m.rejects), ("Warnings by rule", &m.warnings)] {
                        h2 { (title) }
                        @if table.rows.is_empty() { p class="muted" { "none" } } @else { (table.html()) }
                    }
                    h2 { "Verification" }
                    @match &self.verification {
                        Some(v) => {
                            p {
                                @let ok = v["ok"] == true;
                                span class={ "badge " (if ok { "ok" } else { "bad" }) } { (if ok { "verified" } else { "differs" }) }
                                " "
                                span class="muted" { (m.verified_line) }
                            }
                            @if let Some(t) = &m.verification { (t.html()) }
                            @if !m.verification_notes.is_empty() {
                                ul { @for n in &m.verification_notes { li { (n) } } }
                            }
                        }
                        None => { p class="muted" { (m.verified_line) } }
                    }
                    @if !self.ledger.is_empty() {
                        h2 { "Ledger" }
                        pre { (serde_json::to_string_pretty(&self.ledger).unwrap_or_default()) }
                    }
                    h2 { "Configuration" }
                    pre { (m.config) }
                }
            }
        };
        page.into_string() + "\n"
    }

    /// The sign-off's tables and sentences, once, for every format.
    fn model(&self) -> Model {
        let r = &self.run;
        let entities = r.entity_table("state", |e| {
            entity_ok(r, self.verification.as_ref(), &e.name).1
        });
        let rules = |list: &[RuleCount]| {
            let mut t = Table::new(
                None,
                vec![
                    Column::left("entity", 0),
                    Column::left("rule", 0),
                    Column::left("stage", 0),
                    Column::right("rows", 0),
                    Column::left("examples", 0),
                ],
            );
            for c in list {
                t.push(vec![
                    c.entity.clone(),
                    c.rule.clone(),
                    c.stage.clone(),
                    c.rows.to_string(),
                    c.examples
                        .iter()
                        .map(|(k, m)| format!("{k}: {m}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                ]);
            }
            t
        };
        let mut m = Model {
            entities,
            entity_notes: r.entity_notes(),
            verified_line: self.not_verified(),
            verification: None,
            verification_notes: Vec::new(),
            rejects: rules(&self.rejects),
            warnings: rules(&self.warnings),
            config: serde_json::to_string_pretty(&r.config).unwrap_or_default(),
        };
        let Some(v) = &self.verification else {
            return m;
        };
        m.verified_line = format!(
            "{} at {}{}",
            if v["ok"] == true { "PASSED" } else { "FAILED" },
            v["verified_at"].as_str().unwrap_or("?"),
            verified_where(v)
        );
        let mut t = Table::new(
            Some("verification"),
            vec![
                Column::left("entity", 0),
                Column::left("result", 0),
                Column::left("mode", 0),
                Column::right("expected", 0),
                Column::right("target", 0),
                Column::right("missing", 0),
                Column::right("unexpected", 0),
                Column::right("different", 0),
                Column::right("broken refs", 0),
                Column::right("refused", 0),
            ],
        );
        for e in v["entities"].as_array().into_iter().flatten() {
            let entity = e["entity"].as_str().unwrap_or("?");
            let n = |k: &str| problem_count(e, k).to_string();
            let count = |k: &str| e[k].as_u64().map(|n| n.to_string()).unwrap_or_default();
            let broken = e["broken_references"].as_array();
            // Values that point nowhere (not the number of reference fields).
            let dangling: u64 = broken
                .into_iter()
                .flatten()
                .filter_map(|r| r["dangling"].as_u64())
                .sum();
            t.push(vec![
                entity.to_string(),
                if e["ok"] == true { "OK" } else { "DIFFERS" }.to_string(),
                e["mode"].as_str().unwrap_or("").to_string(),
                count("expected"),
                count("target"),
                n("missing"),
                n("unexpected"),
                n("different"),
                dangling.to_string(),
                count("rejected_by_target"),
            ]);
            // The other reasons verify gives: references that point nowhere, values that are
            // not PostgreSQL's, rows the target refused.
            for b in broken.into_iter().flatten() {
                m.verification_notes.push(format!(
                    "{entity}: broken references: {} → {}: {} value(s) point nowhere (e.g. {})",
                    b["path"].as_str().unwrap_or("?"),
                    b["references"].as_str().unwrap_or("?"),
                    b["dangling"],
                    b["examples"]
                        .as_array()
                        .map(|a| a
                            .iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                ));
            }
            if let Some(k) = e["independent"]["mismatch_count"]
                .as_u64()
                .filter(|k| *k > 0)
            {
                m.verification_notes.push(format!(
                    "{entity}: {k} value(s) differ from PostgreSQL's own rendering (see the verify report)"
                ));
            }
            if let Some(k) = e["rejected_by_target"].as_u64().filter(|k| *k > 0) {
                m.verification_notes.push(format!(
                    "{entity}: {k} rows rejected when written are not expected (refused by the target or found before sending to be what it refuses, or a file stage's file missing, changed or refused; rejects of stage write or file)"
                ));
            }
        }
        m.verification = Some(t);
        m
    }
}

/// What every format of the sign-off shows (see [`SignOff::model`]).
struct Model {
    entities: Table,
    /// What the entity table does not say (backups, rejects by rule, resumed parts…).
    entity_notes: Vec<String>,
    /// PASSED/FAILED, when and where — or why there is no verification.
    verified_line: String,
    verification: Option<Table>,
    verification_notes: Vec<String>,
    rejects: Table,
    warnings: Table,
    config: String,
}

const GREEN: &str = "#2e7d32";
const RED: &str = "#c62828";
const BLUE: &str = "#1565c0";

const STYLE: &str = "
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1b1b;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.muted{color:#666} .badge{display:inline-block;padding:3px 10px;border-radius:12px;color:#fff;font-weight:600}
.ok{background:#2e7d32} .bad{background:#c62828}
.chips span{display:inline-block;margin:4px 6px 0 0;padding:6px 10px;border-radius:6px;color:#fff;font-size:13px}
table{border-collapse:collapse;width:100%;font-size:13px} th,td{border-bottom:1px solid #ddd;padding:5px 8px;text-align:right}
th.l,td.l{text-align:left} tr.total td{border-top:2px solid #999}
.cards{display:flex;gap:12px;flex-wrap:wrap} .card{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:22px} pre{background:#f6f6f6;padding:10px;font-size:12px;overflow:auto}
";

/// Written and rejected rows per entity, as horizontal stacked bars (inline SVG).
fn entities_chart(r: &RunReport) -> Markup {
    let max = r.entities.iter().map(|e| e.read).max().unwrap_or(1).max(1) as f64;
    let (row_h, width, label_w) = (26.0, 1000.0, 190.0);
    let bar_w = width - label_w - 120.0;
    let height = row_h * r.entities.len() as f64 + 30.0;
    html! {
        svg id="chart-entities" width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) } {
            @for (i, e) in r.entities.iter().enumerate() {
                @let y = 10.0 + i as f64 * row_h;
                @let ww = bar_w * e.written as f64 / max;
                @let rw = (bar_w * e.rejected as f64 / max).max(if e.rejected > 0 { 3.0 } else { 0.0 });
                text x="0" y=(y + 14.0) font-size="13" { (e.name) }
                rect class="bar-written" x=(label_w) y=(y) width=(format!("{ww:.1}")) height="18" fill=(GREEN) {}
                rect class="bar-rejected" x=(format!("{:.1}", label_w + ww)) y=(y) width=(format!("{rw:.1}")) height="18" fill=(RED) {}
                text x=(format!("{:.1}", label_w + ww + rw + 6.0)) y=(y + 14.0) font-size="12" { (e.written) " / " (e.rejected) }
            }
        }
    }
}

/// Rows written per second between the run's samples, as a line (inline SVG).
fn throughput_chart(r: &RunReport) -> Markup {
    let mut series: Vec<(f64, f64)> = Vec::new();
    for e in &r.entities {
        for w in e.timeline.windows(2) {
            let dt = (w[1][0].saturating_sub(w[0][0])) as f64 / 1000.0;
            if dt > 0.0 {
                series.push((
                    w[1][0] as f64 / 1000.0,
                    w[1][2].saturating_sub(w[0][2]) as f64 / dt,
                ));
            }
        }
    }
    series.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (cw, ch) = (1000.0, 240.0);
    let tmax = series.last().map(|p| p.0).unwrap_or(1.0).max(0.001);
    let vmax = series.iter().map(|p| p.1).fold(1.0, f64::max);
    let points = series
        .iter()
        .map(|(t, v)| {
            format!(
                "{:.1},{:.1}",
                50.0 + (cw - 70.0) * t / tmax,
                ch - 30.0 - (ch - 50.0) * v / vmax
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    let base = ch - 30.0;
    let xend = cw - 20.0;
    html! {
        svg id="chart-throughput" width=(cw) height=(ch) viewBox={ "0 0 " (cw) " " (ch) } {
            line x1="50" y1=(base) x2=(xend) y2=(base) stroke="#999" {}
            line x1="50" y1="20" x2="50" y2=(base) stroke="#999" {}
            text x="0" y="28" font-size="11" { (format!("{vmax:.0}/s")) }
            text x=(xend) y=(ch - 12.0) font-size="11" text-anchor="end" { (format!("{tmax:.1}s")) }
            polyline id="throughput-line" fill="none" stroke=(BLUE) stroke-width="3" points=(points) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run `r1` of entities a and b, finished at 10:00; steps of other runs and its own.
    #[test]
    fn the_ledger_names_later_runs_into_its_entities_and_its_rollbacks() {
        use super::super::report::EntityReport;
        let run = RunReport {
            run_id: "r1".into(),
            started_at: "2026-12-07T09:00:00Z".into(),
            finished_at: "2026-12-07T10:00:00Z".into(),
            dry_run: false,
            target: "t".into(),
            target_kind: None,
            pipeline: "p".into(),
            status: "completed".into(),
            entities: vec![
                EntityReport::new("a", "a", Default::default(), 1),
                EntityReport::new("b", "b", Default::default(), 1),
            ],
            already_applied: Vec::new(),
            totals: Default::default(),
            success_rate: 100.0,
            estimated_full_run_ms: None,
            error: None,
            rejects_dir: String::new(),
            config: serde_json::Value::Null,
            file_error: None,
        };
        let step = |run: &str, entity: &str, status: &str, started: &str| {
            serde_json::json!({ "run_id": run, "entity": entity, "status": status,
                "started_at": format!("2026-12-07T{started}:00Z") })
        };
        let steps = vec![
            step("r0", "a", "applied", "08:00"),
            step("r1", "a", "applied", "09:00"),
            step("r1", "b", "rolled-back", "09:30"),
            step("r3", "a", "running", "11:00"),
            step("r3", "b", "pending", "11:00"),
            step("r2", "b", "failed", "10:30"),
            step("r4", "c", "applied", "12:00"),
        ];
        let mut s = SignOff {
            run,
            verification: Some(serde_json::json!({ "status": "passed" })),
            rejects: Vec::new(),
            warnings: Vec::new(),
            ledger: Vec::new(),
            rolled_back: Vec::new(),
            changed_since: Vec::new(),
        };
        s.note_ledger(steps);
        // Earlier runs and other entities are not named; later ones in the order they started.
        assert_eq!(
            s.changed_since,
            ["run r2 (failed): b", "run r3 (running): a, b"]
        );
        assert_eq!(s.rolled_back, ["b"]);
        assert_eq!(s.ledger.len(), 2);
        assert!(s.verification.is_none());
        assert!(s.not_verified().contains("changed since by run r2"));
    }

    /// One row rejected on two fields under one rule is one row; two rows sharing a key (a
    /// duplicate) are two; a row under two rules counts under each.
    #[test]
    fn rule_counts_count_rows_not_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("e.csv"),
            "entity,source_key,stage,rule,path,message,value,batch\n\
             e,1,validate,max_length,a,too long,,0\n\
             e,1,validate,max_length,b,too long,,0\n\
             e,3,transform,duplicate_key,_id,dup,,0\n\
             e,3,transform,duplicate_key,_id,dup,,0\n\
             e,4,validate,max_length,a,too long,,0\n\
             e,4,validate,email,c,bad,,0\n",
        )
        .unwrap();
        let counts: Vec<(String, u64)> = rule_counts(dir.path(), false)
            .into_iter()
            .map(|c| (c.rule, c.rows))
            .collect();
        assert_eq!(
            counts,
            [
                ("duplicate_key".to_string(), 2),
                ("email".to_string(), 1),
                ("max_length".to_string(), 2)
            ]
        );
    }

    #[test]
    fn source_text_in_markdown_is_shown_not_rendered() {
        let key = "<script>alert(1)</script>\n# heading | cell *bold* [link](x) `code`";
        let out = md_escape(key);
        assert!(!out.contains('<') && !out.contains('\n'), "{out}");
        assert_eq!(
            out,
            "&lt;script&gt;alert(1)&lt;/script&gt;\\n\\# heading \\| cell \\*bold\\* \\[link\\](x) \\`code\\`"
        );
    }
}
