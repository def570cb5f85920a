//! The Docker collector against the real daemon: containers made from the local
//! `sentinel-test/busybox` image, without network, named `sentinel-it-<what>-<random>`, and
//! force-removed when each test ends, passing or panicking. No Docker fails these tests: they
//! never pass by skipping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use sentinel::runtime::docker::{DockerCollector, DockerError};
use sentinel::runtime::ContainerSample;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IMAGE: &str = "sentinel-test/busybox:latest";
const TIMEOUT: Duration = Duration::from_secs(20);
const MIB: u64 = 1 << 20;

/// A collector for the daemon `scripts/services.sh` starts (or `DOCKER_HOST`). Fails the test,
/// naming what is missing, when Docker does not answer.
async fn collector() -> DockerCollector {
    match DockerCollector::connect("", 8, TIMEOUT).await {
        Ok(collector) => collector,
        Err(e) => panic!(
            "Docker is not reachable ({e}); these tests need a real Docker daemon: run \
             `scripts/services.sh start` (Debian package docker.io) or set DOCKER_HOST"
        ),
    }
}

/// The containers one test made, force-removed when it is dropped: at the end of the test,
/// or while a panic unwinds.
struct Containers {
    docker: Docker,
    /// Behind a lock so containers can be made concurrently through `&self`.
    names: Mutex<Vec<String>>,
}

impl Containers {
    fn new(collector: &DockerCollector) -> Self {
        Self {
            docker: collector.client().clone(),
            names: Mutex::new(Vec::new()),
        }
    }

    /// Creates (without starting) a container running `cmd`, with no network and whatever
    /// `customize` adds. The name is registered for removal before Docker is asked.
    async fn create(
        &self,
        what: &str,
        cmd: &[&str],
        customize: impl FnOnce(&mut ContainerCreateBody),
    ) -> String {
        let name = format!("sentinel-it-{what}-{:08x}", rand::random::<u32>());
        self.names.lock().unwrap().push(name.clone());
        let mut body = ContainerCreateBody {
            image: Some(IMAGE.to_owned()),
            cmd: Some(cmd.iter().map(|arg| arg.to_string()).collect()),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        customize(&mut body);
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(options), body)
            .await
            .unwrap_or_else(|e| panic!("creating {name} from {IMAGE}: {e}"));
        name
    }

    /// Creates and starts a container.
    async fn run(
        &self,
        what: &str,
        cmd: &[&str],
        customize: impl FnOnce(&mut ContainerCreateBody),
    ) -> String {
        let name = self.create(what, cmd, customize).await;
        self.start(&name).await;
        name
    }

    async fn start(&self, name: &str) {
        self.docker
            .start_container(name, None::<StartContainerOptions>)
            .await
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap_or_else(|e| e.into_inner()));
        if names.is_empty() {
            return;
        }
        let docker = self.docker.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: remove from a
        // thread with a runtime of its own, and wait for it.
        let removal = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(async {
                let force = RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                futures::stream::iter(names)
                    .for_each_concurrent(8, |name| {
                        let (docker, force) = (&docker, force.clone());
                        async move {
                            match docker.remove_container(&name, Some(force)).await {
                                Ok(()) => {}
                                Err(bollard::errors::Error::DockerResponseServerError {
                                    status_code: 404,
                                    ..
                                }) => {}
                                Err(e) => eprintln!("could not remove test container {name}: {e}"),
                            }
                        }
                    })
                    .await;
            });
        });
        let _ = removal.join();
    }
}

/// The sample of the container named `name`, from a fresh collection.
async fn sample_of(collector: &DockerCollector, name: &str) -> ContainerSample {
    let samples = collector.collect().await.expect("collect");
    let names: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    samples
        .iter()
        .find(|sample| sample.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} is not among the collected containers {names:?}"))
}

