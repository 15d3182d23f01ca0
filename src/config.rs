//! `cutover.toml` + environment + flags → one checked [`Config`]. No I/O beyond reading the file
//! (and the API key file named in it); connections are opened elsewhere.
//!
//! Precedence: flags over environment over file. The Appwrite API key never comes from the config
//! text itself: only from `APPWRITE_API_KEY` or the file named by `target.appwrite.api_key_file`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors found while loading or checking the configuration; each names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRun {
    batch_size: Option<usize>,
    batch_bytes: Option<usize>,
    concurrency: Option<usize>,
    reports_dir: Option<PathBuf>,
    rejects_dir: Option<PathBuf>,
    pipeline: Option<PathBuf>,
    mappings_dir: Option<PathBuf>,
}

/// Values given on the command line; `None` means "not given".
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub source_url: Option<String>,
    pub mongodb_uri: Option<String>,
    pub mongodb_database: Option<String>,
    pub batch_size: Option<usize>,
    pub concurrency: Option<usize>,
    pub pipeline: Option<PathBuf>,
    pub mappings_dir: Option<PathBuf>,
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

#[derive(Debug, Clone)]
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
}

impl std::fmt::Debug for AppwriteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppwriteConfig")
            .field("endpoint", &self.endpoint)
            .field("project", &self.project)
            .field("database", &self.database)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The checked configuration of one invocation.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any (for messages).
    pub file: Option<PathBuf>,
    pub source_url: Option<String>,
    pub default_target: String,
    pub mongodb: Option<MongoConfig>,
    pub appwrite: Option<AppwriteConfig>,
    pub batch_size: usize,
    pub batch_bytes: usize,
    pub concurrency: usize,
    pub reports_dir: PathBuf,
    pub rejects_dir: PathBuf,
    pub pipeline: PathBuf,
    pub mappings_dir: PathBuf,
    /// `[backups] keep`: after a successful run, prune the run's collections to this many backups
    /// (besides those rollback needs). `None`: keep every backup.
    pub backups_keep: Option<usize>,
}

pub const DEFAULT_BATCH_SIZE: usize = 1000;
pub const DEFAULT_BATCH_BYTES: usize = 8 * 1024 * 1024;
pub const DEFAULT_CONCURRENCY: usize = 4;
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

        let source_url = o
            .source_url
            .clone()
            .or_else(|| env.var("CUTOVER_SOURCE_URL"))
            .or_else(|| env.var("DATABASE_URL"))
            .or(parsed.source.url);
        if let Some(url) = &source_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "source.url",
                format!(
                    "expected a postgres:// URL, got `{}`",
                    crate::redact::redact_url(url)
                ),
            ));
        }

        let file_mongo = parsed.target.mongodb.unwrap_or_default();
        let mongo_uri = o
            .mongodb_uri
            .clone()
            .or_else(|| env.var("MONGODB_URI"))
            .or(file_mongo.uri);
        let mongodb = match mongo_uri {
            Some(uri) => {
                if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
                    return Err(invalid(
                        "target.mongodb.uri",
                        format!(
                            "expected a mongodb:// URL, got `{}`",
                            crate::redact::redact_url(&uri)
                        ),
                    ));
                }
                let database = o
                    .mongodb_database
                    .clone()
                    .or_else(|| env.var("CUTOVER_MONGODB_DATABASE"))
                    .or(file_mongo.database)
                    .unwrap_or_else(|| "cutover".to_string());
                validate_mongo_db_name(&database)
                    .map_err(|m| invalid("target.mongodb.database", m))?;
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
        let endpoint = env.var("APPWRITE_ENDPOINT").or(file_aw.endpoint);
        let appwrite = match endpoint {
            Some(endpoint) => {
                let api_key = match env.var("APPWRITE_API_KEY") {
                    Some(k) => Some(k),
                    None => match &file_aw.api_key_file {
                        Some(p) => Some(
                            std::fs::read_to_string(p)
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
                    database: env
                        .var("APPWRITE_DATABASE")
                        .or(file_aw.database)
                        .unwrap_or_else(|| "cutover".to_string()),
                    api_key,
                })
            }
            None => None,
        };

        let default_target = parsed
            .target
            .default
            .unwrap_or_else(|| "mongodb".to_string());
        if default_target != "mongodb" && default_target != "appwrite" {
            return Err(invalid(
                "target.default",
                format!("expected `mongodb` or `appwrite`, got `{default_target}`"),
            ));
        }

        let batch_size = o
            .batch_size
            .or(parsed.run.batch_size)
            .unwrap_or(DEFAULT_BATCH_SIZE);
        if batch_size == 0 || batch_size > 100_000 {
            return Err(invalid(
                "run.batch_size",
                format!("must be between 1 and 100000, got {batch_size}"),
            ));
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
            return Err(invalid(
                "run.concurrency",
                format!("must be between 1 and 64, got {concurrency}"),
            ));
        }

        Ok(Config {
            file,
            source_url,
            default_target,
            mongodb,
            appwrite,
            batch_size,
            batch_bytes,
            concurrency,
            reports_dir: parsed
                .run
                .reports_dir
                .unwrap_or_else(|| PathBuf::from("reports")),
            rejects_dir: parsed
                .run
                .rejects_dir
                .unwrap_or_else(|| PathBuf::from("rejects")),
            pipeline: o
                .pipeline
                .clone()
                .or(parsed.run.pipeline)
                .unwrap_or_else(|| PathBuf::from("pipelines/registry.toml")),
            mappings_dir: o
                .mappings_dir
                .clone()
                .or(parsed.run.mappings_dir)
                .unwrap_or_else(|| PathBuf::from("mappings")),
            backups_keep: parsed.backups.keep,
        })
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
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
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
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
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
    fn non_postgres_source_is_refused_with_password_hidden() {
        let e = env(&[("CUTOVER_SOURCE_URL", "mysql://root:pw123@h/db")]);
        let err = Config::from_str(Path::new("c.toml"), "", &e, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.url"), "{err}");
        assert!(!err.contains("pw123"), "{err}");
    }
}
