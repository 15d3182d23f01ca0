//! Type-aware comparison of PostgreSQL's own rendering of a value (its text output, read by
//! verify's own query) with the BSON value in the target. Written apart from `transform/` on
//! purpose: it decodes Decimal128 bits, parses decimal and float text and JSON itself, so that a
//! conversion mistake cannot hide behind the same mistake here. Pure functions, no I/O.

use bson::Bson;
use bson::spec::BinarySubtype;

use super::calendar;
use super::json::{self, J};
use crate::mapping::spec::{Lossy, SubMillis, UuidFormat};

/// What a field's target value must be, given PostgreSQL's rendering of the column.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Integer text → that BSON integer type, same value (`long`: int64, else int32).
    Int {
        long: bool,
    },
    /// Integer or numeric text → the nearest double (exact when it is one; `lossy` decides else).
    NearestDouble,
    /// Integer text → Decimal128 of that integer, exponent 0.
    IntDecimal,
    /// `real` text → the correctly rounded float, widened: bit-exact.
    Float4,
    /// `double precision` text (shortest round-trip) → the correctly rounded double: bit-exact.
    Float8,
    /// Float text → a Decimal128 of the same decimal value.
    FloatDecimal,
    /// `numeric` text → Decimal128 with the same digits and scale (more than 34 significant
    /// digits: the same value, as much scale as fits — the documented `decimal_scale` warning).
    Numeric,
    Bool,
    /// The same string.
    Text,
    Uuid(UuidFormat),
    /// Hex of the bytes → BSON binary (generic subtype).
    Bytes,
    Base64,
    Hex,
    /// Epoch seconds (or RFC 3339 inside arrays) → a BSON date; `offset_s` is the mapping's zone
    /// of a `timestamp without time zone` (0 for timestamptz).
    Instant {
        sub_millis: SubMillis,
        offset_s: i64,
    },
    /// The exact RFC 3339 text `keep_string` writes next to a truncated date.
    InstantText {
        offset_s: i64,
    },
    /// Days since 1970-01-01 (or `YYYY-MM-DD` inside arrays) → a BSON date at midnight UTC.
    Date,
    /// JSON text → documents key by key, arrays element by element, numbers as exact values.
    Json {
        lossy: Lossy,
    },
    /// `to_jsonb` of an array → a BSON array, element by element (nested for 2-D arrays).
    Array(Box<Check>),
    /// A `point`'s x and y as PostgreSQL prints them (`x y`) → GeoJSON `{type: "Point",
    /// coordinates: [x, y]}`, both doubles bit-exact; one out of range (or NaN) must have been
    /// rejected.
    Point,
}

impl Check {
    /// How the check reads, for the report.
    pub fn describe(&self) -> String {
        match self {
            Check::Int { long: true } => "integer → int64".into(),
            Check::Int { long: false } => "integer → int32".into(),
            Check::NearestDouble => "exact number → nearest double".into(),
            Check::IntDecimal => "integer → Decimal128".into(),
            Check::Float4 => "real text → double, bit-exact".into(),
            Check::Float8 => "double text → double, bit-exact".into(),
            Check::FloatDecimal => "float text → Decimal128 value".into(),
            Check::Numeric => "numeric text → Decimal128, digits and scale".into(),
            Check::Bool => "boolean".into(),
            Check::Text => "text, byte for byte".into(),
            Check::Uuid(UuidFormat::Binary) => "uuid → binary subtype 4".into(),
            Check::Uuid(UuidFormat::String) => "uuid → string".into(),
            Check::Bytes => "bytes → binary".into(),
            Check::Base64 => "bytes → base64".into(),
            Check::Hex => "bytes → hex".into(),
            Check::Instant { sub_millis, .. } => format!(
                "instant in µs → date in ms (sub-millisecond: {})",
                match sub_millis {
                    SubMillis::Reject => "rejected",
                    SubMillis::Truncate => "truncated",
                    SubMillis::KeepString => "truncated, exact text kept",
                }
            ),
            Check::InstantText { .. } => "instant in µs → RFC 3339 text".into(),
            Check::Date => "date → date at midnight UTC".into(),
            Check::Json { .. } => "JSON, numbers as exact decimals".into(),
            Check::Array(e) => format!("array, element by element ({})", e.describe()),
            Check::Point => "point x y → GeoJSON Point [lon, lat], bit-exact".into(),
        }
    }
}

/// A decimal number: `coef × 10^exp`, `coef` digits without leading zeros ("0" for zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dec {
    pub neg: bool,
    pub coef: String,
    pub exp: i64,
}