/// Collects until the sample of `name` satisfies `ready` (at most 15 s) and returns it.
async fn wait_for(
    collector: &DockerCollector,
    name: &str,
    what: &str,
    ready: impl Fn(&ContainerSample) -> bool,
) -> ContainerSample {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sample = sample_of(collector, name).await;
        if ready(&sample) {
            return sample;
        }
        if Instant::now() > deadline {
            panic!("{name} never became {what}; last seen: {sample:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_running_container_is_up_and_has_memory_readings() {
    let collector = collector().await;
    let containers = Containers::new(&collector);
    let name = containers.run("up", &["sleep", "3600"], |_| {}).await;

    let sample = sample_of(&collector, &name).await;
    assert_eq!(sample.state, "running", "{sample:#?}");
    assert_eq!(sample.restart_count, 0);
    assert_eq!(sample.restart_policy, "no");
    assert_eq!(sample.health, None, "busybox has no health check");
    assert_eq!(sample.down_reason(), None);
    assert!(!sample.id.is_empty());
    assert!(
        sample.memory_limit_bytes.unwrap_or(0) > 0,
        "without a limit, the host's memory: {sample:#?}"
    );
    assert!(sample.memory_used_bytes.is_some(), "{sample:#?}");
}

#[tokio::test]
async fn a_stopped_container_is_down_until_it_is_started_again() {
    let collector = collector().await;
    let containers = Containers::new(&collector);
    let name = containers.run("stop", &["sleep", "3600"], |_| {}).await;
    assert_eq!(sample_of(&collector, &name).await.state, "running");

    // `sleep` as PID 1 ignores SIGTERM: after a second Docker kills it (137).
    let stop = StopContainerOptions {
        t: Some(1),
        ..Default::default()
    };
    collector
        .client()
        .stop_container(&name, Some(stop))
        .await
        .expect("stop");
    let stopped = sample_of(&collector, &name).await;
    assert_eq!(stopped.state, "exited", "{stopped:#?}");
    assert_ne!(stopped.exit_code.unwrap_or(0), 0, "{stopped:#?}");
    let reason = stopped.down_reason().expect("a stopped container is down");
    assert!(reason.contains("exited with code"), "{reason}");
    assert_eq!(stopped.memory_used_bytes, None, "no stats for stopped ones");
    assert_eq!(stopped.memory_limit_bytes, None);

    containers.start(&name).await;
    let started = sample_of(&collector, &name).await;
    assert_eq!(started.state, "running", "{started:#?}");
    assert_eq!(started.down_reason(), None);
    assert!(started.memory_used_bytes.is_some());
}

/// STACK.md: memory held in a tmpfs (shmem) is `cache`, but it is not reclaimable; only
/// the inactive file cache may be subtracted. Subtracting all of `cache` would show ~2 %.
#[tokio::test]
async fn memory_held_in_a_tmpfs_counts_against_the_limit() {
    let collector = collector().await;
    let containers = Containers::new(&collector);
    let script = "mount -t tmpfs -o size=60m tmpfs /mnt 2>/dev/null || true; \
                  dd if=/dev/zero of=/dev/shm/fill bs=1M count=48; sleep 3600";
    let name = containers
        .run("tmpfs", &["sh", "-c", script], |body| {
            let host_config = body.host_config.as_mut().unwrap();
            host_config.memory = Some(64 << 20);
            host_config.shm_size = Some(64 << 20);
        })
        .await;

    let sample = wait_for(&collector, &name, "≥ 60 % of its memory", |s| {
        s.memory_percent().unwrap_or(0.0) >= 60.0
    })
    .await;
    let percent = sample.memory_percent().unwrap();
    eprintln!(
        "{name}: {percent:.1} % ({} of {} bytes)",
        sample.memory_used_bytes.unwrap(),
        sample.memory_limit_bytes.unwrap()
    );
    assert!((60.0..=95.0).contains(&percent), "{percent} % {sample:#?}");
    assert_eq!(sample.memory_limit_bytes, Some(64 * MIB));
}

#[tokio::test]
async fn a_finished_one_off_job_is_not_down_but_a_failed_one_is() {
    let collector = collector().await;
    let containers = Containers::new(&collector);
    let no_restart = |body: &mut ContainerCreateBody| {
        body.host_config.as_mut().unwrap().restart_policy = Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        });
    };
    let done = containers
        .run("done", &["sh", "-c", "true"], no_restart)
        .await;
    let failed = containers
        .run("failed", &["sh", "-c", "exit 3"], no_restart)
        .await;

    let done = wait_for(&collector, &done, "exited", |s| s.state == "exited").await;
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.restart_policy, "no");
    assert_eq!(done.down_reason(), None, "{done:#?}");

    let failed = wait_for(&collector, &failed, "exited", |s| s.state == "exited").await;
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(
        failed.down_reason().as_deref(),
        Some("exited with code 3"),
        "{failed:#?}"
    );
}

