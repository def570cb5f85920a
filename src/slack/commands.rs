//! `/sentinel <subcommand>` (SPEC §6), and `@sentinel <subcommand>` mentions, which
//! [`events`](crate::slack::events) hands here.
//!
//! In: the command text and who typed it. Out: a [`Reply`]: ephemeral for questions and
//! refusals, `in_channel` for changes, Block Kit from `blocks/` where there is a template.
//! [`SlashCommand::parse`] turns the text into an enum (unknown text is a value too, answered
//! with usage); one `match` in `dispatch` calls one function per command, and each
//! function's one-line doc comment is its help text (`usage · who · what`).
//!
//! Every change goes through the same [`Sentinel`](crate::service::Sentinel) calls as the
//! HTTP API, as `Actor::SlackUser`, so the audit log reads `slack:U… (role)`. Nobody without
//! the role a command needs changes anything. The answer (the HTTP body, or the payload of the
//! Socket Mode acknowledgement) comes within
//! [`ACK_BUDGET`](crate::slack::http::ACK_BUDGET): `check` always answers at once and posts
//! its result later; anything else that runs long is followed up the same way.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::RawFormRejection;
use axum::extract::{RawForm, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::domain::{Actor, IncidentId, Role, SilenceTarget, Status};
use crate::pipeline::detect::Scenario;
use crate::pipeline::intake::Intake;
use crate::service::ServiceError;
use crate::slack::blocks;
use crate::slack::blocks::escape;
use crate::slack::http::{
    form_fields, respond, within_budget, within_budget_inline, Answer, BadPayload, Inbound, Reply,
    Visibility,
};
use crate::slack::verify::VerifiedBody;
use crate::store::IncidentQuery;
use crate::web::error::ApiError;

/// A parsed `/sentinel` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlashCommand {
    Help,
    Status,
    Incidents,
    Show(IncidentId),
    Whoami,
    Approve(IncidentId),
    Reject(IncidentId, Option<String>),
    Resolve(IncidentId, Option<String>),
    Rollback(IncidentId),
    Silence {
        /// A fingerprint (`signal:resource`) or a resource.
        target: String,
        duration: Duration,
        reason: Option<String>,
    },
    /// A silence id (`sil-…`), or the target of the silences to end.
    Unsilence(String),
    Pause,
    Resume,
    Check,
    Trigger(Scenario),
    /// A demo scenario (`sandbox`, `container`, `memory`) or `reset`.
    Demo(crate::service::demo::DemoScenario),
    /// The incident's postmortem, posted in its thread.
    Postmortem(IncidentId),
    /// What happened in the last `duration` (default 8 h).
    Catchup(Duration),
    /// `trust list`: what Sentinel may do on its own, and what it is earning.
    TrustList,
    /// `trust grant <signal> <action> <target>`, as typed: the command reads it into a
    /// `TrustKey` and says what is wrong with it.
    TrustGrant {
        signal: String,
        action: String,
        target: String,
    },
    /// `trust revoke <trust id>`.
    TrustRevoke(String),
    /// Anything else, as typed: answered with usage.
    Unknown(String),
}

impl SlashCommand {
    /// Reads what follows `/sentinel` (or a mention of the bot). Never fails: text that is
    /// not a command, or a command with the wrong arguments, is `Unknown`.
    pub fn parse(text: &str) -> SlashCommand {
        let text = text.trim();
        parse_known(text).unwrap_or_else(|| SlashCommand::Unknown(text.to_owned()))
    }

    /// Whether the command only reads: such commands may run in the request itself, as
    /// stopping one halfway (the caller hung up) leaves nothing half done.
    pub fn only_reads(&self) -> bool {
        use SlashCommand::*;
        matches!(
            self,
            Help | Whoami | Unknown(_) | Status | Incidents | Show(_) | TrustList | Catchup(_)
        )
    }

    /// The role a command needs; `None`: anyone, even without a role.
    pub fn needs(&self) -> Option<Role> {
        use SlashCommand::*;
        match self {
            Help | Whoami | Unknown(_) => None,
            Status | Incidents | Show(_) | TrustList | Postmortem(_) | Catchup(_) => {
                Some(Role::Viewer)
            }
            // Operators decide on medium risk; the service asks for admin on high risk.
            Approve(_) | Reject(..) | Resolve(..) => Some(Role::Operator),
            Silence { .. } | Unsilence(_) | Check => Some(Role::Operator),
            Rollback(_) | Pause | Resume | Trigger(_) | Demo(_) => Some(Role::Admin),
            TrustGrant { .. } | TrustRevoke(_) => Some(Role::Admin),
        }
    }
}

