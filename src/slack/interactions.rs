//! Buttons and modals: `POST /slack/interactions` and Socket Mode's `interactive` envelopes
//! (SPEC §6).
//!
//! In: the verified form field `payload` or the envelope's payload, both through
//! [`receive`]: a JSON `block_actions` (a card's Approve, Reject, Rollback or Silence button,
//! or a scheduled fix's Stop or Run now)
//! or `view_submission` (the reject dialog). Out: the same service calls as the HTTP API, as
//! `Actor::SlackUser` with the clicking user's role, so the audit log reads `slack:U… (role)`;
//! an ephemeral message to the user for every outcome; the acknowledgement within
//! [`ACK_BUDGET`](crate::slack::http::ACK_BUDGET).
//!
//! Buttons carry `{"incident": "inc-…", "proposal": "prop-…"}` ([`CardRef`]), never
//! parameters: what gets approved is what the store says, and only while the proposal the
//! card showed is still the current one ([`card_is_current`]). Someone without the needed role changes nothing
//! and is told why.
//! The same buttons on the App Home tab (`slack::home`) arrive with `container.type = "view"`
//! and no channel or message: they are handled alike, and the person sees the outcome on
//! their refreshed Home (there is no channel to answer in).
//! Reject opens the `reject_modal` with `views.open` first thing (its `trigger_id` lives three
//! seconds); its submission (`callback_id` `reject_reason`) rejects with the typed reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::RawFormRejection;
use axum::extract::{RawForm, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::domain::{Actor, Incident, IncidentId, Role, Status, Timestamp};
use crate::service::ServiceError;
use crate::slack::blocks::{self, escape};
use crate::slack::cards;
use crate::slack::http::{
    form_fields, respond, within_budget, Answer, BadPayload, Inbound, ACK_BUDGET,
};
use crate::slack::verify::VerifiedBody;
use crate::web::error::ApiError;

/// The modal's `callback_id`.
pub const REJECT_CALLBACK: &str = "reject_reason";

/// How long a click's trigger id is remembered, so a repeat is not acted on twice.
const CLICK_DEDUP_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// How long the Silence button silences an incident's fingerprint.
pub const CARD_SILENCE: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a card's button points at: the incident, and the proposal the card showed.
/// Cards drawn before buttons named the proposal carry the version they were drawn from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawCardRef", into = "RawCardRef")]
pub struct CardRef {
    pub incident: IncidentId,
    pub drawn: Drawn,
}

/// What a card was drawn from, as its buttons say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drawn {
    /// `{"incident": …, "proposal": "prop-…"}`.
    Proposal(String),
    /// `{"incident": …, "version": N}`: a card drawn before proposals had ids.
    Version(u64),
}

/// A button value as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCardRef {
    incident: IncidentId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proposal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
}

impl TryFrom<RawCardRef> for CardRef {
    type Error = String;
    fn try_from(raw: RawCardRef) -> Result<Self, String> {
        let drawn = match (raw.proposal, raw.version) {
            (Some(proposal), _) => {
                let valid = proposal.len() <= 64
                    && proposal.starts_with("prop-")
                    && proposal
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !valid {
                    return Err(format!("{proposal:?} is not a proposal id"));
                }
                Drawn::Proposal(proposal)
            }
            (None, Some(version)) => Drawn::Version(version),
            (None, None) => return Err("a card reference names a proposal".to_owned()),
        };
        Ok(CardRef {
            incident: raw.incident,
            drawn,
        })
    }
}

impl From<CardRef> for RawCardRef {
    fn from(card: CardRef) -> Self {
        let (proposal, version) = match card.drawn {
            Drawn::Proposal(proposal) => (Some(proposal), None),
            Drawn::Version(version) => (None, Some(version)),
        };
        RawCardRef {
            incident: card.incident,
            proposal,
            version,
        }
    }
}

impl CardRef {
    /// The proposal the card showed, if its buttons name one.
    pub fn proposal(&self) -> Option<&str> {
        match &self.drawn {
            Drawn::Proposal(proposal) => Some(proposal),
            Drawn::Version(_) => None,
        }
    }
}

