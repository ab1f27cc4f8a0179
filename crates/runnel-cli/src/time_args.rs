//! Durations and times on the command line: `90s`, `15m`, `2h`, `7d`, `2w`, `500ms`, and
//! RFC 3339 timestamps.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::exit::BadInput;

/// Longest duration accepted (100 years): anything beyond is a typo.
const DURATION_MAX: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// Parses `<number><unit>` with unit `ms`, `s`, `m`, `h`, `d` or `w` (e.g. `30d`).
pub fn parse_duration(text: &str) -> Result<Duration, BadInput> {
    let text = text.trim();
    let bad = || {
        BadInput(format!(
            "{text:?} is not a duration; expected a number and a unit: 500ms, 30s, 15m, 2h, 7d, 2w"
        ))
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" | "sec" | "secs" => 1_000,
        "m" | "min" | "mins" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        "w" | "week" | "weeks" => 7 * 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    let duration = Duration::from_millis(ms);
    if duration > DURATION_MAX {
        return Err(BadInput(format!("{text:?} is longer than 100 years")));
    }
    Ok(duration)
}

/// Parses an RFC 3339 time, or a duration meaning that long before `now`.
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, BadInput> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let age = parse_duration(text).map_err(|_| {
        BadInput(format!(
            "{text:?} is neither an RFC 3339 time (2026-05-01T12:00:00Z) nor an age (30m, 2h, 7d)"
        ))
    })?;
    time_before(now, age)
}

/// `now - age`, refusing ages that leave the calendar.
pub fn time_before(now: DateTime<Utc>, age: Duration) -> Result<DateTime<Utc>, BadInput> {
    chrono::TimeDelta::from_std(age)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| BadInput(format!("{age:?} ago is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_have_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in [
            "",
            "7",
            "d",
            "-1d",
            "1.5h",
            "3 fortnights",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_are_rfc3339_or_ages() {
        let now = DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_time("2026-04-30T12:00:00+00:00", now).unwrap(),
            now - chrono::TimeDelta::days(1)
        );
        assert_eq!(
            parse_time("1d", now).unwrap(),
            now - chrono::TimeDelta::days(1)
        );
        assert!(parse_time("yesterday", now).is_err());
    }
}
