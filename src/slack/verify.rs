//! Slack request verification: the one layer in front of every `/slack` route (SPEC §6).
//!
//! In: a request with `X-Slack-Request-Timestamp`, `X-Slack-Signature` and its raw body.
//! Out: the same request carrying a [`VerifiedBody`] extension (the exact bytes Slack
//! signed), or a 401 with an opaque body; nothing behind the layer runs for a request that
//! fails. The signature is `v0=` + hex HMAC-SHA256(signing secret, `v0:{ts}:{raw body}`),
//! compared in constant time ([`Mac::verify_slice`]); the timestamp must be within
//! [`MAX_SKEW_SECS`] of now in either direction, which bounds how long a captured request can
//! be replayed. Replays inside the window are the handlers' business (event ids are
//! deduplicated, decisions are compare-and-set).
//!
//! Without a signing secret Slack is off and every `/slack` route answers 404.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// How far a request's timestamp may be from now, either way (Slack: five minutes).
pub const MAX_SKEW_SECS: u64 = 300;

pub const SIGNATURE_HEADER: &str = "x-slack-signature";
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";

/// Why a request was refused. Logged, never shown to the caller: every refusal answers the
/// same opaque 401 so a prober learns nothing about which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no X-Slack-Request-Timestamp header")]
    MissingTimestamp,
    #[error("no X-Slack-Signature header")]
    MissingSignature,
    #[error("the timestamp is not a number of seconds")]
    MalformedTimestamp,
    #[error("the timestamp is more than five minutes from now")]
    OutsideWindow,
    #[error("the signature is not v0= and 64 hexadecimal digits")]
    MalformedSignature,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// The raw body of a verified Slack request, exactly as signed. Only [`require_signature`]
/// inserts it, so a handler that extracts it cannot run on an unverified request.
#[derive(Debug, Clone)]
pub struct VerifiedBody(pub Bytes);

/// Checks one request. `now` is Unix seconds, passed in so tests choose the clock.
pub fn verify(
    secret: &SecretString,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<(), VerifyError> {
    let timestamp = timestamp.ok_or(VerifyError::MissingTimestamp)?;
    let signature = signature.ok_or(VerifyError::MissingSignature)?;
    // Digits only: `+5`, ` 5` or `5.0` would parse elsewhere but are not what Slack sends,
    // and the text is signed as is.
    if timestamp.is_empty()
        || timestamp.len() > 19
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(VerifyError::MalformedTimestamp);
    }
    let sent: u64 = timestamp
        .parse()
        .map_err(|_| VerifyError::MalformedTimestamp)?;
    if sent.abs_diff(now) > MAX_SKEW_SECS {
        return Err(VerifyError::OutsideWindow);
    }
    let hex_digits = signature
        .strip_prefix("v0=")
        .filter(|hex| hex.len() == 64)
        .ok_or(VerifyError::MalformedSignature)?;
    let expected = hex::decode(hex_digits).map_err(|_| VerifyError::MalformedSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| VerifyError::Mismatch)
}

/// What the layer needs: the signing secret (none: Slack is off) and the body limit.
pub struct Verifier {
    secret: Option<SecretString>,
    body_limit: usize,
}

impl Verifier {
    pub fn new(secret: Option<SecretString>, body_limit: usize) -> Arc<Self> {
        Arc::new(Verifier { secret, body_limit })
    }
}

/// The answer to every request that does not verify.
fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({ "error": "unauthorized" })),
    )
        .into_response()
}

/// The answer while no signing secret is configured.
pub fn not_configured() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": "slack is not configured" })),
    )
        .into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The layer: reads the whole body (up to the body limit), verifies it, and passes the