/// Whether a click on a card drawn from `card` may act on the incident as it is now.
///
/// A click is fresh while the incident's current proposal is the one the card showed,
/// however many monitoring cycles (sightings, card bookkeeping) passed since it was drawn:
/// neither bumps the decision's version, and the proposal names what would be approved.
/// Legacy buttons carrying a version follow the old rule ([`cards::click_is_current`]).
/// The service's own checks (status, role, compare-and-set, the proposal again) still
/// apply after this one.
pub fn card_is_current(card: &CardRef, current: &Incident) -> bool {
    current.id == card.incident
        && match &card.drawn {
            Drawn::Proposal(proposal) => current.proposal_id.as_deref() == Some(proposal),
            Drawn::Version(version) => cards::click_is_current(current, *version),
        }
}

/// A card button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Button {
    Approve,
    Reject,
    Rollback,
    Silence,
    /// "Let Sentinel do this": trust the fix this incident ran (earned autonomy).
    Trust,
    /// A scheduled fix's veto window: stop it (anyone with a role) or run it now.
    Stop,
    RunNow,
}

impl Button {
    fn from_action_id(action_id: &str) -> Option<Button> {
        match action_id {
            "approve" => Some(Button::Approve),
            "reject" => Some(Button::Reject),
            "rollback" => Some(Button::Rollback),
            "silence" => Some(Button::Silence),
            "trust" => Some(Button::Trust),
            "stop" => Some(Button::Stop),
            "run_now" => Some(Button::RunNow),
            _ => None,
        }
    }

