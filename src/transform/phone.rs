//! Phone numbers to E.164 by libphonenumber's numbering metadata (the `phonenumber` crate): a number
//! is read in the mapping's default region, must be a valid number of the country it dials, and is
//! written as `+`, its calling code and its national significant number. Pure: no I/O.

use phonenumber::country::{Id, Source};
use phonenumber::metadata::DATABASE;
use phonenumber::{Mode, ParseError, PhoneNumber};

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
    let number =
        parse(raw.trim(), region).map_err(|e| format!("`{raw}` is not a phone number ({e})"))?;
    let e164 = number.format().mode(Mode::E164).to_string();
    if !number.is_valid() {
        return Err(format!(
            "`{raw}` is not a valid phone number (read as {e164})"
        ));
    }
    if let Some(ext) = number.extension() {
        return Err(format!(
            "`{raw}` has an extension ({}), which E.164 cannot hold",
            &**ext
        ));
    }
    Ok(e164)
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

    #[test]
    fn extensions_are_rejected_not_dropped() {
        let message = lr("0777 123456 ext. 12").unwrap_err();
        assert!(message.contains("extension (12)"), "{message}");
        assert!(lr("+44 20 7946 0018 x123").is_err());
    }
}
