//! Timestamp parsing into microseconds since the Unix epoch, UTC.
//!
//! Each parser also returns the resolution of the text it read, because an
//! access log that writes whole seconds means "some time within that second".

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

pub const MICROS_PER_SECOND: Micros = 1_000_000;

/// A parsed time and the length of the interval it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    pub micros: Micros,
    /// Resolution of the text: 1 000 000 for whole seconds, 1 000 for milliseconds.
    pub resolution: Micros,
}

/// Returns the number of days from 1970-01-01 to the given proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Shift the year to start in March so the leap day is the last day of a year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Converts a UTC date and time of day into microseconds, checking every range.
fn civil_to_micros(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
) -> Option<Micros> {
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    // Second 60 is accepted for leap seconds and counted as the next second.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some(seconds * MICROS_PER_SECOND)
}

/// Parses a fraction of a second (the digits after the dot) into microseconds
/// and the resolution. Digits beyond microseconds are truncated.
fn parse_fraction(text: &str) -> Option<(Micros, Micros)> {
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let microsecond_digits = &text[..text.len().min(6)];
    let scale = 10i64.pow(6 - microsecond_digits.len() as u32);
    let micros = microsecond_digits.parse::<i64>().ok()? * scale;
    Some((micros, scale))
}

/// Parses RFC 3339 / ISO 8601 with a `T` separator and a `Z` or `±HH:MM`
/// offset, such as `2026-12-04T20:01:02.345678Z` (tlsplice) or
/// `2026-12-04T21:01:02+01:00` (nginx `$time_iso8601`).
pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let bytes = text.as_bytes();
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b'T'
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let year = i64::from(digits(&text[0..4])?);
    let month = digits(&text[5..7])?;
    let day = digits(&text[8..10])?;
    let hour = digits(&text[11..13])?;
    let minute = digits(&text[14..16])?;
    let second = digits(&text[17..19])?;

    let mut rest = &text[19..];
    let mut fraction = (0, MICROS_PER_SECOND);
    if let Some(after_dot) = rest.strip_prefix('.') {
        let end = after_dot
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after_dot.len());
        fraction = parse_fraction(&after_dot[..end])?;
        rest = &after_dot[end..];
    }
    let offset_seconds = parse_utc_offset_colon(rest)?;

    let micros = civil_to_micros(year, month, day, hour, minute, second)? + fraction.0
        - offset_seconds * MICROS_PER_SECOND;
    Some(Timestamp {
        micros,
        resolution: fraction.1,
    })
}

/// Parses `Z` or `+HH:MM` / `-HH:MM` into seconds east of UTC.
fn parse_utc_offset_colon(text: &str) -> Option<i64> {
    if text == "Z" || text == "z" {
        return Some(0);
    }
    let bytes = text.as_bytes();
    if bytes.len() != 6 || bytes[3] != b':' {
        return None;
    }
    offset_seconds(bytes[0], &text[1..3], &text[4..6])
}

fn offset_seconds(sign: u8, hours: &str, minutes: &str) -> Option<i64> {
    let sign = match sign {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let hours = digits(hours)?;
    let minutes = digits(minutes)?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * i64::from(hours * 3600 + minutes * 60))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Parses the Common Log Format time that Apache `%t` and nginx `$time_local`
/// write inside brackets, such as `10/Oct/2000:13:55:36 -0700`.
pub fn parse_clf(text: &str) -> Option<Timestamp> {
    let bytes = text.as_bytes();
    if bytes.len() != 26
        || bytes[2] != b'/'
        || bytes[6] != b'/'
        || bytes[11] != b':'
        || bytes[14] != b':'
        || bytes[17] != b':'
        || bytes[20] != b' '
    {
        return None;
    }
    let day = digits(&text[0..2])?;
    let month = MONTHS.iter().position(|m| *m == &text[3..6])? as u32 + 1;
    let year = i64::from(digits(&text[7..11])?);
    let hour = digits(&text[12..14])?;
    let minute = digits(&text[15..17])?;
    let second = digits(&text[18..20])?;
    let offset = offset_seconds(bytes[21], &text[22..24], &text[24..26])?;

    let micros =
        civil_to_micros(year, month, day, hour, minute, second)? - offset * MICROS_PER_SECOND;
    Some(Timestamp {
        micros,
        resolution: MICROS_PER_SECOND,
    })
}

/// Parses seconds since the epoch with an optional fraction, such as nginx
/// `$msec` (`1449829000.123`).
pub fn parse_epoch(text: &str) -> Option<Timestamp> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, parse_fraction(fraction)?),
        None => (text, (0, MICROS_PER_SECOND)),
    };
    if whole.is_empty() || whole.len() > 12 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds: i64 = whole.parse().ok()?;
    Some(Timestamp {
        micros: seconds * MICROS_PER_SECOND + fraction.0,
        resolution: fraction.1,
    })
}

