//! Execute: carry out an approved catalogue action against Docker or the sandbox.
//!
//! In: an `ApprovedAction`, which only `policy` (automatic) or `approve` (a person with the
//! right role) can construct. Out: what changed, before → after. The executors arrive with
//! the remediation work; nothing in this build executes anything.
