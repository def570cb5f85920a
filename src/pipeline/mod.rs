//! The loop of SPEC §1, one module per stage:
//!
//! `monitor` → `detect` → (`intake`) → `analyze` → `policy` → `approve` → `execute` →
//! `verify`, with `audit` recording every step, and `trust` counting which fixes people keep
//! approving and that keep working (earned autonomy).
//!
//! `detect`, `analyze` (rules), `policy` and `approve` are pure functions over values.
//! `intake` and `audit` write to the store; `monitor`, `execute` and `verify` reach the
//! outside world through `runtime`.

pub mod analyze;
pub mod approve;
pub mod audit;
pub mod deps;
pub mod detect;
pub mod engine;
pub mod execute;
pub mod intake;
pub mod monitor;
pub mod policy;
pub mod remediate;
pub mod trust;
pub mod verify;

pub use deps::{Pipeline, Readings};
