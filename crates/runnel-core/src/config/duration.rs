//! The one duration syntax: a whole number and a unit — `250ms`, `30s`, `5m`, `2h`, `7d`.

use std::time::Duration;

use super::error::echo;

/// The units, longest first, with their length in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Why a text is not a duration. Every message shows the syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Nothing was given.
    #[error("it is empty; write a whole number and a unit: 250ms, 30s, 5m, 2h or 7d")]
    Empty,
    /// A bare number: its unit would be a guess.
    #[error(
        "{number} has no unit; write a whole number and a unit, e.g. {number}s or {number}ms \
         (units: ms, s, m, h, d)"
    )]
    MissingUnit { number: String },
    /// A number followed by something that is not a unit.
    #[error(
        "unknown unit {unit:?}; the units are ms, s, m, h and d (e.g. 250ms, 30s, 5m, 2h, 7d)"
    )]
    UnknownUnit { unit: String },
    /// Not a whole number followed by a unit (a sign, a fraction, spaces, no digits).
    #[error("write a whole number and a unit: 250ms, 30s, 5m, 2h or 7d")]
    Malformed,
    /// The number does not fit.
    #[error("it is too large; the longest duration is {}d", u64::MAX / 86_400_000)]
    Overflow,
}

/// Parses `250ms`, `30s`, `5m`, `2h` or `7d` (a whole number, then one unit, nothing
/// else). A bare number is refused: `retention=7` could mean seconds or days.
///
/// ```
/// use std::time::Duration;
/// use runnel_core::config::{parse_duration, DurationError};
///
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
/// assert!(matches!(parse_duration("30"), Err(DurationError::MissingUnit { .. })));
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(DurationError::Malformed);
    }
    if unit.is_empty() {
        return Err(DurationError::MissingUnit {
            number: echo(number),
        });
    }
    let millis_per_unit = match UNITS.iter().find(|(name, _)| *name == unit) {
        Some((_, millis)) => *millis,
        None if unit.starts_with(|c: char| c.is_ascii_alphabetic()) => {
            return Err(DurationError::UnknownUnit { unit: echo(unit) })
        }
        None => return Err(DurationError::Malformed),
    };
    // All digits, so a parse failure can only be a number too large for u64.
    let n: u64 = number.parse().map_err(|_| DurationError::Overflow)?;
    let millis = n
        .checked_mul(millis_per_unit)
        .ok_or(DurationError::Overflow)?;
    Ok(Duration::from_millis(millis))
}

/// Writes `d` in the duration syntax, in the largest unit that represents it exactly
/// (`7d`, `90m`, `250ms`; sub-millisecond parts are dropped). [`parse_duration`] reads
/// the result back.
///
/// ```
/// use std::time::Duration;
/// use runnel_core::config::format_duration;
///
/// assert_eq!(format_duration(Duration::from_secs(604_800)), "7d");
/// assert_eq!(format_duration(Duration::from_millis(1_500)), "1500ms");
/// assert_eq!(format_duration(Duration::ZERO), "0s");
/// ```
pub fn format_duration(d: Duration) -> String {
    let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if millis == 0 {
        return "0s".to_string();
    }
    for (unit, per) in UNITS {
        if millis % per == 0 {
            return format!("{}{unit}", millis / per);
        }
    }
    // Unreachable: every whole number of milliseconds is a multiple of 1 ms.
    format!("{millis}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("007s"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn bare_numbers_are_refused_with_the_syntax() {
        let err = parse_duration("30").unwrap_err();
        assert_eq!(
            err,
            DurationError::MissingUnit {
                number: "30".into()
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("30s") && text.contains("ms, s, m, h, d"),
            "{text}"
        );
    }

    #[test]
    fn malformed_durations_are_refused() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        for bad in ["s", "-5s", "1.5s", " 5s", "5 s", "5s ", "+5s", "5sec"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(
            parse_duration("5w"),
            Err(DurationError::UnknownUnit { unit }) if unit == "w"
        ));
        assert!(matches!(
            parse_duration("5S"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert_eq!(parse_duration("5 s"), Err(DurationError::Malformed));
    }

    #[test]
    fn overflow_is_refused() {
        assert_eq!(
            parse_duration("99999999999999999999999s"),
            Err(DurationError::Overflow)
        );
        let huge = format!("{}d", u64::MAX / 1000);
        assert_eq!(parse_duration(&huge), Err(DurationError::Overflow));
        let largest_ms = format!("{}ms", u64::MAX);
        assert_eq!(
            parse_duration(&largest_ms),
            Ok(Duration::from_millis(u64::MAX))
        );
    }

    #[test]
    fn formatting_round_trips() {
        for text in [
            "250ms", "1500ms", "30s", "90s", "5m", "90m", "2h", "7d", "365d", "0s",
        ] {
            let d = parse_duration(text).expect("valid");
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(format_duration(Duration::from_secs(3_600)), "1h");
        assert_eq!(format_duration(Duration::from_micros(1_500)), "1ms");
    }
}