fn parse_known(text: &str) -> Option<SlashCommand> {
    let mut words = text.split_whitespace();
    let Some(first) = words.next() else {
        return Some(SlashCommand::Help);
    };
    let args: Vec<&str> = words.collect();
    let id = |word: &str| IncidentId::parse(&word.to_ascii_lowercase()).ok();
    let command = match (first.to_ascii_lowercase().as_str(), args.as_slice()) {
        ("help", []) => SlashCommand::Help,
        ("status", []) => SlashCommand::Status,
        ("incidents", []) => SlashCommand::Incidents,
        ("show", [incident]) => SlashCommand::Show(id(incident)?),
        ("whoami", []) => SlashCommand::Whoami,
        ("approve", [incident]) => SlashCommand::Approve(id(incident)?),
        ("reject", [incident, ..]) => SlashCommand::Reject(id(incident)?, rest_after(text, 2)),
        ("resolve", [incident, ..]) => SlashCommand::Resolve(id(incident)?, rest_after(text, 2)),
        ("rollback", [incident]) => SlashCommand::Rollback(id(incident)?),
        ("silence", [target, duration, ..]) => SlashCommand::Silence {
            target: (*target).to_owned(),
            duration: humantime::parse_duration(duration).ok()?,
            reason: rest_after(text, 3),
        },
        ("unsilence", [target]) => SlashCommand::Unsilence((*target).to_owned()),
        ("pause", []) => SlashCommand::Pause,
        ("resume", []) => SlashCommand::Resume,
        ("check", []) => SlashCommand::Check,
        ("trigger", [scenario]) => {
            SlashCommand::Trigger(scenario.to_ascii_lowercase().parse().ok()?)
        }
        ("demo", [scenario]) => SlashCommand::Demo(scenario.to_ascii_lowercase().parse().ok()?),
        ("postmortem", [incident]) => SlashCommand::Postmortem(id(incident)?),
        ("catchup", []) => SlashCommand::Catchup(crate::slack::catchup::DEFAULT_WINDOW),
        ("catchup", [window]) => SlashCommand::Catchup(
            humantime::parse_duration(window)
                .ok()
                .filter(|w| !w.is_zero() && *w <= crate::slack::catchup::MAX_WINDOW)?,
        ),
        ("trust", [sub]) if sub.eq_ignore_ascii_case("list") => SlashCommand::TrustList,
        ("trust", [sub, signal, action, target]) if sub.eq_ignore_ascii_case("grant") => {
            SlashCommand::TrustGrant {
                signal: signal.to_ascii_lowercase(),
                action: action.to_ascii_lowercase(),
                target: (*target).to_owned(),
            }
        }
        ("trust", [sub, grant]) if sub.eq_ignore_ascii_case("revoke") => {
            SlashCommand::TrustRevoke((*grant).to_ascii_lowercase())
        }
        _ => return None,
    };
    Some(command)
}

/// The text after the first `words` words, its own spacing kept; `None` when empty.
fn rest_after(text: &str, words: usize) -> Option<String> {
    let mut rest = text;
    for _ in 0..words {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..];
    }
    Some(rest.trim())
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
}

/// Where a command came from and where its answers go.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub user_id: String,
    pub channel_id: String,
    pub reply_to: ReplyTo,
    /// A slash command's `trigger_id`: a command that changes something runs once per
    /// trigger id ([`COMMAND_DEDUP_TTL`]); a replay answers "already done". Mentions are
    /// deduplicated by their event id instead (`None` here).
    pub trigger_id: Option<String>,
}

/// How long a slash command's `trigger_id` is remembered (SPEC §12.3), in the store, so a
/// replay to any replica is recognised.
pub const COMMAND_DEDUP_TTL: Duration = Duration::from_secs(3600);

/// The answer to a replayed slash command.
pub const ALREADY_DONE: &str =
    "Already done: this command was delivered before, so nothing was changed this time.";

#[derive(Debug, Clone)]
pub enum ReplyTo {
    /// A slash command: the HTTP answer now, its `response_url` later.
    Slash { response_url: Option<String> },
    /// A mention: replies in the mention's thread, through the outbox.
    Thread { ts: String },
}

/// Answers a command line: the reply to give now. Anything that outlasts the acknowledgement
/// budget (and `check`, always) posts its result later through [`follow_up`].
pub async fn answer(inbound: &Arc<Inbound>, invocation: Invocation, text: &str) -> Reply {
    answer_command(inbound, invocation, SlashCommand::parse(text)).await
}

/// [`answer`] for a command line already parsed.
async fn answer_command(
    inbound: &Arc<Inbound>,
    invocation: Invocation,
    command: SlashCommand,
) -> Reply {
    let invocation = Arc::new(invocation);
    let only_reads = command.only_reads();
    let work = {
        let inbound = Arc::clone(inbound);
        let invocation = Arc::clone(&invocation);
        async move {
            let role = inbound.roles.role_of(&invocation.user_id).await;
            let ctx = Ctx {
                inbound: &inbound,
                invocation: &invocation,
                role,
            };
            if let Some(refusal) = refusal(&command, &invocation.user_id, role) {
                return refusal;
            }
            if !only_reads {
                if let Some(replayed) = claim_trigger(&inbound, &invocation).await {
                    return replayed;
                }
            }
            dispatch(&ctx, command).await
        }
    };
    let late = {
        let inbound = Arc::clone(inbound);
        let invocation = Arc::clone(&invocation);
        move |reply: Reply| async move { follow_up(&inbound, &invocation, &reply).await }
    };
    let answered = if only_reads {
        within_budget_inline(work, late).await
    } else {
        within_budget(work, late).await
    };
    answered.unwrap_or_else(|| {
        Reply::ephemeral("Still working on that; I will post the result here when it is done.")
    })
}

/// Claims a state-changing command's trigger id: `None` to go ahead, or the answer when it
/// was seen before (or the store cannot say).
async fn claim_trigger(inbound: &Inbound, invocation: &Invocation) -> Option<Reply> {
    let trigger = invocation.trigger_id.as_deref()?;
    let key = format!("slack:command:{trigger}");
    let store = &inbound.app.store;
    match store
        .claim_once(&key, COMMAND_DEDUP_TTL, crate::domain::Timestamp::now())
        .await
    {
        Ok(true) => None,
        Ok(false) => {
            tracing::info!(trigger, user = %invocation.user_id, "a slash command replayed; not run again");
            Some(Reply::ephemeral(ALREADY_DONE))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot claim a slash command's trigger id");
            Some(Reply::ephemeral(STORE_TROUBLE))
        }
    }
}

/// Posts a later answer where the command came from.
pub async fn follow_up(inbound: &Inbound, invocation: &Invocation, reply: &Reply) {
    match &invocation.reply_to {
        ReplyTo::Slash {
            response_url: Some(url),
        } => {
            let mut body = reply.to_json();
            body["replace_original"] = json!(false);
            inbound.post_to_response_url(url, &body).await;
        }
        ReplyTo::Slash { response_url: None } => {
            tracing::warn!("a slash command without a response_url: the late answer is dropped")
        }
        ReplyTo::Thread { ts } => {
            inbound
                .post_in_thread(&invocation.channel_id, ts, reply)
                .await
        }
    }
}

