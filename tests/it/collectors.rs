//! The collectors against the real thing: Prometheus scraping node-exporter on loopback,
//! this machine's /proc and filesystems, and real files for the sandbox.
//!
//! A missing Prometheus fails these tests (run `scripts/services.sh start`); they never pass
//! by skipping.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sentinel::config::Settings;
use sentinel::runtime::host::HostCollector;
use sentinel::runtime::prometheus::{disk_query, PromError, PrometheusClient};
use sentinel::runtime::sandbox::{largest_directories, sandbox_size};
use sentinel::runtime::HostSample;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------- this machine

/// The Prometheus the tests use: `PROMETHEUS_URL`, else the one `scripts/services.sh` starts.
fn prometheus_url() -> String {
    std::env::var("PROMETHEUS_URL").unwrap_or_else(|_| "http://127.0.0.1:9090".to_owned())
}

/// A client for the real Prometheus, after checking that it answers and scrapes
/// node-exporter. Fails the test, naming what is missing, when it does not.
async fn prometheus() -> PrometheusClient {
    let url = prometheus_url();
    let client = PrometheusClient::new(&url, Duration::from_secs(5)).expect("a valid URL");
    match client.instant_query(r#"up{job="node"}"#).await {
        Ok(up) if up.iter().any(|sample| sample.value == 1.0) => client,
        Ok(up) => panic!(
            "Prometheus at {url} answers but does not scrape node-exporter as job \"node\" \
             (up = {up:?}); run `scripts/services.sh start` (Debian packages prometheus and \
             prometheus-node-exporter)"
        ),
        Err(e) => panic!(
            "Prometheus is not reachable at {url} ({e}); these tests need a real Prometheus \
             scraping node-exporter: run `scripts/services.sh start` or set PROMETHEUS_URL"
        ),
    }
}

