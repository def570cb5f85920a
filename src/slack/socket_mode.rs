//! Slack Socket Mode (SPEC §6): with `SLACK_APP_TOKEN` (`xapp-…`) set, Sentinel dials out to
//! Slack over a WebSocket instead of needing a public URL for `/slack/*`.
//!
//! In: Slack's messages on the socket. `hello` marks the link up; an envelope
//! `{"type":"events_api"|"slash_commands"|"interactive","envelope_id","payload",
//! "accepts_response_payload"}` carries what would otherwise be POSTed to `/slack/events`,
//! `/slack/commands` or `/slack/interactions`; `{"type":"disconnect","reason":…}` (any reason:
//! `warning`, `refresh_requested`, `link_disabled`) ends the connection.
//!
//! Out: an acknowledgement `{"envelope_id":…}` for every envelope, and the same handling as
//! over HTTP: the payload goes to the same entry point ([`events::receive`],
//! [`commands::receive`], [`interactions::receive`]), so deduplication (`event_id`), roles,
//! the audit log and the replies are the HTTP path's. Events, and interactions that take no
//! response payload (button clicks), are acknowledged at once and handled after. A slash
//! command, or an interaction that takes a response payload (a dialog submission), is
//! acknowledged with the entry point's answer as `payload`; the entry point answers within
//! [`ACK_BUDGET`] and posts anything slower to the `response_url` later, exactly as over
//! HTTP. There is no signature to check: the socket was opened with the app token.
//!
//! The connection: `apps.connections.open` on `[slack] api_url` with the app token gives a
//! single-use `wss://` URL. A `disconnect` message, a socket that closes, fails or falls
//! silent, and a failed `apps.connections.open` or handshake all lead to the same place: a
//! jittered, doubling wait ([`INITIAL_BACKOFF`] to [`MAX_BACKOFF`]; back to the start once a
//! connection has stayed up for [`STABLE_AFTER`]), then a NEW URL. A connection Slack asked
//! to leave (or that shutdown ends) first sends the acks of the envelopes still in hand.
//! Nothing spins, and each change of state is logged once. TLS is rustls with the ring
//! provider and the built-in web roots, the Web API client's stack; `ws://` is accepted for
//! local doubles.
//!
//! Why not slack-morphism's `SlackClientSocketModeListener` (2.31, tried behind this
//! module's public face and reverted; see the commits of issue 16): it awaits each
//! envelope's callback before reading the next frame, so an event behind a slow slash
//! command waits for the command's answer (`an_event_behind_a_slow_command_is_acked_at_once`:
//! 1.55 s); it reconnects at once after a dropped socket, with no wait (1544
//! `apps.connections.open` calls in 4 s in
//! `a_link_dropped_after_every_hello_is_reopened_with_growing_waits`); it retries a failing
//! open at one fixed interval (`failed_opens_wait_longer_each_time`); and after a
//! `disconnect` that arrived while an ack was being written it left the old connection open
//! (`an_answer_in_hand_is_still_acked_on_the_connection_slack_asked_to_leave`). Its socket
//! message types are not reachable from outside the crate either (`models::socket_mode` is
//! shadowed by the listener's `socket_mode` module), so the messages are read here.
//!
//! Socket Mode adds to the HTTP routes, which stay and are verified as before (Slack sends
//! nothing there while Socket Mode is on for the app).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::pipeline::monitor::Monitor;
use crate::slack::client::SlackApi;
use crate::slack::events::{self, Redelivery};
use crate::slack::http::{Answer, BadPayload, Inbound, ACK_BUDGET};
use crate::slack::{commands, interactions, Slack};
use crate::web::AppState;

/// The first wait before reconnecting; it doubles with every attempt that does not last.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A connection that stayed up this long after `hello` was a good one: the next wait starts
/// from [`INITIAL_BACKOFF`] again.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// How long opening the socket (TCP, TLS and the WebSocket handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long Slack has to say `hello` on a new socket.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// How often Sentinel pings; any frame from Slack (a pong included) shows the link is alive.
const PING_EVERY: Duration = Duration::from_secs(30);

/// Nothing at all from Slack for this long: the link is dead even if TCP has not noticed.
const SILENCE_LIMIT: Duration = Duration::from_secs(90);

