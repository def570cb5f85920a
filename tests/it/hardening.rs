//! Reliability (SPEC §12.3): the HTTP server's limits, JSON errors on every route, slash
//! command replays, a store outage, and the audit chain's truncation check, paging and
//! refusal coalescing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{free_port, spawn_app_with, Backend, KillOnDrop};

// ---------------------------------------------------------------------------------------
// HTTP limits.

/// Reads until the peer closes the connection or `limit` passes: `Some(elapsed)` when it
/// closed, `None` when it was still open.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while started.elapsed() < limit {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            // An answer (a 408 or an error page) is fine; closing is what counts.
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// One `GET path` on a fresh connection; the status line, or why there was none.
fn get_status_line(addr: &str, path: &str, timeout: Duration) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| format!("read: {e} (got {reply:?})"))?;
    reply
        .lines()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| "closed without an answer".to_owned())
}

#[tokio::test]
async fn a_connection_that_sends_its_head_slowly_is_closed_by_header_timeout() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.http.header_timeout = sentinel::config::HumanDuration(Duration::from_secs(1));
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let (slow, idle, answered) = tokio::task::spawn_blocking(move || {
        // One header line every 300 ms: never a whole head.
        let mut slow = TcpStream::connect(&addr).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        let started = Instant::now();
        let mut closed = None;
        for i in 0..20 {
            std::thread::sleep(Duration::from_millis(300));
            if slow
                .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .is_err()
            {
                closed = Some(started.elapsed());
                break;
            }
            if let Some(after) = closed_within(&mut slow, Duration::from_millis(1)) {
                closed = Some(started.elapsed().max(after));
                break;
            }
        }
        // A connection that sends nothing at all.
        let mut idle = TcpStream::connect(&addr).unwrap();
        let idle_closed = closed_within(&mut idle, Duration::from_secs(5));
        // A request sent in one go is answered as before.
        let answered = get_status_line(&addr, "/healthz", Duration::from_secs(5));
        (closed, idle_closed, answered)
    })
    .await
    .unwrap();
    let slow = slow.expect("the slow connection was never closed");
    assert!(
        slow >= Duration::from_millis(900) && slow < Duration::from_secs(4),
        "closed after {slow:?}"
    );
    let idle = idle.expect("the silent connection was never closed");
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?}");
    assert_eq!(answered.unwrap(), "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn the_connection_cap_holds_and_the_newest_connection_is_answered() {
    const CAP: usize = 16;
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.http.max_connections = CAP;
        s.http.header_timeout = sentinel::config::HumanDuration(Duration::from_secs(60));
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let (still_open, answered) = tokio::task::spawn_blocking(move || {
        let mut idle: Vec<TcpStream> = Vec::new();
        for _ in 0..(CAP * 3) {
            idle.push(TcpStream::connect(&addr).unwrap());
            // Let the server accept each in turn, so "oldest" is well defined.
            std::thread::sleep(Duration::from_millis(5));
        }
        let answered = get_status_line(&addr, "/healthz", Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(300));
        let still_open = idle
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_millis(50)).is_none())
            .collect::<Vec<bool>>();
        (still_open, answered)
    })
    .await
    .unwrap();
    assert_eq!(answered.unwrap(), "HTTP/1.1 200 OK");
    let open = still_open.iter().filter(|open| **open).count();
    // The cap counts the /healthz connection too while it is served.
    assert!(open <= CAP, "{open} idle connections still open, cap {CAP}");
    assert!(open >= CAP / 2, "only {open} left open: {still_open:?}");
    // The oldest were closed first, the newest kept.
    assert!(!still_open[0], "{still_open:?}");
    assert!(still_open[CAP * 3 - 1], "{still_open:?}");
}

