//! Runtime: Sentinel's hands and eyes on the outside world.
//!
//! `docker` (bollard), `prometheus` (reqwest), `host` (the local fallback for host signals)
//! and `sandbox` (no-follow, descriptor-relative file operations) arrive with the monitoring
//! and remediation work. Everything here does I/O; nothing here decides anything.
