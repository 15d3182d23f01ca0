//! What the subcommands share: configuration, logging, error text, the target and its ledger.

use anyhow::{Context, Result};

use crate::cli::{Cli, LogFormat, PipelineArgs, TargetArgs};
use crate::config::{Config, Overrides, ProcessEnv, TargetKind};
use crate::ledger::Ledger;
use crate::pipeline::Pipeline;
use crate::sink::appwrite::AppwriteClient;
use crate::sink::mongodb::MongoTarget;
use crate::sink::target::{AppwriteTarget, Target};

/// The configuration, with `--database` applied (for commands that may run without a target).
pub(crate) fn config_for(
    cli: &Cli,
    target: &crate::cli::TargetArgs,
) -> Result<crate::config::Config> {
    let cfg = crate::config::Config::load(
        cli.config.as_deref(),
        &crate::config::ProcessEnv,
        &crate::config::Overrides {
            mongodb_database: target.database.clone(),
            appwrite_database: target.database.clone(),
            ..Default::default()
        },
    )?;
    cfg.register_secrets();
    Ok(cfg)
}

/// An error and its causes as one line, `a: b: c`, leaving out a cause whose text the line already
/// holds (many errors here print their source themselves). A driver error (sqlx, MongoDB) ends the
/// line: its readable text is what the errors wrapping it print, and its own `Display` and causes
/// carry PostgreSQL source lines, byte counts and raw BSON.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let (t, last) = if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            (crate::source::postgres::error_text(e), true)
        } else if let Some(e) = cause.downcast_ref::<mongodb::error::Error>() {
            (crate::sink::mongodb::error_text(e), true)
        } else {
            (cause.to_string(), false)
        };
        if !text.contains(&t) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&t);
        }
        if last {
            break;
        }
    }
    text
}

/// A bare level (`debug`) applies to cutover's own logs; the libraries under it (drivers, HTTP,
/// TLS) stay at `warn` so their chatter does not bury the run's phases. A filter with directives
/// (`cutover=debug,sqlx=info`) is taken as written.
pub(crate) fn level_filter(level: &str) -> String {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let l = level.trim().to_ascii_lowercase();
    if LEVELS.contains(&l.as_str()) {
        match l.as_str() {
            "off" | "error" => l,
            _ => format!("warn,cutover={l}"),
        }
    } else {
        level.to_string()
    }
}

pub fn init_logging(cli: &Cli) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match &cli.log_level {
        Some(l) => EnvFilter::try_new(level_filter(l))
            .with_context(|| format!("invalid --log-level `{l}`"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::redact::RedactingWriter(std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

pub(crate) fn load_config(cli: &Cli, o: Overrides) -> Result<Config> {
    let cfg = Config::load(cli.config.as_deref(), &ProcessEnv, &o)?;
    cfg.register_secrets();
    Ok(cfg)
}

pub(crate) fn load_pipeline(cfg: &Config, args: &PipelineArgs) -> Result<Pipeline> {
    let path = args
        .pipeline
        .clone()
        .unwrap_or_else(|| cfg.pipeline.clone());
    let mut p = Pipeline::load(&path, &cfg.mappings_dir)?;
    if let Some(dir) = &args.mappings {
        let set = crate::mapping::MappingSet::load_dir(dir)?;
        p = Pipeline::new(&path, p.spec, set)?;
    }
    Ok(p)
}

/// How to reach an Appwrite target beyond the config.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AppwriteTuning {
    pub rate: Option<(u32, u32)>,
    pub bulk_rows: usize,
    pub retries: Option<u32>,
}

/// The target `--target` names (else the config's default), its ledger and a name to show.
pub(crate) async fn connect_target(
    cfg: &Config,
    kind: Option<TargetKind>,
    tuning: AppwriteTuning,
) -> Result<(Target, Ledger, String)> {
    match kind.unwrap_or(cfg.default_target) {
        TargetKind::Mongodb => {
            let mongo = cfg.require_mongodb()?;
            let t = MongoTarget::connect(&mongo.uri, &mongo.database).await?;
            let target = Target::Mongo(t);
            let ledger = Ledger::new(crate::ledger::Store::of(&target), &mongo.ledger_prefix);
            let name = target.display_name();
            Ok((target, ledger, name))
        }
        TargetKind::Appwrite => {
            let a = cfg.require_appwrite()?;
            let mut client = AppwriteClient::new(
                &a.endpoint,
                &a.project,
                a.api_key.as_deref().unwrap_or_default(),
                tuning.rate,
            )?;
            if let Some(r) = tuning.retries {
                client.policy.max_retries = r;
            }
            let bulk = if tuning.bulk_rows == 0 {
                crate::sink::appwrite::rows::MAX_BULK_ROWS
            } else {
                tuning.bulk_rows
            };
            let target = Target::Appwrite(AppwriteTarget::new(client, &a.database, bulk));
            let ledger = Ledger::new(crate::ledger::Store::of(&target), "cutover_");
            let name = target.display_name();
            Ok((target, ledger, name))
        }
    }
}

/// The target and its ledger, for the ledger commands.
pub(crate) async fn open_ledger(
    cli: &Cli,
    target: &TargetArgs,
) -> Result<(Config, Target, Ledger)> {
    open_ledger_for(cli, target, None).await
}

/// The target (`--target`, else the pipeline's `target`, else the config's default) and its
/// ledger, for commands that read a pipeline.
pub(crate) async fn open_ledger_for(
    cli: &Cli,
    target: &TargetArgs,
    pipeline: Option<&PipelineArgs>,
) -> Result<(Config, Target, Ledger)> {
    let cfg = load_config(
        cli,
        Overrides {
            mongodb_database: target.database.clone(),
            appwrite_database: target.database.clone(),
            ..Default::default()
        },
    )?;
    let kind = match (target.target, pipeline) {
        (Some(k), _) => Some(k),
        (None, Some(args)) => load_pipeline(&cfg, args)?.spec.target,
        (None, None) => None,
    };
    let (t, ledger, _) = connect_target(&cfg, kind, AppwriteTuning::default()).await?;
    Ok((cfg, t, ledger))
}

pub(crate) fn pipeline_for(cfg: &Config, args: &PipelineArgs) -> Result<Pipeline> {
    load_pipeline(cfg, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("ledger write failed: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn error_text_says_each_cause_once() {
        let inner = std::io::Error::other("connection refused");
        let err = anyhow::Error::new(Outer { source: inner }).context("cannot migrate");
        assert_eq!(
            error_text(&err),
            "cannot migrate: ledger write failed: connection refused"
        );
    }

    #[test]
    fn error_text_stops_at_a_driver_error() {
        let io = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "expected to read 219 bytes, got 21 bytes at EOF",
        );
        let err = anyhow::Error::new(crate::source::postgres::SourceError::Query {
            context: "read patients".into(),
            source: sqlx::Error::Io(io),
        });
        assert_eq!(
            error_text(&err),
            "source query failed (read patients): the source connection was closed (backend terminated?)"
        );
    }
}
