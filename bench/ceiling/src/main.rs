//! The ceiling: what any Slack app must do for a slash command or a button click, and
//! nothing else. It checks `X-Slack-Signature` (HMAC-SHA256 of `v0:{timestamp}:{body}`, in
//! constant time) and the timestamp's 5-minute window, parses the form (the command's
//! fields; the click's `payload` field as JSON), and answers fixed JSON. No store, no roles,
//! no rendering: Sentinel's acknowledgements are measured against it in the same run.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

#[derive(Clone)]
struct Secret(std::sync::Arc<[u8]>);

#[derive(Deserialize)]
#[allow(dead_code)] // parsed to pay the same cost a real app pays; not otherwise read
struct Command {
    command: String,
    text: String,
    user_id: String,
    channel_id: String,
    response_url: String,
    trigger_id: String,
}

#[derive(Deserialize)]
struct Interaction {
    payload: String,
}

fn verified(secret: &Secret, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(timestamp), Some(signature)) = (
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
    ) else {
        return false;
    };
    let Ok(sent) = timestamp.parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now.abs_diff(sent) > 300 {
        return false;
    }
    let Some(hex_signature) = signature.strip_prefix("v0=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_signature) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

async fn command(
    axum::extract::State(secret): axum::extract::State<Secret>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !verified(&secret, &headers, &body) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match serde_urlencoded::from_bytes::<Command>(&body) {
        Ok(_) => Json(json!({
            "response_type": "ephemeral",
            "text": "Sentinel is watching 6 signals; no open incidents.",
        }))
        .into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn interaction(
    axum::extract::State(secret): axum::extract::State<Secret>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !verified(&secret, &headers, &body) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(form) = serde_urlencoded::from_bytes::<Interaction>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match serde_json::from_str::<serde_json::Value>(&form.payload) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:28475".to_owned())
        .parse()
        .expect("usage: sentinel-ceiling ADDR SIGNING_SECRET");
    let secret = args.next().expect("usage: sentinel-ceiling ADDR SIGNING_SECRET");
    let app = Router::new()
        .route("/slack/commands", post(command))
        .route("/slack/interactions", post(interaction))
        .with_state(Secret(secret.into_bytes().into()));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
