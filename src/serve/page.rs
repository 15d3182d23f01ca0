//! `GET /`: the status page for the maintenance window — one self-contained HTML page (its style
//! and script inline, nothing fetched from elsewhere) that polls the API every second: the
//! pipeline's stages with each entity's state, a progress bar per entity of the newest run, the
//! pending changes, the lock and links to the reports.
//!
//! The page needs the token like every route: a browser is challenged for HTTP Basic and sends
//! the token as the password (any user name) with the page and, from its credential cache, with
//! the page's own requests and the report links. Its requests are built from `location.origin`
//! so a page opened as `http://user:token@host/` can still fetch (a URL with credentials in it
//! is refused by `fetch`).

use axum::http::header;
use axum::response::IntoResponse;
use maud::{DOCTYPE, PreEscaped, html};

const STYLE: &str = r#"
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.5rem; }
table { border-collapse: collapse; } td, th { padding: .2rem .6rem; text-align: left; }
th { border-bottom: 1px solid #999; }
.bar { width: 16rem; height: .9rem; background: #ddd; display: inline-block; }
.fill { height: 100%; background: #2e7d32; }
.state-running { color: #1565c0; } .state-completed, .state-applied { color: #2e7d32; }
.state-failed, .state-interrupted { color: #c62828; }
#error { color: #c62828; }
"#;

const SCRIPT: &str = r#"
"use strict";
const $ = (id) => document.getElementById(id);
async function api(path) {
  const r = await fetch(new URL(path, location.origin), { credentials: "same-origin" });
  if (r.status === 401) { throw new Error("the API token was not accepted: reload the page and give it as the password"); }
  if (!r.ok) { const b = await r.json().catch(() => ({})); throw new Error(b.message || r.status); }
  return r.json();
}
function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; }
function fill(tbody, rows) { tbody.replaceChildren(...rows); }
async function stages() {
  const p = await api("/api/pipeline");
  $("pipeline-name").textContent = p.pipeline;
  fill($("stages"), p.stages.flatMap((s) => s.entities.map((e) => {
    const tr = document.createElement("tr");
    cell(tr, s.name); cell(tr, e.entity); cell(tr, e.state, "state-" + e.state);
    return tr;
  })));
}
async function changes() {
  const m = await api("/api/migrations/status");
  $("changes-summary").textContent = m.summary.applied + " applied, " + m.summary.pending + " pending, " + m.summary.failed + " failed" + (m.summary.inProgress ? ", " + m.summary.inProgress + " in progress" : "");
  fill($("pending"), m.inProgress.concat(m.failed, m.pending).map((c) => {
    const tr = document.createElement("tr");
    cell(tr, c.version); cell(tr, c.name); cell(tr, c.state, "state-" + c.state);
    return tr;
  }));
  $("startup").textContent = m.startupError ? ("applying changes at start failed: " + m.startupError) : "";
  $("lock").textContent = m.locked ? ("held by " + m.locked.by + " since " + m.locked.since + ", expires " + m.locked.expiresAt) : "free";
}
async function runs() {
  const runs = await api("/api/runs?limit=10");
  fill($("runs"), runs.runs.map((r) => {
    const tr = document.createElement("tr");
    cell(tr, r.run_id); cell(tr, r.status, "state-" + r.status);
    // A run still going has no report yet (its links would answer 404).
    const going = r.status === "running";
    const td = cell(tr, going ? "report when it ends" : r.hasReport === false ? "no report (the run was killed)" : "");
    for (const f of going || r.hasReport === false ? [] : ["json", "md", "html"]) {
      const a = document.createElement("a");
      // From the origin: a page opened with the credentials in its URL must not repeat them.
      a.href = new URL("/api/runs/" + encodeURIComponent(r.run_id) + "/report?format=" + f, location.origin).href;
      a.textContent = f; a.style.marginRight = ".5rem"; td.appendChild(a);
    }
    return tr;
  }));
  // The run going now, if one is (a dry run started beside it is not it); else the newest.
  const newest = runs.runs.find((r) => r.status === "running" && !r.dry_run) || runs.runs[0];
  if (!newest) return;
  const run = await api("/api/runs/" + encodeURIComponent(newest.run_id));
  $("run-id").textContent = run.runId;
  $("run-status").textContent = run.status;
  $("run-status").className = "state-" + run.status;
  fill($("progress"), run.entities.map((e) => {
    const tr = document.createElement("tr");
    tr.id = "entity-" + e.entity;
    cell(tr, e.entity); cell(tr, e.status, "state-" + e.status);
    const pct = e.total > 0 ? Math.min(100, Math.round(100 * e.read / e.total)) : (e.status === "completed" ? 100 : 0);
    const td = cell(tr, "");
    const bar = document.createElement("span"); bar.className = "bar";
    const f = document.createElement("div"); f.className = "fill"; f.style.width = pct + "%";
    bar.appendChild(f); td.appendChild(bar);
    cell(tr, String(e.read)).className = "read";
    cell(tr, String(e.written)).className = "written";
    cell(tr, String(e.rejected)).className = "rejected";
    cell(tr, String(e.total));
    cell(tr, String(e.rowsPerSecond));
    cell(tr, e.etaSeconds == null ? "-" : e.etaSeconds + " s");
    return tr;
  }));
}
// Each part on its own: a server without a pipeline file still shows its changes and lock.
async function refresh() {
  const results = await Promise.allSettled([stages(), changes(), runs()]);
  const errors = results.filter((r) => r.status === "rejected").map((r) => String(r.reason.message || r.reason));
  $("error").textContent = errors.join("; ");
  $("updated").textContent = new Date().toISOString();
}
refresh();
setInterval(refresh, 1000);
"#;

pub async fn page() -> impl IntoResponse {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "cutover status" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "cutover — " span id="pipeline-name" { "…" } }
                p { "updated " span id="updated" { "never" } " " span id="error" {} }
                h2 { "Run " span id="run-id" { "-" } " " span id="run-status" {} }
                table {
                    thead { tr { th { "entity" } th { "state" } th { "progress" } th { "read" } th { "written" } th { "rejected" } th { "total" } th { "rows/s" } th { "ETA" } } }
                    tbody id="progress" {}
                }
                h2 { "Stages" }
                table {
                    thead { tr { th { "stage" } th { "entity" } th { "state" } } }
                    tbody id="stages" {}
                }
                h2 { "Changes: " span id="changes-summary" { "…" } }
                p id="startup" class="state-failed" {}
                table {
                    thead { tr { th { "version" } th { "name" } th { "state" } } }
                    tbody id="pending" {}
                }
                h2 { "Lock" }
                p id="lock" { "…" }
                h2 { "Runs and reports" }
                table {
                    thead { tr { th { "run" } th { "status" } th { "reports" } } }
                    tbody id="runs" {}
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            ),
        ],
        markup.into_string(),
    )
}
