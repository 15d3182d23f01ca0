//! `cutover plan`: what a run would do, without running it.

use anyhow::Result;

use super::shared::{load_config, load_pipeline};
use crate::cli::{Cli, Outcome, PlanArgs};
use crate::config::Overrides;
use crate::pipeline::run::{self};
use crate::source::SourceSession;

pub async fn plan(cli: &Cli, args: &PlanArgs) -> Result<Outcome> {
    let cfg = load_config(cli, Overrides::default())?;
    let pipeline = load_pipeline(&cfg, &args.pipeline)?;
    let steps = pipeline.select(&args.names)?;
    crate::outln!(
        "pipeline {} ({})",
        pipeline.spec.name,
        pipeline.path.display()
    );
    let prereqs = pipeline.prerequisites(&steps);
    if !prereqs.is_empty() {
        crate::outln!(
            "requires already migrated: {}",
            prereqs.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    // With a source configured, check each mapping against it and show row counts.
    let mut session = match cfg.source_url.as_deref() {
        Some(url) => Some(SourceSession::open(url).await?),
        None => None,
    };
    let mut current_stage = String::new();
    // Every mapping that does not compile against the source is listed, not only the first.
    let mut blocking = Vec::new();
    for (n, s) in steps.iter().enumerate() {
        if s.stage != current_stage {
            crate::outln!("stage {}", s.stage);
            current_stage = s.stage.clone();
        }
        let m = pipeline.mappings.get(&s.entity)?;
        let embeds: Vec<&str> = m.spec.embeds.iter().map(|e| e.path.as_str()).collect();
        let mut line = format!(
            "  {:>2}. {:<24} → {:<24} from {}",
            n + 1,
            s.entity,
            m.collection(),
            m.path.display()
        );
        if !embeds.is_empty() {
            line.push_str(&format!(" (embeds {})", embeds.join(", ")));
        }
        if let Some(session) = session.as_mut() {
            match run::compile_plans(&pipeline, std::slice::from_ref(s), session).await {
                Ok(plans) => {
                    let rows = session.count(&plans[0].relation).await?;
                    line.push_str(&format!(", {rows} rows"));
                }
                // A source error (a missing table) leaves the snapshot's transaction aborted:
                // nothing after it could be described, so it ends the command.
                Err(run::RunError::Mapping(e)) => {
                    line.push_str(", BLOCKED (see below)");
                    blocking.push(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        crate::outln!("{line}");
    }
    if let Some(s) = session {
        s.close().await;
    }
    for e in &blocking {
        println!("BLOCKING: {e}");
    }
    Ok(if blocking.is_empty() {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}
