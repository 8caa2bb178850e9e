//! Helpers for the tests of every crate (feature `testing`): the Docker CLI, a cleanup guard
//! for what a test creates, unique names, polling with a deadline. Everything a test creates
//! in Docker carries [`TEST_LABEL`] and is removed on drop, even when the test fails.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// The label on every container, network and image a test creates.
pub const TEST_LABEL: &str = "managed-by=rustybalancer-tests";

/// Runs `docker` with `args`; its trimmed stdout, or a panic with its stderr.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("the docker CLI is not installed");
    assert!(
        output.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// What a test created, removed on drop.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub containers: Vec<String>,
    /// Containers are also removed by label filter (`key=value`), for those an agent made.
    pub container_labels: Vec<String>,
    pub networks: Vec<String>,
    pub images: Vec<String>,
    pub dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| Command::new("docker").args(args).output().ok();
        for label in &self.container_labels {
            let filter = format!("label={label}");
            if let Some(output) = quiet(&["ps", "-aq", "--filter", &filter]) {
                for id in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                    quiet(&["rm", "-f", "-v", id]);
                }
            }
        }
        for container in &self.containers {
            quiet(&["rm", "-f", "-v", container]);
        }
        for network in &self.networks {
            quiet(&["network", "rm", network]);
        }
        for image in &self.images {
            quiet(&["image", "rm", "-f", image]);
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A loopback port free at the time of the call (for servers that must be told a port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free loopback port")
}

/// A name part unique to this process and moment.
pub fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// Polls `probe` every 100 ms until it gives a value; panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The async twin of [`wait_for`].
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The directory of this workspace's release binaries (`worker`, `balancer`, ...), found from
/// the running test executable (`target/<triple>/release/deps/<test>`).
pub fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("no current executable");
    let deps = exe.parent().expect("test binary has no directory");
    deps.parent().unwrap_or(deps).to_path_buf()
}

/// The path of a workspace binary; panics with how to build it when it is missing.
pub fn workspace_binary(name: &str) -> PathBuf {
    let path = binary_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace binaries first (`cargo build --release --bins`; jobs/test.sh does)",
        path.display()
    );
    path
}

/// Builds `rustybalancer/<service>:test-<id>` from `deploy/<service>.Dockerfile` and the
/// binary at `binary`, registering the image and its build context for cleanup.
pub fn build_image(
    cleanup: &mut Cleanup,
    service: &str,
    binary: &std::path::Path,
    id: &str,
) -> String {
    let context = std::env::temp_dir().join(format!("rb-{service}-image-{id}"));
    cleanup.dirs.push(context.clone());
    std::fs::create_dir_all(&context).expect("cannot create the build context");
    std::fs::copy(binary, context.join(service))
        .expect("cannot copy the binary into the build context");
    let tag = format!("rustybalancer/{service}:test-{id}");
    let dockerfile = repo_root().join(format!("deploy/{service}.Dockerfile"));
    cleanup.images.push(tag.clone());
    // A label of its own makes the image's id its own: two tests' images never share an id,
    // so one test removing its tag can never race the daemon into deleting another's image.
    let own = format!("rustybalancer.test-image={id}");
    docker(&[
        "build",
        "--quiet",
        "--label",
        TEST_LABEL,
        "--label",
        &own,
        "-f",
        &dockerfile.to_string_lossy(),
        "-t",
        &tag,
        &context.to_string_lossy(),
    ]);
    tag
}

/// The workspace root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A service binary run as a child process by a test, logging JSON to its stderr; killed
/// (and reaped) when dropped.
#[derive(Debug)]
pub struct ServiceProcess {
    child: std::process::Child,
    name: String,
    /// Its last `LOG_KEPT` JSON log events.
    log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<serde_json::Value>>>,
}

/// Log events a `ServiceProcess` keeps.
const LOG_KEPT: usize = 10_000;

