//! The recent history of every signal, for the status page's trend charts.
//!
//! A bounded ring buffer per series (signal and resource): samples older than the window
//! fall off the front, and no series holds more than `capacity` samples however short the
//! monitor interval, so memory stays bounded whatever the configuration. Series not seen for a
//! whole window are dropped, so containers that come and go do not pile up. Pure: the caller
//! passes the time in.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::Timestamp;

/// One sample of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: Timestamp,
    pub value: f64,
}

/// Recent samples of every series.
#[derive(Debug, Clone)]
pub struct Trends {
    window: Duration,
    capacity: usize,
    max_series: usize,
    series: BTreeMap<(String, String), VecDeque<Sample>>,
}

impl Trends {
    /// An hour of samples, at most 720 per series (one every 5 s) and 512 series.
    pub fn new() -> Self {
        Trends::with_limits(Duration::from_secs(3600), 720, 512)
    }

    pub fn with_limits(window: Duration, capacity: usize, max_series: usize) -> Self {
        Trends {
            window,
            capacity: capacity.max(2),
            max_series: max_series.max(1),
            series: BTreeMap::new(),
        }
    }

    /// Adds one cycle's readings (`None` values — unavailable — are not samples) and forgets
    /// what fell out of the window.
    pub fn record<'a>(
        &mut self,
        now: Timestamp,
        readings: impl IntoIterator<Item = (&'a str, &'a str, Option<f64>)>,
    ) {
        for (signal, resource, value) in readings {
            let Some(value) = value.filter(|v| v.is_finite()) else {
                continue;
            };
            let key = (signal.to_owned(), resource.to_owned());
            if !self.series.contains_key(&key) && self.series.len() >= self.max_series {
                continue;
            }
            let samples = self.series.entry(key).or_default();
            if samples.len() == self.capacity {
                samples.pop_front();
            }
            samples.push_back(Sample { at: now, value });
        }
        let oldest = Timestamp::from_unix_millis(
            now.unix_millis()
                .saturating_sub(i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX)),
        );
        self.series.retain(|_, samples| {
            while samples.front().is_some_and(|s| s.at < oldest) {
                samples.pop_front();
            }
            !samples.is_empty()
        });
    }

    /// The samples of one series, oldest first.
    pub fn samples(&self, signal: &str, resource: &str) -> Vec<Sample> {
        self.series
            .get(&(signal.to_owned(), resource.to_owned()))
            .map(|samples| samples.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}

impl Default for Trends {
    fn default() -> Self {
        Trends::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_millis(seconds * 1000)
    }

    #[test]
    fn keeps_samples_in_order_and_skips_unavailable_ones() {
        let mut trends = Trends::new();
        trends.record(at(0), [("host_cpu", "host", Some(10.0))]);
        trends.record(at(30), [("host_cpu", "host", None)]);
        trends.record(at(60), [("host_cpu", "host", Some(20.0))]);
        let values: Vec<f64> = trends
            .samples("host_cpu", "host")
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(values, [10.0, 20.0]);
    }

    #[test]
    fn samples_older_than_the_window_fall_off_and_empty_series_go() {
        let mut trends = Trends::with_limits(Duration::from_secs(60), 100, 10);
        trends.record(
            at(0),
            [
                ("disk", "/", Some(1.0)),
                ("container_memory", "web", Some(5.0)),
            ],
        );
        trends.record(at(45), [("disk", "/", Some(2.0))]);
        trends.record(at(90), [("disk", "/", Some(3.0))]);
        let disk: Vec<f64> = trends
            .samples("disk", "/")
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(disk, [2.0, 3.0]);
        assert!(trends.samples("container_memory", "web").is_empty());
        assert_eq!(trends.series_count(), 1);
    }

    #[test]
    fn a_short_interval_cannot_grow_a_series_past_its_capacity() {
        let mut trends = Trends::with_limits(Duration::from_secs(3600), 5, 10);
        for second in 0..1000 {
            trends.record(at(second), [("host_cpu", "host", Some(second as f64))]);
        }
        let values: Vec<f64> = trends
            .samples("host_cpu", "host")
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(values, [995.0, 996.0, 997.0, 998.0, 999.0]);
    }

    #[test]
    fn the_number_of_series_is_bounded() {
        let mut trends = Trends::with_limits(Duration::from_secs(3600), 5, 3);
        let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        trends.record(
            at(0),
            names
                .iter()
                .map(|name| ("container_memory", name.as_str(), Some(1.0))),
        );
        assert_eq!(trends.series_count(), 3);
        assert!(trends.samples("container_memory", "c9").is_empty());
    }

    #[test]
    fn non_finite_values_are_not_samples() {
        let mut trends = Trends::new();
        trends.record(
            at(0),
            [
                ("host_cpu", "host", Some(f64::NAN)),
                ("disk", "/", Some(f64::INFINITY)),
            ],
        );
        assert_eq!(trends.series_count(), 0);
    }
}
