//! Chaos: `cutover migrate` killed with SIGKILL at random points, resumed by plain re-runs (no
//! `--fresh`, no `--rerun`) until it completes, must end with exactly what an uninterrupted run
//! gives: the same documents byte for byte (canonical extended JSON, field order included), the
//! same counts, the same rejects (gathered over every run's rejects files), and balanced reports.
//!
//! One test per stage shape: a plain table, a parent with embedded children, a composite key, a
//! text key, an Appwrite child table, a parent with a composite key that embeds children, and keys
//! at the edges (BC dates; a query source's key with NULL parts). Each test prints its seed; the
//! kill plan, batch sizes and concurrencies follow from it (when the kills land still depends on
//! timing):
//!
//! ```text
//! CUTOVER_CHAOS_SEED=<seed> cargo test --test chaos <test name>
//! CUTOVER_CHAOS_CONCURRENCY=1,4 cargo test --test chaos   # another --concurrency cycle
//! CUTOVER_CHAOS_BIN=/path/to/cutover cargo test --test chaos  # another binary than cargo's
//! ```
//!
//! Every child process has a deadline ([`DEADLINE`]): one that passes it is killed and the test
//! fails naming the shape, the attempt, its flags and the seed.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appwrite_standin::StandIn;
use bson::{Bson, Document, doc};
use common::World;
use futures::TryStreamExt;
use serde_json::Value;

/// The longest any single `cutover` process may take.
const DEADLINE: Duration = Duration::from_secs(60);
/// Plain re-runs allowed after the planned kills before the test gives up.
const FINAL_ATTEMPTS: usize = 4;
/// The `--concurrency` cycle of the chaos attempts (CUTOVER_CHAOS_CONCURRENCY overrides it).
const CONCURRENCY: &[usize] = &[1, 4, 16, 32];
const BATCH_SIZES: &[usize] = &[50, 100, 200];
const POLL: Duration = Duration::from_millis(10);
const KEY: &str = "chaos-key-1";
const AW_DB: &str = "registry";

/// A stage shape: its source tables and rows, its mappings and its pipeline.
struct Shape {
    /// The test's name (also names its databases).
    test: &'static str,
    sql: &'static str,
    /// (file name without .toml, contents)
    mappings: &'static [(&'static str, &'static str)],
    pipeline: &'static str,
    /// (entity, source table), in pipeline order; each entity writes the collection of its name.
    entities: &'static [(&'static str, &'static str)],
    /// Appwrite tables to compare; empty for MongoDB (every collection is compared).
    appwrite_tables: &'static [&'static str],
}

impl Shape {
    fn appwrite(&self) -> bool {
        !self.appwrite_tables.is_empty()
    }
}

// (a) A plain table with a single bigint key (negative, sparse, and both ends of the range),
// after a small lookup stage it references.
const PLAIN: Shape = Shape {
    test: "plain",
    sql: r#"
CREATE TABLE kinds (code text PRIMARY KEY, label text NOT NULL);
INSERT INTO kinds VALUES ('a', 'Alpha'), ('b', 'Beta'), ('c', 'Gamma');
CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, kind text REFERENCES kinds,
                    amount numeric(12,2), at timestamptz NOT NULL, note text);
INSERT INTO items
SELECT g * 7919 - 60000000, 'item ' || g, (ARRAY['a','b','c'])[1 + g % 3], (g % 100000) / 100.0,
       '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second',
       CASE WHEN g % 997 = 0 THEN repeat('long ', 12) WHEN g % 7 = 0 THEN NULL ELSE repeat('x', g % 50) END
FROM generate_series(1, 40000) g;
INSERT INTO items VALUES
  (-9223372036854775808, 'min', 'a', 0, '2024-01-01 00:00:00+00', NULL),
  (9223372036854775807, 'max', NULL, NULL, '2024-01-01 00:00:00+00', 'last');
"#,
    mappings: &[
        (
            "kinds",
            r#"
version = 1
name = "kinds"
[source]
table = "kinds"
key = ["code"]
[[field]]
path = "label"
column = "label"
"#,
        ),
        (
            "items",
            r#"
version = 1
name = "items"
[source]
table = "items"
key = ["id"]
[[field]]
path = "name"
column = "name"
[[field]]
path = "kind"
column = "kind"
reference = "kinds"
[[field]]
path = "amount"
column = "amount"
[[field]]
path = "at"
column = "at"
[[field]]
path = "note"
column = "note"
validate = { max_length = 50 }
"#,
        ),
    ],
    pipeline: r#"
version = 1
name = "plain"
mappings_dir = "mappings"
[[stage]]
name = "lookup"
entities = ["kinds"]
[[stage]]
name = "facts"
entities = ["items"]
depends_on = ["lookup"]
"#,
    entities: &[("kinds", "kinds"), ("items", "items")],
    appwrite_tables: &[],
};

// (b) A parent with embedded children: 0 to 5 lines per order (2.5 on average), line ids shuffled
// across orders so that the array order comes from `order_by`, not from insertion.
const EMBEDDED: Shape = Shape {
    test: "embedded",
    sql: r#"
CREATE TABLE orders (order_id bigint PRIMARY KEY, customer text NOT NULL, placed_at timestamptz NOT NULL, comment text);
CREATE TABLE order_lines (line_id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders,
                          sku text NOT NULL, qty integer NOT NULL);
INSERT INTO orders
SELECT g, 'customer ' || (g % 97), '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute',
       CASE WHEN g % 499 = 0 THEN repeat('c', 80) WHEN g % 3 = 0 THEN 'ring twice' END
FROM generate_series(1, 12000) g;
INSERT INTO order_lines
SELECT row_number() OVER (ORDER BY md5(o.order_id || ':' || k)), o.order_id, 'SKU-' || (o.order_id * k % 1000),
       CASE WHEN (o.order_id + k) % 1201 = 0 THEN 0 ELSE k END
FROM orders o, generate_series(1, ((o.order_id * 31) % 6)::int) k;
"#,
    mappings: &[(
        "orders",
        r#"
version = 1
name = "orders"
[source]
table = "orders"
key = ["order_id"]
[[field]]
path = "customer"
column = "customer"
[[field]]
path = "placedAt"
column = "placed_at"
[[field]]
path = "comment"
column = "comment"
validate = { max_length = 60 }
[[embed]]
path = "lines"
table = "order_lines"
foreign_key = "order_id"
order_by = ["line_id"]
after = "customer"
[[embed.field]]
path = "line"
column = "line_id"
[[embed.field]]
path = "sku"
column = "sku"
[[embed.field]]
path = "qty"
column = "qty"
validate = { min = 1 }
"#,
    )],
    pipeline: r#"
version = 1
name = "embedded"
mappings_dir = "mappings"
[[stage]]
name = "orders"
entities = ["orders"]
"#,
    entities: &[("orders", "orders")],
    appwrite_tables: &[],
};

// (c) A composite key (region text, seq int): regions differing only in case, with a space and
// with non-ASCII letters; negative sequence numbers.
const COMPOSITE: Shape = Shape {
    test: "composite",
    sql: r#"
CREATE TABLE readings (region text, seq integer, value double precision NOT NULL, label text,
                       PRIMARY KEY (region, seq));
INSERT INTO readings
SELECT r, s, s * 0.25, CASE WHEN (s + 7 * length(r)) % 1499 = 0 THEN repeat('l', 70) ELSE 'reading ' || s END
FROM unnest(ARRAY['North', 'north', 'süd', 'East West', 'a', 'Z']) r, generate_series(-3300, 3300) s;
"#,
    mappings: &[(
        "readings",
        r#"
version = 1
name = "readings"
[source]
table = "readings"
key = ["region", "seq"]
[[field]]
path = "value"
column = "value"
[[field]]
path = "label"
column = "label"
validate = { max_length = 40 }
"#,
    )],
    pipeline: r#"
version = 1
name = "composite"
mappings_dir = "mappings"
[[stage]]
name = "readings"
entities = ["readings"]
"#,
    entities: &[("readings", "readings")],
    appwrite_tables: &[],
};

