//! The one integration test crate: the real application, real Redis, real files.

mod alerts;
mod api;
mod cleanup;
mod cli;
mod collectors;
mod decisions;
mod docker;
mod durability;
mod helpers;
mod leader;
mod llm;
mod llm_double;
mod monitor;
mod rbac;
mod remediate;
mod store;
