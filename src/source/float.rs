//! Floats as PostgreSQL prints them (`float8out`, `float4out` with the default
//! `extra_float_digits = 1`): the shortest decimal that reads back as the value *and lies strictly
//! inside its rounding interval* (PostgreSQL's Ryu does not accept the interval's bounds), in
//! fixed notation for decimal exponents from −4 up to 14 (`real`: 5), else `d.ddde±XX`.
//!
//! Rust's own shortest text may sit exactly on a bound: the double nearest 1e23 prints `1e23`
//! here and `9.999999999999999e+22` in PostgreSQL. Both read back as the same double, but only
//! PostgreSQL's is the value's own text; a decimal written from it equals what the source shows.

/// A finite float's shortest digits as PostgreSQL chooses them: `(negative, digits, exp)` with
/// the value `digits × 10^exp`, `digits` without leading or trailing zeros (`"0"` for zero).
pub fn shortest_digits_f64(v: f64) -> (bool, String, i32) {
    shortest(
        v.is_sign_negative(),
        v == 0.0,
        |p| fmt_prec(v.abs(), p),
        |t| t.parse::<f64>().ok() == Some(v.abs()),
        17,
        &format!("{:e}", v.abs()),
    )
}

/// [`shortest_digits_f64`] for a `real` (at its own width: 21.35 is `2135e-2`).
pub fn shortest_digits_f32(v: f32) -> (bool, String, i32) {
    shortest(
        v.is_sign_negative(),
        v == 0.0,
        |p| fmt_prec32(v.abs(), p),
        |t| t.parse::<f32>().ok() == Some(v.abs()),
        9,
        &format!("{:e}", v.abs()),
    )
}

/// PostgreSQL's text of a `double precision`.
pub fn pg_text_f64(v: f64) -> String {
    if let Some(t) = special(v.is_nan(), v.is_infinite(), v.is_sign_negative()) {
        return t;
    }
    let (neg, digits, exp) = shortest_digits_f64(v);
    layout(neg, &digits, exp, 15)
}

/// PostgreSQL's text of a `real`.
pub fn pg_text_f32(v: f32) -> String {
    if let Some(t) = special(v.is_nan(), v.is_infinite(), v.is_sign_negative()) {
        return t;
    }
    let (neg, digits, exp) = shortest_digits_f32(v);
    layout(neg, &digits, exp, 6)
}

fn special(nan: bool, infinite: bool, negative: bool) -> Option<String> {
    if nan {
        return Some("NaN".into());
    }
    infinite.then(|| if negative { "-Infinity" } else { "Infinity" }.into())
}

fn fmt_prec(v: f64, precision: usize) -> String {
    format!("{:.*e}", precision - 1, v)
}

fn fmt_prec32(v: f32, precision: usize) -> String {
    format!("{:.*e}", precision - 1, v)
}

