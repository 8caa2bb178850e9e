//! Test harness: real workers in-process, the balancer in-process or as its binary, a
//! WebSocket + gRPC agent stand-in, and a small HTTP backend for what the worker does not serve
//! (echoing headers, static files, large downloads, WebSocket).

#![allow(dead_code)]

pub mod agent;
pub mod backend;

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use balancer::{Config, Listeners};
use common::{
    CancellationToken, queue::Category, queue::QueueItem, serve::Stopped, testing::ServiceProcess,
};
use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};

pub fn balancer_binary() -> &'static str {
    env!("CARGO_BIN_EXE_balancer")
}

pub use common::testing::free_port;

/// A URL on loopback where nothing listens: load reports sent there fail quietly, and no test
/// ever reaches a real agent on this machine.
pub fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// A balancer config for tests: loopback, no real agent, fixed seed.
pub fn config() -> Config {
    Config {
        host: [127, 0, 0, 1].into(),
        port: 0,
        admin_port: 0,
        agent_host: "127.0.0.1".into(),
        agent_grpc_url: None,
        agent_reconnect_max: Duration::from_millis(300),
        balancer_id: Some("test-balancer".into()),
        seed: Some(42),
        queue_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    }
}

/// A config over static backends.
/// The balancer's command line parsed (`args` without the program name), for settings whose
/// types are the balancer's own and made only by parsing.
pub fn parsed_config(args: &[&str]) -> Config {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }
    use clap::Parser;
    Cli::try_parse_from(std::iter::once("balancer").chain(args.iter().copied()))
        .unwrap()
        .config
}

pub fn static_config(backends: &[SocketAddr]) -> Config {
    Config {
        backends: backends
            .iter()
            .map(|a| a.to_string().parse().unwrap())
            .collect(),
        ..config()
    }
}

/// A config that follows `agent_url`, reports going to `grpc_url` (or nowhere).
pub fn agent_config(agent_url: &str, grpc_url: Option<String>) -> Config {
    Config {
        agent_ws_url: Some(agent_url.to_owned()),
        agent_grpc_url: Some(grpc_url.unwrap_or_else(dead_url)),
        agent_token: Some(agent::AGENT_TOKEN.into()),
        ..config()
    }
}

/// A config that follows the agents at `agent_urls` in this order, reports going to every one
/// of `grpc_urls`.
pub fn agents_config(agent_urls: &[String], grpc_urls: &[String]) -> Config {
    Config {
        agent_ws_urls: agent_urls.to_vec(),
        agent_grpc_urls: grpc_urls.to_vec(),
        agent_token: Some(agent::AGENT_TOKEN.into()),
        ..config()
    }
}