/// Room for the envelope around a payload the HTTP routes would accept.
const ENVELOPE_MARGIN: usize = 64 * 1024;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The Socket Mode client: one connection at a time, for as long as the application runs.
pub struct SocketMode {
    inbound: Arc<Inbound>,
    /// The Web API client holding the app-level token (only `apps.connections.open`).
    api: SlackApi,
    tls: Arc<rustls::ClientConfig>,
    /// The largest message accepted from Slack.
    max_message: usize,
}

impl SocketMode {
    /// The client, when `SLACK_APP_TOKEN` is set; `None` otherwise. Fails (at startup) when
    /// `[slack] api_url` cannot be used.
    pub fn from_settings(
        app: &AppState,
        monitor: Arc<Monitor>,
        slack: Option<Arc<Slack>>,
    ) -> anyhow::Result<Option<SocketMode>> {
        let settings = app.sentinel.settings();
        let Some(token) = &settings.secrets.slack_app_token else {
            return Ok(None);
        };
        let api = SlackApi::new(&settings.slack.api_url, token.clone())
            .context("[slack] api_url (SLACK_API_URL)")?;
        Ok(Some(SocketMode {
            inbound: Inbound::new(Arc::clone(app), monitor, slack),
            api,
            tls: tls_config(),
            max_message: app.body_limit.saturating_add(ENVELOPE_MARGIN),
        }))
    }

    /// Connects, serves and reconnects until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut log = StateLog::default();
        tracing::info!("slack socket mode: connecting");
        loop {
            let opened = tokio::select! {
                _ = shutdown.cancelled() => break,
                opened = self.open() => opened,
            };
            let ended = match opened {
                Ok(socket) => {
                    let (ended, hello_at) = self.serve(socket, &shutdown, &mut log).await;
                    if hello_at.is_some_and(|at| at.elapsed() >= STABLE_AFTER) {
                        backoff.reset();
                    }
                    ended
                }
                Err(why) => Ended::Failed(why),
            };
            if matches!(ended, Ended::Shutdown) {
                break;
            }
            log.down(&ended);
            let delay = backoff.next_delay();
            tracing::debug!(?delay, "slack socket mode: reconnecting after a pause");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!("slack socket mode stopped");
    }

    /// A fresh URL from `apps.connections.open`, then the WebSocket handshake.
    async fn open(&self) -> Result<Socket, String> {
        let url = self
            .api
            .connections_open()
            .await
            .map_err(|e| format!("apps.connections.open: {e}"))?;
        // The URL carries a ticket: never logged.
        if !(url.starts_with("wss://") || url.starts_with("ws://")) {
            return Err("apps.connections.open gave a URL that is not ws(s)://".to_owned());
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message));
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            Some(config),
            true,
            Some(Connector::Rustls(Arc::clone(&self.tls))),
        );
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok((socket, _response))) => Ok(socket),
            Ok(Err(e)) => Err(format!("cannot open the socket: {e}")),
            Err(_) => Err(format!(
                "opening the socket took longer than {CONNECT_TIMEOUT:?}"
            )),
        }
    }

    /// Serves one connection until it ends; also returns when `hello` came.
    async fn serve(
        &self,
        mut socket: Socket,
        shutdown: &CancellationToken,
        log: &mut StateLog,
    ) -> (Ended, Option<Instant>) {
        // Envelope tasks hand their acknowledgements back here: one writer per socket.
        let (acks, mut pending) = mpsc::unbounded_channel::<Value>();
        let mut hello_at = None;
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            let deadline = match hello_at {
                Some(_) => last_heard + SILENCE_LIMIT,
                None => last_heard + HELLO_TIMEOUT,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break Ended::Shutdown,
                Some(ack) = pending.recv() => {
                    if let Err(e) = socket.send(Message::text(ack.to_string())).await {
                        break Ended::Lost(format!("cannot acknowledge an envelope: {e}"));
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = socket.send(Message::Ping(Default::default())).await {
                        break Ended::Lost(format!("cannot ping: {e}"));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    break Ended::Lost(match hello_at {
                        Some(_) => format!("nothing from slack for {SILENCE_LIMIT:?}"),
                        None => format!("no hello within {HELLO_TIMEOUT:?}"),
                    });
                }
                frame = socket.next() => {
                    last_heard = Instant::now();
                    match frame {
                        None => break Ended::Lost("the socket closed".to_owned()),
                        Some(Err(e)) => break Ended::Lost(format!("the socket failed: {e}")),
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map(|f| format!(" ({} {})", f.code, f.reason));
                            break Ended::Lost(format!(
                                "slack closed the socket{}",
                                why.unwrap_or_default()
                            ));
                        }
                        Some(Ok(Message::Text(text))) => match self.on_message(&text, &acks) {
                            Heard::Hello => {
                                hello_at = Some(Instant::now());
                                log.up();
                            }
                            Heard::Disconnect(reason) => break Ended::Disconnect(reason),
                            Heard::Other => {}
                        },
                        // Pings are answered by the library; pongs and binary need nothing.
                        Some(Ok(_)) => {}
                    }
                }
            }
        };
        // A connection Slack asked to leave (or that shutdown ends) still takes acks: send
        // those of the envelopes in hand, which answer within ACK_BUDGET, before closing.
        // Each task drops its sender once it has acked, so with none in hand this is instant.
        drop(acks);
        if matches!(ended, Ended::Disconnect(_) | Ended::Shutdown) {
            let until = Instant::now() + ACK_BUDGET + Duration::from_millis(500);
            while let Ok(Some(ack)) = tokio::time::timeout_at(until, pending.recv()).await {
                if socket.send(Message::text(ack.to_string())).await.is_err() {
                    break;
                }
            }
        }
        // Close politely, briefly: Slack may be gone already.
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
        (ended, hello_at)
    }

    /// One text message from Slack: the connection's own business, or an envelope handed to
    /// its own task (so a slow command never holds up the socket).
    fn on_message(&self, text: &str, acks: &mpsc::UnboundedSender<Value>) -> Heard {
        let message: Incoming = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "slack socket mode: an unreadable message");
                return Heard::Other;
            }
        };
        match message.kind.as_str() {
            "hello" => return Heard::Hello,
            "disconnect" => {
                return Heard::Disconnect(message.reason.unwrap_or_else(|| "unknown".into()))
            }
            _ => {}
        }
        let Some(envelope_id) = message.envelope_id.clone() else {
            tracing::debug!(kind = %message.kind, "slack socket mode: ignoring a message");
            return Heard::Other;
        };
        let inbound = Arc::clone(&self.inbound);
        let acks = acks.clone();
        tokio::spawn(async move { handle(&inbound, envelope_id, message, acks).await });
        Heard::Other
    }
}

