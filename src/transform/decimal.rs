//! Exact decimal handling: PostgreSQL `numeric` text → BSON Decimal128 (IEEE 754-2008, BID encoding),
//! and the exactness check for numeric → double.

/// A decimal number as sign, significant digits (no leading zeros) and a power-of-ten exponent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    pub negative: bool,
    pub digits: String,
    pub exponent: i64,
}

/// Special values PostgreSQL can hold in a `numeric`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Finite(Decimal),
    NaN,
    Infinity { negative: bool },
}

/// Parses decimal text such as `-12.3400`, `1e-7`, `NaN`, `Infinity`.
pub fn parse(text: &str) -> Option<Parsed> {
    let t = text.trim();
    match t {
        "NaN" => return Some(Parsed::NaN),
        "Infinity" | "+Infinity" | "inf" => return Some(Parsed::Infinity { negative: false }),
        "-Infinity" | "-inf" => return Some(Parsed::Infinity { negative: true }),
        _ => {}
    }
    let (negative, rest) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp_part) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    // An exponent beyond an i64 (`1e99999999999999999999`) is kept saturated: any value that far
    // out is beyond every target type anyway, and zero stays zero.
    let mut exponent: i64 = match exp_part {
        Some(e) => parse_exponent(e)?,
        None => 0,
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    exponent = exponent.saturating_sub(frac_part.len() as i64);
    let mut digits: String = format!("{int_part}{frac_part}")
        .trim_start_matches('0')
        .to_string();
    if digits.is_empty() {
        digits.push('0');
    }
    Some(Parsed::Finite(Decimal {
        negative,
        digits,
        exponent,
    }))
}

/// An exponent's text (`-7`, `+12`, `0009`) as an i64, saturated beyond its range; `None` when it
/// is not an optionally signed run of ASCII digits.
fn parse_exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut v: i64 = 0;
    for b in digits.bytes() {
        v = v.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    Some(if negative { -v } else { v })
}

impl Decimal {
    /// The same value with trailing zeros moved into the exponent (a canonical form for comparing).
    pub fn normalized(&self) -> Decimal {
        if self.digits == "0" {
            return Decimal {
                negative: false,
                digits: "0".into(),
                exponent: 0,
            };
        }
        let trimmed = self.digits.trim_end_matches('0');
        Decimal {
            negative: self.negative,
            digits: trimmed.to_string(),
            exponent: self
                .exponent
                .saturating_add((self.digits.len() - trimmed.len()) as i64),
        }
    }
}

const MAX_DIGITS: usize = 34;
const EXP_MIN: i64 = -6176;
const EXP_MAX: i64 = 6111;
const EXP_BIAS: i64 = 6176;

/// Encodes decimal text as the 16 little-endian bytes of a Decimal128, or says why it cannot be
/// exact (more than 34 significant digits, exponent out of range).
pub fn to_decimal128_bytes(text: &str) -> Result<[u8; 16], String> {
    encode_decimal128(text).map(|(bytes, _)| bytes)
}

/// A number's text as a message shows it: whole up to 48 characters, else its head and tail
/// and its length (adv24 F4: a 6,146-digit numeric was printed whole in a finding).
pub fn shown(text: &str) -> String {
    if text.len() > 48 && text.is_ascii() {
        format!(
            "{}…{} ({} characters)",
            &text[..24],
            &text[text.len() - 8..],
            text.len()
        )
    } else {
        crate::redact::clip_lines(text, 48)
    }
}

