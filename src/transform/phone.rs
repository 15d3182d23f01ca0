//! Phone numbers to E.164 by libphonenumber's numbering metadata (the `phonenumber` crate): a number
//! is read in the mapping's default region, must be a valid number of the country it dials, and is
//! written as `+`, its calling code and its national significant number. Pure: no I/O.

use phonenumber::country::{Id, Source};
use phonenumber::metadata::DATABASE;
use phonenumber::{ParseError, PhoneNumber};

/// Resolves a mapping's `default_country`: a country calling code ("231", "+1", "44") stands for
/// the main region of that code (LR, US, GB); an ISO 3166 region ("LR", "gb") for itself.
pub fn default_region(spec: &str) -> Result<Id, String> {
    let s = spec.trim();
    let code = s.strip_prefix('+').unwrap_or(s);
    if !code.is_empty() && code.bytes().all(|b| b.is_ascii_digit()) {
        let regions = code
            .parse::<u16>()
            .ok()
            .and_then(|c| DATABASE.by_code(&c))
            .unwrap_or_default();
        // Shared codes (1, 44, 7…) name a main region; a code of one region is that region.
        let main = regions
            .iter()
            .find(|m| m.is_main_country_for_code())
            .or(regions.first());
        return match main.and_then(|m| m.id().parse::<Id>().ok()) {
            Some(id) => Ok(id),
            None if regions.is_empty() => Err(format!("`{spec}` is not a country calling code")),
            None => Err(format!(
                "calling code `{spec}` belongs to no region (a non-geographic code); give a region such as \"LR\""
            )),
        };
    }
    let upper = s.to_ascii_uppercase();
    match upper.parse::<Id>() {
        Ok(id) if DATABASE.by_id(id.as_ref()).is_some() => Ok(id),
        _ => Err(format!(
            "`{spec}` is neither a country calling code (\"231\") nor a region (\"LR\")"
        )),
    }
}

/// Normalises `raw` to E.164, reading a national number as one of `region`. A number that does not
/// parse, is not a valid number of its country, or carries an extension (E.164 cannot hold one)
/// is an error.
pub fn to_e164(raw: &str, region: Id) -> Result<String, String> {
    if let Some(e164) = plain_e164(raw, region) {
        return Ok(e164);
    }
    let not_a_number = |e: &dyn std::fmt::Display| format!("`{raw}` is not a phone number ({e})");
    let extracted = extract_possible(raw.trim()).ok_or_else(|| not_a_number(&"no digits"))?;
    let extracted = extracted.as_ref();
    // A `#` is an extension's end (`…123#`, `ext. 5#`) or no part of a number libphonenumber
    // reads (`… #`): either way nothing E.164 holds.
    if extracted.contains(['#', '\u{ff03}']) {
        return Err(format!(
            "`{raw}` is not a phone number E.164 can hold (`#` ends an extension or a service code)"
        ));
    }
    // Letters (words, vanity numbers, an extension's `ext`/`x`) or `#`: the number must be one
    // as written, and the extension comes off before anything else (E.164 cannot hold one; a
    // bare `x` is none). Digits and punctuation alone need no such look.
    if extracted.contains(|c: char| c.is_alphabetic() || c == '#') {
        let n = guarded(Some(region), &ascii_digits(extracted)).map_err(|e| not_a_number(&e))?;
        if let Some(ext) = n.extension()
            && !ext.is_empty()
        {
            return Err(format!(
                "`{raw}` has an extension ({}), which E.164 cannot hold",
                &**ext
            ));
        }
    }
    let ascii = normalize(extracted);
    let number = parse(&ascii, region).map_err(|e| not_a_number(&e))?;
    let code = number.code().value();
    // The national significant number as libphonenumber reads it (leading zeros included).
    let national =
        as_libphonenumber(&ascii, region, &number).unwrap_or_else(|| number.national().to_string());
    let e164 = format!("+{code}{national}");
    if !is_valid_national(code, &national) {
        return Err(format!(
            "`{raw}` is not a valid phone number (read as {e164})"
        ));
    }
    Ok(e164)
}

