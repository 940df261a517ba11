//! Times as thin-edge writes them: RFC 3339 strings or unix seconds.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};

/// A UTC instant with nanosecond precision: the `time` of every row.
///
/// Stored as nanoseconds since the unix epoch, which is what Arrow's
/// `Timestamp(Nanosecond, "UTC")` holds, so it covers the years 1677 to 2262.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a `time` value cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error(
        "{0:?} is not an RFC 3339 time: write a date, `T`, a time and an offset, e.g. \"2021-01-01T05:30:45+00:00\" or \"2021-01-01T05:30:45.123Z\""
    )]
    NotRfc3339(String),
    #[error("time {0} lies outside what Twinlake stores (1677-09-21 to 2262-04-11 UTC)")]
    OutOfRange(String),
    #[error("`time` must be an RFC 3339 string or unix seconds (a number), not {0}")]
    WrongType(&'static str),
}

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const NANOS_PER_MILLI: i64 = 1_000_000;

impl Timestamp {
    pub const fn from_unix_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    pub const fn unix_nanos(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 time. Like thin-edge, it insists on the `T` separator and an offset:
    /// `2021-01-01 05:30:45` is not accepted even though some RFC 3339 readers allow the space.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimeError> {
        let has_t_separator = matches!(text.as_bytes().get(10), Some(b'T' | b't'));
        if !has_t_separator {
            return Err(TimeError::NotRfc3339(text.to_owned()));
        }
        let parsed = DateTime::parse_from_rfc3339(text)
            .map_err(|_| TimeError::NotRfc3339(text.to_owned()))?;
        parsed
            .timestamp_nanos_opt()
            .map(Self)
            .ok_or_else(|| TimeError::OutOfRange(text.to_owned()))
    }

    /// The current time. Parsers never call this: they take the receive time as an argument.
    pub fn now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Unix seconds written as a JSON integer.
    pub fn from_unix_seconds(seconds: i64) -> Result<Self, TimeError> {
        seconds
            .checked_mul(NANOS_PER_SECOND)
            .map(Self)
            .ok_or_else(|| TimeError::OutOfRange(seconds.to_string()))
    }

    /// Unix seconds written as a JSON number with a fraction. thin-edge reads these to
    /// millisecond precision, truncating (`1702373722.123456` is `…22.123Z`); so does Twinlake,
    /// so the same message gets the same time in both.
    pub fn from_unix_seconds_f64(seconds: f64) -> Result<Self, TimeError> {
        let millis = (seconds * 1000.0).trunc();
        // i64::MAX nanoseconds, in milliseconds: anything beyond cannot be stored.
        const MAX_MILLIS: f64 = (i64::MAX / NANOS_PER_MILLI) as f64;
        if !millis.is_finite() || millis.abs() > MAX_MILLIS {
            return Err(TimeError::OutOfRange(seconds.to_string()));
        }
        Ok(Self(millis as i64 * NANOS_PER_MILLI))
    }

    /// RFC 3339 in UTC with as many fraction digits as needed (`Z` suffix).
    pub fn to_rfc3339(self) -> String {
        DateTime::<Utc>::from_timestamp_nanos(self.0).to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Reads the `time` member of a payload already parsed as JSON (events, alarms, health).
pub(crate) fn time_from_json(value: &serde_json::Value) -> Result<Timestamp, TimeError> {
    use serde_json::Value;
    match value {
        Value::String(text) => Timestamp::parse_rfc3339(text),
        Value::Number(number) => {
            if let Some(seconds) = number.as_i64() {
                Timestamp::from_unix_seconds(seconds)
            } else if let Some(seconds) = number.as_u64() {
                Err(TimeError::OutOfRange(seconds.to_string()))
            } else {
                Timestamp::from_unix_seconds_f64(number.as_f64().unwrap_or(f64::NAN))
            }
        }
        other => Err(TimeError::WrongType(crate::json::kind_of(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc(text: &str) -> String {
        Timestamp::parse_rfc3339(text).map_or_else(|e| format!("error: {e}"), |t| t.to_rfc3339())
    }

    #[test]
    fn rfc3339_needs_t_and_offset() {
        assert_eq!(rfc("2020-10-15T05:30:47+00:00"), "2020-10-15T05:30:47Z");
        assert_eq!(
            rfc("2021-04-30T17:03:14.123+02:00"),
            "2021-04-30T15:03:14.123Z"
        );
        assert_eq!(
            rfc("2026-11-21T00:08:39.180999994Z"),
            "2026-11-21T00:08:39.180999994Z"
        );
        assert!(rfc("2021-01-01 05:30:45+00:00").starts_with("error"));
        assert!(rfc("2021-01-01 05:30:45").starts_with("error"));
        assert!(rfc("2021-01-01T05:30:45").starts_with("error"));
        assert!(rfc("yesterday").starts_with("error"));
        assert!(rfc("").starts_with("error"));
    }

    #[test]
    fn rfc3339_outside_nanosecond_range_is_out_of_range() {
        let err = Timestamp::parse_rfc3339("9999-01-01T00:00:00Z").unwrap_err();
        assert!(matches!(err, TimeError::OutOfRange(_)), "{err}");
    }

    #[test]
    fn unix_float_truncates_to_milliseconds_like_thin_edge() {
        let t = Timestamp::from_unix_seconds_f64(1702373722.123456).unwrap();
        assert_eq!(t.to_rfc3339(), "2023-12-12T09:35:22.123Z");
        let t = Timestamp::from_unix_seconds_f64(1702373722.123).unwrap();
        assert_eq!(t.to_rfc3339(), "2023-12-12T09:35:22.123Z");
        let t = Timestamp::from_unix_seconds_f64(1795219644.3183434).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-21T00:07:24.318Z");
    }

    #[test]
    fn unix_seconds_out_of_range_are_errors_not_wraps() {
        assert!(Timestamp::from_unix_seconds(i64::MAX).is_err());
        assert!(Timestamp::from_unix_seconds_f64(1e30).is_err());
        assert!(Timestamp::from_unix_seconds_f64(f64::NAN).is_err());
        assert_eq!(
            Timestamp::from_unix_seconds(1701949168)
                .unwrap()
                .to_rfc3339(),
            "2023-12-07T11:39:28Z"
        );
    }
}
