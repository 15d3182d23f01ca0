//! `cutover report`: a run's report as text, Markdown, HTML or JSON; the sign-off.

use anyhow::{Context, Result};

use super::shared::config_for;
use crate::cli::{Cli, Outcome, ReportArgs, ReportFormat};

pub async fn report(cli: &Cli, args: &ReportArgs) -> Result<Outcome> {
    let text = render(cli, args).await?;
    match &args.output {
        Some(path) => {
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            crate::errln!("wrote {}", path.display());
        }
        None => crate::out!("{text}"),
    }
    Ok(Outcome::Success)
}

/// The report `args` ask for, in their format, redacted (`cutover serve` answers with it).
pub(crate) async fn render(cli: &Cli, args: &ReportArgs) -> Result<String> {
    let cfg = config_for(cli, &args.target)?;
    // The runs of the target and database this configuration names (`--target`, `--database`,
    // else the config's default target and its database), as status, history and verify use:
    // a rehearsal into another database is not taken for the sign-off.
    let kind = match args.target.target {
        Some(k) => k,
        None => super::shared::pipeline_target(&cfg, args.pipeline.as_deref())?
            .unwrap_or(cfg.default_target),
    };
    let database = args.target.database.clone().or_else(|| match kind {
        crate::config::TargetKind::Mongodb => cfg.mongodb.as_ref().map(|m| m.database.clone()),
        crate::config::TargetKind::Appwrite => cfg.appwrite.as_ref().map(|a| a.database.clone()),
    });
    let filter = crate::monitor::signoff::RunFilter {
        kind: Some(kind),
        database,
    };
    let mut signoff = crate::monitor::signoff::SignOff::load(
        &cfg.reports_dir,
        &cfg.rejects_dir,
        args.run_id.as_deref(),
        &filter,
    )?;
    // The ledger entries of the run, from the target and database it wrote to (a run of
    // `migrate --database X` is in X's ledger), when that is reachable.
    let kind = args.target.target.or(signoff.run.target_kind());
    let run_target = crate::cli::TargetArgs {
        target: kind,
        database: args
            .target
            .database
            .clone()
            .or_else(|| crate::monitor::signoff::run_database(&signoff.run.target)),
    };
    let cfg = config_for(cli, &run_target).unwrap_or(cfg);
    if let Ok((_, ledger, _)) = super::shared::connect_target(&cfg, kind, Default::default()).await
        && let Ok(steps) = ledger.all_steps().await
    {
        let steps: Vec<serde_json::Value> = steps
            .iter()
            .filter_map(|s| serde_json::to_value(s).ok())
            .collect();
        signoff.note_ledger(steps);
        if !signoff.changed_since.is_empty() && args.run_id.is_none() {
            crate::errln!(
                "later runs wrote into its entities without a report of theirs: {}",
                signoff.changed_since.join("; ")
            );
        }
    }
    let text = match args.format {
        ReportFormat::Text => signoff.render_text(),
        ReportFormat::Json => serde_json::to_string_pretty(&signoff)? + "\n",
        ReportFormat::Md => signoff.render_markdown(),
        ReportFormat::Html => signoff.render_html(),
    };
    // The report joins files and ledger records written by any version: redact once more.
    Ok(crate::redact::redact_text(&text))
}
