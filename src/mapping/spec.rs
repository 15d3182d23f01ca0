//! The mapping file format, as written by users (`mappings/*.toml`). Every struct denies unknown
//! keys, so a typo is an error that names the key. `mappings/README.md` documents each option and
//! `mappings/reference.toml` shows all of them; a test parses it.

use std::collections::BTreeMap;

use serde::Deserialize;

pub const MAPPING_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    pub version: u32,
    /// Entity name: what `cutover migrate NAME` and references use.
    pub name: String,
    /// Target collection (MongoDB) or table (Appwrite). Defaults to `name`.
    pub collection: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub source: SourceSpec,
    #[serde(default)]
    pub id: IdSpec,
    #[serde(default)]
    pub options: OptionsSpec,
    #[serde(default, rename = "field")]
    pub fields: Vec<FieldSpec>,
    #[serde(default, rename = "embed")]
    pub embeds: Vec<EmbedSpec>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RowRuleSpec>,
    /// How the documents go into an Appwrite target (ignored for MongoDB).
    #[serde(default)]
    pub appwrite: AppwriteSpec,
    /// Each row names a file on disk: the entity writes files (MongoDB: a GridFS bucket), the
    /// mapped document of the row's fields becomes the file's metadata.
    pub file: Option<FileSpec>,
    /// MongoDB indexes, built after the bulk load of the collection (idempotently).
    #[serde(default, rename = "index")]
    pub indexes: Vec<IndexSpec>,
    /// MongoDB: a `$jsonSchema` validator derived from the mapping, set after the load.
    #[serde(default)]
    pub validator: ValidatorLevel,
    /// Every `reference` field gets an index after the load (MongoDB) or a `key` index
    /// (Appwrite) unless this is `false`; a field's own `index` overrides it.
    #[serde(default = "default_true")]
    pub index_references: bool,
}

fn default_true() -> bool {
    true
}

/// One MongoDB index of the collection, built after the load.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSpec {
    /// Target paths in order; `-path` for descending.
    pub keys: Vec<String>,
    #[serde(default)]
    pub unique: bool,
    /// The index name (default: MongoDB's, from the keys).
    pub name: Option<String>,
    /// Only documents matching this filter are indexed (`{ status = "active" }`).
    pub partial: Option<toml::Table>,
    /// A TTL index: documents expire this many seconds after the (date) key's value.
    pub ttl_seconds: Option<u64>,
    /// A collation locale (`en`, `fr`, …) for string comparisons in the index.
    pub collation: Option<String>,
    /// A special index instead of an ordered one: `text` (MongoDB text index, Appwrite
    /// `fulltext`) or `2dsphere` (of GeoJSON points: MongoDB `2dsphere`, Appwrite `spatial`).
    #[serde(rename = "type")]
    pub kind: Option<IndexKind>,
}

/// The kind of a special index (`[[index]] type = …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum IndexKind {
    #[serde(rename = "text")]
    Text,
    #[serde(rename = "2dsphere")]
    Sphere2d,
}

impl IndexKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IndexKind::Text => "text",
            IndexKind::Sphere2d => "2dsphere",
        }
    }
}

/// Whether a `$jsonSchema` validator derived from the mapping is set on the collection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidatorLevel {
    /// No validator (the default).
    #[default]
    Off,
    /// Every insert and update must pass.
    Strict,
    /// Inserts, and updates of documents that pass already.
    Moderate,
}

impl IndexSpec {
    /// (path, 1 | -1) of each key.
    pub fn key_pairs(&self) -> Vec<(String, i32)> {
        self.keys
            .iter()
            .map(|k| match k.strip_prefix('-') {
                Some(p) => (p.to_string(), -1),
                None => (k.clone(), 1),
            })
            .collect()
    }
}

/// The default GridFS chunk size: 255 KiB, as the drivers' own.
pub const DEFAULT_CHUNK_SIZE: u32 = 261_120;