/// `100 × (1 − MemAvailable / MemTotal)` as /proc/meminfo says right now.
fn proc_memory_percent() -> f64 {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| -> f64 {
        let line = meminfo
            .lines()
            .find(|line| line.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} in /proc/meminfo"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    100.0 * (1.0 - field("MemAvailable") / field("MemTotal"))
}

/// `df`'s Use% for `mount`, unrounded: `used / (used + avail)`.
fn df_percent(mount: &str) -> f64 {
    let output = std::process::Command::new("df")
        .args(["--output=used,avail", "-B1", mount])
        .output()
        .expect("df runs");
    assert!(output.status.success(), "df {mount}: {output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let numbers: Vec<f64> = text
        .lines()
        .nth(1)
        .expect("a line of numbers")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    100.0 * numbers[0] / (numbers[0] + numbers[1])
}

fn assert_close(what: &str, a: f64, b: f64, tolerance: f64) {
    assert!(
        (a - b).abs() <= tolerance,
        "{what}: {a:.2} and {b:.2} differ by more than {tolerance}"
    );
}

/// Polls Prometheus until the rates exist (a fresh Prometheus needs two scrapes).
async fn host_sample_with_rates(client: &PrometheusClient, mounts: &[String]) -> HostSample {
    let queries = Settings::defaults().prometheus;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sample = client
            .host_sample(&queries, mounts)
            .await
            .expect("a host sample from Prometheus");
        let complete = sample.cpu_percent.is_some()
            && sample.network_mb_per_s.is_some()
            && sample.network_errors_per_s.is_some();
        if complete || Instant::now() > deadline {
            return sample;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn local_sample(mounts: &[&str]) -> HostSample {
    HostCollector::new(mounts.iter().map(|m| m.to_string()).collect()).sample()
}

#[tokio::test]
async fn prometheus_host_sample_agrees_with_this_machine() {
    let client = prometheus().await;
    let sample = host_sample_with_rates(&client, &["/".to_owned()]).await;
    let proc_memory = proc_memory_percent();
    let df_root = df_percent("/");
    println!("prometheus {sample:?}; /proc/meminfo {proc_memory:.2}; df / {df_root:.2}");

    assert_close(
        "memory, Prometheus and /proc/meminfo",
        sample.memory_percent.expect("memory"),
        proc_memory,
        5.0,
    );
    assert_close("disk /, Prometheus and df", sample.disks["/"], df_root, 2.0);
    let cpu = sample.cpu_percent.expect("a CPU rate within 10 s");
    assert!((0.0..=100.0).contains(&cpu), "cpu {cpu}");
    let network = sample.network_mb_per_s.expect("a network rate within 10 s");
    assert!(network >= 0.0, "network {network}");
    let errors = sample.network_errors_per_s.expect("an error rate");
    assert!(errors >= 0.0, "network errors {errors}");
}

#[tokio::test]
async fn prometheus_leaves_out_mounts_it_has_no_series_for() {
    let client = prometheus().await;
    let docker_reported = !client
        .instant_query(r#"node_filesystem_size_bytes{mountpoint="/var/lib/docker"}"#)
        .await
        .unwrap()
        .is_empty();
    let mounts: Vec<String> = [
        "/",
        "/var/lib/docker",
        "/no/such/mount",
        // Escaped into the PromQL string: no series, and above all no broken query.
        r#"/we"ird\mount"#,
        "/new\nline",
    ]
    .iter()
    .map(|m| m.to_string())
    .collect();
    let sample = client
        .host_sample(&Settings::defaults().prometheus, &mounts)
        .await
        .unwrap();
    let watched: Vec<&str> = sample.disks.keys().map(String::as_str).collect();
    let mut expected = vec!["/"];
    if docker_reported {
        expected.push("/var/lib/docker");
    }
    assert_eq!(watched, expected);
    for percent in sample.disks.values() {
        assert!((0.0..=100.0).contains(percent), "{:?}", sample.disks);
    }
    // Left out because they have no series, not because their query broke.
    for mount in &mounts[2..] {
        let query = disk_query(&Settings::defaults().prometheus.disk, mount);
        let answer = client.instant_query(&query).await;
        assert!(
            matches!(&answer, Ok(samples) if samples.is_empty()),
            "{query}: {answer:?}"
        );
    }
}

#[tokio::test]
async fn the_local_collector_agrees_with_proc_and_prometheus() {
    let client = prometheus().await;
    let local = tokio::task::spawn_blocking(|| local_sample(&["/", "/no/such/mount"]))
        .await
        .unwrap();
    let proc_memory = proc_memory_percent();
    let df_root = df_percent("/");
    let prometheus = host_sample_with_rates(&client, &["/".to_owned()]).await;
    println!("local {local:?}; prometheus {prometheus:?}; /proc {proc_memory:.2}; df {df_root:.2}");

    let local_memory = local.memory_percent.expect("memory");
    assert_close(
        "memory, local and /proc/meminfo",
        local_memory,
        proc_memory,
        2.0,
    );
    assert_close(
        "memory, local and Prometheus",
        local_memory,
        prometheus.memory_percent.unwrap(),
        5.0,
    );
    assert_eq!(
        local.disks.keys().collect::<Vec<_>>(),
        ["/"],
        "an unmounted mount point is left out"
    );
    assert_close("disk /, local and df", local.disks["/"], df_root, 2.0);
    assert_close(
        "disk /, local and Prometheus",
        local.disks["/"],
        prometheus.disks["/"],
        2.0,
    );
    // The first call already has rates.
    let cpu = local.cpu_percent.expect("a CPU rate on the first call");
    assert!((0.0..=100.0).contains(&cpu), "cpu {cpu}");
    assert!(local.network_mb_per_s.expect("a network rate") >= 0.0);
    assert!(local.network_errors_per_s.expect("an error rate") >= 0.0);
}

#[test]
fn the_local_collector_keeps_measuring_rates() {
    let mut collector = HostCollector::new(vec!["/".to_owned()]);
    let started = Instant::now();
    let first = collector.sample();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the first call waits only for a short rate window"
    );
    std::thread::sleep(Duration::from_millis(300));
    let second = collector.sample();
    for sample in [first, second] {
        let cpu = sample.cpu_percent.expect("cpu");
        assert!((0.0..=100.0).contains(&cpu), "{sample:?}");
        assert!(sample.network_mb_per_s.expect("network") >= 0.0);
        assert!(sample.network_errors_per_s.expect("errors") >= 0.0);
        assert!(sample.memory_percent.is_some());
    }
}

#[tokio::test]
async fn instant_queries_on_real_prometheus() {
    let client = prometheus().await;
    let scalar = client.instant_query("1.5 * 2").await.unwrap();
    assert_eq!(scalar.len(), 1);
    assert_eq!(scalar[0].value, 3.0);
    assert!(scalar[0].labels.is_empty());
    assert!(client.instant_query("NaN").await.unwrap().is_empty());
    assert!(client
        .instant_query("vector(1) / 0")
        .await
        .unwrap()
        .is_empty());
    let series = client.instant_query(r#"up{job="node"}"#).await.unwrap();
    assert_eq!(series[0].labels["job"], "node");
}

#[tokio::test]
async fn container_memory_is_keyed_by_name() {
    let client = prometheus().await;
    // No cAdvisor here: the default query has no series, which is not an error.
    let none = client
        .container_memory(&Settings::defaults().prometheus.container_memory)
        .await
        .unwrap();
    assert_eq!(none, BTreeMap::new());
    let query = r#"label_replace(vector(42), "name", "web-1", "", "")
        or label_replace(vector(7), "name", "db", "", "")
        or label_replace(vector(99), "other", "x", "", "")"#;
    let by_name = client.container_memory(query).await.unwrap();
    assert_eq!(
        by_name,
        BTreeMap::from([("db".to_owned(), 7.0), ("web-1".to_owned(), 42.0)]),
        "a series without `name` is left out"
    );
}

// ---------------------------------------------------------------- Prometheus failing

#[tokio::test]
async fn bad_promql_is_an_error_with_prometheus_message() {
    let client = prometheus().await;
    let error = client.instant_query("sum(").await.unwrap_err();
    assert!(matches!(error, PromError::Query { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("parse error"), "{message}");
    assert!(message.contains("sum("), "names the query: {message}");

    let mut queries = Settings::defaults().prometheus;
    queries.host_cpu = "rate(".to_owned();
    let sample = client
        .host_sample(&queries, &["/".to_owned()])
        .await
        .expect("only the memory query decides whether the call fails");
    assert_eq!(sample.cpu_percent, None);
    assert!(sample.memory_percent.is_some());

    queries.host_memory = "100 * (".to_owned();
    assert!(matches!(
        client.host_sample(&queries, &[]).await,
        Err(PromError::Query { .. })
    ));
}

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn nothing_listening_is_an_error_at_once() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let client = PrometheusClient::new(&url, Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    let error = client.instant_query("up").await.unwrap_err();
    assert!(matches!(error, PromError::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains(&url), "{error}");
    let error = client
        .host_sample(&Settings::defaults().prometheus, &["/".to_owned()])
        .await
        .unwrap_err();
    assert!(matches!(error, PromError::Unreachable { .. }), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused connections fail fast: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // Accepts and holds every connection, never writing a byte.
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let timeout = Duration::from_millis(300);
    let client = PrometheusClient::new(&format!("http://{address}"), timeout).unwrap();

    let started = Instant::now();
    let error = client.instant_query("up").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, PromError::Timeout { .. }), "{error:?}");
    assert!(
        elapsed >= timeout && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );

    // All queries run at once, so the whole sample is bounded by one timeout too.
    let started = Instant::now();
    let error = client
        .host_sample(
            &Settings::defaults().prometheus,
            &["/".to_owned(), "/var".to_owned()],
        )
        .await
        .unwrap_err();
    assert!(matches!(error, PromError::Timeout { .. }), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server.abort();
}

/// A one-line HTTP server answering every request with `status` and `body`.
async fn canned_server(status: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{address}")
}

#[tokio::test]
async fn malformed_answers_are_errors() {
    type Expected = fn(&PromError) -> bool;
    let cases: [(&str, &str, Expected); 5] = [
        ("200 OK", "{not json", |e| {
            matches!(e, PromError::Malformed(_))
        }),
        (
            "200 OK",
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"twelve"]}]}}"#,
            |e| matches!(e, PromError::Malformed(_)),
        ),
        (
            "200 OK",
            r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
            |e| matches!(e, PromError::Malformed(_)),
        ),
        ("503 Service Unavailable", "upstream down", |e| {
            matches!(e, PromError::Http { status: 503, .. })
        }),
        (
            "422 Unprocessable Entity",
            r#"{"status":"error","errorType":"execution","error":"many-to-many matching not allowed"}"#,
            |e| matches!(e, PromError::Query { message, .. } if message.contains("many-to-many")),
        ),
    ];
    for (status, body, expected) in cases {
        let client =
            PrometheusClient::new(&canned_server(status, body).await, Duration::from_secs(2))
                .unwrap();
        let error = client.instant_query("up").await.unwrap_err();
        assert!(expected(&error), "{status} {body}: {error:?}");
        assert!(client
            .host_sample(&Settings::defaults().prometheus, &[])
            .await
            .is_err());
    }
}

// ---------------------------------------------------------------- the sandbox

fn write_file(path: &Path, size: usize) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, vec![b'x'; size]).unwrap();
}

/// Runs `f` on another thread and fails the test if it has not finished within 10 s, so a
/// walk that loops fails instead of hanging the suite.
fn within_10_s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(f());
    });
    receive
        .recv_timeout(Duration::from_secs(10))
        .expect("the walk finishes within 10 s")
}

