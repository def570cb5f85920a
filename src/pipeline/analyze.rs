//! Analyze: turn an incident and its context into a root cause, a proposed catalogue action,
//! a risk assessment, a confidence and the evidence used (SPEC §3).
//!
//! In: an `Incident` and its evidence. Out: an `Analysis`. The rules analyzer is pure; the
//! LLM analyzer only proposes, and whatever it proposes is parsed into catalogue types here,
//! so nothing outside the catalogue can leave this module. Both arrive with the analysis
//! work; until then incidents stay `detected` for people to handle.

use crate::domain::{ProposedAction, Risk};

/// What an analyzer concluded.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub root_cause: String,
    pub proposed_action: ProposedAction,
    pub risk_assessment: Risk,
    /// 0 to 1.
    pub confidence: f64,
    pub evidence: Vec<String>,
    /// `rules` or `llm:<model>`.
    pub analyzer: String,
}
