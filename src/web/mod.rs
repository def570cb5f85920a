//! The HTTP server: API, health, and (with later work) the status page, SSE, `/metrics` and
//! the Slack endpoints.
//!
//! In: HTTP requests. Out: JSON. [`routes`] is the one table of every route with who may
//! call it; [`router`] builds the server from that table, so access rules cannot drift from
//! the routes, and the RBAC sweep in `tests/it/rbac.rs` checks the table is complete.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod error;
pub mod last_known;
pub mod page;
pub mod server;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::domain::Role;
use crate::service::Sentinel;
use auth::ApiKeys;
use error::ApiError;

/// What every handler can reach.
pub struct AppContext {
    pub sentinel: Arc<Sentinel>,
    /// The store, for the doors' own bookkeeping: delivery claims of Slack events, clicks
    /// and commands. Incidents are read and changed through `sentinel`.
    pub store: crate::store::SharedStore,
    pub keys: ApiKeys,
    pub body_limit: usize,
    /// The live stream's fan-out, shared by every `GET /api/stream` client.
    pub stream: Arc<stream::Hub>,
    /// The last status read, shown while the store does not answer.
    pub last_known: last_known::LastKnown,
}

pub type AppState = Arc<AppContext>;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, no key needed (health, status).
    Public,
    /// An `X-API-Key` whose role is at least this.
    AtLeast(Role),
    /// `Authorization: Bearer` with `[alertmanager] bearer_token`; always 401 while none is
    /// configured.
    AlertToken,
    /// A valid Slack request signature (`slack::verify`); every Slack route answers 404 while
    /// no signing secret is configured. These routes come from `slack::http::router`.
    SlackSignature,
}

/// One route of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

fn route<H, T>(
    method: Method,
    path: &'static str,
    access: Access,
    handler: H,
) -> (RouteSpec, MethodRouter<AppState>)
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
    (
        RouteSpec {
            method,
            path,
            access,
        },
        on(filter, handler),
    )
}

/// Every route with its access rule (SPEC §7).
fn route_handlers() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use Access::{AtLeast, Public};
    vec![
        route(Method::GET, "/", Public, page::page),
        route(
            Method::GET,
            "/assets/sentinel.css",
            Public,
            page::stylesheet,
        ),
        route(Method::GET, "/assets/sentinel.js", Public, page::script),
        route(Method::GET, "/api/stream", Public, stream::stream),
        route(Method::GET, "/metrics", Public, api::metrics),
        route(Method::GET, "/healthz", Public, api::healthz),
        route(Method::GET, "/readyz", Public, api::readyz),
        route(Method::GET, "/api/status", Public, api::status),
        route(
            Method::GET,
            "/api/infrastructure-status",
            Public,
            api::infrastructure_status,
        ),
        route(
            Method::GET,
            "/api/approvals/pending",
            AtLeast(Role::Viewer),
            api::pending_approvals,
        ),
        route(
            Method::GET,
            "/api/incidents",
            AtLeast(Role::Viewer),
            api::list_incidents,
        ),
        route(
            Method::GET,
            "/api/incidents/{id}",
            AtLeast(Role::Viewer),
            api::get_incident,
        ),
        route(
            Method::GET,
            "/api/incidents/{id}/postmortem",
            AtLeast(Role::Viewer),
            api::postmortem,
        ),
        // Operators may approve and reject medium risk; the handler asks for admin on high.
        route(
            Method::POST,
            "/api/incidents/{id}/approve",
            AtLeast(Role::Operator),
            api::approve,
        ),
        route(
            Method::POST,
            "/api/incidents/{id}/reject",
            AtLeast(Role::Operator),
            api::reject,
        ),
        // The veto window: anyone with a role may stop a scheduled fix; operators run it now.
        route(
            Method::POST,
            "/api/incidents/{id}/stop",
            AtLeast(Role::Viewer),
            api::stop,
        ),
        route(
            Method::POST,
            "/api/incidents/{id}/run-now",
            AtLeast(Role::Operator),
            api::run_now,
        ),
        route(
            Method::POST,
            "/api/incidents/{id}/resolve",
            AtLeast(Role::Operator),
            api::resolve,
        ),
        route(
            Method::POST,
            "/api/incidents/{id}/rollback",
            AtLeast(Role::Admin),
            api::rollback,
        ),
        route(
            Method::POST,
            "/api/trigger-alert",
            AtLeast(Role::Admin),
            api::trigger_alert,
        ),
        route(
            Method::POST,
            "/api/scenarios/{name}",
            AtLeast(Role::Admin),
            api::demo_scenario,
        ),
        route(Method::GET, "/api/audit", AtLeast(Role::Admin), api::audit),
        route(
            Method::GET,
            "/api/silences",
            AtLeast(Role::Viewer),
            api::list_silences,
        ),
        route(
            Method::POST,
            "/api/silences",
            AtLeast(Role::Operator),
            api::create_silence,
        ),
        route(
            Method::DELETE,
            "/api/silences/{id}",
            AtLeast(Role::Operator),
            api::delete_silence,
        ),
        route(
            Method::GET,
            "/api/trust",
            AtLeast(Role::Viewer),
            api::list_trust,
        ),
        route(
            Method::POST,
            "/api/trust",
            AtLeast(Role::Admin),
            api::grant_trust,
        ),
        route(
            Method::DELETE,
            "/api/trust/{id}",
            AtLeast(Role::Admin),
            api::revoke_trust,
        ),
        route(
            Method::POST,
            "/api/alertmanager",
            Access::AlertToken,
            api::alertmanager,
        ),
        route(
            Method::POST,
            "/api/alerts",
            Access::AlertToken,
            api::generic_alert,
        ),
    ]
}