/// A message from Slack on the socket: `hello`, `disconnect` or an envelope.
#[derive(Debug, Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    envelope_id: Option<String>,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    accepts_response_payload: bool,
    /// `disconnect`'s reason.
    #[serde(default)]
    reason: Option<String>,
    /// `events_api`: how many times Slack delivered it before (0 the first time).
    #[serde(default)]
    retry_attempt: Option<u64>,
    #[serde(default)]
    retry_reason: Option<String>,
}

/// What a message means for the connection.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    Hello,
    Disconnect(String),
    Other,
}

/// How a connection (or an attempt at one) ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The shutdown token: stop for good.
    Shutdown,
    /// Slack's `disconnect`, with its reason.
    Disconnect(String),
    /// The socket closed, failed or fell silent.
    Lost(String),
    /// `apps.connections.open` or the handshake failed.
    Failed(String),
}

/// Handles one envelope and acknowledges it (see the module documentation for when). The
/// sender goes with the ack, so the connection knows when no ack is pending.
async fn handle(
    inbound: &Arc<Inbound>,
    envelope_id: String,
    envelope: Incoming,
    acks: mpsc::UnboundedSender<Value>,
) {
    let kind = envelope.kind.as_str();
    match kind {
        "events_api" => {
            ack(acks, &envelope_id, None);
            let redelivery = envelope
                .retry_attempt
                .filter(|attempt| *attempt > 0)
                .map(|attempt| Redelivery {
                    attempt: attempt.to_string(),
                    reason: envelope.retry_reason.filter(|r| !r.is_empty()),
                });
            let answer = events::receive(inbound, envelope.payload, redelivery).await;
            unanswered(kind, &envelope_id, answer);
        }
        // Slack takes the reply to a slash command in the acknowledgement.
        "slash_commands" => {
            let answer = match serde_json::from_value(envelope.payload) {
                Ok(form) => commands::receive(inbound, form).await,
                Err(e) => Err(BadPayload(format!("not a slash command: {e}"))),
            };
            ack(acks, &envelope_id, answered(kind, &envelope_id, answer));
        }
        "interactive" if envelope.accepts_response_payload => {
            let answer = interactions::receive(inbound, envelope.payload).await;
            ack(acks, &envelope_id, answered(kind, &envelope_id, answer));
        }
        "interactive" => {
            ack(acks, &envelope_id, None);
            let answer = interactions::receive(inbound, envelope.payload).await;
            unanswered(kind, &envelope_id, answer);
        }
        _ => {
            tracing::debug!(kind, %envelope_id, "slack socket mode: an unknown envelope type");
            ack(acks, &envelope_id, None);
        }
    }
}