impl Dec {
    /// Parses `-12.340`, `1e5`, `1.5E-3` (digits required; no NaN or infinity).
    pub fn parse(text: &str) -> Option<Dec> {
        let t = text.trim();
        let (neg, t) = match t.as_bytes().first()? {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let (mantissa, exponent) = match t.find(['e', 'E']) {
            Some(i) => (&t[..i], Some(&t[i + 1..])),
            None => (t, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = format!("{int}{frac}");
        let coef = digits.trim_start_matches('0');
        let exp = match exponent {
            Some(e) => e
                .parse::<i64>()
                .ok()
                .and_then(|e| e.checked_sub(frac.len() as i64)),
            None => 0i64.checked_sub(frac.len() as i64),
        };
        match exp {
            Some(exp) => Some(Dec {
                neg,
                coef: if coef.is_empty() { "0" } else { coef }.to_string(),
                exp,
            }),
            // Zero under an exponent beyond 64 bits is still zero (`0e999999999999999999999`,
            // valid JSON that a `json` column keeps as written); another number is none.
            None if coef.is_empty() => {
                let e = exponent.unwrap_or("0");
                let e = e.strip_prefix(['+', '-']).unwrap_or(e);
                (!e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())).then(|| Dec {
                    neg,
                    coef: "0".into(),
                    exp: 0,
                })
            }
            None => None,
        }
    }

    fn is_zero(&self) -> bool {
        self.coef == "0"
    }

    /// The same value without trailing zeros (zero is `0e0`, positive).
    pub fn normalized(&self) -> Dec {
        if self.is_zero() {
            return Dec {
                neg: false,
                coef: "0".into(),
                exp: 0,
            };
        }
        let coef = self.coef.trim_end_matches('0');
        Dec {
            neg: self.neg,
            coef: coef.to_string(),
            exp: self
                .exp
                .saturating_add((self.coef.len() - coef.len()) as i64),
        }
    }

    pub fn same_value(&self, other: &Dec) -> bool {
        self.normalized() == other.normalized()
    }

    /// Same digits and exponent (the scale too), sign aside for zero.
    pub fn same_digits(&self, other: &Dec) -> bool {
        self.coef == other.coef
            && self.exp == other.exp
            && (self.neg == other.neg || self.is_zero())
    }
}

/// A Decimal128 decoded from its bits (IEEE 754-2008 BID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum D128 {
    Finite(Dec),
    Infinity { neg: bool },
    NaN,
}

pub fn decode_decimal128(bytes: [u8; 16]) -> D128 {
    let bits = u128::from_le_bytes(bytes);
    let neg = bits >> 127 == 1;
    let (exp, coef) = if (bits >> 125) & 0b11 == 0b11 {
        match (bits >> 122) & 0b11111 {
            0b11110 => return D128::Infinity { neg },
            0b11111 => return D128::NaN,
            // The large-coefficient form: always above 10^34 - 1, non-canonical, read as zero.
            _ => (((bits >> 111) & 0x3fff) as i64, 0u128),
        }
    } else {
        (((bits >> 113) & 0x3fff) as i64, bits & ((1u128 << 113) - 1))
    };
    let coef = if coef >= 10u128.pow(34) { 0 } else { coef };
    D128::Finite(Dec {
        neg,
        coef: coef.to_string(),
        exp: exp - 6176,
    })
}

/// PostgreSQL's text of a float (`NaN`, `Infinity`, `-Infinity` or decimal text).
fn pg_f64(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        t => t.parse::<f64>().ok(),
    }
}

fn pg_f32(text: &str) -> Option<f32> {
    match text {
        "NaN" => Some(f32::NAN),
        "Infinity" => Some(f32::INFINITY),
        "-Infinity" => Some(f32::NEG_INFINITY),
        t => t.parse::<f32>().ok(),
    }
}

fn same_double(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

/// Which ISO 8601 text [`iso`] reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum IsoForm {
    /// PostgreSQL's (`to_jsonb` of a date, timestamp or timestamptz): the year unsigned, of at
    /// least four digits (`10000-01-01`, `262142-12-31`), the year of its era followed by ` BC`
    /// at the very end before year 1 (`0044-03-15T00:00:00+00:00 BC`); a time and a zone
    /// offset (`+HH`, `+HH:MM`, `+HH:MM:SS`) when the type has them.
    Postgres,
    /// RFC 3339 with ISO 8601's expanded years, as an exact text is written: a time and a zone
    /// (`Z`, `+HH:MM`) always; a year of 0000–9999 as four digits, another astronomical and
    /// signed (`-0043` is 44 BC, `+10000`).
    Rfc3339,
}

