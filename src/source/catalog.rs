//! The source's schema, read from PostgreSQL's catalog: tables, columns with their types,
//! nullability and defaults, keys, foreign keys, check constraints, indexes, comments and the
//! planner's row estimates. What `cutover scaffold` and `cutover docs` draft from.
//!
//! Read-only. [`read`] is data-blind: only catalog queries, no row of a table is read;
//! [`sample`] then reads a bounded sample of each table for the average width of its values
//! (what `cutover scaffold` estimates embedded documents' sizes from).

use std::collections::BTreeMap;

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use super::postgres::{SourceError, connect};

/// One schema of the source, as its catalog describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// The schema read (`public`); of several merged, their names (`a, b`).
    pub schema: String,
    /// The schemas merged, the first the one bare table names are in (empty: just `schema`).
    pub schemas: Vec<String>,
    /// The database's name.
    pub database: String,
    /// Tables (ordinary and partitioned parents), by name.
    pub tables: Vec<Table>,
    /// Views and materialized views (not drafted: said).
    pub views: Vec<String>,
}

impl Catalog {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Several schemas of one database as one catalog: the first's tables keep their names;
    /// another schema's are named `schema.table` (their [`Table::relation`] too), and foreign
    /// keys to them name them so — as if of the first schema — so that references between the
    /// schemas resolve like those within one. `schema` reads `a, b`.
    pub fn merge(mut catalogs: Vec<Catalog>) -> Catalog {
        if catalogs.len() <= 1 {
            return catalogs.pop().unwrap_or_default();
        }
        let main = catalogs[0].schema.clone();
        let schemas: Vec<String> = catalogs.iter().map(|c| c.schema.clone()).collect();
        let mut out = Catalog {
            schema: main.clone(),
            schemas: Vec::new(),
            database: catalogs[0].database.clone(),
            tables: Vec::new(),
            views: Vec::new(),
        };
        for c in catalogs {
            for v in &c.views {
                out.views.push(if c.schema == main {
                    v.clone()
                } else {
                    format!("{}.{v}", c.schema)
                });
            }
            for mut t in c.tables {
                if c.schema != main {
                    t.relation = Some(format!(
                        "{}.{}",
                        super::postgres::relation_part(&c.schema),
                        super::postgres::relation_part(&t.name)
                    ));
                    t.name = format!("{}.{}", c.schema, t.name);
                }
                for fk in &mut t.foreign_keys {
                    if fk.ref_schema != main && schemas.contains(&fk.ref_schema) {
                        fk.ref_table = format!("{}.{}", fk.ref_schema, fk.ref_table);
                        fk.ref_schema = main.clone();
                    }
                }
                out.tables.push(t);
            }
        }
        out.tables.sort_by(|a, b| a.name.cmp(&b.name));
        out.schema = schemas.join(", ");
        out.schemas = schemas;
        out
    }

    /// The schema a foreign key names when it points at a table of this catalog.
    pub fn main_schema(&self) -> &str {
        self.schemas
            .first()
            .map_or(self.schema.as_str(), String::as_str)
    }