/// Sends `{"envelope_id":…[,"payload":…]}` through the connection it came on.
fn ack(acks: mpsc::UnboundedSender<Value>, envelope_id: &str, payload: Answer) {
    let mut ack = json!({ "envelope_id": envelope_id });
    if let Some(payload) = payload {
        ack["payload"] = payload;
    }
    if acks.send(ack).is_err() {
        // Slack redelivers what it did not see acknowledged; events are deduplicated.
        tracing::warn!(%envelope_id, "slack socket mode: the connection closed before the ack");
    }
}

/// The answer to put in the acknowledgement; an unusable payload is logged and acknowledged
/// bare, as a redelivery would not read any better.
fn answered(kind: &str, envelope_id: &str, answer: Result<Answer, BadPayload>) -> Answer {
    let outcome = if answer.is_ok() { "ok" } else { "bad_request" };
    crate::telemetry::metrics::metrics().slack_request("socket_mode", outcome);
    answer.unwrap_or_else(|BadPayload(why)| {
        tracing::warn!(kind, %envelope_id, %why, "slack socket mode: an unusable payload");
        None
    })
}

/// For envelopes acknowledged before they were handled: an answer has nowhere to go.
fn unanswered(kind: &str, envelope_id: &str, answer: Result<Answer, BadPayload>) {
    if let Some(answer) = answered(kind, envelope_id, answer) {
        tracing::debug!(kind, %envelope_id, %answer, "slack socket mode: an answer after the ack");
    }
}

/// rustls with the ring provider (the one the crate builds) and the built-in web roots, like
/// the Web API client: no dependence on a process-wide provider or the host's CA bundle.
fn tls_config() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports rustls' default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// The wait before the next attempt: uniformly random in `[ceiling / 2, ceiling]`, the ceiling
/// doubling from [`INITIAL_BACKOFF`] to [`MAX_BACKOFF`] with every attempt.
#[derive(Debug)]
struct Backoff {
    ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            ceiling: INITIAL_BACKOFF,
        }
    }
}

impl Backoff {
    fn reset(&mut self) {
        self.ceiling = INITIAL_BACKOFF;
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (ceiling * 2).min(MAX_BACKOFF);
        let half = ceiling / 2;
        let jitter = rand::rng().random_range(0..=(ceiling - half).as_millis() as u64);
        half + Duration::from_millis(jitter)
    }
}

/// Logs the link's state when it changes, not on every attempt: an outage that keeps failing
/// the same way is one warning, the recovery one line.
#[derive(Debug, Default)]
struct StateLog {
    connected: bool,
    /// The last problem logged, while the link is down.
    problem: Option<String>,
    /// Attempts since the link was last up.
    failures: u32,
}

impl StateLog {
    fn up(&mut self) -> Said {
        let said = if self.connected {
            Said::Nothing
        } else {
            tracing::info!(failures = self.failures, "slack socket mode connected");
            Said::Info
        };
        self.connected = true;
        self.problem = None;
        self.failures = 0;
        said
    }

    /// Logs the end of a connection or attempt (at most once per distinct problem) and says
    /// how loudly.
    fn down(&mut self, ended: &Ended) -> Said {
        self.failures += 1;
        let (routine, problem) = match ended {
            Ended::Disconnect(reason) if reason != "link_disabled" => {
                (true, format!("slack asked to reconnect ({reason})"))
            }
            Ended::Disconnect(reason) => (false, format!("slack disconnected ({reason})")),
            Ended::Lost(why) => (false, format!("connection lost: {why}")),
            Ended::Failed(why) => (false, format!("cannot connect: {why}")),
            Ended::Shutdown => return Said::Nothing,
        };
        let changed = self.connected || self.problem.as_deref() != Some(problem.as_str());
        let said = if changed && routine {
            tracing::info!("slack socket mode: {problem}; reconnecting");
            Said::Info
        } else if changed {
            tracing::warn!(
                failures = self.failures,
                "slack socket mode: {problem}; retrying with backoff"
            );
            Said::Warning
        } else {
            tracing::debug!(failures = self.failures, "slack socket mode: {problem}");
            Said::Nothing
        };
        self.connected = false;
        self.problem = Some(problem);
        said
    }
}