/// Days since 1970 and microseconds within the day (`None`: a date only; the zone's offset
/// applied) of ISO 8601 text of the form `form`; `None` when it is not such a text.
fn iso(text: &str, form: IsoForm) -> Option<(i64, Option<i64>)> {
    fn digits(s: &str, min: usize, max: usize) -> Option<(i64, &str)> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        if n < min || n > max {
            return None;
        }
        Some((s[..n].parse().ok()?, &s[n..]))
    }
    fn two(s: &str) -> Option<(i64, &str)> {
        digits(s, 2, 2)
    }
    let (t, bc) = match (form, text.strip_suffix(" BC")) {
        (IsoForm::Postgres, Some(t)) => (t, true),
        _ => (text, false),
    };
    // The year: at most 9 digits (PostgreSQL's dates end in year 5874897).
    let (year, t) = match (form, t.as_bytes().first()?) {
        (IsoForm::Rfc3339, b'+' | b'-') => {
            let (y, t1) = digits(&t[1..], 4, 9)?;
            (if t.starts_with('-') { -y } else { y }, t1)
        }
        (IsoForm::Rfc3339, _) => digits(t, 4, 4)?,
        (IsoForm::Postgres, _) => digits(t, 4, 9)?,
    };
    let year = match bc {
        // There is no year 0 BC: 1 BC is year 0.
        true if year == 0 => return None,
        true => 1 - year,
        false => year,
    };
    let (month, t) = two(t.strip_prefix('-')?)?;
    let (day, t) = two(t.strip_prefix('-')?)?;
    if !(1..=12).contains(&month) || day < 1 || day > calendar::month_days(year, month) {
        return None;
    }
    let days = calendar::civil_days(year, month, day);
    if t.is_empty() && form == IsoForm::Postgres {
        return Some((days, None));
    }
    let (hour, t) = two(t.strip_prefix('T')?)?;
    let (minute, t) = two(t.strip_prefix(':')?)?;
    let (second, mut t) = two(t.strip_prefix(':')?)?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut micros = ((hour * 60 + minute) * 60 + second) * 1_000_000;
    if let Some(f) = t.strip_prefix('.') {
        let n = f.bytes().take_while(u8::is_ascii_digit).count();
        // Finer than a microsecond: not a value PostgreSQL has (nor one to compare in µs).
        if n == 0 || n > 9 || f[6.min(n)..n].bytes().any(|b| b != b'0') {
            return None;
        }
        let us: i64 = format!("{:0<6}", &f[..n.min(6)]).parse().ok()?;
        micros += us;
        t = &f[n..];
    }
    let offset_s = match t.as_bytes().first() {
        None if form == IsoForm::Postgres => 0,
        Some(b'Z') if t.len() == 1 => 0,
        Some(sign @ (b'+' | b'-')) => {
            let (h, rest) = two(&t[1..])?;
            let (m, rest) = match rest.strip_prefix(':') {
                Some(r) => two(r)?,
                None if form == IsoForm::Postgres => (0, rest),
                None => return None,
            };
            let (s, rest) = match rest.strip_prefix(':') {
                Some(r) if form == IsoForm::Postgres => two(r)?,
                _ => (0, rest),
            };
            if !rest.is_empty() || m > 59 || s > 59 {
                return None;
            }
            let o = h * 3600 + m * 60 + s;
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    Some((days, Some(micros - offset_s * 1_000_000)))
}

/// Microseconds since 1970 of ISO 8601 text of the form `form` with a time.
fn iso_micros(text: &str, form: IsoForm) -> Option<i128> {
    let (days, us) = iso(text, form)?;
    Some(i128::from(days) * 86_400_000_000 + i128::from(us?))
}

/// Microseconds since 1970 of PostgreSQL's epoch text (`1704067200.123456`), or of `to_jsonb`'s
/// ISO text of a timestamptz or a (zone-less) timestamp inside an array, any year PostgreSQL
/// holds (`10000-01-01T00:00:00`, `0044-03-15T00:00:00+00:00 BC`).
fn micros(text: &str) -> Result<i128, String> {
    if text.contains('T') {
        return iso_micros(text, IsoForm::Postgres)
            .ok_or_else(|| format!("`{text}` is no point in time a BSON date holds"));
    }
    let d = Dec::parse(text).ok_or_else(|| format!("`{text}` has no BSON date"))?;
    if d.exp < -6 {
        return Err(format!("`{text}` is finer than a microsecond"));
    }
    let coef: i128 = d
        .coef
        .parse()
        .map_err(|_| format!("`{text}` is out of range"))?;
    let scaled = u32::try_from(d.exp + 6)
        .ok()
        .and_then(|e| 10i128.checked_pow(e))
        .and_then(|p| coef.checked_mul(p))
        .ok_or_else(|| format!("`{text}` is out of range"))?;
    Ok(if d.neg { -scaled } else { scaled })
}

/// Days since 1970 of PostgreSQL's day count (`date - date '1970-01-01'`) or of `to_jsonb`'s
/// text of a date inside an array, any year PostgreSQL holds (`99999-12-31`, `0044-03-15 BC`).
fn days(text: &str) -> Result<i64, String> {
    if let Ok(n) = text.parse::<i64>() {
        return Ok(n);
    }
    match iso(text, IsoForm::Postgres) {
        Some((d, None)) => Ok(d),
        _ => Err(format!("`{text}` has no BSON date")),
    }
}

fn hex_bytes(text: &str) -> Result<Vec<u8>, String> {
    let t = text.strip_prefix("\\x").unwrap_or(text);
    if !t.len().is_multiple_of(2) {
        return Err("odd hex".into());
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).map_err(|_| "bad hex".to_string()))
        .collect()
}

/// An unambiguous rendering of a BSON value for the report (canonical Extended JSON).
pub fn show(b: &Bson) -> String {
    b.clone().into_canonical_extjson().to_string()
}

fn expected_int(text: &str, long: bool, target: &Bson) -> Result<(), String> {
    let d = Dec::parse(text).ok_or_else(|| format!("`{text}` is not a number"))?;
    let n = d.normalized();
    if n.exp < 0 {
        return Err("not a whole number".into());
    }
    if n.coef != "0" && (n.coef.len() as i64).saturating_add(n.exp) > 19 {
        return Err("beyond a 64-bit integer".into());
    }
    let digits = format!(
        "{}{}{}",
        if n.neg { "-" } else { "" },
        n.coef,
        "0".repeat(n.exp as usize)
    );
    let v: i64 = digits
        .parse()
        .map_err(|_| "beyond a 64-bit integer".to_string())?;
    match (long, target) {
        (true, Bson::Int64(t)) if *t == v => Ok(()),
        (false, Bson::Int32(t)) if i64::from(*t) == v => Ok(()),
        _ => Err(format!(
            "expected {} {v}",
            if long { "int64" } else { "int32" }
        )),
    }
}

