//! UTC calendar dates without a date crate: days since 1970-01-01 to and from
//! `YYYY-MM-DD` (Howard Hinnant's civil-date algorithms).

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date, or `None` if it is not one.
pub fn days_from_civil(date: &str) -> Option<i64> {
    let bytes = date.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = &date[range];
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// `YYYY-MM-DD` of a day count.
pub fn date(days: i64) -> String {
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The UTC month (`YYYY-MM`) of a Unix time in milliseconds, and the Unix
/// millisecond its first day starts at.
pub fn month_of_unix_ms(unix_ms: i64) -> (String, i64) {
    let days = unix_ms.div_euclid(86_400_000);
    let (year, month, _) = civil_from_days(days);
    let key = format!("{year:04}-{month:02}");
    let first = days_from_civil(&format!("{key}-01")).unwrap_or(days);
    (key, first * 86_400_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(days_from_civil("2025-11-23"), Some(20_415));
        assert_eq!(days_from_civil("2025-13-01"), None);
        assert_eq!(days_from_civil("2025-1a-01"), None);
        assert_eq!(days_from_civil("25-1-1"), None);
        for days in (-700_000..2_900_000).step_by(997) {
            assert_eq!(days_from_civil(&date(days)), Some(days));
        }
        // 2026-11-23T12:00:00Z
        let (month, start) = month_of_unix_ms(1_795_435_200_000);
        assert_eq!(month, "2026-11");
        assert_eq!(date(start / 86_400_000), "2026-11-01");
    }
}
