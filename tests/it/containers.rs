//! Test containers: made from the locally imported busybox image, on `--network none`, and
//! removed when the test ends however it ends. A missing daemon fails the test, naming Docker.

use std::process::Command;

use sentinel::domain::IncidentId;

pub const IMAGE: &str = "sentinel-test/busybox:latest";

/// Runs the docker CLI and returns its output; fails the test when Docker is not there.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs (Debian package docker.io)");
    assert!(
        output.status.success(),
        "docker {args:?} failed: {} — these tests need a running Docker daemon and the image \
         {IMAGE}: run `scripts/services.sh start`",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A container removed when dropped.
pub struct Container(pub String);

impl Container {
    /// `docker run -d --network none --name <prefix>-<random> <extra> IMAGE <command>`.
    pub fn run(prefix: &str, extra: &[&str], command: &[&str]) -> Container {
        let name = format!("{prefix}-{}", &IncidentId::generate().as_str()[4..]);
        let mut args = vec!["run", "-d", "--network", "none", "--name", &name];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(command);
        docker(&args);
        Container(name)
    }

    pub fn memory_limit(&self) -> i64 {
        docker(&["inspect", "-f", "{{.HostConfig.Memory}}", &self.0])
            .parse()
            .expect("a number")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}