/// libphonenumber's `extractPossibleNumber`: from the first `+` or digit on (words before a
/// number, a `tel:` prefix, go), without trailing characters that are neither digits nor letters
/// (but `#`), and cut where a second number starts (`/ x`). None without a digit or plus.
fn extract_possible(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    // RFC 3966 with a context (`tel:…;phone-context=…`): the number between the two, after a
    // global context (`+1`); an empty context is no number. An ISDN subaddress goes.
    if let Some(at) = raw.find(";phone-context=") {
        let context = raw[at + ";phone-context=".len()..]
            .split(';')
            .next()
            .unwrap_or_default();
        if !phone_context_ok(context) {
            return None;
        }
        let from = raw.find("tel:").map_or(0, |i| i + 4);
        let mut number = String::new();
        if context.starts_with('+') {
            number.push_str(context);
        }
        if from < at {
            number.push_str(&raw[from..at]);
        }
        let number = match number.find(";isub=") {
            Some(i) => number[..i].to_string(),
            None => number,
        };
        // A plus only leads: a global number under a global context (`tel:+49…;phone-context=+49`
        // reads `+49+49…`) is no number — it would be written with its calling code twice.
        if number
            .char_indices()
            .any(|(i, c)| i > 0 && (c == '+' || c == '\u{ff0b}'))
        {
            return None;
        }
        return extract_possible(&number).map(|s| std::borrow::Cow::Owned(s.into_owned()));
    }
    let is_digit = |c: char| c.is_ascii_digit() || unicode_digit(c).is_some();
    let start = raw.find(|c: char| c == '+' || c == '\u{ff0b}' || is_digit(c))?;
    let mut rest = &raw[start..];
    rest = rest.trim_end_matches(|c: char| !(c.is_alphanumeric() || c == '#'));
    // SECOND_NUMBER_START: a slash or backslash, spaces, then `x`.
    let bytes = rest.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'/' || b == b'\\' {
            let after = rest[i + 1..].trim_start_matches(' ');
            if after.starts_with('x') {
                rest = rest[..i].trim_end_matches(|c: char| !(c.is_alphanumeric() || c == '#'));
                break;
            }
        }
    }
    let rest = match rest.find(";isub=") {
        Some(i) => &rest[..i],
        None => rest,
    };
    Some(std::borrow::Cow::Borrowed(rest))
}

/// An RFC 3966 `phone-context`: a global number (`+` and digits with visual separators) or a
/// domain name (labels of letters, digits and inner hyphens, the last starting with a letter).
fn phone_context_ok(context: &str) -> bool {
    if let Some(digits) = context.strip_prefix('+') {
        return digits.chars().any(|c| c.is_ascii_digit())
            && digits
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '-' | '.' | '(' | ')'));
    }
    let name = context.strip_suffix('.').unwrap_or(context);
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    labels.iter().all(|l| label_ok(l))
        && labels
            .last()
            .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()))
}

/// libphonenumber's normalisation of the extracted number (its extension off): with three ASCII
/// letters or more it is a vanity number, each letter its keypad digit and only ASCII digits
/// kept; else the letters and every other sign go and any decimal digit counts. A leading plus
/// stays.
fn normalize(extracted: &str) -> String {
    let plus = extracted.starts_with(['+', '\u{ff0b}']);
    let letters = extracted.chars().filter(char::is_ascii_alphabetic).count();
    let mut out = String::with_capacity(extracted.len() + 1);
    if plus {
        out.push('+');
    }
    for c in extracted.chars() {
        if c.is_ascii_digit() {
            out.push(c);
        } else if letters >= 3 {
            if let Some(d) = keypad(c) {
                out.push(d);
            }
        } else if let Some(d) = unicode_digit(c).and_then(|d| char::from_digit(d, 10)) {
            out.push(d);
        }
    }
    out
}

/// The keypad digit of an ASCII letter.
fn keypad(c: char) -> Option<char> {
    Some(match c.to_ascii_uppercase() {
        'A'..='C' => '2',
        'D'..='F' => '3',
        'G'..='I' => '4',
        'J'..='L' => '5',
        'M'..='O' => '6',
        'P'..='S' => '7',
        'T'..='V' => '8',
        'W'..='Z' => '9',
        _ => return None,
    })
}

/// Parses `raw` in `region`. A number dialled to another country (`+39 06…`, `00 39 06…`) is parsed
/// again by its own country's rules: the crate would otherwise strip the default region's trunk
/// prefix from it (the `0` of an Italian number), where libphonenumber reads the number by the
/// rules of the country it dials.
fn parse(raw: &str, region: Id) -> Result<PhoneNumber, ParseError> {
    let first = guarded(Some(region), raw)?;
    let home = DATABASE.by_id(region.as_ref()).map(|m| m.country_code());
    if home == Some(first.code().value()) {
        return Ok(first);
    }
    match first.code().source() {
        Source::Plus => guarded(None, raw),
        Source::Idd => match idd_to_plus(raw, region) {
            Some(international) => guarded(None, &international),
            None => Ok(first),
        },
        Source::Number | Source::Default => Ok(first),
    }
}