/// The refusal for someone without the role a command needs; `None`: go ahead.
fn refusal(command: &SlashCommand, user_id: &str, role: Option<Role>) -> Option<Reply> {
    let needed = command.needs()?;
    let has = match role {
        Some(role) if role.allows(needed) => return None,
        Some(role) => format!("you are {role}"),
        None => "you have no Sentinel role".to_owned(),
    };
    tracing::info!(user = user_id, ?command, %needed, "slack command refused");
    Some(Reply::ephemeral(format!(
        "Sorry <@{user_id}>, that needs the {needed} role and {has}. Nothing was changed."
    )))
}

/// What a command function sees.
struct Ctx<'a> {
    inbound: &'a Arc<Inbound>,
    invocation: &'a Arc<Invocation>,
    role: Option<Role>,
}

impl Ctx<'_> {
    fn sentinel(&self) -> &crate::service::Sentinel {
        &self.inbound.app.sentinel
    }

    /// The acting user. Only commands past [`refusal`] act, so the role is there; a missing
    /// one would fall back to the least.
    fn actor(&self) -> Actor {
        Actor::SlackUser {
            user_id: self.invocation.user_id.clone(),
            role: self.role.unwrap_or(Role::Viewer),
        }
    }

    fn user(&self) -> String {
        format!("<@{}>", self.invocation.user_id)
    }
}

/// An incident as the list templates (`blocks/incident_section.j2`) read it: only the
/// fields they show, so a status reply does not copy every timeline into the template.
fn listed(incident: &crate::domain::Incident) -> Value {
    json!({
        "id": incident.id,
        "severity": incident.severity,
        "signal": incident.signal,
        "resource": incident.resource,
        "status": incident.status,
        "value": incident.value,
        "threshold": incident.threshold,
        "risk": incident.risk,
        "opened_at": incident.opened_at,
        "summary": incident.summary,
        // A scheduled fix: when it runs, in words (`in 42 s`) and exactly.
        "runs_in": incident.runs_in_words(crate::domain::Timestamp::now()),
        "scheduled_for": incident.scheduled_for,
    })
}

/// The one dispatch: one function per command.
async fn dispatch(ctx: &Ctx<'_>, command: SlashCommand) -> Reply {
    use SlashCommand::*;
    match command {
        Help => help(ctx).await,
        Status => status(ctx).await,
        Incidents => incidents(ctx).await,
        Show(id) => show(ctx, id).await,
        Whoami => whoami(ctx).await,
        Approve(id) => approve(ctx, id).await,
        Reject(id, reason) => reject(ctx, id, reason).await,
        Resolve(id, note) => resolve(ctx, id, note).await,
        Rollback(id) => rollback(ctx, id).await,
        Silence {
            target,
            duration,
            reason,
        } => silence(ctx, target, duration, reason).await,
        Unsilence(target) => unsilence(ctx, target).await,
        Pause => pause(ctx).await,
        Resume => resume(ctx).await,
        Check => check(ctx).await,
        Trigger(scenario) => trigger(ctx, scenario).await,
        Demo(scenario) => demo(ctx, scenario).await,
        Postmortem(id) => postmortem(ctx, id).await,
        Catchup(window) => catchup(ctx, window).await,
        TrustList => trust_list(ctx).await,
        TrustGrant {
            signal,
            action,
            target,
        } => trust_grant(ctx, signal, action, target).await,
        TrustRevoke(grant) => trust_revoke(ctx, grant).await,
        Unknown(text) => unknown(ctx, text).await,
    }
}

