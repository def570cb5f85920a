//! The one integration test crate: the real application, real Redis, real files.

mod alerts;
mod api;
mod cli;
mod collectors;
mod docker;
mod durability;
mod helpers;
mod leader;
mod monitor;
mod rbac;
mod store;
