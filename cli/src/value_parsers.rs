//! Parsers for option values: `--at`, `--suspend-after`, `--xfs-image SIZE`. Each error
//! says what was wrong and what is accepted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ramify_api::{At, TimestampError};
use ramify_lifecycle::HistoryPoint;

const AT_FORMS: &str = "expected latest, an LSN like 0/16B3748, a time with a zone as \
                        psql prints it (2026-12-04 14:45:02.954757+00) or in RFC 3339 \
                        (2026-12-04T14:45:02Z), a relative time like -1h, -10m or -90s, \
                        or snapshot:NAME";

/// `--at`: a fork point of the parent's history, relative times counted from now.
pub fn parse_at(s: &str) -> Result<At, String> {
    parse_at_from(s, Utc::now())
}

/// `--at` with relative times counted from `now`.
pub fn parse_at_from(s: &str, now: DateTime<Utc>) -> Result<At, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("empty fork point; {AT_FORMS}"));
    }
    if s.eq_ignore_ascii_case("latest") {
        return Ok(At::Latest);
    }
    if let Some(name) = s.strip_prefix("snapshot:") {
        if name.is_empty() {
            return Err(format!("snapshot:NAME needs a name; {AT_FORMS}"));
        }
        return Ok(At::Snapshot(name.to_string()));
    }
    if s.contains('/') {
        return s.parse().map(At::Lsn).map_err(|e| e.to_string());
    }
    let relative = s.starts_with('-');
    if relative || (s.as_bytes().first().is_some_and(u8::is_ascii_digit) && s.contains('-')) {
        return ramify_api::parse_time_or_ago(s, now)
            .map(At::Time)
            .map_err(|e| match e {
                TimestampError::Invalid { reason, .. } => {
                    format!("invalid time {s:?}: {reason}; {AT_FORMS}")
                }
                no_zone @ TimestampError::NoZone { .. } => no_zone.to_string(),
            });
    }
    Err(format!("invalid fork point {s:?}; {AT_FORMS}"))
}

/// `--at` of commands that also take a branch's checkpoints: `checkpoint:NAME` or any
/// form of [`parse_at`].
pub fn parse_point(s: &str) -> Result<HistoryPoint, String> {
    match s.trim().strip_prefix("checkpoint:") {
        Some("") => Err(format!(
            "checkpoint:NAME needs a name; {AT_FORMS}, or checkpoint:NAME"
        )),
        Some(name) => Ok(HistoryPoint::Checkpoint(name.to_string())),
        None => parse_at(s)
            .map(HistoryPoint::At)
            .map_err(|e| format!("{e}, or checkpoint:NAME")),
    }
}

/// `NAME` or `NAME@WHEN` (WHEN as [`parse_point`] takes it) for `ramify diff`.
pub fn parse_branch_ref(s: &str) -> Result<crate::args::BranchRef, String> {
    let (name, at) = match s.split_once('@') {
        Some((name, point)) => (name, Some(parse_point(point)?)),
        None => (s, None),
    };
    if name.is_empty() {
        return Err(format!(
            "{s:?} names no branch (expected BRANCH or BRANCH@WHEN)"
        ));
    }
    Ok(crate::args::BranchRef {
        name: name.to_string(),
        at,
        label: s.to_string(),
    })
}

/// A positive duration in whole seconds: `90s`, `30m`, `2h`, `7d`, or a bare number of
/// seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let secs = match s.parse::<u64>() {
        Ok(n) => n,
        Err(_) => {
            let d = humantime::parse_duration(s).map_err(|e| {
                format!("invalid duration {s:?}: {e} (expected 90s, 30m, 2h or 7d)")
            })?;
            whole_seconds(s, d)?
        }
    };
    if secs == 0 {
        return Err(format!("invalid duration {s:?}: must be at least 1s"));
    }
    Ok(secs)
}

/// A time with a zone, as psql prints a `timestamptz` or in RFC 3339.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    ramify_api::parse_timestamp(s).map_err(|e| e.to_string())
}

