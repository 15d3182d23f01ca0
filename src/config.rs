//! `cutover.toml` + environment + flags → one checked [`Config`]. No I/O beyond reading the file
//! (and the API key file named in it); connections are opened elsewhere.
//!
//! Precedence: flags over environment over file. The Appwrite API key never comes from the config
//! text itself: only from `APPWRITE_API_KEY` or the file named by `target.appwrite.api_key_file`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which kind of target a run writes to: named by `--target` (cli), `target` in a pipeline file
/// and `target.default` in the config, all spelled `mongodb` or `appwrite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Mongodb,
    Appwrite,
}

impl TargetKind {
    /// The name the files and flags use.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Mongodb => "mongodb",
            TargetKind::Appwrite => "appwrite",
        }
    }

    pub fn from_name(name: &str) -> Option<TargetKind> {
        [TargetKind::Mongodb, TargetKind::Appwrite]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// Errors found while loading or checking the configuration; each names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
    /// A value given by a flag or the environment, not by the file.
    #[error("{from}: {message}")]
    Given { from: String, message: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    source: FileSource,
    #[serde(default)]
    target: FileTarget,
    #[serde(default)]
    run: FileRun,
    #[serde(default)]
    backups: FileBackups,
    #[serde(default)]
    files: FileFiles,
    #[serde(default)]
    serve: FileServe,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServe {
    /// The file holding `cutover serve`'s API token (never the token itself).
    token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFiles {
    /// The directory the paths of file mappings are relative to.
    root: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackups {
    /// Backups kept per collection after each successful run (default: all).
    keep: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSource {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTarget {
    /// Which target `migrate` writes to when `--target` is not given.
    default: Option<String>,
    mongodb: Option<FileMongo>,
    appwrite: Option<FileAppwrite>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMongo {
    uri: Option<String>,
    database: Option<String>,
    ledger_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAppwrite {
    endpoint: Option<String>,
    project: Option<String>,
    database: Option<String>,
    api_key_file: Option<PathBuf>,
    /// Operations one TablesDB transaction may stage (the Appwrite plan's limit).
    max_transaction_operations: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRun {
    batch_size: Option<usize>,
    batch_bytes: Option<usize>,
    concurrency: Option<usize>,
    file_concurrency: Option<usize>,
    reports_dir: Option<PathBuf>,
    rejects_dir: Option<PathBuf>,
    pipeline: Option<PathBuf>,
    mappings_dir: Option<PathBuf>,
}

/// Values given on the command line; `None` means "not given". (No `Debug`: it holds URLs.)
#[derive(Default, Clone)]
pub struct Overrides {
    pub source_url: Option<String>,
    pub mongodb_uri: Option<String>,
    pub mongodb_database: Option<String>,
    pub appwrite_database: Option<String>,
    pub batch_size: Option<usize>,
    pub concurrency: Option<usize>,
    pub file_concurrency: Option<usize>,
    pub pipeline: Option<PathBuf>,
    pub mappings_dir: Option<PathBuf>,
    pub files_root: Option<PathBuf>,
}

/// Where the environment comes from; tests pass a map instead of the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

#[derive(Clone)]
pub struct MongoConfig {
    pub uri: String,
    pub database: String,
    pub ledger_prefix: String,
}

#[derive(Clone)]
pub struct AppwriteConfig {
    pub endpoint: String,
    pub project: String,
    pub database: String,
    pub api_key: Option<String>,
    /// The most row operations a change with `transaction = true` may stage in one TablesDB
    /// transaction (`[target.appwrite] max_transaction_operations` or
    /// `APPWRITE_MAX_TRANSACTION_OPERATIONS`; default [`DEFAULT_MAX_TRANSACTION_OPERATIONS`]).
    pub max_transaction_operations: usize,
}

/// Appwrite's smallest plan limit of operations per transaction (Free 100, Pro 1,000, Scale
/// 2,500).
pub const DEFAULT_MAX_TRANSACTION_OPERATIONS: usize = 100;

impl std::fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig")
            .field("uri", &crate::redact::redact_url(&self.uri))
            .field("database", &self.database)
            .field("ledger_prefix", &self.ledger_prefix)
            .finish()
    }
}

impl std::fmt::Debug for AppwriteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppwriteConfig")
            .field("endpoint", &crate::redact::redact_url(&self.endpoint))
            .field("project", &self.project)
            .field("database", &self.database)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field(
                "max_transaction_operations",
                &self.max_transaction_operations,
            )
            .finish()
    }
}

/// Where a setting came from, for the operator to see which one won.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Origin {
    Flag(&'static str),
    Env(&'static str),
    File,
    #[default]
    Default,
}

impl Origin {
    fn describe(&self, file: Option<&Path>) -> String {
        match self {
            Origin::Flag(f) => format!("flag {f}"),
            Origin::Env(v) => format!("environment {v}"),
            Origin::File => format!(
                "file {}",
                file.map(|p| p.display().to_string()).unwrap_or_default()
            ),
            Origin::Default => "default".into(),
        }
    }
}

/// The first of `candidates` that holds a value, with where it came from.
fn first<T>(candidates: Vec<(Option<T>, Origin)>) -> (Option<T>, Origin) {
    candidates
        .into_iter()
        .find(|(v, _)| v.is_some())
        .unwrap_or((None, Origin::Default))
}

/// Where the effective source and targets came from.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    pub source: Origin,
    pub mongodb_uri: Origin,
    pub mongodb_database: Origin,
    pub appwrite_endpoint: Origin,
    pub appwrite_database: Origin,
}

/// The checked configuration of one invocation. Its `Debug` hides credentials.
#[derive(Clone)]
pub struct Config {
    /// Where the source and targets came from (flag, environment, file, default).
    pub origins: Origins,
    /// The file it came from, if any (for messages).
    pub file: Option<PathBuf>,
    pub source_url: Option<String>,
    pub default_target: TargetKind,
    pub mongodb: Option<MongoConfig>,
    pub appwrite: Option<AppwriteConfig>,
    pub batch_size: usize,
    pub batch_bytes: usize,
    pub concurrency: usize,
    /// File uploads in flight in a file stage (`--file-concurrency`, `[run] file_concurrency`).
    pub file_concurrency: usize,
    pub reports_dir: PathBuf,
    pub rejects_dir: PathBuf,
    pub pipeline: PathBuf,
    pub mappings_dir: PathBuf,
    /// `[backups] keep`: after a successful run, prune the run's collections to this many backups
    /// (besides those rollback needs). `None`: keep every backup.
    pub backups_keep: Option<usize>,
    /// The directory the paths of file mappings (`[file]`) are relative to: `--files-root`,
    /// `CUTOVER_FILES_ROOT` or `[files] root` (relative to the file). `None`: none given.
    pub files_root: Option<PathBuf>,
    /// `[serve] token_file` (relative to the config file): where `cutover serve` reads its API
    /// token when CUTOVER_API_TOKEN is not set. The path only; the token is read by `serve`.
    pub api_token_file: Option<PathBuf>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("file", &self.file)
            .field(
                "source_url",
                &self.source_url.as_deref().map(crate::redact::redact_url),
            )
            .field("default_target", &self.default_target)
            .field("mongodb", &self.mongodb)
            .field("appwrite", &self.appwrite)
            .field("batch_size", &self.batch_size)
            .field("batch_bytes", &self.batch_bytes)
            .field("concurrency", &self.concurrency)
            .field("file_concurrency", &self.file_concurrency)
            .field("reports_dir", &self.reports_dir)
            .field("rejects_dir", &self.rejects_dir)
            .field("pipeline", &self.pipeline)
            .field("mappings_dir", &self.mappings_dir)
            .finish()
    }
}

pub const DEFAULT_BATCH_SIZE: usize = 1000;
pub const DEFAULT_BATCH_BYTES: usize = 8 * 1024 * 1024;
pub const DEFAULT_CONCURRENCY: usize = 4;
pub const DEFAULT_FILE_CONCURRENCY: usize = 4;
/// MongoDB refuses messages over 48 MB and commands over 16 MB; batches stay well below.
const MAX_BATCH_BYTES: usize = 15 * 1024 * 1024;

impl Config {
    /// Loads `path` (or `./cutover.toml` when it exists), then applies the environment and the flags.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Env,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let (file, parsed) = match path {
            Some(p) => (Some(p.to_path_buf()), read_file(p)?),
            None => {
                let default = Path::new("cutover.toml");
                if default.exists() {
                    (Some(default.to_path_buf()), read_file(default)?)
                } else {
                    (None, FileConfig::default())
                }
            }
        };
        Self::resolve(file, parsed, env, overrides)
    }

    /// Parses config text (used by tests and by [`Config::load`]).
    pub fn from_str(
        name: &Path,
        text: &str,
        env: &dyn Env,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let parsed = parse_text(name, text)?;
        Self::resolve(Some(name.to_path_buf()), parsed, env, overrides)
    }

    fn resolve(
        file: Option<PathBuf>,
        parsed: FileConfig,
        env: &dyn Env,
        o: &Overrides,
    ) -> Result<Config, ConfigError> {
        let fname = file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<no config file>".to_string());
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: fname.clone(),
            key: key.to_string(),
            message,
        };

        // A value given by a flag or the environment is named as such, not as a file key the
        // file may not even have (adv42 F4).
        let refused = |origin: &Origin, key: &str, message: String| match origin {
            Origin::File | Origin::Default => invalid(key, message),
            other => ConfigError::Given {
                from: other.describe(None),
                message,
            },
        };

        let mut origins = Origins::default();
        // Relative paths in the file are relative to the file, not to the working directory.
        let base = file
            .as_ref()
            .and_then(|f| f.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let in_file = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let (source_url, origin) = first(vec![
            (o.source_url.clone(), Origin::Flag("--source-url")),
            (
                env.var("CUTOVER_SOURCE_URL"),
                Origin::Env("CUTOVER_SOURCE_URL"),
            ),
            (env.var("DATABASE_URL"), Origin::Env("DATABASE_URL")),
            (parsed.source.url, Origin::File),
        ]);
        origins.source = origin.clone();
        if let Some(url) = &source_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            if origin != Origin::File {
                return Err(ConfigError::Given {
                    from: origin.describe(None),
                    message: format!(
                        "the source must be a postgres:// URL, got `{}`",
                        crate::redact::redact_url(url)
                    ),
                });
            }
            return Err(invalid(
                "source.url",
                format!(
                    "expected a postgres:// URL, got `{}`",
                    crate::redact::redact_url(url)
                ),
            ));
        }

        let file_mongo = parsed.target.mongodb.unwrap_or_default();
        let (mongo_uri, origin) = first(vec![
            (o.mongodb_uri.clone(), Origin::Flag("--mongodb-uri")),
            (env.var("MONGODB_URI"), Origin::Env("MONGODB_URI")),
            (file_mongo.uri, Origin::File),
        ]);
        origins.mongodb_uri = origin.clone();
        let mongodb = match mongo_uri {
            Some(uri) => {
                if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
                    return Err(refused(
                        &origin,
                        "target.mongodb.uri",
                        format!(
                            "expected a mongodb:// URL, got `{}`",
                            crate::redact::redact_url(&uri)
                        ),
                    ));
                }
                let (database, origin) = first(vec![
                    (o.mongodb_database.clone(), Origin::Flag("--database")),
                    (
                        env.var("CUTOVER_MONGODB_DATABASE"),
                        Origin::Env("CUTOVER_MONGODB_DATABASE"),
                    ),
                    (file_mongo.database, Origin::File),
                ]);
                origins.mongodb_database = origin.clone();
                let database = database.unwrap_or_else(|| "cutover".to_string());
                validate_mongo_db_name(&database)
                    .map_err(|m| refused(&origin, "target.mongodb.database", m))?;
                Some(MongoConfig {
                    uri,
                    database,
                    ledger_prefix: file_mongo
                        .ledger_prefix
                        .unwrap_or_else(|| "cutover_".to_string()),
                })
            }
            None => None,
        };

        let file_aw = parsed.target.appwrite.unwrap_or_default();
        let (endpoint, origin) = first(vec![
            (
                env.var("APPWRITE_ENDPOINT"),
                Origin::Env("APPWRITE_ENDPOINT"),
            ),
            (file_aw.endpoint, Origin::File),
        ]);
        origins.appwrite_endpoint = origin;
        let appwrite = match endpoint {
            Some(endpoint) => {
                let api_key = match env.var("APPWRITE_API_KEY") {
                    Some(k) => Some(k),
                    None => match file_aw.api_key_file.clone().map(in_file) {
                        Some(p) => Some(
                            std::fs::read_to_string(&p)
                                .map_err(|e| {
                                    invalid(
                                        "target.appwrite.api_key_file",
                                        format!("cannot read {}: {e}", p.display()),
                                    )
                                })?
                                .trim()
                                .to_string(),
                        ),
                        None => None,
                    },
                };
                Some(AppwriteConfig {
                    endpoint,
                    project: env
                        .var("APPWRITE_PROJECT")
                        .or(file_aw.project)
                        .unwrap_or_default(),
                    database: {
                        let (database, origin) = first(vec![
                            (o.appwrite_database.clone(), Origin::Flag("--database")),
                            (
                                env.var("APPWRITE_DATABASE"),
                                Origin::Env("APPWRITE_DATABASE"),
                            ),
                            (file_aw.database, Origin::File),
                        ]);
                        origins.appwrite_database = origin;
                        database.unwrap_or_else(|| "cutover".to_string())
                    },
                    api_key,
                    max_transaction_operations: match env.var("APPWRITE_MAX_TRANSACTION_OPERATIONS")
                    {
                        Some(v) => match v.trim().parse::<usize>() {
                            Ok(n) if n > 0 => n,
                            _ => {
                                return Err(ConfigError::Given {
                                    from: "environment APPWRITE_MAX_TRANSACTION_OPERATIONS".into(),
                                    message: format!(
                                        "expected a whole number of at least 1, got `{v}`"
                                    ),
                                });
                            }
                        },
                        None => match file_aw.max_transaction_operations {
                            Some(0) => {
                                return Err(invalid(
                                    "target.appwrite.max_transaction_operations",
                                    "must be at least 1".into(),
                                ));
                            }
                            Some(n) => n,
                            None => DEFAULT_MAX_TRANSACTION_OPERATIONS,
                        },
                    },
                })
            }
            None => None,
        };

        let default_target = match parsed.target.default {
            None => TargetKind::Mongodb,
            Some(name) => TargetKind::from_name(&name).ok_or_else(|| {
                invalid(
                    "target.default",
                    format!("expected `mongodb` or `appwrite`, got `{name}`"),
                )
            })?,
        };

        let batch_size = o
            .batch_size
            .or(parsed.run.batch_size)
            .unwrap_or(DEFAULT_BATCH_SIZE);
        if batch_size == 0 || batch_size > 100_000 {
            let message = format!("must be between 1 and 100000, got {batch_size}");
            return Err(match o.batch_size {
                Some(_) => ConfigError::Given {
                    from: "flag --batch-size".into(),
                    message,
                },
                None => invalid("run.batch_size", message),
            });
        }
        let batch_bytes = parsed.run.batch_bytes.unwrap_or(DEFAULT_BATCH_BYTES);
        if !(1024..=MAX_BATCH_BYTES).contains(&batch_bytes) {
            return Err(invalid(
                "run.batch_bytes",
                format!("must be between 1024 and {MAX_BATCH_BYTES}, got {batch_bytes}"),
            ));
        }
        let concurrency = o
            .concurrency
            .or(parsed.run.concurrency)
            .unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 || concurrency > 64 {
            let message = format!("must be between 1 and 64, got {concurrency}");
            return Err(match o.concurrency {
                Some(_) => ConfigError::Given {
                    from: "flag --concurrency".into(),
                    message,
                },
                None => invalid("run.concurrency", message),
            });
        }
        let file_concurrency = o
            .file_concurrency
            .or(parsed.run.file_concurrency)
            .unwrap_or(DEFAULT_FILE_CONCURRENCY);
        if file_concurrency == 0 || file_concurrency > 64 {
            let message = format!("must be between 1 and 64, got {file_concurrency}");
            return Err(match o.file_concurrency {
                Some(_) => ConfigError::Given {
                    from: "flag --file-concurrency".into(),
                    message,
                },
                None => invalid("run.file_concurrency", message),
            });
        }

        Ok(Config {
            origins,
            file,
            source_url,
            default_target,
            mongodb,
            appwrite,
            batch_size,
            batch_bytes,
            concurrency,
            file_concurrency,
            reports_dir: parsed
                .run
                .reports_dir
                .map(in_file)
                .unwrap_or_else(|| in_file(PathBuf::from("reports"))),
            rejects_dir: parsed
                .run
                .rejects_dir
                .map(in_file)
                .unwrap_or_else(|| in_file(PathBuf::from("rejects"))),
            pipeline: o
                .pipeline
                .clone()
                .or(parsed.run.pipeline.map(in_file))
                .unwrap_or_else(|| PathBuf::from("pipelines/registry.toml")),
            mappings_dir: o
                .mappings_dir
                .clone()
                .or(parsed.run.mappings_dir.map(in_file))
                .unwrap_or_else(|| PathBuf::from("mappings")),
            backups_keep: parsed.backups.keep,
            files_root: o
                .files_root
                .clone()
                .or(env.var("CUTOVER_FILES_ROOT").map(PathBuf::from))
                .or(parsed.files.root.map(in_file)),
            api_token_file: parsed.serve.token_file.map(in_file),
        })
    }

    /// Tells [`crate::redact`] the credentials of this configuration, so that they are removed
    /// from every text that prints, whatever shape a driver's error gives them.
    pub fn register_secrets(&self) {
        if let Some(url) = &self.source_url {
            crate::redact::register_url_secrets(url);
        }
        if let Some(m) = &self.mongodb {
            crate::redact::register_url_secrets(&m.uri);
        }
        if let Some(a) = &self.appwrite {
            crate::redact::register_url_secrets(&a.endpoint);
            if let Some(k) = &a.api_key {
                crate::redact::register_secret(k);
            }
        }
    }

    /// The effective source and targets, one line each: host, port, database and where each
    /// came from — never a credential.
    pub fn describe_effective(&self) -> Vec<String> {
        let file = self.file.as_deref();
        let mut lines = Vec::new();
        match &self.source_url {
            Some(url) => lines.push(format!(
                "source: postgres {} (from {})",
                crate::redact::endpoint_of(url),
                self.origins.source.describe(file)
            )),
            None => lines.push("source: none given".into()),
        }
        if let Some(m) = &self.mongodb {
            lines.push(format!(
                "target mongodb: {} database {} (uri from {}, database from {})",
                crate::redact::endpoint_of(&m.uri),
                m.database,
                self.origins.mongodb_uri.describe(file),
                self.origins.mongodb_database.describe(file)
            ));
        }
        if let Some(a) = &self.appwrite {
            lines.push(format!(
                "target appwrite: {} project {} database {} (endpoint from {}, database from {})",
                crate::redact::redact_url(&a.endpoint),
                a.project,
                a.database,
                self.origins.appwrite_endpoint.describe(file),
                self.origins.appwrite_database.describe(file)
            ));
        }
        lines
    }

    /// The source URL, or an error saying how to give one.
    pub fn require_source(&self) -> Result<&str, ConfigError> {
        self.source_url
            .as_deref()
            .ok_or_else(|| ConfigError::Invalid {
                path: self.file_name(),
                key: "source.url".into(),
                message:
                    "no source given: set CUTOVER_SOURCE_URL (or DATABASE_URL) or [source] url"
                        .into(),
            })
    }

    /// The MongoDB target, or an error saying how to give one.
    pub fn require_mongodb(&self) -> Result<&MongoConfig, ConfigError> {
        self.mongodb.as_ref().ok_or_else(|| ConfigError::Invalid {
            path: self.file_name(),
            key: "target.mongodb.uri".into(),
            message: "no MongoDB target given: set MONGODB_URI or [target.mongodb] uri".into(),
        })
    }

    /// The Appwrite target with its API key, or an error saying how to give them.
    pub fn require_appwrite(&self) -> Result<&AppwriteConfig, ConfigError> {
        let a = self.appwrite.as_ref().ok_or_else(|| ConfigError::Invalid {
            path: self.file_name(),
            key: "target.appwrite.endpoint".into(),
            message:
                "no Appwrite target given: set APPWRITE_ENDPOINT or [target.appwrite] endpoint"
                    .into(),
        })?;
        if a.api_key.is_none() {
            return Err(ConfigError::Invalid {
                path: self.file_name(),
                key: "target.appwrite.api_key_file".into(),
                message:
                    "no Appwrite API key: set APPWRITE_API_KEY or [target.appwrite] api_key_file"
                        .into(),
            });
        }
        Ok(a)
    }

    fn file_name(&self) -> String {
        self.file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<no config file>".to_string())
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    parse_text(path, &text)
}

fn parse_text(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    if let Ok(table) = text.parse::<toml::Table>()
        && let Some(key) = table
            .get("target")
            .and_then(|t| t.get("appwrite"))
            .and_then(|a| a.get("api_key"))
    {
        let _ = key;
        return Err(ConfigError::Invalid {
            path: path.display().to_string(),
            key: "target.appwrite.api_key".into(),
            message:
                "API keys are not read from the config text: set APPWRITE_API_KEY or api_key_file"
                    .into(),
        });
    }
    if let Ok(table) = text.parse::<toml::Table>()
        && table.get("serve").and_then(|t| t.get("token")).is_some()
    {
        return Err(ConfigError::Invalid {
            path: path.display().to_string(),
            key: "serve.token".into(),
            message:
                "API tokens are not read from the config text: set CUTOVER_API_TOKEN or [serve] token_file"
                    .into(),
        });
    }
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: crate::redact::clip_lines(&e.to_string(), crate::redact::QUOTED_LINE_MAX),
    })
}

