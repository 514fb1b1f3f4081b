//! Durations as MeshConfig users write them: `"10s"`, `"500ms"`, `"1m30s"`, `"1.5h"`, the
//! Go `time.ParseDuration` form that Istio's MeshConfig and Envoy's YAML users already know.
//!
//! A bare number is refused: `timeout: 10` could mean seconds or milliseconds, and guessing
//! wrong by a factor of a thousand is worse than asking for a unit.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration, written and read as a string with units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub StdDuration);

impl Duration {
    pub const ZERO: Duration = Duration(StdDuration::ZERO);

    pub const fn from_secs(secs: u64) -> Self {
        Duration(StdDuration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Duration(StdDuration::from_millis(millis))
    }

    pub const fn get(self) -> StdDuration {
        self.0
    }

    /// `None` for zero, the value that means "off" for optional timeouts.
    pub fn non_zero(self) -> Option<StdDuration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl From<StdDuration> for Duration {
    fn from(d: StdDuration) -> Self {
        Duration(d)
    }
}

/// Units in the order Go lists them; `ms` before `m` so the longer suffix wins.
const UNITS: &[(&str, f64)] = &[
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
];

/// The longest duration text read: far beyond any honest one (`1h2m3s4ms5us6ns` is 15), and
/// a bound the API server needs to cost the CRD's CEL rules on the field.
pub(crate) const MAX_TEXT_LEN: usize = 64;

/// Longer than any timeout a sidecar could mean; also keeps the float arithmetic exact enough.
const MAX_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// Parses `"10s"`, `"1m30s"`, `"0.5s"`, `"0"`. Errors say what was expected.
///
/// Exactly the CRD's pattern (`openapi::DURATION_PATTERN`): no sign and no spaces, which
/// Kubernetes would refuse, so that `mesh config validate` never passes what `kubectl apply`
/// then rejects.
pub fn parse(text: &str) -> Result<Duration, String> {
    let expected =
        || format!("{text:?} is not a duration (expected e.g. \"10s\", \"500ms\", \"1m30s\")");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(expected());
    }
    if text.chars().count() > MAX_TEXT_LEN {
        return Err(format!(
            "{text:?} is not a duration (longer than {MAX_TEXT_LEN} characters)"
        ));
    }
    let mut rest = text;
    let mut secs = 0.0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(expected)?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| expected())?;
        let (unit, scale) = UNITS
            .iter()
            .filter(|(u, _)| tail.starts_with(u))
            .max_by_key(|(u, _)| u.len())
            .ok_or_else(expected)?;
        secs += value * scale;
        rest = &tail[unit.len()..];
    }
    if !secs.is_finite() || secs > MAX_SECS {
        return Err(format!("{text:?} is too long"));
    }
    Ok(Duration(StdDuration::from_secs_f64(secs)))
}

impl fmt::Display for Duration {
    /// The shortest exact form in one unit: `10s`, `500ms`, `1m`, `2h`, `1500ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for (unit, per) in [
            ("h", 3_600_000_000_000u128),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ] {
            if nanos.is_multiple_of(per) {
                return write!(f, "{}{unit}", nanos / per);
            }
        }
        write!(f, "{nanos}ns")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations() {
        for (text, want) in [
            ("10s", StdDuration::from_secs(10)),
            ("500ms", StdDuration::from_millis(500)),
            ("1m", StdDuration::from_secs(60)),
            ("1m30s", StdDuration::from_secs(90)),
            ("1.5h", StdDuration::from_secs(5400)),
            ("0", StdDuration::ZERO),
            ("0s", StdDuration::ZERO),
            ("2h", StdDuration::from_secs(7200)),
            (".5s", StdDuration::from_millis(500)),
            ("1.s", StdDuration::from_secs(1)),
            ("250us", StdDuration::from_micros(250)),
        ] {
            assert_eq!(parse(text), Ok(Duration(want)), "{text}");
        }
    }

    #[test]
    fn bad_durations() {
        for bad in [
            "",
            "10",
            "-1s",
            "1x",
            "s",
            "1.2.3s",
            "10 s",
            "1e3s",
            "100000000h",
            " 2h ",
            "+1s",
            ".s",
            "00",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["0s", "10s", "500ms", "1m", "90s", "2h", "1500ms", "250us"] {
            let d = parse(text).unwrap();
            assert_eq!(d.to_string(), text);
            assert_eq!(parse(&d.to_string()), Ok(d));
        }
    }
}