/// Defines the command functions and [`HELP`], their one-line doc comments in order, so the
/// help text and the code cannot drift apart.
macro_rules! commands {
    ($($(#[doc = $doc:literal])+ async fn $name:ident $params:tt -> $ret:ty $body:block)+) => {
        $($(#[doc = $doc])+ async fn $name $params -> $ret $body)+

        /// Every command's doc comment, its lines joined: `` `usage` · who · what ``.
        const HELP: &[&str] = &[$(concat!($($doc),+)),+];
    };
}

commands! {
    /// `help` · anyone · this list
    async fn help(_ctx: &Ctx<'_>) -> Reply {
        let commands: Vec<Value> = HELP
            .iter()
            .filter_map(|line| help_entry(line))
            .map(|(usage, who, what)| {
                json!({ "usage": format!("/sentinel {usage}"), "who": who, "what": what })
            })
            .collect();
        let fallback = HELP
            .iter()
            .filter_map(|line| help_entry(line))
            .map(|(usage, who, what)| escape(&format!("`/sentinel {usage}` ({who}): {what}")))
            .collect::<Vec<_>>()
            .join("\n");
        render(Visibility::Ephemeral, "help", &json!({ "commands": commands }), fallback)
    }

    /// `whoami` · anyone · your Slack id and your Sentinel role
    async fn whoami(ctx: &Ctx<'_>) -> Reply {
        let user = &ctx.invocation.user_id;
        Reply::ephemeral(match ctx.role {
            Some(role) => format!("You are <@{user}> (`{user}`); your Sentinel role is {role}."),
            None => format!("You are <@{user}> (`{user}`); you have no Sentinel role."),
        })
    }

    /// `status` · viewer · health of every signal and the open incidents
    async fn status(ctx: &Ctx<'_>) -> Reply {
        ctx.inbound
            .status_reply(|| async { status_afresh(ctx).await })
            .await
    }

    /// `incidents` · viewer · the open incidents
    async fn incidents(ctx: &Ctx<'_>) -> Reply {
        let query = IncidentQuery { open_only: true, limit: 20 };
        let incidents = match ctx.sentinel().incidents(query).await {
            Ok(incidents) => incidents,
            Err(e) => return failed(e),
        };
        let mut fallback = format!("{} open incidents", incidents.len());
        for incident in &incidents {
            let summary = escape(&incident.summary);
            let _ = write!(fallback, "\n• {} {summary} ({})", incident.id, incident.status);
        }
        let listed: Vec<Value> = incidents.iter().map(listed).collect();
        render(Visibility::Ephemeral, "incidents", &json!({ "incidents": listed }), fallback)
    }

    /// `show <id>` · viewer · one incident with its timeline
    async fn show(ctx: &Ctx<'_>, id: IncidentId) -> Reply {
        let incident = match ctx.sentinel().incident(&id).await {
            Ok(incident) => incident,
            Err(e) => return failed(e),
        };
        let summary = escape(&incident.summary);
        let fallback = format!("{}: {summary} ({})", incident.id, incident.status);
        render(Visibility::Ephemeral, "incident_detail", &json!({ "incident": incident }), fallback)
    }

    /// `approve <id>` · operator (medium risk), admin (high risk) · approve the proposed fix,
    /// like the Approve button
    async fn approve(ctx: &Ctx<'_>, id: IncidentId) -> Reply {
        match ctx.sentinel().approve(&id, None, &ctx.actor()).await {
            Ok(incident) if incident.status == Status::Approved => Reply::in_channel(format!(
                "{} approved {}: {}. Sentinel is applying the fix.",
                ctx.user(), incident.id, proposal(&incident)
            )),
            Ok(incident) => Reply::in_channel(format!(
                "{} gave the first of two approvals for {}: {}. A second admin must approve.",
                ctx.user(), incident.id, proposal(&incident)
            )),
            Err(e) => failed(e),
        }
    }

    /// `reject <id> [reason]` · operator (medium risk), admin (high risk) · reject the
    /// proposed fix
    async fn reject(ctx: &Ctx<'_>, id: IncidentId, reason: Option<String>) -> Reply {
        if reason.as_ref().is_some_and(|r| r.chars().count() > 2000) {
            return Reply::ephemeral("The reason is longer than 2000 characters.");
        }
        match ctx.sentinel().reject(&id, &ctx.actor(), reason.as_deref()).await {
            Ok(incident) => Reply::in_channel(format!(
                "{} rejected the fix for {}{}",
                ctx.user(),
                incident.id,
                reason.map(|r| format!(": {}", escape(&r))).unwrap_or_default()
            )),
            Err(e) => failed(e),
        }
    }

    /// `resolve <id> [note]` · operator · close an incident by hand (not while its fix runs)
    async fn resolve(ctx: &Ctx<'_>, id: IncidentId, note: Option<String>) -> Reply {
        match ctx.sentinel().resolve(&id, note.as_deref(), &ctx.actor()).await {
            Ok(incident) => Reply::in_channel(format!(
                "{} resolved {} by hand{}",
                ctx.user(),
                incident.id,
                note.map(|n| format!(": {}", escape(&n))).unwrap_or_default()
            )),
            Err(e) => failed(e),
        }
    }

    /// `rollback <id>` · admin · roll back an executed fix
    async fn rollback(ctx: &Ctx<'_>, id: IncidentId) -> Reply {
        match ctx.sentinel().rollback(&id, &ctx.actor()).await {
            Ok(incident) => Reply::in_channel(format!(
                "{} rolled back the fix for {} (now {}).",
                ctx.user(), incident.id, incident.status
            )),
            Err(e) => failed(e),
        }
    }

    /// `silence <fingerprint or resource> <duration> [reason]` · operator · no new incidents
    /// for it until then
    async fn silence(
        ctx: &Ctx<'_>,
        target: String,
        duration: Duration,
        reason: Option<String>,
    ) -> Reply {
        let reason = reason.unwrap_or_default();
        match ctx.sentinel().silence(&target, duration, &reason, &ctx.actor()).await {
            Ok(silence) => Reply::in_channel(format!(
                "{} silenced `{}` until {} (`{}`). `/sentinel unsilence {}` ends it.",
                ctx.user(), escape(&target), silence.ends_at, silence.id, silence.id
            )),
            Err(e) => failed(e),
        }
    }

    /// `unsilence <silence id, fingerprint or resource>` · operator · end a silence now
    async fn unsilence(ctx: &Ctx<'_>, target: String) -> Reply {
        let sentinel = ctx.sentinel();
        let ids: Vec<String> = if target.starts_with("sil-") {
            vec![target.clone()]
        } else {
            let wanted = SilenceTarget::parse(&target);
            match sentinel.silences().await {
                Ok(silences) => silences
                    .into_iter()
                    .filter(|s| s.target == wanted)
                    .map(|s| s.id)
                    .collect(),
                Err(e) => return failed(e),
            }
        };
        if ids.is_empty() {
            return Reply::ephemeral(format!("No silence in force for `{}`.", escape(&target)));
        }
        for id in &ids {
            if let Err(e) = sentinel.unsilence(id, &ctx.actor()).await {
                return failed(e);
            }
        }
        Reply::in_channel(format!(
            "{} ended the silence on `{}` ({}).",
            ctx.user(),
            escape(&target),
            escape(&ids.join(", "))
        ))
    }

    /// `pause` · admin · stop all automatic execution
    async fn pause(ctx: &Ctx<'_>) -> Reply {
        set_paused(ctx, true).await
    }

    /// `resume` · admin · restart automatic execution
    async fn resume(ctx: &Ctx<'_>) -> Reply {
        set_paused(ctx, false).await
    }

    /// `check` · operator · run a monitoring cycle now
    async fn check(ctx: &Ctx<'_>) -> Reply {
        let inbound = Arc::clone(ctx.inbound);
        let invocation = Arc::clone(ctx.invocation);
        let user = ctx.user();
        tokio::spawn(async move {
            let report = inbound.monitor.check_now().await;
            let reply = Reply::in_channel(format!("{user}'s check: {}", cycle_summary(&report)));
            follow_up(&inbound, &invocation, &reply).await;
        });
        Reply::in_channel(format!(
            "{} asked for a check: running a monitoring cycle now.",
            ctx.user()
        ))
    }

    /// `trigger <memory|cpu|disk|latency|container|sandbox>` · admin · inject a test alert
    async fn trigger(ctx: &Ctx<'_>, scenario: Scenario) -> Reply {
        match ctx.sentinel().trigger(scenario, &ctx.actor()).await {
            Ok(Intake::Opened(incident)) => Reply::in_channel(format!(
                "{} injected a {scenario} test alert: opened {}. Its fix will only be a dry run.",
                ctx.user(), incident.id
            )),
            Ok(Intake::Updated(incident)) => Reply::in_channel(format!(
                "{} injected a {scenario} test alert: {} was already open and is updated.",
                ctx.user(), incident.id
            )),
            Ok(Intake::Silenced(silence)) => Reply::ephemeral(format!(
                "A silence is in force until {} (`{}`, by {}): no incident was opened.",
                silence.ends_at, silence.id, silence.created_by
            )),
            Err(e) => failed(e),
        }
    }

    /// `demo <sandbox|container|memory|reset>` · admin · stage a real, harmless problem to watch Sentinel fix, or remove it
    async fn demo(ctx: &Ctx<'_>, scenario: crate::service::demo::DemoScenario) -> Reply {
        use crate::service::demo::DemoError;
        match ctx.sentinel().demo(scenario, &ctx.actor()).await {
            Ok(report) => Reply::in_channel(format!(
                "{} ran the {scenario} demo: {}.",
                ctx.user(),
                escape(&report.message)
            )),
            Err(DemoError::Service(e)) => failed(e),
            Err(e) => Reply::ephemeral(format!("The {scenario} demo failed: {}.", escape(&e.to_string()))),
        }
    }

    /// `trust list` · viewer · the fixes Sentinel may run on its own, and those it is earning
    async fn trust_list(ctx: &Ctx<'_>) -> Reply {
        let report = match ctx.sentinel().trust().await {
            Ok(report) => report,
            Err(e) => return failed(e),
        };
        let mut text = if report.grants.is_empty() {
            "Sentinel is trusted with no fix yet: every medium-risk fix waits for a person.".to_owned()
        } else {
            let mut text = format!("Sentinel runs these fixes on its own ({}):", report.grants.len());
            for grant in &report.grants {
                let _ = write!(
                    text,
                    "\n• {} (`{}`, granted by {} on {})",
                    escape(&grant.key.to_string()), grant.id, escape(&grant.granted_by), grant.granted_at
                );
            }
            text
        };
        let earning: Vec<_> = report.runs.iter().filter(|run| run.trusted.is_none()).collect();
        if !earning.is_empty() {
            let _ = write!(text, "\nApproved fixes that verified, in a row (trust after {}):", report.trust_after);
            for run in earning {
                let _ = write!(
                    text,
                    "\n• {}: {}{}",
                    escape(&run.run.key.to_string()),
                    run.run.verified_in_a_row,
                    if run.earned { " (earned: `/sentinel trust grant` it)" } else { "" }
                );
            }
        }
        Reply::ephemeral(text)
    }

    /// `trust grant <signal> <action> <target>` · admin · let Sentinel run a fix that earned it on its own
    async fn trust_grant(ctx: &Ctx<'_>, signal: String, action: String, target: String) -> Reply {
        let key = match crate::domain::TrustKey::parse(&signal, &action, &target) {
            Ok(key) => key,
            Err(e) => return Reply::ephemeral(format!("Refused: {}. Nothing was changed.", escape(&e.to_string()))),
        };
        match ctx.sentinel().grant_trust(key, None, &ctx.actor()).await {
            Ok(grant) => Reply::in_channel(format!(
                "{} trusted {} (`{}`): from now on it runs on its own, as low risk. \
                 `/sentinel trust revoke {}` ends it.",
                ctx.user(), escape(&grant.key.to_string()), grant.id, grant.id
            )),
            Err(e) => failed(e),
        }
    }

    /// `trust revoke <trust id>` · admin · that fix waits for approval again
    async fn trust_revoke(ctx: &Ctx<'_>, grant: String) -> Reply {
        match ctx.sentinel().revoke_trust(&grant, &ctx.actor()).await {
            Ok(grant) => Reply::in_channel(format!(
                "{} revoked the trust in {} (`{}`): its fixes wait for approval again.",
                ctx.user(), escape(&grant.key.to_string()), grant.id
            )),
            Err(e) => failed(e),
        }
    }

    /// `postmortem <id>` · viewer · the incident's postmortem (summary, impact, timeline, decisions, each line citing its audit entry), posted in its thread
    async fn postmortem(ctx: &Ctx<'_>, id: IncidentId) -> Reply {
        use crate::service::postmortem::{split, SLACK_MARKDOWN_LIMIT};
        let (incident, markdown) = match ctx.sentinel().postmortem(&id).await {
            Ok(found) => found,
            Err(e) => return failed(e),
        };
        // Under Slack's 12,000 characters per message of markdown blocks, with room to spare.
        let pieces = split(&markdown, SLACK_MARKDOWN_LIMIT - 1000);
        let thread = incident.slack.as_ref().and_then(|card| Some((card.channel.clone(), card.ts.clone()?)));
        let (Some((channel, ts)), Some(_)) = (thread, &ctx.inbound.slack) else {
            // No card to thread on: the Markdown itself, to the person who asked.
            let mut reply = Reply::ephemeral(format!("Postmortem of {}", incident.id));
            let blocks = Arc::make_mut(&mut reply.blocks);
            *blocks = vec![json!({"type": "markdown", "text": pieces.first().cloned().unwrap_or_default()})];
            if pieces.len() > 1 {
                blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                    "Cut to fit one message; the whole postmortem is at `GET /api/incidents/{}/postmortem`.", incident.id)}]}));
            }
            return reply;
        };
        let total = pieces.len();
        for (n, piece) in pieces.into_iter().enumerate() {
            let text = if total > 1 {
                format!("Postmortem of {} (part {} of {total})", incident.id, n + 1)
            } else {
                format!("Postmortem of {}", incident.id)
            };
            let reply = Reply::new(
                Visibility::InChannel,
                text,
                vec![json!({"type": "markdown", "text": piece})],
            );
            ctx.inbound.post_in_thread(&channel, &ts, &reply).await;
        }
        Reply::ephemeral(format!(
            "Posted the postmortem of {} in its card's thread ({total} message{}).",
            incident.id,
            if total == 1 { "" } else { "s" }
        ))
    }

    /// `catchup [duration]` · viewer · what happened in the last 8 h (or the duration given): incidents opened and resolved, fixes, rollbacks, approvals waiting
    async fn catchup(ctx: &Ctx<'_>, window: Duration) -> Reply {
        let now = crate::domain::Timestamp::now();
        let since = crate::domain::Timestamp::from_unix_millis(
            now.unix_millis() - i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
        );
        let query = IncidentQuery { open_only: false, limit: crate::web::api::MAX_LIST_LIMIT };
        match ctx.sentinel().incidents(query).await {
            Ok(incidents) => Reply::ephemeral(crate::slack::catchup::render(
                &incidents,
                since,
                now,
                &ctx.sentinel().settings().rbac,
            )),
            Err(e) => failed(e),
        }
    }
}

