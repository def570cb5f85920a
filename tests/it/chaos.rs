//! The chaos harness (issue 13): three `sentinel serve` replicas on one private Redis behind
//! a round-robin proxy, the Slack and LLM doubles, real Docker and real files; the harness
//! injects the faults (`kill -9`, SIGSTOP past the lease, Redis killed and frozen, Slack
//! answering 429 and 5xx, slow and half-open connections) and counts effects at the boundary
//! (`docker events`, the audit as a replica serves it, the messages the Slack double
//! received, a SHA-256 manifest of the sandbox).
//!
//! Each scenario prints exactly one line `chaos <scenario>: <figures> … PASS|FAIL` and then
//! fails when its figure is off. `cargo test` runs the short mode; `SENTINEL_CHAOS=full`
//! (`bench/chaos.sh`) the sizes of the issue. `SENTINEL_BIN=/path/to/sentinel` runs another
//! build of the binary (a release one) as the replicas.

mod approvals;
mod audit;
mod breaker;
mod cluster;
mod connections;
mod dedup;
mod injection;
mod kill_replica;
mod redis_down;
mod rolling;
mod slack_429;
mod stop_lease;

/// Whether the full sizes run (`SENTINEL_CHAOS=full`), else the short ones.
pub fn full() -> bool {
    match std::env::var("SENTINEL_CHAOS") {
        Ok(value) => match value.trim() {
            "full" => true,
            "short" | "" => false,
            other => panic!("SENTINEL_CHAOS={other:?}: expected `full` or `short`"),
        },
        Err(_) => false,
    }
}

/// `full` at full size, else `short`.
pub fn size(short: usize, full_size: usize) -> usize {
    if full() {
        full_size
    } else {
        short
    }
}

/// Prints the scenario's one line and fails the test when any check failed.
pub fn report(scenario: &str, figures: &str, failures: &[String]) {
    let verdict = if failures.is_empty() { "PASS" } else { "FAIL" };
    println!(
        "chaos {scenario}: {figures} mode={} {verdict}",
        if full() { "full" } else { "short" }
    );
    assert!(
        failures.is_empty(),
        "chaos {scenario}: {} failed check(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
