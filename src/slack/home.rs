//! The App Home tab (SPEC §12.5): each person's own view of Sentinel, kept fresh.
//!
//! In: `app_home_opened` events ([`events`](crate::slack::events) hands the user here through
//! [`HomeQueue::opened`]) and incident changes (`Sentinel::subscribe()`, the broadcast the
//! cards follow). Out: `views.publish` calls with the `home` template (`blocks/home.j2`):
//! the status (signals in words), the approvals this person may give (their role from
//! [`Roles`]: an operator sees medium-risk approvals, an admin all) with Approve and Reject
//! buttons carrying `{incident, proposal}` exactly like the card's, so a click goes through
//! the same interaction handler, and the last few fixes.
//!
//! Who opened Home in the last [`REMEMBER_FOR`] is a record in the store
//! ([`Store::remember`], the set [`HOME_SET`]), shared by replicas; on an incident change
//! every replica that sees it republishes for them. Slack limits `views.publish` per user,
//! so changes are gathered for [`DEBOUNCE`] and each person's Home is published at most once
//! per [`MIN_INTERVAL`] ([`Pacer`]); a 429 waits its `Retry-After`. The task is its own: it
//! never waits behind, or holds up, the outbox's card traffic.
//!
//! [`Store::remember`]: crate::store::Store::remember

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::{Incident, Role, SignalReading, Status, Timestamp};
use crate::pipeline::approve;
use crate::service::Sentinel;
use crate::slack::blocks;
use crate::slack::client::{SlackApi, SlackError};
use crate::slack::roles::Roles;
use crate::store::{IncidentQuery, SharedStore, Store};

/// The store set of people who opened Home recently.
pub const HOME_SET: &str = "slack:home";

/// How long someone who opened Home keeps getting it refreshed.
pub const REMEMBER_FOR: Duration = Duration::from_secs(24 * 3600);

/// At most one `views.publish` per person this often.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Changes arriving within this long of the first are published together.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// The list sizes that keep a Home view well under its 100 blocks: 3 signal sections, 2
/// blocks per approval, 1 per fix, and a dozen headers, dividers and "and N more" lines.
pub const MAX_SIGNALS: usize = 30;
pub const MAX_APPROVALS: usize = 30;
pub const MAX_FIXES: usize = 5;

/// How many incidents are read to find the recent fixes.
const RECENT_INCIDENTS: usize = 200;

