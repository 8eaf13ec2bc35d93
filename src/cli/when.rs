//! Times as `--since` and `--until` take them (`audit ls`, `events`), as Docker does: Unix
//! seconds (`1764928800`, `1764928800.5`), a duration ago (`10m`, `1h30m`), an RFC 3339 time,
//! or a date (its midnight, UTC).

use anyhow::{Context as _, bail};
use time::OffsetDateTime;

/// The time `text` names, durations counted back from `now`.
pub(super) fn resolve(text: &str, now: OffsetDateTime) -> anyhow::Result<OffsetDateTime> {
    let text = text.trim();
    if let Some(t) = unix(text)? {
        return Ok(t);
    }
    if let Ok(d) = crate::spec::duration::parse(text) {
        let d = time::Duration::try_from(d).context("the duration is too large")?;
        return now.checked_sub(d).context("the duration is too large");
    }
    if let Some(t) = crate::util::parse_rfc3339(text) {
        return Ok(t.to_offset(time::UtcOffset::UTC));
    }
    let date = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .with_context(|| {
        format!(
            "{} is not a duration (1h, 30m), Unix seconds, an RFC 3339 time or a date (2026-11-01)",
            crate::util::quote(text)
        )
    })?;
    Ok(date.midnight().assume_utc())
}

/// `SECONDS[.FRACTION]`, as Docker reads a bare number; `None` for anything else.
fn unix(text: &str) -> anyhow::Result<Option<OffsetDateTime>> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || !digits(secs) || !digits(frac) {
        return Ok(None);
    }
    if frac.len() > 9 {
        bail!("{text:?}: at most 9 digits after the point (nanoseconds)");
    }
    let out_of_range = || format!("{text:?} is out of range as Unix seconds");
    let secs: i64 = secs.parse().with_context(out_of_range)?;
    let nanos: i64 = format!("{frac:0<9}").parse().with_context(out_of_range)?;
    let t = OffsetDateTime::from_unix_timestamp(secs).with_context(out_of_range)?;
    Ok(Some(t + time::Duration::nanoseconds(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> String {
        let now = crate::util::parse_rfc3339("2026-11-02T12:00:00Z").unwrap();
        let t = resolve(text, now).unwrap();
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    }

    #[test]
    fn times_are_unix_seconds_durations_ago_rfc3339_or_dates() {
        assert_eq!(at("1h"), "2026-11-02T11:00:00Z");
        assert_eq!(at("30m"), "2026-11-02T11:30:00Z");
        assert_eq!(at("1796464800"), "2026-12-05T10:00:00Z");
        assert_eq!(at("1796464800.25"), "2026-12-05T10:00:00.25Z");
        assert_eq!(at("0"), "1970-01-01T00:00:00Z");
        assert_eq!(at("2026-11-01T10:00:00+02:00"), "2026-11-01T08:00:00Z");
        assert_eq!(at("2026-11-01"), "2026-11-01T00:00:00Z");
        let now = OffsetDateTime::now_utc();
        for bad in [
            "yesterday",
            "1.2.3",
            "99999999999999999999",
            "1.1234567890",
            "-5",
        ] {
            let e = format!("{:#}", resolve(bad, now).unwrap_err());
            assert!(e.contains(bad) || e.contains("range"), "{bad}: {e}");
        }
    }
}
