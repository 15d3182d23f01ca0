//! The proleptic Gregorian calendar of verify's own date arithmetic, for any year PostgreSQL
//! holds (±262,143; astronomical years: 1 BC is year 0): days since 1970-01-01 from a date and
//! back (H. Hinnant's algorithms), written apart from `transform/` (verify's independence).

/// Days since 1970-01-01 of day `d` of month `m` of the proleptic Gregorian year `y`
/// (astronomical: 1 BC is year 0, 44 BC is −43), for any year (H. Hinnant's `days_from_civil`).
pub(super) fn civil_days(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(super) fn month_days(y: i64, m: i64) -> i64 {
    let leap = y.rem_euclid(4) == 0 && (y.rem_euclid(100) != 0 || y.rem_euclid(400) == 0);
    match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The proleptic Gregorian (year, month, day) of `days` after 1970-01-01 (astronomical years).
pub(super) fn civil(days: i64) -> (i64, u32, u32) {
    // Shifted to 0000-03-01, so that a leap day ends its year; 146,097 days a 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The day count of any year PostgreSQL holds, against chrono's calendar (±262143).
    #[test]
    fn civil_days_agree_with_chrono() {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let mut y = -262_143i32;
        while y <= 262_142 {
            for (m, d) in [(1, 1), (2, 28), (3, 1), (12, 31)] {
                let c = chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
                assert_eq!(
                    civil_days(i64::from(y), i64::from(m), i64::from(d)),
                    (c - epoch).num_days(),
                    "{c}"
                );
            }
            y += 97;
        }
        for y in [-4, 0, 4, 400, 2000, 10000, 99996] {
            let c = chrono::NaiveDate::from_ymd_opt(y, 2, 29).unwrap();
            assert_eq!(civil_days(i64::from(y), 2, 29), (c - epoch).num_days());
        }
    }

    /// Every day of the range read back as the date it came from (a stride through ±262,143
    /// years, and every day of four years around the leap-rule edges).
    #[test]
    fn days_and_dates_round_trip() {
        let mut days = civil_days(-262_143, 1, 1);
        let end = civil_days(262_142, 12, 31);
        while days <= end {
            let (y, m, d) = civil(days);
            assert!((1..=12).contains(&m) && d >= 1 && i64::from(d) <= month_days(y, i64::from(m)));
            assert_eq!(
                civil_days(y, i64::from(m), i64::from(d)),
                days,
                "{y}-{m}-{d}"
            );
            days += 9_973;
        }
        for start in [
            civil_days(1899, 1, 1),
            civil_days(1999, 1, 1),
            civil_days(-1, 1, 1),
        ] {
            for days in start..start + 4 * 366 {
                let (y, m, d) = civil(days);
                assert_eq!(civil_days(y, i64::from(m), i64::from(d)), days);
            }
        }
    }
}
