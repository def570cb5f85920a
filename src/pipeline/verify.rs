//! Verify: after `settle`, measure again; resolve the incident, or roll back a reversible
//! action and escalate (SPEC §4). Arrives with the remediation work.