    /// The relation a mapping names for `t` (`table`, `schema.table`).
    pub fn relation_of(&self, t: &Table) -> String {
        match &t.relation {
            Some(r) => r.clone(),
            None if self.main_schema() == "public" => super::postgres::relation_part(&t.name),
            None => format!(
                "{}.{}",
                super::postgres::relation_part(self.main_schema()),
                super::postgres::relation_part(&t.name)
            ),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Its name in the catalog: bare in the catalog's own schema, `schema.table` for a table of
    /// another schema merged in ([`Catalog::merge`]).
    pub name: String,
    /// The relation a mapping's `source.table` names, when the table is not in the catalog's
    /// own schema (`crm.customers`); `None`: the catalog's schema and [`Table::name`].
    pub relation: Option<String>,
    pub comment: Option<String>,
    /// The planner's estimate (`pg_class.reltuples`); `None` when the table was never analyzed.
    pub row_estimate: Option<u64>,
    /// The average width of a row's values in bytes: measured over a sample of rows
    /// ([`Width::Sampled`]), else the sum of the columns' `pg_stats` average widths when analyzed
    /// ([`Width::Stats`]: compressed, low for long text).
    pub avg_row_bytes: Option<u64>,
    pub width: Width,
    /// In column order.
    pub columns: Vec<Column>,
    /// Primary key columns, in key order (empty without one).
    pub primary_key: Vec<String>,
    /// Unique constraints and plain unique indexes (no expression, no predicate), each in order.
    pub unique: Vec<Vec<String>>,
    pub foreign_keys: Vec<ForeignKey>,
    pub checks: Vec<Check>,
    pub indexes: Vec<Index>,
    /// Tables that inherit from it (`schema.table`; not partitions): a read of it reads their
    /// rows too.
    pub inherited_by: Vec<String>,
    /// Why a run could not read it (no SELECT privilege, or row-level security the source role
    /// does not bypass).
    pub unreadable: Option<String>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The key a mapping streams by: the primary key, else the first unique key whose columns
    /// are all NOT NULL.
    pub fn key(&self) -> Option<Vec<String>> {
        if !self.primary_key.is_empty() {
            return Some(self.primary_key.clone());
        }
        self.unique
            .iter()
            .find(|u| u.iter().all(|c| self.column(c).is_some_and(|c| c.not_null)))
            .cloned()
    }
}

/// What a table's [`Table::avg_row_bytes`] is based on.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Width {
    /// Nothing: no statistics and no sample.
    #[default]
    Unknown,
    /// `pg_stats.avg_width` summed over the columns: the stored width, after TOAST compression.
    Stats,
    /// Measured over this many rows (a bounded sample): each value's uncompressed length as text
    /// (bytea: its bytes).
    Sampled(u64),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Column {
    pub name: String,
    /// As PostgreSQL prints it: `character varying(50)`, `timestamp without time zone`, `text[]`.
    pub type_sql: String,
    /// The base type's name (a domain's base): `int4`, `varchar`, `timestamptz`, `_text`.
    pub base_type: String,
    /// For arrays: the element's base type name (`text` for `text[]`).
    pub element_type: Option<String>,
    /// `varchar(n)` / `char(n)` (or an array of them): n.
    pub max_length: Option<u32>,
    pub not_null: bool,
    /// The default expression, as PostgreSQL prints it.
    pub default: Option<String>,
    pub comment: Option<String>,
    /// A generated column (`GENERATED ALWAYS AS … STORED`).
    pub generated: bool,
    /// Its collation, when it is non-deterministic (values it holds equal may differ in bytes:
    /// no key a scan can order).
    pub nondeterministic_collation: Option<String>,
    /// What the sample of rows showed of its values (see [`Probe`]).
    pub probe: Probe,
}

/// Values of a column, seen in the sample of rows scaffold reads, that a draft's default
/// conversion would reject: it drafts the safe choice for them instead, with a `# decide:`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Probe {
    /// A date or timestamp of `infinity` / `-infinity`.
    pub infinite: bool,
    /// The longest text, in characters.
    pub max_chars: Option<u64>,
    /// A numeric of more than 34 significant digits (more than Decimal128 holds).
    pub long_numeric: bool,
    /// A float of NaN or ±Infinity (JSON, hence Appwrite, has none).
    pub nonfinite_float: bool,
    /// The most dimensions of an array value (`array_ndims`).
    pub array_dims: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForeignKey {
    pub name: String,
    pub columns: Vec<String>,
    /// The referenced table's schema and name.
    pub ref_schema: String,
    pub ref_table: String,
    pub ref_columns: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Check {
    pub name: String,
    /// The columns it names.
    pub columns: Vec<String>,
    /// `CHECK (...)` as PostgreSQL prints it.
    pub definition: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Index {
    pub name: String,
    pub unique: bool,
    pub primary: bool,
    /// `CREATE INDEX …` as PostgreSQL prints it.
    pub definition: String,
    /// Its columns in order, when it is on plain columns (no expression, no predicate).
    pub columns: Vec<String>,
}

/// Reads schema `schema` of the source at `url` (in one read-only transaction).
pub async fn read(url: &str, schema: &str) -> Result<Catalog, SourceError> {
    let mut conn = connect(url).await?;
    let result = read_on(&mut conn, schema).await;
    let _ = conn.close().await;
    result
}

fn query_err(context: &str) -> impl FnOnce(sqlx::Error) -> SourceError + '_ {
    move |cause| SourceError::Query {
        context: context.to_string(),
        cause,
    }
}

async fn read_on(conn: &mut PgConnection, schema: &str) -> Result<Catalog, SourceError> {
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *conn)
        .await
        .map_err(query_err("begin catalog read"))?;
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut *conn)
        .await
        .map_err(query_err("current database"))?;

    let rows = sqlx::query(
        "SELECT c.oid::int8, c.relname::text, obj_description(c.oid, 'pg_class'), \
                c.reltuples::float8, \
                (SELECT sum(s.avg_width)::int8 FROM pg_stats s \
                  WHERE s.schemaname = n.nspname AND s.tablename = c.relname), \
                has_table_privilege(c.oid, 'SELECT'), \
                c.relrowsecurity AND NOT coalesce((SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r \
                  WHERE r.rolname = current_user), false) \
                  AND NOT (pg_has_role(c.relowner, 'USAGE') AND NOT c.relforcerowsecurity) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
         ORDER BY c.relname",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err("list tables"))?;
    let mut by_oid: BTreeMap<i64, Table> = BTreeMap::new();
    for r in &rows {
        let reltuples: f64 = r.get(3);
        let width: Option<i64> = r.get(4);
        let select: bool = r.get(5);
        let filtered: bool = r.get(6);
        // What a run would refuse to read (adv26 F6: drafted silently, then check and migrate
        // blocked the pipeline).
        let unreadable = if !select {
            Some("the source role has no SELECT privilege on it (GRANT SELECT, or scaffold as a role that has it)".to_string())
        } else if filtered {
            Some("row-level security policies decide which of its rows the source role sees, and a run reads every row or none (it runs with row_security = off and would be refused): scaffold and migrate as a role with BYPASSRLS, or as the table's owner unless it FORCEs row security".to_string())
        } else {
            None
        };
        by_oid.insert(
            r.get(0),
            Table {
                name: r.get(1),
                comment: r.get(2),
                // -1: never vacuumed or analyzed (PostgreSQL 14+); 0 may mean the same before.
                row_estimate: (reltuples >= 0.0).then_some(reltuples as u64),
                avg_row_bytes: width.map(|w| w.max(0) as u64),
                width: if width.is_some() {
                    Width::Stats
                } else {
                    Width::Unknown
                },
                unreadable,
                ..Table::default()
            },
        );
    }

    let rows = sqlx::query(
        "SELECT a.attrelid::int8, a.attname::text, format_type(a.atttypid, a.atttypmod), \
                bt.typname::text, et.typname::text, a.attnotnull, \
                pg_get_expr(d.adbin, d.adrelid), col_description(a.attrelid, a.attnum), \
                CASE WHEN coalesce(et.typname, bt.typname) IN ('varchar', 'bpchar') \
                      AND coalesce(nullif(a.atttypmod, -1), t.typtypmod) > 4 \
                     THEN coalesce(nullif(a.atttypmod, -1), t.typtypmod) - 4 END, \
                a.attgenerated <> '', \
                (SELECT co.collname::text FROM pg_collation co \
                  WHERE co.oid = a.attcollation AND NOT co.collisdeterministic) \
         FROM pg_attribute a \
         JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type t ON t.oid = a.atttypid \
         JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
         LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A' \
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attrelid, a.attnum",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err("list columns"))?;
    for r in &rows {
        let Some(t) = by_oid.get_mut(&r.get::<i64, _>(0)) else {
            continue;
        };
        let max: Option<i32> = r.get(8);
        t.columns.push(Column {
            name: r.get(1),
            type_sql: r.get(2),
            base_type: r.get(3),
            element_type: r.get(4),
            max_length: max.and_then(|m| u32::try_from(m).ok()),
            not_null: r.get(5),
            default: r.get(6),
            comment: r.get(7),
            generated: r.get(9),
            nondeterministic_collation: r.get(10),
            probe: Probe::default(),
        });
    }

    // Tables that other tables inherit from (not declarative partitioning): reading the parent
    // reads its children's rows too (adv29 S5).
    let rows = sqlx::query(
        "SELECT i.inhparent::int8, cn.nspname::text || '.' || c.relname::text \
         FROM pg_inherits i \
         JOIN pg_class p ON p.oid = i.inhparent \
         JOIN pg_namespace n ON n.oid = p.relnamespace \
         JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_namespace cn ON cn.oid = c.relnamespace \
         WHERE n.nspname = $1 AND p.relkind = 'r' \
         ORDER BY 2",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err("list inheriting tables"))?;
    for r in &rows {
        if let Some(t) = by_oid.get_mut(&r.get::<i64, _>(0)) {
            t.inherited_by.push(r.get(1));
        }
    }

    let rows = sqlx::query(
        "SELECT con.conrelid::int8, con.conname::text, con.contype::text, \
                array(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(num, i) \
                      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num \
                      ORDER BY k.i), \
                fn.nspname::text, fc.relname::text, \
                array(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(num, i) \
                      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num \
                      ORDER BY k.i), \
                pg_get_constraintdef(con.oid) \
         FROM pg_constraint con \
         JOIN pg_class c ON c.oid = con.conrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_class fc ON fc.oid = con.confrelid \
         LEFT JOIN pg_namespace fn ON fn.oid = fc.relnamespace \
         WHERE n.nspname = $1 AND con.contype IN ('p', 'u', 'f', 'c') \
         ORDER BY con.conname",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err("list constraints"))?;
    for r in &rows {
        let Some(t) = by_oid.get_mut(&r.get::<i64, _>(0)) else {
            continue;
        };
        let name: String = r.get(1);
        let kind: String = r.get(2);
        let columns: Vec<String> = r.get(3);
        match kind.as_str() {
            "p" => t.primary_key = columns,
            "u" => t.unique.push(columns),
            "f" => t.foreign_keys.push(ForeignKey {
                name,
                columns,
                ref_schema: r.get::<Option<String>, _>(4).unwrap_or_default(),
                ref_table: r.get::<Option<String>, _>(5).unwrap_or_default(),
                ref_columns: r.get(6),
            }),
            _ => t.checks.push(Check {
                name,
                columns,
                definition: r.get(7),
            }),
        }
    }

    let rows = sqlx::query(
        "SELECT i.indrelid::int8, ic.relname::text, i.indisunique, i.indisprimary, \
                pg_get_indexdef(i.indexrelid), \
                i.indexprs IS NULL AND i.indpred IS NULL, \
                array(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(num, o) \
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.num \
                      ORDER BY k.o), \
                NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid) \
         FROM pg_index i \
         JOIN pg_class ic ON ic.oid = i.indexrelid \
         JOIN pg_class c ON c.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 \
         ORDER BY i.indisunique DESC, ic.relname",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err("list indexes"))?;
    for r in &rows {
        let Some(t) = by_oid.get_mut(&r.get::<i64, _>(0)) else {
            continue;
        };
        let unique: bool = r.get(2);
        let plain: bool = r.get(5);
        let columns: Vec<String> = r.get(6);
        let no_constraint: bool = r.get(7);
        // A unique index that backs no constraint is a key all the same (when it is on plain
        // columns, for every row).
        if unique && plain && no_constraint && !columns.is_empty() {
            t.unique.push(columns.clone());
        }
        t.indexes.push(Index {
            name: r.get(1),
            unique,
            primary: r.get(3),
            definition: r.get(4),
            columns: if plain { columns } else { Vec::new() },
        });
    }
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    let mut tables: Vec<Table> = by_oid.into_values().collect();
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    let views: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('v', 'm') ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err("list views"))?;
    Ok(Catalog {
        schema: schema.to_string(),
        schemas: Vec::new(),
        database,
        tables,
        views,
    })
}

/// Measures each table's row width over a bounded sample of its rows (see [`sample_widths`]).
pub async fn sample(url: &str, catalog: &mut Catalog) -> Result<(), SourceError> {
    let mut conn = connect(url).await?;
    let main = catalog.main_schema().to_string();
    for t in &mut catalog.tables {
        sample_widths(&mut conn, &main, t).await;
    }
    let _ = conn.close().await;
    Ok(())
}

/// Adds to each column's [`Probe`] what the planner's statistics (`pg_stats`: the most common
/// values and the histogram's bounds, which hold the extremes ANALYZE saw) show of values
/// beyond the sample of rows (adv26 F4: an infinity past the 2,000 rows sampled).
async fn probe_stats(conn: &mut PgConnection, schema: &str, t: &mut Table) {
    let (schema, table) = match &t.relation {
        Some(r) => {
            let mut parts = super::postgres::relation_parts(r);
            let table = parts.pop().unwrap_or_default();
            (parts.pop().unwrap_or_else(|| schema.to_string()), table)
        }
        None => (schema.to_string(), t.name.clone()),
    };
    let rows: Vec<(String, String)> = match sqlx::query_as(
        "SELECT attname::text, coalesce(most_common_vals::text, '') || ' ' || \
                coalesce(histogram_bounds::text, '') \
         FROM pg_stats WHERE schemaname = $1 AND tablename = $2",
    )
    .bind(&schema)
    .bind(&table)
    .fetch_all(&mut *conn)
    .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!(table = %t.name, error = %e, "cannot read the table's statistics");
            return;
        }
    };
    for (name, values) in rows {
        let Some(c) = t.columns.iter_mut().find(|c| c.name == name) else {
            continue;
        };
        if c.element_type.is_some() {
            continue;
        }
        match c.base_type.as_str() {
            "date" | "timestamp" | "timestamptz" => {
                c.probe.infinite |= values.contains("infinity");
            }
            "numeric" => {
                let digits = values
                    .split(|ch: char| !(ch.is_ascii_digit() || ch == '.' || ch == '-'))
                    .map(|v| v.trim_start_matches(['-', '0', '.']).replace('.', "").len())
                    .max()
                    .unwrap_or(0);
                c.probe.long_numeric |= digits > 34;
            }
            "float4" | "float8" => {
                c.probe.nonfinite_float |= values.contains("NaN") || values.contains("Infinity");
            }
            _ => {}
        }
    }
}

