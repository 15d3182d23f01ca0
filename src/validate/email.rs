//! The `email` rule: an address of RFC 5321 (`local@domain`), internationalised as RFC 6531 allows
//! (UTF-8 in the local part, an IDN domain) unless the rule asks for ASCII only. Pure: no DNS, no
//! I/O; quoted local parts (`"a b"@x.org`) are not accepted.

use std::net::{IpAddr, Ipv6Addr};

/// RFC 5321 §4.5.3.1: the local part holds at most 64 octets, the domain at most 255; RFC 1035: a
/// label at most 63.
const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_LABEL: usize = 63;

/// Whether `address` is an e-mail address; with `ascii_only`, one of ASCII characters only (an IDN
/// domain may still be given in its `xn--` form).
pub fn is_valid(address: &str, ascii_only: bool) -> bool {
    if ascii_only && !address.is_ascii() {
        return false;
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    local_part_ok(local) && domain_ok(domain)
}

/// A dot-atom: atoms of `atext` (RFC 5322 §3.2.3, with RFC 6531's UTF-8) joined by single dots.
fn local_part_ok(local: &str) -> bool {
    local.len() <= MAX_LOCAL
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn is_atext(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
    }
    // RFC 6531's UTF8-non-ascii, less what no address should hold (blanks, controls).
    !c.is_whitespace() && !c.is_control()
}

/// A host name or an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`). Labels of an IDN are
/// checked for their form, not against the IDNA tables: this build's `idna` has no Unicode back end
/// (the `appwrite` dev-dependency pins `idna_adapter` below 1.1, the stub that rejects every
/// non-ASCII name).
fn domain_ok(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return address_literal_ok(literal);
    }
    !domain.is_empty() && domain.len() <= MAX_DOMAIN && domain.split(is_label_dot).all(label_ok)
}

/// The full stops UTS 46 reads as a dot: `.`, `。`, `．`, `｡`.
fn is_label_dot(c: char) -> bool {
    matches!(c, '.' | '\u{3002}' | '\u{ff0e}' | '\u{ff61}')
}

/// Letters, digits and hyphens, not at either end (RFC 1035 §2.3.1, RFC 1123 §2.1); an IDN label
/// (RFC 5890) may hold any other non-ASCII character but blanks and controls.
fn label_ok(label: &str) -> bool {
    label.chars().count() <= MAX_LABEL
        && !label.is_empty()
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.chars().all(|c| {
            if c.is_ascii() {
                c.is_ascii_alphanumeric() || c == '-'
            } else {
                !c.is_whitespace() && !c.is_control() && !idna_disallowed(c)
            }
        })
}

/// Characters IDNA 2008 never allows in a label, whatever the script: format characters
/// (Unicode category Cf: zero-width spaces and joiners, bidi controls, the BOM, soft hyphen, tags),
/// private use, and noncharacters. `x.com` followed by a zero-width space looked like a valid
/// host name (found by the thirteenth tester, T2).
fn idna_disallowed(c: char) -> bool {
    let u = c as u32;
    matches!(
        u,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
            | 0xE000..=0xF8FF
            | 0xF0000..=0x10FFFF
            | 0xFDD0..=0xFDEF
    ) || u & 0xFFFE == 0xFFFE
}

fn address_literal_ok(literal: &str) -> bool {
    let tagged_v6 = literal
        .get(..5)
        .filter(|tag| tag.eq_ignore_ascii_case("IPv6:"))
        .map(|_| &literal[5..]);
    match tagged_v6 {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => literal.parse::<IpAddr>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERNATIONAL: &[&str] = &[
        "łukasz@example.pl",
        "用户@例子.广告",
        "josé.garcía@correos.es",
        "θσερ@εχαμπλε.ψομ",
        "user@bücher.de",
        "アドレス@ドメイン.jp",
        "उपयोगकर्ता@उदाहरण.भारत",
        "用户@例子。广告",
    ];

    #[test]
    fn ascii_addresses_are_accepted_in_both_modes() {
        for ok in [
            "patient42@mail.example.org",
            "first.last+tag@sub.example.co.uk",
            "o'hara@example.ie",
            "x@localhost",
            "user@xn--bcher-kva.de",
            "USER@EXAMPLE.ORG",
            "a!#$%&'*+/=?^_`{|}~-z@example.org",
            "root@[192.0.2.1]",
            "root@[IPv6:2001:db8::1]",
        ] {
            assert!(is_valid(ok, false), "{ok}");
            assert!(is_valid(ok, true), "{ok} (ascii)");
        }
    }

    #[test]
    fn invisible_and_private_characters_make_no_host_name() {
        for bad in [
            "a@x.com\u{200b}",
            "a@x\u{200d}y.com",
            "a@\u{feff}x.com",
            "a@x.c\u{00ad}om",
            "a@x.com\u{202e}",
            "a@\u{e000}.com",
            "a@x.\u{fdd0}",
            "a@x.com\u{e0041}",
        ] {
            assert!(!is_valid(bad, false), "{bad:?}");
        }
        assert!(is_valid("a@bücher.ch", false));
    }

    #[test]
    fn internationalised_addresses_are_accepted_by_default() {
        for ok in INTERNATIONAL {
            assert!(is_valid(ok, false), "{ok}");
        }
    }

    #[test]
    fn ascii_only_rejects_internationalised_addresses() {
        for bad in INTERNATIONAL {
            assert!(!is_valid(bad, true), "{bad}");
        }
        // Non-ASCII in the local part alone, or in the domain alone.
        assert!(!is_valid("łukasz@example.pl", true));
        assert!(!is_valid("user@bücher.de", true));
    }

    #[test]
    fn malformed_addresses_are_rejected_in_both_modes() {
        let too_long_local = format!("{}@example.org", "a".repeat(65));
        let too_long_label = format!("a@{}.org", "b".repeat(64));
        let too_long_domain = format!("a@{}org", "abcdefghi.".repeat(26));
        let too_long_idn_label = format!("a@{}.jp", "ド".repeat(64));
        // 33 two-octet characters: 66 octets.
        let too_long_utf8 = format!("{}@example.pl", "ł".repeat(33));
        for bad in [
            "",
            "nurse7.at.example.org",
            "not-an-email",
            "jane@@example.org",
            "a@b@example.org",
            "@example.org",
            "user@",
            "user name@example.org",
            "user@exa mple.org",
            " user@example.org",
            "user@example.org ",
            "user.@example.org",
            ".user@example.org",
            "us..er@example.org",
            "user@example.org.",
            "user@.example.org",
            "user@example..org",
            "user@-example.org",
            "user@example-.org",
            "user@exa_mple.org",
            "user@[192.0.2.300]",
            "user@[not-an-ip]",
            "\"quoted\"@example.org",
            "user\u{0}@example.org",
            "łu kasz@example.pl",
            "łukasz\u{a0}@example.pl",
            "用户@例子..广告",
            "用户@例 子.广告",
            "用户@例子.广告。",
            "user@exa\u{7}mple.org",
            &too_long_local,
            &too_long_label,
            &too_long_domain,
            &too_long_idn_label,
            &too_long_utf8,
        ] {
            assert!(!is_valid(bad, false), "{bad:?}");
            assert!(!is_valid(bad, true), "{bad:?} (ascii)");
        }
    }
}
