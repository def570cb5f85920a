//! The one integration test crate: the real application, real Redis, real files.

mod api;
mod cli;
mod collectors;
mod docker;
mod durability;
mod helpers;
mod rbac;
mod store;
