//! Points in time as people have them: what psql prints for a `timestamptz`
//! (`2026-12-04 14:45:02.954757+00`), RFC 3339 (`2026-12-04T14:45:02Z`) and, where the
//! moment is taken now (the CLI), a time relative to now (`-10m`).
//!
//! One parser for the CLI, the operator (`spec.at.time`, `source.time`) and the storage
//! API, so a time one of them accepts, every other accepts too. A time without a zone is
//! refused: the same wall-clock time names different moments on machines in different
//! zones, and a fork at the wrong moment silently loses or keeps transactions.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc};

/// The forms [`parse_timestamp`] accepts, for error messages.
pub const TIMESTAMP_FORMS: &str = "a time with a zone as Postgres prints timestamptz \
     (2026-12-04 14:45:02.954757+00, 2026-12-04 14:45:02-08, 2026-12-04 14:45:02+05:30) \
     or in RFC 3339 (2026-12-04T14:45:02Z)";

/// A time without a zone, as the CRDs' CEL rules match it (RE2 syntax).
pub const CEL_ZONELESS_PATTERN: &str =
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?$";

/// The shape [`parse_timestamp`] accepts, as the CRDs' CEL rules match it (RE2 syntax).
/// Impossible dates (February 30) pass it; the operator refuses them with `InvalidSpec`.
pub const CEL_TIMESTAMP_PATTERN: &str = "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:\
     [0-9]{2}([.][0-9]{1,9})?([Zz]|[+-][0-9]{2}(:[0-9]{2}(:[0-9]{2})?|[0-9]{2})?)$";

/// CEL rule refusing a time without a zone (the field is `self`).
pub fn cel_zoneless_rule() -> String {
    format!("!self.matches('{CEL_ZONELESS_PATTERN}')")
}

/// CEL message expression for [`cel_zoneless_rule`]: the same words as
/// [`TimestampError::NoZone`], naming the value (`field` is its path, like `spec.at.time`).
pub fn cel_zoneless_message(field: &str) -> String {
    format!(
        "'{field}: time ' + self + ' has no time zone: write it as Postgres prints \
         timestamptz (' + self.replace('T', ' ').replace('t', ' ') + '+00) or in RFC 3339 \
         (' + self.replace(' ', 'T') + 'Z)'"
    )
}

/// CEL rule accepting the shape of [`parse_timestamp`]'s forms, and zone-less times (those
/// get [`cel_zoneless_rule`]'s message alone).
pub fn cel_timestamp_rule() -> String {
    format!("self.matches('{CEL_ZONELESS_PATTERN}') || self.matches('{CEL_TIMESTAMP_PATTERN}')")
}

/// Message for [`cel_timestamp_rule`].
pub fn cel_timestamp_message(field: &str) -> String {
    format!("{field} must be {TIMESTAMP_FORMS}")
}

