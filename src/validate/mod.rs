//! Pure validation of produced values: field rules (required, email, url, lengths, ranges, regex,
//! one_of, not_in_future) and row rules (`any_of`). Each failure is an [`Issue`] with the rule's
//! name and the severity the mapping gave it.

mod email;

use std::collections::BTreeMap;

use bson::Bson;
use regex::Regex;
use validator::ValidateUrl;

use crate::mapping::spec::{EmailRule, RuleName, Severity};
use crate::transform::{Issue, Stage};

/// Compiled rules of one field.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub required: bool,
    pub not_null: bool,
    pub email: EmailRule,
    pub url: bool,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub regex: Option<Regex>,
    pub one_of: Option<Vec<Bson>>,
    pub not_in_future: bool,
    /// The severity of the rules not in `severities`.
    pub severity: Severity,
    /// Per-rule severities, overriding `severity`.
    pub severities: BTreeMap<RuleName, Severity>,
    /// What the field writes could not be told from the mapping (JSON, a `map` to values of
    /// several kinds, a uuid): a value a rule cannot judge (a document under `min`, a number
    /// under `regex`) fails that rule instead of passing it unseen. Elsewhere the mapping is
    /// refused when it is compiled.
    pub judge_kinds: bool,
}

fn is_empty(v: Option<&Bson>) -> bool {
    match v {
        None | Some(Bson::Null) => true,
        Some(Bson::String(s)) => s.trim().is_empty(),
        Some(Bson::Array(a)) => a.is_empty(),
        _ => false,
    }
}

fn show(v: &Bson) -> String {
    match v {
        Bson::String(s) => s.clone(),
        Bson::DateTime(d) => d
            .try_to_rfc3339_string()
            .unwrap_or_else(|_| d.timestamp_millis().to_string()),
        other => other.to_string(),
    }
}

/// How a value stands against a range bound, compared exactly (a decimal's digits against the
/// bound's shortest text, never through a double: `0.3` is not above `max = 0.3`).
#[derive(Debug, PartialEq)]
enum Against {
    /// Not a number: ranges do not apply.
    NotANumber,
    /// NaN: no range holds it.
    NaN,
    Is(std::cmp::Ordering),
}

fn against(v: &Bson, bound: f64) -> Against {
    use std::cmp::Ordering::{Greater, Less};
    let infinite = |negative: bool| Against::Is(if negative { Less } else { Greater });
    match v {
        Bson::Double(f) if f.is_nan() => return Against::NaN,
        Bson::Double(f) if f.is_infinite() => return infinite(*f < 0.0),
        Bson::Decimal128(d) => {
            let text = d.to_string();
            match text.trim_start_matches(['-', '+']) {
                "NaN" => return Against::NaN,
                "Infinity" | "Inf" => return infinite(text.starts_with('-')),
                _ => {}
            }
        }
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => {}
        _ => return Against::NotANumber,
    }
    match (exact_number(v), exact_number(&Bson::Double(bound))) {
        (Some(x), Some(b)) => Against::Is(cmp_exact(&x, &b)),
        _ => Against::NotANumber,
    }
}

/// Orders two numbers in [`exact_number`]'s form.
fn cmp_exact(a: &(bool, String, i64), b: &(bool, String, i64)) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let zero = |x: &(bool, String, i64)| x.1 == "0";
    let sign = |x: &(bool, String, i64)| {
        if zero(x) {
            0
        } else if x.0 {
            -1
        } else {
            1
        }
    };
    match sign(a).cmp(&sign(b)) {
        Ordering::Equal if sign(a) == 0 => return Ordering::Equal,
        Ordering::Equal => {}
        other => return other,
    }
    // Same sign, both non-zero: compare magnitudes, then flip for negatives.
    let top = |x: &(bool, String, i64)| x.1.len() as i64 + x.2;
    let magnitude = top(a).cmp(&top(b)).then_with(|| {
        let width = a.1.len().max(b.1.len());
        let pad = |d: &str| format!("{d:0<width$}");
        pad(&a.1).cmp(&pad(&b.1))
    });
    if a.0 { magnitude.reverse() } else { magnitude }
}