/// How loudly a change was logged (debug counts as nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    Nothing,
    Info,
    Warning,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::default();
        let mut ceiling = INITIAL_BACKOFF;
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(MAX_BACKOFF);
        }
        assert_eq!(backoff.ceiling, MAX_BACKOFF);
        backoff.reset();
        assert!(backoff.next_delay() <= INITIAL_BACKOFF);
    }

    #[test]
    fn slacks_messages_parse() {
        let hello: Incoming = serde_json::from_str(
            r#"{"type":"hello","num_connections":1,"debug_info":{"host":"x"},
                "connection_info":{"app_id":"A1"}}"#,
        )
        .unwrap();
        assert_eq!(hello.kind, "hello");
        let disconnect: Incoming =
            serde_json::from_str(r#"{"type":"disconnect","reason":"refresh_requested"}"#).unwrap();
        assert_eq!(disconnect.reason.as_deref(), Some("refresh_requested"));
        let envelope: Incoming = serde_json::from_str(
            r#"{"envelope_id":"e1","type":"events_api","accepts_response_payload":false,
                "retry_attempt":1,"retry_reason":"timeout",
                "payload":{"type":"event_callback","event_id":"Ev1","event":{}}}"#,
        )
        .unwrap();
        assert_eq!(envelope.envelope_id.as_deref(), Some("e1"));
        assert_eq!(envelope.retry_attempt, Some(1));
        assert_eq!(envelope.payload["event_id"], "Ev1");
    }

    #[test]
    fn acks_carry_the_envelope_id_and_the_answer() {
        let (acks, mut sent) = mpsc::unbounded_channel();
        ack(acks.clone(), "e1", None);
        ack(acks, "e2", Some(json!({"text": "hi"})));
        assert_eq!(sent.try_recv().unwrap(), json!({"envelope_id": "e1"}));
        assert_eq!(
            sent.try_recv().unwrap(),
            json!({"envelope_id": "e2", "payload": {"text": "hi"}})
        );
    }

    #[test]
    fn each_change_of_state_is_logged_once() {
        let mut log = StateLog::default();
        let refused = Ended::Failed("apps.connections.open: invalid_auth".into());
        assert_eq!(log.down(&refused), Said::Warning);
        assert_eq!(log.down(&refused), Said::Nothing);
        assert_eq!(log.down(&refused), Said::Nothing);
        let unreachable = Ended::Failed("cannot open the socket: refused".into());
        assert_eq!(log.down(&unreachable), Said::Warning);
        assert_eq!(log.up(), Said::Info);
        assert_eq!(log.failures, 0);
        assert_eq!(log.up(), Said::Nothing);
        // A refresh is routine; the same problem after a good connection is news again.
        let refresh = Ended::Disconnect("refresh_requested".into());
        assert_eq!(log.down(&refresh), Said::Info);
        assert_eq!(log.up(), Said::Info);
        assert_eq!(log.down(&refused), Said::Warning);
        assert_eq!(
            log.down(&Ended::Disconnect("link_disabled".into())),
            Said::Warning
        );
        assert_eq!(log.down(&Ended::Shutdown), Said::Nothing);
    }

    #[test]
    fn the_tls_config_builds_with_ring_and_the_web_roots() {
        let config = tls_config();
        assert!(!config.crypto_provider().cipher_suites.is_empty());
    }

    /// `wss://` really speaks TLS (a ClientHello), not plain text and not "no TLS feature".
    #[tokio::test]
    async fn wss_urls_get_tls() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 3];
            stream.read_exact(&mut first).await.unwrap();
            first
        });
        let connector = Connector::Rustls(tls_config());
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            format!("wss://localhost:{port}/link/?ticket=1"),
            None,
            true,
            Some(connector),
        );
        let outcome = tokio::time::timeout(Duration::from_secs(5), connecting).await;
        // The server hangs up after three bytes: the handshake fails, as it should.
        assert!(matches!(outcome, Ok(Err(_))), "{outcome:?}");
        // A TLS handshake record (0x16), TLS 1.x (0x03 0x01 in the record layer).
        assert_eq!(server.await.unwrap(), [0x16, 0x03, 0x01]);
    }
}