/// Where a row's file is and what the row records of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// The text column holding the file's path, relative to the files root.
    pub path_column: String,
    /// The text column holding the file's name (default: the last part of the path).
    pub name_column: Option<String>,
    /// The integer column holding the file's size in bytes, checked before the upload.
    pub size_column: Option<String>,
    /// The text column holding the file's checksum (hex), checked before the upload.
    pub checksum_column: Option<String>,
    /// The checksum's algorithm: `sha256` (default) or `md5`.
    #[serde(default)]
    pub checksum: ChecksumAlgorithm,
    /// The text column holding the mime type (MongoDB: the files document's `contentType`).
    pub mime_column: Option<String>,
    /// The GridFS bucket (MongoDB): `<bucket>.files` and `<bucket>.chunks`.
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// Bytes per GridFS chunk.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u32,
    /// MongoDB: also a document per file in this collection, `{_id, fileId, …mapped fields}`
    /// (`_id` and `fileId` the file's id), written, rolled back and verified with the file.
    pub document_collection: Option<String>,
    /// Appwrite Storage: the bucket's settings when cutover creates it (`[file.appwrite]`).
    #[serde(default)]
    pub appwrite: AppwriteBucketSpec,
}

/// An Appwrite Storage bucket's settings (unset: Appwrite's own defaults). Applied when the
/// bucket is created; an existing bucket is left as it is.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppwriteBucketSpec {
    /// Permission strings, e.g. `read("users")`.
    pub permissions: Option<Vec<String>>,
    /// Permission strings of each file (its `permissions[]`), `{path}` filled from the row's
    /// mapped document (a top-level field; a reference: the referenced record's id), e.g.
    /// `read("user:{patientId}")`; a row whose placeholder is null is rejected (`file_permission`).
    pub file_permissions: Option<Vec<String>>,
    pub file_security: Option<bool>,
    /// Bytes; a bigger file is refused by the server (the row is rejected).
    pub maximum_file_size: Option<u64>,
    pub allowed_file_extensions: Option<Vec<String>>,
    /// `none`, `gzip` or `zstd`.
    pub compression: Option<String>,
    pub encryption: Option<bool>,
    pub antivirus: Option<bool>,
}

fn default_bucket() -> String {
    "fs".into()
}

