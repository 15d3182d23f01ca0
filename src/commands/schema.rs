//! `cutover schema show | apply`: the Appwrite tables a pipeline needs.

use anyhow::Result;

use super::shared::{AppwriteTuning, connect_target, load_config, load_pipeline};
use crate::cli::{Cli, Outcome, SchemaCommand};
use crate::config::Overrides;
use crate::config::TargetKind;
use crate::pipeline::run::{self};
use crate::source::SourceSession;

pub async fn schema(cli: &Cli, cmd: &SchemaCommand) -> Result<Outcome> {
    let (args, apply) = match cmd {
        SchemaCommand::Show(a) => (a, false),
        SchemaCommand::Apply(a) => (a, true),
    };
    if args.target != TargetKind::Appwrite {
        anyhow::bail!("MongoDB needs no schema: collections are created by the first write");
    }
    let cfg = load_config(cli, Overrides::default())?;
    let pipeline = load_pipeline(&cfg, &args.pipeline)?;
    let steps = pipeline.select(&args.names)?;
    let mut session = SourceSession::open(cfg.require_source()?).await?;
    let plans = run::compile_plans(&pipeline, &steps, &mut session).await?;
    session.close().await;
    let target = if apply {
        Some(connect_target(&cfg, Some(TargetKind::Appwrite), AppwriteTuning::default()).await?)
    } else {
        None
    };
    for p in &plans {
        if p.appwrite_users.is_some() {
            crate::outln!("{}: Appwrite users (Auth), no table", p.entity);
            continue;
        }
        let spec = crate::sink::appwrite::schema::table_spec(p);
        let children = crate::sink::appwrite::schema::child_tables(p);
        let tables = std::iter::once((spec, format!("({})", p.entity))).chain(
            children
                .into_iter()
                .map(|c| (c.table, format!("(child table of {}: {})", p.entity, c.key))),
        );
        for (spec, what) in tables {
            crate::outln!("table {} {what}", spec.id);
            for c in &spec.columns {
                let (kind, body) = c.request();
                let size = body
                    .get("size")
                    .map(|s| format!("({s})"))
                    .unwrap_or_default();
                let json = match c.kind {
                    crate::sink::appwrite::schema::Kind::Json => " JSON text",
                    _ => "",
                };
                let array = if c.array { "[]" } else { "" };
                crate::outln!("  {:<28} {kind}{size}{array}{json}", c.key);
            }
            for i in &spec.indexes {
                crate::outln!("  index {} ({}: {})", i.key, i.kind, i.columns.join(", "));
            }
        }
        if let Some((t, _, _)) = &target {
            t.prepare(p).await?;
            crate::outln!("  applied");
        }
    }
    Ok(Outcome::Success)
}
