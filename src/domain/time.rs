//! Wall-clock instants with millisecond precision, shown as RFC 3339 in UTC.
//!
//! The pure core never reads the clock: callers pass `now` in, so tests choose the time.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Timestamp((now.unix_timestamp_nanos() / 1_000_000) as i64)
    }

    pub fn from_unix_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn unix_millis(self) -> i64 {
        self.0
    }

    /// RFC 3339 as its grammar has it. The `time` crate accepts any character between the
    /// date and the time (`2026-12-04x19:00:44Z`); that is refused here, so that a stored
    /// time cannot be altered into another spelling of itself (the audit chain hashes the
    /// parsed record: the chaos harness's tampering found one that went undetected).
    pub fn parse_rfc3339(text: &str) -> Result<Self, BadTime> {
        if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(BadTime("no `T` between the date and the time".into()));
        }
        let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| BadTime(e.to_string()))?;
        Ok(Timestamp(
            (parsed.unix_timestamp_nanos() / 1_000_000) as i64,
        ))
    }

    pub fn saturating_add(self, duration: Duration) -> Self {
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// How long after `earlier` this is; zero when it is not after.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    fn to_offset_date_time(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// A text that is not an RFC 3339 time.
#[derive(Debug, thiserror::Error)]
#[error("not an RFC 3339 time: {0}")]
pub struct BadTime(String);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.to_offset_date_time();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_t_separates_the_date_from_the_time() {
        let t = Timestamp::parse_rfc3339("2026-12-04T19:00:44.488Z").unwrap();
        assert_eq!(
            Timestamp::parse_rfc3339("2026-12-04t19:00:44.488Z").unwrap(),
            t
        );
        for other in [
            "2026-12-04x19:00:44.488Z",
            "2026-12-04 19:00:44.488Z",
            "2026-12-04",
        ] {
            assert!(Timestamp::parse_rfc3339(other).is_err(), "{other}");
        }
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc_and_parse_back() {
        let t = Timestamp::from_unix_millis(1_795_860_000_123);
        assert_eq!(t.to_string(), "2026-11-28T10:00:00.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_string()).unwrap(), t);
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-28T11:00:00+01:00").unwrap(),
            Timestamp::from_unix_millis(1_795_860_000_000)
        );
    }

    #[test]
    fn durations_between_timestamps_never_go_negative() {
        let a = Timestamp::from_unix_millis(1_000);
        let b = a.saturating_add(Duration::from_secs(2));
        assert_eq!(b.since(a), Duration::from_secs(2));
        assert_eq!(a.since(b), Duration::ZERO);
    }
}
