//! Reliability (SPEC §12.3): the HTTP server's limits, JSON errors on every route, slash
//! command replays, a store outage, and the audit chain's truncation check, paging and
//! refusal coalescing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{spawn_app_with, Backend};

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

/// The binary, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let mut server = Server(child);
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