impl Rules {
    /// The severity of `rule` on this field.
    pub fn severity_of(&self, rule: RuleName) -> Severity {
        self.severities.get(&rule).copied().unwrap_or(self.severity)
    }

    /// Checks `value` (None when the field is absent) at `path`; `now_ms` is the current time.
    pub fn check(
        &self,
        path: &(impl std::fmt::Display + ?Sized),
        value: Option<&Bson>,
        now_ms: i64,
        issues: &mut Vec<Issue>,
    ) {
        let mut fail = |rule: RuleName, message: String, v: &str| {
            issues.push(Issue {
                stage: Stage::Validate,
                severity: self.severity_of(rule),
                rule: rule.as_str().to_string(),
                path: path.to_string(),
                message,
                value: v.to_string(),
            })
        };
        if matches!(value, None | Some(Bson::Null)) && self.not_null && !self.required {
            fail(RuleName::NotNull, format!("{path} is null"), "");
            return;
        }
        if is_empty(value) {
            if self.required {
                fail(RuleName::Required, format!("{path} is required"), "");
            }
            return;
        }
        let Some(v) = value else { return };
        // A text, or each text of an array (addresses in a text[] column, after `split`).
        // (A single text without an allocation: this runs for every validated field of every row.)
        let single: [&str; 1];
        let many: Vec<&str>;
        let texts: &[&str] = match v {
            Bson::String(s) => {
                single = [s.as_str()];
                &single
            }
            Bson::Array(items) => {
                many = items.iter().filter_map(Bson::as_str).collect();
                &many
            }
            _ => &[],
        };
        if self.email != EmailRule::Off
            && let Some(s) = texts
                .iter()
                .find(|s| !email::is_valid(s, self.email == EmailRule::Ascii))
        {
            fail(
                RuleName::Email,
                format!("{path} is not a valid e-mail address"),
                s,
            );
        }
        if self.url
            && let Some(s) = texts.iter().find(|s| !s.validate_url())
        {
            fail(RuleName::Url, format!("{path} is not a valid URL"), s);
        }
        let len = match v {
            Bson::String(s) => Some(s.chars().count() as u64),
            Bson::Array(a) => Some(a.len() as u64),
            _ => None,
        };
        if let Some(len) = len {
            if let Some(min) = self.min_length
                && len < min
            {
                fail(
                    RuleName::MinLength,
                    format!("{path} is shorter than {min} (length {len})"),
                    &show(v),
                );
            }
            if let Some(max) = self.max_length
                && len > max
            {
                fail(
                    RuleName::MaxLength,
                    format!("{path} is longer than {max} (length {len})"),
                    &show(v),
                );
            }
        }
        // Ranges apply to a number, or to each number of an array (e.g. coordinates).
        let numbers: Vec<&Bson> = match v {
            Bson::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for item in numbers {
            if let Some(min) = self.min {
                match against(item, min) {
                    Against::Is(std::cmp::Ordering::Less) => fail(
                        RuleName::Min,
                        format!("{path} is below the minimum {min}"),
                        &show(item),
                    ),
                    Against::NaN => fail(
                        RuleName::Min,
                        format!("{path} is NaN, which no minimum holds ({min})"),
                        &show(item),
                    ),
                    _ => {}
                }
            }
            if let Some(max) = self.max {
                match against(item, max) {
                    Against::Is(std::cmp::Ordering::Greater) => fail(
                        RuleName::Max,
                        format!("{path} is above the maximum {max}"),
                        &show(item),
                    ),
                    Against::NaN if self.min.is_none() => fail(
                        RuleName::Max,
                        format!("{path} is NaN, which no maximum holds ({max})"),
                        &show(item),
                    ),
                    _ => {}
                }
            }
        }
        if self.judge_kinds {
            self.judge_kind(path, v, &mut fail);
        }
        if let Some(re) = &self.regex
            && let Some(s) = texts.iter().find(|s| !re.is_match(s))
        {
            fail(
                RuleName::Regex,
                format!("{path} does not match /{}/", re.as_str()),
                s,
            );
        }
        if let Some(allowed) = &self.one_of
            && !allowed.iter().any(|a| same_value(a, v))
        {
            fail(
                RuleName::OneOf,
                format!("{path} is not one of the allowed values"),
                &show(v),
            );
        }
        // A date, or each date of an array; an infinite one written as its text (`infinity =
        // "string"`) is `infinity` — later than any date — or `-infinity`.
        if self.not_in_future {
            let items: Vec<&Bson> = match v {
                Bson::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for item in items {
                let future = match item {
                    Bson::DateTime(dt) => dt.timestamp_millis() > now_ms,
                    Bson::String(s) => s == "infinity",
                    _ => false,
                };
                if future {
                    fail(
                        RuleName::NotInFuture,
                        format!("{path} is in the future"),
                        &show(item),
                    );
                }
            }
        }
    }
}

impl Rules {
    /// Fails each rule of these that cannot judge `v` (see `judge_kinds`); NULL elements of an
    /// array are judged by no rule.
    fn judge_kind(
        &self,
        path: &(impl std::fmt::Display + ?Sized),
        v: &Bson,
        fail: &mut impl FnMut(RuleName, String, &str),
    ) {
        let mut cannot = |rule: RuleName, item: &Bson, applies: &str| {
            fail(
                rule,
                format!(
                    "{path} is {}: `{}` cannot judge it ({applies})",
                    kind_name(item),
                    rule.as_str()
                ),
                &show(item),
            )
        };
        let text_rules = [
            (self.email != EmailRule::Off, RuleName::Email),
            (self.url, RuleName::Url),
            (self.regex.is_some(), RuleName::Regex),
        ];
        let non_text = match v {
            Bson::String(_) => None,
            Bson::Array(items) => items
                .iter()
                .find(|b| !matches!(b, Bson::String(_) | Bson::Null)),
            other => Some(other),
        };
        for (on, rule) in text_rules {
            if on && let Some(item) = non_text {
                cannot(
                    rule,
                    item,
                    "it applies to text, and to each text of an array",
                );
            }
        }
        let length_rule = if self.min_length.is_some() {
            Some(RuleName::MinLength)
        } else if self.max_length.is_some() {
            Some(RuleName::MaxLength)
        } else {
            None
        };
        if let Some(rule) = length_rule
            && !matches!(v, Bson::String(_) | Bson::Array(_))
        {
            cannot(rule, v, "it applies to text and arrays");
        }
        let items: Vec<&Bson> = match v {
            Bson::Array(items) => items.iter().filter(|b| !matches!(b, Bson::Null)).collect(),
            other => vec![other],
        };
        let range_rule = if self.min.is_some() {
            Some(RuleName::Min)
        } else if self.max.is_some() {
            Some(RuleName::Max)
        } else {
            None
        };
        if let Some(rule) = range_rule
            && let Some(item) = items
                .iter()
                .find(|b| matches!(against(b, 0.0), Against::NotANumber))
        {
            cannot(rule, item, "it applies to numbers");
        }
        if self.not_in_future
            && let Some(item) = items.iter().find(|b| {
                !matches!(b, Bson::DateTime(_))
                    && !matches!(b, Bson::String(s) if s == "infinity" || s == "-infinity")
            })
        {
            cannot(RuleName::NotInFuture, item, "it applies to dates");
        }
    }
}

/// What kind of value `v` is, for messages.
fn kind_name(v: &Bson) -> &'static str {
    match v {
        Bson::Document(_) => "a document",
        Bson::Array(_) => "an array",
        Bson::String(_) => "text",
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => "a number",
        Bson::Boolean(_) => "a boolean",
        Bson::DateTime(_) => "a date",
        Bson::Binary(_) => "binary data",
        Bson::Null => "null",
        _ => "a value of another kind",
    }
}

/// A row-level rule: at least one of the values in `slots` (the compiled `any_of` paths) must
/// be present and not empty.
#[derive(Debug, Clone)]
pub struct RowRule {
    pub name: String,
    pub slots: Vec<usize>,
    pub severity: Severity,
    pub message: String,
}

/// Whether a value counts as given for `any_of`: not absent, null, blank text or an empty array.
pub fn is_present(v: Option<&Bson>) -> bool {
    !is_empty(v)
}

impl RowRule {
    /// `present(i)`: whether slot `i` holds a value (see [`is_present`]).
    pub fn check(&self, present: impl Fn(usize) -> bool, issues: &mut Vec<Issue>) {
        let present = self.slots.iter().any(|&i| present(i));
        if !present {
            issues.push(Issue {
                stage: Stage::Validate,
                severity: self.severity,
                rule: self.name.clone(),
                path: String::new(),
                message: self.message.clone(),
                value: String::new(),
            });
        }
    }
}

/// Equal values; numbers by their exact value whatever their kind: an integer equal to one of
/// the other width (a mapping's `one_of = [1, 2]` is read as 32-bit integers; a `bigint` column
/// gives 64-bit ones), a `numeric` column's Decimal128 equal to the mapping's `0.5` or `1`, a
/// double equal to an integer.
fn same_value(a: &Bson, b: &Bson) -> bool {
    match (exact_number(a), exact_number(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// A number as (negative, significant digits, power of ten of the last digit), without leading
/// or trailing zeros — one form for every kind (a double by its shortest round-trip text); zero
/// is (false, "0", 0). `None` for what is not a finite number.
fn exact_number(v: &Bson) -> Option<(bool, String, i64)> {
    let text = match v {
        Bson::Int32(n) => n.to_string(),
        Bson::Int64(n) => n.to_string(),
        Bson::Double(f) if f.is_finite() => format!("{f}"),
        Bson::Decimal128(d) => d.to_string(),
        _ => return None,
    };
    normal_decimal(&text)
}

fn normal_decimal(text: &str) -> Option<(bool, String, i64)> {
    let t = text.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i64>().ok()?),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mut exp10 = exp - frac.len() as i64;
    let digits = digits.trim_start_matches('0');
    let trimmed = digits.trim_end_matches('0');
    exp10 += (digits.len() - trimmed.len()) as i64;
    if trimmed.is_empty() {
        return Some((false, "0".into(), 0));
    }
    Some((neg, trimmed.to_string(), exp10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_by_exact_value_across_kinds() {
        let dec = |t: &str| Bson::Decimal128(t.parse().unwrap());
        let allowed = Rules {
            one_of: Some(vec![Bson::Double(0.1), Bson::Double(0.5), Bson::Int32(1)]),
            ..Default::default()
        };
        for ok in [
            dec("0.1"),
            dec("0.10"),
            dec("0.50"),
            dec("1"),
            dec("1.000"),
            dec("1E+0"),
        ] {
            assert!(check(&allowed, Some(ok.clone())).is_empty(), "{ok:?}");
        }
        for no in [dec("0.1000001"), dec("0.15"), dec("10"), dec("-1")] {
            assert_eq!(check(&allowed, Some(no.clone())), ["one_of"], "{no:?}");
        }
        assert_eq!(normal_decimal("-0.00"), Some((false, "0".into(), 0)));
        assert_eq!(normal_decimal("12.3400E2"), Some((false, "1234".into(), 0)));
        assert_eq!(normal_decimal("1e5"), Some((false, "1".into(), 5)));
        assert_eq!(normal_decimal("abc"), None);
    }

    /// Outside tester of #11, findings 23 and 25: numeric ±Infinity and every NaN passed `min`
    /// and `max` (the validator set after the load then refused updates of those documents);
    /// decimals compared through doubles (`0.3` failed `max = 0.3`, `0.300…01` passed it) and so
    /// did integers past 2^53.
    #[test]
    fn ranges_compare_exactly_and_hold_no_nan_or_infinity() {
        let dec = |t: &str| Bson::Decimal128(t.parse().unwrap());
        let r = Rules {
            min: Some(0.0),
            max: Some(0.3),
            ..Default::default()
        };
        for ok in [
            dec("0.3"),
            dec("0.30"),
            dec("0"),
            dec("-0"),
            Bson::Double(0.3),
            Bson::Int32(0),
        ] {
            assert!(check(&r, Some(ok.clone())).is_empty(), "{ok:?}");
        }
        assert_eq!(check(&r, Some(dec("0.30000000000000000001"))), ["max"]);
        assert_eq!(check(&r, Some(dec("-0.000000000000000000001"))), ["min"]);
        assert_eq!(check(&r, Some(dec("Infinity"))), ["max"]);
        assert_eq!(check(&r, Some(dec("-Infinity"))), ["min"]);
        assert_eq!(check(&r, Some(Bson::Double(f64::INFINITY))), ["max"]);
        assert_eq!(check(&r, Some(dec("NaN"))), ["min"]);
        assert_eq!(check(&r, Some(Bson::Double(f64::NAN))), ["min"]);
        let only_max = Rules {
            max: Some(10.0),
            ..Default::default()
        };
        assert_eq!(check(&only_max, Some(Bson::Double(f64::NAN))), ["max"]);
        assert_eq!(
            check(
                &only_max,
                Some(Bson::Array(vec![Bson::Int32(1), dec("NaN")]))
            ),
            ["max"]
        );
        let big = Rules {
            max: Some(9_007_199_254_740_992.0),
            ..Default::default()
        };
        assert!(check(&big, Some(Bson::Int64(9_007_199_254_740_992))).is_empty());
        assert_eq!(
            check(&big, Some(Bson::Int64(9_007_199_254_740_993))),
            ["max"]
        );
        let neg = Rules {
            min: Some(-1.5),
            max: Some(-0.25),
            ..Default::default()
        };
        assert!(check(&neg, Some(dec("-1.5"))).is_empty());
        assert!(check(&neg, Some(Bson::Double(-0.25))).is_empty());
        assert_eq!(check(&neg, Some(dec("-1.51"))), ["min"]);
        assert_eq!(check(&neg, Some(dec("-0.2"))), ["max"]);
        assert_eq!(check(&neg, Some(Bson::Int32(-2))), ["min"]);
        assert!(check(&neg, Some(Bson::String("x".into()))).is_empty());
    }

    fn check(rules: &Rules, v: Option<Bson>) -> Vec<String> {
        let mut issues = Vec::new();
        rules.check("f", v.as_ref(), 1_700_000_000_000, &mut issues);
        issues.into_iter().map(|i| i.rule).collect()
    }

    #[test]
    fn not_null_catches_null_and_missing_but_not_blank() {
        let r = Rules {
            not_null: true,
            ..Rules::default()
        };
        assert_eq!(check(&r, None), ["not_null"]);
        assert_eq!(check(&r, Some(Bson::Null)), ["not_null"]);
        assert!(check(&r, Some(Bson::String("  ".into()))).is_empty());
        assert!(check(&r, Some(Bson::Array(vec![]))).is_empty());
    }

    #[test]
    fn required_catches_null_missing_and_blank() {
        let r = Rules {
            required: true,
            ..Default::default()
        };
        assert_eq!(check(&r, None), ["required"]);
        assert_eq!(check(&r, Some(Bson::Null)), ["required"]);
        assert_eq!(check(&r, Some(Bson::String("  ".into()))), ["required"]);
        assert!(check(&r, Some(Bson::String("x".into()))).is_empty());
    }

    #[test]
    fn email_and_lengths() {
        let r = Rules {
            email: EmailRule::International,
            max_length: Some(20),
            ..Default::default()
        };
        assert_eq!(
            check(&r, Some(Bson::String("jane@@example.org".into()))),
            ["email"]
        );
        assert!(check(&r, Some(Bson::String("jane@example.org".into()))).is_empty());
        assert_eq!(
            check(
                &r,
                Some(Bson::String("averyveryverylongname@example.org".into()))
            ),
            ["max_length"]
        );
    }

    #[test]
    fn email_accepts_internationalised_addresses_unless_ascii_only() {
        let text = |s: &str| Some(Bson::String(s.into()));
        let any = Rules {
            email: EmailRule::International,
            ..Default::default()
        };
        let ascii = Rules {
            email: EmailRule::Ascii,
            ..Default::default()
        };
        for idn in ["łukasz@example.pl", "用户@例子.广告"] {
            assert!(check(&any, text(idn)).is_empty(), "{idn}");
            assert_eq!(check(&ascii, text(idn)), ["email"], "{idn}");
        }
        assert!(check(&ascii, text("lukasz@example.pl")).is_empty());
        for bad in [
            "no-at.example.org",
            "a@b@example.org",
            "@example.org",
            "a b@example.org",
            "a.@example.org",
        ] {
            assert_eq!(check(&any, text(bad)), ["email"], "{bad}");
        }
        // Only text is an address to check.
        assert!(check(&any, Some(Bson::Int32(1))).is_empty());
    }

    #[test]
    fn ranges_dates_and_sets() {
        let r = Rules {
            min: Some(1.0),
            ..Default::default()
        };
        assert_eq!(check(&r, Some(Bson::Int32(0))), ["min"]);
        let r = Rules {
            not_in_future: true,
            ..Default::default()
        };
        assert_eq!(
            check(
                &r,
                Some(Bson::DateTime(bson::DateTime::from_millis(
                    1_800_000_000_000
                )))
            ),
            ["not_in_future"]
        );
        let r = Rules {
            one_of: Some(vec![Bson::String("a".into())]),
            ..Default::default()
        };
        assert_eq!(check(&r, Some(Bson::String("b".into()))), ["one_of"]);
        // A bigint column's values against the 32-bit integers the mapping was read as.
        let ints = Rules {
            one_of: Some(vec![Bson::Int32(1), Bson::Int32(2)]),
            ..Default::default()
        };
        assert!(check(&ints, Some(Bson::Int64(2))).is_empty());
        assert_eq!(check(&ints, Some(Bson::Int64(3))), ["one_of"]);
        // A double equal to an integer is that number (the mapping says which values).
        assert!(check(&ints, Some(Bson::Double(2.0))).is_empty());
        assert_eq!(check(&ints, Some(Bson::Double(2.5))), ["one_of"]);
        let d = bson::Decimal128::from_bytes(
            crate::transform::decimal::to_decimal128_bytes("123.456789").unwrap(),
        );
        let r = Rules {
            max: Some(90.0),
            ..Default::default()
        };
        assert_eq!(check(&r, Some(Bson::Decimal128(d))), ["max"]);
        let r = Rules {
            min: Some(-180.0),
            max: Some(180.0),
            ..Default::default()
        };
        assert_eq!(
            check(
                &r,
                Some(Bson::Array(vec![Bson::Double(200.1), Bson::Double(6.3)]))
            ),
            ["max"]
        );
    }

    #[test]
    fn a_severity_per_rule_overrides_the_field_severity() {
        let r = Rules {
            required: true,
            email: EmailRule::International,
            max_length: Some(10),
            severity: Severity::Error,
            severities: BTreeMap::from([(RuleName::Email, Severity::Warning)]),
            ..Default::default()
        };
        let severities = |v: Option<Bson>| -> Vec<(String, Severity)> {
            let mut issues = Vec::new();
            r.check("f", v.as_ref(), 0, &mut issues);
            issues.into_iter().map(|i| (i.rule, i.severity)).collect()
        };
        assert_eq!(severities(None), [("required".into(), Severity::Error)]);
        assert_eq!(
            severities(Some(Bson::String("jane@@x".into()))),
            [("email".into(), Severity::Warning)]
        );
        assert_eq!(
            severities(Some(Bson::String("jane@@example.org".into()))),
            [
                ("email".into(), Severity::Warning),
                ("max_length".into(), Severity::Error)
            ]
        );
        assert_eq!(r.severity_of(RuleName::Exists), Severity::Error);
    }

    #[test]
    fn any_of_row_rule() {
        let rule = RowRule {
            name: "contact".into(),
            slots: vec![0, 1],
            severity: Severity::Warning,
            message: "no contact".into(),
        };
        let mut issues = Vec::new();
        let values = [Some(Bson::Null), None, Some(Bson::Int32(1))];
        rule.check(|i| is_present(values[i].as_ref()), &mut issues);
        assert_eq!(issues.len(), 1);
        issues.clear();
        let values = [None, Some(Bson::String("a@b.org".into()))];
        rule.check(|i| is_present(values[i].as_ref()), &mut issues);
        assert!(issues.is_empty());
        // An empty array is no value; an array with an element is.
        let values = [Some(Bson::Array(vec![])), None];
        rule.check(|i| is_present(values[i].as_ref()), &mut issues);
        assert_eq!(issues.len(), 1);
    }
}