fn default_chunk_size() -> u32 {
    DEFAULT_CHUNK_SIZE
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumAlgorithm {
    #[default]
    Sha256,
    Md5,
}

impl ChecksumAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Sha256 => "sha256",
            ChecksumAlgorithm::Md5 => "md5",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppwriteSpec {
    /// Write the documents as Appwrite users (Auth) instead of rows of a table.
    pub users: Option<AppwriteUsersSpec>,
    /// The table's permission strings (`read("any")`, `create("users")`…), set when the table
    /// is made and brought back to these when they differ (unset: the table's are left alone).
    pub permissions: Option<Vec<String>>,
    /// The table's `rowSecurity` (row-level permissions), set and kept like `permissions`.
    pub row_security: Option<bool>,
}

/// Whether `p` is an Appwrite permission string: `action("role")`, the action one of read,
/// create, update, delete, write; the role any, guests, users (`users/verified`,
/// `users/unverified`), or `user:`, `team:`, `member:`, `label:` followed by an id (a team's
/// may name a role: `team:ID/owner`).
pub fn appwrite_permission_ok(p: &str) -> bool {
    let Some((action, rest)) = p.split_once("(\"") else {
        return false;
    };
    let Some(role) = rest.strip_suffix("\")") else {
        return false;
    };
    if !["read", "create", "update", "delete", "write"].contains(&action) {
        return false;
    }
    let id_ok = |id: &str| {
        !id.is_empty()
            && id.len() <= 36
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    match role.split_once(':') {
        None => matches!(
            role,
            "any" | "guests" | "users" | "users/verified" | "users/unverified"
        ),
        Some(("user" | "member" | "label", id)) => id_ok(id),
        Some(("team", rest)) => {
            let (id, role) = rest.split_once('/').unwrap_or((rest, "x"));
            id_ok(id) && !role.is_empty() && !role.contains('/')
        }
        Some(_) => false,
    }
}

/// Hash algorithms Appwrite imports (the route segment of `POST /users/{algorithm}`).
pub const APPWRITE_HASH_ALGORITHMS: &[&str] = &[
    "bcrypt",
    "argon2",
    "md5",
    "sha",
    "phpass",
    "scrypt",
    "scrypt-modified",
];

/// Which top-level document fields become which user attributes. Every other field (and the
/// labels field) goes to the user's prefs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppwriteUsersSpec {
    pub email: String,
    /// The stored password hash, imported unchanged.
    pub password_hash: String,
    /// The hash's algorithm: bcrypt, argon2, md5, sha, phpass, scrypt, scrypt-modified.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Options the algorithm needs (salt, cost, …), sent as they are.
    #[serde(default)]
    pub hash_options: BTreeMap<String, toml::Value>,
    pub name: Option<String>,
    /// An E.164 phone number.
    pub phone: Option<String>,
    /// A boolean field: the email is verified.
    pub email_verified: Option<String>,
    /// A field whose value says whether the user is enabled (see `active`).
    pub status: Option<String>,
    /// Values of `status` meaning enabled (default: "active"); any other value blocks the user.
    #[serde(default = "default_active")]
    pub active: Vec<String>,
    /// An array field whose values become labels (only letters and digits are kept; at most 36).
    pub labels: Option<String>,
}

fn default_algorithm() -> String {
    "bcrypt".into()
}

fn default_active() -> Vec<String> {
    vec!["active".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// A table, optionally schema-qualified (`public.patients`).
    pub table: Option<String>,
    /// A read-only SQL query, used instead of `table`.
    pub query: Option<String>,
    /// Key columns: unique, used for key-ordered streaming, document identity and resume.
    pub key: Vec<String>,
    /// Column tracking changes (for delta runs).
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdStrategy {
    /// The key's own value (uuid as configured, integers as integers, text as text; several key
    /// columns make a sub-document).
    #[default]
    Key,
    /// A deterministic UUIDv5 of the entity name and the key values.
    Uuid5,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UuidFormat {
    /// BSON binary subtype 4.
    #[default]
    Binary,
    /// The canonical hyphenated lowercase string.
    String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdSpec {
    #[serde(default)]
    pub strategy: IdStrategy,
    /// How uuid values of the key (and uuid5 ids) are stored.
    #[serde(default)]
    pub uuid: UuidFormat,
    /// Namespace for `uuid5` (a uuid); defaults to cutover's own namespace.
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NullPolicy {
    /// NULL values are left out of the document.
    #[default]
    Omit,
    /// NULL values are written as BSON null.
    Keep,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionsSpec {
    #[serde(default)]
    pub nulls: NullPolicy,
    /// How uuid columns (other than the key) are stored unless a field says otherwise.
    #[serde(default)]
    pub uuid: UuidFormat,
}

pub use crate::source::postgres::Infinity;

/// What to do with a timestamp that has a sub-millisecond part (BSON dates hold milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubMillis {
    /// Reject the row (the default: never lose data silently).
    #[default]
    Reject,
    /// Truncate to milliseconds and record a warning for the row.
    Truncate,
    /// Truncate the date and keep the exact value as an RFC 3339 string at `exact_path`.
    KeepString,
}

/// What to do when a numeric conversion cannot be exact (e.g. numeric → double).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lossy {
    #[default]
    Reject,
    Warn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CastType {
    String,
    /// Bytes (bytea) as base64 text (RFC 4648, with padding).
    Base64,
    /// Bytes (bytea) as lowercase hexadecimal text.
    Hex,
    Int,
    Long,
    Double,
    Decimal,
    Bool,
    Date,
    Uuid,
    /// A geographic point: MongoDB GeoJSON `{ type: "Point", coordinates: [lon, lat] }`, an
    /// Appwrite `point` column `[lon, lat]`. From a PostgreSQL `point` (x the longitude, y the
    /// latitude) or two numbers (`columns = [lon, lat]` with the `array` transform).
    Point,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    #[default]
    Error,
    Warning,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Dotted target path: `contactInfo.address.city` builds nested documents.
    pub path: String,
    /// The source column.
    pub column: Option<String>,
    /// A constant value instead of a column.
    pub value: Option<toml::Value>,
    /// Several columns: combined by a `concat` transform, or made into an array.
    pub columns: Option<Vec<String>>,
    /// Transforms applied in order.
    #[serde(default)]
    pub transform: Vec<TransformSpec>,
    /// Final type; without it the column's own type decides.
    #[serde(rename = "type")]
    pub cast: Option<CastType>,
    /// Value used when the result is NULL (or an empty string / empty array).
    pub default: Option<toml::Value>,
    /// Overrides the mapping's `options.nulls` for this field.
    pub nulls: Option<NullPolicy>,
    /// Another entity whose `_id` this value is (the value is encoded with that entity's id rule).
    pub reference: Option<String>,
    /// With `reference`: whether the field gets its reference index (default: the mapping's
    /// `index_references`).
    pub index: Option<bool>,
    /// Sub-millisecond timestamps: `reject` (default), `truncate` (with a warning), `keep_string`.
    pub sub_millis: Option<SubMillis>,
    /// What a date or timestamp of `infinity` / `-infinity` becomes (default: the row is
    /// rejected, `date_out_of_range`).
    pub infinity: Option<Infinity>,
    /// Where `keep_string` puts the exact value.
    pub exact_path: Option<String>,
    /// Time zone of a `timestamp without time zone` column: `UTC` or an offset such as `+01:00`.
    pub timezone: Option<String>,
    /// Inexact numeric conversions: `reject` (default) or `warn`.
    pub lossy: Option<Lossy>,
    /// How a uuid value is stored (overrides `options.uuid`).
    pub uuid: Option<UuidFormat>,
    /// Validation rules for this field.
    #[serde(default)]
    pub validate: Option<RulesSpec>,
    /// Appwrite: the characters of the field's text or JSON column (default 1,000,000; a text
    /// field's `max_length` rule sizes it too). MongoDB has no column sizes and ignores it.
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformSpec {
    Trim,
    Lower,
    Upper,
    /// Split a delimited string into an array; items trimmed, empty items dropped.
    Split(String),
    /// Replace values: `{ map = { M = "male", F = "female" } }`; unknown values pass unchanged
    /// unless the map has a `"*"` entry.
    Map(BTreeMap<String, toml::Value>),
    /// Normalise a phone number to E.164; a number that cannot be normalised rejects the row.
    Phone(PhoneSpec),
    /// Join `columns` with a separator, skipping NULLs.
    Concat(ConcatSpec),
    /// Make an array of the `columns` values (e.g. a GeoJSON coordinate pair).
    Array,
    /// Parse JSON text into an embedded document.
    Json,
    /// Drop the NULL elements of an array (the others keep their order); other values pass.
    DropNulls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneSpec {
    /// The country national numbers belong to: a calling code ("231", "1") for its main region, or
    /// an ISO 3166 region ("LR", "US").
    pub default_country: String,
    /// Ignored: each region's trunk prefix comes from the numbering metadata. Still accepted so
    /// that older mappings load.
    pub trunk_prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcatSpec {
    #[serde(default = "default_sep")]
    pub sep: String,
}

fn default_sep() -> String {
    " ".to_string()
}

/// A field rule, as named in `validate` (and in its `severities` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleName {
    Required,
    NotNull,
    Email,
    Url,
    MinLength,
    MaxLength,
    Min,
    Max,
    Regex,
    OneOf,
    NotInFuture,
    Exists,
}

impl RuleName {
    /// The name the rejects files and reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleName::Required => "required",
            RuleName::NotNull => "not_null",
            RuleName::Email => "email",
            RuleName::Url => "url",
            RuleName::MinLength => "min_length",
            RuleName::MaxLength => "max_length",
            RuleName::Min => "min",
            RuleName::Max => "max",
            RuleName::Regex => "regex",
            RuleName::OneOf => "one_of",
            RuleName::NotInFuture => "not_in_future",
            RuleName::Exists => "exists",
        }
    }
}

/// The `email` rule of a field: `email = true`, `email = "ascii"` or (the default) `email = false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmailRule {
    #[default]
    Off,
    /// Any address, with UTF-8 in the local part and an IDN domain (RFC 6531).
    International,
    /// Addresses of ASCII characters only.
    Ascii,
}

impl<'de> Deserialize<'de> for EmailRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = EmailRule;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or \"ascii\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<EmailRule, E> {
                Ok(if v {
                    EmailRule::International
                } else {
                    EmailRule::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EmailRule, E> {
                match v {
                    "ascii" => Ok(EmailRule::Ascii),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSpec {
    /// A value that is not NULL, missing, blank text or an empty array.
    #[serde(default)]
    pub required: bool,
    /// A value that is not NULL or missing (blank text and empty arrays pass: a NOT NULL
    /// column's own meaning).
    #[serde(default)]
    pub not_null: bool,
    /// `true`: an e-mail address, internationalised ones (RFC 6531) included; `"ascii"`: ASCII
    /// addresses only.
    #[serde(default)]
    pub email: EmailRule,
    #[serde(default)]
    pub url: bool,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub regex: Option<String>,
    pub one_of: Option<Vec<toml::Value>>,
    #[serde(default)]
    pub not_in_future: bool,
    /// With `reference`: the referenced source row must exist (its keys are loaded before the stage).
    #[serde(default)]
    pub exists: bool,
    /// The severity of every rule of the field not named in `severities`.
    #[serde(default)]
    pub severity: Severity,
    /// A severity per rule, overriding `severity`: `{ email = "warning" }`.
    #[serde(default)]
    pub severities: BTreeMap<RuleName, Severity>,
}

impl RulesSpec {
    /// Whether the field has rule `rule`.
    pub fn has(&self, rule: RuleName) -> bool {
        match rule {
            RuleName::Required => self.required,
            RuleName::NotNull => self.not_null,
            RuleName::Email => self.email != EmailRule::Off,
            RuleName::Url => self.url,
            RuleName::MinLength => self.min_length.is_some(),
            RuleName::MaxLength => self.max_length.is_some(),
            RuleName::Min => self.min.is_some(),
            RuleName::Max => self.max.is_some(),
            RuleName::Regex => self.regex.is_some(),
            RuleName::OneOf => self.one_of.is_some(),
            RuleName::NotInFuture => self.not_in_future,
            RuleName::Exists => self.exists,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowRuleSpec {
    pub name: String,
    /// At least one of these target paths must hold a value.
    pub any_of: Vec<String>,
    #[serde(default)]
    pub severity: Severity,
    pub message: Option<String>,
}

/// One column name or a list of them (`"a"` or `["a", "b"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Columns {
    One(String),
    Many(Vec<String>),
}

impl Columns {
    pub fn names(&self) -> Vec<String> {
        match self {
            Columns::One(c) => vec![c.clone()],
            Columns::Many(cs) => cs.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedElement {
    /// Each child row becomes a sub-document built from `field`s.
    #[default]
    Document,
    /// Each child row becomes the value of the single `field`.
    Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedSpec {
    /// Target path of the array.
    pub path: String,
    pub table: Option<String>,
    pub query: Option<String>,
    /// Child column(s) holding the parent's key, one per parent key column, in key order.
    pub foreign_key: Columns,
    /// Child columns that order the children within a parent (deterministic output).
    #[serde(default)]
    pub order_by: Vec<String>,
    #[serde(default)]
    pub element: EmbedElement,
    /// Place the array right after this top-level field's path (default: at the end).
    pub after: Option<String>,
    /// Appwrite only: how an array of documents is stored (Appwrite columns hold no objects).
    #[serde(default)]
    pub appwrite: EmbedStore,
    /// Appwrite only: the characters of the JSON column holding the array (`appwrite = "json"`,
    /// the default; 1,000,000 unless said).
    pub size: Option<u64>,
    #[serde(default, rename = "field")]
    pub fields: Vec<FieldSpec>,
}

/// How an embedded array of documents is stored in Appwrite.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedStore {
    /// A text column holding the array as JSON (the default).
    #[default]
    Json,
    /// A child table `<table>_<path>`: one row per element with `parentId` (the parent's row id,
    /// indexed) and `position`.
    Table,
}

/// The most characters an Appwrite text or JSON column holds (a MariaDB LONGTEXT of
/// four-byte characters): the bound of a field's `size`.
pub const MAX_COLUMN_SIZE: u64 = 1_073_741_823;