impl ServiceProcess {
    /// Spawns `command` (with `--log-format json` added) and waits up to `timeout` for the log
    /// event whose message is `listening`, which is returned (it carries the addresses).
    pub fn spawn(
        mut command: Command,
        listening: &str,
        timeout: Duration,
    ) -> (Self, serde_json::Value) {
        use std::io::{BufRead, BufReader};
        let name = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .args(["--log-format", "json"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let listening = listening.to_owned();
        let log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<serde_json::Value>>> =
            std::sync::Arc::default();
        let kept = std::sync::Arc::clone(&log);
        // Reads the log to its end, so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    if event["message"] == listening.as_str() {
                        let _ = tx.send(event.clone());
                    }
                    let mut kept = kept.lock().unwrap();
                    if kept.len() == LOG_KEPT {
                        kept.pop_front();
                    }
                    kept.push_back(event);
                }
            }
        });
        let process = Self { child, name, log };
        let event = rx
            .recv_timeout(timeout)
            .unwrap_or_else(|_| panic!("{} did not log that it listens", process.name));
        (process, event)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The JSON log events it wrote so far (the last 10,000) that `keep` admits.
    pub fn logged(&self, keep: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|event| keep(event))
            .cloned()
            .collect()
    }

    /// Sends the signal `name` (`TERM`, `INT`, ...) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits for the process to exit by itself; panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real `worker` binary as a child process on a loopback port it picked itself, with
/// `args` and `env` on top (`cargo build --release --bins` first); killed when dropped.
#[derive(Debug)]
pub struct WorkerProcess {
    pub address: std::net::SocketAddr,
    /// The chaos port, with `WORKER_CHAOS=true` (`--chaos true`).
    pub chaos: Option<std::net::SocketAddr>,
    process: ServiceProcess,
}

impl WorkerProcess {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(workspace_binary("worker"));
        command
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG");
        let (process, listening) =
            ServiceProcess::spawn(command, "worker listening", Duration::from_secs(10));
        let address = |field: &str| {
            listening[field]
                .as_str()
                .map(|address| address.parse().expect("a socket address"))
        };
        Self {
            address: address("address").expect("the worker logs its address"),
            chaos: address("chaos_address"),
            process,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

/// `signal`, `wait`, `pid` of the process.
impl std::ops::Deref for WorkerProcess {
    type Target = ServiceProcess;

    fn deref(&self) -> &ServiceProcess {
        &self.process
    }
}

impl std::ops::DerefMut for WorkerProcess {
    fn deref_mut(&mut self) -> &mut ServiceProcess {
        &mut self.process
    }
}

/// A web server the project did not write, in an image built here from a Debian package
/// (`deploy/test-apps/`, `jobs/lib.sh`), for the "bring your own app" tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestApp {
    /// `busybox httpd` on 8080: answers `/`, 404 on `/health`, no `/stats`.
    BusyboxHttpd,
    /// nginx on 8080, as user 10001: answers `/`.
    Nginx,
}

impl TestApp {
    /// The image's repository, `rustybalancer-test/<name>`.
    pub fn repository(self) -> &'static str {
        match self {
            Self::BusyboxHttpd => "rustybalancer-test/busybox-httpd",
            Self::Nginx => "rustybalancer-test/nginx",
        }
    }

    /// The `jobs/lib.sh` function that builds it.
    fn builder(self) -> &'static str {
        match self {
            Self::BusyboxHttpd => "build_busybox_httpd_image",
            Self::Nginx => "build_nginx_image",
        }
    }
}

/// Builds `<app's repository>:test-<id>` with [`TEST_LABEL`] through `jobs/lib.sh` (which
/// installs the Debian package when it is missing; nothing is pulled), registering the image
/// for removal.
pub fn build_test_app_image(cleanup: &mut Cleanup, app: TestApp, id: &str) -> String {
    let tag = format!("{}:test-{id}", app.repository());
    cleanup.images.push(tag.clone());
    let lib = repo_root().join("jobs/lib.sh");
    let script = format!(
        "set -euo pipefail; source \"$1\"; {} \"$2\" --label \"$3\" --label \"$4\"",
        app.builder()
    );
    let output = Command::new("bash")
        .args(["-c", &script, "build-test-app"])
        .arg(&lib)
        .args([
            tag.as_str(),
            TEST_LABEL,
            &format!("rustybalancer.test-image={id}"),
        ])
        .output()
        .expect("bash is not installed");
    assert!(
        output.status.success(),
        "building {tag} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    tag
}
