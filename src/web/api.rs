//! JSON API handlers (SPEC §7). Each parses its input, calls the [`Sentinel`] service and
//! turns the result into JSON; the rules live in the service and the pipeline.
//!
//! [`Sentinel`]: crate::service::Sentinel

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::domain::{ActionId, Actor, IncidentId, Risk, Role, Severity, Signal, Status, Timestamp};
use crate::pipeline::detect::Scenario;
use crate::pipeline::intake::Intake;
use crate::pipeline::{approve, remediate};
use crate::service::ServiceError;
use crate::store::IncidentQuery;
use crate::web::alerts;
use crate::web::error::ApiError;
use crate::web::AppState;

/// `Json<T>` whose rejections are our JSON errors.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(ApiJson(value))
    }
}

/// `GET /metrics`: Sentinel's own metrics. The store-derived gauges are left out, not failed,
/// when the store cannot be read, so a scrape still shows why.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let gauges = match state.sentinel.store_gauges().await {
        Ok(gauges) => Some(gauges),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the status");
            None
        }
    };
    let text = crate::telemetry::metrics::metrics().render(gauges.as_ref());
    (
        [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        text,
    )
        .into_response()
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the store answers. Not ready is 503 with a plain reason; the backend's own
/// message goes to the log.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let backend = state.sentinel.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "not ready: the store does not answer");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the store does not answer",
        )
    })?;
    Ok(Json(json!({ "status": "ready", "store": backend })))
}

/// `GET /api/status`: 200 even while the store does not answer, then with the last known
/// state and `"store": {"ok": false, "since": …}`.
pub async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(state.last_known.status(&state.sentinel).await?).into_response())
}

/// `GET /api/infrastructure-status`: the signals and the last monitor cycle on the replica
/// that answers. Reads no store, so it answers while the store is away.
pub async fn infrastructure_status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let sentinel = &state.sentinel;
    Json(json!({
        "signals": sentinel.signal_readings(),
        "last_cycle": sentinel.last_cycle(),
    }))
}

/// One incident waiting for a person's decision, as `GET /api/approvals/pending` lists it.
#[derive(Debug, Serialize)]
pub struct PendingApproval {
    pub incident: IncidentId,
    pub fingerprint: String,
    pub signal: Signal,
    pub resource: String,
    pub severity: Severity,
    pub summary: String,
    /// The proposal an approval must name (`{"proposal_id": …}`) to apply.
    pub proposal_id: Option<String>,
    /// The catalogue action proposed, and its parameters.
    pub action: Option<ActionId>,
    pub params: BTreeMap<String, serde_json::Value>,
    pub risk: Option<Risk>,
    /// The least role that may approve or reject it.
    pub role_needed: Role,
    /// Approvals already given (the first of two under the two-person rule).
    pub approvals: Vec<String>,
    pub waiting_since: Timestamp,
    /// When the request escalates unanswered (`approval_timeout` after `waiting_since`).
    pub expires_at: Timestamp,
}

/// `GET /api/approvals/pending`: incidents waiting for a person, the soonest to expire first.
pub async fn pending_approvals(State(state): State<AppState>) -> Result<Response, ApiError> {
    let sentinel = &state.sentinel;
    let timeout = sentinel.settings().approval_timeout.0;
    let open = sentinel
        .incidents(IncidentQuery {
            open_only: true,
            limit: MAX_LIST_LIMIT,
        })
        .await?;
    let mut pending: Vec<PendingApproval> = open
        .into_iter()
        .filter(|incident| incident.status == Status::AwaitingApproval)
        .map(|incident| {
            let waiting_since = remediate::waiting_since(&incident);
            let (action, params) = match &incident.proposed_action {
                Some(proposed) => (Some(proposed.action), proposed.params.clone()),
                None => (None, BTreeMap::new()),
            };
            PendingApproval {
                role_needed: approve::needed_role(&incident),
                expires_at: waiting_since.saturating_add(timeout),
                waiting_since,
                fingerprint: incident.fingerprint.to_string(),
                signal: incident.signal,
                resource: incident.resource.to_string(),
                severity: incident.severity,
                summary: incident.summary,
                proposal_id: incident.proposal_id,
                action,
                params,
                risk: incident.risk,
                approvals: incident.approvals,
                incident: incident.id,
            }
        })
        .collect();
    pending.sort_by_key(|p| (p.expires_at, p.incident.clone()));
    Ok(Json(pending).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// `open` keeps unresolved incidents; `all` (the default) keeps everything.
    status: Option<String>,
    limit: Option<usize>,
}

pub const MAX_LIST_LIMIT: usize = 1000;

pub async fn list_incidents(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let open_only = match params.status.as_deref() {
        None | Some("all") => false,
        Some("open") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status must be \"open\" or \"all\", not {other:?}"
            )))
        }
    };
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIST_LIMIT}"
        )));
    }
    let incidents = state
        .sentinel
        .incidents(IncidentQuery { open_only, limit })
        .await?;
    Ok(Json(incidents).into_response())
}

