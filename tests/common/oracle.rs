//! An oracle for what lands in MongoDB, written apart from cutover's converter: PostgreSQL's own
//! rendering of a value (see [`Class::render`]) against the BSON value, compared by PostgreSQL
//! (numerics, instants) or by Rust's correctly rounded float parsing.

use bson::Bson;
use sqlx::PgConnection;

/// How a PostgreSQL value is rendered for the oracle and what it must land as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Class {
    /// bool and integers: their text.
    Int,
    /// real: the f32 widened exactly (its shortest f32 text is PostgreSQL's).
    Real,
    /// double precision: bit for bit.
    Double,
    /// numeric → Decimal128: the same value and scale.
    Numeric,
    /// The value's text as PostgreSQL outputs it (text, enums, intervals, uuids…).
    Text,
    /// date / timestamp / timestamptz → a BSON date: the same epoch milliseconds.
    Instant,
    /// bytea → binary: the same bytes.
    Bytes,
    /// json / jsonb → a document or array equal to PostgreSQL's text parsed.
    Json,
}

impl Class {
    /// The SQL rendering of `x` this class compares against.
    pub fn render(self, x: &str) -> String {
        match self {
            Class::Int | Class::Real | Class::Double | Class::Numeric | Class::Json => {
                format!("{x}::text")
            }
            Class::Text => format!("(to_jsonb({x}) #>> '{{}}')"),
            Class::Instant => format!("(extract(epoch FROM {x}) * 1000)::numeric::text"),
            Class::Bytes => format!("encode({x}, 'hex')"),
        }
    }
}

async fn pg_bool(c: &mut PgConnection, sql: &str, a: &str, b: &str) -> bool {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(a)
        .bind(b)
        .fetch_one(c)
        .await
        .unwrap_or(false)
}

/// Why `got` is not PostgreSQL's rendering `pg` (`None`: SQL NULL), or `None` when it is exactly it.
pub async fn differs(
    c: &mut PgConnection,
    class: Class,
    got: &Bson,
    pg: Option<&str>,
) -> Option<String> {
    let Some(pg) = pg else {
        return (!matches!(got, Bson::Null)).then(|| format!("{got} for NULL"));
    };
    let ok = match (class, got) {
        (Class::Int, Bson::Boolean(_) | Bson::Int32(_) | Bson::Int64(_)) => got.to_string() == pg,
        (Class::Real, Bson::Double(d)) => {
            let f = *d as f32;
            let want = match pg {
                "NaN" => f32::NAN,
                "Infinity" => f32::INFINITY,
                "-Infinity" => f32::NEG_INFINITY,
                t => t.parse::<f32>().unwrap(),
            };
            f64::from(f).to_bits() == d.to_bits() && want.to_bits() == f.to_bits()
        }
        (Class::Double, Bson::Double(d)) => {
            let want = match pg {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                t => t.parse::<f64>().unwrap(),
            };
            want.to_bits() == d.to_bits()
        }
        (Class::Numeric, Bson::Decimal128(d)) => {
            pg_bool(
                c,
                "SELECT $1::numeric = $2::numeric AND scale($1::numeric) IS NOT DISTINCT FROM scale($2::numeric)",
                &d.to_string(),
                pg,
            )
            .await
        }
        (Class::Text, Bson::String(s)) => s == pg,
        (Class::Instant, Bson::DateTime(t)) => {
            pg_bool(c, "SELECT $1::numeric = $2::numeric", &t.timestamp_millis().to_string(), pg).await
        }
        (Class::Json, Bson::Document(_) | Bson::Array(_)) => {
            let want: serde_json::Value = serde_json::from_str(pg).unwrap();
            got.clone().into_relaxed_extjson() == want
        }
        (Class::Bytes, Bson::Binary(b)) => {
            b.bytes.iter().map(|x| format!("{x:02x}")).collect::<String>() == pg
        }
        _ => false,
    };
    (!ok).then(|| format!("{got} is not PostgreSQL's {pg}"))
}
