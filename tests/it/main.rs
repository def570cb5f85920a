//! The one integration test crate: the real application, real Redis, real files.

mod alerts;
mod api;
mod blocks;
mod browser;
mod cleanup;
mod cli;
mod collectors;
mod containers;
mod decisions;
mod docker;
mod durability;
mod helpers;
mod leader;
mod llm;
mod llm_double;
mod monitor;
mod packaging;
mod page;
mod rbac;
mod remediate;
mod slack_double;
mod slack_inbound;
mod slack_outbound;
mod slack_socket;
mod store;
mod traces;