/// Splits Rust's `{:e}` text (`9.999e22`, `1e-7`) into digits without trailing zeros and the
/// exponent of the last digit.
fn split(text: &str) -> (String, i32) {
    let (mantissa, exp) = text.split_once('e').unwrap_or((text, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits = format!("{int}{frac}");
    let mut exp = exp - frac.len() as i32;
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
        exp += 1;
    }
    (digits, exp)
}

/// `digits × 10^exp` moved by far less than any float's spacing (30 more digits), up or down.
fn nudged(digits: &str, exp: i32, up: bool) -> String {
    const EXTRA: usize = 30;
    if up {
        return format!("{digits}{}1e{}", "0".repeat(EXTRA - 1), exp - EXTRA as i32);
    }
    // digits − 1, then 30 nines.
    let mut d: Vec<u8> = digits.bytes().collect();
    for b in d.iter_mut().rev() {
        if *b == b'0' {
            *b = b'9';
        } else {
            *b -= 1;
            break;
        }
    }
    format!(
        "{}{}e{}",
        String::from_utf8(d).expect("ASCII digits"),
        "9".repeat(EXTRA),
        exp - EXTRA as i32
    )
}

fn shortest(
    negative: bool,
    zero: bool,
    at_precision: impl Fn(usize) -> String,
    reads_back: impl Fn(&str) -> bool,
    max_digits: usize,
    rust_shortest: &str,
) -> (bool, String, i32) {
    if zero {
        return (negative, "0".into(), 0);
    }
    // On a bound of the rounding interval, the text moved a hair outward reads as another float.
    let inside = |digits: &str, exp: i32| {
        reads_back(&nudged(digits, exp, true)) && reads_back(&nudged(digits, exp, false))
    };
    let (digits, exp) = split(rust_shortest);
    if inside(&digits, exp) {
        return (negative, digits, exp);
    }
    for precision in digits.len() + 1..=max_digits {
        let text = at_precision(precision);
        let (d, e) = split(&text);
        if reads_back(&text) && inside(&d, e) {
            return (negative, d, e);
        }
    }
    (negative, digits, exp)
}

/// PostgreSQL's layout of `digits × 10^exp`: fixed notation when the decimal exponent of the
/// first digit is in −4..`fixed_below`, else scientific with a signed exponent of 2+ digits.
fn layout(negative: bool, digits: &str, exp: i32, fixed_below: i32) -> String {
    let sign = if negative { "-" } else { "" };
    if digits == "0" {
        return format!("{sign}0");
    }
    let first = exp + digits.len() as i32 - 1;
    if (-4..fixed_below).contains(&first) {
        if exp >= 0 {
            return format!("{sign}{digits}{}", "0".repeat(exp as usize));
        }
        let point = digits.len() as i32 + exp;
        if point > 0 {
            let (int, frac) = digits.split_at(point as usize);
            return format!("{sign}{int}.{frac}");
        }
        return format!("{sign}0.{}{digits}", "0".repeat((-point) as usize));
    }
    let (head, tail) = digits.split_at(1);
    let frac = if tail.is_empty() {
        String::new()
    } else {
        format!(".{tail}")
    };
    let esign = if first < 0 { '-' } else { '+' };
    format!("{sign}{head}{frac}e{esign}{:02}", first.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PostgreSQL 15's own output (`SELECT v::float8::text`), the oracle.
    #[test]
    fn doubles_print_as_postgresql_prints_them() {
        let cases: &[(f64, &str)] = &[
            (1e23, "9.999999999999999e+22"),
            (1e22, "1e+22"),
            (1e15, "1e+15"),
            (123456789012345.0, "123456789012345"),
            (1.2345678901234568e22, "1.2345678901234568e+22"),
            (1e-4, "0.0001"),
            (1.5e-5, "1.5e-05"),
            (0.1, "0.1"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (-0.0, "-0"),
            (0.0, "0"),
            (f64::NEG_INFINITY, "-Infinity"),
            (f64::NAN, "NaN"),
            (100.0, "100"),
            (-2.5, "-2.5"),
        ];
        for (v, pg) in cases {
            assert_eq!(pg_text_f64(*v), *pg, "{v:e}");
            if v.is_finite() {
                assert_eq!(pg.parse::<f64>().unwrap(), *v, "{pg} reads back");
            }
        }
    }

    #[test]
    fn reals_print_as_postgresql_prints_them() {
        let cases: &[(f32, &str)] = &[
            (21.35, "21.35"),
            (1e6, "1e+06"),
            (123456.0, "123456"),
            (1e-4, "0.0001"),
            (1.5e-5, "1.5e-05"),
            (3.4028235e38, "3.4028235e+38"),
            (1e-45, "1e-45"),
            (-0.0, "-0"),
        ];
        for (v, pg) in cases {
            assert_eq!(pg_text_f32(*v), *pg, "{v:e}");
        }
    }

    #[test]
    fn digits_are_the_shortest_strictly_inside() {
        assert_eq!(
            shortest_digits_f64(1e23),
            (false, "9999999999999999".into(), 7)
        );
        assert_eq!(shortest_digits_f64(10.0), (false, "1".into(), 1));
        assert_eq!(shortest_digits_f32(21.35), (false, "2135".into(), -2));
    }
}
