//! Who did something: Sentinel itself, an API key, or a Slack user, with the role they had.

use std::fmt;

use crate::domain::Role;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// Sentinel's own loop.
    Sentinel,
    /// A caller of the HTTP API, known by its key's configured name.
    ApiKey { name: String, role: Role },
    /// A Slack user, by user id.
    SlackUser { user_id: String, role: Role },
}

impl Actor {
    /// The role the actor acted with; Sentinel acts under policy, not a role.
    pub fn role(&self) -> Option<Role> {
        match self {
            Actor::Sentinel => None,
            Actor::ApiKey { role, .. } | Actor::SlackUser { role, .. } => Some(*role),
        }
    }

    /// `sentinel`, `api:<name>` or `slack:<user id>`: what the audit log records.
    pub fn id(&self) -> String {
        match self {
            Actor::Sentinel => "sentinel".to_owned(),
            Actor::ApiKey { name, .. } => format!("api:{name}"),
            Actor::SlackUser { user_id, .. } => format!("slack:{user_id}"),
        }
    }
}

/// `api:ci-bot (operator)`: what a timeline entry shows.
impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role() {
            Some(role) => write!(f, "{} ({role})", self.id()),
            None => f.write_str(&self.id()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_show_their_id_and_role() {
        let api = Actor::ApiKey {
            name: "ci-bot".into(),
            role: Role::Operator,
        };
        assert_eq!(api.id(), "api:ci-bot");
        assert_eq!(api.to_string(), "api:ci-bot (operator)");
        let slack = Actor::SlackUser {
            user_id: "U123".into(),
            role: Role::Admin,
        };
        assert_eq!(slack.to_string(), "slack:U123 (admin)");
        assert_eq!(Actor::Sentinel.to_string(), "sentinel");
        assert_eq!(Actor::Sentinel.role(), None);
    }
}
