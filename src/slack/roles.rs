//! Slack users → Sentinel roles, from `[rbac]` (SPEC §6).
//!
//! In: a Slack user id (`U…`/`W…`). Out: the user's [`Role`], or `None` when
//! `default_role = "none"` and nothing names them. Precedence, first match wins:
//!
//! 1. the user's id listed explicitly: `admins`, then `operators`, then `viewers` (the
//!    highest list naming them);
//! 2. a user group (`S…`) the user is in, highest role first; members come from
//!    `usergroups.users.list` and are cached for `usergroup_cache_ttl`;
//! 3. `default_role`.
//!
//! A group whose members cannot be fetched counts as having none (fail closed: a Slack
//! outage never grants a role), and the failure is not cached, so the next lookup asks
//! again.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{DefaultRole, RbacSettings};
use crate::domain::Role;
use crate::slack::client::SlackApi;

pub struct Roles {
    /// Users named explicitly, with the highest role any list gives them.
    users: HashMap<String, Role>,
    /// User groups with their role, highest role first.
    groups: Vec<(String, Role)>,
    default_role: Option<Role>,
    /// Resolves group members; `None` (no bot token): groups have no members.
    api: Option<SlackApi>,
    ttl: Duration,
    /// Group id → (fetched at, member ids). One lock for all groups: lookups of a group
    /// being fetched wait for that fetch instead of asking Slack again (Tier 2, 20/min).
    cache: tokio::sync::Mutex<HashMap<String, (Instant, Vec<String>)>>,
}