/// Fills each column's [`Probe`] from the same sample of rows (`sample`: its TABLESAMPLE
/// clause, or none for the first rows). A probe that cannot be read leaves them empty.
async fn probe_values(conn: &mut PgConnection, from: &str, sample: &str, t: &mut Table) {
    // Per column: (what, expression) — each an int8 over the sample.
    let mut exprs: Vec<(usize, &'static str, String)> = Vec::new();
    for (i, c) in t.columns.iter().enumerate() {
        let col = super::postgres::quote_ident(&c.name);
        if c.element_type.is_some() {
            // PostgreSQL does not hold a column to its declared dimensions: the values say.
            exprs.push((i, "dims", format!("max(array_ndims({col}))::int8")));
            continue;
        }
        match c.base_type.as_str() {
            "date" | "timestamp" | "timestamptz" => exprs.push((
                i,
                "infinite",
                format!("(bool_or(NOT isfinite({col})))::int::int8"),
            )),
            "text" | "varchar" | "bpchar" => {
                exprs.push((i, "chars", format!("max(char_length({col}))::int8")))
            }
            // JSON is written as its text (adv26 F5), each number a double cannot hold as
            // `{"$numberDecimal":"…"}`: at most 21 characters more per number than PostgreSQL
            // prints (adv29 S6: 988,898 characters in PostgreSQL were 1.8 million written).
            "json" | "jsonb" => exprs.push((
                i,
                "chars",
                format!(
                    "max(char_length({col}::text) + 21 * (SELECT count(*) FROM jsonb_path_query({col}::jsonb, 'strict $.** ? (@.type() == \"number\")')))::int8"
                ),
            )),
            "numeric" => exprs.push((
                i,
                "digits",
                format!(
                    "max(length(ltrim(translate({col}::text, '-.+', ''), '0')))::int8"
                ),
            )),
            "float4" | "float8" => exprs.push((
                i,
                "nonfinite",
                format!(
                    "(bool_or({col} IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)))::int::int8"
                ),
            )),
            _ => {}
        }
    }
    if exprs.is_empty() {
        return;
    }
    let sql = format!(
        "SELECT {} FROM (SELECT * FROM {from}{sample} LIMIT {SAMPLE_ROWS}) s",
        exprs
            .iter()
            .map(|(_, _, e)| e.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let row = match sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut *conn)
        .await
    {
        Ok(row) => row,
        Err(e) => {
            tracing::debug!(table = %t.name, error = %e, "cannot probe the table's values");
            return;
        }
    };
    for (k, (i, what, _)) in exprs.iter().enumerate() {
        let v: Option<i64> = row.try_get(k).ok().flatten();
        let Some(v) = v else { continue };
        let p = &mut t.columns[*i].probe;
        match *what {
            "infinite" => p.infinite |= v > 0,
            "chars" => p.max_chars = Some(v.max(0) as u64),
            "digits" => p.long_numeric |= v > 34,
            "dims" => p.array_dims = Some(v.max(0) as u64),
            _ => p.nonfinite_float |= v > 0,
        }
    }
}

/// Rows a width sample reads at most.
pub const SAMPLE_ROWS: u64 = 2000;

/// Above this many rows (the planner's estimate) the sample is drawn from random pages
/// (`TABLESAMPLE SYSTEM`) rather than the table's first rows.
const SAMPLE_FROM_PAGES_ABOVE: u64 = 50_000;

/// The average width of a row of `t` over a bounded sample: the sum of its values' lengths
/// uncompressed (`octet_length` of the value as text; bytea its bytes; NULL 0). `pg_stats`
/// averages what is stored, after TOAST compression: for compressible long text ~70× low, so
/// an embedding's document size came out far too small. At most [`SAMPLE_ROWS`] rows are read,
/// from random pages on a big table, so a big table costs no more than a small one. A sample
/// that cannot be read (no SELECT privilege) leaves the `pg_stats` width, said as such.
async fn sample_widths(conn: &mut PgConnection, schema: &str, t: &mut Table) {
    if t.columns.is_empty() {
        return;
    }
    let width: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let col = super::postgres::quote_ident(&c.name);
            let raw = c.element_type.is_none()
                && matches!(
                    c.base_type.as_str(),
                    "text" | "varchar" | "bpchar" | "bytea"
                );
            if raw {
                format!("coalesce(octet_length({col}), 0)")
            } else {
                format!("coalesce(octet_length(({col})::text), 0)")
            }
        })
        .collect();
    let from = match &t.relation {
        Some(r) => super::postgres::quote_relation(r),
        None => format!(
            "{}.{}",
            super::postgres::quote_ident(schema),
            super::postgres::quote_ident(&t.name)
        ),
    };
    let big = t
        .row_estimate
        .filter(|n| *n > SAMPLE_FROM_PAGES_ABOVE)
        .map(|n| {
            // Pages enough for about four times the rows wanted.
            let pct = (400.0 * SAMPLE_ROWS as f64 / n as f64).clamp(0.0001, 100.0);
            format!(" TABLESAMPLE SYSTEM ({pct:.4})")
        });
    let query = |sample: &str| {
        format!(
            "SELECT count(*)::int8, avg(w)::float8 FROM (SELECT {} AS w FROM {from}{sample} LIMIT {SAMPLE_ROWS}) s",
            width.join(" + ")
        )
    };
    probe_stats(conn, schema, t).await;
    // From random pages on a big table; a sample of no row (or one refused) reads the first.
    for sample in big.iter().map(String::as_str).chain([""]) {
        let sql = query(sample);
        let row: Result<(i64, Option<f64>), _> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await;
        match row {
            Ok((n, Some(avg))) if n > 0 => {
                t.avg_row_bytes = Some(avg.round().max(0.0) as u64);
                t.width = Width::Sampled(n as u64);
                probe_values(conn, &from, sample, t).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(table = %t.name, error = %e, "cannot sample the table's widths");
            }
        }
    }
}