/// Like [`to_decimal128_bytes`], and says when the value is exact but its scale could not all be
/// kept: trailing zeros past 34 digits are dropped (as few as needed: `1.000…0` with 40 zeros
/// keeps 33 of them), which changes the written precision though not the value.
pub fn encode_decimal128(text: &str) -> Result<([u8; 16], Option<String>), String> {
    let mut scale_note = None;
    let parsed = parse(text).ok_or_else(|| format!("`{text}` is not a number"))?;
    let bits: u128 = match parsed {
        Parsed::NaN => 0x7C00_0000_0000_0000u128 << 64,
        Parsed::Infinity { negative } => {
            (0x7800_0000_0000_0000u128 << 64) | (u128::from(negative) << 127)
        }
        Parsed::Finite(mut d) => {
            // Keep the scale (1.50 stays 1.50) unless the digits do not fit; then drop only the
            // trailing zeros that do not fit.
            if d.digits.len() > MAX_DIGITS {
                let n = d.normalized();
                if n.digits.len() > MAX_DIGITS {
                    return Err(format!(
                        "`{}` has {} significant digits; Decimal128 holds 34",
                        shown(text),
                        n.digits.len()
                    ));
                }
                let drop = d.digits.len() - MAX_DIGITS;
                d.digits.truncate(MAX_DIGITS);
                d.exponent = d.exponent.saturating_add(drop as i64);
                scale_note = Some(format!(
                    "`{}` has {} digits; Decimal128 holds 34: written with {drop} trailing zero(s) fewer (the same value, less scale)",
                    shown(text),
                    drop + MAX_DIGITS
                ));
            }
            // Bring the exponent into range by padding/stripping zeros where that stays exact.
            while d.exponent > EXP_MAX && d.digits != "0" && d.digits.len() < MAX_DIGITS {
                d.digits.push('0');
                d.exponent -= 1;
            }
            let asked = d.exponent;
            if d.digits == "0" {
                d.exponent = d.exponent.clamp(EXP_MIN, EXP_MAX);
            }
            while d.exponent < EXP_MIN && d.digits.ends_with('0') && d.digits.len() > 1 {
                d.digits.pop();
                d.exponent += 1;
            }
            if d.exponent > asked && asked < 0 && scale_note.is_none() {
                scale_note = Some(format!(
                    "`{}` has {} decimal places; Decimal128 holds {}: written with {} fewer (the same value, less scale)",
                    shown(text),
                    asked.unsigned_abs(),
                    -EXP_MIN,
                    d.exponent.saturating_sub(asked)
                ));
            }
            if !(EXP_MIN..=EXP_MAX).contains(&d.exponent) {
                return Err(format!(
                    "`{}` is out of Decimal128's exponent range",
                    shown(text)
                ));
            }
            let coefficient: u128 = d
                .digits
                .parse()
                .map_err(|_| format!("`{text}` is not a number"))?;
            let biased = (d.exponent + EXP_BIAS) as u128;
            (u128::from(d.negative) << 127) | (biased << 113) | coefficient
        }
    };
    Ok((bits.to_le_bytes(), scale_note))
}

/// Converts decimal text to f64 when the double holds the same decimal value (its shortest
/// round-trip form equals the text's value); otherwise says what would be lost.
pub fn to_f64_exact(text: &str) -> Result<f64, String> {
    let parsed = parse(text).ok_or_else(|| format!("`{text}` is not a number"))?;
    match parsed {
        Parsed::NaN => Ok(f64::NAN),
        Parsed::Infinity { negative } => Ok(if negative {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        }),
        Parsed::Finite(d) => {
            let f: f64 = text
                .trim()
                .parse()
                .map_err(|_| format!("`{text}` is not a number"))?;
            if !f.is_finite() {
                return Err(format!("`{text}` overflows a double"));
            }
            let back = parse(&format!("{f:e}")).and_then(|p| match p {
                Parsed::Finite(b) => Some(b.normalized()),
                _ => None,
            });
            let want = d.normalized();
            if f != 0.0 && f.abs() < f64::MIN_POSITIVE {
                // A subnormal double holds fewer digits than its shortest text shows: 1.5e-323
                // reads back from 3·2⁻¹⁰⁷⁴ = 1.482…e-323, 1.2 % away (adv41 F4).
                Err(format!(
                    "`{text}` is below a double's normal range: the nearest double {f:e} is subnormal, with fewer than 15 significant digits"
                ))
            } else if back.as_ref() == Some(&want) || (want.digits == "0" && f == 0.0) {
                Ok(f)
            } else {
                Err(format!(
                    "`{text}` is not exactly representable as a double (would be {f})"
                ))
            }
        }
    }
}

