//! Durations on the command line: Go's `time.Duration` notation as Docker prints it
//! (`2160h0m0s`, `1h30m`, `300ms`) plus days (`90d`), which Go lacks but certificate lifetimes
//! want.

use std::time::Duration;

/// Why a duration did not parse. The message names the accepted form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    /// Nothing was given.
    #[error("empty duration: give a number and a unit, e.g. 90s, 5m, 12h, 90d or 2160h0m0s")]
    Empty,
    /// A number has no unit after it.
    #[error("missing unit in duration {0:?}: use ms, s, m, h or d (e.g. 90s)")]
    MissingUnit(String),
    /// A unit is not one we know.
    #[error("unknown unit {unit:?} in duration {text:?}: use ms, s, m, h or d")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole duration.
        text: String,
    },
    /// Something that is not a number where a number belongs.
    #[error(
        "invalid duration {0:?}: expected numbers with units, e.g. 90s, 5m, 12h, 90d or 2160h0m0s"
    )]
    Invalid(String),
    /// The value does not fit.
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Parses `90s`, `5m`, `12h`, `90d`, `300ms`, `1.5h`, `2160h0m0s`; a bare `0` is zero.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid = || DurationError::Invalid(text.to_string());
    let too_large = || DurationError::TooLarge(text.to_string());
    let mut total_nanos: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(num_len);
        if number.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "" => return Err(DurationError::MissingUnit(text.to_string())),
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "d" => 86_400 * 1_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_string(),
                    text: text.to_string(),
                });
            }
        };
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 {
            return Err(invalid());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let mut part = whole.checked_mul(unit_nanos).ok_or_else(too_large)?;
        if !frac.is_empty() {
            let digits: u128 = frac.parse().map_err(|_| invalid())?;
            let scale = 10u128.pow(u32::try_from(frac.len()).map_err(|_| invalid())?);
            part = part
                .checked_add(digits * unit_nanos / scale)
                .ok_or_else(too_large)?;
        }
        total_nanos = total_nanos.checked_add(part).ok_or_else(too_large)?;
        rest = next;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| too_large())?;
    // The remainder is below 10^9, so it fits a u32.
    let nanos = u32::try_from(total_nanos % 1_000_000_000).map_err(|_| too_large())?;
    Ok(Duration::new(secs, nanos))
}

/// Formats like Go's `time.Duration` (`2160h0m0s`, `1m30s`, `300ms`), as Docker shows them.
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_secs(1) {
        let ms = d.as_millis();
        if Duration::from_millis(u64::try_from(ms).unwrap_or(0)) == d {
            return format!("{ms}ms");
        }
        return format!("{}s", trim_fraction(d.as_secs_f64()));
    }
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let secs = if d.subsec_nanos() == 0 {
        s.to_string()
    } else {
        trim_fraction(s as f64 + f64::from(d.subsec_nanos()) / 1e9)
    };
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

fn trim_fraction(x: f64) -> String {
    let s = format!("{x:.9}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn parses_single_units() {
        assert_eq!(parse("90s"), Ok(secs(90)));
        assert_eq!(parse("5m"), Ok(secs(300)));
        assert_eq!(parse("12h"), Ok(secs(12 * 3600)));
        assert_eq!(parse("90d"), Ok(secs(90 * 86_400)));
        assert_eq!(parse("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn parses_docker_style() {
        assert_eq!(parse("2160h0m0s"), Ok(secs(90 * 86_400)));
        assert_eq!(parse("1h30m"), Ok(secs(5400)));
        assert_eq!(parse("1m30.5s"), Ok(Duration::from_millis(90_500)));
        assert_eq!(parse("1.5h"), Ok(secs(5400)));
        assert_eq!(parse(" 5s "), Ok(secs(5)));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("90"), Err(DurationError::MissingUnit("90".into())));
        assert!(matches!(
            parse("5y"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(parse("s"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse("-5s"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse("1..5s"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse("."), Err(DurationError::MissingUnit(_))));
        assert!(matches!(parse(".s"), Err(DurationError::Invalid(_))));
        assert!(matches!(
            parse("99999999999999999999999999999999999999999d"),
            Err(DurationError::TooLarge(_))
        ));
        assert!(matches!(
            parse("1h 5m"),
            Err(DurationError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(secs(90 * 86_400)), "2160h0m0s");
        assert_eq!(format(secs(90)), "1m30s");
        assert_eq!(format(secs(5)), "5s");
        assert_eq!(format(Duration::from_millis(300)), "300ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::ZERO), "0s");
    }

    #[test]
    fn format_round_trips() {
        for d in [
            secs(1),
            secs(61),
            secs(3601),
            Duration::from_millis(2250),
            secs(7_776_000),
        ] {
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