impl Roles {
    pub fn new(rbac: &RbacSettings, api: Option<SlackApi>) -> Self {
        let mut users = HashMap::new();
        let mut groups = Vec::new();
        // Highest role first, so the first list naming someone wins.
        for (role, ids) in [
            (Role::Admin, &rbac.admins),
            (Role::Operator, &rbac.operators),
            (Role::Viewer, &rbac.viewers),
        ] {
            for id in ids {
                if id.starts_with('S') {
                    if !groups.iter().any(|(group, _)| group == id) {
                        groups.push((id.clone(), role));
                    }
                } else {
                    users.entry(id.clone()).or_insert(role);
                }
            }
        }
        Roles {
            users,
            groups,
            default_role: match rbac.default_role {
                DefaultRole::None => None,
                DefaultRole::Role(role) => Some(role),
            },
            api,
            ttl: rbac.usergroup_cache_ttl.0,
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The role of a Slack user; `None`: they may only ask for help and whoami.
    pub async fn role_of(&self, user_id: &str) -> Option<Role> {
        if let Some(role) = self.users.get(user_id) {
            return Some(*role);
        }
        for (group, role) in &self.groups {
            if self.members(group).await.iter().any(|m| m == user_id) {
                return Some(*role);
            }
        }
        self.default_role
    }

    /// A group's members, from the cache while fresh.
    async fn members(&self, group: &str) -> Vec<String> {
        let Some(api) = &self.api else {
            return Vec::new();
        };
        let mut cache = self.cache.lock().await;
        if let Some((fetched, members)) = cache.get(group) {
            if fetched.elapsed() < self.ttl {
                return members.clone();
            }
        }
        match api.usergroup_users(group).await {
            Ok(members) => {
                cache.insert(group.to_owned(), (Instant::now(), members.clone()));
                members
            }
            Err(e) => {
                cache.remove(group);
                tracing::warn!(group, error = %e, "cannot list a user group; it counts as empty");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::routing::any;
    use secrecy::SecretString;

    use super::*;
    use crate::config::HumanDuration;

    fn rbac(
        default_role: DefaultRole,
        admins: &[&str],
        operators: &[&str],
        viewers: &[&str],
    ) -> RbacSettings {
        let owned = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect();
        RbacSettings {
            default_role,
            admins: owned(admins),
            operators: owned(operators),
            viewers: owned(viewers),
            usergroup_cache_ttl: HumanDuration(Duration::from_secs(60)),
        }
    }

    /// A stand-in for `usergroups.users.list`: `SADMINS` has UGROUPADMIN and UEXPLICIT,
    /// `SOPS` has UGROUPOP and UGROUPADMIN; `SBROKEN` fails. Counts the calls.
    async fn group_server() -> (SlackApi, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let app = axum::Router::new().route(
            "/api/usergroups.users.list",
            any(move |uri: axum::http::Uri, body: String| {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    // The group id, as a query parameter, form field or JSON field.
                    let body = format!("{} {body}", uri.query().unwrap_or_default());
                    let users: &[&str] = if body.contains("SADMINS") {
                        &["UGROUPADMIN", "UEXPLICIT"]
                    } else if body.contains("SOPS") {
                        &["UGROUPOP", "UGROUPADMIN"]
                    } else {
                        return axum::Json(
                            serde_json::json!({"ok": false, "error": "no_such_subteam"}),
                        );
                    };
                    axum::Json(serde_json::json!({"ok": true, "users": users}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let api = SlackApi::new(
            &format!("http://{addr}/api/"),
            SecretString::from("xoxb-test"),
        )
        .unwrap();
        (api, calls)
    }

    #[tokio::test]
    async fn explicit_ids_rank_admins_over_operators_over_viewers() {
        let roles = Roles::new(
            &rbac(
                DefaultRole::None,
                &["UADMIN", "UBOTH"],
                &["UOP", "UBOTH", "UOPVIEW"],
                &["UVIEW", "UOPVIEW"],
            ),
            None,
        );
        let cases = [
            ("UADMIN", Some(Role::Admin)),
            ("UBOTH", Some(Role::Admin)),
            ("UOP", Some(Role::Operator)),
            ("UOPVIEW", Some(Role::Operator)),
            ("UVIEW", Some(Role::Viewer)),
            ("USTRANGER", None),
        ];
        for (user, role) in cases {
            assert_eq!(roles.role_of(user).await, role, "{user}");
        }
    }

    #[tokio::test]
    async fn the_default_role_applies_to_everyone_else() {
        for (default, expected) in [
            (DefaultRole::None, None),
            (DefaultRole::Role(Role::Viewer), Some(Role::Viewer)),
            (DefaultRole::Role(Role::Operator), Some(Role::Operator)),
        ] {
            let roles = Roles::new(&rbac(default, &["UADMIN"], &[], &[]), None);
            assert_eq!(roles.role_of("USTRANGER").await, expected);
            assert_eq!(roles.role_of("UADMIN").await, Some(Role::Admin));
        }
    }

    #[tokio::test]
    async fn groups_come_after_explicit_ids_and_rank_by_role() {
        let (api, _) = group_server().await;
        let roles = Roles::new(
            &rbac(
                DefaultRole::None,
                &["SADMINS"],
                &["SOPS"],
                // Named explicitly as a viewer: that beats the admin group they are in.
                &["UEXPLICIT", "SBROKEN"],
            ),
            Some(api),
        );
        let cases = [
            ("UGROUPADMIN", Some(Role::Admin)),
            ("UGROUPOP", Some(Role::Operator)),
            ("UEXPLICIT", Some(Role::Viewer)),
            ("USTRANGER", None),
        ];
        for (user, role) in cases {
            assert_eq!(roles.role_of(user).await, role, "{user}");
        }
    }

    #[tokio::test]
    async fn without_a_client_groups_grant_nothing() {
        let roles = Roles::new(
            &rbac(DefaultRole::Role(Role::Viewer), &["SADMINS"], &[], &[]),
            None,
        );
        assert_eq!(roles.role_of("UGROUPADMIN").await, Some(Role::Viewer));
    }

    #[tokio::test]
    async fn group_members_are_cached_for_the_ttl_and_failures_are_not() {
        let (api, calls) = group_server().await;
        let mut settings = rbac(DefaultRole::None, &["SADMINS"], &[], &["SBROKEN"]);
        settings.usergroup_cache_ttl = HumanDuration(Duration::from_millis(300));
        let roles = Roles::new(&settings, Some(api));

        assert_eq!(roles.role_of("UGROUPADMIN").await, Some(Role::Admin));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(roles.role_of("UGROUPADMIN").await, Some(Role::Admin));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a fresh entry is reused");

        // A stranger is looked up in both groups; the broken one is asked again each time.
        assert_eq!(roles.role_of("USTRANGER").await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(roles.role_of("USTRANGER").await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "failures are not cached");

        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(roles.role_of("UGROUPADMIN").await, Some(Role::Admin));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "an expired entry is fetched again"
        );
    }
}