/// A decimal's text without an exponent, as PostgreSQL prints `numeric`: Decimal128 prints small
/// and large exponents in scientific form (`1.00000000E-7`, `0E-15`), which is the same value
/// but not the text a text column should hold (adv32 F1: one column mixed both forms). Digits
/// and scale are kept: `1.00000000E-7` → `0.000000100000000`, `1.2E+3` → `1200`. `NaN` and
/// `Infinity` are returned as they are.
pub fn plain(text: &str) -> String {
    let (sign, rest) = match text.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", text),
    };
    let (mantissa, exponent) = match rest.split_once(['E', 'e']) {
        Some((m, e)) => match e.parse::<i64>() {
            Ok(e) => (m, e),
            Err(_) => return text.to_string(),
        },
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return text.to_string();
    }
    // The value is `digits` × 10^-scale.
    let digits = format!("{int}{frac}");
    let scale = frac.len() as i64 - exponent;
    let mut out = if scale <= 0 {
        format!("{digits}{}", "0".repeat((-scale) as usize))
    } else {
        let scale = scale as usize;
        let padded = if digits.len() <= scale {
            format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
        } else {
            digits
        };
        let at = padded.len() - scale;
        format!("{}.{}", &padded[..at], &padded[at..])
    };
    // No leading zeros before the units digit.
    let lead = out.bytes().take_while(|&b| b == b'0').count();
    let keep_from = match out.as_bytes().get(lead) {
        Some(b'.') | None => lead.saturating_sub(1),
        _ => lead,
    };
    out.drain(..keep_from);
    // PostgreSQL has no negative zero.
    if out.bytes().all(|b| b == b'0' || b == b'.') {
        return out;
    }
    format!("{sign}{out}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: [u8; 16]) -> String {
        let v = u128::from_le_bytes(bytes);
        format!("{:016X}{:016X}", (v >> 64) as u64, v as u64)
    }

    /// A zero with 7000 decimal places was written as 0E-6176 without a word: the same value,
    /// less scale, said with `decimal_scale` like scale lost past 34 digits.
    #[test]
    fn scale_past_decimal128s_exponent_is_said() {
        let zero = format!("0.{}", "0".repeat(7000));
        let (_, note) = encode_decimal128(&zero).unwrap();
        assert!(note.unwrap().contains("7000 decimal places"));
        let one = format!("1.{}", "0".repeat(7000));
        assert!(encode_decimal128(&one).unwrap().1.is_some());
        assert!(encode_decimal128("0.00").unwrap().1.is_none());
        assert!(encode_decimal128("1.50").unwrap().1.is_none());
    }

    #[test]
    fn known_decimal128_encodings() {
        // Values from the BSON corpus (decimal128-1.json).
        assert_eq!(
            hex(to_decimal128_bytes("1").unwrap()),
            "30400000000000000000000000000001"
        );
        assert_eq!(
            hex(to_decimal128_bytes("-1").unwrap()),
            "B0400000000000000000000000000001"
        );
        assert_eq!(
            hex(to_decimal128_bytes("0").unwrap()),
            "30400000000000000000000000000000"
        );
        assert_eq!(
            hex(to_decimal128_bytes("0.1").unwrap()),
            "303E0000000000000000000000000001"
        );
        assert_eq!(
            hex(to_decimal128_bytes("1.00").unwrap()),
            "303C0000000000000000000000000064"
        );
        assert_eq!(
            hex(to_decimal128_bytes("NaN").unwrap()),
            "7C000000000000000000000000000000"
        );
        assert_eq!(
            hex(to_decimal128_bytes("-Infinity").unwrap()),
            "F8000000000000000000000000000000"
        );
        assert_eq!(
            hex(to_decimal128_bytes("1234567890123456789012345678901234").unwrap()),
            "30403CDE6FFF9732DE825CD07E96AFF2"
        );
    }

    #[test]
    fn too_many_digits_is_an_error_not_a_rounding() {
        let err = to_decimal128_bytes("1.23456789012345678901234567890123456").unwrap_err();
        assert!(err.contains("34"), "{err}");
        // Trailing zeros beyond 34 digits are fine: the value is exact.
        assert!(to_decimal128_bytes("12345678901234567890123456789012340000").is_ok());
        // …and as much scale as fits is kept, with a note.
        let long = format!("1.{}", "0".repeat(40));
        let (b, note) = encode_decimal128(&long).unwrap();
        assert!(note.unwrap().contains("7 trailing zero(s) fewer"));
        assert_eq!(
            bson::Decimal128::from_bytes(b).to_string(),
            format!("1.{}", "0".repeat(33))
        );
        assert_eq!(encode_decimal128("1.50").unwrap().1, None);
    }

    #[test]
    fn double_exactness() {
        assert_eq!(to_f64_exact("6.300123").unwrap(), 6.300123);
        assert_eq!(to_f64_exact("-10.800071").unwrap(), -10.800071);
        assert_eq!(to_f64_exact("0.000000").unwrap(), 0.0);
        assert!(to_f64_exact("0.12345678901234567890").is_err());
        assert!(to_f64_exact("9007199254740993").is_err());
        // Subnormal: its shortest text reads back, yet it is 1.2 % from the number's value.
        assert!(to_f64_exact("1.5e-323").is_err());
        assert!(to_f64_exact("-2.2250738585072e-309").is_err());
        assert_eq!(
            to_f64_exact("2.2250738585072014e-308").unwrap(),
            f64::MIN_POSITIVE
        );
    }

    #[test]
    fn plain_text_has_no_exponent_and_keeps_digits_and_scale() {
        for (sci, want) in [
            ("1.00000000E-7", "0.000000100000000"),
            ("-1E-15", "-0.000000000000001"),
            ("0E-15", "0.000000000000000"),
            ("-0E-3", "0.000"),
            ("0.000001000000000", "0.000001000000000"),
            ("1.2E+3", "1200"),
            ("1E+2", "100"),
            ("123.45", "123.45"),
            ("-7", "-7"),
            ("0", "0"),
            ("5E-1", "0.5"),
            ("NaN", "NaN"),
            ("-Infinity", "-Infinity"),
        ] {
            assert_eq!(plain(sci), want, "{sci}");
        }
        // Through Decimal128, for values PostgreSQL prints: the same text back.
        for pg in [
            "0.000000100000000",
            "-0.000000000000001",
            "0.000000000000000",
            "123456789012345678901234567890.1234",
            "0.1",
            "100",
            "-0.5",
        ] {
            let d = bson::Decimal128::from_bytes(to_decimal128_bytes(pg).unwrap());
            assert_eq!(plain(&d.to_string()), pg, "{d}");
        }
    }
}