/// The value of the unlabelled counter or gauge `name` in a `/metrics` text.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// A TCP listener that counts the connections made to it and never answers: a backend that
/// must never be chosen.
pub struct Untouchable {
    pub address: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Untouchable {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = tokio::spawn({
            let accepted = std::sync::Arc::clone(&accepted);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    drop(stream);
                }
            }
        });
        Self {
            address,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Untouchable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A queue item for a backend listening on `address`.
pub fn item(name: &str, address: SocketAddr, score: f64, category: Category) -> QueueItem {
    QueueItem {
        id: format!("id-{name}"),
        dns_name: name.to_owned(),
        address: address.to_string(),
        score,
        utilization_category: category,
        in_flight: 0,
        cpu_score: score,
        memory_score: score,
        network_score: score,
        availability_score: score,
        concurrency: 0,
    }
}

/// A worker served by `worker::run` inside the test process.
pub struct TestWorker {
    pub address: SocketAddr,
    pub id: String,
    /// The chaos port (`POST /stop`), open when the config has `chaos: true`.
    pub chaos: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Stopped>>,
}

impl TestWorker {
    pub async fn start(id: &str) -> Self {
        Self::start_with(worker::Config {
            worker_id: Some(id.to_owned()),
            work_unit: 20_000,
            ..worker::Config::default()
        })
        .await
    }

    pub async fn start_with(config: worker::Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let chaos = if config.chaos {
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let chaos_address = chaos.as_ref().map(|l| l.local_addr().unwrap());
        let id = config.worker_id.clone().unwrap_or_default();
        let shutdown = CancellationToken::new();
        let listeners = worker::Listeners {
            traffic: listener,
            chaos,
        };
        let task = tokio::spawn(worker::serve(listeners, config, shutdown.clone()));
        Self {
            address,
            id,
            chaos: chaos_address,
            shutdown,
            task: Some(task),
        }
    }

    /// Simulates a crash (`POST /stop` on the chaos port): every connection drops, the port
    /// closes.
    pub async fn crash(&mut self) {
        let chaos = self.chaos.expect("start the worker with chaos: true");
        let response = reqwest::Client::new()
            .post(format!("http://{chaos}/stop"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let task = self.task.take().unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("worker did not crash")
            .unwrap();
        assert_eq!(stopped, Stopped::Aborted);
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The balancer served by `balancer::run` inside the test process.
pub struct TestBalancer {
    pub address: SocketAddr,
    pub admin: SocketAddr,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Stopped>>,
}

/// The HTTP/1.1 path the tests' balancers take: `BALANCER_TEST_HTTP1_PATH` (`fast`, the
/// default, or `hyper`), so that `jobs/test.sh` runs every test against both.
pub fn http1_fast_path() -> bool {
    match std::env::var("BALANCER_TEST_HTTP1_PATH").as_deref() {
        Err(_) | Ok("fast") => true,
        Ok("hyper") => false,
        Ok(other) => panic!("BALANCER_TEST_HTTP1_PATH: expected fast or hyper, got {other}"),
    }
}

impl TestBalancer {
    pub async fn start(mut config: Config) -> Self {
        config.http1_fast_path = http1_fast_path();
        Self::start_as_configured(config).await
    }

    /// With `config` as it is (its HTTP/1.1 path too).
    pub async fn start_as_configured(config: Config) -> Self {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = http.local_addr().unwrap();
        let admin_address = admin.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(balancer::run(
            Listeners { http, admin },
            config,
            shutdown.clone(),
        ));
        Self {
            address,
            admin: admin_address,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `GET /costs` on the admin port.
    pub async fn costs(&self) -> Value {
        self.admin_json("/costs").await.1
    }

    /// `GET` of an admin path: its status and JSON body.
    pub async fn admin_json(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let response = self.client.get(self.admin_url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    pub async fn backends(&self) -> Value {
        self.admin_json("/backends").await.1
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until `/ready` answers 200 (at least one routable backend).
    pub async fn wait_ready(&self) {
        wait_for(
            "the balancer to be ready",
            Duration::from_secs(10),
            || async {
                self.client
                    .get(self.admin_url("/ready"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
    }

    /// Waits until `X-Backend` of `GET path` is `name`.
    pub async fn wait_routed_to(&self, path: &str, name: &str) {
        wait_for(
            &format!("requests to reach {name}"),
            Duration::from_secs(10),
            || async {
                match self.client.get(self.url(path)).send().await {
                    Ok(r) => backend_of(&r) == name,
                    Err(_) => false,
                }
            },
        )
        .await;
    }

    pub async fn stop(mut self) -> Stopped {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("balancer did not stop")
            .unwrap()
    }
}

impl Drop for TestBalancer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The `X-Backend` of a response.
pub fn backend_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Polls `check` every 25 ms until it holds; panics after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sends raw bytes on a new connection and returns what comes back until the server closes,
/// the head of an answer is complete, or `timeout` passes.
pub async fn raw_exchange(address: SocketAddr, request: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // The server may answer and close before it has read everything; that is fine.
    let _ = tokio::time::timeout(timeout, stream.write_all(request)).await;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buffer[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The `balancer` binary as a child process on loopback ports it picked itself.
pub struct BalancerProcess {
    pub address: SocketAddr,
    pub admin: SocketAddr,
    process: ServiceProcess,
}

impl BalancerProcess {
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_env(args, &[])
    }

    /// With settings given as environment variables, as a container gets them.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(balancer_binary());
        command
            .args(["--host", "127.0.0.1", "--port", "0", "--admin-port", "0"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG");
        let (process, listening) =
            ServiceProcess::spawn(command, "balancer listening", Duration::from_secs(20));
        let address = |field: &str| {
            listening[field]
                .as_str()
                .unwrap_or_default()
                .parse()
                .unwrap()
        };
        Self {
            address: address("address"),
            admin: address("admin_address"),
            process,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Peak resident memory of the process in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("no VmHWM in /proc/<pid>/status")
    }
}

/// `signal`, `wait`, `pid` of the process.
impl std::ops::Deref for BalancerProcess {
    type Target = ServiceProcess;

    fn deref(&self) -> &ServiceProcess {
        &self.process
    }
}

impl std::ops::DerefMut for BalancerProcess {
    fn deref_mut(&mut self) -> &mut ServiceProcess {
        &mut self.process
    }
}

#[allow(unused_imports)] // not every test binary starts a worker process
pub use common::testing::WorkerProcess;
