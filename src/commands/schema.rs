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
            if let Some(p) = &spec.access.permissions {
                crate::outln!("  permissions [{}]", p.join(", "));
            }
            if let Some(r) = spec.access.row_security {
                crate::outln!("  rowSecurity {r}");
            }
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
                // The constraints from the field's rules of severity error.
                let mut rules = Vec::new();
                if c.constraints.required {
                    rules.push("required".to_string());
                }
                if let Some(e) = &c.constraints.elements {
                    rules.push(format!("elements {}", e.join(", ")));
                }
                for (name, b) in [("min", &c.constraints.min), ("max", &c.constraints.max)] {
                    if let Some(b) = b {
                        rules.push(format!("{name} {b}"));
                    }
                }
                let rules = if rules.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", rules.join("; "))
                };
                crate::outln!("  {:<28} {kind}{size}{array}{json}{rules}", c.key);
            }
            for i in &spec.indexes {
                crate::outln!("  index {} ({}: {})", i.key, i.kind, i.columns.join(", "));
            }
        }
        if let Some((t, _, _)) = &target {
            for change in t.prepare(p).await? {
                crate::outln!("  {change}");
            }
            crate::outln!("  applied");
        }
    }
    Ok(Outcome::Success)
}