/// Text that is not a command: the usage of the subcommand it starts with, or the help.
async fn unknown(ctx: &Ctx<'_>, text: String) -> Reply {
    let first = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let usage = HELP
        .iter()
        .filter_map(|line| help_entry(line))
        .find(|(usage, _, _)| usage.split_whitespace().next() == Some(first.as_str()));
    match usage {
        Some((usage, who, _)) => Reply::ephemeral(escape(&format!(
            "Usage: `/sentinel {usage}` ({who}). See `/sentinel help`."
        ))),
        None => {
            // Said first, in the blocks people see as well as in the notification text.
            let said = format!("I did not understand `{}`.", escape(text.trim()));
            let mut reply = help(ctx).await;
            reply.text = format!("{said} {}", reply.text);
            Arc::make_mut(&mut reply.blocks).insert(
                0,
                json!({
                    "type": "section",
                    "text": { "type": "mrkdwn", "text": format!("{said} This is what I can do:") },
                }),
            );
            reply
        }
    }
}

/// `(usage, who, what)` from a doc line `` `usage` · who · what ``.
fn help_entry(line: &str) -> Option<(&str, &str, &str)> {
    let mut parts = line.trim().splitn(3, " · ");
    let usage = parts.next()?.strip_prefix('`')?.strip_suffix('`')?;
    Some((usage, parts.next()?, parts.next()?))
}