/// The number as libphonenumber reads it, when that differs from the crate's reading. The crate
/// strips a country's trunk prefix unconditionally, twice (its viability test compares the number
/// with itself, then it strips `national_prefix` again): `+7 812 315-00-00` and
/// `8 (812) 315-00-00` read as +7 123150000, `+375 801 123 4567` as +375 11234567.
/// libphonenumber strips by `national_prefix_for_parsing` once, and keeps the digits as written
/// when they are a viable national number and the rest is not, or when the rest has no possible
/// length. None when the digits as written cannot be told (the crate's reading stands).
fn as_libphonenumber(raw: &str, region: Id, number: &PhoneNumber) -> Option<String> {
    // Letters (vanity numbers, `tel:` URIs, words around a number) are the crate's to read.
    if raw.chars().any(char::is_alphabetic) {
        return None;
    }
    let code = number.code().value();
    let code_text = code.to_string();
    let digits = |s: &str| -> String { s.chars().filter(char::is_ascii_digit).collect() };
    let read = number.national().to_string();
    if number.code().source() == Source::Number {
        return own_code_as_national(&digits(raw), region, &read);
    }
    let (written, meta) = match number.code().source() {
        Source::Default | Source::Number => (digits(raw), DATABASE.by_id(region.as_ref())?),
        Source::Plus | Source::Idd => {
            let all = digits(raw);
            let intl = if all.starts_with(&code_text) {
                all
            } else {
                digits(&idd_to_plus(raw, region)?)
            };
            let regions = DATABASE.by_code(&code)?;
            let main = regions
                .iter()
                .find(|m| m.is_main_country_for_code())
                .or(regions.first())
                .copied()?;
            (intl.strip_prefix(&code_text)?.to_string(), main)
        }
    };
    // The crate strips a prefix only, or transforms it where a rule says so — the default
    // region's rule even for a number dialled with its calling code (`+44 588943` read in Jersey
    // as +44 1534588943), where libphonenumber goes by the main region of the code.
    let transformed = |m: &phonenumber::Metadata| m.national_prefix_transform_rule().is_some();
    if !written.ends_with(&read)
        && !transformed(meta)
        && !DATABASE.by_id(region.as_ref()).is_some_and(transformed)
    {
        return None;
    }
    let national = strip_national_prefix(&written, meta)?;
    (national != read).then_some(national)
}

/// A national number that begins with its region's own calling code, written without `+`
/// (`7710093561` in Kazakhstan): the crate takes those digits for the calling code. libphonenumber
/// (`maybeExtractCountryCode`) does so only when the number as written is not a national number
/// of the region and the rest is, or when it is too long to be one; else it reads the digits as a
/// national number.
fn own_code_as_national(all: &str, region: Id, read: &str) -> Option<String> {
    let meta = DATABASE.by_id(region.as_ref())?;
    let rest = all.strip_prefix(&meta.country_code().to_string())?;
    let rules = rules(meta);
    let pattern = rules.general.as_ref()?;
    let rest = strip_prefix_only(rest, meta)?;
    let too_long = rules
        .possible
        .last()
        .is_some_and(|&max| all.len() as u16 > max);
    let national = if (!pattern.is_match(all) && pattern.is_match(&rest)) || too_long {
        rest
    } else {
        strip_national_prefix(all, meta)?
    };
    (national != read).then_some(national)
}

/// libphonenumber's `maybeStripNationalPrefixAndCarrierCode` followed by its length test: the
/// national number `written` (the digits after the country code) comes to.
fn strip_national_prefix(written: &str, meta: &phonenumber::Metadata) -> Option<String> {
    let stripped = strip_prefix_only(written, meta)?;
    if stripped == written {
        return Some(stripped);
    }
    // Stripped only when the rest has a possible length (not too short, not local only).
    let rules = rules(meta);
    let (possible, local) = (&rules.possible, &rules.local);
    let n = stripped.len() as u16;
    let length_ok = match (possible.first(), possible.last()) {
        (Some(&min), Some(&max)) => {
            !local.contains(&n) && n >= min && (n > max || possible.contains(&n))
        }
        _ => true,
    };
    Some(if length_ok {
        stripped
    } else {
        written.to_string()
    })
}

/// The possible lengths of a region's numbers, and those possible only locally: the general
/// description's, or — where the crate's metadata leaves them empty (Jersey's, among others) —
/// the union of its number types' lengths, as libphonenumber's metadata builder fills them in.
fn general_lengths(meta: &phonenumber::Metadata) -> (Vec<u16>, Vec<u16>) {
    let d = meta.descriptors();
    let general = d.general();
    if !general.possible_length().is_empty() {
        return (
            general.possible_length().to_vec(),
            general.possible_local_length().to_vec(),
        );
    }
    let types = [
        d.fixed_line(),
        d.mobile(),
        d.toll_free(),
        d.premium_rate(),
        d.shared_cost(),
        d.personal_number(),
        d.voip(),
        d.pager(),
        d.uan(),
        d.voicemail(),
    ];
    let mut possible: Vec<u16> = types
        .iter()
        .flatten()
        .flat_map(|t| t.possible_length().iter().copied())
        .collect();
    possible.sort_unstable();
    possible.dedup();
    let mut local: Vec<u16> = types
        .iter()
        .flatten()
        .flat_map(|t| t.possible_local_length().iter().copied())
        .filter(|n| !possible.contains(n))
        .collect();
    local.sort_unstable();
    local.dedup();
    (possible, local)
}