/// A sandbox with files of known sizes; returns it and their total.
fn known_sandbox() -> (tempfile::TempDir, u64) {
    let sandbox = tempfile::tempdir().unwrap();
    let root = sandbox.path();
    let files = [
        ("logs/app.log", 1_000),
        ("logs/old/app.log.1", 2_345),
        ("logs/old/older/app.log.2", 10_000),
        ("tmp/upload.part", 1),
        ("cache/blob", 4_096),
        ("data/empty", 0),
        ("data/records.db", 65_537),
        ("top-level.txt", 17),
    ];
    for (path, size) in files {
        write_file(&root.join(path), size);
    }
    fs::create_dir_all(root.join("tmp/empty-dir")).unwrap();
    (sandbox, files.iter().map(|(_, size)| *size as u64).sum())
}

#[test]
fn sandbox_size_sums_nested_files_exactly() {
    let (sandbox, total) = known_sandbox();
    assert_eq!(total, 82_996);
    assert_eq!(sandbox_size(sandbox.path()).unwrap(), total);
}

#[test]
fn sandbox_size_follows_no_symlink() {
    let (sandbox, total) = known_sandbox();
    let root = sandbox.path().to_path_buf();
    let outside = tempfile::tempdir().unwrap();
    // 10 GiB of length, sparse: counted only if the link were followed.
    let huge = outside.path().join("huge.img");
    fs::File::create(&huge).unwrap().set_len(10 << 30).unwrap();
    std::os::unix::fs::symlink(&huge, root.join("data/huge-link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("outside-dir")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("logs/outside-dir")).unwrap();
    // Loops: a link to an ancestor, a link to itself, and two links to each other.
    std::os::unix::fs::symlink(&root, root.join("logs/old/root-again")).unwrap();
    std::os::unix::fs::symlink("..", root.join("cache/up")).unwrap();
    std::os::unix::fs::symlink("self", root.join("tmp/self")).unwrap();
    std::os::unix::fs::symlink("ping", root.join("tmp/pong")).unwrap();
    std::os::unix::fs::symlink("pong", root.join("tmp/ping")).unwrap();
    std::os::unix::fs::symlink("/no/such/target", root.join("tmp/dangling")).unwrap();

    let walked = root.clone();
    assert_eq!(within_10_s(move || sandbox_size(&walked).unwrap()), total);
    let walked = root.clone();
    let directories = within_10_s(move || largest_directories(&walked, 10).unwrap());
    assert!(
        directories
            .iter()
            .all(|(path, _)| !path.ends_with("outside-dir")),
        "a link to a directory is not a directory: {directories:?}"
    );
    assert_eq!(
        directories.iter().map(|(_, size)| size).sum::<u64>(),
        total - 17
    );
}

#[test]
fn a_symlinked_root_is_walked() {
    let (sandbox, total) = known_sandbox();
    let links = tempfile::tempdir().unwrap();
    let link = links.path().join("sandbox");
    std::os::unix::fs::symlink(sandbox.path(), &link).unwrap();
    assert_eq!(sandbox_size(&link).unwrap(), total);
    assert_eq!(largest_directories(&link, 1).unwrap()[0].1, 65_537);
}

#[test]
fn hard_links_count_once() {
    let (sandbox, total) = known_sandbox();
    let root = sandbox.path();
    fs::hard_link(
        root.join("data/records.db"),
        root.join("data/records-copy.db"),
    )
    .unwrap();
    fs::hard_link(root.join("data/records.db"), root.join("logs/records.db")).unwrap();
    assert_eq!(sandbox_size(root).unwrap(), total);
    let directories: BTreeMap<PathBuf, u64> =
        largest_directories(root, 10).unwrap().into_iter().collect();
    assert_eq!(directories[&root.join("data")], 65_537);
    assert_eq!(
        directories[&root.join("logs")],
        13_345 + 65_537,
        "each directory counts the files in it"
    );
}

#[test]
fn a_sandbox_over_100_mb_is_reported() {
    let sandbox = tempfile::tempdir().unwrap();
    let path = sandbox.path().join("data/big.bin");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut file = fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..101 {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);
    write_file(&sandbox.path().join("logs/a.log"), 10);

    let size = sandbox_size(sandbox.path()).unwrap();
    assert_eq!(size, 101 * (1 << 20) + 10);
    assert!(size > 100_000_000, "{size}");
}

#[test]
fn a_missing_root_is_an_error() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("no-sandbox");
    let error = sandbox_size(&missing).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    assert!(error.to_string().contains("no-sandbox"), "{error}");
    assert_eq!(
        largest_directories(&missing, 3).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );

    let dangling = parent.path().join("dangling");
    std::os::unix::fs::symlink(&missing, &dangling).unwrap();
    assert_eq!(
        sandbox_size(&dangling).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );

    let file = parent.path().join("a-file");
    fs::write(&file, "x").unwrap();
    assert_eq!(
        sandbox_size(&file).unwrap_err().kind(),
        std::io::ErrorKind::NotADirectory
    );
}

/// Whether this process runs as root, for whom no directory is unreadable.
fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

#[test]
fn an_unreadable_subdirectory_is_skipped() {
    use std::os::unix::fs::PermissionsExt;
    let (sandbox, total) = known_sandbox();
    let locked = sandbox.path().join("logs/old");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let size = sandbox_size(sandbox.path());
    let directories = largest_directories(sandbox.path(), 10);
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    // Root reads everything; anyone else misses what is under logs/old.
    let expected = if running_as_root() {
        total
    } else {
        total - 2_345 - 10_000
    };
    assert_eq!(size.unwrap(), expected);
    assert!(directories.is_ok());
}

#[test]
fn largest_directories_orders_by_size() {
    let (sandbox, _) = known_sandbox();
    let root = sandbox.path();
    write_file(&root.join("same-as-cache/x"), 4_096);
    let directories = largest_directories(root, 10).unwrap();
    let expected: Vec<(PathBuf, u64)> = [
        ("data", 65_537),
        ("logs", 13_345),
        ("cache", 4_096),
        ("same-as-cache", 4_096),
        ("tmp", 1),
    ]
    .iter()
    .map(|(name, size)| (root.join(name), *size))
    .collect();
    assert_eq!(
        directories, expected,
        "ties by path; top-level files are not listed"
    );
    assert_eq!(largest_directories(root, 2).unwrap(), expected[..2]);
    assert_eq!(largest_directories(root, 0).unwrap(), []);

    let empty = tempfile::tempdir().unwrap();
    assert_eq!(largest_directories(empty.path(), 5).unwrap(), []);
    assert_eq!(sandbox_size(empty.path()).unwrap(), 0);
}
