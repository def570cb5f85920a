//! Runtime: Sentinel's eyes (and, later, hands) on the outside world.
//!
//! - [`prometheus`]: host signals from node-exporter (and container memory from cAdvisor)
//!   through PromQL instant queries.
//! - [`host`]: the same host signals read from this machine when Prometheus is not
//!   configured or does not answer.
//! - [`docker`]: containers, their state, health, restarts and memory (bollard).
//! - [`sandbox`]: the sandbox's size, without following symbolic links.
//! - [`cleanup`]: Sentinel's only file deletion: moves files out of the sandbox's logs/,
//!   tmp/ and cache/ into a quarantine, with descriptor-relative, no-follow operations, and
//!   restores them on rollback.
//!
//! Everything here does I/O and returns plain samples; nothing here decides whether a value
//! is a breach (that is `pipeline::detect`).

pub mod cleanup;
pub mod docker;
pub mod host;
pub mod prometheus;
pub mod sandbox;

use std::collections::BTreeMap;

/// Host-wide readings, from Prometheus or from this machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSample {
    /// Percent of all CPUs busy. `None` until a rate can be computed (two samples).
    pub cpu_percent: Option<f64>,
    /// Percent of memory in use: `100 × (1 − available / total)`.
    pub memory_percent: Option<f64>,
    /// Percent used of each watched mount point that exists, by mount point.
    pub disks: BTreeMap<String, f64>,
    /// Network traffic in and out, all interfaces but loopback, in megabytes (10⁶) per second.
    pub network_mb_per_s: Option<f64>,
    /// Network errors in and out per second, all interfaces but loopback.
    pub network_errors_per_s: Option<f64>,
    /// Network latency in milliseconds measured by the `[prometheus] network_latency` query:
    /// `None` when no such query is configured (or the host was read locally), otherwise the
    /// number or why there is none, worded for people.
    pub network_latency_ms: Option<Result<f64, String>>,
}

/// One container as Sentinel sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSample {
    /// The name without Docker's leading `/`.
    pub name: String,
    pub id: String,
    /// Docker's state: `running`, `exited`, `dead`, `restarting`, `paused`, `created`, …
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or `None` without a health check.
    pub health: Option<String>,
    pub restart_count: i64,
    pub exit_code: Option<i64>,
    /// `no`, `always`, `unless-stopped`, `on-failure`.
    pub restart_policy: String,
    pub labels: BTreeMap<String, String>,
    /// Bytes in use as `docker stats` counts them: usage minus inactive file cache.
    pub memory_used_bytes: Option<u64>,
    /// The memory limit in bytes (the host's memory when the container has no limit).
    pub memory_limit_bytes: Option<u64>,
}

impl ContainerSample {
    /// `memory_used / memory_limit` in percent, for running containers with stats.
    pub fn memory_percent(&self) -> Option<f64> {
        match (self.memory_used_bytes, self.memory_limit_bytes) {
            (Some(used), Some(limit)) if limit > 0 => Some(100.0 * used as f64 / limit as f64),
            _ => None,
        }
    }

    /// Why this container counts as down (SPEC §2), or `None` when it does not.
    ///
    /// Down: dead; unhealthy; restarting; or exited when it was meant to keep running (a
    /// restart policy other than `no`) or exited with a non-zero code (a crash, or a stop).
    /// A one-off container that finished its work with code 0 is not down. Containers
    /// labelled `sentinel.ignore=true` are never down.
    pub fn down_reason(&self) -> Option<String> {
        if self.labels.get("sentinel.ignore").map(String::as_str) == Some("true") {
            return None;
        }
        match self.state.as_str() {
            "dead" => return Some("dead".to_owned()),
            "restarting" => {
                return Some(format!(
                    "restarting in a loop ({} restarts)",
                    self.restart_count
                ))
            }
            "exited" => {
                let code = self.exit_code.unwrap_or(0);
                if code != 0 || self.restart_policy != "no" && !self.restart_policy.is_empty() {
                    return Some(format!("exited with code {code}"));
                }
                return None;
            }
            _ => {}
        }
        if self.health.as_deref() == Some("unhealthy") {
            return Some("unhealthy".to_owned());
        }
        None
    }

    /// `sentinel.protected=true`: any fix to it needs an admin.
    pub fn protected(&self) -> bool {
        self.labels.get("sentinel.protected").map(String::as_str) == Some("true")
    }
}

/// One Docker event about a container, as `runtime::docker` read it: the raw material of
/// an incident's recent changes (`pipeline::analyze::changes` decides what they mean).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub at: crate::domain::Timestamp,
    /// Docker's action: `create`, `destroy`, `rename`, `update`, `start`.
    pub action: String,
    /// The container's id.
    pub id: String,
    /// Its name after the event, without Docker's leading `/`.
    pub name: String,
    /// A rename's previous name, without the leading `/`.
    pub old_name: Option<String>,
    /// The image as the container was created from it (`shop/web:2.1`, or an id).
    pub image: Option<String>,
    /// The image id (`sha256:…`) the container runs: from the container when it still
    /// exists, else from the image reference as it resolves now; `None` when neither can
    /// be asked.
    pub image_id: Option<String>,
}