/// libphonenumber's `maybeStripNationalPrefixAndCarrierCode` alone: `written` without its trunk
/// prefix (or transformed by the region's rule), unless the digits as written are a viable
/// national number and the rest is not.
fn strip_prefix_only(written: &str, meta: &phonenumber::Metadata) -> Option<String> {
    let rules = rules(meta);
    let viable = |s: &str| rules.general.as_ref().is_some_and(|r| r.is_match(s));
    let stripped = match meta.national_prefix_for_parsing() {
        Some(_) => {
            let re = rules.prefix_for_parsing.as_ref()?;
            match re.captures(written) {
                None => return Some(written.to_string()),
                Some(caps) => {
                    let end = caps.get(0)?.end();
                    let last = caps.len() - 1;
                    match meta.national_prefix_transform_rule() {
                        Some(rule) if !rule.is_empty() && last > 0 && caps.get(last).is_some() => {
                            let mut out = String::new();
                            caps.expand(rule, &mut out);
                            out.push_str(&written[end..]);
                            out
                        }
                        _ => written[end..].to_string(),
                    }
                }
            }
        }
        None => match meta.national_prefix() {
            Some(p) if !p.is_empty() && written.starts_with(p) => written[p.len()..].to_string(),
            _ => return Some(written.to_string()),
        },
    };
    if viable(written) && !viable(&stripped) {
        return Some(written.to_string());
    }
    Some(stripped)
}

/// `pattern` (from the numbering metadata) anchored at the start (`whole`: at both ends); None
/// for an empty or unreadable pattern. The metadata's patterns are laid out with white space,
/// which is no part of them.
fn anchored(pattern: &str, whole: bool) -> Option<regex::Regex> {
    let pattern: String = pattern.chars().filter(|c| !c.is_whitespace()).collect();
    if pattern.is_empty() {
        return None;
    }
    let end = if whole { "$" } else { "" };
    regex::Regex::new(&format!("^(?:{pattern}){end}")).ok()
}

/// What reading a number of one region asks of its metadata, compiled once: the patterns
/// (anchored), the possible lengths, the number types.
struct Rules {
    /// The general national number pattern, whole.
    general: Option<regex::Regex>,
    /// `national_prefix_for_parsing`, at the start.
    prefix_for_parsing: Option<regex::Regex>,
    /// The international dialling prefix, at the start.
    idd: Option<regex::Regex>,
    /// `leading_digits` (which region of a shared code a number is), at the start.
    leading: Option<regex::Regex>,
    possible: Vec<u16>,
    local: Vec<u16>,
    types: NumberTypes,
}

/// The compiled rules of `meta`. Shared, not cloned: a cloned `Regex` starts with an empty cache,
/// so each match would build its lazy DFA anew.
fn rules(meta: &phonenumber::Metadata) -> std::sync::Arc<Rules> {
    type Compiled = std::collections::HashMap<usize, std::sync::Arc<Rules>>;
    static COMPILED: std::sync::LazyLock<std::sync::RwLock<Compiled>> =
        std::sync::LazyLock::new(Default::default);
    // The metadata lives in a static database: its address names it (non-geographic entities
    // share the id "001").
    let at = meta as *const phonenumber::Metadata as usize;
    if let Some(found) = COMPILED.read().unwrap_or_else(|p| p.into_inner()).get(&at) {
        return found.clone();
    }
    let (possible, local) = general_lengths(meta);
    let compiled = std::sync::Arc::new(Rules {
        general: anchored(
            meta.descriptors().general().national_number().as_str(),
            true,
        ),
        prefix_for_parsing: meta
            .national_prefix_for_parsing()
            .and_then(|p| anchored(p.as_str(), false)),
        idd: meta
            .international_prefix()
            .and_then(|p| anchored(p.as_str(), false)),
        leading: meta
            .leading_digits()
            .and_then(|p| anchored(p.as_str(), false)),
        possible,
        local,
        types: number_types(meta),
    });
    COMPILED
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .entry(at)
        .or_insert(compiled)
        .clone()
}

/// The regions of each calling code: the main one (whose rules read a number dialled with the
/// code) and those a number's validity is looked up in, in libphonenumber's order.
struct CallingCode {
    main: &'static phonenumber::Metadata,
    regions: Vec<&'static phonenumber::Metadata>,
}