fn validate_mongo_db_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'))
    {
        return Err(format!("must not contain `{c}`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_default_target_is_a_kind_and_a_wrong_one_names_the_key() {
        let parse = |text: &str| {
            Config::from_str(Path::new("c.toml"), text, &env(&[]), &Overrides::default())
        };
        assert_eq!(parse("").unwrap().default_target, TargetKind::Mongodb);
        let c = parse("[target]\ndefault = \"appwrite\"\n").unwrap();
        assert_eq!(c.default_target, TargetKind::Appwrite);
        let e = parse("[target]\ndefault = \"postgres\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.toml: key `target.default`: expected `mongodb` or `appwrite`, got `postgres`"
        );
    }

    /// `max_transaction_operations`: 100 unless the file or the environment says otherwise
    /// (the environment wins); 0 or not a number is an error naming where it came from.
    #[test]
    fn max_transaction_operations_comes_from_the_file_or_the_environment() {
        let parse = |text: &str, vars: &[(&str, &str)]| {
            let mut all = vec![("APPWRITE_ENDPOINT", "http://aw/v1")];
            all.extend_from_slice(vars);
            Config::from_str(Path::new("c.toml"), text, &env(&all), &Overrides::default())
        };
        let max = |c: Config| c.appwrite.unwrap().max_transaction_operations;
        assert_eq!(max(parse("", &[]).unwrap()), 100);
        let file = "[target.appwrite]\nmax_transaction_operations = 1000\n";
        assert_eq!(max(parse(file, &[]).unwrap()), 1000);
        let vars = [("APPWRITE_MAX_TRANSACTION_OPERATIONS", "2500")];
        assert_eq!(max(parse(file, &vars).unwrap()), 2500);
        let e = parse("[target.appwrite]\nmax_transaction_operations = 0\n", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.toml: key `target.appwrite.max_transaction_operations`: must be at least 1"
        );
        let e = parse("", &[("APPWRITE_MAX_TRANSACTION_OPERATIONS", "many")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("environment APPWRITE_MAX_TRANSACTION_OPERATIONS"),
            "{e}"
        );
    }

    /// A bad value given by a flag is blamed on the flag, not on the file.
    #[test]
    fn a_bad_flag_value_names_the_flag() {
        let o = Overrides {
            batch_size: Some(0),
            ..Overrides::default()
        };
        let err = Config::from_str(Path::new("c.toml"), "", &env(&[]), &o)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "flag --batch-size: must be between 1 and 100000, got 0"
        );
        let err = Config::from_str(
            Path::new("c.toml"),
            "[run]\nconcurrency = 0\n",
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("c.toml: key `run.concurrency`"), "{err}");
    }

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        let text = "[source]\nurl = \"postgres://file/db\"\n[run]\nbatch_size = 10\n";
        let e = env(&[("CUTOVER_SOURCE_URL", "postgres://env/db")]);
        let c = Config::from_str(Path::new("c.toml"), text, &e, &Overrides::default()).unwrap();
        assert_eq!(c.source_url.as_deref(), Some("postgres://env/db"));
        assert_eq!(c.batch_size, 10);
        let o = Overrides {
            source_url: Some("postgres://flag/db".into()),
            batch_size: Some(50),
            ..Default::default()
        };
        let c = Config::from_str(Path::new("c.toml"), text, &e, &o).unwrap();
        assert_eq!(c.source_url.as_deref(), Some("postgres://flag/db"));
        assert_eq!(c.batch_size, 50);
    }

    #[test]
    fn the_effective_source_and_targets_say_where_they_came_from_without_secrets() {
        let text = "[source]\nurl = \"postgres://file/db\"\n[target.mongodb]\nuri = \"mongodb://m:27017\"\ndatabase = \"fromfile\"\n";
        let e = env(&[
            (
                "CUTOVER_SOURCE_URL",
                "postgres://app:p@ss/w?x y@db.example:5433/reg?sslmode=require",
            ),
            ("APPWRITE_ENDPOINT", "http://aw:80/v1"),
            ("APPWRITE_DATABASE", "envdb"),
        ]);
        let c =
            Config::from_str(Path::new("conf/c.toml"), text, &e, &Overrides::default()).unwrap();
        let lines = c.describe_effective().join("\n");
        assert!(
            lines.contains(
                "source: postgres db.example:5433/reg (from environment CUTOVER_SOURCE_URL)"
            ),
            "{lines}"
        );
        assert!(
            lines.contains("target mongodb: m:27017 database fromfile (uri from file conf/c.toml, database from file conf/c.toml)"),
            "{lines}"
        );
        assert!(lines.contains("database envdb"), "{lines}");
        assert!(
            !lines.contains("p@ss") && !lines.contains("ss/w") && !lines.contains("x y"),
            "{lines}"
        );
        // --database names the database of either target.
        let o = Overrides {
            mongodb_database: Some("flagdb".into()),
            appwrite_database: Some("flagdb".into()),
            ..Default::default()
        };
        let c = Config::from_str(Path::new("c.toml"), text, &e, &o).unwrap();
        assert_eq!(c.mongodb.unwrap().database, "flagdb");
        assert_eq!(c.appwrite.unwrap().database, "flagdb");
        assert_eq!(c.origins.appwrite_database, Origin::Flag("--database"));
    }

    #[test]
    fn paths_in_the_file_are_relative_to_the_file() {
        let text = "[run]\nreports_dir = \"out/reports\"\nrejects_dir = \"/abs/rejects\"\npipeline = \"p.toml\"\n";
        let c = Config::from_str(
            Path::new("/etc/cutover/cutover.toml"),
            text,
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.reports_dir, Path::new("/etc/cutover/out/reports"));
        assert_eq!(c.rejects_dir, Path::new("/abs/rejects"));
        assert_eq!(c.pipeline, Path::new("/etc/cutover/p.toml"));
        // Flags stay relative to the working directory.
        let o = Overrides {
            pipeline: Some("here.toml".into()),
            ..Default::default()
        };
        let c =
            Config::from_str(Path::new("/etc/cutover/cutover.toml"), text, &env(&[]), &o).unwrap();
        assert_eq!(c.pipeline, Path::new("here.toml"));
        // Not given, they are beside the file too: a run started from another directory with
        // the same config finds the reports and rejects of the one before.
        let c = Config::from_str(
            Path::new("/etc/cutover/cutover.toml"),
            "",
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.reports_dir, Path::new("/etc/cutover/reports"));
        assert_eq!(c.rejects_dir, Path::new("/etc/cutover/rejects"));
    }

    #[test]
    fn backups_are_all_kept_unless_a_retention_is_set() {
        let c =
            Config::from_str(Path::new("c.toml"), "", &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.backups_keep, None);
        let c = Config::from_str(
            Path::new("c.toml"),
            "[backups]\nkeep = 3\n",
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.backups_keep, Some(3));
        let err = Config::from_str(
            Path::new("cutover.toml"),
            "[backups]\nkeep = -1\n",
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cutover.toml") && err.contains("keep"),
            "{err}"
        );
    }

    #[test]
    fn database_url_is_the_fallback() {
        let e = env(&[("DATABASE_URL", "postgres://fallback/db")]);
        let c = Config::from_str(Path::new("c.toml"), "", &e, &Overrides::default()).unwrap();
        assert_eq!(c.source_url.as_deref(), Some("postgres://fallback/db"));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = Config::from_str(
            Path::new("cutover.toml"),
            "[run]\nbatch_sise = 3\n",
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cutover.toml"), "{err}");
        assert!(err.contains("batch_sise"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = Config::from_str(
            Path::new("cutover.toml"),
            "[run]\nconcurrency = 0\n",
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("run.concurrency"), "{err}");
    }

    #[test]
    fn api_key_in_config_text_is_refused_without_echoing_it() {
        let err = Config::from_str(
            Path::new("cutover.toml"),
            "[target.appwrite]\nendpoint = \"http://x\"\napi_key = \"sekret-value\"\n",
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("target.appwrite.api_key"), "{err}");
        assert!(!err.contains("sekret-value"), "{err}");
    }

    #[test]
    fn serve_token_in_config_text_is_refused_and_token_file_is_relative_to_the_file() {
        let err = Config::from_str(
            Path::new("cutover.toml"),
            "[serve]\ntoken = \"tok-in-text\"\n",
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("serve.token"), "{err}");
        assert!(!err.contains("tok-in-text"), "{err}");
        let c = Config::from_str(
            Path::new("/etc/cutover/cutover.toml"),
            "[serve]\ntoken_file = \"api.token\"\n",
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.api_token_file.as_deref(),
            Some(Path::new("/etc/cutover/api.token"))
        );
    }

    #[test]
    fn api_key_debug_is_redacted() {
        let e = env(&[
            ("APPWRITE_ENDPOINT", "http://127.0.0.1:1/v1"),
            ("APPWRITE_API_KEY", "standard_abc123"),
        ]);
        let c = Config::from_str(Path::new("c.toml"), "", &e, &Overrides::default()).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("standard_abc123"), "{dbg}");
        assert_eq!(
            c.appwrite.unwrap().api_key.as_deref(),
            Some("standard_abc123")
        );
    }

    #[test]
    fn debug_hides_every_credential() {
        let e = env(&[
            (
                "CUTOVER_SOURCE_URL",
                "postgres://app:pg%2Fpw9@h/db?sslpassword=ssl9pw",
            ),
            (
                "MONGODB_URI",
                "mongodb://root:mongo9pw@m:27017/?replicaSet=rs0",
            ),
            ("APPWRITE_ENDPOINT", "http://127.0.0.1:1/v1"),
            ("APPWRITE_API_KEY", "standard_abc123"),
        ]);
        let c = Config::from_str(Path::new("c.toml"), "", &e, &Overrides::default()).unwrap();
        let dbg = format!("{c:?}");
        for secret in ["pg%2Fpw9", "ssl9pw", "mongo9pw", "standard_abc123"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
        assert!(dbg.contains("postgres://app:***@h/db"), "{dbg}");
    }

    #[test]
    fn libpq_connection_string_is_refused_with_password_hidden() {
        let e = env(&[(
            "CUTOVER_SOURCE_URL",
            "host=h user=app password='a b/c@d' dbname=x",
        )]);
        let err = Config::from_str(Path::new("c.toml"), "", &e, &Overrides::default())
            .unwrap_err()
            .to_string();
        // Named where it came from: the environment, not the file.
        assert!(err.starts_with("environment CUTOVER_SOURCE_URL:"), "{err}");
        assert!(!err.contains("a b/c@d") && !err.contains("c@d"), "{err}");
        assert!(err.contains("user=app"), "{err}");
    }

    /// adv42 F4: a bad MongoDB URL or database from the environment is named as such, not as
    /// a key of a file that may not have it; from the file, the key is named.
    #[test]
    fn a_bad_target_setting_is_named_where_it_came_from() {
        let e = env(&[("MONGODB_URI", "mongo://u:pw77@h:1/")]);
        let err = Config::from_str(Path::new("c.toml"), "", &e, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("environment MONGODB_URI:"), "{err}");
        assert!(!err.contains("pw77"), "{err}");
        let e = env(&[
            ("MONGODB_URI", "mongodb://h/"),
            ("CUTOVER_MONGODB_DATABASE", "a/b"),
        ]);
        let err = Config::from_str(Path::new("c.toml"), "", &e, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environment CUTOVER_MONGODB_DATABASE:"),
            "{err}"
        );
        let err = Config::from_str(
            Path::new("c.toml"),
            "[target.mongodb]\nuri = \"notaurl\"\n",
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("target.mongodb.uri"), "{err}");
    }

    #[test]
    fn non_postgres_source_is_refused_with_password_hidden() {
        let e = env(&[("CUTOVER_SOURCE_URL", "mysql://root:pw123@h/db")]);
        let err = Config::from_str(Path::new("c.toml"), "", &e, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("CUTOVER_SOURCE_URL"), "{err}");
        assert!(!err.contains("pw123"), "{err}");
    }
}
