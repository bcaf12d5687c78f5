//! Human durations as flags and environment variables write them: `24h`, `90m`, `30s`,
//! `500ms`, `1h30m`, `7d`. One parser for the command line and the library alike, so neither
//! imports the other for it.

use std::time::Duration;

/// Why a duration did not parse; carries the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {value:?}: {reason}")]
pub struct DurationError {
    pub value: String,
    pub reason: &'static str,
}

const SYNTAX: &str =
    "write a number followed by a unit (d, h, m, s or ms), like 24h, 90m, 30s, 500ms or 1h30m";

/// Parses a duration: one or more `<number><unit>` pairs, units `d`, `h`, `m`, `s`, `ms`.
/// Zero is refused (every duration outrider takes is a timeout or a lifetime).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let bad = |reason| DurationError {
        value: s.to_string(),
        reason,
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad(SYNTAX));
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad(SYNTAX));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit_ms = match &rest[..unit_len] {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            _ => return Err(bad(SYNTAX)),
        };
        rest = &rest[unit_len..];
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| bad("the duration is too large"))?;
    }
    if total_ms == 0 {
        return Err(bad("the duration must be longer than zero"));
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("90m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("87600h").unwrap(), Duration::from_secs(315_360_000));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse("2d").unwrap(), Duration::from_secs(172_800));
        for bad in [
            "",
            "h",
            "24",
            "24x",
            "1.5h",
            "-1h",
            "0s",
            "h24",
            "99999999999999999999h",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid duration"), "{bad}: {e}");
        }
    }
}
