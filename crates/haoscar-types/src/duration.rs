//! Human-readable durations as written in configuration files (`"250ms"`,
//! `"1.5s"`, `"2m"`, `"1h30m"`) and their canonical text form.

use std::fmt;
use std::time::Duration;

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (examples: \"250ms\", \"1.5s\", \"2m\", \"1h30m\")")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

const UNITS: &[(&str, f64)] = &[
    ("ms", 1e-3),
    ("us", 1e-6),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
    ("d", 86400.0),
];

/// Parses a duration made of one or more `<number><unit>` parts, units
/// `us`, `ms`, `s`, `m`, `h`, `d`. A bare `0` is accepted.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("a unit is missing after the number"))?;
        if num_len == 0 {
            return Err(err("expected a number"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| err("malformed number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(|| err("unknown unit (use us, ms, s, m, h or d)"))?;
        total += value * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 10.0 * 365.0 * 86400.0 {
        return Err(err("too large"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration in the shortest exact form `parse_duration` reads back.
pub fn format_duration(d: Duration) -> String {
    let micros = d.as_micros();
    if micros == 0 {
        return "0s".into();
    }
    for (unit, per) in [
        ("d", 86_400_000_000u128),
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
    ] {
        if micros.is_multiple_of(per) {
            return format!("{}{unit}", micros / per);
        }
    }
    format!("{micros}us")
}

/// A duration that prints in configuration syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

/// Serde adapter: `#[serde(with = "haoscar_types::duration::serde_text")]`.
pub mod serde_text {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter for `Option<Duration>` (serialising `Some` only; pair it
/// with `skip_serializing_if = "Option::is_none"`).
pub mod serde_opt {
    use super::format_duration;
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_table() {
        let cases = [
            ("0", 0),
            ("250ms", 250_000),
            ("1.5s", 1_500_000),
            ("2m", 120_000_000),
            ("1h30m", 5_400_000_000),
            ("100us", 100),
            (" 3s ", 3_000_000),
            ("1d", 86_400_000_000),
        ];
        for (text, micros) in cases {
            assert_eq!(
                parse_duration(text).map(|d| d.as_micros()),
                Ok(micros),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_table() {
        for text in [
            "",
            "5",
            "ms",
            "5 parsecs",
            "1..2s",
            "-1s",
            "s5",
            "99999999d",
        ] {
            assert!(parse_duration(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn format_round_trips() {
        for micros in [
            1u64,
            999,
            1000,
            1500,
            250_000,
            1_000_000,
            90_000_000,
            3_600_000_000,
        ] {
            let d = Duration::from_micros(micros);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }
}
