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
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: a log file or a collector gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
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
            let mut aw = AppwriteTarget::new(client, &a.database, bulk);
            aw.max_transaction_operations = a.max_transaction_operations;
            let target = Target::Appwrite(aw);
            let ledger = Ledger::new(crate::ledger::Store::of(&target), Ledger::APPWRITE_PREFIX);
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
        // The configured pipeline's `target` when it names one (as migrate and status follow).
        (None, None) => default_pipeline_target(&cfg),
    };
    let (t, ledger, _) = connect_target(&cfg, kind, AppwriteTuning::default()).await?;
    Ok((cfg, t, ledger))
}

/// The `target` of the configured pipeline file, if it loads and names one.
pub(crate) fn default_pipeline_target(cfg: &Config) -> Option<crate::config::TargetKind> {
    let args = PipelineArgs {
        pipeline: None,
        mappings: None,
    };
    load_pipeline(cfg, &args).ok()?.spec.target
}

/// The `target` of the pipeline file `path` (else the configured one), if it names one; a
/// pipeline file named that does not load is an error.
pub(crate) fn pipeline_target(
    cfg: &Config,
    path: Option<&std::path::Path>,
) -> Result<Option<crate::config::TargetKind>> {
    match path {
        Some(p) => {
            let args = PipelineArgs {
                pipeline: Some(p.to_path_buf()),
                mappings: None,
            };
            Ok(load_pipeline(cfg, &args)?.spec.target)
        }
        None => Ok(default_pipeline_target(cfg)),
    }
}

pub(crate) fn pipeline_for(cfg: &Config, args: &PipelineArgs) -> Result<Pipeline> {
    load_pipeline(cfg, args)
}

/// The changes applied or reversed on `destination` (any of its collections or tables) since
/// `since` (RFC 3339; the beginning when unknown), as lines naming them and `what` they came
/// after; a command change (collections unknown) is warned about here, not returned.
pub(crate) async fn changes_after(
    ledger: &crate::ledger::Ledger,
    destination: &crate::sink::target::Destination,
    since: Option<&str>,
    what: &str,
) -> Result<Vec<String>> {
    let since = since
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| t.timestamp_millis());
    let collections: std::collections::BTreeSet<String> = destination.parts().into_iter().collect();
    if collections.is_empty() {
        return Ok(Vec::new());
    }
    let collection = destination.to_string();
    let mut out = Vec::new();
    for c in crate::changes::changes_since(ledger, &collections, since).await? {
        if c.uncertain {
            // A command may or may not have touched it: said, not refused (a non-reversible
            // command would otherwise block every restore for good).
            crate::errln!(
                "warning: change {} ({}) runs a command that may have touched {collection} after {what}: if it did, the restore undoes that",
                c.version,
                c.file
            );
            continue;
        }
        let how = if c.applied {
            "applied"
        } else {
            "reversed (the restore would bring its effects back)"
        };
        out.push(format!(
            "change {} ({}) {how} on {} after {what}",
            c.version,
            c.file,
            c.collections.join(", ")
        ));
    }
    Ok(out)
}

/// Goes ahead when nothing blocks, or when told to (`--ignore-changes`, said); else refuses.
pub(crate) fn settle_or_refuse(blocking: Vec<String>, ignore: bool) -> Result<()> {
    if blocking.is_empty() {
        return Ok(());
    }
    if ignore {
        crate::errln!(
            "warning: --ignore-changes: the restore discards what changes did after it, their records unchanged — {}",
            blocking.join("; ")
        );
        return Ok(());
    }
    anyhow::bail!(
        "refusing to restore: it would silently discard what changes did after the run — {}; reverse the applied ones first with `cutover changes down` (`--to VERSION` or `--steps N`), then restore — or go ahead anyway with --ignore-changes",
        blocking.join("; ")
    )
}

/// The lock line of `status` and `changes status`: held, free because its holder's process is
/// gone (before its expiry time: said why, not "expired" — adv28 R5), expired, or free.
pub fn lock_line(holder: Option<&crate::ledger::lock::LockHolder>) -> String {
    match holder {
        Some(h) if !h.expired => format!("lock: held by {h}"),
        Some(h) if h.process_gone => {
            format!("lock: free — the process holding it is gone (last held by {h})")
        }
        Some(h) => format!("lock: expired (last held by {h})"),
        None => "lock: free".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::sink::appwrite::AppwriteError;
    use crate::sink::mongodb::MongoError;
    use crate::sink::target::SinkError;

    fn io(text: &str) -> std::io::Error {
        std::io::Error::other(text.to_string())
    }

    /// How `main` prints an error: the contexts and the error, `a: b: c`.
    fn printed(err: anyhow::Error) -> String {
        format!("{err:#}")
    }

    #[test]
    fn an_error_says_each_cause_once() {
        let err = anyhow::Error::new(crate::config::ConfigError::Read {
            path: "cutover.toml".into(),
            cause: io("connection refused"),
        })
        .context("cannot migrate");
        assert_eq!(
            printed(err),
            "cannot migrate: cannot read config file cutover.toml: connection refused"
        );
    }

    #[test]
    fn a_driver_error_is_said_in_its_readable_form_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "expected to read 219 bytes, got 21 bytes at EOF",
        );
        let err = anyhow::Error::new(crate::source::postgres::SourceError::Query {
            context: "read patients".into(),
            cause: sqlx::Error::Io(io),
        });
        assert_eq!(
            printed(err),
            "source query failed (read patients): the source connection was closed (backend terminated?)"
        );
    }

    /// An error that says its cause in its message does not hand it out as `source()` too:
    /// whoever prints the chain would say it twice.
    #[test]
    fn no_error_both_says_and_hands_out_its_cause() {
        let mongo = || mongodb::error::Error::from(io("connection reset by peer"));
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(crate::config::ConfigError::Read {
                path: "c.toml".into(),
                cause: io("x"),
            }),
            Box::new(crate::mapping::MappingError::Read {
                path: "mappings".into(),
                cause: io("x"),
            }),
            Box::new(crate::pipeline::PipelineError::Read {
                path: "p.toml".into(),
                cause: io("x"),
            }),
            Box::new(crate::changes::file::FileError::Read {
                path: "c.toml".into(),
                cause: io("x"),
            }),
            Box::new(crate::source::postgres::SourceError::Connect {
                url: "postgres://h/db".into(),
                cause: sqlx::Error::Io(io("x")),
            }),
            Box::new(MongoError::Command {
                op: "insert".into(),
                cause: mongo(),
            }),
            Box::new(crate::ledger::StoreError::from(mongo())),
            Box::new(crate::changes::ChangesError::from(
                crate::ledger::StoreError::from(mongo()),
            )),
            Box::new(crate::changes::ChangesError::from(
                crate::changes::ops::OpError::from(mongo()),
            )),
            Box::new(crate::pipeline::run::RunError::Io {
                path: "rejects".into(),
                cause: io("x"),
            }),
            Box::new(crate::pipeline::run::RunError::BatchFailed {
                entity: "e".into(),
                rows: 1,
                attempts: 1,
                cause: Box::new(SinkError::Appwrite(AppwriteError::Transport {
                    message: "x".into(),
                })),
            }),
            Box::new(crate::pipeline::run::RunError::from(MongoError::Connect {
                uri: "mongodb://h".into(),
                cause: mongo(),
            })),
        ];
        for e in errors {
            assert!(e.source().is_none(), "{e} hands out its cause");
        }
    }
}