/// Renders a template, or falls back to plain text (logged) if the template fails.
fn render(visibility: Visibility, template: &str, context: &Value, fallback: String) -> Reply {
    match blocks::render(template, context) {
        Ok(rendered) => Reply::rendered(visibility, rendered),
        Err(e) => {
            tracing::error!(template, error = %e, "cannot render a slack reply; sending text");
            Reply::new(visibility, fallback, Vec::new())
        }
    }
}

pub(crate) const STORE_TROUBLE: &str =
    "Sentinel cannot reach its store right now; nothing was changed. Try again shortly.";

/// A service error as the person sees it.
fn failed(error: ServiceError) -> Reply {
    match error {
        ServiceError::Store(e) => {
            tracing::error!(error = %e, "slack command failed in the store");
            Reply::ephemeral(STORE_TROUBLE)
        }
        ServiceError::NotFound(what) => Reply::ephemeral(format!("{} not found.", escape(&what))),
        other => Reply::ephemeral(format!("Refused: {}.", escape(&other.to_string()))),
    }
}

fn proposal(incident: &crate::domain::Incident) -> String {
    match &incident.proposed_action {
        Some(action) => format!("{} on {}", action.action, incident.resource),
        None => "no proposed fix".to_owned(),
    }
}

async fn set_paused(ctx: &Ctx<'_>, paused: bool) -> Reply {
    match ctx.sentinel().set_paused(paused, &ctx.actor()).await {
        Ok(true) => {}
        Ok(false) => {
            return Reply::ephemeral(if paused {
                "Automatic execution is already paused."
            } else {
                "Automatic execution is not paused."
            })
        }
        Err(e) => return failed(e),
    }
    Reply::in_channel(if paused {
        format!(
            "{} paused all automatic execution. Fixes now wait for approval; \
             `/sentinel resume` restarts it.",
            ctx.user()
        )
    } else {
        format!("{} resumed automatic execution.", ctx.user())
    })
}

fn cycle_summary(report: &crate::pipeline::monitor::CycleReport) -> String {
    let mut text = format!(
        "monitoring cycle {} in {} ms: {} readings, {} opened, {} updated, {} resolved, \
         {} silenced.",
        report.outcome,
        report.duration_ms,
        report.observations,
        report.opened,
        report.updated,
        report.resolved,
        report.silenced
    );
    for (signal, why) in &report.unavailable {
        let _ = write!(text, "\n• {signal} unavailable: {why}");
    }
    for error in &report.errors {
        let _ = write!(text, "\n• error: {error}");
    }
    text
}

/// The form Slack posts for a slash command.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CommandForm {
    pub command: String,
    pub text: String,
    pub user_id: String,
    pub channel_id: String,
    pub response_url: Option<String>,
    pub trigger_id: Option<String>,
    pub api_app_id: Option<String>,
    /// Slack's periodic certificate check for distributed apps: answered 200, nothing else.
    pub ssl_check: Option<String>,
}

/// An HTTP body (`application/x-www-form-urlencoded`) as the slash command it carries: the
/// form, and its `text` as a [`SlashCommand`]. Pure (no I/O, no state), so it can be fuzzed:
/// whatever the bytes, an error and never a panic. Whether the command is answered at all
/// (`ssl_check`, another app, no `user_id`) is [`receive`]'s business.
pub fn parse_form(body: &[u8]) -> Result<(CommandForm, SlashCommand), BadPayload> {
    let form: CommandForm = form_fields(body)?;
    let command = SlashCommand::parse(&form.text);
    Ok((form, command))
}