/// Parses a duration in seconds with a fraction, such as `0.045678`, into microseconds.
pub fn parse_seconds(text: &str) -> Option<Micros> {
    parse_epoch(text).map(|t| t.micros)
}

/// Returns the proleptic Gregorian (year, month, day) of a day count from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
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

/// Splits microseconds into a UTC date, time of day in seconds, and microseconds.
fn split_micros(micros: Micros) -> ((i64, u32, u32), i64, i64) {
    let seconds = micros.div_euclid(MICROS_PER_SECOND);
    let fraction = micros.rem_euclid(MICROS_PER_SECOND);
    let days = seconds.div_euclid(86_400);
    (civil_from_days(days), seconds.rem_euclid(86_400), fraction)
}

/// Formats a time as tlsplice writes it: `2026-12-04T20:01:02.345678Z`.
pub fn format_rfc3339(micros: Micros) -> String {
    let ((year, month, day), seconds, fraction) = split_micros(micros);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Formats a time in Common Log Format with the given offset east of UTC in
/// minutes: `04/Dec/2026:21:01:02 +0100`.
pub fn format_clf(micros: Micros, offset_minutes: i64) -> String {
    let local = micros + offset_minutes * 60 * MICROS_PER_SECOND;
    let ((year, month, day), seconds, _) = split_micros(local);
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let offset = offset_minutes.abs();
    format!(
        "{day:02}/{}/{year:04}:{:02}:{:02}:{:02} {sign}{:02}{:02}",
        MONTHS[month as usize - 1],
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        offset / 60,
        offset % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_utc_with_microseconds() {
        let t = parse_rfc3339("2026-12-04T20:01:02.345678Z").unwrap();
        // 2026-12-04 is day 20791 after the epoch.
        assert_eq!(
            t.micros,
            (20_791 * 86_400 + 20 * 3600 + 62) * MICROS_PER_SECOND + 345_678
        );
        assert_eq!(t.resolution, 1);
    }

    #[test]
    fn rfc3339_offset_and_whole_seconds() {
        let utc = parse_rfc3339("2026-12-04T20:01:02Z").unwrap();
        let plus_one = parse_rfc3339("2026-12-04T21:01:02+01:00").unwrap();
        assert_eq!(utc.micros, plus_one.micros);
        assert_eq!(plus_one.resolution, MICROS_PER_SECOND);
        assert_eq!(
            parse_rfc3339("2026-12-04T20:01:02.5Z").unwrap().resolution,
            100_000
        );
    }

    #[test]
    fn rfc3339_invalid_rejected() {
        for text in [
            "2026-12-04 20:01:02Z",
            "2026-13-04T20:01:02Z",
            "2026-02-29T20:01:02Z",
            "2026-12-04T24:01:02Z",
            "2026-12-04T20:01:02",
            "2026-12-04T20:01:02.Z",
            "2026-12-04T20:01:02+0100",
        ] {
            assert_eq!(parse_rfc3339(text), None, "{text}");
        }
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_some());
    }

    #[test]
    fn clf_matches_rfc3339() {
        let clf = parse_clf("10/Oct/2000:13:55:36 -0700").unwrap();
        let iso = parse_rfc3339("2000-10-10T20:55:36Z").unwrap();
        assert_eq!(clf.micros, iso.micros);
        assert_eq!(clf.resolution, MICROS_PER_SECOND);
        assert_eq!(parse_clf("10/Okt/2000:13:55:36 -0700"), None);
        assert_eq!(parse_clf("10/Oct/2000:13:55:36"), None);
    }

    #[test]
    fn epoch_with_milliseconds() {
        let t = parse_epoch("1449829000.123").unwrap();
        assert_eq!(t.micros, 1_449_829_000_123_000);
        assert_eq!(t.resolution, 1_000);
        assert_eq!(parse_epoch("-5"), None);
        assert_eq!(parse_epoch("12a"), None);
        assert_eq!(parse_seconds("0.045678"), Some(45_678));
    }

    #[test]
    fn format_round_trips() {
        for text in [
            "2026-12-04T20:01:02.345678Z",
            "2000-02-29T00:00:00.000001Z",
            "1969-12-31T23:59:59.999999Z",
        ] {
            let parsed = parse_rfc3339(text).unwrap();
            assert_eq!(format_rfc3339(parsed.micros), text);
        }
        let micros = parse_rfc3339("2026-12-04T20:01:02.9Z").unwrap().micros;
        assert_eq!(format_clf(micros, 60), "04/Dec/2026:21:01:02 +0100");
        assert_eq!(format_clf(micros, -420), "04/Dec/2026:13:01:02 -0700");
        assert_eq!(
            parse_clf(&format_clf(micros, -420)).unwrap().micros,
            micros - 900_000
        );
    }

    #[test]
    fn days_from_civil_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }
}
