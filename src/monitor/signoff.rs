//! The sign-off report: a run's report joined with its verification, its rejects by rule (with
//! examples), its ledger entries and the configuration used — as text, JSON, Markdown or one
//! self-contained HTML page with charts (inline SVG; no network fetch).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::report::{RunReport, format_ms};
use crate::config::TargetKind;

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

    fn not_verified(&self) -> String {
        if self.rolled_back.is_empty() {
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

/// The newest verification of `run`'s target that covers every entity the run wrote and was
/// made after it ended; `None` when there is none ("not verified").
pub fn find_verification(reports_dir: &Path, run: &RunReport) -> Option<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(reports_dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .is_some_and(|n| n.starts_with("verify-") && n.ends_with(".json"))
        })
        .collect();
    files.sort();
    files.into_iter().rev().find_map(|f| {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f).ok()?).ok()?;
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
    after && same_target && covered
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

/// Source text (keys, messages) as inert Markdown: on one line, HTML and Markdown's own
/// characters escaped, so a value holding `<script>`, `|` or a newline is shown, not rendered.
fn md_esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' => out.push_str("\\n"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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
        let verification = find_verification(reports_dir, &run);
        let dir = rejects_root.join(&run.run_id);
        Ok(SignOff {
            rejects: rule_counts(&dir, false),
            warnings: rule_counts(&dir, true),
            verification,
            run,
            ledger: Vec::new(),
            rolled_back: Vec::new(),
        })
    }

    pub fn render_text(&self) -> String {
        let mut s = self.run.render_text();
        self.append_details(&mut s, false);
        s
    }

    fn append_details(&self, s: &mut String, md: bool) {
        let h = |s: &mut String, t: &str| {
            if md {
                let _ = writeln!(s, "\n## {t}\n");
            } else {
                let _ = writeln!(s, "\n{t}");
            }
        };
        h(s, "Verification");
        match &self.verification {
            Some(v) => {
                let _ = writeln!(
                    s,
                    "{} at {}{}",
                    if v["ok"] == true { "PASSED" } else { "FAILED" },
                    v["verified_at"].as_str().unwrap_or("?"),
                    verified_where(v)
                );
                for e in v["entities"].as_array().into_iter().flatten() {
                    let _ = writeln!(
                        s,
                        "{}{}: {} — expected {}, target {}, missing {}, unexpected {}, different {}{}",
                        if md { "- " } else { "  " },
                        e["entity"].as_str().unwrap_or("?"),
                        if e["ok"] == true { "OK" } else { "DIFFERS" },
                        e["expected"],
                        e["target"],
                        problem_count(e, "missing"),
                        problem_count(e, "unexpected"),
                        problem_count(e, "different"),
                        match e["rejected_by_target"].as_u64() {
                            Some(n) if n > 0 => format!(
                                "; {n} rows the target refused when written are not expected (rejects, stage write)"
                            ),
                            _ => String::new(),
                        },
                    );
                    // The other reasons verify gives: references that point nowhere, values
                    // that are not PostgreSQL's.
                    for r in e["broken_references"].as_array().into_iter().flatten() {
                        let _ = writeln!(
                            s,
                            "{}  broken references: {} → {}: {} value(s) point nowhere (e.g. {})",
                            if md { "  - " } else { "  " },
                            r["path"].as_str().unwrap_or("?"),
                            r["references"].as_str().unwrap_or("?"),
                            r["dangling"],
                            r["examples"]
                                .as_array()
                                .map(|a| a
                                    .iter()
                                    .filter_map(|x| x.as_str())
                                    .map(|x| if md { md_esc(x) } else { x.to_string() })
                                    .collect::<Vec<_>>()
                                    .join(", "))
                                .unwrap_or_default()
                        );
                    }
                    if let Some(n) = e["independent"]["mismatch_count"]
                        .as_u64()
                        .filter(|n| *n > 0)
                    {
                        let _ = writeln!(
                            s,
                            "{}  {n} value(s) differ from PostgreSQL's own rendering (see the verify report)",
                            if md { "  - " } else { "  " },
                        );
                    }
                }
            }
            None => {
                let _ = writeln!(s, "{}", self.not_verified());
            }
        }
        for (title, list) in [
            ("Rejected rows by rule", &self.rejects),
            ("Warnings by rule", &self.warnings),
        ] {
            h(s, title);
            if list.is_empty() {
                let _ = writeln!(s, "none");
            }
            for r in list {
                let _ = writeln!(
                    s,
                    "{}{} {} ({}): {} rows; e.g. {}",
                    if md { "- " } else { "  " },
                    r.entity,
                    r.rule,
                    r.stage,
                    r.rows,
                    r.examples
                        .iter()
                        .map(|(k, m)| if md {
                            format!("{}: {}", md_esc(k), md_esc(m))
                        } else {
                            format!("{k}: {m}")
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
        }
        h(s, "Configuration");
        let config = serde_json::to_string_pretty(&self.run.config).unwrap_or_default();
        if md {
            // Fenced, and no fence inside can end it.
            let _ = writeln!(s, "```json\n{}\n```", config.replace("```", "`\u{200b}``"));
        } else {
            let _ = writeln!(s, "{config}");
        }
    }

    pub fn render_markdown(&self) -> String {
        let r = &self.run;
        let mut s = format!(
            "# cutover run {}\n\n- target: {}\n- started {}, finished {}\n- status: **{}**, success rate {:.2}%{}\n\n",
            r.run_id,
            r.target,
            r.started_at,
            r.finished_at,
            r.status,
            r.success_rate,
            if r.dry_run { " (dry run)" } else { "" }
        );
        s.push_str("| entity | read | written | rejected | warnings | skipped | retried | duration | rows/s | success | state |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for e in &r.entities {
            let (_, state) = entity_ok(r, self.verification.as_ref(), &e.name);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2}% | {} |",
                e.name,
                e.read,
                e.written,
                e.rejected,
                e.warnings,
                e.skipped,
                e.retried,
                format_ms(e.duration_ms),
                e.rows_per_sec,
                e.success_rate,
                state
            );
        }
        self.append_details(&mut s, true);
        s
    }

    /// One self-contained HTML page: summary, charts (inline SVG), tables.
    pub fn render_html(&self) -> String {
        let r = &self.run;
        let mut h = String::new();
        let overall_ok =
            r.status == "completed" && self.verification.as_ref().is_none_or(|v| v["ok"] == true);
        let _ = write!(
            h,
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>cutover run {id}</title>
<style>
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1b1b;max-width:1100px}}
h1{{font-size:22px;margin:0 0 4px}} h2{{font-size:17px;margin:28px 0 8px}}
.muted{{color:#666}} .badge{{display:inline-block;padding:3px 10px;border-radius:12px;color:#fff;font-weight:600}}
.ok{{background:#2e7d32}} .bad{{background:#c62828}}
.chips span{{display:inline-block;margin:4px 6px 0 0;padding:6px 10px;border-radius:6px;color:#fff;font-size:13px}}
table{{border-collapse:collapse;width:100%;font-size:13px}} th,td{{border-bottom:1px solid #ddd;padding:5px 8px;text-align:right}}
th:first-child,td:first-child{{text-align:left}} td.l{{text-align:left}}
.cards{{display:flex;gap:12px;flex-wrap:wrap}} .card{{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:120px}}
.card b{{display:block;font-size:22px}} pre{{background:#f6f6f6;padding:10px;font-size:12px;overflow:auto}}
</style></head><body>
<h1>cutover run {id}</h1>
<div class="muted">{target} · {start} → {end}{dry}</div>
<p><span id="overall" class="badge {cls}">{status}</span> success rate <b id="success-rate">{rate:.2}%</b></p>
"#,
            id = esc(&r.run_id),
            target = esc(&r.target),
            start = esc(&r.started_at),
            end = esc(&r.finished_at),
            dry = if r.dry_run {
                " · dry run: nothing was written"
            } else {
                ""
            },
            cls = if overall_ok { "ok" } else { "bad" },
            status = esc(&r.status),
            rate = r.success_rate,
        );
        let t = &r.totals;
        let _ = write!(
            h,
            r#"<div class="cards"><div class="card">read<b id="total-read">{}</b></div><div class="card">written<b id="total-written">{}</b></div><div class="card">rejected<b id="total-rejected">{}</b></div><div class="card">warnings<b>{}</b></div><div class="card">retried<b>{}</b></div><div class="card">duration<b>{}</b></div></div>"#,
            t.read,
            t.written,
            t.rejected,
            t.warnings,
            t.retried,
            format_ms(t.duration_ms)
        );
        h.push_str(r#"<h2>Entities</h2><div class="chips">"#);
        for e in &r.entities {
            let (ok, state) = entity_ok(r, self.verification.as_ref(), &e.name);
            let _ = write!(
                h,
                r#"<span class="entity-chip" style="background:{}" title="{}">{}</span>"#,
                if ok { "#2e7d32" } else { "#c62828" },
                esc(&state),
                esc(&e.name)
            );
        }
        h.push_str("</div>");

        // Chart 1: written and rejected per entity (horizontal stacked bars).
        let max = r.entities.iter().map(|e| e.read).max().unwrap_or(1).max(1) as f64;
        let row_h = 26.0;
        let width = 1000.0;
        let label_w = 190.0;
        let bar_w = width - label_w - 120.0;
        let height = row_h * r.entities.len() as f64 + 30.0;
        let _ = write!(
            h,
            r#"<h2>Written and rejected per entity</h2><svg id="chart-entities" width="{width}" height="{height}" viewBox="0 0 {width} {height}">"#
        );
        for (i, e) in r.entities.iter().enumerate() {
            let y = 10.0 + i as f64 * row_h;
            let ww = bar_w * e.written as f64 / max;
            let rw = (bar_w * e.rejected as f64 / max).max(if e.rejected > 0 { 3.0 } else { 0.0 });
            let _ = write!(
                h,
                r##"<text x="0" y="{ty}" font-size="13">{name}</text><rect class="bar-written" x="{label_w}" y="{y}" width="{ww:.1}" height="18" fill="#2e7d32"/><rect class="bar-rejected" x="{rx:.1}" y="{y}" width="{rw:.1}" height="18" fill="#c62828"/><text x="{tx:.1}" y="{ty}" font-size="12">{written} / {rejected}</text>"##,
                ty = y + 14.0,
                name = esc(&e.name),
                rx = label_w + ww,
                tx = label_w + ww + rw + 6.0,
                written = e.written,
                rejected = e.rejected,
            );
        }
        h.push_str("</svg>");

        // Chart 2: throughput over the run (rows written per second between samples).
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
        let pts: Vec<String> = series
            .iter()
            .map(|(t, v)| {
                format!(
                    "{:.1},{:.1}",
                    50.0 + (cw - 70.0) * t / tmax,
                    ch - 30.0 - (ch - 50.0) * v / vmax
                )
            })
            .collect();
        let _ = write!(
            h,
            r##"<h2>Throughput over the run</h2><svg id="chart-throughput" width="{cw}" height="{ch}" viewBox="0 0 {cw} {ch}"><line x1="50" y1="{base}" x2="{xend}" y2="{base}" stroke="#999"/><line x1="50" y1="20" x2="50" y2="{base}" stroke="#999"/><text x="0" y="28" font-size="11">{vmax:.0}/s</text><text x="{xend}" y="{tl}" font-size="11" text-anchor="end">{tmax:.1}s</text><polyline id="throughput-line" fill="none" stroke="#1565c0" stroke-width="3" points="{points}"/></svg>"##,
            base = ch - 30.0,
            xend = cw - 20.0,
            tl = ch - 12.0,
            points = pts.join(" ")
        );

        // Tables.
        h.push_str(r#"<h2>Per entity</h2><table id="entities"><tr><th>entity</th><th>read</th><th>written</th><th>rejected</th><th>warnings</th><th>skipped</th><th>retried</th><th>duration</th><th>rows/s</th><th>success</th><th>state</th></tr>"#);
        for e in &r.entities {
            let (_, state) = entity_ok(r, self.verification.as_ref(), &e.name);
            let _ = write!(
                h,
                r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.2}%</td><td class="l">{}</td></tr>"#,
                esc(&e.name),
                e.read,
                e.written,
                e.rejected,
                e.warnings,
                e.skipped,
                e.retried,
                format_ms(e.duration_ms),
                e.rows_per_sec,
                e.success_rate,
                esc(&state)
            );
        }
        h.push_str("</table>");
        for (title, list) in [
            ("Rejected rows by rule", &self.rejects),
            ("Warnings by rule", &self.warnings),
        ] {
            let _ = write!(h, "<h2>{title}</h2>");
            if list.is_empty() {
                h.push_str("<p class=\"muted\">none</p>");
                continue;
            }
            h.push_str("<table><tr><th>entity</th><th>rule</th><th>stage</th><th>rows</th><th>examples</th></tr>");
            for c in list {
                let ex = c
                    .examples
                    .iter()
                    .map(|(k, m)| format!("{}: {}", esc(k), esc(m)))
                    .collect::<Vec<_>>()
                    .join("<br>");
                let _ = write!(
                    h,
                    r#"<tr><td>{}</td><td class="l">{}</td><td class="l">{}</td><td>{}</td><td class="l">{ex}</td></tr>"#,
                    esc(&c.entity),
                    esc(&c.rule),
                    esc(&c.stage),
                    c.rows
                );
            }
            h.push_str("</table>");
        }
        h.push_str("<h2>Verification</h2>");
        match &self.verification {
            Some(v) => {
                let _ = write!(
                    h,
                    r#"<p><span class="badge {}">{}</span> <span class="muted">{}</span></p><table><tr><th>entity</th><th>mode</th><th>expected</th><th>target</th><th>missing</th><th>unexpected</th><th>different</th><th>broken refs</th></tr>"#,
                    if v["ok"] == true { "ok" } else { "bad" },
                    if v["ok"] == true {
                        "verified"
                    } else {
                        "differs"
                    },
                    esc(&format!(
                        "{}{}",
                        v["verified_at"].as_str().unwrap_or(""),
                        verified_where(v)
                    ))
                );
                for e in v["entities"].as_array().into_iter().flatten() {
                    let n = |k: &str| problem_count(e, k);
                    // Values that point nowhere (not the number of reference fields).
                    let dangling: u64 = e["broken_references"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r["dangling"].as_u64())
                        .sum();
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(e["entity"].as_str().unwrap_or("")),
                        esc(e["mode"].as_str().unwrap_or("")),
                        e["expected"],
                        e["target"],
                        n("missing"),
                        n("unexpected"),
                        n("different"),
                        dangling
                    );
                }
                h.push_str("</table>");
            }
            None => {
                let _ = write!(h, "<p class=\"muted\">{}</p>", esc(&self.not_verified()));
            }
        }
        if !self.ledger.is_empty() {
            h.push_str("<h2>Ledger</h2><pre>");
            h.push_str(&esc(
                &serde_json::to_string_pretty(&self.ledger).unwrap_or_default()
            ));
            h.push_str("</pre>");
        }
        let _ = writeln!(
            h,
            "<h2>Configuration</h2><pre>{}</pre></body></html>",
            esc(&serde_json::to_string_pretty(&r.config).unwrap_or_default())
        );
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let out = md_esc(key);
        assert!(!out.contains('<') && !out.contains('\n'), "{out}");
        assert_eq!(
            out,
            "&lt;script&gt;alert(1)&lt;/script&gt;\\n\\# heading \\| cell \\*bold\\* \\[link\\](x) \\`code\\`"
        );
    }
}