fn calling_code(code: u16) -> Option<&'static CallingCode> {
    static CODES: std::sync::LazyLock<std::collections::HashMap<u16, CallingCode>> =
        std::sync::LazyLock::new(|| {
            (1..1000)
                .filter_map(|code: u16| {
                    let all = DATABASE.by_code(&code)?;
                    let main = all
                        .iter()
                        .find(|m| m.is_main_country_for_code())
                        .or(all.first())
                        .copied()?;
                    let regions = match DATABASE.region(&code)?.as_slice() {
                        ["001"] => all.first().copied().into_iter().collect(),
                        ids => ids.iter().filter_map(|r| DATABASE.by_id(*r)).collect(),
                    };
                    Some((code, CallingCode { main, regions }))
                })
                .collect()
        });
    CODES.get(&code)
}

/// The common shape, read without the crate: ASCII digits with spaces, hyphens, dots or brackets,
/// either `+` and a calling code or a national number of `region` that starts with neither the
/// region's international prefix nor its calling code. Read as libphonenumber reads it (the
/// calling code, the trunk prefix stripped by `strip_national_prefix`); Some only for a valid
/// number — anything else is left to the full reading, which also words the error. Checked
/// against libphonenumber by `numbers_read_as_libphonenumber_reads_them` and against the full
/// reading by `the_plain_reading_agrees_with_the_full_one`.
fn plain_e164(raw: &str, region: Id) -> Option<String> {
    let mut digits = [0u8; 20];
    let mut n = 0;
    let mut plus = false;
    for b in raw.bytes() {
        match b {
            b'0'..=b'9' => {
                *digits.get_mut(n)? = b;
                n += 1;
            }
            b' ' | b'-' | b'.' | b'(' | b')' => {}
            b'+' if n == 0 && !plus => plus = true,
            _ => return None,
        }
    }
    // libphonenumber's shortest viable number is three digits.
    if n < 3 {
        return None;
    }
    let digits = std::str::from_utf8(&digits[..n]).ok()?;
    // The national number is read by the rules of the code's main region when dialled with a
    // calling code, else by the default region's own (Jersey's trunk prefix is not Britain's).
    let (code, written, meta) = if plus {
        // The calling code: the shortest of one to three digits that is one.
        (1..=3).find_map(|len| {
            let code: u16 = digits[..len].parse().ok()?;
            let main = calling_code(code)
                .filter(|_| !digits.starts_with('0'))?
                .main;
            Some((code, &digits[len..], main))
        })?
    } else {
        let meta = DATABASE.by_id(region.as_ref())?;
        let rules = rules(meta);
        if rules
            .idd
            .as_ref()
            .is_some_and(|idd| idd.find(digits).is_some_and(|m| m.end() > 0))
            || digits.starts_with(&meta.country_code().to_string())
        {
            return None;
        }
        (meta.country_code(), digits, meta)
    };
    let national = strip_national_prefix(written, meta)?;
    (national.len() >= 2 && national.len() <= 17 && is_valid_national(code, &national))
        .then(|| format!("+{code}{national}"))
}

/// libphonenumber's `isValidNumber`: the number's region (the only one of its calling code; of
/// several, the first whose leading digits begin the national number, or, without leading digits,
/// of whose number types it is one), and the national number matching that region's general
/// pattern and one number type's pattern, entirely and at one of the type's possible lengths.
/// The crate's own `is_valid` asks the same through a regex cache shared by every pattern (a lock
/// and a hash of the pattern's text for each match): two thirds of the time a number took.
/// Checked against libphonenumber itself by `numbers_read_as_libphonenumber_reads_them`.
fn is_valid_national(code: u16, national: &str) -> bool {
    let Some(code) = calling_code(code) else {
        return false;
    };
    let meta = match code.regions.as_slice() {
        [] => return false,
        [one] => Some(*one),
        several => several.iter().copied().find(|m| {
            let rules = rules(m);
            match &rules.leading {
                Some(leading) => leading.is_match(national),
                None if m.leading_digits().is_some() => false,
                None => rules.types.is_of_a_type(national),
            }
        }),
    };
    meta.is_some_and(|m| rules(m).types.is_of_a_type(national))
}

/// A number type's pattern (anchored at both ends) and possible lengths.
struct TypePattern {
    pattern: Option<regex::Regex>,
    lengths: Vec<u16>,
}

impl TypePattern {
    fn new(d: &phonenumber::metadata::Descriptor) -> TypePattern {
        let pattern: String = d
            .national_number()
            .as_str()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        TypePattern {
            pattern: (!pattern.is_empty())
                .then(|| regex::Regex::new(&format!("^(?:{pattern})$")).ok())
                .flatten(),
            lengths: d.possible_length().to_vec(),
        }
    }

    /// libphonenumber's `isNumberMatchingDesc`.
    fn matches(&self, national: &str) -> bool {
        (self.lengths.is_empty() || self.lengths.contains(&(national.len() as u16)))
            && self.pattern.as_ref().is_some_and(|p| p.is_match(national))
    }
}