/// The API's and the page's route table; [`crate::app::routes`] adds the other doors'.
pub fn routes() -> Vec<RouteSpec> {
    route_handlers().into_iter().map(|(spec, _)| spec).collect()
}

/// The whole HTTP application: these routes and `doors` (the Slack routes, with their own
/// verification), under one body limit, one fallback and one trace layer.
pub fn router(state: AppState, doors: Router<AppState>) -> Router {
    // Routes sharing a path (GET and POST /api/silences) share one method router.
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for (spec, handler) in route_handlers() {
        let handler = match spec.access {
            Access::Public => handler,
            Access::AtLeast(role) => handler.route_layer(middleware::from_fn_with_state(
                (state.clone(), role),
                require_role,
            )),
            Access::AlertToken => handler.route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_alert_token,
            )),
            Access::SlackSignature => unreachable!("the Slack door serves its own routes"),
        };
        match by_path.iter_mut().find(|(path, _)| *path == spec.path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(handler),
            None => by_path.push((spec.path, handler)),
        }
    }
    let mut router = Router::new();
    for (path, handler) in by_path {
        router = router.route(path, handler);
    }
    let body_limit = state.body_limit;
    router
        .merge(doors)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_large_bodies,
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                )
            }),
        )
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        // Outermost, so every error answer below it (the timeout's too) becomes JSON.
        .layer(middleware::from_fn(error::json_errors))
        .with_state(state)
}

/// Authenticates `X-API-Key` and checks the role the route needs; handlers then find the
/// caller as an `Extension<Actor>`.
async fn require_role(
    State((state, needed)): State<(AppState, Role)>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = request
        .headers()
        .get("x-api-key")
        .and_then(|value| value.to_str().ok());
    let actor = state
        .keys
        .authenticate(key)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let role = actor.role().unwrap_or(Role::Viewer);
    if !role.allows(needed) {
        return Err(ApiError::forbidden(format!(
            "this needs the {needed} role; your key has {role}"
        )));
    }
    request.extensions_mut().insert(actor);
    Ok(next.run(request).await)
}

/// Checks `Authorization: Bearer <token>` against `[alertmanager] bearer_token`, comparing
/// SHA-256 digests in constant time so neither content nor length leaks.
async fn require_alert_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    use secrecy::ExposeSecret;
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let settings = state.sentinel.settings();
    let Some(expected) = settings.alertmanager.bearer_token() else {
        return Err(ApiError::unauthorized(
            "no [alertmanager] bearer_token is configured, so alerts are refused",
        ));
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
    let presented = Sha256::digest(presented.trim().as_bytes());
    let expected = Sha256::digest(expected.expose_secret().as_bytes());
    if !bool::from(presented.ct_eq(&expected)) {
        return Err(ApiError::unauthorized("invalid bearer token"));
    }
    Ok(next.run(request).await)
}

/// Refuses a declared body over the limit before reading it (bodies without a length are
/// cut off by `DefaultBodyLimit` as they are read).
async fn refuse_large_bodies(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > state.body_limit) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {} bytes", state.body_limit),
        ));
    }
    Ok(next.run(request).await)
}