/// Hands `app_home_opened` users from the event handlers to the Home task. Part of
/// [`Slack`](crate::slack::Slack), so the HTTP and Socket Mode handlers share it.
pub struct HomeQueue {
    sender: mpsc::UnboundedSender<String>,
    /// Taken once, by the task that publishes ([`HomeQueue::take_receiver`]).
    receiver: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

impl Default for HomeQueue {
    fn default() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        HomeQueue {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl HomeQueue {
    /// `user` opened their Home tab: remember them (refreshes follow for a day) and publish
    /// it now (or as soon as their pace allows).
    pub async fn opened(&self, store: &dyn Store, user: &str) {
        let until = Timestamp::now().saturating_add(REMEMBER_FOR);
        if let Err(e) = store.remember(HOME_SET, user, until).await {
            // Still published now; only the later refreshes are lost.
            tracing::warn!(user, error = %e, "cannot remember who opened home");
        }
        if self.sender.send(user.to_owned()).is_err() {
            tracing::warn!(user, "the home task is not running; home not published");
        }
    }

    fn take_receiver(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Who is waiting for a publish and when each may have the next: at most one per
/// [`MIN_INTERVAL`] per person. Pure bookkeeping over the instants it is given.
#[derive(Debug, Default)]
pub struct Pacer {
    /// The earliest instant each person may be published to again.
    allowed: HashMap<String, Instant>,
    /// People whose Home is out of date.
    waiting: Vec<String>,
}

impl Pacer {
    /// `user`'s Home is out of date.
    pub fn mark(&mut self, user: &str) {
        if !self.waiting.iter().any(|u| u == user) {
            self.waiting.push(user.to_owned());
        }
    }

    /// Nobody may publish to `user` before `until` (Slack's `Retry-After`).
    pub fn hold(&mut self, user: &str, until: Instant) {
        let allowed = self.allowed.entry(user.to_owned()).or_insert(until);
        *allowed = (*allowed).max(until);
    }

    /// The waiting people whose turn it is at `now`, in the order they were marked; each
    /// may not be published to again before `now + MIN_INTERVAL`.
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let (due, later): (Vec<String>, Vec<String>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|user| self.allowed.get(user).is_none_or(|at| *at <= now));
        self.waiting = later;
        for user in &due {
            self.allowed.insert(user.clone(), now + MIN_INTERVAL);
        }
        // Forget the pace of people long done with, so the map stays small.
        self.allowed.retain(|_, at| *at + MIN_INTERVAL > now);
        due
    }

    /// When the next waiting person's turn comes; `None` when nobody waits.
    pub fn next_due(&self) -> Option<Instant> {
        let now = Instant::now();
        self.waiting
            .iter()
            .map(|user| self.allowed.get(user).copied().unwrap_or(now))
            .min()
    }
}

/// The Home task: publishes for people who open Home, and republishes for everyone who
/// opened it recently when incidents change.
pub struct Home {
    sentinel: Arc<Sentinel>,
    /// Where [`HOME_SET`] lives.
    store: SharedStore,
    api: SlackApi,
    roles: Roles,
    receiver: mpsc::UnboundedReceiver<String>,
}

impl Home {
    /// `None` when the queue's receiver was taken already (one task per process).
    pub fn new(
        sentinel: Arc<Sentinel>,
        store: SharedStore,
        api: SlackApi,
        queue: &HomeQueue,
    ) -> Option<Home> {
        let receiver = queue.take_receiver()?;
        let roles = Roles::new(&sentinel.settings().rbac, Some(api.clone()));
        Some(Home {
            sentinel,
            store,
            api,
            roles,
            receiver,
        })
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut changes = self.sentinel.subscribe();
        let mut pacer = Pacer::default();
        // When the changes gathered so far are to be published.
        let mut refresh_at: Option<Instant> = None;
        loop {
            let wake = [refresh_at, pacer.next_due()].into_iter().flatten().min();
            tokio::select! {
                () = shutdown.cancelled() => return,
                opened = self.receiver.recv() => match opened {
                    Some(user) => pacer.mark(&user),
                    None => return,
                },
                change = changes.recv() => match change {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        refresh_at.get_or_insert_with(|| Instant::now() + DEBOUNCE);
                    }
                    Err(RecvError::Closed) => return,
                },
                () = sleep_until(wake) => {}
            }
            if refresh_at.is_some_and(|at| at <= Instant::now()) {
                refresh_at = None;
                self.mark_everyone(&mut pacer).await;
            }
            self.tick(&mut pacer).await;
        }
    }

    /// Everyone who opened Home recently is out of date.
    async fn mark_everyone(&self, pacer: &mut Pacer) {
        match self.store.remembered(HOME_SET, Timestamp::now()).await {
            Ok(users) => users.iter().for_each(|user| pacer.mark(user)),
            Err(e) => tracing::warn!(error = %e, "cannot read who opened home"),
        }
    }

    /// Publishes to everyone whose turn it is.
    pub async fn tick(&self, pacer: &mut Pacer) {
        for user in pacer.due(Instant::now()) {
            match self.publish(&user).await {
                Ok(()) => {}
                Err(SlackError::RateLimited { retry_after }) => {
                    pacer.hold(&user, Instant::now() + retry_after);
                    pacer.mark(&user);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(user, error = %e, "views.publish failed; trying again later");
                    pacer.mark(&user);
                }
                Err(e) => tracing::warn!(user, error = %e, "views.publish refused"),
            }
        }
    }

    /// Draws and publishes one person's Home.
    async fn publish(&self, user: &str) -> Result<(), SlackError> {
        let view = match self.view_for(user).await {
            Ok(view) => view,
            Err(why) => {
                tracing::error!(user, error = %why, "cannot draw a home view");
                return Ok(());
            }
        };
        self.api.views_publish(user, &view).await
    }

    /// The Home view for `user` now.
    async fn view_for(&self, user: &str) -> Result<Value, String> {
        let role = self.roles.role_of(user).await;
        let sentinel = &self.sentinel;
        let (status, recent) = if role.is_some() {
            let status = sentinel.status().await.map_err(|e| e.to_string())?;
            let query = IncidentQuery {
                open_only: false,
                limit: RECENT_INCIDENTS,
            };
            let recent = sentinel.incidents(query).await.map_err(|e| e.to_string())?;
            (Some(status), recent)
        } else {
            (None, Vec::new())
        };
        let public_url = &sentinel.settings().public_url;
        let context = match &status {
            Some(status) => context(
                role,
                &Shown {
                    mode: status.mode,
                    paused: status.paused,
                    signals: &status.signals,
                    open: &status.incidents,
                    recent: &recent,
                },
                public_url,
            ),
            None => context(None, &Shown::nothing(), public_url),
        };
        render(&context)
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a Home view is drawn from.
pub struct Shown<'a> {
    pub mode: &'a str,
    pub paused: bool,
    pub signals: &'a [SignalReading],
    /// The open incidents.
    pub open: &'a [Incident],
    /// The most recent incidents, open or not (for the fixes).
    pub recent: &'a [Incident],
}

impl Shown<'static> {
    /// For someone without a role: nothing of Sentinel's state.
    pub fn nothing() -> Self {
        Shown {
            mode: "unknown",
            paused: false,
            signals: &[],
            open: &[],
            recent: &[],
        }
    }
}

/// The `home` template's context for someone with `role`: the lists cut to fit a Home view
/// (at most [`MAX_SIGNALS`], [`MAX_APPROVALS`], [`MAX_FIXES`]), with how many more there are.
pub fn context(role: Option<Role>, shown: &Shown<'_>, public_url: &str) -> Value {
    let waiting: Vec<&Incident> = shown
        .open
        .iter()
        .filter(|i| i.status == Status::AwaitingApproval)
        .collect();
    let (mine, elsewhere): (Vec<&Incident>, Vec<&Incident>) = waiting
        .into_iter()
        .partition(|i| role.is_some_and(|r| r.allows(approve::needed_role(i))));
    let approvals: Vec<Value> = mine
        .iter()
        .take(MAX_APPROVALS)
        .map(|i| {
            json!({
                "incident": i,
                "ref": button_value(i),
                "needs": approve::needed_role(i),
            })
        })
        .collect();
    let mut fixes: Vec<(Timestamp, Value)> = shown
        .recent
        .iter()
        .filter_map(|i| {
            let execution = i.execution.as_ref()?;
            let finished = execution.finished_at?;
            let outcome = if execution.rolled_back_at.is_some() {
                "rolled back"
            } else if execution.after.is_none() {
                "failed"
            } else if i.status == Status::Resolved {
                "verified"
            } else {
                "executed"
            };
            let at = execution.rolled_back_at.unwrap_or(finished);
            Some((
                at,
                json!({
                    "id": i.id, "action": execution.action.action, "resource": i.resource,
                    "outcome": outcome, "at": at,
                }),
            ))
        })
        .collect();
    fixes.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    let fixes_more = fixes.len().saturating_sub(MAX_FIXES);
    let fixes: Vec<Value> = fixes.into_iter().take(MAX_FIXES).map(|(_, f)| f).collect();
    json!({
        "role": role,
        "mode": shown.mode,
        "paused": shown.paused,
        "open": shown.open.len(),
        "signals": shown.signals.iter().take(MAX_SIGNALS).collect::<Vec<_>>(),
        "signals_more": shown.signals.len().saturating_sub(MAX_SIGNALS),
        "approvals": approvals,
        "approvals_more": mine.len().saturating_sub(MAX_APPROVALS),
        "approvals_elsewhere": elsewhere.len(),
        "fixes": fixes,
        "fixes_more": fixes_more,
        "public_url": public_url,
    })
}

/// A button's value as the card draws it: `{"incident", "proposal"}` (legacy incidents
/// without a proposal id: `{"incident", "version"}`).
pub fn button_value(incident: &Incident) -> String {
    match &incident.proposal_id {
        Some(proposal) => json!({"incident": incident.id, "proposal": proposal}).to_string(),
        None => json!({"incident": incident.id, "version": incident.version}).to_string(),
    }
}

/// The Home view (`{"type": "home", …}`) for a context, checked against Block Kit's limits.
pub fn render(context: &Value) -> Result<Value, String> {
    let rendered = blocks::render("home", context).map_err(|e| e.to_string())?;
    rendered
        .blocks
        .into_iter()
        .next()
        .ok_or_else(|| "the home template drew no view".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        ActionId, Detection, IncidentId, ProposedAction, Resource, Risk, Severity, Signal, Source,
    };

    fn waiting(n: usize, risk: Risk) -> Incident {
        let detection = Detection {
            signal: Signal::ContainerDown,
            resource: Resource::parse(&format!("web-{n}")).unwrap(),
            severity: Severity::Critical,
            value: 1.0,
            threshold: 1.0,
            source: Source::Docker,
            summary: format!("web-{n} <!channel> exited"),
            labels: Default::default(),
        };
        let mut incident = Incident::open(IncidentId::generate(), &detection, Timestamp::now());
        incident.status = Status::AwaitingApproval;
        incident.risk = Some(risk);
        let mut params = std::collections::BTreeMap::new();
        params.insert("container".to_owned(), json!(format!("web-{n}")));
        incident.propose(
            ProposedAction {
                action: ActionId::ContainerStart,
                params,
            },
            crate::domain::TargetState::nothing(),
        );
        incident
    }

    fn buttons(view: &Value) -> Vec<Value> {
        view["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().unwrap().clone())
            .collect()
    }

    fn shown<'a>(open: &'a [Incident], signals: &'a [SignalReading]) -> Shown<'a> {
        Shown {
            mode: "auto",
            paused: false,
            signals,
            open,
            recent: open,
        }
    }

    #[test]
    fn each_role_sees_the_approvals_it_may_give_and_a_viewer_no_buttons() {
        let open = vec![waiting(1, Risk::Medium), waiting(2, Risk::High)];
        let view = |role| render(&context(role, &shown(&open, &[]), "")).unwrap();

        let operator = view(Some(Role::Operator));
        let values: Vec<Value> = buttons(&operator)
            .iter()
            .map(|b| serde_json::from_str(b["value"].as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(values.len(), 2, "approve and reject of the medium one");
        for value in &values {
            assert_eq!(value["incident"], open[0].id.as_str());
            assert_eq!(value["proposal"], open[0].proposal_id.as_deref().unwrap());
        }
        let text = operator.to_string();
        assert!(text.contains("1 more waits for an admin."), "{text}");
        assert!(!text.contains("<!channel>"), "escaped: {text}");

        let admin = view(Some(Role::Admin));
        assert_eq!(buttons(&admin).len(), 4, "both");

        for role in [Some(Role::Viewer), None] {
            let shown_view = view(role);
            assert!(buttons(&shown_view).is_empty(), "{role:?}: {shown_view}");
        }
        assert!(view(Some(Role::Viewer))
            .to_string()
            .contains("2 wait for an operator or admin"));
    }

    #[test]
    fn long_lists_are_cut_to_fit_a_home_view_and_say_how_many_more() {
        let open: Vec<Incident> = (0..150).map(|n| waiting(n, Risk::Medium)).collect();
        let signals: Vec<SignalReading> = (0..80)
            .map(|n| SignalReading {
                signal: "container_memory".into(),
                resource: format!("c-{n}"),
                value: Some(12.0),
                threshold: Some(60.0),
                state: "ok".into(),
                source: "docker".into(),
                reason: None,
            })
            .collect();
        let view = render(&context(Some(Role::Admin), &shown(&open, &signals), "")).unwrap();
        let blocks = view["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 100, "{} blocks", blocks.len());
        assert_eq!(buttons(&view).len(), 2 * MAX_APPROVALS);
        let text = view.to_string();
        assert!(text.contains("and 120 more waiting for you"), "{text}");
        assert!(text.contains("and 50 more signals"), "{text}");
    }

    #[test]
    fn the_pacer_publishes_each_person_at_most_once_per_interval() {
        let start = Instant::now();
        let mut pacer = Pacer::default();
        pacer.mark("U1");
        pacer.mark("U2");
        pacer.mark("U1");
        assert_eq!(pacer.due(start), ["U1", "U2"]);
        assert!(pacer.next_due().is_none());
        // A change a second later waits for the rest of the interval.
        pacer.mark("U1");
        assert!(pacer.due(start + Duration::from_secs(1)).is_empty());
        assert_eq!(pacer.next_due(), Some(start + MIN_INTERVAL));
        assert_eq!(pacer.due(start + MIN_INTERVAL), ["U1"]);
        // A 429 holds the person back for its Retry-After.
        let later = start + MIN_INTERVAL * 3;
        pacer.hold("U2", later + Duration::from_secs(30));
        pacer.mark("U2");
        assert!(pacer.due(later).is_empty());
        assert_eq!(pacer.due(later + Duration::from_secs(30)), ["U2"]);
    }
}