// (d) A text key with spaces (leading, doubled, trailing), mixed case, non-ASCII letters, CJK,
// an emoji, a double quote and a backslash.
const TEXT_KEY: Shape = Shape {
    test: "textkey",
    sql: r#"
CREATE TABLE people (code text PRIMARY KEY, name text NOT NULL, email text);
INSERT INTO people
SELECT (ARRAY['Ärzte ', 'zoë ', 'ZOË ', 'with  two  spaces ', '日本語 ', 'emoji 🎉 ', ' leading ', 'q"\', 'MiXeD cAsE '])[1 + g % 9]
         || g || CASE WHEN g % 5 = 0 THEN ' ' ELSE '' END,
       CASE WHEN g % 811 = 0 THEN repeat('n', 45) ELSE 'Person ' || g END,
       'p' || g || '@example.org'
FROM generate_series(1, 40000) g;
"#,
    mappings: &[(
        "people",
        r#"
version = 1
name = "people"
[source]
table = "people"
key = ["code"]
[[field]]
path = "name"
column = "name"
validate = { max_length = 40 }
[[field]]
path = "email"
column = "email"
"#,
    )],
    pipeline: r#"
version = 1
name = "textkey"
mappings_dir = "mappings"
[[stage]]
name = "people"
entities = ["people"]
"#,
    entities: &[("people", "people")],
    appwrite_tables: &[],
};

// (e) Into the Appwrite stand-in: a uuid-keyed parent whose embedded children go to a child
// table (`appwrite = "table"`), 0 to 5 per parent.
const APPWRITE_CHILDREN: Shape = Shape {
    test: "awchild",
    sql: r#"
CREATE TABLE visits (visit_id uuid PRIMARY KEY, patient text NOT NULL, at timestamptz NOT NULL);
CREATE TABLE visit_notes (note_id bigint PRIMARY KEY, visit_id uuid NOT NULL REFERENCES visits,
                          body text NOT NULL, n integer NOT NULL);
INSERT INTO visits
SELECT md5('visit ' || g)::uuid, CASE WHEN g % 401 = 0 THEN repeat('p', 50) ELSE 'patient ' || (g % 113) END,
       '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour'
FROM generate_series(1, 4000) g;
INSERT INTO visit_notes
SELECT row_number() OVER (ORDER BY md5(g || ':' || k)), md5('visit ' || g)::uuid, 'note ' || k || ' of ' || g, k
FROM generate_series(1, 4000) g, generate_series(1, (g * 31) % 6) k;
"#,
    mappings: &[(
        "visits",
        r#"
version = 1
name = "visits"
[source]
table = "visits"
key = ["visit_id"]
[[field]]
path = "patient"
column = "patient"
validate = { max_length = 40 }
[[field]]
path = "at"
column = "at"
[[embed]]
path = "notes"
table = "visit_notes"
foreign_key = "visit_id"
order_by = ["note_id"]
appwrite = "table"
[[embed.field]]
path = "body"
column = "body"
[[embed.field]]
path = "n"
column = "n"
"#,
    )],
    pipeline: r#"
version = 1
name = "awchild"
mappings_dir = "mappings"
target = "appwrite"
[[stage]]
name = "visits"
entities = ["visits"]
"#,
    entities: &[("visits", "visits")],
    appwrite_tables: &["visits", "visits_notes"],
};

// (f) A parent with a COMPOSITE key embedding children that reference both key columns:
// `foreign_key = ["region", "seq"]` (the child columns, in the order of the parent's key).
const COMPOSITE_PARENT: Shape = Shape {
    test: "comppar",
    sql: r#"
CREATE TABLE stations (region text, seq integer, name text NOT NULL, PRIMARY KEY (region, seq));
CREATE TABLE samples (sample_id bigint PRIMARY KEY, region text NOT NULL, seq integer NOT NULL,
                      value integer NOT NULL, FOREIGN KEY (region, seq) REFERENCES stations);
INSERT INTO stations
SELECT r, s, CASE WHEN s % 997 = 0 THEN repeat('s', 50) ELSE r || ' ' || s END
FROM unnest(ARRAY['North', 'north', 'süd', 'East West']) r, generate_series(-1000, 1000) s;
INSERT INTO samples
SELECT row_number() OVER (ORDER BY md5(st.region || st.seq || ':' || k)), st.region, st.seq, k * 10
FROM stations st, generate_series(1, abs(st.seq * 31) % 6) k;
"#,
    mappings: &[(
        "stations",
        r#"
version = 1
name = "stations"
[source]
table = "stations"
key = ["region", "seq"]
[[field]]
path = "name"
column = "name"
validate = { max_length = 40 }
[[embed]]
path = "samples"
table = "samples"
foreign_key = ["region", "seq"]
order_by = ["sample_id"]
[[embed.field]]
path = "sample"
column = "sample_id"
[[embed.field]]
path = "value"
column = "value"
"#,
    )],
    pipeline: r#"
version = 1
name = "comppar"
mappings_dir = "mappings"
[[stage]]
name = "stations"
entities = ["stations"]
"#,
    entities: &[("stations", "stations")],
    appwrite_tables: &[],
};

// (g) Keys a checkpoint must write as PostgreSQL reads them: a (date, int) key running from
// 10 BC into AD (chrono writes 1 BC as `-0000`, which PostgreSQL refuses), and a query source
// whose (int, int) key has NULL parts (rejected rows, sorted last within their group: a row
// comparison with a NULL part would drop them on resume). Keys with a NULL part stay distinct
// as text (`\N|40`, `100013|\N`), so that the rejects can be told apart. And a numeric key
// (negative, fractional: its text order is not its order) whose children are embedded.
const EDGE_KEYS: Shape = Shape {
    test: "edgekeys",
    sql: r#"
CREATE TABLE events (day date, slot int, at timestamptz NOT NULL, what text,
                     PRIMARY KEY (day, slot));
INSERT INTO events
SELECT '0010-01-01 BC'::date + g / 3, g % 3, '0010-01-01 00:00:00+00 BC'::timestamptz + g * interval '7 hours',
       CASE WHEN g % 1201 = 0 THEN repeat('w', 50) ELSE 'event ' || g END
FROM generate_series(1, 24000) g;
CREATE TABLE tallies (id serial PRIMARY KEY, grp int, n int, label text);
INSERT INTO tallies (grp, n, label)
SELECT CASE WHEN g % 10 = 0 THEN NULL WHEN g % 13 = 0 THEN 100000 + g ELSE g % 50 END,
       CASE WHEN g % 13 = 0 AND g % 10 <> 0 THEN NULL ELSE g END,
       'tally ' || g
FROM generate_series(1, 16000) g;
CREATE TABLE accounts (no numeric(12,2) PRIMARY KEY, holder text NOT NULL);
CREATE TABLE entries (id bigint PRIMARY KEY, account_no numeric(12,2) NOT NULL REFERENCES accounts,
                      amount numeric(10,2) NOT NULL);
INSERT INTO accounts SELECT (g - 4000) * 0.75, 'holder ' || g FROM generate_series(1, 9000) g;
INSERT INTO entries
SELECT row_number() OVER (ORDER BY md5(a.no::text || k)), a.no, k * 1.25 - 2
FROM accounts a, generate_series(1, (abs(a.no * 4)::int % 4)) k;
"#,
    mappings: &[
        (
            "events",
            r#"
version = 1
name = "events"
[source]
table = "events"
key = ["day", "slot"]
[[field]]
path = "at"
column = "at"
[[field]]
path = "what"
column = "what"
validate = { max_length = 40 }
"#,
        ),
        (
            "tallies",
            r#"
version = 1
name = "tallies"
[source]
query = "SELECT grp, n, label FROM tallies"
key = ["grp", "n"]
[[field]]
path = "label"
column = "label"
"#,
        ),
        (
            "accounts",
            r#"
version = 1
name = "accounts"
[source]
table = "accounts"
key = ["no"]
[[field]]
path = "holder"
column = "holder"
[[embed]]
path = "entries"
table = "entries"
foreign_key = "account_no"
order_by = ["id"]
[[embed.field]]
path = "amount"
column = "amount"
validate = { min = -1 }
"#,
        ),
    ],
    pipeline: r#"
version = 1
name = "edgekeys"
mappings_dir = "mappings"
[[stage]]
name = "events"
entities = ["events"]
[[stage]]
name = "tallies"
entities = ["tallies"]
depends_on = ["events"]
[[stage]]
name = "accounts"
entities = ["accounts"]
depends_on = ["tallies"]
"#,
    entities: &[
        ("events", "events"),
        ("tallies", "tallies"),
        ("accounts", "accounts"),
    ],
    appwrite_tables: &[],
};

// (h) Two plain tables in two stages, one after the other: a run killed while it copies the
// first has not begun the second, so what the second owes (a killed `--rerun --sync-deletes`)
// is known only from the run's own record, not from a step of its entity.
const TWO_STAGES: Shape = Shape {
    test: "two_stages",
    sql: r#"
CREATE TABLE alpha (id bigint PRIMARY KEY, name text NOT NULL, n integer NOT NULL);
INSERT INTO alpha SELECT g, 'alpha ' || g, g % 1000 FROM generate_series(1, 30000) g;
CREATE TABLE beta (id bigint PRIMARY KEY, label text NOT NULL, m integer);
INSERT INTO beta SELECT g * 3, 'beta ' || g, CASE WHEN g % 5 = 0 THEN NULL ELSE g END
FROM generate_series(1, 20000) g;
"#,
    mappings: &[
        (
            "alpha",
            r#"
version = 1
name = "alpha"
[source]
table = "alpha"
key = ["id"]
[[field]]
path = "name"
column = "name"
[[field]]
path = "n"
column = "n"
"#,
        ),
        (
            "beta",
            r#"
version = 1
name = "beta"
[source]
table = "beta"
key = ["id"]
[[field]]
path = "label"
column = "label"
[[field]]
path = "m"
column = "m"
"#,
        ),
    ],
    pipeline: r#"
version = 1
name = "two_stages"
mappings_dir = "mappings"
[[stage]]
name = "first"
entities = ["alpha"]
[[stage]]
name = "second"
entities = ["beta"]
depends_on = ["first"]
"#,
    entities: &[("alpha", "alpha"), ("beta", "beta")],
    appwrite_tables: &[],
};

// (h) A self-referencing table (an employee's manager) whose `exists` reference rejects the
// rows naming a rejected row, down chains of them, in both key directions (adv38 F6: a resumed
// stage forgot the rows rejected before its checkpoint and wrote the rows naming them).
const SELF_REF: Shape = Shape {
    test: "self_ref",
    sql: r#"
CREATE TABLE emp (id int PRIMARY KEY, manager int, name text);
INSERT INTO emp
SELECT g, CASE WHEN g = 1 THEN NULL WHEN g % 5 = 0 THEN g + 7
               WHEN g % 100 = 0 THEN g / 100 ELSE g - g % 100 END,
       CASE WHEN g % 53 = 0 THEN NULL ELSE 'emp ' || g END
FROM generate_series(1, 20000) g;
UPDATE emp SET manager = NULL WHERE manager > 20000 OR manager = 0 OR manager = id;
"#,
    mappings: &[(
        "emp",
        r#"
version = 1
name = "emp"
[source]
table = "emp"
key = ["id"]
[[field]]
path = "name"
column = "name"
validate = { required = true }
[[field]]
path = "managerId"
column = "manager"
reference = "emp"
validate = { exists = true }
"#,
    )],
    pipeline: r#"
version = 1
name = "self_ref"
mappings_dir = "mappings"
[[stage]]
name = "staff"
entities = ["emp"]
"#,
    entities: &[("emp", "emp")],
    appwrite_tables: &[],
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_referencing_table_killed_at_random_ends_identical() {
    chaos(&SELF_REF).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_table_killed_at_random_ends_identical() {
    chaos(&PLAIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_with_embedded_children_killed_at_random_ends_identical() {
    chaos(&EMBEDDED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composite_key_killed_at_random_ends_identical() {
    chaos(&COMPOSITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_key_killed_at_random_ends_identical() {
    chaos(&TEXT_KEY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appwrite_child_table_killed_at_random_ends_identical() {
    chaos(&APPWRITE_CHILDREN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composite_parent_with_embedded_children_killed_at_random_ends_identical() {
    chaos(&COMPOSITE_PARENT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bc_date_keys_and_query_keys_with_null_parts_killed_at_random_end_identical() {
    chaos(&EDGE_KEYS).await;
}

// The source changes between a complete run and a `--rerun --sync-deletes` run that is killed
// at random points and then finished by plain `migrate`s, which carry out what the killed run
// was asked (its owed intent): rows updated, deleted (children first), children moved and
// added, parents added. Deterministic, so both sides change alike.
const EMBEDDED_CHANGES: &str = r#"
UPDATE orders SET customer = customer || ' (moved)' WHERE order_id % 11 = 0;
UPDATE order_lines SET qty = qty + 1 WHERE line_id % 19 = 0;
UPDATE order_lines SET order_id = order_id + 1 WHERE line_id % 23 = 0 AND order_id < 12000;
DELETE FROM order_lines WHERE order_id % 17 = 0;
DELETE FROM orders WHERE order_id % 17 = 0;
INSERT INTO orders SELECT g, 'new ' || g, '2025-01-01 00:00:00+00', NULL FROM generate_series(12001, 12300) g;
INSERT INTO order_lines SELECT 1000000 + g, 12001 + g % 300, 'SKU-NEW', 1 + g % 4 FROM generate_series(1, 600) g;
"#;

const COMPOSITE_PARENT_CHANGES: &str = r#"
UPDATE stations SET name = name || '*' WHERE seq % 7 = 0;
UPDATE samples SET value = value + 1 WHERE sample_id % 13 = 0;
DELETE FROM samples WHERE seq % 11 = 0;
DELETE FROM stations WHERE seq % 11 = 0;
INSERT INTO stations SELECT 'West', s, 'west ' || s FROM generate_series(1, 300) s;
INSERT INTO samples SELECT 1000000 + s, 'West', s, s FROM generate_series(1, 300) s;
"#;

const APPWRITE_CHILDREN_CHANGES: &str = r#"
UPDATE visits SET patient = patient || ' b' WHERE ('x' || substr(visit_id::text, 1, 4))::bit(16)::int % 9 = 0;
UPDATE visit_notes SET n = n + 100 WHERE note_id % 13 = 0;
DELETE FROM visit_notes WHERE ('x' || substr(visit_id::text, 1, 4))::bit(16)::int % 11 = 0;
DELETE FROM visits WHERE ('x' || substr(visit_id::text, 1, 4))::bit(16)::int % 11 = 0;
INSERT INTO visits SELECT md5('new visit ' || g)::uuid, 'newcomer', '2025-01-01 00:00:00+00' FROM generate_series(1, 200) g;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rerun_of_embedded_children_is_finished_by_plain_runs() {
    chaos_intent(&EMBEDDED, EMBEDDED_CHANGES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rerun_of_a_composite_parent_is_finished_by_plain_runs() {
    chaos_intent(&COMPOSITE_PARENT, COMPOSITE_PARENT_CHANGES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rerun_into_an_appwrite_child_table_is_finished_by_plain_runs() {
    chaos_intent(&APPWRITE_CHILDREN, APPWRITE_CHILDREN_CHANGES).await;
}

// (i) A unique index whose keys move between rows in a re-run (two rows swapping codes, a
// code moving one way to a later row, a row repeating an unchanged row's code, new rows taking
// the codes of rows gone from the source): rows the index refuses while another row's older
// document holds their key are set aside and written at the stage's end (their batches' checkpoints
// wait for them), so a kill anywhere — also between removing their older documents and writing
// them again — must still end as the uninterrupted run.
const UNIQUE_SQL_MONGO: &str = r#"
CREATE TABLE accounts (id bigint PRIMARY KEY, code text NOT NULL, n integer NOT NULL);
INSERT INTO accounts SELECT g, 'c' || g, g % 100 FROM generate_series(1, 30000) g;
"#;

const UNIQUE_SQL_APPWRITE: &str = r#"
CREATE TABLE accounts (id bigint PRIMARY KEY, code text NOT NULL, n integer NOT NULL);
INSERT INTO accounts SELECT g, 'c' || g, g % 100 FROM generate_series(1, 4000) g;
"#;

const UNIQUE_MAPPING: &str = r#"
version = 1
name = "accounts"
[source]
table = "accounts"
key = ["id"]
[[field]]
path = "code"
column = "code"
[[field]]
path = "n"
column = "n"
[[index]]
keys = ["code"]
unique = true
"#;

const UNIQUE_MONGO: Shape = Shape {
    test: "uniqmg",
    sql: UNIQUE_SQL_MONGO,
    mappings: &[("accounts", UNIQUE_MAPPING)],
    pipeline: r#"
version = 1
name = "uniqmg"
mappings_dir = "mappings"
[[stage]]
name = "accounts"
entities = ["accounts"]
"#,
    entities: &[("accounts", "accounts")],
    appwrite_tables: &[],
};

const UNIQUE_APPWRITE: Shape = Shape {
    test: "uniqaw",
    sql: UNIQUE_SQL_APPWRITE,
    mappings: &[("accounts", UNIQUE_MAPPING)],
    pipeline: r#"
version = 1
name = "uniqaw"
mappings_dir = "mappings"
target = "appwrite"
[[stage]]
name = "accounts"
entities = ["accounts"]
"#,
    entities: &[("accounts", "accounts")],
    appwrite_tables: &["accounts"],
};

// Only codes no two changed rows both take: which of two rows written in the same run keeps a
// code depends on which lands first when batches are written side by side (MongoDB).
const UNIQUE_CHANGES: &str = r#"
UPDATE accounts SET code = CASE WHEN id % 500 = 1 THEN 'c' || (id + 1) ELSE 'c' || (id - 1) END
WHERE id % 500 IN (1, 2) AND id < (SELECT max(id) FROM accounts);
UPDATE accounts SET code = 'fresh ' || id WHERE id % 700 = 53;
UPDATE accounts SET code = 'c' || (id + 50) WHERE id % 700 = 3 AND id + 50 <= (SELECT max(id) FROM accounts);
UPDATE accounts SET code = 'c' || (id - 1), n = n + 1 WHERE id % 900 = 57;
DELETE FROM accounts WHERE id % 611 = 0;
INSERT INTO accounts
SELECT 1000000 + g, 'c' || (g * 611), 0 FROM generate_series(1, 60) g
WHERE g * 611 <= 4000 + 26000 * (SELECT (count(*) > 5000)::int FROM accounts)
  AND (g * 611) % 500 NOT IN (1, 2) AND (g * 611) % 700 <> 53 AND (g * 611) % 900 <> 56;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rerun_moving_unique_keys_is_finished_by_plain_runs() {
    chaos_intent(&UNIQUE_MONGO, UNIQUE_CHANGES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rerun_moving_appwrite_unique_keys_is_finished_by_plain_runs() {
    chaos_intent(&UNIQUE_APPWRITE, UNIQUE_CHANGES).await;
}

const TWO_STAGES_CHANGES: &str = r#"
UPDATE alpha SET n = n + 1 WHERE id % 13 = 0;
DELETE FROM alpha WHERE id % 17 = 0;
INSERT INTO alpha SELECT g, 'late alpha ' || g, 7 FROM generate_series(30001, 30200) g;
UPDATE beta SET label = label || ' (changed)' WHERE id % 7 = 0;
DELETE FROM beta WHERE id % 11 = 0;
INSERT INTO beta SELECT g * 3, 'late beta ' || g, NULL FROM generate_series(20001, 20150) g;
"#;

/// The run-level record of what a killed run was asked: the second stage had not begun when
/// the run was killed in the first, and the plain runs after must still rewrite and sync it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rerun_of_two_stages_is_finished_by_plain_runs_for_the_stage_not_begun() {
    chaos_intent_with(&TWO_STAGES, TWO_STAGES_CHANGES, false).await;
}

/// Owed intent: a complete run, then the source changes (`changes`), then `migrate --rerun
/// --sync-deletes` killed at random points and finished by plain `migrate`s (which must carry
/// out what the killed run was asked: rewrite every document, remove those whose rows are gone)
/// must end as the same command run once without a kill: the same documents byte for byte,
/// every report balanced, and `verify` passing.
async fn chaos_intent(shape: &Shape, changes: &str) {
    chaos_intent_with(shape, changes, true).await;
}

/// [`chaos_intent`]; with `repeat_intent` false, only the first attempt asks for the rerun (a
/// stage not begun then is owed by the run's record alone, never asked for again).
async fn chaos_intent_with(shape: &Shape, changes: &str, repeat_intent: bool) {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let test = std::thread::current()
        .name()
        .unwrap_or(shape.test)
        .to_string();
    eprintln!("chaos (owed intent) shape `{}`: seed {seed}", shape.test);
    let mut ctx = Ctx {
        shape: shape.test,
        test,
        seed,
        log: Vec::new(),
    };
    let intent = ["migrate", "--quiet", "--rerun", "--sync-deletes"];
    let reference = Side::new(shape, "iref").await;
    let side = Side::new(shape, "ichaos").await;
    for (s, name) in [(&reference, "reference"), (&side, "chaos")] {
        match s.run(&["migrate", "--quiet"], "first").await {
            Ok(out) if matches!(out.status.code(), Some(0 | 2)) => {}
            Ok(out) | Err(out) => {
                ctx.fail(&format!("the first run of the {name} side\n{}", out.text()))
            }
        }
        s.w.sql(changes).await;
    }
    // What one `rollback` after the re-run must give back, however many runs it took.
    let before = side.dump(shape).await;
    match reference.run(&intent, "reference").await {
        Ok(out) if matches!(out.status.code(), Some(0 | 2)) => {}
        Ok(out) | Err(out) => ctx.fail(&format!("the uninterrupted rerun\n{}", out.text())),
    }
    let expected = reference.dump(shape).await;

    let mut plan = kill_plan(shape, &mut rng);
    let mut totals = BTreeMap::new();
    for (entity, table) in shape.entities {
        totals.insert(*entity, side.w.pg_count(table).await as i64);
    }
    let planned = plan.len();
    let cycle = concurrency_cycle();
    let offset = rng.usize(0..cycle.len());
    let mut kills = 0;
    let mut problems = Vec::new();
    for n in 1.. {
        if n > planned + FINAL_ATTEMPTS {
            ctx.fail(&format!(
                "not complete after {} attempts ({kills} killed)",
                n - 1
            ));
        }
        let concurrency = cycle[(offset + n) % cycle.len()];
        let batch = BATCH_SIZES[rng.usize(0..BATCH_SIZES.len())];
        // The first attempt asks for the rerun; after a kill, a plain run owes it (or, at
        // random, the same command again while kills remain: the run that ends is plain).
        let again = repeat_intent && !plan.is_empty() && rng.u8(0..4) == 0;
        let mut args: Vec<String> = if n == 1 || again {
            intent.iter().map(|s| s.to_string()).collect()
        } else {
            vec!["migrate".into(), "--quiet".into()]
        };
        args.extend([
            "--batch-size".into(),
            batch.to_string(),
            "--concurrency".into(),
            concurrency.to_string(),
        ]);
        let flags = format!("attempt {n} ({})", args[1..].join(" "));
        let log = format!("intent-{n}");
        match attempt(&side, &ctx, &mut plan, &totals, &args, &log).await {
            Outcome::Killed { how, .. } => {
                kills += 1;
                ctx.log.push(format!("{flags}: {how}"));
            }
            Outcome::Exited(out, _) => {
                let code = out.status.code();
                ctx.log.push(format!("{flags}: exited {code:?}"));
                if !matches!(code, Some(0 | 2)) {
                    ctx.fail(&format!("{flags} failed\n{}", out.text()));
                }
                match side.incomplete().await {
                    Ok(left) if left.is_empty() => break,
                    Ok(left) => ctx.fail(&format!(
                        "{flags} exited {code:?} but the status says {left:?}"
                    )),
                    Err(e) => ctx.fail(&format!("status after {flags}: {e}")),
                }
            }
        }
    }
    if kills == 0 {
        ctx.fail("no kill landed: make the stages slower (more rows)");
    }
    let got = side.dump(shape).await;
    problems.extend(compare_dumps(&side, shape, &expected, &got).await);
    for r in side.reports() {
        for e in r["entities"].as_array().into_iter().flatten() {
            let n = |k: &str| e[k].as_u64().unwrap_or(0);
            if n("read") != n("written") + n("rejected") + n("skipped") {
                problems.push(format!(
                    "report {}: {} read {} ≠ written {} + rejected {} + skipped {}",
                    r["run_id"],
                    e["name"],
                    n("read"),
                    n("written"),
                    n("rejected"),
                    n("skipped")
                ));
            }
        }
    }
    if let Some(said) = side.verify().await {
        problems.push(format!("verify failed after the chaos: {}", tail(&said)));
    }
    // One rollback undoes the whole re-run, the steps the killed runs completed too (adv38 F1:
    // only the last run's entities were rolled back).
    match side.run(&["rollback"], "rollback").await {
        Ok(out) if out.status.success() => {
            let back = side.dump(shape).await;
            problems.extend(
                compare_dumps(&side, shape, &before, &back)
                    .await
                    .into_iter()
                    .map(|p| {
                        format!("after one rollback, against the target before the re-run: {p}")
                    }),
            );
        }
        Ok(out) | Err(out) => problems.push(format!("rollback failed\n{}", out.text())),
    }
    if !problems.is_empty() {
        ctx.fail(&problems.join("\n"));
    }
    eprintln!("{}", ctx.log.join("\n"));
    reference.drop().await;
    side.drop().await;
}

/// The Appwrite stand-in of one side, served by this test's runtime.
struct Aw {
    s: Arc<StandIn>,
    endpoint: String,
}

/// One target with its source: the reference or the chaos side of a shape.
struct Side {
    w: World,
    pipeline: PathBuf,
    aw: Option<Aw>,
}

/// How a child process ended.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ended {
    fn text(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

/// The last 4000 characters of a process's output.
fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(4000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl Side {
    async fn new(shape: &Shape, side: &str) -> Side {
        let w = World::new(&format!("chaos_{}_{side}", shape.test)).await;
        w.sql(shape.sql).await;
        let dir = w.dir.path();
        std::fs::create_dir_all(dir.join("mappings")).unwrap();
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        for (name, text) in shape.mappings {
            std::fs::write(dir.join(format!("mappings/{name}.toml")), text).unwrap();
        }
        std::fs::write(dir.join("pipeline.toml"), shape.pipeline).unwrap();
        let aw = if shape.appwrite() {
            let mut s = StandIn::new("cutover", KEY);
            s.column_delay = Duration::from_millis(20);
            let s = Arc::new(s);
            let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
                .await
                .unwrap();
            Some(Aw {
                s,
                endpoint: format!("http://{addr}/v1"),
            })
        } else {
            None
        };
        Side {
            pipeline: dir.join("pipeline.toml"),
            w,
            aw,
        }
    }

    /// `cutover ARGS… --pipeline <this side's pipeline>`, output into logs/<log>.{out,err}.
    fn spawn(&self, args: &[String], log: &str) -> tokio::process::Child {
        let logs = self.w.dir.path().join("logs");
        let out = std::fs::File::create(logs.join(format!("{log}.out"))).unwrap();
        let err = std::fs::File::create(logs.join(format!("{log}.err"))).unwrap();
        let mut cmd = tokio::process::Command::new(binary());
        cmd.current_dir(self.w.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CUTOVER_SOURCE_URL", &self.w.pg_url)
            .env("MONGODB_URI", common::mongo_uri())
            .env("CUTOVER_MONGODB_DATABASE", &self.w.mongo_db)
            .args(args)
            .arg("--pipeline")
            .arg(&self.pipeline)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        if let Some(aw) = &self.aw {
            cmd.env("APPWRITE_ENDPOINT", &aw.endpoint)
                .env("APPWRITE_PROJECT", "cutover")
                .env("APPWRITE_API_KEY", KEY)
                .env("APPWRITE_DATABASE", AW_DB);
        }
        cmd.spawn().expect("spawn cutover")
    }

    fn output(&self, log: &str, status: ExitStatus) -> Ended {
        let logs = self.w.dir.path().join("logs");
        let read = |ext: &str| {
            std::fs::read_to_string(logs.join(format!("{log}.{ext}"))).unwrap_or_default()
        };
        Ended {
            status,
            stdout: read("out"),
            stderr: read("err"),
        }
    }

    /// Runs `cutover ARGS…` to its end; Err when it passes the deadline (it is killed then).
    async fn run(&self, args: &[&str], log: &str) -> Result<Ended, Ended> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut child = self.spawn(&args, log);
        match tokio::time::timeout(DEADLINE, child.wait()).await {
            Ok(status) => Ok(self.output(log, status.unwrap())),
            Err(_) => {
                child.start_kill().unwrap();
                let status = child.wait().await.unwrap();
                Err(self.output(log, status))
            }
        }
    }

    /// Every step record of the ledger.
    async fn steps(&self) -> Vec<Document> {
        if let Some(aw) = &self.aw {
            return aw
                .s
                .rows(AW_DB, "cutover_steps")
                .iter()
                .filter_map(|r| {
                    let v: Value = serde_json::from_str(r["doc"].as_str()?).ok()?;
                    match Bson::try_from(v).ok()? {
                        Bson::Document(d) => Some(d),
                        _ => None,
                    }
                })
                .collect();
        }
        self.w
            .mongo()
            .await
            .collection::<Document>("cutover_steps")
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    /// Every document of the target, per collection (Appwrite: per table), by canonical _id.
    async fn dump(&self, shape: &Shape) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        if let Some(aw) = &self.aw {
            for table in shape.appwrite_tables {
                let rows =
                    aw.s.rows(AW_DB, table)
                        .into_iter()
                        .map(|mut r| {
                            let o = r.as_object_mut().expect("a row is an object");
                            for k in ["$createdAt", "$updatedAt", "$sequence"] {
                                o.remove(k);
                            }
                            (r["$id"].to_string(), r.to_string())
                        })
                        .collect();
                out.insert(table.to_string(), rows);
            }
            return out;
        }
        let db = self.w.mongo().await;
        for name in db.list_collection_names().await.unwrap() {
            if name.starts_with("cutover_") || name.contains("__backup__") {
                continue;
            }
            let docs: Vec<Document> = db
                .collection::<Document>(&name)
                .find(doc! {})
                .sort(doc! { "_id": 1 })
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let docs = docs
                .into_iter()
                .map(|d| {
                    let id = canonical(d.get("_id").unwrap_or(&Bson::Null));
                    (id, canonical(&Bson::Document(d)))
                })
                .collect();
            out.insert(name, docs);
        }
        out
    }

    /// Every rejected row of every run, as (entity, source key, rule), without duplicates.
    fn rejects(&self) -> BTreeSet<(String, String, String)> {
        let mut out = BTreeSet::new();
        let Ok(runs) = std::fs::read_dir(self.w.dir.path().join("rejects")) else {
            return out;
        };
        for run in runs {
            let run = run.unwrap().file_name().to_string_lossy().to_string();
            for (entity, key, _stage, rule) in self.w.rejects(&run) {
                out.insert((entity, key, rule));
            }
        }
        out
    }

    /// Every run report, oldest first.
    fn reports(&self) -> Vec<Value> {
        let Ok(entries) = std::fs::read_dir(self.w.dir.path().join("reports")) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.ends_with(".json") && !name.starts_with("verify-")
            })
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }

    /// `cutover status --json`.
    async fn status(&self) -> Result<Value, String> {
        match self.run(&["status", "--json"], "status").await {
            Ok(e) if e.status.success() => {
                serde_json::from_str(&e.stdout).map_err(|err| format!("{err}: {}", e.text()))
            }
            Ok(e) | Err(e) => Err(e.text()),
        }
    }

    /// Entities whose state is not `applied`, with their state.
    async fn incomplete(&self) -> Result<Vec<String>, String> {
        let status = self.status().await?;
        Ok(status["entities"]
            .as_array()
            .ok_or_else(|| format!("no entities in the status: {status}"))?
            .iter()
            .filter(|e| e["state"] != "applied")
            .map(|e| format!("{} is {}", e["entity"], e["state"]))
            .collect())
    }

    /// `cutover verify`: None when it passes, else what it said.
    async fn verify(&self) -> Option<String> {
        match self.run(&["verify"], "verify").await {
            Ok(out) if out.status.success() => None,
            Ok(out) | Err(out) => Some(out.text()),
        }
    }

    async fn count(&self, shape: &Shape, collection: &str) -> u64 {
        match &self.aw {
            Some(aw) => {
                assert!(shape.appwrite());
                aw.s.row_count(AW_DB, collection) as u64
            }
            None => self.w.count(collection).await,
        }
    }

    async fn drop(self) {
        self.w.drop().await;
    }
}

/// The binary under test: CUTOVER_CHAOS_BIN when set (a target directory shared by several
/// worktrees holds whichever `cutover` was built last), else cargo's.
fn binary() -> PathBuf {
    match std::env::var_os("CUTOVER_CHAOS_BIN") {
        Some(p) => PathBuf::from(p),
        None => assert_cmd::cargo::cargo_bin("cutover"),
    }
}

/// Canonical extended JSON keeping the field order of documents (serde_json's maps sort keys).
fn canonical(b: &Bson) -> String {
    match b {
        Bson::Document(d) => {
            let fields: Vec<String> = d
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Bson::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        other => other.clone().into_canonical_extjson().to_string(),
    }
}

fn int(d: &Document, k: &str) -> i64 {
    match d.get(k) {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

fn step_id(d: &Document) -> String {
    format!(
        "{}:{}",
        d.get_str("run_id").unwrap_or(""),
        d.get_str("entity").unwrap_or("")
    )
}

/// Where a planned kill -9 lands.
#[derive(Debug, Clone)]
enum Kill {
    /// As soon as the run's step of `entity` is running (before its first checkpoint), after
    /// `delay_ms`.
    AtStart { entity: &'static str, delay_ms: u64 },
    /// Once the run's checkpoint of `entity` has moved `n` times.
    AfterCheckpoints { entity: &'static str, n: u32 },
    /// Once the run's checkpoint of `entity` is `percent` % of the way from where the run
    /// started to the end of the table.
    AtPercent { entity: &'static str, percent: u64 },
    /// `ms` after the process started, wherever it is.
    AfterMs { ms: u64 },
}

impl Kill {
    fn entity(&self) -> Option<&'static str> {
        match self {
            Kill::AtStart { entity, .. }
            | Kill::AfterCheckpoints { entity, .. }
            | Kill::AtPercent { entity, .. } => Some(entity),
            Kill::AfterMs { .. } => None,
        }
    }
}

/// The kills of a shape, in pipeline order: for each entity one before its first checkpoint, one
/// right after it, and one or two further on; two at random times in between.
fn kill_plan(shape: &Shape, rng: &mut fastrand::Rng) -> VecDeque<Kill> {
    let mut plan = Vec::new();
    for (entity, _) in shape.entities {
        plan.push(Kill::AtStart {
            entity,
            delay_ms: rng.u64(0..30),
        });
        plan.push(Kill::AfterCheckpoints { entity, n: 1 });
        for _ in 0..rng.usize(1..=2) {
            plan.push(if rng.bool() {
                Kill::AfterCheckpoints {
                    entity,
                    n: rng.u32(2..8),
                }
            } else {
                Kill::AtPercent {
                    entity,
                    percent: rng.u64(10..90),
                }
            });
        }
    }
    // Never first: a timed kill waits its time while later kills wait their turn.
    for _ in 0..2 {
        let at = rng.usize(1..=plan.len());
        plan.insert(
            at,
            Kill::AfterMs {
                ms: rng.u64(50..800),
            },
        );
    }
    plan.into()
}

fn concurrency_cycle() -> Vec<usize> {
    match std::env::var("CUTOVER_CHAOS_CONCURRENCY") {
        Ok(s) => s
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("CUTOVER_CHAOS_CONCURRENCY: numbers separated by commas")
            })
            .collect(),
        Err(_) => CONCURRENCY.to_vec(),
    }
}

/// What a failure message must carry: the shape, the seed, and what happened so far.
struct Ctx {
    shape: &'static str,
    test: String,
    seed: u64,
    log: Vec<String>,
}

impl Ctx {
    fn fail(&self, what: &str) -> ! {
        panic!(
            "chaos shape `{}`: {what}\n\nreproduce: CUTOVER_CHAOS_SEED={} cargo test --test chaos {}\nattempts so far:\n  {}",
            self.shape,
            self.seed,
            self.test,
            self.log.join("\n  ")
        )
    }
}

/// How a chaos attempt ended, with the planned kills it went past without landing.
enum Outcome {
    /// Killed by `kill` (described by `how`).
    Killed {
        kill: Kill,
        how: String,
        missed: Vec<String>,
    },
    Exited(Ended, Vec<String>),
}

/// What a planned kill has seen of the run's step so far.
#[derive(Default)]
struct Watch {
    first_seen: Option<Instant>,
    base: i64,
    last: i64,
    moves: u32,
}

enum Verdict {
    Wait,
    Fire,
    /// The step finished in this run before the kill could land.
    Missed,
}

/// Whether `kill` lands now, given the run's step of its entity and the entity's source rows.
fn judge(
    kill: &Kill,
    step: Option<&Document>,
    total: i64,
    started: Instant,
    watch: &mut Watch,
) -> Verdict {
    if let Kill::AfterMs { ms } = kill {
        return if started.elapsed() >= Duration::from_millis(*ms) {
            Verdict::Fire
        } else {
            Verdict::Wait
        };
    }
    let Some(step) = step else {
        return Verdict::Wait;
    };
    if step.get_str("status") != Ok("running") {
        return Verdict::Missed;
    }
    let rows = int(step, "checkpoint_rows");
    let first = *watch.first_seen.get_or_insert_with(|| {
        watch.base = rows;
        watch.last = rows;
        Instant::now()
    });
    if rows != watch.last {
        watch.moves += 1;
        watch.last = rows;
    }
    let fire = match kill {
        Kill::AtStart { delay_ms, .. } => first.elapsed() >= Duration::from_millis(*delay_ms),
        Kill::AfterCheckpoints { n, .. } => watch.moves >= *n,
        Kill::AtPercent { percent, .. } => {
            let goal = watch.base + (total - watch.base).max(0) * *percent as i64 / 100;
            watch.moves > 0 && rows >= goal
        }
        Kill::AfterMs { .. } => unreachable!("handled above"),
    };
    if fire { Verdict::Fire } else { Verdict::Wait }
}

/// One chaos attempt: `cutover migrate` watched until `plan`'s next kill lands or it exits.
async fn attempt(
    side: &Side,
    ctx: &Ctx,
    plan: &mut VecDeque<Kill>,
    totals: &BTreeMap<&str, i64>,
    args: &[String],
    log: &str,
) -> Outcome {
    let known: BTreeSet<String> = side.steps().await.iter().map(step_id).collect();
    let mut child = side.spawn(args, log);
    let started = Instant::now();
    let mut watch = Watch::default();
    let mut missed = Vec::new();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Outcome::Exited(side.output(log, status), missed);
        }
        if started.elapsed() > DEADLINE {
            child.start_kill().unwrap();
            let status = child.wait().await.unwrap();
            let stood: Vec<String> = side
                .steps()
                .await
                .iter()
                .filter(|s| !known.contains(&step_id(s)))
                .map(|s| {
                    format!(
                        "{} {} at checkpoint {} of {} rows",
                        s.get_str("entity").unwrap_or("?"),
                        s.get_str("status").unwrap_or("?"),
                        int(s, "checkpoint_rows"),
                        totals.get(s.get_str("entity").unwrap_or("")).unwrap_or(&0)
                    )
                })
                .collect();
            ctx.fail(&format!(
                "`cutover {}` did not end within {DEADLINE:?} (a hang?); it was killed; its steps: {stood:?}\n{}",
                args.join(" "),
                side.output(log, status).text()
            ));
        }
        let Some(kill) = plan.front().cloned() else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let steps = side.steps().await;
        let step = kill.entity().and_then(|entity| {
            steps
                .iter()
                .find(|s| s.get_str("entity") == Ok(entity) && !known.contains(&step_id(s)))
        });
        let total = kill
            .entity()
            .and_then(|e| totals.get(e))
            .copied()
            .unwrap_or(0);
        match judge(&kill, step, total, started, &mut watch) {
            Verdict::Wait => {}
            Verdict::Missed => {
                missed.push(format!("{kill:?}"));
                plan.pop_front();
                watch = Watch::default();
                continue;
            }
            Verdict::Fire => {
                child.start_kill().unwrap(); // SIGKILL
                child.wait().await.unwrap();
                plan.pop_front();
                let at = match kill.entity() {
                    Some(entity) => {
                        let steps = side.steps().await;
                        let rows = steps
                            .iter()
                            .find(|s| {
                                s.get_str("entity") == Ok(entity) && !known.contains(&step_id(s))
                            })
                            .map(|s| int(s, "checkpoint_rows"))
                            .unwrap_or(0);
                        format!("; checkpoint of {entity} {} → {rows} rows", watch.base)
                    }
                    None => String::new(),
                };
                return Outcome::Killed {
                    how: format!(
                        "killed by {kill:?} after {} ms{at}",
                        started.elapsed().as_millis()
                    ),
                    kill,
                    missed,
                };
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

type Dump = BTreeMap<String, BTreeMap<String, String>>;

/// How the chaos side's documents (`got`) differ from the uninterrupted run's (`expected`):
/// collections, counts (read from the target), missing, extra and different documents.
async fn compare_dumps(side: &Side, shape: &Shape, expected: &Dump, got: &Dump) -> Vec<String> {
    let mut problems = Vec::new();
    let names = |d: &Dump| -> Vec<String> { d.keys().cloned().collect() };
    if names(got) != names(expected) {
        problems.push(format!(
            "collections: {:?}, the reference has {:?}",
            names(got),
            names(expected)
        ));
    }
    for (collection, want) in expected {
        let empty = BTreeMap::new();
        let have = got.get(collection).unwrap_or(&empty);
        let count = side.count(shape, collection).await;
        if count != want.len() as u64 {
            problems.push(format!(
                "{collection}: {count} documents, the reference has {}",
                want.len()
            ));
        }
        let missing: Vec<&String> = want.keys().filter(|k| !have.contains_key(*k)).collect();
        let extra: Vec<&String> = have.keys().filter(|k| !want.contains_key(*k)).collect();
        let different: Vec<(&String, &String, &String)> = want
            .iter()
            .filter_map(|(k, w)| have.get(k).filter(|h| *h != w).map(|h| (k, w, h)))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{collection}: {} documents missing, e.g. _id {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
        if !extra.is_empty() {
            problems.push(format!(
                "{collection}: {} documents the reference does not have, e.g. _id {:?}",
                extra.len(),
                &extra[..extra.len().min(5)]
            ));
        }
        if let Some((id, w, h)) = different.first() {
            problems.push(format!(
                "{collection}: {} documents differ from the reference; the first, _id {id}:\n    reference {w}\n    chaos     {h}",
                different.len()
            ));
        }
    }
    problems
}

fn seed() -> u64 {
    match std::env::var("CUTOVER_CHAOS_SEED") {
        Ok(s) => s.trim().parse().expect("CUTOVER_CHAOS_SEED: a number"),
        Err(_) => fastrand::u64(..),
    }
}

async fn chaos(shape: &Shape) {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let test = std::thread::current()
        .name()
        .unwrap_or(shape.test)
        .to_string();
    eprintln!("chaos shape `{}`: seed {seed}", shape.test);
    let mut ctx = Ctx {
        shape: shape.test,
        test,
        seed,
        log: Vec::new(),
    };

    // 1. The reference: one uninterrupted run with the default flags.
    let reference = Side::new(shape, "ref").await;
    let out = match reference.run(&["migrate", "--quiet"], "reference").await {
        Ok(out) => out,
        Err(out) => ctx.fail(&format!(
            "the uninterrupted reference run did not end within {DEADLINE:?}\n{}",
            out.text()
        )),
    };
    if !matches!(out.status.code(), Some(0 | 2)) {
        ctx.fail(&format!("the reference run failed\n{}", out.text()));
    }
    match reference.incomplete().await {
        Ok(left) if left.is_empty() => {}
        Ok(left) => ctx.fail(&format!("after the reference run: {left:?}")),
        Err(e) => ctx.fail(&format!("status after the reference run: {e}")),
    }
    let expected = reference.dump(shape).await;
    let expected_rejects = reference.rejects();
    if expected_rejects.is_empty() {
        ctx.fail("the reference run rejected nothing: the shape should reject a few rows");
    }
    for (entity, table) in shape.entities {
        let source = reference.w.pg_count(table).await;
        let rejected: BTreeSet<&str> = expected_rejects
            .iter()
            .filter(|(e, _, _)| e == entity)
            .map(|(_, key, _)| key.as_str())
            .collect();
        let written = reference.count(shape, entity).await;
        if written + rejected.len() as u64 != source {
            ctx.fail(&format!(
                "reference: {entity} has {written} documents and {} rejected rows, the source {source} rows",
                rejected.len()
            ));
        }
    }
    ctx.log.push(format!(
        "reference: {}",
        expected
            .iter()
            .map(|(c, docs)| format!("{c} {} docs", docs.len()))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // 2. Chaos: kill -9 at random points, then plain re-runs until complete.
    let side = Side::new(shape, "chaos").await;
    let mut plan = kill_plan(shape, &mut rng);
    let mut totals = BTreeMap::new();
    for (entity, table) in shape.entities {
        totals.insert(*entity, side.w.pg_count(table).await as i64);
    }
    let planned = plan.len();
    let cycle = concurrency_cycle();
    let offset = rng.usize(0..cycle.len());
    let mut kills = 0;
    // What differs from the uninterrupted run, reported together at the end.
    let mut problems = Vec::new();
    for n in 1.. {
        if n > planned + FINAL_ATTEMPTS {
            ctx.fail(&format!(
                "not complete after {} attempts ({kills} of them killed)",
                n - 1
            ));
        }
        // Kills aimed at an entity the ledger already holds as completed cannot land.
        let completed: BTreeSet<String> = side
            .steps()
            .await
            .iter()
            .filter(|s| s.get_str("status") == Ok("completed"))
            .filter_map(|s| s.get_str("entity").ok().map(str::to_string))
            .collect();
        while plan
            .front()
            .and_then(Kill::entity)
            .is_some_and(|e| completed.contains(e))
        {
            plan.pop_front();
        }
        let concurrency = cycle[(offset + n) % cycle.len()];
        let batch = BATCH_SIZES[rng.usize(0..BATCH_SIZES.len())];
        let args: Vec<String> = [
            "migrate",
            "--quiet",
            "--batch-size",
            &batch.to_string(),
            "--concurrency",
            &concurrency.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let flags = format!("attempt {n} (--batch-size {batch} --concurrency {concurrency})");
        let log = format!("attempt-{n}");
        let outcome = attempt(&side, &ctx, &mut plan, &totals, &args, &log).await;
        let missed = |m: &[String]| match m {
            [] => String::new(),
            m => format!(" (went past {})", m.join(", ")),
        };
        match outcome {
            Outcome::Killed {
                kill,
                how,
                missed: m,
            } => {
                kills += 1;
                ctx.log.push(format!("{flags}: {how}{}", missed(&m)));
                // The dead run's step is interrupted (or it completed just before the kill).
                if let Some(entity) = kill.entity() {
                    let status = match side.status().await {
                        Ok(s) => s,
                        Err(e) => ctx.fail(&format!("status after the kill of {flags}: {e}")),
                    };
                    let state = status["entities"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|e| e["entity"] == entity)
                        .map(|e| e["state"].clone())
                        .unwrap_or(Value::Null);
                    if state != "interrupted" && state != "applied" {
                        problems.push(format!(
                            "after the kill of {flags}, the status calls {entity} {state}, not interrupted"
                        ));
                    }
                }
            }
            Outcome::Exited(out, m) => {
                let code = out.status.code();
                ctx.log
                    .push(format!("{flags}: exited {code:?}{}", missed(&m)));
                if !matches!(code, Some(0 | 2)) {
                    ctx.fail(&format!("{flags} failed\n{}", out.text()));
                }
                match side.incomplete().await {
                    Ok(left) if left.is_empty() => break,
                    Ok(left) => ctx.fail(&format!(
                        "{flags} exited {code:?} but the status says {left:?}\n{}",
                        out.text()
                    )),
                    Err(e) => ctx.fail(&format!("status after {flags}: {e}")),
                }
            }
        }
    }
    if kills == 0 {
        ctx.fail("no kill landed: make the stages slower (more rows)");
    }

    // 3. The same end as the uninterrupted run.
    let got = side.dump(shape).await;
    problems.extend(compare_dumps(&side, shape, &expected, &got).await);

    let got_rejects = side.rejects();
    let lost: Vec<_> = expected_rejects.difference(&got_rejects).collect();
    let more: Vec<_> = got_rejects.difference(&expected_rejects).collect();
    if !lost.is_empty() {
        problems.push(format!(
            "rejects: {} of the reference's {} (entity, source key, rule) are in no run's rejects file, e.g. {:?}",
            lost.len(),
            expected_rejects.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    if !more.is_empty() {
        problems.push(format!(
            "rejects: {} the reference does not have, e.g. {:?}",
            more.len(),
            &more[..more.len().min(5)]
        ));
    }

    let reports = side.reports();
    if reports.is_empty() {
        problems.push("no run report was written".into());
    }
    for r in &reports {
        for e in r["entities"].as_array().into_iter().flatten() {
            let n = |k: &str| e[k].as_u64().unwrap_or(0);
            if n("read") != n("written") + n("rejected") + n("skipped") {
                problems.push(format!(
                    "report {}: {} read {} ≠ written {} + rejected {} + skipped {}",
                    r["run_id"],
                    e["name"],
                    n("read"),
                    n("written"),
                    n("rejected"),
                    n("skipped")
                ));
            }
        }
    }
    // The run that finished an entity (when it lived to write its report) accounts for every row
    // of it, the parts before its checkpoint included: it counts the source's rows, the
    // reference's rejects, and its rejects file holds each reject line exactly once (those of the
    // interrupted runs it continued copied in).
    let reference_reports = reference.reports();
    for (entity, table) in shape.entities {
        let finishing = |reports: &[Value]| {
            reports.iter().rev().find_map(|r| {
                let e = r["entities"]
                    .as_array()
                    .and_then(|es| es.iter().find(|e| e["name"] == *entity))?;
                Some((
                    r["run_id"].as_str().unwrap_or_default().to_string(),
                    e.clone(),
                ))
            })
        };
        let Some((run, e)) = finishing(&reports) else {
            continue;
        };
        let source = side.w.pg_count(table).await;
        let read = e["read"].as_u64().unwrap_or(0);
        let after = e["resumed_after_rows"].as_u64().unwrap_or(0);
        if read != source {
            problems.push(format!(
                "{entity}: the finishing run counts {read} rows read (after a checkpoint of {after}), the source has {source}"
            ));
        }
        let Some((reference_run, r)) = finishing(&reference_reports) else {
            continue;
        };
        if e["rejected"] != r["rejected"] {
            problems.push(format!(
                "{entity}: the finishing run counts {} rejected rows, the uninterrupted run {}",
                e["rejected"], r["rejected"]
            ));
        }
        let lines = |w: &World, run: &str| {
            let mut l: Vec<(String, String)> = w
                .rejects(run)
                .into_iter()
                .filter(|(en, ..)| en == entity)
                .map(|(_, key, _, rule)| (key, rule))
                .collect();
            l.sort();
            l
        };
        let (have, want) = (lines(&side.w, &run), lines(&reference.w, &reference_run));
        if have != want {
            problems.push(format!(
                "{entity}: the finishing run's rejects file has {} lines, the uninterrupted run's {} (each reject once)",
                have.len(),
                want.len()
            ));
        }
    }
    // The ledger's completed steps balance too (a run killed after an entity completed wrote no
    // report, only the step).
    for s in side.steps().await {
        if s.get_str("status") != Ok("completed") {
            continue;
        }
        let n = |k: &str| int(&s, k);
        if n("read") != n("written") + n("rejected") + n("skipped") {
            problems.push(format!(
                "ledger step {}: read {} ≠ written {} + rejected {} + skipped {}",
                step_id(&s),
                n("read"),
                n("written"),
                n("rejected"),
                n("skipped")
            ));
        }
    }
    // verify re-derives every document from the source and compares.
    if let Some(text) = side.verify().await {
        let also = match reference.verify().await {
            Some(_) => " (nor after the uninterrupted run: not the kills)",
            None => "",
        };
        problems.push(format!(
            "`cutover verify` after the last run does not pass{also}\n{text}"
        ));
    }
    ctx.log.push(format!("{kills} kills"));
    if !problems.is_empty() {
        ctx.fail(&format!(
            "the end differs from the uninterrupted run:\n  - {}",
            problems.join("\n  - ")
        ));
    }
    eprintln!("{}", ctx.log.join("\n"));
    reference.drop().await;
    side.drop().await;
}
