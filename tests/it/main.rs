//! The one integration test crate: the real application, real Redis, real files.

mod api;
mod cli;
mod durability;
mod helpers;
mod rbac;
mod store;
