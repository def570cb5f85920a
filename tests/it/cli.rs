//! The `sentinel` binary: commands, configuration errors, signals.

use crate::helpers::free_port;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sentinel");

/// The binary with a clean environment, so the developer's variables never leak in.
fn sentinel() -> Command {
    let mut command = Command::new(BIN);
    command.env_clear().env("RUST_LOG", "info");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[test]
fn keys_new_prints_the_key_then_the_toml_exactly() {
    let output = run(sentinel().args(["keys", "new", "--role", "operator", "--name", "ci-bot"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].starts_with("sk-sentinel-"), "{text}");
    assert_eq!(lines[1], "[[api_keys]]");
    assert_eq!(lines[2], "name = \"ci-bot\"");
    assert_eq!(lines[3], "role = \"operator\"");
    let hash = lines[4]
        .strip_prefix("sha256 = \"")
        .and_then(|h| h.strip_suffix('"'))
        .expect("a sha256 line");
    assert_eq!(hash.len(), 64);
    assert!(
        !text[lines[0].len()..].contains(lines[0]),
        "the key itself is shown once"
    );

    // Pasted into a configuration, it is accepted.
    let file = config_file(&lines[1..].join("\n"));
    let check = run(sentinel()
        .args(["config", "check", "--config"])
        .arg(file.path()));
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("api keys"));
}

#[test]
fn keys_new_refuses_an_unknown_role() {
    let output = run(sentinel().args(["keys", "new", "--role", "root"]));
    assert!(!output.status.success());
    assert!(stderr(&output).contains("root"), "{}", stderr(&output));
    assert!(output.stdout.is_empty());
}

#[test]
fn config_check_accepts_the_defaults_and_the_shipped_file() {
    let defaults = run(sentinel().args(["config", "check"]));
    assert!(defaults.status.success(), "{}", stderr(&defaults));
    assert!(String::from_utf8_lossy(&defaults.stdout).contains("configuration is valid"));
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sentinel.toml");
    let file = run(sentinel().args(["config", "check", "--config", shipped]));
    assert!(file.status.success(), "{}", stderr(&file));
}

/// Each bad configuration exits non-zero with one line naming the key and the problem.
#[test]
fn bad_configuration_exits_with_one_line_naming_the_key() {
    /// (file, environment, key the error names)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        ("interval = \"banana\"", &[], "interval"),
        ("mode = \"yolo\"", &[], "mode"),
        (
            "[thresholds]\nhost_memory = { warning = 150 }",
            &[],
            "thresholds.host_memory.warning",
        ),
        ("[rbac]\ndefault_role = \"god\"", &[], "rbac.default_role"),
        ("", &[("SENTINEL_INTERVAL", "banana")], "SENTINEL_INTERVAL"),
        ("", &[("SENTINEL_LISTEN", "nowhere")], "listen"),
    ];
    for (text, env, key) in cases {
        let file = config_file(text);
        for command in [&["config", "check"][..], &["serve"][..]] {
            let mut cmd = sentinel();
            cmd.args(command).arg("--config").arg(file.path());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let output = run(&mut cmd);
            assert_eq!(output.status.code(), Some(2), "{text:?} {command:?}");
            let err = stderr(&output);
            assert_eq!(err.lines().count(), 1, "{text:?}: {err:?}");
            assert!(err.contains(key), "{text:?}: {err:?} does not name {key}");
        }
    }
    let missing = run(sentinel().args(["config", "check", "--config", "/nonexistent/x.toml"]));
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("/nonexistent/x.toml"));
}

#[test]
fn help_explains_every_command() {
    let output = run(sentinel().arg("--help"));
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["serve", "check", "config", "blocks", "manifest", "keys"] {
        assert!(
            help.contains(command),
            "--help does not mention {command}: {help}"
        );
    }
}

#[test]
fn manifest_fills_in_public_url_or_prints_the_socket_mode_variant() {
    let output = run(sentinel()
        .arg("manifest")
        .env("PUBLIC_URL", "https://sentinel.example.org/"));
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "url: https://sentinel.example.org/slack/commands",
        "request_url: https://sentinel.example.org/slack/events",
        "request_url: https://sentinel.example.org/slack/interactions",
        "- app_mention",
        "command: /sentinel",
        "socket_mode_enabled: false",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(!text.contains("PUBLIC_URL/"), "{text}");
    // Every scope says why it is needed.
    for line in text
        .lines()
        .filter(|l| l.trim_start().starts_with("- ") && l.contains(':') && !l.contains("command"))
    {
        if line.contains("read") || line.contains("write") || line.contains("commands") {
            assert!(line.contains('#'), "scope without a reason: {line}");
        }
    }

    let socket = run(sentinel().args(["manifest", "--socket-mode"]));
    assert!(socket.status.success());
    let socket = String::from_utf8(socket.stdout).unwrap();
    assert!(socket.contains("socket_mode_enabled: true"));
    assert!(
        !socket.contains("request_url") && !socket.contains("PUBLIC_URL/"),
        "{socket}"
    );

    let missing = run(sentinel().arg("manifest"));
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("PUBLIC_URL"));
}

/// A `sentinel serve` child that is killed if the test fails.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
            let mut reply = String::new();
            let _ = stream.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("sentinel did not become ready on port {port}");
}

#[test]
fn sigterm_stops_the_server_cleanly_and_secrets_never_reach_the_logs() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let secrets = [
        "signing-secret-4f2a",
        "xoxb-bot-token-9c1d",
        "or-api-key-77e0",
    ];
    let child = sentinel()
        .arg("serve")
        .env("RUST_LOG", "trace")
        .env("SENTINEL_LISTEN", format!("127.0.0.1:{port}"))
        .env("SENTINEL_DATA_DIR", data.path())
        .env("SLACK_SIGNING_SECRET", secrets[0])
        .env("SLACK_BOT_TOKEN", secrets[1])
        .env("OPENROUTER_API_KEY", secrets[2])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server { child };
    wait_ready(port);
    let pid = server.child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "sentinel ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let mut logs = String::new();
    for line in BufReader::new(server.child.stderr.take().unwrap()).lines() {
        logs.push_str(&line.unwrap());
        logs.push('\n');
    }
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(logs.contains("sentinel stopped"), "{logs}");
    // Not a terminal: plain lines, no colour escapes in a log file.
    assert!(
        !logs.contains('\x1b'),
        "the log carries terminal colours: {logs:?}"
    );
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret} appeared in the logs");
    }
}