/// `POST /slack/commands`: the verified form, read by [`parse_form`], then handled as
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
        // The reply goes out as it is, serialised once (a kept status reply was already).
        Ok((form, command)) => match receive_parsed(&inbound, form, command).await {
            Ok(Some(reply)) => reply.into_response(),
            Ok(None) => respond(Ok(None)),
            Err(bad) => respond(Err(bad)),
        },
        Err(bad) => respond(Err(bad)),
    }
}

/// The slash command's one entry point, for HTTP (the form) and Socket Mode (the
/// `slash_commands` payload, the same fields as JSON strings): the reply to show now, within
/// [`ACK_BUDGET`](crate::slack::http::ACK_BUDGET); later answers go to `response_url`
/// ([`answer`]). `ssl_check` pings and other apps' commands get a bare acknowledgement.
pub async fn receive(inbound: &Arc<Inbound>, form: CommandForm) -> Result<Answer, BadPayload> {
    let command = SlashCommand::parse(&form.text);
    let reply = receive_parsed(inbound, form, command).await?;
    Ok(reply.map(|reply| reply.to_json()))
}

/// What [`receive`] does with a form and its command line once they are read.
async fn receive_parsed(
    inbound: &Arc<Inbound>,
    form: CommandForm,
    command: SlashCommand,
) -> Result<Option<Reply>, BadPayload> {
    if form.ssl_check.is_some() {
        return Ok(None);
    }
    if !inbound.is_our_app(form.api_app_id.as_deref()) {
        tracing::warn!(api_app_id = ?form.api_app_id, "ignoring a command for another app");
        return Ok(None);
    }
    if form.user_id.is_empty() {
        return Err(BadPayload("a slash command needs user_id".to_owned()));
    }
    let invocation = Invocation {
        user_id: form.user_id,
        channel_id: form.channel_id,
        reply_to: ReplyTo::Slash {
            response_url: form.response_url,
        },
        trigger_id: form.trigger_id.filter(|t| !t.is_empty()),
    };
    Ok(Some(answer_command(inbound, invocation, command).await))
}