/// `--suspend-after`: idle seconds before suspend; `0`, `never` and `off` mean never.
/// A bare number is seconds.
pub fn parse_suspend_after(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s == "0" || s.eq_ignore_ascii_case("never") || s.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    let d = humantime::parse_duration(s).map_err(|e| {
        format!(
            "invalid duration {s:?}: {e} (expected 5m, 90s, 1h30m, or 0 / never to never suspend)"
        )
    })?;
    whole_seconds(s, d)
}

fn whole_seconds(s: &str, d: Duration) -> Result<u64, String> {
    if d.subsec_nanos() != 0 {
        return Err(format!(
            "invalid duration {s:?}: whole seconds only (like 90s or 5m)"
        ));
    }
    Ok(d.as_secs())
}

/// `--xfs-image SIZE`: bytes, with an optional binary suffix K, M, G or T (`8G`, `512MiB`).
pub fn parse_image_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let bad = || format!("invalid size {s:?}: expected a number with K, M, G or T, like 8G");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_uppercase();
    let shift = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(1 << shift).ok_or_else(bad)?;
    // mkfs.xfs needs about 300 MiB for its log and metadata.
    const MIN: u64 = 512 << 20;
    if bytes < MIN {
        return Err(format!(
            "size {s:?} is too small for an XFS filesystem: use at least 512M"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use ramify_api::Lsn;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn at_latest_lsn_and_snapshot() {
        assert_eq!(parse_at_from("latest", now()), Ok(At::Latest));
        assert_eq!(
            parse_at_from("0/16B3748", now()),
            Ok(At::Lsn(Lsn(0x16B3748)))
        );
        assert_eq!(parse_at_from("1/0", now()), Ok(At::Lsn(Lsn(1 << 32))));
        assert_eq!(
            parse_at_from("snapshot:before-migration", now()),
            Ok(At::Snapshot("before-migration".into()))
        );
    }

    #[test]
    fn at_rfc3339_times() {
        assert_eq!(
            parse_at_from("2026-01-02T03:04:05Z", now()),
            Ok(At::Time(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()))
        );
        assert_eq!(
            parse_at_from("2026-01-02T05:04:05+02:00", now()),
            Ok(At::Time(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()))
        );
        let err = parse_at_from("2026-01-02 03:04", now()).unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn at_times_as_psql_prints_them() {
        // `select now()` in psql, pasted as is.
        let t = Utc.with_ymd_and_hms(2026, 12, 4, 14, 45, 2).unwrap()
            + chrono::Duration::microseconds(954_757);
        assert_eq!(
            parse_at_from("2026-12-04 14:45:02.954757+00", now()),
            Ok(At::Time(t))
        );
        assert_eq!(
            parse_point("2026-12-04 06:45:02.954757-08"),
            Ok(HistoryPoint::At(At::Time(t)))
        );
        assert_eq!(
            parse_at_from("2026-12-04 20:15:02+05:30", now()),
            Ok(At::Time(
                Utc.with_ymd_and_hms(2026, 12, 4, 14, 45, 2).unwrap()
            ))
        );
        let r = parse_branch_ref("main@2026-12-04 14:45:02.954757+00").unwrap();
        assert_eq!(r.at, Some(HistoryPoint::At(At::Time(t))));
        assert_eq!(
            parse_time("2026-12-04 14:45:02+00"),
            Ok(Utc.with_ymd_and_hms(2026, 12, 4, 14, 45, 2).unwrap())
        );
    }

    #[test]
    fn at_time_without_zone_shows_both_forms() {
        let expected = "time 2026-12-04 14:45:02 has no time zone: write it as Postgres \
                        prints timestamptz (2026-12-04 14:45:02+00) or in RFC 3339 \
                        (2026-12-04T14:45:02Z)";
        assert_eq!(
            parse_at_from("2026-12-04 14:45:02", now()).unwrap_err(),
            expected
        );
        assert_eq!(parse_time("2026-12-04 14:45:02").unwrap_err(), expected);
        let err = parse_point("2026-02-30 14:45:02+00").unwrap_err();
        assert!(err.contains("no day 2026-02-30"), "{err}");
    }

    #[test]
    fn at_relative_times_count_back_from_now() {
        let at = |s| parse_at_from(s, now()).unwrap();
        assert_eq!(
            at("-1h"),
            At::Time(Utc.with_ymd_and_hms(2026, 3, 1, 11, 0, 0).unwrap())
        );
        assert_eq!(
            at("-10m"),
            At::Time(Utc.with_ymd_and_hms(2026, 3, 1, 11, 50, 0).unwrap())
        );
        assert_eq!(
            at("-90s"),
            At::Time(Utc.with_ymd_and_hms(2026, 3, 1, 11, 58, 30).unwrap())
        );
        assert_eq!(
            at("-1h30m"),
            At::Time(Utc.with_ymd_and_hms(2026, 3, 1, 10, 30, 0).unwrap())
        );
    }

    #[test]
    fn at_garbage_names_the_accepted_forms() {
        for bad in ["", "yesterday", "-soon", "0/XYZ", "snapshot:", "1h"] {
            let err = parse_at_from(bad, now()).unwrap_err();
            assert!(
                err.contains("0/16B3748") || err.contains("hexadecimal"),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(
            parse_at_from("yesterday", now()).unwrap_err(),
            format!("invalid fork point \"yesterday\"; {AT_FORMS}")
        );
    }

    #[test]
    fn suspend_after_forms() {
        assert_eq!(parse_suspend_after("5m"), Ok(300));
        assert_eq!(parse_suspend_after("90s"), Ok(90));
        assert_eq!(parse_suspend_after("1h30m"), Ok(5400));
        assert_eq!(parse_suspend_after("0"), Ok(0));
        assert_eq!(parse_suspend_after("never"), Ok(0));
        assert_eq!(parse_suspend_after("120"), Ok(120));
        assert!(parse_suspend_after("1500ms")
            .unwrap_err()
            .contains("whole seconds"));
        assert!(parse_suspend_after("-5m")
            .unwrap_err()
            .contains("invalid duration"));
        assert!(parse_suspend_after("soon")
            .unwrap_err()
            .contains("0 / never"));
    }

    #[test]
    fn image_sizes() {
        assert_eq!(parse_image_size("8G"), Ok(8 << 30));
        assert_eq!(parse_image_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_image_size("512M"), Ok(512 << 20));
        assert_eq!(parse_image_size("1t"), Ok(1 << 40));
        assert!(parse_image_size("100M")
            .unwrap_err()
            .contains("at least 512M"));
        assert!(parse_image_size("8X").unwrap_err().contains("like 8G"));
        assert!(parse_image_size("G").unwrap_err().contains("like 8G"));
        assert!(parse_image_size("99999999999T")
            .unwrap_err()
            .contains("like 8G"));
    }

    #[test]
    fn points_include_checkpoints() {
        assert_eq!(
            parse_point("checkpoint:step-3"),
            Ok(HistoryPoint::Checkpoint("step-3".into()))
        );
        assert_eq!(parse_point("latest"), Ok(HistoryPoint::At(At::Latest)));
        assert!(parse_point("checkpoint:")
            .unwrap_err()
            .contains("needs a name"));
        assert!(parse_point("yesterday")
            .unwrap_err()
            .contains("checkpoint:NAME"));
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("3s"), Ok(3));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("7d"), Ok(7 * 86_400));
        assert_eq!(parse_duration("45"), Ok(45));
        assert!(parse_duration("0").unwrap_err().contains("at least 1s"));
        assert!(parse_duration("-5m")
            .unwrap_err()
            .contains("invalid duration"));
        assert!(parse_duration("1500ms")
            .unwrap_err()
            .contains("whole seconds"));
        assert_eq!(
            parse_time("2026-01-02T05:04:05+02:00"),
            Ok(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap())
        );
        assert!(parse_time("tomorrow").unwrap_err().contains("RFC 3339"));
    }
}