/// request on with the same body and a [`VerifiedBody`]; or answers 401 (404 while Slack is
/// not configured) without calling anything behind it.
pub async fn require_signature(
    State(verifier): State<Arc<Verifier>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(secret) = &verifier.secret else {
        return not_configured();
    };
    let (mut parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, verifier.body_limit).await {
        Ok(body) => body,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(serde_json::json!({ "error": "request body is too large" })),
            )
                .into_response()
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let checked = verify(
        secret,
        header(&parts.headers, TIMESTAMP_HEADER),
        header(&parts.headers, SIGNATURE_HEADER),
        &body,
        now,
    );
    if let Err(why) = checked {
        tracing::warn!(path = %parts.uri.path(), reason = %why, "slack request refused");
        return refused();
    }
    parts.extensions.insert(VerifiedBody(body.clone()));
    next.run(Request::from_parts(parts, Body::from(body))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's worked example (docs.slack.dev, "Verifying requests from Slack"), byte for byte.
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TIMESTAMP: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    const THEN: u64 = 1_531_420_618;

    fn secret() -> SecretString {
        SecretString::from(SECRET)
    }

    fn check(timestamp: &str, signature: &str, body: &[u8], now: u64) -> Result<(), VerifyError> {
        verify(&secret(), Some(timestamp), Some(signature), body, now)
    }

    #[test]
    fn slacks_worked_example_verifies() {
        assert_eq!(check(TIMESTAMP, SIGNATURE, BODY.as_bytes(), THEN), Ok(()));
    }

    #[test]
    fn the_window_is_five_minutes_in_both_directions() {
        let body = BODY.as_bytes();
        assert_eq!(check(TIMESTAMP, SIGNATURE, body, THEN + 300), Ok(()));
        assert_eq!(check(TIMESTAMP, SIGNATURE, body, THEN - 300), Ok(()));
        assert_eq!(
            check(TIMESTAMP, SIGNATURE, body, THEN + 301),
            Err(VerifyError::OutsideWindow),
            "stale"
        );
        assert_eq!(
            check(TIMESTAMP, SIGNATURE, body, THEN - 301),
            Err(VerifyError::OutsideWindow),
            "dated in the future"
        );
    }

    #[test]
    fn any_change_to_body_timestamp_or_signature_is_refused() {
        let body = BODY.as_bytes();
        // One bit of the body.
        let mut flipped = body.to_vec();
        flipped[100] ^= 0x01;
        assert_eq!(
            check(TIMESTAMP, SIGNATURE, &flipped, THEN),
            Err(VerifyError::Mismatch)
        );
        // A trailing byte, or a byte less.
        assert_eq!(
            check(TIMESTAMP, SIGNATURE, format!("{BODY}&").as_bytes(), THEN),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(TIMESTAMP, SIGNATURE, &body[..body.len() - 1], THEN),
            Err(VerifyError::Mismatch)
        );
        // The old signature with a new timestamp (a replay made to look fresh).
        assert_eq!(
            check("1531420619", SIGNATURE, body, THEN),
            Err(VerifyError::Mismatch)
        );
        // One bit of the signature.
        let forged = SIGNATURE.replace("a2114d", "a2114e");
        assert_eq!(
            check(TIMESTAMP, &forged, body, THEN),
            Err(VerifyError::Mismatch)
        );
        // Another secret.
        assert_eq!(
            verify(
                &SecretString::from("8f742231b10e8888abcd99yyyzzz85a6"),
                Some(TIMESTAMP),
                Some(SIGNATURE),
                body,
                THEN
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn malformed_or_missing_headers_are_refused() {
        let body = BODY.as_bytes();
        let no_ts = verify(&secret(), None, Some(SIGNATURE), body, THEN);
        assert_eq!(no_ts, Err(VerifyError::MissingTimestamp));
        let no_sig = verify(&secret(), Some(TIMESTAMP), None, body, THEN);
        assert_eq!(no_sig, Err(VerifyError::MissingSignature));
        for timestamp in [
            "",
            "+1531420618",
            " 1531420618",
            "1531420618.0",
            "-1",
            "99999999999999999999",
        ] {
            assert_eq!(
                check(timestamp, SIGNATURE, body, THEN),
                Err(VerifyError::MalformedTimestamp),
                "{timestamp:?}"
            );
        }
        let upper = format!("V0={}", &SIGNATURE[3..]);
        let v1 = format!("v1={}", &SIGNATURE[3..]);
        let short = &SIGNATURE[..SIGNATURE.len() - 2];
        let not_hex = format!("v0={}", "zz".repeat(32));
        let bare = &SIGNATURE[3..];
        for signature in [upper.as_str(), &v1, short, &not_hex, bare, "", "v0="] {
            assert_eq!(
                check(TIMESTAMP, signature, body, THEN),
                Err(VerifyError::MalformedSignature),
                "{signature:?}"
            );
        }
        // Hex digits are case-insensitive.
        let shouting = format!("v0={}", SIGNATURE[3..].to_ascii_uppercase());
        assert_eq!(check(TIMESTAMP, &shouting, body, THEN), Ok(()));
    }
}