pub async fn get_incident(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.sentinel.incident(&incident_id(&id)?).await?).into_response())
}

/// `GET /api/incidents/{id}/postmortem`: the incident's postmortem as Markdown
/// (`service::postmortem`), every statement citing its audit entry as `[#SEQ]`.
pub async fn postmortem(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, markdown) = state.sentinel.postmortem(&incident_id(&id)?).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/markdown; charset=utf-8",
        )],
        markdown,
    )
        .into_response())
}

/// The incident a path names; an id that cannot be one is not found, like one that is not
/// stored (the answer does not tell the two apart).
fn incident_id(raw: &str) -> Result<IncidentId, ApiError> {
    IncidentId::parse(raw).map_err(|_| ServiceError::NotFound(format!("incident {raw}")).into())
}

/// An optional JSON body: nothing (or white space) is `T::default()`, anything else must be
/// a valid `T` (400 otherwise).
fn optional_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    proposal_id: Option<String>,
}

/// The body is optional: `{"proposal_id": "prop-…"}` pins the approval to that proposal
/// (409 when it is no longer current), or nothing for the current one.
pub async fn approve(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let proposal = optional_body::<ApproveBody>(&body)?.proposal_id;
    let approved = state
        .sentinel
        .approve(&incident_id(&id)?, proposal.as_deref(), &actor)
        .await?;
    Ok(Json(approved).into_response())
}

/// `POST /api/incidents/{id}/stop` (viewer): stops a scheduled fix during its veto window.
/// No body.
pub async fn stop(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let stopped = state.sentinel.stop(&incident_id(&id)?, &actor).await?;
    Ok(Json(stopped).into_response())
}

/// `POST /api/incidents/{id}/run-now` (operator): runs a scheduled fix at once. The body is
/// optional: `{"proposal_id": "prop-…"}` pins it to that proposal (409 when not current).
pub async fn run_now(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let proposal = optional_body::<ApproveBody>(&body)?.proposal_id;
    let started = state
        .sentinel
        .run_now(&incident_id(&id)?, proposal.as_deref(), &actor)
        .await?;
    Ok(Json(started).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    reason: Option<String>,
}

/// The body is optional: `{"reason": "…"}` or nothing.
pub async fn reject(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let reason = optional_body::<RejectBody>(&body)?.reason;
    if reason.as_ref().is_some_and(|r| r.chars().count() > 2000) {
        return Err(ApiError::bad_request(
            "reason is longer than 2000 characters",
        ));
    }
    let incident = state
        .sentinel
        .reject(&incident_id(&id)?, &actor, reason.as_deref())
        .await?;
    Ok(Json(incident).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    note: Option<String>,
}

/// `POST /api/incidents/{id}/resolve`: the body is optional, `{"note": "…"}` or nothing.
pub async fn resolve(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let note = optional_body::<ResolveBody>(&body)?.note;
    let incident = state
        .sentinel
        .resolve(&incident_id(&id)?, note.as_deref(), &actor)
        .await?;
    Ok(Json(incident).into_response())
}

pub async fn rollback(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.sentinel.rollback(&incident_id(&id)?, &actor).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    scenario: String,
}

/// 201 with the new incident; 200 with the existing one when the fingerprint already had an
/// open incident (it is updated, never duplicated); 409 when a silence is in force.
pub async fn trigger_alert(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<TriggerBody>,
) -> Result<Response, ApiError> {
    let scenario: Scenario =
        body.scenario
            .parse()
            .map_err(|e: crate::pipeline::detect::UnknownScenario| {
                ApiError::bad_request(e.to_string())
            })?;
    match state.sentinel.trigger(scenario, &actor).await? {
        Intake::Opened(incident) => Ok((StatusCode::CREATED, Json(incident)).into_response()),
        Intake::Updated(incident) => Ok((StatusCode::OK, Json(incident)).into_response()),
        Intake::Silenced(silence) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "silenced until {} by {} (silence {})",
                silence.ends_at, silence.created_by, silence.id
            ),
        )),
    }
}