#[tokio::test]
async fn an_ignored_container_is_never_down_and_labels_are_reported() {
    let collector = collector().await;
    let containers = Containers::new(&collector);
    let name = containers
        .run("ignored", &["sh", "-c", "exit 1"], |body| {
            body.labels = Some(HashMap::from([
                ("sentinel.ignore".to_owned(), "true".to_owned()),
                ("team".to_owned(), "payments".to_owned()),
            ]));
        })
        .await;

    let sample = wait_for(&collector, &name, "exited", |s| s.state == "exited").await;
    assert_eq!(sample.exit_code, Some(1));
    assert_eq!(sample.down_reason(), None, "{sample:#?}");
    assert_eq!(sample.labels["sentinel.ignore"], "true");
    assert_eq!(sample.labels["team"], "payments");
    assert!(!sample.protected());
}

#[tokio::test]
async fn a_docker_host_that_does_not_exist_is_an_error_not_a_hang() {
    let started = Instant::now();
    let err = DockerCollector::connect("unix:///nonexistent/docker.sock", 4, TIMEOUT)
        .await
        .expect_err("nothing listens there");
    assert!(started.elapsed() < Duration::from_secs(3), "{err}");
    assert!(matches!(err, DockerError::Unreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("docker is not reachable at unix:///nonexistent/docker.sock: "),
        "{message}"
    );

    // Nothing listens on port 1.
    let started = Instant::now();
    let err = DockerCollector::connect("tcp://127.0.0.1:1", 4, TIMEOUT)
        .await
        .expect_err("connection refused");
    assert!(started.elapsed() < Duration::from_secs(3), "{err}");
    assert!(
        err.to_string()
            .starts_with("docker is not reachable at tcp://127.0.0.1:1: "),
        "{err}"
    );

    // Malformed hosts are errors too, never panics.
    for host in ["unix://", "tcp://", "http://:::", "tcp://[bad"] {
        let started = Instant::now();
        let err = DockerCollector::connect(host, 4, Duration::from_secs(2))
            .await
            .expect_err(host);
        assert!(started.elapsed() < Duration::from_secs(3), "{host}: {err}");
        assert!(err.to_string().contains(host), "{host}: {err}");
    }
}

/// A Unix socket that accepts connections; it answers `/version` when `answer_version`, and
/// nothing else, ever.
async fn silent_daemon(answer_version: bool) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let request_line = String::from_utf8_lossy(&request);
                let request_line = request_line.lines().next().unwrap_or_default();
                if answer_version && request_line.contains("/version ") {
                    let body = r#"{"ApiVersion":"1.41","Version":"20.10.24"}"#;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                }
                // Hold the connection open, silently.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(stream);
            });
        }
    });
    let host = format!("unix://{}", path.display());
    (dir, host)
}