pub use crate::domain::{glob_matches, ContainerFilter, ContainerSelector};

impl ContainerSample {
    /// Whether `filter` watches this container.
    pub fn watched_by(&self, filter: &ContainerFilter) -> bool {
        filter.watches(&self.name, |key| self.labels.get(key).map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(state: &str, exit_code: i64, policy: &str) -> ContainerSample {
        ContainerSample {
            name: "web-1".into(),
            id: "abc".into(),
            state: state.into(),
            health: None,
            restart_count: 0,
            exit_code: Some(exit_code),
            restart_policy: policy.into(),
            labels: BTreeMap::new(),
            memory_used_bytes: None,
            memory_limit_bytes: None,
        }
    }

    #[test]
    fn which_containers_are_down() {
        assert_eq!(container("running", 0, "no").down_reason(), None);
        assert_eq!(
            container("exited", 0, "no").down_reason(),
            None,
            "a finished one-off job"
        );
        assert!(container("exited", 137, "no").down_reason().is_some());
        assert!(container("exited", 0, "always").down_reason().is_some());
        assert!(container("dead", 0, "no").down_reason().is_some());
        assert!(container("restarting", 1, "always").down_reason().is_some());
        let mut unhealthy = container("running", 0, "no");
        unhealthy.health = Some("unhealthy".into());
        assert_eq!(unhealthy.down_reason().as_deref(), Some("unhealthy"));
        let mut ignored = container("exited", 1, "always");
        ignored
            .labels
            .insert("sentinel.ignore".into(), "true".into());
        assert_eq!(ignored.down_reason(), None);
    }

    #[test]
    fn memory_percent_is_used_over_limit() {
        let mut c = container("running", 0, "no");
        assert_eq!(c.memory_percent(), None);
        c.memory_used_bytes = Some(48 << 20);
        c.memory_limit_bytes = Some(64 << 20);
        assert_eq!(c.memory_percent(), Some(75.0));
    }

    #[test]
    fn globs_match_names() {
        for (glob, name, matches) in [
            ("web-*", "web-1", true),
            ("web-*", "web-", true),
            ("web-*", "db-1", false),
            ("*-1", "web-1", true),
            ("w?b-1", "web-1", true),
            ("w?b-1", "wb-1", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*demo*", "sentinel-demo-memory", true),
        ] {
            assert_eq!(glob_matches(glob, name), matches, "{glob} ~ {name}");
        }
    }

    #[test]
    fn selectors_parse_or_say_what_is_wrong() {
        assert_eq!(
            ContainerSelector::parse("label:sentinel.ignore=true").unwrap(),
            ContainerSelector::Label {
                key: "sentinel.ignore".into(),
                value: Some("true".into())
            }
        );
        assert_eq!(
            ContainerSelector::parse("label:team").unwrap(),
            ContainerSelector::Label {
                key: "team".into(),
                value: None
            }
        );
        assert_eq!(
            ContainerSelector::parse("name:web-*").unwrap(),
            ContainerSelector::Name("web-*".into())
        );
        for bad in [
            "",
            "web-1",
            "label:",
            "label:=x",
            "name:",
            "image:busybox",
            "label:a b",
        ] {
            let error = ContainerSelector::parse(bad).unwrap_err();
            assert!(error.contains("label:KEY"), "{bad}: {error}");
        }
        for text in ["label:a", "label:a=b", "label:a=", "name:x*"] {
            assert_eq!(ContainerSelector::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn the_filter_includes_then_excludes() {
        let filter = |include: &[&str], exclude: &[&str]| ContainerFilter {
            include: include
                .iter()
                .map(|s| ContainerSelector::parse(s).unwrap())
                .collect(),
            exclude: exclude
                .iter()
                .map(|s| ContainerSelector::parse(s).unwrap())
                .collect(),
        };
        let mut web = container("running", 0, "no");
        let mut ignored = container("running", 0, "no");
        ignored.name = "noisy".into();
        ignored
            .labels
            .insert("sentinel.ignore".into(), "true".into());
        let default = filter(&[], &["label:sentinel.ignore=true"]);
        assert!(web.watched_by(&default));
        assert!(!ignored.watched_by(&default));
        let only_db = filter(&["name:db-*", "label:team=db"], &[]);
        assert!(!web.watched_by(&only_db));
        web.labels.insert("team".into(), "db".into());
        assert!(web.watched_by(&only_db), "by label");
        web.labels.insert("team".into(), "web".into());
        assert!(!web.watched_by(&only_db), "another value");
        web.name = "db-1".into();
        assert!(web.watched_by(&only_db), "by name");
        let not_false = filter(&[], &["label:sentinel.ignore=true"]);
        ignored
            .labels
            .insert("sentinel.ignore".into(), "false".into());
        assert!(ignored.watched_by(&not_false));
    }
}