fn decimal_of(target: &Bson) -> Option<D128> {
    match target {
        Bson::Decimal128(d) => Some(decode_decimal128(d.bytes())),
        _ => None,
    }
}

/// A JSON number against a BSON number: the same exact value. A double counts when its shortest
/// text is that value (the documented rule), or it is the nearest double under `lossy = "warn"`.
fn json_number(text: &str, target: &Bson, lossy: Lossy) -> Result<(), String> {
    let want = Dec::parse(text).ok_or_else(|| format!("`{text}` is not a number"))?;
    let got = match target {
        Bson::Int32(i) => Dec::parse(&i.to_string()),
        Bson::Int64(i) => Dec::parse(&i.to_string()),
        Bson::Double(d) if d.is_finite() => {
            if lossy == Lossy::Warn && text.parse::<f64>().is_ok_and(|n| same_double(n, *d)) {
                return Ok(());
            }
            Dec::parse(&format!("{d:e}"))
        }
        Bson::Decimal128(d) => match decode_decimal128(d.bytes()) {
            D128::Finite(d) => Some(d),
            _ => None,
        },
        _ => None,
    };
    match got {
        Some(g) if g.same_value(&want) => Ok(()),
        _ => Err(format!("JSON number {text} is not that value")),
    }
}

fn json_matches(j: &J, target: &Bson, lossy: Lossy, at: &str) -> Result<(), String> {
    let here = |m: String| {
        if at.is_empty() {
            m
        } else {
            format!("at `{at}`: {m}")
        }
    };
    match (j, target) {
        (J::Null, Bson::Null) => Ok(()),
        (J::Bool(a), Bson::Boolean(b)) if a == b => Ok(()),
        (J::String(a), Bson::String(b)) if a == b => Ok(()),
        (J::Number(n), t) => json_number(n, t, lossy).map_err(here),
        (J::Array(items), Bson::Array(arr)) => {
            if items.len() != arr.len() {
                return Err(here(format!(
                    "{} elements in the source, {} in the target",
                    items.len(),
                    arr.len()
                )));
            }
            for (i, (a, b)) in items.iter().zip(arr).enumerate() {
                json_matches(a, b, lossy, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        (J::Object(members), Bson::Document(d)) => {
            if members.len() != d.len() {
                return Err(here(format!(
                    "{} keys in the source, {} in the target",
                    members.len(),
                    d.len()
                )));
            }
            for (k, v) in members {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match d.get(k) {
                    Some(t) => json_matches(v, t, lossy, &path)?,
                    None => return Err(format!("key `{path}` is missing")),
                }
            }
            Ok(())
        }
        _ => Err(here("another value or type".into())),
    }
}

/// The text an array element would have as a scalar column (`None`: NULL).
fn element_text(j: &J) -> Option<String> {
    match j {
        J::Null => None,
        J::Bool(b) => Some(b.to_string()),
        J::Number(n) | J::String(n) => Some(n.clone()),
        // Not reached for scalar elements; JSON elements are compared as JSON.
        other => Some(format!("{other:?}")),
    }
}

fn array_matches(elem: &Check, j: &J, target: &Bson, at: &str) -> Result<(), String> {
    match (j, target) {
        (J::Array(items), Bson::Array(arr)) => {
            if items.len() != arr.len() {
                return Err(format!(
                    "{at}: {} elements in the source, {} in the target",
                    items.len(),
                    arr.len()
                ));
            }
            for (i, (a, b)) in items.iter().zip(arr).enumerate() {
                array_matches(elem, a, b, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        (J::Array(_), _) => Err(format!("{at}: an array in the source, not in the target")),
        (J::Null, Bson::Null) => Ok(()),
        (j, t) => {
            if let Check::Json { lossy } = elem {
                return json_matches(j, t, *lossy, "").map_err(|m| format!("{at}: {m}"));
            }
            match element_text(j) {
                Some(text) => value(elem, &text, t).map_err(|m| format!("{at}: {m}")),
                None => Err(format!("{at}: NULL in the source")),
            }
        }
    }
}

/// A point's longitude and latitude from PostgreSQL's text — `x y` (the scalar's query) or the
/// point's own `(x,y)` (an array element, from `to_jsonb`) — or why the row must have been
/// rejected.
pub fn point_of(text: &str) -> Result<(f64, f64), String> {
    let pair = match text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        Some(inner) => inner.split_once(','),
        None => text.split_once(' '),
    };
    let (x, y) = pair.ok_or_else(|| format!("`{text}` is not a point's x and y"))?;
    let lon = pg_f64(x).ok_or_else(|| format!("`{x}` is not a float"))?;
    let lat = pg_f64(y).ok_or_else(|| format!("`{y}` is not a float"))?;
    let ok = lon.is_finite()
        && (-180.0..=180.0).contains(&lon)
        && lat.is_finite()
        && (-90.0..=90.0).contains(&lat);
    if !ok {
        return Err(format!(
            "the point ({x},{y}) is out of range: the mapping rejects such a row (point_range), yet it was written"
        ));
    }
    Ok((lon, lat))
}

/// Whether `target` is what `check` says PostgreSQL's non-NULL `text` becomes; else why not.
pub fn value(check: &Check, text: &str, target: &Bson) -> Result<(), String> {
    match check {
        Check::Point => {
            let (lon, lat) = point_of(text)?;
            let coordinates = match target {
                Bson::Document(d) if d.get_str("type") == Ok("Point") => {
                    d.get_array("coordinates").ok()
                }
                _ => None,
            };
            match coordinates.map(|c| c.as_slice()) {
                Some([Bson::Double(a), Bson::Double(b)])
                    if same_double(*a, lon) && same_double(*b, lat) =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "expected the GeoJSON point [{lon:e}, {lat:e}], found {target}"
                )),
            }
        }
        Check::Int { long } => expected_int(text, *long, target),
        Check::NearestDouble => {
            let want = text
                .parse::<f64>()
                .map_err(|_| format!("`{text}` is not a number"))?;
            match target {
                Bson::Double(d) if same_double(*d, want) => Ok(()),
                _ => Err(format!("expected the double {want:e}")),
            }
        }
        Check::IntDecimal => {
            let want = Dec::parse(text).ok_or_else(|| format!("`{text}` is not a number"))?;
            match decimal_of(target) {
                Some(D128::Finite(d)) if d.same_digits(&want) => Ok(()),
                _ => Err(format!("expected the Decimal128 {text}")),
            }
        }
        Check::Float4 | Check::Float8 => {
            let want = if *check == Check::Float4 {
                pg_f32(text).map(f64::from)
            } else {
                pg_f64(text)
            }
            .ok_or_else(|| format!("`{text}` is not a float"))?;
            match target {
                Bson::Double(d) if same_double(*d, want) => Ok(()),
                Bson::Double(d) => Err(format!(
                    "the double differs: {want:e} (bits {:#018x}) expected, {d:e} (bits {:#018x}) found",
                    want.to_bits(),
                    d.to_bits()
                )),
                _ => Err("expected a double".into()),
            }
        }
        Check::FloatDecimal => match (text, decimal_of(target)) {
            ("NaN", Some(D128::NaN)) => Ok(()),
            ("Infinity", Some(D128::Infinity { neg: false })) => Ok(()),
            ("-Infinity", Some(D128::Infinity { neg: true })) => Ok(()),
            (t, Some(D128::Finite(d))) if Dec::parse(t).is_some_and(|w| w.same_value(&d)) => Ok(()),
            _ => Err(format!("expected a Decimal128 of the value {text}")),
        },
        Check::Numeric => {
            let got = decimal_of(target).ok_or("expected a Decimal128")?;
            match (text, got) {
                ("NaN", D128::NaN) => Ok(()),
                ("Infinity", D128::Infinity { neg: false }) => Ok(()),
                ("-Infinity", D128::Infinity { neg: true }) => Ok(()),
                (t, D128::Finite(d)) => {
                    let want = Dec::parse(t).ok_or_else(|| format!("`{t}` is not a number"))?;
                    if want.same_digits(&d) {
                        return Ok(());
                    }
                    // More digits than Decimal128 holds: the value, as much scale as fits.
                    if want.coef.len() > 34 && want.same_value(&d) && d.coef.len() == 34 {
                        return Ok(());
                    }
                    // More decimal places than Decimal128's exponent reaches: the value, with
                    // all the scale it holds.
                    if want.exp < -6176 && want.same_value(&d) && d.exp == -6176 {
                        return Ok(());
                    }
                    if want.same_value(&d) {
                        Err(format!(
                            "same value, other scale: {} digit(s) after the point expected, {} found",
                            (-want.exp).max(0),
                            (-d.exp).max(0)
                        ))
                    } else {
                        Err("another number".into())
                    }
                }
                _ => Err("another number".into()),
            }
        }
        Check::Bool => match (text, target) {
            ("true", Bson::Boolean(true)) | ("false", Bson::Boolean(false)) => Ok(()),
            _ => Err(format!("expected the boolean {text}")),
        },
        Check::Text => match target {
            Bson::String(s) if s == text => Ok(()),
            Bson::String(_) => Err("another string".into()),
            _ => Err("expected a string".into()),
        },
        Check::Uuid(fmt) => {
            let u = uuid::Uuid::parse_str(text).map_err(|_| format!("`{text}` is not a uuid"))?;
            match (fmt, target) {
                (UuidFormat::Binary, Bson::Binary(b))
                    if b.subtype == BinarySubtype::Uuid && b.bytes == u.as_bytes() =>
                {
                    Ok(())
                }
                (UuidFormat::String, Bson::String(s)) if *s == u.hyphenated().to_string() => Ok(()),
                (UuidFormat::Binary, _) => Err("expected that uuid as binary subtype 4".into()),
                (UuidFormat::String, _) => Err("expected that uuid as a string".into()),
            }
        }
        Check::Bytes => {
            let want = hex_bytes(text)?;
            match target {
                Bson::Binary(b) if b.subtype == BinarySubtype::Generic && b.bytes == want => Ok(()),
                Bson::Binary(b) if b.subtype == BinarySubtype::Generic => Err(format!(
                    "other bytes ({} expected, {} found)",
                    want.len(),
                    b.bytes.len()
                )),
                _ => Err("expected binary (generic subtype)".into()),
            }
        }
        Check::Base64 => {
            use base64::Engine;
            let want = hex_bytes(text)?;
            match target {
                Bson::String(s)
                    if base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .is_ok_and(|b| b == want)
                        && s.len() == want.len().div_ceil(3) * 4 =>
                {
                    Ok(())
                }
                _ => Err("expected the base64 (padded) of the bytes".into()),
            }
        }
        Check::Hex => match target {
            Bson::String(s) if *s == text.strip_prefix("\\x").unwrap_or(text) => Ok(()),
            _ => Err("expected the lowercase hex of the bytes".into()),
        },
        Check::Instant {
            sub_millis,
            offset_s,
        } => {
            let us = micros(text)? - i128::from(*offset_s) * 1_000_000;
            let Bson::DateTime(t) = target else {
                return Err("expected a date".into());
            };
            let ms = i128::from(t.timestamp_millis());
            if us.rem_euclid(1000) != 0 && *sub_millis == SubMillis::Reject {
                return Err(
                    "sub-millisecond digits: the mapping rejects such a row (sub_millis = \"reject\"), yet it was written"
                        .into(),
                );
            }
            if ms == us.div_euclid(1000) {
                Ok(())
            } else {
                Err(format!(
                    "the date differs: {us} µs since 1970 in the source, {ms} ms in the target"
                ))
            }
        }
        Check::InstantText { offset_s } => {
            let us = micros(text)? - i128::from(*offset_s) * 1_000_000;
            match target {
                Bson::String(s) if iso_micros(s, IsoForm::Rfc3339) == Some(us) => Ok(()),
                _ => Err("expected the exact RFC 3339 text".into()),
            }
        }
        Check::Date => {
            let d = days(text)?;
            match target {
                Bson::DateTime(t)
                    if i128::from(t.timestamp_millis()) == i128::from(d) * 86_400_000 =>
                {
                    Ok(())
                }
                _ => Err("expected that date at midnight UTC".into()),
            }
        }
        Check::Json { lossy } => {
            let j = json::parse(text).map_err(|e| format!("source JSON: {e}"))?;
            json_matches(&j, target, *lossy, "")
        }
        Check::Array(elem) => {
            let j = json::parse(text).map_err(|e| format!("source array: {e}"))?;
            match (&j, target) {
                (J::Array(_), Bson::Array(_)) => array_matches(elem, &j, target, "array"),
                (J::Array(_), _) => Err("expected an array".into()),
                _ => Err("the source is no array".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d128(text: &str) -> Bson {
        Bson::Decimal128(text.parse().unwrap())
    }

    /// Zero keeps its scale (`0.00`), and is zero under an exponent beyond 64 bits.
    /// `to_jsonb` of a date or timestamp before year 1 (inside an array) reads `… BC`: the year
    /// of its era, 1 BC being year 0.
    #[test]
    fn bc_dates_read_as_pg_writes_them() {
        let year0 = chrono::NaiveDate::from_ymd_opt(0, 1, 1).unwrap();
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        assert_eq!(days("0001-01-01 BC").unwrap(), (year0 - epoch).num_days());
        let ides = chrono::NaiveDate::from_ymd_opt(-43, 3, 15).unwrap();
        assert_eq!(days("0044-03-15 BC").unwrap(), (ides - epoch).num_days());
        let t = year0.and_hms_opt(0, 0, 0).unwrap().and_utc();
        assert_eq!(
            micros("0001-01-01T00:00:00+00:00 BC").unwrap(),
            i128::from(t.timestamp()) * 1_000_000
        );
        assert_eq!(
            micros("0001-01-01T00:00:00 BC").unwrap(),
            i128::from(t.timestamp()) * 1_000_000
        );
    }

    /// `to_jsonb` inside arrays writes years past 9999 with all their digits, unsigned
    /// (`10000-01-01`, `262142-12-31`): verify read none of them (found by the thirteenth tester,
    /// T10); nor the BC ones of the range's start.
    #[test]
    fn five_and_six_digit_and_bc_years_read_as_pg_writes_them() {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let day = |y, m, d| (chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap() - epoch).num_days();
        assert_eq!(days("10000-01-01").unwrap(), day(10000, 1, 1));
        assert_eq!(days("99999-12-31").unwrap(), day(99999, 12, 31));
        assert_eq!(days("262142-12-31").unwrap(), day(262_142, 12, 31));
        assert_eq!(days("4714-11-24 BC").unwrap(), -2_440_588);
        assert_eq!(days("0044-03-15 BC").unwrap(), day(-43, 3, 15));
        assert_eq!(days("-719528").unwrap(), -719_528);
        for bad in [
            "100-01-01",
            "10000-13-01",
            "10000-02-30",
            "0000-01-01 BC",
            "+10000-01-01",
        ] {
            assert!(days(bad).is_err(), "{bad}");
        }
        let us = |d: i64, s: i64| i128::from(d) * 86_400_000_000 + i128::from(s);
        assert_eq!(
            micros("10000-01-01T00:00:00").unwrap(),
            us(day(10000, 1, 1), 0)
        );
        assert_eq!(
            micros("99999-12-31T00:00:00+00:00").unwrap(),
            us(day(99999, 12, 31), 0)
        );
        assert_eq!(
            micros("262142-12-31T23:59:59.999+00:00").unwrap(),
            us(day(262_142, 12, 31), 86_399_999_000)
        );
        assert_eq!(
            micros("0044-03-15T00:00:00+00:00 BC").unwrap(),
            us(day(-43, 3, 15), 0)
        );
        // An offset moves the instant across the day (and the era) as it says.
        assert_eq!(
            micros("0001-01-01T00:00:00+01:00 BC").unwrap(),
            us(day(0, 1, 1), -3_600_000_000)
        );
        assert_eq!(
            micros("1883-11-18T12:00:00-04:56:02").unwrap(),
            us(
                day(1883, 11, 18),
                (12 * 3600 + 4 * 3600 + 56 * 60 + 2) * 1_000_000
            )
        );
        let date = |ms: i64| Bson::DateTime(bson::DateTime::from_millis(ms));
        let a = Check::Array(Box::new(Check::Date));
        let d = date(day(10000, 1, 1) * 86_400_000);
        assert!(value(&a, r#"["10000-01-01"]"#, &Bson::Array(vec![d.clone()])).is_ok());
        assert!(value(&a, r#"["10000-01-02"]"#, &Bson::Array(vec![d])).is_err());
    }

    /// The exact text of `keep_string` names years outside 0000–9999 as ISO 8601 expanded
    /// years, signed and astronomical (`-0043` is 44 BC): verify said "expected the exact RFC
    /// 3339 text" of a correct one (found by the thirteenth tester, T8). Another instant, or a
    /// year without its sign, is still no exact text.
    #[test]
    fn exact_texts_of_bc_and_far_years() {
        let text = Check::InstantText { offset_s: 0 };
        let s = |t: &str| Bson::String(t.into());
        let ok = |src: &str, t: &str| value(&text, src, &s(t)).is_ok();
        assert!(ok("-63517780799.876544", "-0043-03-15T12:00:00.123456Z"));
        assert!(ok("-63517780799.877", "-0043-03-15T12:00:00.123000Z"));
        assert!(!ok("-63517780799.876544", "0044-03-15T12:00:00.123456Z"));
        assert!(!ok("-63517780799.876544", "-0044-03-15T12:00:00.123456Z"));
        assert!(!ok("-63517780799.876544", "-0043-03-15T12:00:00.123457Z"));
        assert!(!ok("-63517780799.876544", "0044-03-15T12:00:00.123456Z BC"));
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let secs = |y, m, d| {
            (chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap() - epoch).num_days() * 86_400
        };
        let first = secs(-4713, 11, 24).to_string();
        assert!(ok(&first, "-4713-11-24T00:00:00.000000Z"));
        assert!(!ok(&first, "-4714-11-24T00:00:00.000000Z"));
        let last = format!("{}.999", secs(262_142, 12, 31) + 86_399);
        assert!(ok(&last, "+262142-12-31T23:59:59.999000Z"));
        assert!(!ok(&last, "262142-12-31T23:59:59.999000Z"));
        assert!(!ok(&last, "+262142-12-31T23:59:59.998000Z"));
        assert!(ok("1704067200.123456", "2024-01-01T00:00:00.123456Z"));
        assert!(!ok("1704067200.123456", "+2024-01-01T00:00:00.123457Z"));
        assert!(ok("1704067200.123456", "2024-01-01T01:00:00.123456+01:00"));
    }

    #[test]
    fn zero_keeps_its_scale_and_any_exponent() {
        let d = Dec::parse("0.00").unwrap();
        assert_eq!((d.coef.as_str(), d.exp), ("0", -2));
        let d = Dec::parse("0.000000e999999999999999999999").unwrap();
        assert_eq!((d.coef.as_str(), d.exp), ("0", 0));
        assert!(Dec::parse("1e999999999999999999999").is_none());
        assert!(Dec::parse("0e").is_none());
        let d = Dec::parse("1.50e3").unwrap();
        assert_eq!((d.coef.as_str(), d.exp), ("150", 1));
    }

    #[test]
    fn decimal128_bits_decode_to_digits_and_scale() {
        let cases = [
            ("1.50", "150", -2),
            ("-0.001", "1", -3),
            (
                "12345678901234567890123456789012.34",
                "1234567890123456789012345678901234",
                -2,
            ),
            ("1E+10", "1", 10),
            ("0", "0", 0),
        ];
        for (text, coef, exp) in cases {
            let Bson::Decimal128(d) = d128(text) else {
                unreachable!()
            };
            let D128::Finite(got) = decode_decimal128(d.bytes()) else {
                panic!("{text}")
            };
            assert_eq!((got.coef.as_str(), got.exp), (coef, exp), "{text}");
        }
    }

    #[test]
    fn numeric_needs_the_same_digits_and_scale() {
        assert!(value(&Check::Numeric, "1.50", &d128("1.50")).is_ok());
        let e = value(&Check::Numeric, "1.50", &d128("1.5")).unwrap_err();
        assert!(e.contains("other scale"), "{e}");
        assert!(value(&Check::Numeric, "1.50", &d128("1.51")).is_err());
        assert!(value(&Check::Numeric, "1.50", &Bson::Double(1.5)).is_err());
    }

    #[test]
    fn floats_are_bit_exact() {
        assert!(value(&Check::Float8, "0.1", &Bson::Double(0.1)).is_ok());
        let next = f64::from_bits(0.1f64.to_bits() + 1);
        assert!(value(&Check::Float8, "0.1", &Bson::Double(next)).is_err());
        assert!(value(&Check::Float8, "-0", &Bson::Double(0.0)).is_err());
        assert!(value(&Check::Float4, "21.35", &Bson::Double(f64::from(21.35f32))).is_ok());
        assert!(value(&Check::Float4, "21.35", &Bson::Double(21.35)).is_err());
        assert!(value(&Check::Float8, "NaN", &Bson::Double(f64::NAN)).is_ok());
    }

    #[test]
    fn instants_follow_the_sub_millisecond_rule() {
        let date = |ms: i64| Bson::DateTime(bson::DateTime::from_millis(ms));
        let exact = Check::Instant {
            sub_millis: SubMillis::Reject,
            offset_s: 0,
        };
        assert!(value(&exact, "1704067200.123", &date(1_704_067_200_123)).is_ok());
        assert!(value(&exact, "1704067200.123", &date(1_704_067_200_124)).is_err());
        assert!(value(&exact, "1704067200.123456", &date(1_704_067_200_123)).is_err());
        let trunc = Check::Instant {
            sub_millis: SubMillis::Truncate,
            offset_s: 0,
        };
        assert!(value(&trunc, "1704067200.123456", &date(1_704_067_200_123)).is_ok());
        assert!(value(&trunc, "-0.0005", &date(-1)).is_ok());
        assert!(value(&trunc, "infinity", &date(0)).is_err());
        let text = Check::InstantText { offset_s: 0 };
        let s = Bson::String("2024-01-01T00:00:00.123456Z".into());
        assert!(value(&text, "1704067200.123456", &s).is_ok());
        assert!(value(&text, "1704067200.123457", &s).is_err());
    }

    #[test]
    fn json_numbers_compare_as_exact_values() {
        let j = Check::Json {
            lossy: Lossy::Reject,
        };
        let doc =
            Bson::Document(bson::doc! { "a": 1i32, "b": d128("12345678901234567890"), "c": 0.1 });
        assert!(value(&j, r#"{"a": 1, "b": 12345678901234567890, "c": 0.1}"#, &doc).is_ok());
        let rounded =
            Bson::Document(bson::doc! { "a": 1i32, "b": 12345678901234567890.0, "c": 0.1 });
        let e = value(
            &j,
            r#"{"a": 1, "b": 12345678901234567890, "c": 0.1}"#,
            &rounded,
        )
        .unwrap_err();
        assert!(e.contains("`b`"), "{e}");
        assert!(
            value(
                &j,
                r#"{"a": 1}"#,
                &Bson::Document(bson::doc! { "a": 1i32, "z": 2i32 })
            )
            .is_err()
        );
    }

    #[test]
    fn arrays_compare_element_by_element() {
        let a = Check::Array(Box::new(Check::Numeric));
        let arr = Bson::Array(vec![d128("1.50"), Bson::Null]);
        assert!(value(&a, "[1.50, null]", &arr).is_ok());
        assert!(value(&a, "[1.5, null]", &arr).is_err());
        assert!(value(&a, "[1.50, null]", &Bson::String("{1.50,NULL}".into())).is_err());
        let ints = Check::Array(Box::new(Check::Int { long: false }));
        let nested = Bson::Array(vec![
            Bson::Array(vec![Bson::Int32(1), Bson::Int32(2)]),
            Bson::Array(vec![Bson::Int32(3), Bson::Int32(4)]),
        ]);
        assert!(value(&ints, "[[1, 2], [3, 4]]", &nested).is_ok());
        assert!(value(&ints, "[[1, 2], [3, 5]]", &nested).is_err());
    }

    #[test]
    fn bytes_and_uuids() {
        let bin = |bytes: Vec<u8>, subtype| Bson::Binary(bson::Binary { subtype, bytes });
        assert!(
            value(
                &Check::Bytes,
                "00ff",
                &bin(vec![0, 255], BinarySubtype::Generic)
            )
            .is_ok()
        );
        assert!(
            value(
                &Check::Bytes,
                "00ff",
                &bin(vec![0, 254], BinarySubtype::Generic)
            )
            .is_err()
        );
        assert!(value(&Check::Base64, "00ff", &Bson::String("AP8=".into())).is_ok());
        assert!(value(&Check::Hex, "00ff", &Bson::String("00ff".into())).is_ok());
        let u = "6c2f1a0e-5b7d-4c1e-9f3a-8d2b7e6c5a41";
        let bytes = uuid::Uuid::parse_str(u).unwrap().as_bytes().to_vec();
        assert!(
            value(
                &Check::Uuid(UuidFormat::Binary),
                u,
                &bin(bytes, BinarySubtype::Uuid)
            )
            .is_ok()
        );
        assert!(value(&Check::Uuid(UuidFormat::String), u, &Bson::String(u.into())).is_ok());
    }
}
