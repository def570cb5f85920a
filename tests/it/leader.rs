//! Two replicas on one Redis: exactly one runs the monitor loop, and when it is killed with
//! `kill -9` the other takes over within the lease's time to live.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{free_port, redis_store, redis_url, unique_prefix};

/// A `sentinel serve` replica, killed when the test ends.
struct Replica {
    child: Child,
    port: u16,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a replica and waits until it answers on its own port. `free_port` only says a port
/// was free a moment ago: under a busy suite another process can take it first, this replica
/// then exits ("cannot listen") and the port answers for someone else, so it is started again
/// on another port.
async fn start(config: &std::path::Path, sandbox: &std::path::Path) -> Replica {
    for _ in 0..3 {
        let mut replica = spawn(config, sandbox);
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = reqwest::Client::new();
        loop {
            if replica.child.try_wait().ok().flatten().is_some() {
                break;
            }
            let ready = client
                .get(format!("http://127.0.0.1:{}/readyz", replica.port))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status() == 200) {
                // Still ours: the process that answered is alive.
                if replica.child.try_wait().ok().flatten().is_none() {
                    return replica;
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica did not become ready within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = replica.child.kill();
        let _ = replica.child.wait();
    }
    panic!("a replica found no free port in three tries");
}

fn spawn(config: &std::path::Path, sandbox: &std::path::Path) -> Replica {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("serve")
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("REDIS_URL", redis_url())
        .env("SENTINEL_CONFIG", config)
        .env("SENTINEL_LISTEN", format!("127.0.0.1:{port}"))
        .env("SENTINEL_SANDBOX_DIR", sandbox)
        // No Docker for these replicas: the lease is what is under test, not the collectors.
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the sentinel binary starts");
    Replica { child, port }
}

async fn monitor_of(client: &reqwest::Client, replica: &Replica) -> Option<Value> {
    let url = format!("http://127.0.0.1:{}/api/status", replica.port);
    let response = client.get(url).send().await.ok()?;
    let status: Value = response.json().await.ok()?;
    Some(status["monitor"].clone())
}

fn is_leader(monitor: &Option<Value>) -> bool {
    monitor.as_ref().is_some_and(|m| m["leader"] == true)
}

#[tokio::test]
async fn exactly_one_replica_runs_the_loop_and_another_takes_over_after_kill_9() {
    drop(redis_store().await); // fails, naming Redis, when it is not there
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sentinel.toml");
    std::fs::write(
        &config,
        format!(
            "interval = \"1s\"\n[monitor]\nlease_ttl = \"3s\"\n[store]\nredis_prefix = \"{}\"\n",
            unique_prefix()
        ),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut replicas = vec![
        start(&config, dir.path()).await,
        start(&config, dir.path()).await,
    ];

    // Both replicas report a cycle; exactly one of them is the leader, several times over.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut agreed = 0;
    while agreed < 5 {
        assert!(
            Instant::now() < deadline,
            "the replicas never settled on one leader"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let a = monitor_of(&client, &replicas[0]).await;
        let b = monitor_of(&client, &replicas[1]).await;
        if a.is_none()
            || b.is_none()
            || a.as_ref().unwrap().is_null()
            || b.as_ref().unwrap().is_null()
        {
            continue;
        }
        assert!(
            !(is_leader(&a) && is_leader(&b)),
            "two leaders at once: {a:?} {b:?}"
        );
        if is_leader(&a) != is_leader(&b) {
            agreed += 1;
        }
    }
    let leader = if is_leader(&monitor_of(&client, &replicas[0]).await) {
        0
    } else {
        1
    };
    let follower = 1 - leader;
    let follower_state = monitor_of(&client, &replicas[follower]).await.unwrap();
    assert_eq!(follower_state["outcome"], "skipped", "{follower_state}");

    // kill -9 the leader: no graceful release of the lease.
    let mut killed = replicas.remove(leader);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let survivor = &replicas[0];
    let killed_at = Instant::now();
    loop {
        if is_leader(&monitor_of(&client, survivor).await) {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "the surviving replica did not take over within the lease TTL"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "took over {:?} after kill -9 (lease TTL 3 s, interval 1 s)",
        killed_at.elapsed()
    );
}