/// A region's general pattern and the patterns of its number types, compiled once.
struct NumberTypes {
    general: TypePattern,
    types: Vec<TypePattern>,
}

impl NumberTypes {
    fn is_of_a_type(&self, national: &str) -> bool {
        self.general.matches(national) && self.types.iter().any(|t| t.matches(national))
    }
}

fn number_types(meta: &phonenumber::Metadata) -> NumberTypes {
    let d = meta.descriptors();
    let types = [
        d.premium_rate(),
        d.toll_free(),
        d.shared_cost(),
        d.voip(),
        d.personal_number(),
        d.pager(),
        d.uan(),
        d.voicemail(),
        d.fixed_line(),
        d.mobile(),
    ]
    .into_iter()
    .flatten()
    .map(TypePattern::new)
    .collect();
    NumberTypes {
        general: TypePattern::new(d.general()),
        types,
    }
}

/// `raw` with every decimal digit in ASCII and a full-width plus as `+`, as libphonenumber reads
/// them (it takes any Unicode decimal digit: full-width `０`–`９`, Arabic-Indic `٠`–`٩`, …).
fn ascii_digits(raw: &str) -> String {
    raw.chars()
        .map(|c| match c {
            '\u{ff0b}' => '+',
            c => unicode_digit(c)
                .and_then(|d| char::from_digit(d, 10))
                .unwrap_or(c),
        })
        .collect()
}

/// The value of a decimal digit (Unicode category Nd) outside ASCII, for the scripts whose digits
/// run from a zero in one block of ten.
fn unicode_digit(c: char) -> Option<u32> {
    const ZEROS: &[u32] = &[
        0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
        0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0,
        0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0,
        0xAA50, 0xABF0, 0xFF10,
    ];
    let code = u32::from(c);
    if c.is_ascii() {
        return None;
    }
    ZEROS
        .iter()
        .find(|&&zero| (zero..zero + 10).contains(&code))
        .map(|zero| code - zero)
}

/// `phonenumber::parse`, with a panic inside the crate turned into "not a number": one odd value
/// must reject its row, not end the run.
fn guarded(region: Option<Id>, raw: &str) -> Result<PhoneNumber, ParseError> {
    std::panic::catch_unwind(|| phonenumber::parse(region, raw))
        .unwrap_or(Err(ParseError::NoNumber))
}

/// `raw` with the international dialling prefix of `region` (`00` in Liberia, `011` in the US)
/// replaced by `+`; None when it does not start with that prefix.
fn idd_to_plus(raw: &str, region: Id) -> Option<String> {
    let idd = DATABASE.by_id(region.as_ref())?.international_prefix()?;
    let positions: Vec<usize> = raw
        .char_indices()
        .filter(|(_, c)| c.is_ascii_digit())
        .map(|(i, _)| i)
        .collect();
    let digits: String = positions.iter().map(|&i| &raw[i..=i]).collect();
    let m = idd
        .find(&digits)
        .filter(|m| m.start() == 0 && m.end() > 0)?;
    let after = positions[m.end() - 1] + 1;
    Some(format!("+{}", &raw[after..]))
}

#[cfg(test)]
mod tests {
    //! Expected values are libphonenumber's (the `phonenumber` crate with its metadata): Liberian
    //! mobile numbers are 9 digits after the trunk `0` (77…, 88…, 555…), fixed lines 8 (2…).
    use super::*;

    fn lr(raw: &str) -> Result<String, String> {
        to_e164(raw, Id::LR)
    }