#[test]
fn healthz_is_answered_while_half_open_connections_hold_every_file_descriptor() {
    const NOFILE: usize = 256;
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("sentinel.toml");
    // The slow connections would be closed after header_timeout anyway; a long one makes
    // sure it is the shedding, not the timeout, that keeps /healthz answered.
    std::fs::write(
        &config,
        "[http]\nheader_timeout = \"120s\"\n[monitor]\nenabled = false\n",
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new("prlimit")
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_sentinel"))
        .arg("serve")
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("SENTINEL_LISTEN", &addr)
        .env("SENTINEL_CONFIG", &config)
        .env("SENTINEL_DATA_DIR", data.path().join("data"))
        .env("SENTINEL_SANDBOX_DIR", data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs the binary");
    let mut server = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_status_line(&addr, "/healthz", Duration::from_secs(1)).is_err() {
        assert!(Instant::now() < deadline, "sentinel did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // More connections than the process has descriptors: half of them send nothing, the
    // other half one header line and then nothing.
    let mut hogs = Vec::new();
    for i in 0..(NOFILE * 2) {
        let mut stream = TcpStream::connect(&addr).expect("the kernel accepts into the backlog");
        if i % 2 == 1 {
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: 1\r\n");
        }
        hogs.push(stream);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut answers = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let answer = get_status_line(&addr, "/healthz", Duration::from_secs(5));
        answers.push((answer, started.elapsed()));
    }
    drop(hogs);
    let _ = server.0.kill();
    let _ = server.0.wait();
    let mut logs = String::new();
    let _ = server.0.stderr.take().unwrap().read_to_string(&mut logs);
    for (answer, took) in &answers {
        assert_eq!(
            answer.as_deref(),
            Ok("HTTP/1.1 200 OK"),
            "after {took:?}; all: {answers:?}; logs: {logs}"
        );
    }
    assert!(
        logs.contains("out of file descriptors"),
        "the descriptors never ran out, so this proved nothing: {logs}"
    );
}

// ---------------------------------------------------------------------------------------
// JSON errors on every route.

/// A raw HTTP/1.1 exchange: the head as given, then (when `chunked` is set) that many bytes
/// of body in 64 KB chunks, stopping early once the server answers. Returns the status, the
/// content type and the body.
fn raw_exchange(addr: &str, head: &str, chunked: Option<usize>) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    if let Some(total) = chunked {
        let mut writer = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'a'; 65536];
            let mut sent = 0;
            while sent < total {
                let frame = format!("{:x}\r\n", chunk.len());
                if writer.write_all(frame.as_bytes()).is_err()
                    || writer.write_all(&chunk).is_err()
                    || writer.write_all(b"\r\n").is_err()
                {
                    return;
                }
                sent += chunk.len();
            }
            let _ = writer.write_all(b"0\r\n\r\n");
        });
    }
    // Read the head, then exactly Content-Length bytes of body.
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut buf).expect("an answer");
        assert!(n > 0, "closed without an answer to {head:?}");
        received.extend_from_slice(&buf[..n]);
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head_text = String::from_utf8_lossy(&received[..head_end]).to_string();
    let status: u16 = head_text
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let header = |name: &str| {
        head_text
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().unwrap_or(0);
    while received.len() < head_end + length {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&received[head_end..]).to_string();
    (status, header("content-type"), body)
}

/// Asserts an error answer is `{"error": "<text>"}` served as JSON.
fn assert_json_error(what: &str, (status, content_type, body): &(u16, String, String)) {
    assert!(*status >= 400, "{what}: {status} {body}");
    assert!(
        content_type.starts_with("application/json"),
        "{what}: {status} with content type {content_type:?}: {body:?}"
    );
    let value: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|_| panic!("{what}: {status} answered non-JSON {body:?}"));
    let error = value["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "{what}: {status} {value}");
}