    /// The least role that may press it; the service asks for admin on high-risk decisions.
    fn needs(self) -> Role {
        match self {
            Button::Stop => Role::Viewer,
            Button::Approve | Button::Reject | Button::Silence | Button::RunNow => Role::Operator,
            Button::Rollback | Button::Trust => Role::Admin,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Button::Approve => "approve",
            Button::Reject => "reject",
            Button::Rollback => "roll back",
            Button::Silence => "silence",
            Button::Trust => "let Sentinel fix this on its own for",
            Button::Stop => "stop the scheduled fix of",
            Button::RunNow => "skip the veto window of",
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct InteractionForm {
    payload: String,
}

/// An interaction payload, as [`parse`] and [`parse_form`] read it.
#[derive(Debug, Deserialize)]
#[serde(try_from = "FlatPayload")]
pub enum Payload {
    BlockActions(BlockActions),
    ViewSubmission(ViewSubmission),
    /// `view_closed`, shortcuts, …: acknowledged, nothing else.
    Other,
}

/// A payload read in one pass, the fields of every kind side by side, then sorted by its
/// `type` ([`Payload::try_from`]). serde's internally tagged enums buffer the whole payload
/// (Slack's carry the entire message, blocks and all) before choosing a variant; under load
/// that buffering was a twentieth of the server's time.
#[derive(Deserialize)]
struct FlatPayload {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    user: Option<User>,
    #[serde(default)]
    api_app_id: Option<String>,
    #[serde(default)]
    trigger_id: Option<String>,
    #[serde(default)]
    container: Option<Container>,
    #[serde(default)]
    channel: Option<Channel>,
    #[serde(default)]
    response_url: Option<String>,
    #[serde(default)]
    actions: Vec<Action>,
    #[serde(default)]
    view: Option<View>,
}

impl TryFrom<FlatPayload> for Payload {
    type Error = &'static str;

    fn try_from(flat: FlatPayload) -> Result<Payload, Self::Error> {
        let user = || flat.user.ok_or("missing field `user`");
        Ok(match flat.kind.as_str() {
            "block_actions" => Payload::BlockActions(BlockActions {
                api_app_id: flat.api_app_id,
                trigger_id: flat.trigger_id,
                container: flat.container,
                channel: flat.channel,
                response_url: flat.response_url,
                actions: flat.actions,
                user: user()?,
            }),
            "view_submission" => Payload::ViewSubmission(ViewSubmission {
                api_app_id: flat.api_app_id,
                view: flat.view.ok_or("missing field `view`")?,
                user: user()?,
            }),
            _ => Payload::Other,
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct User {
    id: String,
}

#[derive(Debug)]
pub struct BlockActions {
    user: User,
    api_app_id: Option<String>,
    trigger_id: Option<String>,
    container: Option<Container>,
    channel: Option<Channel>,
    response_url: Option<String>,
    actions: Vec<Action>,
}

#[derive(Debug, Deserialize)]
pub struct Container {
    #[serde(default)]
    channel_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Channel {
    id: String,
}

#[derive(Debug, Deserialize)]
pub struct Action {
    /// Empty for legacy attachment actions, which are read (every kind's fields are) but
    /// never acted on.
    #[serde(default)]
    action_id: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug)]
pub struct ViewSubmission {
    user: User,
    api_app_id: Option<String>,
    view: View,
}

#[derive(Debug, Deserialize)]
pub struct View {
    #[serde(default)]
    callback_id: String,
    #[serde(default)]
    private_metadata: String,
    #[serde(default)]
    state: ViewState,
}

#[derive(Debug, Default, Deserialize)]
pub struct ViewState {
    /// block_id → action_id → the input's state.
    #[serde(default)]
    values: BTreeMap<String, BTreeMap<String, InputState>>,
}

#[derive(Debug, Deserialize)]
pub struct InputState {
    #[serde(default)]
    value: Option<String>,
}

/// An HTTP body (`application/x-www-form-urlencoded`) as the interaction it carries: the
/// form's `payload` field, read as JSON, then [`parse`]. Pure (no I/O, no state), so it can be
/// fuzzed: whatever the bytes, an error and never a panic.
pub fn parse_form(body: &[u8]) -> Result<Payload, BadPayload> {
    let form: InteractionForm = form_fields(body)?;
    // Straight from the text: no intermediate `Value` tree on every click.
    serde_json::from_str(&form.payload)
        .map_err(|e| BadPayload(format!("not an interaction payload: {e}")))
}

/// A JSON payload (the form's `payload` field, or a Socket Mode envelope's payload) as its
/// [`Payload`].
pub fn parse(payload: Value) -> Result<Payload, BadPayload> {
    serde_json::from_value(payload)
        .map_err(|e| BadPayload(format!("not an interaction payload: {e}")))
}

/// `POST /slack/interactions`: the verified form, read by [`parse_form`], then handled as
/// [`receive`] handles it.
pub async fn handle(
    State(inbound): State<Arc<Inbound>>,
    Extension(_verified): Extension<VerifiedBody>,
    // The content type checked as axum's `Form` checks it; the bytes are the verified body.
    form: Result<RawForm, RawFormRejection>,
) -> Response {
    let body = match form {
        Ok(RawForm(body)) => body,
        Err(rejection) => return ApiError::bad_request(rejection.body_text()).into_response(),
    };
    match parse_form(&body) {
        Ok(payload) => respond(receive_parsed(&inbound, payload).await),
        Err(bad) => respond(Err(bad)),
    }
}

/// The interactions' one entry point, for HTTP (the form's `payload`) and Socket Mode (the
/// `interactive` envelope's payload). A click is handled in a task the answer waits for only
/// up to [`ACK_BUDGET`](crate::slack::http::ACK_BUDGET), and answered with a bare
/// acknowledgement (the user hears back ephemerally). A reject dialog's submission answers
/// `None` (Slack closes it) or `{"response_action":"errors",…}` (it stays open, saying why).
pub async fn receive(inbound: &Arc<Inbound>, payload: Value) -> Result<Answer, BadPayload> {
    receive_parsed(inbound, parse(payload)?).await
}

/// What [`receive`] does with a payload once it is read.
async fn receive_parsed(inbound: &Arc<Inbound>, payload: Payload) -> Result<Answer, BadPayload> {
    match payload {
        Payload::BlockActions(actions) => {
            if !inbound.is_our_app(actions.api_app_id.as_deref()) {
                let app = &actions.api_app_id;
                tracing::warn!(api_app_id = ?app, "ignoring a click for another app");
                return Ok(None);
            }
            // Acknowledged at once; the click is handled right after, as the service's
            // background work: bounded, so past its limit the acknowledgement waits (up to
            // the budget) for room, and finished before a graceful shutdown ends. Its first
            // step claims the delivery durably, so a repeat (same trigger) is handled once,
            // here or on another replica.
            let inbound = Arc::clone(inbound);
            let background = &inbound.app.sentinel.background();
            // Boxed here: the handling is a large future (kilobytes), and moving it by value
            // through every await on the way into the task showed up as memcpy under load.
            let work = Box::pin({
                let inbound = Arc::clone(&inbound);
                async move { claim_then_handle(&inbound, actions).await }
            });
            background.spawn(ACK_BUDGET, work).await;
            Ok(None)
        }
        Payload::ViewSubmission(submission) => {
            if !inbound.is_our_app(submission.api_app_id.as_deref())
                || submission.view.callback_id != REJECT_CALLBACK
            {
                return Ok(None);
            }
            let inbound = Arc::clone(inbound);
            let late = |answer: Option<Value>| async move {
                if let Some(answer) = answer {
                    tracing::warn!(%answer, "a reject dialog's answer came too late to show");
                }
            };
            let answer = within_budget(async move { submitted(&inbound, submission).await }, late);
            // `None`: Slack closes the dialog.
            Ok(answer.await.flatten())
        }
        Payload::Other => Ok(None),
    }
}

/// Claims a click's delivery (its trigger id), then handles it; a delivery seen before is
/// dropped, and a store that cannot be asked is explained to the user.
async fn claim_then_handle(inbound: &Arc<Inbound>, actions: BlockActions) {
    let claimed = match &actions.trigger_id {
        Some(trigger) => {
            let key = format!("slack:interaction:{trigger}");
            let store = &inbound.app.store;
            store
                .claim_once(&key, CLICK_DEDUP_TTL, Timestamp::now())
                .await
        }
        None => Ok(true),
    };
    // The handling is boxed only once the claim is won: a click waiting for its claim (up to
    // `Background::SIZE` of them when commits stall) then holds its payload and the claim,
    // a few hundred bytes, instead of the whole handling's future (19 KB in a dev build,
    // measured with `size_of_val`), which was most of the peak RSS under a click flood.
    match claimed {
        Ok(true) => Box::pin(clicked(inbound, actions)).await,
        Ok(false) => tracing::debug!("a click delivered again; already handled"),
        Err(e) => {
            tracing::error!(error = %e, "cannot claim a slack interaction");
            Box::pin(tell_clicker(inbound, &actions, &store_trouble())).await
        }
    }
}

/// Says `text` to whoever clicked, ephemerally, where they clicked.
async fn tell_clicker(inbound: &Inbound, payload: &BlockActions, text: &str) {
    let channel = payload
        .container
        .as_ref()
        .and_then(|c| c.channel_id.clone())
        .or_else(|| payload.channel.as_ref().map(|c| c.id.clone()));
    inbound
        .tell(
            channel.as_deref(),
            &payload.user.id,
            payload.response_url.as_deref(),
            text,
        )
        .await
}

/// A button click after its acknowledgement (claimed already: handled once), start to
/// finish, ending with an ephemeral word to the user.
async fn clicked(inbound: &Arc<Inbound>, payload: BlockActions) {
    let user = payload.user.id.clone();
    let channel = payload
        .container
        .as_ref()
        .and_then(|c| c.channel_id.clone())
        .or_else(|| payload.channel.as_ref().map(|c| c.id.clone()));
    let tell = |text: String| {
        let (channel, user, url) = (channel.clone(), user.clone(), payload.response_url.clone());
        async move {
            inbound
                .tell(channel.as_deref(), &user, url.as_deref(), &text)
                .await
        }
    };
    let Some(action) = payload.actions.first() else {
        return;
    };
    let Some(button) = Button::from_action_id(&action.action_id) else {
        // The status page link and anything else that is not a decision.
        return;
    };
    let card = action
        .value
        .as_deref()
        .and_then(|value| serde_json::from_str::<CardRef>(value).ok());
    let Some(card) = card else {
        let (action_id, value) = (&action.action_id, &action.value);
        tracing::warn!(%action_id, ?value, "a button without a card reference");
        return tell("That button does not point at an incident; nothing was changed.".into())
            .await;
    };
    let role = inbound.roles.role_of(&user).await;
    let Some(role) = role.filter(|role| role.allows(button.needs())) else {
        let has = role.map_or("you have no Sentinel role".to_owned(), |r| {
            format!("you are {r}")
        });
        tracing::info!(user, ?button, incident = %card.incident, "slack click refused");
        return tell(format!(
            "Sorry, to {} {} you need the {} role and {has}. Nothing was changed.",
            button.verb(),
            card.incident,
            button.needs()
        ))
        .await;
    };
    let actor = Actor::SlackUser {
        user_id: user.clone(),
        role,
    };
    let sentinel = &inbound.app.sentinel;
    let incident = match sentinel.incident(&card.incident).await {
        Ok(incident) => incident,
        Err(e) => return tell(explain(e)).await,
    };
    // Silencing and trusting do not depend on what the card showed: the fingerprint and the
    // fix that ran are the same.
    if !matches!(button, Button::Silence | Button::Trust) && !card_is_current(&card, &incident) {
        return tell(format!(
            "{} changed since this card was drawn (it is {} now); look again at the card, \
             then decide. Nothing was changed.",
            incident.id, incident.status
        ))
        .await;
    }
    let id = incident.id.clone();
    let id = &id;
    let said = match button {
        Button::Approve => match sentinel
            .approve_seen(incident, card.proposal(), &actor)
            .await
        {
            Ok(done) if done.status == Status::Approved => {
                format!(
                    "You approved the fix for {}; Sentinel is applying it.",
                    done.id
                )
            }
            Ok(done) => format!(
                "Your approval of {} is recorded; a second admin must approve too.",
                done.id
            ),
            Err(e) => explain(e),
        },
        Button::Reject => {
            match open_reject_dialog(inbound, payload.trigger_id.as_deref(), &card, &incident).await
            {
                Ok(()) => return,
                Err(why) => why,
            }
        }
        Button::Rollback => match sentinel.rollback(id, &actor).await {
            Ok(done) => format!(
                "You rolled back the fix for {} (now {}).",
                done.id, done.status
            ),
            Err(e) => explain(e),
        },
        Button::Trust => match crate::domain::TrustKey::of_incident(&incident) {
            None => format!("{id} has no fix to trust; nothing was changed."),
            Some(key) => match sentinel.grant_trust(key, Some(id), &actor).await {
                Ok(grant) => format!(
                    "You trusted {} (`{}`): from now on Sentinel runs it on its own, as low \
                     risk. `/sentinel trust revoke {}` ends it.",
                    escape(&grant.key.to_string()),
                    grant.id,
                    grant.id
                ),
                Err(e) => explain(e),
            },
        },
        Button::Stop => match sentinel.stop_seen(incident, &actor).await {
            Ok(done) => format!(
                "You stopped the scheduled fix for {}; nothing was run (it is {} now).",
                done.id, done.status
            ),
            Err(e) => explain(e),
        },
        Button::RunNow => match sentinel
            .run_now_seen(incident, card.proposal(), &actor)
            .await
        {
            Ok(done) => format!(
                "You ran the scheduled fix for {} now; Sentinel is applying it.",
                done.id
            ),
            Err(e) => explain(e),
        },
        Button::Silence => {
            let target = incident.fingerprint.as_str();
            let reason = format!("silenced from the card of {id}");
            match sentinel
                .silence(target, CARD_SILENCE, &reason, &actor)
                .await
            {
                Ok(silence) => format!(
                    "You silenced `{}` until {} (`{}`).",
                    escape(target),
                    silence.ends_at,
                    silence.id
                ),
                Err(e) => explain(e),
            }
        }
    };
    tell(said).await;
}

/// Opens the reject dialog for `incident`; the card reference rides in `private_metadata`.
async fn open_reject_dialog(
    inbound: &Inbound,
    trigger_id: Option<&str>,
    card: &CardRef,
    incident: &Incident,
) -> Result<(), String> {
    if incident.status != Status::AwaitingApproval {
        return Err(format!(
            "{} is {}, not awaiting approval; nothing to reject.",
            incident.id, incident.status
        ));
    }
    let (Some(slack), Some(trigger_id)) = (&inbound.slack, trigger_id) else {
        return Err(format!(
            "Cannot open the reject dialog here; use `/sentinel reject {} &lt;reason&gt;`.",
            incident.id
        ));
    };
    let rendered =
        blocks::render("reject_modal", &json!({ "incident": incident })).map_err(|e| {
            tracing::error!(error = %e, "cannot render the reject dialog");
            format!(
                "Cannot draw the reject dialog; use `/sentinel reject {} &lt;reason&gt;`.",
                incident.id
            )
        })?;
    let Some(mut view) = rendered.blocks.into_iter().next() else {
        return Err("The reject dialog is empty.".to_owned());
    };
    view["callback_id"] = json!(REJECT_CALLBACK);
    view["private_metadata"] =
        json!(serde_json::to_string(card).expect("a card reference serializes"));
    slack.api.views_open(trigger_id, &view).await.map_err(|e| {
        tracing::warn!(error = %e, "views.open failed");
        format!(
            "The reject dialog did not open ({e}); try again or use \
             `/sentinel reject {} &lt;reason&gt;`.",
            incident.id
        )
    })
}

/// The reject dialog's submission: `None` closes it; `Some(errors)` keeps it open and shows
/// why under the reason field.
async fn submitted(inbound: &Arc<Inbound>, submission: ViewSubmission) -> Option<Value> {
    let view = &submission.view;
    let (block_id, reason) = reason_input(&view.state);
    let errors = |message: String| {
        Some(json!({ "response_action": "errors", "errors": { block_id.clone(): message } }))
    };
    // The card reference Sentinel put there; a bare incident id (the template's own) is
    // accepted too, without the freshness check.
    let metadata = view.private_metadata.trim();
    let card = serde_json::from_str::<CardRef>(metadata).ok();
    let id = match &card {
        Some(card) => card.incident.clone(),
        None => match IncidentId::parse(metadata) {
            Ok(id) => id,
            Err(_) => return errors("This dialog does not name an incident.".to_owned()),
        },
    };
    let reason = reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > 2000) {
        return errors("The reason is longer than 2000 characters.".to_owned());
    }
    let user = submission.user.id;
    let role = inbound.roles.role_of(&user).await;
    let Some(role) = role.filter(|role| role.allows(Role::Operator)) else {
        let has = role.map_or("you have no Sentinel role".to_owned(), |r| {
            format!("you are {r}")
        });
        return errors(format!(
            "Rejecting needs the operator role and {has}. Nothing was changed."
        ));
    };
    let sentinel = &inbound.app.sentinel;
    if let Some(card) = &card {
        match sentinel.incident(&card.incident).await {
            Ok(incident) if !card_is_current(card, &incident) => {
                return errors(format!(
                    "{} changed since its card was drawn (it is {} now); look again. \
                     Nothing was changed.",
                    incident.id, incident.status
                ))
            }
            Ok(_) => {}
            Err(e) => return errors(explain(e)),
        }
    }
    let actor = Actor::SlackUser {
        user_id: user,
        role,
    };
    match sentinel.reject(&id, &actor, reason.as_deref()).await {
        Ok(_) => None,
        Err(e) => errors(explain(e)),
    }
}

/// The reason field: (its block id, what was typed). The input with action id `reason`,
/// else the first input there is.
fn reason_input(state: &ViewState) -> (String, Option<String>) {
    let mut first = None;
    for (block, actions) in &state.values {
        for (action, input) in actions {
            if action == "reason" {
                return (block.clone(), input.value.clone());
            }
            if first.is_none() {
                first = Some((block.clone(), input.value.clone()));
            }
        }
    }
    first.unwrap_or_else(|| ("reason".to_owned(), None))
}

fn store_trouble() -> String {
    crate::slack::commands::STORE_TROUBLE.to_owned()
}

/// A service error as the person sees it.
fn explain(error: ServiceError) -> String {
    match error {
        ServiceError::Store(e) => {
            tracing::error!(error = %e, "slack interaction failed in the store");
            store_trouble()
        }
        ServiceError::NotFound(what) => format!("{} not found.", escape(&what)),
        other => format!(
            "Refused: {}. Nothing was changed.",
            escape(&other.to_string())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Detection, Resource, Severity, Signal, SlackCard, Source};

    use crate::slack::http::GARBAGE;

    #[test]
    fn form_bodies_parse_or_are_refused() {
        let body = b"payload=%7B%22type%22%3A%22block_actions%22%2C%22user%22%3A%7B%22id%22%3A%22U1%22%7D%2C%22actions%22%3A%5B%7B%22action_id%22%3A%22approve%22%7D%5D%7D";
        let Payload::BlockActions(actions) = parse_form(body).unwrap() else {
            panic!("not block_actions")
        };
        assert_eq!(actions.user.id, "U1");
        assert_eq!(actions.actions[0].action_id, "approve");
        let closed = b"payload=%7B%22type%22%3A%22view_closed%22%7D&extra=1";
        assert!(matches!(parse_form(closed).unwrap(), Payload::Other));

        let missing = parse_form(b"token=x").unwrap_err();
        assert!(
            missing.0.starts_with("Failed to deserialize form body: "),
            "{missing}"
        );
        let not_json = parse_form(b"payload=%7B").unwrap_err();
        assert!(
            not_json.0.starts_with("not an interaction payload: "),
            "{not_json}"
        );
        for garbage in GARBAGE {
            assert!(parse_form(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn each_kind_of_payload_is_read_in_one_pass_and_sorted_by_its_type() {
        // As Slack sends a click: the whole message rides along and is skipped.
        let click = json!({
            "type": "block_actions",
            "user": {"id": "U1", "username": "ada", "team_id": "T1"},
            "api_app_id": "A1",
            "trigger_id": "1.2.3",
            "team": {"id": "T1", "domain": "acme"},
            "container": {"type": "message", "message_ts": "1.1", "channel_id": "C1"},
            "channel": {"id": "C1", "name": "ops"},
            "message": {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}]},
            "state": {"values": {}},
            "response_url": "https://hooks.slack.com/actions/x",
            "actions": [{"action_id": "approve", "value": "{}", "type": "button"}]
        });
        let Payload::BlockActions(actions) = parse(click).unwrap() else {
            panic!("not block_actions")
        };
        assert_eq!(actions.user.id, "U1");
        assert_eq!(actions.api_app_id.as_deref(), Some("A1"));
        assert_eq!(actions.trigger_id.as_deref(), Some("1.2.3"));
        assert_eq!(
            actions.container.and_then(|c| c.channel_id).as_deref(),
            Some("C1")
        );
        assert_eq!(actions.channel.map(|c| c.id).as_deref(), Some("C1"));
        assert_eq!(actions.actions[0].value.as_deref(), Some("{}"));

        let submission = json!({
            "type": "view_submission",
            "user": {"id": "U2"},
            "view": {
                "callback_id": REJECT_CALLBACK,
                "private_metadata": "{\"incident\":\"inc-1\",\"version\":3}",
                "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": "no"}}}}
            }
        });
        let Payload::ViewSubmission(submission) = parse(submission).unwrap() else {
            panic!("not view_submission")
        };
        assert_eq!(submission.user.id, "U2");
        assert_eq!(submission.view.callback_id, REJECT_CALLBACK);
        let reason = &submission.view.state.values["reason"]["reason"];
        assert_eq!(reason.value.as_deref(), Some("no"));

        for other in [
            "view_closed",
            "shortcut",
            "message_action",
            "block_suggestion",
        ] {
            let payload = json!({"type": other, "user": {"id": "U3"}, "view": {"id": "V1"}});
            assert!(matches!(parse(payload).unwrap(), Payload::Other), "{other}");
        }
        // A legacy attachment button: its actions have names, not action ids.
        let legacy = json!({
            "type": "interactive_message",
            "user": {"id": "U3", "name": "ada"},
            "channel": {"id": "C1", "name": "ops"},
            "actions": [{"name": "approve", "type": "button", "value": "yes"}],
            "callback_id": "legacy"
        });
        assert!(matches!(parse(legacy).unwrap(), Payload::Other));
        for (broken, why) in [
            (json!({"type": "block_actions", "actions": []}), "`user`"),
            (
                json!({"type": "view_submission", "user": {"id": "U1"}}),
                "`view`",
            ),
            (json!({"user": {"id": "U1"}}), "`type`"),
            (json!({"type": 7}), "invalid type"),
            (
                json!({"type": "block_actions", "user": "U1"}),
                "invalid type",
            ),
        ] {
            let error = parse(broken.clone()).unwrap_err();
            assert!(error.0.contains(why), "{broken}: {error}");
        }
    }

    #[test]
    fn a_click_on_the_home_tab_reads_like_a_card_click() {
        // As Slack sends a Home tab click: the view rides along; no channel, no message.
        let click = json!({
            "type": "block_actions",
            "user": {"id": "U1", "team_id": "T1"},
            "api_app_id": "A1",
            "trigger_id": "1.2.3",
            "team": {"id": "T1"},
            "container": {"type": "view", "view_id": "V0HOME1"},
            "view": {"id": "V0HOME1", "type": "home", "team_id": "T1", "hash": "1.2",
                     "blocks": [{"type": "divider"}], "private_metadata": "",
                     "callback_id": "", "state": {"values": {}}},
            "actions": [{"action_id": "approve", "block_id": "home_actions:inc-1",
                         "value": r#"{"incident":"inc-abc123","proposal":"prop-1"}"#,
                         "type": "button", "action_ts": "1.3"}]
        });
        let Payload::BlockActions(actions) = parse(click).unwrap() else {
            panic!("not block_actions")
        };
        assert!(actions.channel.is_none() && actions.response_url.is_none());
        assert_eq!(actions.container.and_then(|c| c.channel_id), None);
        let card: CardRef =
            serde_json::from_str(actions.actions[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(card.proposal(), Some("prop-1"));
    }

    fn incident() -> Incident {
        let detection = Detection {
            signal: Signal::HostCpu,
            resource: Resource::host(),
            severity: Severity::Warning,
            value: 97.0,
            threshold: 95.0,
            source: Source::Trigger,
            summary: "cpu".into(),
            labels: Default::default(),
        };
        Incident::open(IncidentId::generate(), &detection, Timestamp::now())
    }

    fn card(incident: &Incident, version: u64) -> CardRef {
        CardRef {
            incident: incident.id.clone(),
            drawn: Drawn::Version(version),
        }
    }

    #[test]
    fn a_click_is_fresh_while_its_proposal_is_current() {
        let mut now = incident();
        now.propose(
            crate::domain::ProposedAction {
                action: crate::domain::ActionId::NotifyOnly,
                params: Default::default(),
            },
            crate::domain::TargetState::nothing(),
        );
        let proposal = now.proposal_id.clone().unwrap();
        let clicked = CardRef {
            incident: now.id.clone(),
            drawn: Drawn::Proposal(proposal.clone()),
        };
        // However often the incident was written since.
        now.version = 40;
        assert!(card_is_current(&clicked, &now));
        // Another incident's card never acts on this one.
        let other = CardRef {
            incident: IncidentId::generate(),
            drawn: Drawn::Proposal(proposal),
        };
        assert!(!card_is_current(&other, &now));
        // A new snapshot is a new proposal: the old card is stale.
        now.propose(
            now.proposed_action.clone().unwrap(),
            crate::domain::TargetState::unreadable("docker: connection refused"),
        );
        assert!(!card_is_current(&clicked, &now));
    }

    #[test]
    fn a_legacy_click_is_current_while_the_card_shows_the_incident_as_it_is() {
        let mut now = incident();
        now.version = 7;
        // No card on screen: the exact version only.
        assert!(card_is_current(&card(&now, 7), &now));
        assert!(!card_is_current(&card(&now, 6), &now));
        assert!(!card_is_current(&card(&now, 8), &now));
        // Another incident's card never acts on this one.
        let other = CardRef {
            incident: IncidentId::generate(),
            drawn: Drawn::Version(7),
        };
        assert!(!card_is_current(&other, &now));
        // A card drawn from version 5, recorded since (bookkeeping bumped the version).
        now.slack = Some(SlackCard {
            channel: "C1".into(),
            ts: Some("1.2".into()),
            rendered_version: 5,
            digest: cards::card_digest(&now),
            ..SlackCard::default()
        });
        assert!(card_is_current(&card(&now, 5), &now));
        assert!(!card_is_current(&card(&now, 4), &now), "a replaced drawing");
        // Something the card shows changed and it is not redrawn yet: look again.
        now.record(
            "approval_recorded",
            "slack:U1 (admin)",
            "first of two",
            Timestamp::now(),
        );
        now.approvals.push("slack:U1 (admin)".into());
        assert!(!card_is_current(&card(&now, 5), &now));
    }

    #[test]
    fn button_values_are_card_references() {
        let value = r#"{"incident":"inc-abc123","proposal":"prop-0123abcd"}"#;
        let card: CardRef = serde_json::from_str(value).unwrap();
        assert_eq!(card.incident.as_str(), "inc-abc123");
        assert_eq!(card.proposal(), Some("prop-0123abcd"));
        assert_eq!(serde_json::to_string(&card).unwrap(), value);
        let legacy: CardRef =
            serde_json::from_str(r#"{"incident":"inc-abc123","version":4}"#).unwrap();
        assert_eq!(legacy.drawn, Drawn::Version(4));
        for bad in [
            r#"{"incident":"../etc","version":4}"#,
            r#"{"incident":"inc-abc123"}"#,
            r#"{"incident":"inc-abc123","version":-1}"#,
            r#"{"incident":"inc-abc123","proposal":"<script>"}"#,
            r#"{"incident":"inc-abc123","proposal":"prop-1","extra":1}"#,
            "inc-abc123",
        ] {
            assert!(serde_json::from_str::<CardRef>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn buttons_need_the_specs_roles() {
        assert_eq!(Button::from_action_id("approve"), Some(Button::Approve));
        assert_eq!(Button::from_action_id("status_page"), None);
        assert_eq!(Button::Approve.needs(), Role::Operator);
        assert_eq!(Button::Reject.needs(), Role::Operator);
        assert_eq!(Button::Silence.needs(), Role::Operator);
        assert_eq!(Button::Rollback.needs(), Role::Admin);
        assert_eq!(Button::from_action_id("trust"), Some(Button::Trust));
        assert_eq!(Button::Trust.needs(), Role::Admin);
    }
}
