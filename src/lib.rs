//! Sentinel: an autonomous SRE agent whose primary interface is Slack.
//!
//! Codemap (see ARCHITECTURE.md for the long form):
//!
//! - [`domain`]: the vocabulary (ids, signals, incidents and their state machine, actions,
//!   roles, audit entries). Pure values.
//! - [`pipeline`]: the loop, one module per stage: monitor → detect → intake → analyze →
//!   policy → approve → execute → verify, and audit.
//! - [`service`]: the operations people ask for, shared by the HTTP API and Slack.
//! - [`demo`]: demo scenarios that stage a real, harmless situation, and their reset.
//! - [`store`]: persistence behind one trait, on Redis or an embedded redb file.
//! - [`web`]: the HTTP server (API with key roles, health).
//! - [`slack`], [`runtime`]: Slack, and Docker / Prometheus / host / sandbox access.
//! - [`replay`]: `sentinel replay`, the policy run again over stored incidents (reads only).
//! - [`pagerduty`]: pages, resolves and change events through PagerDuty's Events API v2.
//! - [`config`], [`cli`], [`app`], [`telemetry`], [`shutdown`]: the process around it all.

pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod pagerduty;
pub mod pipeline;
pub mod replay;
pub mod runtime;
pub mod service;
pub mod shutdown;
pub mod slack;
pub mod store;
pub mod telemetry;
pub mod web;