/// `POST /api/scenarios/{name}` (admin): sets up a demo scenario (`sandbox`, `container`,
/// `memory`: 201 with what was made) or resets them (`reset`: 200 with what was removed and
/// resolved). An unknown name is 404; Docker unreachable 503; a container of a demo name
/// that is not a demo container 409, with nothing changed.
pub async fn demo_scenario(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let scenario: crate::service::demo::DemoScenario =
        name.parse()
            .map_err(|e: crate::service::demo::UnknownDemoScenario| {
                ApiError::not_found(e.to_string())
            })?;
    let report = state.sentinel.demo(scenario, &actor).await?;
    let status = if scenario == crate::service::demo::DemoScenario::Reset {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(report)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Entries with a larger sequence number than this; 0 (the default) from the start.
    after: Option<u64>,
    /// At most this many (default 200, at most 1000).
    limit: Option<usize>,
}

/// `GET /api/audit?after=SEQ&limit=N`: a page of the trail, and the whole chain's check
/// (`truncated` when entries are missing from its end).
pub async fn audit(
    State(state): State<AppState>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    use crate::pipeline::audit::{DEFAULT_PAGE, MAX_PAGE};
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let report = state
        .sentinel
        .audit(params.after.unwrap_or(0), limit)
        .await?;
    Ok(Json(report).into_response())
}

pub async fn list_silences(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(state.sentinel.silences().await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceBody {
    /// A fingerprint (`host_cpu:host`) or a resource (`web-1`).
    target: String,
    /// Like `"1h"` or `"30m"`.
    duration: String,
    #[serde(default)]
    reason: String,
}

pub async fn create_silence(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<SilenceBody>,
) -> Result<Response, ApiError> {
    let length = crate::service::parse_length(&body.duration)?;
    let silence = state
        .sentinel
        .silence(&body.target, length, &body.reason, &actor)
        .await?;
    Ok((StatusCode::CREATED, Json(silence)).into_response())
}

pub async fn delete_silence(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.sentinel.unsilence(&id, &actor).await?;
    Ok(Json(json!({ "expired": id })).into_response())
}

/// Alertmanager's webhook: the whole payload is checked before any alert is applied.
pub async fn alertmanager(
    State(state): State<AppState>,
    ApiJson(payload): ApiJson<alerts::AlertmanagerPayload>,
) -> Result<Response, ApiError> {
    let updates = alerts::parse_alertmanager(&payload).map_err(ApiError::bad_request)?;
    Ok(Json(state.sentinel.apply_alerts(updates).await?).into_response())
}

/// A small generic alert: `{"name", "resource", "status", "severity", "summary", "labels"}`.
pub async fn generic_alert(
    State(state): State<AppState>,
    ApiJson(alert): ApiJson<alerts::GenericAlert>,
) -> Result<Response, ApiError> {
    let update = alerts::parse_generic(&alert).map_err(ApiError::bad_request)?;
    Ok(Json(state.sentinel.apply_alerts(vec![update]).await?).into_response())
}

/// `GET /api/trust`: the grants in force and every pair's run of verified approvals.
pub async fn list_trust(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(state.sentinel.trust().await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustBody {
    signal: String,
    action: String,
    /// The container the fix acts on, or `sandbox`.
    target: String,
}

/// `POST /api/trust` (admin): trusts a fix that earned it; 409 when it has not, or already is.
pub async fn grant_trust(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<TrustBody>,
) -> Result<Response, ApiError> {
    let key = crate::domain::TrustKey::parse(&body.signal, &body.action, &body.target)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let grant = state.sentinel.grant_trust(key, None, &actor).await?;
    Ok((StatusCode::CREATED, Json(grant)).into_response())
}

/// `DELETE /api/trust/{id}` (admin): withdraws a grant.
pub async fn revoke_trust(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let grant = state.sentinel.revoke_trust(&id, &actor).await?;
    Ok(Json(json!({ "revoked": grant })).into_response())
}
