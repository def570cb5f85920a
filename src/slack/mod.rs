//! Slack, Sentinel's front door: request verification, the Events API, `/sentinel`, buttons,
//! Block Kit cards from `blocks/`, the outbound Web API client and Socket Mode.
//!
//! Arrives with the Slack work. Until then Sentinel runs without Slack and says so once at
//! startup (SPEC §9).