#[tokio::test]
async fn a_daemon_that_never_answers_times_out() {
    let (_dir, host) = silent_daemon(false).await;
    let started = Instant::now();
    let err = DockerCollector::connect(&host, 4, Duration::from_millis(500))
        .await
        .expect_err("it never answers");
    assert!(started.elapsed() < Duration::from_secs(3), "{err}");
    assert!(
        matches!(err, DockerError::ConnectTimedOut { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("docker at {host} did not answer within 500ms")
    );
}

#[tokio::test]
async fn a_daemon_that_stops_answering_makes_collect_fail_in_time() {
    let (_dir, host) = silent_daemon(true).await;
    let collector = DockerCollector::connect(&host, 4, Duration::from_millis(500))
        .await
        .expect("it answers /version");
    let started = Instant::now();
    let err = collector.collect().await.expect_err("the list never comes");
    assert!(started.elapsed() < Duration::from_secs(3), "{err}");
    assert!(
        matches!(err, DockerError::CollectTimedOut { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn twenty_running_containers_are_collected_concurrently() {
    let collector = collector().await;
    let containers = Containers::new(&collector);
    let names: Vec<String> = futures::stream::iter(0..20)
        .map(|i| {
            let containers = &containers;
            async move {
                containers
                    .run(&format!("many{i:02}"), &["sleep", "3600"], |_| {})
                    .await
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;

    // Docker answers a one-shot stats call at its stats collector's next tick (every
    // second), so a collection takes about ⌈running / concurrency⌉ seconds.
    let mut samples = Vec::new();
    for concurrency in [8, 32] {
        let collector = DockerCollector::connect("", concurrency, TIMEOUT)
            .await
            .expect("connect");
        let started = Instant::now();
        samples = collector.collect().await.expect("collect");
        let took = started.elapsed();
        eprintln!(
            "collect: {} containers (20 of them this test's), {concurrency} at a time, in {took:?}",
            samples.len()
        );
    }
    assert!(
        samples.windows(2).all(|pair| pair[0].name <= pair[1].name),
        "sorted by name"
    );
    for name in &names {
        let sample = samples
            .iter()
            .find(|sample| &sample.name == name)
            .unwrap_or_else(|| panic!("{name} was not collected"));
        assert_eq!(sample.state, "running", "{sample:#?}");
        assert!(sample.memory_used_bytes.is_some(), "{sample:#?}");
        assert!(sample.memory_limit_bytes.is_some(), "{sample:#?}");
    }
}

/// Containers removed while a collection runs are left out, never an error.
#[tokio::test]
async fn containers_removed_during_a_collection_are_skipped() {
    let collector = collector().await;
    let containers = Containers::new(&collector);
    let mut names = Vec::new();
    for i in 0..8 {
        names.push(
            containers
                .run(&format!("vanish{i}"), &["sleep", "3600"], |_| {})
                .await,
        );
    }
    let docker = collector.client().clone();
    let remove = async {
        for name in &names {
            let force = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            docker.remove_container(name, Some(force)).await.unwrap();
        }
    };
    let collect = async {
        let mut collections = 0;
        loop {
            let samples = collector.collect().await.expect("collect while removing");
            collections += 1;
            let left = names
                .iter()
                .filter(|name| samples.iter().any(|s| &s.name == *name))
                .count();
            if left == 0 {
                return collections;
            }
        }
    };
    let ((), collections) = tokio::join!(remove, collect);
    eprintln!("{collections} collections while removing 8 containers");
}

/// The guard removes its containers even when the test panics.
#[tokio::test]
async fn containers_are_removed_when_a_test_panics() {
    let collector = collector().await;
    let (name_sender, name_receiver) = tokio::sync::oneshot::channel();
    let client = collector.clone();
    let task = tokio::spawn(async move {
        let containers = Containers::new(&client);
        let name = containers.run("panics", &["sleep", "3600"], |_| {}).await;
        name_sender.send(name).unwrap();
        panic!("a failing test");
    });
    assert!(task.await.unwrap_err().is_panic());
    let name = name_receiver.await.unwrap();
    let samples = collector.collect().await.expect("collect");
    assert!(
        samples.iter().all(|sample| sample.name != name),
        "{name} outlived the panic"
    );
}