/// The status reply made from the store and the readings; `true` when it may be kept
/// ready for the next asker (not an error, not the store-outage notice).
async fn status_afresh(ctx: &Ctx<'_>) -> (Reply, bool) {
    // While the store does not answer: the last known state, said as such.
    let report = match ctx
        .inbound
        .app
        .last_known
        .status(&ctx.inbound.app.sentinel)
        .await
    {
        Ok(report) => report,
        Err(e) => return (failed(e), false),
    };
    if let Some(since) = report.store.since.filter(|_| !report.store.ok) {
        let notice = Reply::ephemeral(format!(
            "Sentinel cannot reach its store since {since}; nothing can be changed until it \
             answers again. Last known state: {} mode{}, {} open incidents.",
            report.mode,
            if report.paused {
                ", automation paused"
            } else {
                ""
            },
            report.incidents.len()
        ));
        return (notice, false);
    }
    let fallback = format!(
        "Sentinel is in {} mode{}; {} signals, {} open incidents.",
        report.mode,
        if report.paused {
            ", automation paused"
        } else {
            ""
        },
        report.signals.len(),
        report.incidents.len()
    );
    let context = json!({
        "mode": report.mode,
        "paused": report.paused,
        "signals": report.signals,
        "incidents": report.incidents.iter().map(listed).collect::<Vec<_>>(),
        "public_url": ctx.sentinel().settings().public_url,
    });
    (
        render(Visibility::Ephemeral, "status", &context, fallback),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> IncidentId {
        IncidentId::parse(text).unwrap()
    }

    use crate::slack::http::GARBAGE;

    #[test]
    fn form_bodies_parse_or_are_refused() {
        let body = b"command=%2Fsentinel&text=approve+INC-abc123&user_id=U1&channel_id=C1\
            &response_url=https%3A%2F%2Fhooks.slack.com%2Fx&team_id=T1";
        let (form, command) = parse_form(body).unwrap();
        assert_eq!(form.user_id, "U1");
        assert_eq!(
            form.response_url.as_deref(),
            Some("https://hooks.slack.com/x")
        );
        assert_eq!(command, SlashCommand::Approve(id("inc-abc123")));
        let (form, command) = parse_form(b"ssl_check=1&token=x").unwrap();
        assert!(form.ssl_check.is_some() && form.user_id.is_empty());
        assert_eq!(command, SlashCommand::Help);

        let twice = parse_form(b"text=a&text=b").unwrap_err();
        assert!(
            twice.0.starts_with("Failed to deserialize form body: "),
            "{twice}"
        );
        // Every field is optional and bytes decode lossily: garbage is mostly an empty form.
        for garbage in GARBAGE {
            if let Ok((form, command)) = parse_form(garbage) {
                assert_eq!(command, SlashCommand::parse(&form.text), "{garbage:?}");
            }
        }
    }

    #[test]
    fn every_subcommand_parses() {
        use SlashCommand::*;
        let cases: Vec<(&str, SlashCommand)> = vec![
            ("", Help),
            ("help", Help),
            ("  HELP  ", Help),
            ("status", Status),
            ("incidents", Incidents),
            ("show inc-abc123", Show(id("inc-abc123"))),
            ("whoami", Whoami),
            ("approve inc-abc123", Approve(id("inc-abc123"))),
            ("approve INC-ABC123", Approve(id("inc-abc123"))),
            ("reject inc-abc123", Reject(id("inc-abc123"), None)),
            (
                "resolve inc-abc123 fixed by a deploy",
                Resolve(id("inc-abc123"), Some("fixed by a deploy".into())),
            ),
            (
                "reject inc-abc123   not  during the freeze ",
                Reject(id("inc-abc123"), Some("not  during the freeze".into())),
            ),
            ("rollback inc-abc123", Rollback(id("inc-abc123"))),
            (
                "silence host_cpu:host 1h",
                Silence {
                    target: "host_cpu:host".into(),
                    duration: Duration::from_secs(3600),
                    reason: None,
                },
            ),
            (
                "silence web-1 90m load test",
                Silence {
                    target: "web-1".into(),
                    duration: Duration::from_secs(5400),
                    reason: Some("load test".into()),
                },
            ),
            ("unsilence sil-abc", Unsilence("sil-abc".into())),
            ("unsilence web-1", Unsilence("web-1".into())),
            ("pause", Pause),
            ("resume", Resume),
            ("check", Check),
            ("trigger memory", Trigger(Scenario::Memory)),
            ("trigger CPU", Trigger(Scenario::Cpu)),
            (
                "demo sandbox",
                Demo(crate::service::demo::DemoScenario::Sandbox),
            ),
            (
                "demo Reset",
                Demo(crate::service::demo::DemoScenario::Reset),
            ),
            ("postmortem INC-abc123", Postmortem(id("inc-abc123"))),
            ("catchup", Catchup(Duration::from_secs(8 * 3600))),
            ("catchup 90m", Catchup(Duration::from_secs(5400))),
            ("catchup 7d", Catchup(Duration::from_secs(7 * 86_400))),
            ("trust list", TrustList),
            ("TRUST List", TrustList),
            (
                "trust grant container_down container_start Web-1",
                TrustGrant {
                    signal: "container_down".into(),
                    action: "container_start".into(),
                    target: "Web-1".into(),
                },
            ),
            ("trust revoke trust-abc", TrustRevoke("trust-abc".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(SlashCommand::parse(text), expected, "{text:?}");
        }
        for scenario in Scenario::ALL {
            assert_eq!(
                SlashCommand::parse(&format!("trigger {scenario}")),
                Trigger(scenario)
            );
        }
    }

    #[test]
    fn anything_else_is_unknown_as_typed() {
        for text in [
            "dance",
            "status now",
            "show",
            "show 42",
            "approve",
            "approve inc-x inc-y",
            "approve ../etc",
            "reject",
            "rollback inc-",
            "silence web-1",
            "silence web-1 soon",
            "unsilence",
            "trigger meteor",
            "demo",
            "demo meteor",
            "demo sandbox now",
            "pause everything",
            "postmortem",
            "postmortem 42",
            "catchup soon",
            "catchup 0s",
            "catchup 400d",
            "catchup 1h 2h",
            "trust",
            "trust me",
            "trust grant container_down container_start",
            "trust revoke",
            "trust list all",
        ] {
            assert_eq!(
                SlashCommand::parse(text),
                SlashCommand::Unknown(text.to_owned()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn roles_are_the_specs() {
        use SlashCommand::*;
        let table = [
            (Help, None),
            (Whoami, None),
            (Unknown("x".into()), None),
            (Status, Some(Role::Viewer)),
            (Incidents, Some(Role::Viewer)),
            (Show(id("inc-a")), Some(Role::Viewer)),
            (Approve(id("inc-a")), Some(Role::Operator)),
            (Reject(id("inc-a"), None), Some(Role::Operator)),
            (Resolve(id("inc-a"), None), Some(Role::Operator)),
            (Unsilence("x".into()), Some(Role::Operator)),
            (Check, Some(Role::Operator)),
            (Rollback(id("inc-a")), Some(Role::Admin)),
            (Pause, Some(Role::Admin)),
            (Resume, Some(Role::Admin)),
            (Trigger(Scenario::Cpu), Some(Role::Admin)),
            (Postmortem(id("inc-a")), Some(Role::Viewer)),
            (Catchup(Duration::from_secs(60)), Some(Role::Viewer)),
            (TrustList, Some(Role::Viewer)),
            (
                TrustGrant {
                    signal: "a".into(),
                    action: "b".into(),
                    target: "c".into(),
                },
                Some(Role::Admin),
            ),
            (TrustRevoke("trust-a".into()), Some(Role::Admin)),
            (
                Demo(crate::service::demo::DemoScenario::Memory),
                Some(Role::Admin),
            ),
        ];
        for (command, role) in table {
            assert_eq!(command.needs(), role, "{command:?}");
        }
        let viewer_approves = refusal(&Approve(id("inc-a")), "U1", Some(Role::Viewer)).unwrap();
        assert_eq!(viewer_approves.visibility, Visibility::Ephemeral);
        assert!(viewer_approves
            .text
            .contains("operator role and you are viewer"));
        assert!(refusal(&Whoami, "U1", None).is_none());
        assert!(refusal(&Status, "U1", None)
            .unwrap()
            .text
            .contains("no Sentinel role"));
        assert!(refusal(&Pause, "U1", Some(Role::Admin)).is_none());
    }

    #[test]
    fn every_help_line_has_usage_who_and_what() {
        assert_eq!(HELP.len(), 21, "one per command but Unknown");
        for line in HELP {
            let (usage, who, what) =
                help_entry(line).unwrap_or_else(|| panic!("malformed help line {line:?}"));
            assert!(
                !usage.is_empty() && !who.is_empty() && !what.is_empty(),
                "{line:?}"
            );
        }
        // Every usage's own example parses to its command (placeholders filled in).
        for line in HELP {
            let (usage, _, _) = help_entry(line).unwrap();
            let example = usage
                .replace("<id>", "inc-abc")
                .replace(" [reason]", "")
                .replace(" [note]", "")
                .replace("<fingerprint or resource>", "web-1")
                .replace("<duration>", "1h")
                .replace("<silence id, fingerprint or resource>", "web-1")
                .replace("<memory|cpu|disk|latency|container|sandbox>", "cpu")
                .replace("<sandbox|container|memory|reset>", "reset")
                .replace(
                    "<signal> <action> <target>",
                    "container_down container_start web",
                )
                .replace("<trust id>", "trust-abc")
                .replace(" [duration]", "");
            assert!(
                !matches!(SlashCommand::parse(&example), SlashCommand::Unknown(_)),
                "{example:?} from {line:?} does not parse"
            );
        }
    }
}