/// Why a text is not a point in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// A date and time without a zone offset.
    #[error(
        "time {input} has no time zone: write it as Postgres prints timestamptz \
         ({pg}+00) or in RFC 3339 ({rfc}Z)"
    )]
    NoZone {
        /// The text as given (trimmed).
        input: String,
        /// Its date and time with a space between them.
        pg: String,
        /// Its date and time with a `T` between them.
        rfc: String,
    },
    /// Not of an accepted shape, or a date, time or offset that does not exist.
    #[error("invalid time {input:?}: {reason}; expected {TIMESTAMP_FORMS}")]
    Invalid {
        /// The text as given (trimmed).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A point in time with a zone: Postgres's `timestamptz` text output (ISO `DateStyle`:
/// `2026-12-04 14:45:02.954757+00`, offsets `+00`, `-08`, `+05:30`, `+00:53:28`), the
/// same with a `T`, `+0530` or `Z`, and RFC 3339 (`2026-12-04T14:45:02.5+05:30`).
/// Fractions of 1 to 9 digits.
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, TimestampError> {
    let input = s.trim();
    let invalid = |reason: &str| TimestampError::Invalid {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let mut p = Cursor {
        rest: input.as_bytes(),
    };
    let year = p
        .digits(4)
        .ok_or_else(|| invalid("it does not start with a date YYYY-MM-DD"))?;
    let month = p.expect(b'-').and_then(|_| p.digits(2));
    let day = month.and_then(|_| p.expect(b'-')).and_then(|_| p.digits(2));
    let (Some(month), Some(day)) = (month, day) else {
        return Err(invalid("it does not start with a date YYYY-MM-DD"));
    };
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)
        .ok_or_else(|| invalid(&format!("there is no day {year:04}-{month:02}-{day:02}")))?;
    let date_end = input.len() - p.rest.len();
    if !matches!(p.rest.first(), Some(b'T' | b't' | b' ')) {
        return Err(invalid(
            "the date needs a time of day after it, like 14:45:02, separated by a space or T",
        ));
    }
    p.rest = &p.rest[1..];
    let time_start = input.len() - p.rest.len();
    let hms = p
        .digits(2)
        .and_then(|h| p.expect(b':').map(|_| h))
        .and_then(|h| p.digits(2).map(|m| (h, m)))
        .and_then(|hm| p.expect(b':').map(|_| hm))
        .and_then(|(h, m)| p.digits(2).map(|s| (h, m, s)));
    let Some((hour, minute, second)) = hms else {
        return Err(invalid("the time of day must be HH:MM:SS, like 14:45:02"));
    };
    let mut nanos = 0;
    if p.rest.first() == Some(&b'.') {
        p.rest = &p.rest[1..];
        let n = p.rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return Err(invalid(
                "a fraction of a second needs 1 to 9 digits after the point",
            ));
        }
        let frac = std::str::from_utf8(&p.rest[..n]).unwrap_or("0");
        nanos = format!("{frac:0<9}").parse().unwrap_or(0);
        p.rest = &p.rest[n..];
    }
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos).ok_or_else(|| {
        invalid(&format!(
            "there is no time of day {hour:02}:{minute:02}:{second:02}"
        ))
    })?;
    let time_end = input.len() - p.rest.len();
    let offset_secs = match p.rest {
        [] => {
            return Err(TimestampError::NoZone {
                input: input.to_string(),
                pg: format!("{} {}", &input[..date_end], &input[time_start..time_end]),
                rfc: format!("{}T{}", &input[..date_end], &input[time_start..time_end]),
            })
        }
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), zone @ ..] => {
            let sign = if *sign == b'-' { -1 } else { 1 };
            let mut z = Cursor { rest: zone };
            let bad_zone =
                || invalid("the zone must be Z or an offset like +00, -08, +05:30 or +0530");
            let h = z.digits(2).ok_or_else(bad_zone)?;
            let (m, s) = match z.rest {
                [] => (0, 0),
                [b':', ..] => {
                    z.rest = &z.rest[1..];
                    let m = z.digits(2).ok_or_else(bad_zone)?;
                    let s = match z.rest {
                        [] => 0,
                        [b':', ..] => {
                            z.rest = &z.rest[1..];
                            z.digits(2).ok_or_else(bad_zone)?
                        }
                        _ => return Err(bad_zone()),
                    };
                    (m, s)
                }
                _ => (z.digits(2).ok_or_else(bad_zone)?, 0),
            };
            if !z.rest.is_empty() {
                return Err(bad_zone());
            }
            if m > 59 || s > 59 {
                return Err(invalid(&format!(
                    "zone offset {} has more than 59 minutes or seconds",
                    &input[time_end..]
                )));
            }
            sign * (h * 3600 + m * 60 + s) as i32
        }
        _ => return Err(invalid(
            "the zone must be Z or an offset like +00, -08, +05:30 or +0530 right after the time",
        )),
    };
    let offset = FixedOffset::east_opt(offset_secs).ok_or_else(|| {
        invalid(&format!(
            "zone offset {} is not less than 24 hours",
            &input[time_end..]
        ))
    })?;
    offset
        .from_local_datetime(&date.and_time(time))
        .single()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| invalid("the time is out of range"))
}

