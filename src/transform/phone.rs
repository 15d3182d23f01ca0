//! Phone numbers to E.164 (`+` and 8 to 15 digits).

/// Normalises `raw` to E.164. National numbers lose `trunk_prefix` and gain `+country`.
pub fn to_e164(raw: &str, country: &str, trunk_prefix: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    let mut digits = String::with_capacity(trimmed.len());
    let mut international = false;
    for (i, c) in trimmed.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => international = true,
            ' ' | '-' | '.' | '(' | ')' | '/' => {}
            _ => return Err(format!("`{raw}` is not a phone number (unexpected `{c}`)")),
        }
    }
    if !international && digits.starts_with("00") {
        international = true;
        digits.drain(..2);
    }
    let full = if international {
        digits
    } else {
        let national = if !trunk_prefix.is_empty() && digits.starts_with(trunk_prefix) {
            &digits[trunk_prefix.len()..]
        } else {
            digits.as_str()
        };
        format!("{country}{national}")
    };
    if !(8..=15).contains(&full.len()) || full.starts_with('0') {
        return Err(format!(
            "`{raw}` is not a valid phone number (E.164 needs 8 to 15 digits, got {})",
            full.len()
        ));
    }
    Ok(format!("+{full}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_and_international_forms() {
        assert_eq!(to_e164("0777 123456", "231", "0").unwrap(), "+231777123456");
        assert_eq!(
            to_e164("+231-88-1234567", "231", "0").unwrap(),
            "+231881234567"
        );
        assert_eq!(
            to_e164("00231 (88) 123.4567", "231", "0").unwrap(),
            "+231881234567"
        );
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(to_e164("12ab", "231", "0").is_err());
        assert!(to_e164("555", "231", "0").is_err());
        assert!(to_e164("+1234567890123456", "231", "0").is_err());
    }
}