#[tokio::test]
async fn every_error_on_every_route_is_json() {
    let app = spawn_app_with(Backend::Embedded, |_| {}).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let admin = app.keys.admin.clone();
    let routes = sentinel::app::routes();
    assert!(routes.len() > 20, "the route table: {routes:?}");
    let checked = tokio::task::spawn_blocking(move || {
        let mut checked = 0;
        for route in &routes {
            let path = route
                .path
                .replace("{id}", "inc-doesnotexist")
                .replace("/api/silences/inc-doesnotexist", "/api/silences/sil-none");
            let name = format!("{} {}", route.method, route.path);
            // A method the route does not have: 405.
            let wrong = raw_exchange(
                &addr,
                &format!("PATCH {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {admin}\r\nConnection: close\r\n\r\n"),
                None,
            );
            assert_eq!(wrong.0, 405, "{name}: {wrong:?}");
            assert_json_error(&format!("PATCH on {name}"), &wrong);
            if route.method == reqwest::Method::POST {
                // A chunked body far over the limit (no Content-Length to refuse it by).
                let large = raw_exchange(
                    &addr,
                    &format!(
                        "POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {admin}\r\n\
                         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
                         Connection: close\r\n\r\n"
                    ),
                    Some(10 * 1024 * 1024),
                );
                assert_json_error(&format!("10 MB chunked to {name}"), &large);
                // A declared length over the limit.
                let declared = raw_exchange(
                    &addr,
                    &format!(
                        "POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {admin}\r\n\
                         Content-Type: application/json\r\nContent-Length: 10485760\r\n\
                         Connection: close\r\n\r\n"
                    ),
                    None,
                );
                assert_json_error(&format!("10 MB declared to {name}"), &declared);
                // The wrong content type, and a body that is not JSON.
                for (content_type, body) in [("text/plain", "{}"), ("application/json", "{not json")] {
                    let answer = raw_exchange(
                        &addr,
                        &format!(
                            "POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {admin}\r\n\
                             Content-Type: {content_type}\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None,
                    );
                    if answer.0 >= 400 {
                        assert_json_error(&format!("{content_type} {body:?} to {name}"), &answer);
                    }
                }
            } else {
                // A query no route takes.
                let answer = raw_exchange(
                    &addr,
                    &format!("{} {path}?limit=lots&status=%ZZ HTTP/1.1\r\nHost: x\r\nX-API-Key: {admin}\r\nConnection: close\r\n\r\n", route.method),
                    None,
                );
                if answer.0 >= 400 {
                    assert_json_error(&format!("a bad query to {name}"), &answer);
                }
            }
            checked += 1;
        }
        // The routes that read a body answer 413 for a large one, chunked or declared.
        let reject = raw_exchange(
            &addr,
            &format!(
                "POST /api/incidents/inc-doesnotexist/reject HTTP/1.1\r\nHost: x\r\n\
                 X-API-Key: {admin}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            ),
            Some(10 * 1024 * 1024),
        );
        assert_eq!(reject.0, 413, "{reject:?}");
        let unknown = raw_exchange(
            &addr,
            "GET /no/such/route HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            None,
        );
        assert_eq!(unknown.0, 404, "{unknown:?}");
        assert_json_error("an unknown route", &unknown);
        let bad_path = raw_exchange(
            &addr,
            &format!("GET /api/incidents/%FF%FE HTTP/1.1\r\nHost: x\r\nX-API-Key: {admin}\r\nConnection: close\r\n\r\n"),
            None,
        );
        assert_json_error("a path that is not UTF-8", &bad_path);
        checked
    })
    .await
    .unwrap();
    assert!(checked > 20);
}

// ---------------------------------------------------------------------------------------
// The store unreachable.

/// A private redis-server on its own port, without persistence, killed when dropped.
struct PrivateRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    fn start() -> Self {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// No answer may carry the backend's name or its own message.
fn assert_no_backend_words(what: &str, body: &str) {
    let lower = body.to_lowercase();
    for word in ["redis", "connection refused", "os error"] {
        assert!(!lower.contains(word), "{what} mentions {word:?}: {body}");
    }
}

#[tokio::test]
async fn with_redis_down_the_page_and_status_answer_from_the_last_known_state() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let app = spawn_app_with(Backend::Embedded, move |s| {
        s.secrets.redis_url = Some(secrecy::SecretString::from(url));
        s.store.redis_prefix = "sentinel-outage:".to_owned();
    })
    .await;
    let incident = app.trigger("cpu").await;
    let status = app.get("/api/status", None).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.body["store"]["ok"], true, "{:?}", status.body);
    assert_eq!(status.body["store"]["backend"], "redis");
    assert!(app.get_text("/").await.contains(incident.id.as_str()));

    redis.kill();
    let before_down = sentinel::domain::Timestamp::now();
    let response = app
        .client
        .get(format!("{}/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("cannot reach its store since"),
        "no banner: {page}"
    );
    assert!(
        page.contains(incident.id.as_str()),
        "the last known incident is gone"
    );
    assert_no_backend_words("the page", &page);

    let status = app.get("/api/status", None).await;
    assert_eq!(status.status, 200, "{:?}", status.body);
    assert_eq!(status.body["store"]["ok"], false, "{:?}", status.body);
    let since = status.body["store"]["since"].as_str().expect("since");
    let since = sentinel::domain::Timestamp::parse_rfc3339(since).unwrap();
    assert!(
        since.unix_millis() >= before_down.unix_millis() - 1000,
        "{since}"
    );
    assert_eq!(status.body["incidents"][0]["id"], incident.id.as_str());
    assert_no_backend_words("/api/status", &status.body.to_string());

    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, 503);
    assert_no_backend_words("/readyz", &ready.body.to_string());
    for (method, path, key) in [
        (
            reqwest::Method::GET,
            "/api/incidents".to_owned(),
            &app.keys.viewer,
        ),
        (
            reqwest::Method::GET,
            format!("/api/incidents/{}", incident.id),
            &app.keys.viewer,
        ),
        (
            reqwest::Method::POST,
            format!("/api/incidents/{}/approve", incident.id),
            &app.keys.admin,
        ),
        (
            reqwest::Method::GET,
            "/api/audit".to_owned(),
            &app.keys.admin,
        ),
        (
            reqwest::Method::POST,
            "/api/trigger-alert".to_owned(),
            &app.keys.admin,
        ),
    ] {
        let body = path
            .ends_with("trigger-alert")
            .then_some(r#"{"scenario":"disk"}"#);
        let reply = app.request(method.clone(), &path, Some(key), body).await;
        assert_eq!(reply.status, 503, "{method} {path}: {:?}", reply.body);
        assert!(
            reply.body["error"].is_string(),
            "{method} {path}: {:?}",
            reply.body
        );
        assert_no_backend_words(&format!("{method} {path}"), &reply.body.to_string());
    }
    // `since` stays the first failure while the store stays down.
    let again = app.get("/api/status", None).await;
    assert_eq!(again.body["store"]["since"], status.body["store"]["since"]);
}

/// A frozen Redis (SIGSTOP: connections accepted, nothing answered) costs each store read its
/// 3 s response timeout, three of them for the page. Once the store is known to fail, the page
/// and `/api/status` no longer wait on it: they answer at once from the last known state, a
/// probe in the background notices when the store is back.
#[tokio::test]
async fn with_redis_frozen_the_page_answers_at_once_and_notices_the_store_return() {
    let redis = PrivateRedis::start();
    let url = redis.url();
    let app = spawn_app_with(Backend::Embedded, move |s| {
        s.secrets.redis_url = Some(secrecy::SecretString::from(url));
        s.store.redis_prefix = "sentinel-frozen:".to_owned();
    })
    .await;
    let incident = app.trigger("cpu").await;
    assert!(app.get_text("/").await.contains(incident.id.as_str()));
    assert_eq!(app.get("/api/status", None).await.body["store"]["ok"], true);

    let pid = redis.child.id().to_string();
    let signal = |sig: &str| {
        let done = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(done.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    // The first read finds out (after the response timeout).
    let first = app.get("/api/status", None).await;
    assert_eq!(first.body["store"]["ok"], false, "{:?}", first.body);
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        for path in ["/", "/api/status"] {
            let sent = Instant::now();
            let text = app.get_text(path).await;
            slowest = slowest.max(sent.elapsed());
            if path == "/" {
                assert!(text.contains("cannot reach its store since"), "{text}");
                assert!(text.contains(incident.id.as_str()), "{text}");
            } else {
                assert!(text.contains(r#""ok":false"#), "{text}");
            }
        }
    }
    signal("-CONT");
    assert!(
        slowest < Duration::from_millis(500),
        "a GET waited {slowest:?} on a store known to fail"
    );

    // Back: a probe sees it, and the answers are fresh again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = app.get("/api/status", None).await;
        if status.body["store"]["ok"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still marked down 15 s after Redis was thawed: {:?}",
            status.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!app
        .get_text("/")
        .await
        .contains("cannot reach its store since"));
}

// ---------------------------------------------------------------------------------------
// The audit chain: truncation, paging, refusal coalescing.

/// Adds `n` audit entries (one silence each) and returns the audit report.
async fn add_entries(app: &crate::helpers::TestApp, n: usize) -> serde_json::Value {
    for i in 0..n {
        let reply = app
            .post(
                "/api/silences",
                Some(&app.keys.operator),
                &format!(r#"{{"target":"web-{i}","duration":"1h"}}"#),
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    audit(app, "").await
}

async fn audit(app: &crate::helpers::TestApp, query: &str) -> serde_json::Value {
    let reply = app
        .get(&format!("/api/audit{query}"), Some(&app.keys.admin))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

#[tokio::test]
async fn entries_cut_from_the_end_of_the_chain_on_redis_are_reported_as_truncated() {
    let app = spawn_app_with(Backend::Redis, |_| {}).await;
    let intact = add_entries(&app, 5).await;
    assert_eq!(intact["truncated"], false, "{intact}");
    assert_eq!(intact["chain"]["verified"], true, "{intact}");
    assert_eq!(intact["high_water"], 5);
    // Two RPOPs: what is left still hashes as a chain, but it is shorter than seen.
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}audit", app.sentinel.settings().store.redis_prefix);
    for _ in 0..2 {
        let popped: Option<String> = redis::cmd("RPOP")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(popped.is_some(), "nothing at {key}");
    }
    let cut = audit(&app, "").await;
    assert_eq!(cut["entries"].as_array().unwrap().len(), 3);
    assert_eq!(cut["truncated"], true, "{cut}");
    assert_eq!(cut["chain"]["verified"], false, "{cut}");
    assert_eq!(cut["high_water"], 5);
}

#[tokio::test]
async fn a_redis_restarted_without_persistence_shows_a_lost_log() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let port = redis.port;
    let app = spawn_app_with(Backend::Embedded, move |s| {
        s.secrets.redis_url = Some(secrecy::SecretString::from(url));
    })
    .await;
    let before = add_entries(&app, 3).await;
    assert_eq!(before["truncated"], false, "{before}");
    redis.kill();
    let _restarted = PrivateRedis::start_on(port);
    // The connection comes back; the log and Redis' own mark are gone, the data
    // directory's mark is not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lost = loop {
        let reply = app.get("/api/audit", Some(&app.keys.admin)).await;
        if reply.status == 200 {
            break reply.body;
        }
        assert!(Instant::now() < deadline, "{reply:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(lost["entries"].as_array().unwrap().len(), 0, "{lost}");
    assert_eq!(lost["truncated"], true, "{lost}");
    assert_eq!(lost["high_water"], 3, "{lost}");
}

#[tokio::test]
async fn entries_deleted_from_the_end_of_the_embedded_store_are_reported_as_truncated() {
    const AUDIT: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_owned();
    let dir = data_dir.clone();
    let app = spawn_app_with(Backend::Embedded, move |s| s.data_dir = dir).await;
    add_entries(&app, 6).await;
    app.stop().await;
    // Delete the last two entries from the table itself, with the process stopped.
    {
        let db = redb::Database::open(data_dir.join("sentinel.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(AUDIT).unwrap();
            assert!(table.remove(6).unwrap().is_some());
            assert!(table.remove(5).unwrap().is_some());
        }
        txn.commit().unwrap();
    }
    let dir = data_dir.clone();
    let app = spawn_app_with(Backend::Embedded, move |s| s.data_dir = dir).await;
    let cut = audit(&app, "").await;
    assert_eq!(cut["entries"].as_array().unwrap().len(), 4, "{cut}");
    assert_eq!(cut["truncated"], true, "{cut}");
    assert_eq!(cut["chain"]["verified"], false, "{cut}");
    assert_eq!(cut["high_water"], 6);
    app.stop().await;
    // The whole store lost: the data directory's own mark still knows.
    std::fs::remove_file(data_dir.join("sentinel.redb")).unwrap();
    let dir = data_dir.clone();
    let app = spawn_app_with(Backend::Embedded, move |s| s.data_dir = dir).await;
    let lost = audit(&app, "").await;
    assert_eq!(lost["entries"].as_array().unwrap().len(), 0, "{lost}");
    assert_eq!(lost["truncated"], true, "{lost}");
    assert_eq!(lost["high_water"], 6);
}

#[tokio::test]
async fn the_audit_trail_pages_with_after_and_limit() {
    let app = spawn_app_with(Backend::Embedded, |_| {}).await;
    let all = add_entries(&app, 7).await;
    assert_eq!(all["entries"].as_array().unwrap().len(), 7);
    assert_eq!(all["next_after"], serde_json::Value::Null);
    let mut seqs = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = audit(&app, &format!("?after={after}&limit=3")).await;
        pages += 1;
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 3, "{page}");
        assert_eq!(
            page["chain"]["length"], 7,
            "the check covers the whole chain"
        );
        seqs.extend(entries.iter().map(|e| e["seq"].as_u64().unwrap()));
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seqs, (1..=7).collect::<Vec<u64>>());
    assert_eq!(pages, 3);
    let tail = audit(&app, "?after=5").await;
    let tail: Vec<u64> = tail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(tail, vec![6, 7]);
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?after=-1",
        "?after=x",
        "?page=2",
    ] {
        let reply = app
            .get(&format!("/api/audit{bad}"), Some(&app.keys.admin))
            .await;
        assert_eq!(reply.status, 400, "{bad}: {reply:?}");
        assert!(reply.body["error"].is_string(), "{bad}: {reply:?}");
    }
}

async fn refusals_are_coalesced(backend: Backend) {
    const REFUSALS: usize = 200;
    let app = spawn_app_with(backend, |_| {}).await;
    let incident = app.trigger("cpu").await;
    let resolved = app
        .post(
            &format!("/api/incidents/{}/resolve", incident.id),
            Some(&app.keys.operator),
            "",
        )
        .await;
    assert_eq!(resolved.status, 200, "{resolved:?}");
    let url = format!("{}/api/incidents/{}/approve", app.base, incident.id);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..REFUSALS {
        let (client, url, key) = (app.client.clone(), url.clone(), app.keys.admin.clone());
        tasks.push(tokio::spawn(async move {
            let response = client.post(url).header("x-api-key", key).send().await;
            response.expect("the server answers").status().as_u16()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 409);
    }
    let took = started.elapsed();
    let report = audit(&app, "?limit=1000").await;
    let refusals: Vec<&serde_json::Value> = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "DecisionRefused")
        .collect();
    let counted: u64 = refusals
        .iter()
        .map(|e| e["details"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        counted, REFUSALS as u64,
        "every refusal is counted: {refusals:?}"
    );
    println!(
        "{backend:?}: {REFUSALS} concurrent refused approvals by one actor in {took:?} -> {} \
         audit entries, counts {:?}",
        refusals.len(),
        refusals
            .iter()
            .map(|e| e["details"]["count"].as_u64().unwrap())
            .collect::<Vec<_>>()
    );
    assert!(
        refusals.len() <= 5,
        "{} entries for {REFUSALS} refusals",
        refusals.len()
    );
    assert!(refusals.iter().all(|e| e["actor"] == "api:test-admin"));
    // A refusal by someone else, or of another decision, is an entry of its own.
    let other = app
        .post(
            &format!("/api/incidents/{}/reject", incident.id),
            Some(&app.keys.admin),
            "",
        )
        .await;
    assert_eq!(other.status, 409, "{other:?}");
    let after = audit(&app, "?limit=1000").await;
    let last = after["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "DecisionRefused");
    assert_eq!(last["details"]["decision"], "reject");
    assert_eq!(last["details"]["count"], 1);
}

#[tokio::test]
async fn two_hundred_concurrent_refusals_by_one_actor_are_one_entry_with_a_count() {
    refusals_are_coalesced(Backend::Embedded).await;
}

#[tokio::test]
async fn two_hundred_concurrent_refusals_by_one_actor_are_coalesced_on_redis() {
    refusals_are_coalesced(Backend::Redis).await;
}