    #[test]
    fn default_country_is_a_calling_code_or_a_region() {
        assert_eq!(default_region("231"), Ok(Id::LR));
        assert_eq!(default_region("+231"), Ok(Id::LR));
        assert_eq!(default_region("1"), Ok(Id::US));
        assert_eq!(default_region("44"), Ok(Id::GB));
        assert_eq!(default_region("7"), Ok(Id::RU));
        assert_eq!(default_region("LR"), Ok(Id::LR));
        assert_eq!(default_region("gb"), Ok(Id::GB));
        assert_eq!(default_region(" US "), Ok(Id::US));
        for bad in ["", "999", "0", "99999", "XX", "Liberia", "800"] {
            assert!(default_region(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn national_liberian_numbers() {
        assert_eq!(lr("0777 123456").unwrap(), "+231777123456");
        assert_eq!(lr("0886200053").unwrap(), "+231886200053");
        assert_eq!(lr("0770 100037").unwrap(), "+231770100037");
        assert_eq!(lr("0555 123456").unwrap(), "+231555123456");
        assert_eq!(lr("021 234 567").unwrap(), "+23121234567");
        // Without the trunk prefix, and with the calling code but no `+`.
        assert_eq!(lr("777 123 456").unwrap(), "+231777123456");
        assert_eq!(lr("231 777 123456").unwrap(), "+231777123456");
    }

    #[test]
    fn international_forms() {
        assert_eq!(lr("+231-88-1234567").unwrap(), "+231881234567");
        assert_eq!(lr("00231 (88) 123.4567").unwrap(), "+231881234567");
        assert_eq!(lr("tel:+231-77-712-3456").unwrap(), "+231777123456");
    }

    /// Found by the thirteenth tester (T1): libphonenumber refuses both; cutover wrote
    /// `+494915123456789` and `+4915123456789`.
    #[test]
    fn a_global_number_under_a_global_context_and_a_hash_are_no_numbers() {
        let de = Id::DE;
        for raw in [
            "tel:+4915123456789;phone-context=+49",
            "tel:+4918012345;phone-context=+49",
            "tel:+1-780-555-0100;phone-context=+1",
            "+4915123456789#",
            "015123456789#",
            "+49 30 123456 #",
            "+49 30 123456 ext. 5#",
        ] {
            assert!(to_e164(raw, de).is_err(), "{raw}: {:?}", to_e164(raw, de));
        }
        // A national number under a global context, and a global one under a domain: numbers.
        assert_eq!(
            to_e164("tel:015123456789;phone-context=+49", de).unwrap(),
            "+4915123456789"
        );
        assert_eq!(
            to_e164("tel:+4915123456789;phone-context=example.com", de).unwrap(),
            "+4915123456789"
        );
    }

    #[test]
    fn trunk_prefix_after_the_country_code_is_dropped() {
        // Issue #11: the old transform wrote +4402079460018.
        assert_eq!(lr("+44 020 7946 0018").unwrap(), "+442079460018");
        assert_eq!(to_e164("020 7946 0018", Id::GB).unwrap(), "+442079460018");
    }

    #[test]
    fn national_prefix_of_nanp_is_not_a_second_country_code() {
        // Issue #11: the old transform wrote +117805550100.
        let us = default_region("1").unwrap();
        assert_eq!(to_e164("1 (780) 555-0100", us).unwrap(), "+17805550100");
        assert_eq!(to_e164("(780) 555-0100", us).unwrap(), "+17805550100");
        assert_eq!(to_e164("+1 780 555 0100", us).unwrap(), "+17805550100");
    }

    #[test]
    fn a_foreign_number_is_read_by_its_own_country_rules() {
        // Rome numbers keep their leading 0 after +39; the crate alone would strip it as a
        // Liberian trunk prefix.
        assert_eq!(lr("+39 06 1234 5678").unwrap(), "+390612345678");
        assert_eq!(lr("0039 06 1234 5678").unwrap(), "+390612345678");
        assert_eq!(
            to_e164("+39 06 1234 5678", Id::GB).unwrap(),
            "+390612345678"
        );
        assert_eq!(
            to_e164("011 39 06 1234 5678", Id::US).unwrap(),
            "+390612345678"
        );
        assert_eq!(
            to_e164("0044 20 7946 0018", Id::LR).unwrap(),
            "+442079460018"
        );
        // A number valid in its own region, written in international form with another default.
        assert_eq!(lr("+1 416 555 0100").unwrap(), "+14165550100");
        assert_eq!(to_e164("+231 777 123456", Id::US).unwrap(), "+231777123456");
        assert_eq!(to_e164("+44 7400 123456", Id::US).unwrap(), "+447400123456");
    }

    #[test]
    fn too_short_and_too_long_are_rejected() {
        assert!(lr("555").is_err());
        assert!(lr("0777 12345").is_err());
        assert!(lr("0777 1234567").is_err());
        assert!(lr("+2317771234567").is_err());
        assert!(lr("+1234567890123456").is_err());
        // A national number read in the wrong region is not a Liberian number.
        assert!(lr("1 (780) 555-0100").is_err());
    }

    #[test]
    fn numbers_outside_the_numbering_plan_are_rejected() {
        // 9 digits but no Liberian range starts with 99.
        assert!(lr("0999 123456").is_err());
        assert!(lr("+999 123 456 789").is_err());
        assert!(lr("+000 1234").is_err());
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "12ab",
            "",
            "   ",
            "hello",
            "call 0777 123456 now",
            "0777-123-456abc",
            "#:2 22",
        ] {
            assert!(lr(bad).is_err(), "{bad:?}");
        }
        let message = lr("12ab").unwrap_err();
        assert!(
            message.contains("`12ab` is not a phone number"),
            "{message}"
        );
    }

    /// Issue #11: the trunk prefix is stripped only as libphonenumber strips it. Expected values
    /// are the Python `phonenumbers` library's (libphonenumber's port), `format_number(parse(raw,
    /// region), E164)` with `is_valid_number` true.
    #[test]
    fn a_trunk_prefix_digit_after_the_country_code_is_kept_as_libphonenumber_keeps_it() {
        let cases = [
            ("+7 812 315-00-00", Id::RU, "+78123150000"),
            ("8 (812) 315-00-00", Id::RU, "+78123150000"),
            ("+7 800 555-35-35", Id::RU, "+78005553535"),
            ("+78001234567", Id::RU, "+78001234567"),
            ("+7 809 123-45-67", Id::RU, "+78091234567"),
            ("+78722152676", Id::RU, "+78722152676"),
            ("+7 800 123-45-67", Id::KZ, "+78001234567"),
            ("+375 801 123 4567", Id::BY, "+3758011234567"),
            ("+3758003019243", Id::BY, "+3758003019243"),
            ("+370 800 12 345", Id::LT, "+37080012345"),
            ("+370 801 23 456", Id::LT, "+37080123456"),
            // Still stripped where it is a trunk prefix.
            ("8 812 315-00-00", Id::RU, "+78123150000"),
            ("+44 020 7946 0018", Id::RU, "+442079460018"),
        ];
        for (raw, region, want) in cases {
            assert_eq!(
                to_e164(raw, region).as_deref(),
                Ok(want),
                "{raw} in {region:?}"
            );
        }
    }

    /// Issue #11: libphonenumber reads any decimal digits and a full-width plus.
    #[test]
    fn full_width_and_arabic_indic_digits_are_read() {
        assert_eq!(
            to_e164("＋７ ８１２ ３１５-００-００", Id::RU).as_deref(),
            Ok("+78123150000")
        );
        assert_eq!(
            to_e164("٠٧٧٧ ١٢٣٤٥٦", Id::LR).as_deref(),
            Ok("+231777123456")
        );
        assert_eq!(
            to_e164("۰۷۷۷ ۱۲۳۴۵۶", Id::LR).as_deref(),
            Ok("+231777123456")
        );
    }

    /// Issue #11: numbers of every region, national and international, with spaces or without,
    /// read exactly as libphonenumber reads them. The table (`testdata/phones.tsv`) holds the
    /// Python `phonenumbers` library's answers: `format_number(parse(raw, region), E164)` when
    /// `is_valid_number`, else empty.
    #[test]
    fn numbers_read_as_libphonenumber_reads_them() {
        let table = include_str!("testdata/phones.tsv");
        let mut wrong = Vec::new();
        let mut n = 0;
        for line in table.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.split('\t');
            let (Some(region), Some(raw), Some(want)) = (parts.next(), parts.next(), parts.next())
            else {
                panic!("bad line {line:?}");
            };
            n += 1;
            let got = to_e164(raw, region.parse().unwrap()).unwrap_or_default();
            if got != want {
                wrong.push(format!(
                    "{region} {raw:?}: {got:?}, libphonenumber {want:?}"
                ));
            }
        }
        assert!(n > 10_000);
        assert!(
            wrong.is_empty(),
            "{} of {n} differ:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }

    /// The plain reading (no crate) gives libphonenumber's answer wherever it gives one, and
    /// takes the common shapes: national and `+` numbers with spaces, hyphens, dots, brackets.
    #[test]
    fn the_plain_reading_agrees_with_the_full_one() {
        let table = include_str!("testdata/phones.tsv");
        let (mut plain, mut n) = (0, 0);
        let mut wrong = Vec::new();
        for line in table.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.split('\t');
            let (Some(region), Some(raw), Some(want)) = (parts.next(), parts.next(), parts.next())
            else {
                panic!("bad line {line:?}");
            };
            n += 1;
            if let Some(got) = plain_e164(raw, region.parse().unwrap()) {
                plain += 1;
                if got != want {
                    wrong.push(format!(
                        "{region} {raw:?}: {got:?}, libphonenumber {want:?}"
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        // Most of the table's valid numbers are of the plain shape.
        assert!(plain * 4 > n, "{plain} of {n} read plainly");
        assert_eq!(lr("0777 123456").unwrap(), "+231777123456");
        assert_eq!(
            plain_e164("0777 123456", Id::LR).as_deref(),
            Some("+231777123456")
        );
        assert_eq!(
            plain_e164("+231-88-1234567", Id::LR).as_deref(),
            Some("+231881234567")
        );
        assert_eq!(
            plain_e164("(+44) 20 7946 0018", Id::LR).as_deref(),
            Some("+442079460018")
        );
        for full in [
            "tel:+231777123456",
            "0777 123456 x5",
            "00 44 20 7946 0018",
            "231777123456",
        ] {
            assert_eq!(plain_e164(full, Id::LR), None, "{full}");
        }
    }

    #[test]
    fn extensions_are_rejected_not_dropped() {
        let message = lr("0777 123456 ext. 12").unwrap_err();
        assert!(message.contains("extension (12)"), "{message}");
        assert!(lr("+44 20 7946 0018 x123").is_err());
    }
}