/// A point in time as [`parse_timestamp`] takes it, or relative to `now`: `-` and a
/// duration (`-90s`, `-10m`, `-1h30m`, `-2days`) means that long before `now`.
pub fn parse_time_or_ago(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, TimestampError> {
    let input = s.trim();
    let Some(ago) = input.strip_prefix('-') else {
        return parse_timestamp(input);
    };
    let invalid = |reason: String| TimestampError::Invalid {
        input: input.to_string(),
        reason,
    };
    let d = humantime::parse_duration(ago)
        .map_err(|e| invalid(format!("not a relative time like -1h, -10m or -90s ({e})")))?;
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| invalid("the relative time is too far back".to_string()))
}

/// Reads fixed-width fields off the front of the text.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl Cursor<'_> {
    /// Exactly `n` ASCII digits.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let d = self.rest.get(..n)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.rest = &self.rest[n..];
        Some(d.iter().fold(0, |v, b| v * 10 + u32::from(b - b'0')))
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        let (first, rest) = self.rest.split_first()?;
        (*first == b).then(|| self.rest = rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, nanos: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
            + chrono::Duration::nanoseconds(nanos.into())
    }

    #[test]
    fn postgres_timestamptz_output() {
        // What psql prints for `select now()` with the default DateStyle (ISO, MDY).
        assert_eq!(
            parse_timestamp("2026-12-04 14:45:02.954757+00"),
            Ok(utc(2026, 12, 4, 14, 45, 2, 954_757_000))
        );
        assert_eq!(
            parse_timestamp("2026-12-04 14:45:02+00"),
            Ok(utc(2026, 12, 4, 14, 45, 2, 0))
        );
        assert_eq!(
            parse_timestamp("2026-12-04 06:45:02.5-08"),
            Ok(utc(2026, 12, 4, 14, 45, 2, 500_000_000))
        );
        assert_eq!(
            parse_timestamp("2026-12-04 20:15:02.1+05:30"),
            Ok(utc(2026, 12, 4, 14, 45, 2, 100_000_000))
        );
        // Postgres prints seconds of an offset for zones' local mean time before 1900.
        assert_eq!(
            parse_timestamp("1850-01-01 00:53:28+00:53:28"),
            Ok(utc(1850, 1, 1, 0, 0, 0, 0))
        );
        assert_eq!(
            parse_timestamp("2026-12-04 20:15:02+0530"),
            Ok(utc(2026, 12, 4, 14, 45, 2, 0))
        );
        // Pasted with the spaces of a terminal around it.
        assert_eq!(
            parse_timestamp("  2026-12-04 14:45:02.954757+00\n"),
            Ok(utc(2026, 12, 4, 14, 45, 2, 954_757_000))
        );
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            parse_timestamp("2026-12-04T14:45:02Z"),
            Ok(utc(2026, 12, 4, 14, 45, 2, 0))
        );
        assert_eq!(
            parse_timestamp("2026-12-04t14:45:02z"),
            Ok(utc(2026, 12, 4, 14, 45, 2, 0))
        );
        assert_eq!(
            parse_timestamp("2026-12-04T20:15:02+05:30"),
            Ok(utc(2026, 12, 4, 14, 45, 2, 0))
        );
        assert_eq!(
            parse_timestamp("2026-12-04T14:45:02.123456789+00:00"),
            Ok(utc(2026, 12, 4, 14, 45, 2, 123_456_789))
        );
        // What chrono (and so the CRDs' old date-time fields) wrote.
        let t = utc(2026, 1, 2, 3, 4, 5, 6_000);
        assert_eq!(parse_timestamp(&t.to_rfc3339()), Ok(t));
        assert_eq!(
            parse_timestamp(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            Ok(utc(2026, 1, 2, 3, 4, 5, 0))
        );
    }

    #[test]
    fn a_time_without_zone_is_refused_showing_both_forms() {
        let err = parse_timestamp("2026-12-04 14:45:02").unwrap_err();
        assert_eq!(
            err.to_string(),
            "time 2026-12-04 14:45:02 has no time zone: write it as Postgres prints \
             timestamptz (2026-12-04 14:45:02+00) or in RFC 3339 (2026-12-04T14:45:02Z)"
        );
        let err = parse_timestamp("2026-12-04T14:45:02.954757").unwrap_err();
        assert_eq!(
            err.to_string(),
            "time 2026-12-04T14:45:02.954757 has no time zone: write it as Postgres prints \
             timestamptz (2026-12-04 14:45:02.954757+00) or in RFC 3339 \
             (2026-12-04T14:45:02.954757Z)"
        );
    }

    #[test]
    fn garbage_and_impossible_times_say_what_is_accepted() {
        for (bad, why) in [
            ("", "YYYY-MM-DD"),
            ("yesterday", "YYYY-MM-DD"),
            ("26-12-04 14:45:02+00", "YYYY-MM-DD"),
            ("2026-12-04", "time of day"),
            ("2026-12-04 14:45+00", "HH:MM:SS"),
            ("2026-02-30 14:45:02+00", "no day 2026-02-30"),
            ("2026-13-01 14:45:02+00", "no day 2026-13-01"),
            ("2026-12-04 24:00:00+00", "no time of day 24:00:00"),
            ("2026-12-04 14:60:02+00", "no time of day 14:60:02"),
            ("2026-12-04 14:45:60+00", "no time of day 14:45:60"),
            ("2026-12-04 14:45:02.+00", "1 to 9 digits"),
            ("2026-12-04 14:45:02.1234567890+00", "1 to 9 digits"),
            ("2026-12-04 14:45:02 UTC", "zone must be"),
            ("2026-12-04 14:45:02 +00", "zone must be"),
            ("2026-12-04 14:45:02Europe/Berlin", "zone must be"),
            ("2026-12-04 14:45:02+5", "zone must be"),
            ("2026-12-04 14:45:02+05:3", "zone must be"),
            ("2026-12-04 14:45:02+05:30x", "zone must be"),
            ("2026-12-04 14:45:02+00 BC", "zone must be"),
            ("2026-12-04 14:45:02+05:75", "more than 59"),
            ("2026-12-04 14:45:02+24", "less than 24 hours"),
            ("infinity", "YYYY-MM-DD"),
            ("２０２６-12-04 14:45:02+00", "YYYY-MM-DD"),
        ] {
            let err = parse_timestamp(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(
                err.contains("2026-12-04 14:45:02.954757+00") && err.contains("RFC 3339"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn relative_times_count_back_from_now() {
        let now = utc(2026, 3, 1, 12, 0, 0, 0);
        let at = |s| parse_time_or_ago(s, now);
        assert_eq!(at("-1h"), Ok(utc(2026, 3, 1, 11, 0, 0, 0)));
        assert_eq!(at("-10m"), Ok(utc(2026, 3, 1, 11, 50, 0, 0)));
        assert_eq!(at("-90s"), Ok(utc(2026, 3, 1, 11, 58, 30, 0)));
        assert_eq!(at("-1h30m"), Ok(utc(2026, 3, 1, 10, 30, 0, 0)));
        assert_eq!(
            at("2026-12-04 14:45:02.954757+00"),
            Ok(utc(2026, 12, 4, 14, 45, 2, 954_757_000))
        );
        assert!(at("-soon").unwrap_err().to_string().contains("-10m"));
        assert!(at("-").unwrap_err().to_string().contains("relative time"));
        assert!(at("-300000years")
            .unwrap_err()
            .to_string()
            .contains("too far back"));
    }

    #[test]
    fn cel_rules_use_the_patterns() {
        assert_eq!(
            cel_zoneless_rule(),
            format!("!self.matches('{CEL_ZONELESS_PATTERN}')")
        );
        assert!(cel_timestamp_rule().contains(CEL_TIMESTAMP_PATTERN));
        // Single quotes would end the CEL string literals.
        assert!(!CEL_ZONELESS_PATTERN.contains('\'') && !CEL_TIMESTAMP_PATTERN.contains('\''));
        assert!(cel_zoneless_message("spec.at.time").starts_with("'spec.at.time: time ' + self"));
    }
}
