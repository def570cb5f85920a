//! Slack, Sentinel's front door (SPEC §6).
//!
//! Inbound, behind one verification layer over the raw body ([`verify`]): the Events API
//! ([`events`]), `/sentinel` ([`commands`]) and buttons and modals ([`interactions`]), served
//! by [`http::router`]; Slack users get their role from `[rbac]` ([`roles`]).
//! Outbound: the Web API client on `SLACK_API_URL` ([`client`]), a durable, ordered,
//! rate-limited outbox ([`outbox`]) and the incident cards kept in step with incidents
//! ([`cards`]), rendered from the minijinja templates in `blocks/` ([`blocks`]).
//!
//! Slack is optional: without a signing secret the routes answer 404 and nothing is posted.

pub mod blocks;
pub mod cards;
pub mod client;
pub mod commands;
pub mod events;
pub mod http;
pub mod interactions;
pub mod outbox;
pub mod roles;
pub mod verify;
