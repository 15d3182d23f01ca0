//! How verify shows a source value in a mismatch: as PostgreSQL writes the column's value, as an
//! SQL literal — not in the form the oracle reads it in (days or epoch seconds for dates and
//! timestamps, bare hex for bytea), which the person signing off cannot look up in the source.

use super::calendar;
use super::compare::Check;

/// The form a column's oracle rendering is shown in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shown {
    /// The rendering is PostgreSQL's text of the value.
    AsIs,
    /// Days since 1970-01-01 → `'YYYY-MM-DD'` (`… BC` before year 1).
    Date,
    /// Epoch seconds → `'YYYY-MM-DD HH:MM:SS[.ffffff]'`, with `+00` for a timestamptz (the
    /// oracle reads under `TimeZone = 'UTC'`).
    Timestamp { tz: bool },
    /// Hex of the bytes → `'\x…'` (PostgreSQL's `bytea_output = 'hex'`).
    Bytea,
    /// x and y → `'(x,y)'`.
    Point,
    /// An array is compared as `to_jsonb` renders it, and shown so: `'[…]'::jsonb`.
    Jsonb,
}

impl Shown {
    /// The form of a column of `pg_type` compared by `check`.
    pub(super) fn of(check: &Check, pg_type: &str) -> Shown {
        match check {
            Check::Array(_) => Shown::Jsonb,
            Check::Date => Shown::Date,
            Check::Instant { .. } | Check::InstantText { .. } => Shown::Timestamp {
                tz: pg_type.eq_ignore_ascii_case("TIMESTAMPTZ"),
            },
            Check::Bytes | Check::Base64 | Check::Hex => Shown::Bytea,
            Check::Point => Shown::Point,
            _ => Shown::AsIs,
        }
    }

    /// `text` (the oracle's rendering; `None`: NULL) as an SQL literal of PostgreSQL's text.
    pub(super) fn literal(self, text: Option<&str>) -> String {
        let Some(t) = text else {
            return quoted(None);
        };
        let pg = match self {
            Shown::AsIs => None,
            Shown::Date => t.parse::<i64>().ok().map(date_text),
            Shown::Timestamp { tz } => epoch_micros(t).map(|us| {
                let secs = us.div_euclid(1_000_000);
                let frac = us.rem_euclid(1_000_000);
                let days = secs.div_euclid(86_400) as i64;
                let s = secs.rem_euclid(86_400);
                let (y, bc) = year_text(days);
                let (_, m, d) = calendar::civil(days);
                let mut out = format!(
                    "{y}-{m:02}-{d:02} {:02}:{:02}:{:02}",
                    s / 3600,
                    s / 60 % 60,
                    s % 60
                );
                if frac != 0 {
                    let f = format!("{frac:06}");
                    out.push('.');
                    out.push_str(f.trim_end_matches('0'));
                }
                if tz {
                    out.push_str("+00");
                }
                out.push_str(bc);
                out
            }),
            Shown::Bytea => Some(format!("\\x{t}")),
            Shown::Point => t.split_once(' ').map(|(x, y)| format!("({x},{y})")),
            Shown::Jsonb => return format!("{}::jsonb", quoted(Some(t))),
        };
        // A text the oracle could not read back (infinity, say) is shown as it came.
        quoted(Some(pg.as_deref().unwrap_or(t)))
    }
}

/// PostgreSQL's text as an SQL literal, so that a text `NULL` (an enum label, say) and the SQL
/// NULL read apart. A text holding control characters (a newline would split verify's one-line
/// report) is written as PostgreSQL's escape string, `E'a\nb'`.
pub(crate) fn quoted(text: Option<&str>) -> String {
    match text {
        Some(t) if t.chars().any(char::is_control) => {
            let mut out = String::from("E'");
            for c in t.chars() {
                match c {
                    '\'' => out.push_str("''"),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('\'');
            out
        }
        Some(t) => format!("'{}'", t.replace('\'', "''")),
        None => "NULL".into(),
    }
}

/// `extract(epoch …)`'s text (`-12.5`, `1704164645.123456`) in microseconds.
fn epoch_micros(t: &str) -> Option<i128> {
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || frac.len() > 6
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i128 = whole.parse().ok()?;
    let frac: i128 = format!("{frac:0<6}").parse().ok()?;
    let us = whole.checked_mul(1_000_000)?.checked_add(frac)?;
    Some(if negative { -us } else { us })
}

/// PostgreSQL's text of the date `days` after 1970-01-01 (ISO, `DateStyle` pinned).
fn date_text(days: i64) -> String {
    let (y, bc) = year_text(days);
    let (_, m, d) = calendar::civil(days);
    format!("{y}-{m:02}-{d:02}{bc}")
}

/// The year of `days` as PostgreSQL writes it: at least four digits, years before 1 as BC
/// (year 0 is 1 BC).
fn year_text(days: i64) -> (String, &'static str) {
    let (y, _, _) = calendar::civil(days);
    if y <= 0 {
        (format!("{:04}", 1 - y), " BC")
    } else {
        (format!("{y:04}"), "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_values_read_as_sql_literals_on_one_line() {
        assert_eq!(quoted(None), "NULL");
        assert_eq!(quoted(Some("NULL")), "'NULL'");
        assert_eq!(quoted(Some("it's")), "'it''s'");
        assert_eq!(quoted(Some("a\nb\\c'\u{1}")), "E'a\\nb\\\\c''\\u0001'");
    }

    // The expected texts are PostgreSQL 15's own (`SELECT d::text`, `ts::text` under
    // TimeZone UTC); the integration test compares with the server itself.
    #[test]
    fn dates_and_timestamps_read_as_postgresql_writes_them() {
        assert_eq!(Shown::Date.literal(Some("0")), "'1970-01-01'");
        assert_eq!(Shown::Date.literal(Some("19782")), "'2024-02-29'");
        assert_eq!(Shown::Date.literal(Some("-719163")), "'0001-12-31 BC'");
        assert_eq!(Shown::Date.literal(Some("-719528")), "'0001-01-01 BC'");
        assert_eq!(Shown::Date.literal(Some("-719162")), "'0001-01-01'");
        assert_eq!(Shown::Date.literal(Some("2932897")), "'10000-01-01'");
        assert_eq!(Shown::Date.literal(Some("infinity")), "'infinity'");
        let tz = Shown::Timestamp { tz: true };
        assert_eq!(
            tz.literal(Some("1704164645.123456")),
            "'2024-01-02 03:04:05.123456+00'"
        );
        assert_eq!(
            tz.literal(Some("1704164645.100000")),
            "'2024-01-02 03:04:05.1+00'"
        );
        assert_eq!(
            Shown::Timestamp { tz: false }.literal(Some("-0.5")),
            "'1969-12-31 23:59:59.5'"
        );
        assert_eq!(
            Shown::Timestamp { tz: false }.literal(Some("-62167219200")),
            "'0001-01-01 00:00:00 BC'"
        );
        assert_eq!(
            tz.literal(Some("-62167219200")),
            "'0001-01-01 00:00:00+00 BC'"
        );
        assert_eq!(Shown::Bytea.literal(Some("00ff")), "'\\x00ff'");
        assert_eq!(Shown::Point.literal(Some("1.5 -2")), "'(1.5,-2)'");
        assert_eq!(Shown::Jsonb.literal(Some("[1, 2]")), "'[1, 2]'::jsonb");
        assert_eq!(Shown::Jsonb.literal(None), "NULL");
    }
}
