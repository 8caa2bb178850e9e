//! Harness for the agent's tests: the agent in-process on loopback ports, a WebSocket
//! subscriber that records every snapshot, load generators, and the Docker fixtures.

#![allow(dead_code)]

pub mod redis;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    CancellationToken,
    queue::{Category, QueueSnapshot},
    testing::{Cleanup, TEST_LABEL, build_image, docker, unique, workspace_binary},
};
use deployment_agent::{Config, Listeners};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

/// The token [`fast_config`] gives the agent (tests about tokens set their own).
pub const TOKEN: &str = "test-agent-token";

/// The agent served by `deployment_agent::run` inside the test process.
pub struct TestAgent {
    pub http: SocketAddr,
    pub ws: SocketAddr,
    pub grpc: SocketAddr,
    pub client: reqwest::Client,
    /// The agent's AGENT_TOKEN, if any.
    pub token: Option<String>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), deployment_agent::RunError>>>,
}

impl TestAgent {
    pub async fn start(config: Config) -> Self {
        let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let listeners = Listeners {
            http: bind().await,
            ws: bind().await,
            grpc: bind().await,
        };
        let (http, ws, grpc) = (
            listeners.http.local_addr().unwrap(),
            listeners.ws.local_addr().unwrap(),
            listeners.grpc.local_addr().unwrap(),
        );
        let shutdown = CancellationToken::new();
        let token = config.token.clone();
        let task = tokio::spawn(deployment_agent::run(listeners, config, shutdown.clone()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self {
            http,
            ws,
            grpc,
            client,
            token,
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// `POST path` with a JSON body and the agent's token (when it has one).
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// `POST /scale {"replicas": n}` with the token, which must be accepted.
    pub async fn request_replicas(&self, replicas: usize) {
        let response = self
            .post("/scale", &serde_json::json!({ "replicas": replicas }))
            .await;
        assert_eq!(response.status(), 202, "POST /scale {replicas}");
    }

    /// Stops the agent (as on SIGTERM) and waits for it to finish.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("agent did not stop");
            result.unwrap().expect("agent failed");
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A WebSocket subscriber that keeps every snapshot it receives, with its arrival time.
#[derive(Clone)]
pub struct QueueWatcher {
    seen: Arc<Mutex<Vec<(Instant, QueueSnapshot)>>>,
    task: Arc<JoinHandle<()>>,
}

impl QueueWatcher {
    pub async fn connect(url: &str) -> Self {
        let (socket, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("WebSocket connect timed out")
        .expect("WebSocket connect failed");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let (_, mut read) = socket.split();
            while let Some(Ok(message)) = read.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                    let snapshot: QueueSnapshot =
                        serde_json::from_str(&text).expect("snapshot does not parse");
                    sink.lock().unwrap().push((Instant::now(), snapshot));
                }
            }
        });
        Self {
            seen,
            task: Arc::new(task),
        }
    }

    pub fn latest(&self) -> Option<QueueSnapshot> {
        self.seen.lock().unwrap().last().map(|(_, s)| s.clone())
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until the latest snapshot satisfies `check`; returns it and when it arrived.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&QueueSnapshot) -> bool,
    ) -> (Instant, QueueSnapshot) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((at, snapshot)) = self.seen.lock().unwrap().last().cloned() {
                if check(&snapshot) {
                    return (at, snapshot);
                }
            }
            if Instant::now() > deadline {
                let last = self.latest();
                panic!("timed out after {timeout:?} waiting for {what}; last snapshot: {last:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether any snapshot so far showed `id` in `category`.
    pub fn saw(&self, id: &str, category: Category) -> bool {
        self.seen.lock().unwrap().iter().any(|(_, s)| {
            s.items
                .iter()
                .any(|i| i.id == id && i.utilization_category == category)
        })
    }

    /// Whether `id` was already in the first snapshot received (the subscriber connected
    /// after it had appeared, so its earlier categories were not seen).
    pub fn in_first_snapshot(&self, id: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .first()
            .is_some_and(|(_, s)| s.items.iter().any(|i| i.id == id))
    }

    /// Every id that ever appeared.
    pub fn ids_seen(&self) -> HashSet<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, s)| s.items.iter().map(|i| i.id.clone()))
            .collect()
    }

    /// Snapshots arrive in order of `seq`.
    pub fn sequence_increases(&self) -> bool {
        self.seen
            .lock()
            .unwrap()
            .windows(2)
            .all(|w| w[0].1.seq < w[1].1.seq)
    }
}

impl Drop for QueueWatcher {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

/// Serving items (not INIT, not SUNDOWN).
pub fn serving(snapshot: &QueueSnapshot) -> Vec<&common::queue::QueueItem> {
    snapshot
        .items
        .iter()
        .filter(|i| i.utilization_category.accepts_new_requests())
        .collect()
}

/// Load on a set of workers: `per_worker` clients each sending jobs back to back.
pub struct Load {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<u64>>,
}

impl Load {
    pub fn start(addresses: &[String], per_worker: usize, body: serde_json::Value) -> Self {
        let stop = CancellationToken::new();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for address in addresses {
            for _ in 0..per_worker {
                let (client, stop, body) = (client.clone(), stop.clone(), body.clone());
                let url = format!("http://{address}/submit");
                tasks.push(tokio::spawn(async move {
                    let mut done = 0;
                    while !stop.is_cancelled() {
                        match client.post(&url).json(&body).send().await {
                            Ok(response) if response.status().is_success() => done += 1,
                            _ => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                    done
                }));
            }
        }
        Self { stop, tasks }
    }

    /// Stops the load; the number of jobs completed.
    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        let mut total = 0;
        for task in self.tasks {
            total += task.await.unwrap_or(0);
        }
        total
    }
}

/// A test's slice of the Docker engine: the worker image, a network, a unique application
/// name for the agent's labels; all removed on drop.
pub struct DockerEnv {
    pub id: String,
    pub app: String,
    pub image: String,
    pub network: String,
    pub cleanup: Cleanup,
}

impl DockerEnv {
    pub fn new() -> Self {
        let id = unique();
        let app = format!("rbtest{}", id.replace('-', ""));
        let mut cleanup = Cleanup::default();
        cleanup.container_labels.push(format!("application={app}"));
        let image = build_image(&mut cleanup, "worker", &workspace_binary("worker"), &id);
        let network = format!("rb-test-{id}");
        cleanup.networks.push(network.clone());
        docker(&["network", "create", "--label", TEST_LABEL, &network]);
        Self {
            id,
            app,
            image,
            network,
            cleanup,
        }
    }

    /// [`fast_config`] on the Docker runtime with this env's image, labels and network.
    pub fn config(&self) -> Config {
        let mut config = fast_config();
        config.runtime = deployment_agent::RuntimeKind::Docker;
        config.image = self.image.clone();
        config.app = self.app.clone();
        config.network = Some(self.network.clone());
        config
    }

    /// Ids of this test's containers on the engine (running or not).
    pub fn containers(&self) -> Vec<String> {
        let filter = format!("label=application={}", self.app);
        docker(&["ps", "-aq", "--no-trunc", "--filter", &filter])
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

/// An agent configuration for tests: fast periods and short cooldowns.
pub fn fast_config() -> Config {
    let mut config = Config::defaults();
    config.host = [127, 0, 0, 1].into();
    config.agent_name = "rustybalancer-tests".into();
    config.default_container = Some(2);
    config.min_containers = 2;
    config.max_containers = 4;
    config.scale_check_period = Duration::from_millis(500);
    config.cooldown = Duration::from_secs(2);
    config.scale_down_stabilization = Duration::from_secs(3);
    config.probe_period = Duration::from_millis(250);
    config.target_concurrency = 2.0;
    config.stop_grace = Duration::from_secs(3);
    config.drain_timeout = Duration::from_secs(10);
    config.ws_ping = Duration::from_secs(2);
    config.shutdown_grace = Duration::from_secs(2);
    config.token = Some(TOKEN.into());
    config
}

/// The `balancer` binary routing on `agent`'s queue (WebSocket) and reporting to its gRPC
/// port, on loopback ports it picked itself; killed on drop.
pub struct Balancer {
    pub policy: String,
    pub address: SocketAddr,
    pub admin: SocketAddr,
    _process: common::testing::ServiceProcess,
}

impl Balancer {
    /// Starts it with `BALANCER_POLICY=policy`, `AGENT_TOKEN=token` and `settings` on top.
    pub fn start(agent: &TestAgent, token: &str, policy: &str, settings: &[(&str, &str)]) -> Self {
        Self::start_for(agent.ws, agent.grpc, token, policy, settings)
    }

    /// [`Balancer::start`] for the agent whose WebSocket and gRPC ports are `ws` and `grpc`
    /// (e.g. an [`AgentProcess`]).
    pub fn start_for(
        ws: SocketAddr,
        grpc: SocketAddr,
        token: &str,
        policy: &str,
        settings: &[(&str, &str)],
    ) -> Self {
        let urls = [
            ("AGENT_WS_URL", format!("ws://{ws}/ws")),
            ("AGENT_GRPC_URL", format!("http://{grpc}")),
        ];
        Self::spawn(&urls, token, policy, settings)
    }

    /// The balancer following several agents (`AGENT_WS_URLS`, `AGENT_GRPC_URLS`, in the
    /// order given): whichever is reachable, never going back to an older leader's queue.
    pub fn start_following(
        agents: &[&AgentProcess],
        token: &str,
        policy: &str,
        settings: &[(&str, &str)],
    ) -> Self {
        let list = |url: &dyn Fn(&AgentProcess) -> String| {
            agents
                .iter()
                .map(|agent| url(agent))
                .collect::<Vec<_>>()
                .join(",")
        };
        let urls = [
            (
                "AGENT_WS_URLS",
                list(&|agent| format!("ws://{}/ws", agent.ws)),
            ),
            (
                "AGENT_GRPC_URLS",
                list(&|agent| format!("http://{}", agent.grpc)),
            ),
        ];
        Self::spawn(&urls, token, policy, settings)
    }

    fn spawn(
        agent_urls: &[(&str, String)],
        token: &str,
        policy: &str,
        settings: &[(&str, &str)],
    ) -> Self {
        let mut command = std::process::Command::new(workspace_binary("balancer"));
        command
            .env_clear()
            .args(["--host", "127.0.0.1", "--port", "0", "--admin-port", "0"])
            .envs(agent_urls.iter().map(|(key, url)| (*key, url.as_str())))
            .env("AGENT_TOKEN", token)
            .env("BALANCER_POLICY", policy)
            .envs(settings.iter().copied());
        let (process, listening) = common::testing::ServiceProcess::spawn(
            command,
            "balancer listening",
            Duration::from_secs(20),
        );
        let address = |field: &str| {
            listening[field]
                .as_str()
                .and_then(|address| address.parse().ok())
                .unwrap_or_else(|| panic!("no {field} in {listening}"))
        };
        Self {
            policy: policy.to_owned(),
            address: address("address"),
            admin: address("admin_address"),
            _process: process,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The `dns_name`s of the backends that take new requests, from the admin port.
    pub async fn candidates(&self, client: &reqwest::Client) -> Vec<String> {
        let url = format!("http://{}/backends", self.admin);
        let Ok(response) = client.get(url).send().await else {
            return Vec::new();
        };
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        body["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|backend| backend["accepts_new_requests"] == true)
            .filter_map(|backend| backend["dns_name"].as_str().map(str::to_owned))
            .collect()
    }
}

/// One request of an [`OpenLoad`].
#[derive(Debug, Clone)]
pub struct Sent {
    /// When it was sent, Unix milliseconds (comparable with the agent's event times).
    pub at_ms: u64,
    pub latency: Duration,
    /// 0 when no answer came.
    pub status: u16,
    /// `X-Backend` of the answer.
    pub backend: Option<String>,
}

/// GET requests sent at a fixed rate whatever the answers (an open loop): a stalled backend
/// does not slow the sending down, as with real clients.
pub struct OpenLoad {
    stop: CancellationToken,
    task: JoinHandle<Vec<Sent>>,
}

impl OpenLoad {
    pub fn start(url: String, per_second: u32) -> Self {
        let stop = CancellationToken::new();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let period = Duration::from_secs(1) / per_second.max(1);
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut requests = tokio::task::JoinSet::new();
            let mut sent = Vec::new();
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    _ = tick.tick() => {
                        let (client, url) = (client.clone(), url.clone());
                        requests.spawn(async move {
                            let at_ms = now_ms();
                            let started = Instant::now();
                            let (status, backend) = match client.get(&url).send().await {
                                Ok(response) => {
                                    let backend = response
                                        .headers()
                                        .get("x-backend")
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_owned);
                                    let status = response.status().as_u16();
                                    let _ = response.bytes().await;
                                    (status, backend)
                                }
                                Err(_) => (0, None),
                            };
                            Sent { at_ms, latency: started.elapsed(), status, backend }
                        });
                    }
                    Some(Ok(done)) = requests.join_next() => sent.push(done),
                }
            }
            while let Some(done) = requests.join_next().await {
                sent.extend(done.ok());
            }
            sent.sort_by_key(|s| s.at_ms);
            sent
        });
        Self { stop, task }
    }

    /// Stops sending, waits for the answers still due, and returns every request.
    pub async fn stop(self) -> Vec<Sent> {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `q` quantile (0..=1) of `values` (nearest rank); zero when empty.
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The `deployment-agent` binary as a child process on free loopback ports, on the process
/// runtime with no worker (min 0), logging JSON; killed and reaped when dropped. It can be
/// restarted on the same ports with the same settings, frozen (SIGSTOP) and thawed.
pub struct AgentProcess {
    pub http: SocketAddr,
    pub ws: SocketAddr,
    pub grpc: SocketAddr,
    child: std::process::Child,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Every variable it was started with, defaults first (for a restart).
    env: Vec<(String, String)>,
}

impl AgentProcess {
    /// Starts the binary with `env` on top of the idle defaults (no token unless given) and
    /// waits until its HTTP port answers.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let port = || common::testing::free_port();
        let (http, ws, grpc) = (port(), port(), port());
        let app = format!("rbbin{}", unique().replace('-', ""));
        let worker = workspace_binary("worker");
        let defaults = [
            ("AGENT_HOST", "127.0.0.1".to_owned()),
            ("HOST_PORT_HTTP_DEPLOYMENT_AGENT", http.to_string()),
            ("HOST_PORT_WS_DEPLOYMENT_AGENT", ws.to_string()),
            ("HOST_PORT_GRPC_DEPLOYMENT_AGENT", grpc.to_string()),
            ("AGENT_RUNTIME", "process".to_owned()),
            ("WORKER_BINARY", worker.to_string_lossy().into_owned()),
            ("APP_IDENTIFIER", app),
            ("AGENT_NAME", "rustybalancer-tests".to_owned()),
            ("MIN_CONTAINERS", "0".to_owned()),
            ("DEFAULT_CONTAINER", "0".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        let env: Vec<(String, String)> = defaults
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .chain(
                env.iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
            )
            .collect();
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let child = Self::spawn(&env, &logs);
        let agent = Self {
            http: loopback(http),
            ws: loopback(ws),
            grpc: loopback(grpc),
            child,
            logs,
            env,
        };
        agent.wait_until_it_answers().await;
        agent
    }

    /// Starts the binary with `env` (later values win), its log read into `logs`.
    fn spawn(
        env: &[(String, String)],
        logs: &Arc<Mutex<Vec<serde_json::Value>>>,
    ) -> std::process::Child {
        use std::io::{BufRead, BufReader};
        let mut command = std::process::Command::new(workspace_binary("deployment-agent"));
        command
            .env_clear()
            .envs(env.iter().map(|(key, value)| (key, value)))
            .args(["--log-format", "json"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("cannot start deployment-agent");
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(logs);
        // Reads the log to its end, so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(event);
                }
            }
        });
        child
    }

    async fn wait_until_it_answers(&self) {
        let client = reqwest::Client::new();
        let health = format!("http://{}/health", self.http);
        common::testing::eventually(
            "the agent binary to answer",
            Duration::from_secs(20),
            || {
                let request = client.get(&health).send();
                async move { request.await.ok().filter(|r| r.status().is_success()) }
            },
        )
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://<its HTTP address><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The value of a variable it was started with (the last one given).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// Log events so far (JSON, flattened), across restarts.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().clone()
    }

    /// Resident memory now (`VmRSS` of /proc/<pid>/status), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("cannot read the agent's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("no VmRSS in /proc status")
    }

    /// Sends the signal `name` (`TERM`, `STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Freezes the process (SIGSTOP): its sockets stay open, nothing runs, its clocks go on.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Thaws a frozen process (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// SIGTERM, then waits up to `grace` for it to exit; its exit status.
    pub async fn stop(&mut self, grace: Duration) -> std::process::ExitStatus {
        self.terminate();
        self.exited_within(grace)
            .await
            .unwrap_or_else(|| panic!("the agent did not exit within {grace:?} of SIGTERM"))
    }

    /// Starts a stopped agent again on the same ports with the same settings and waits until
    /// it answers.
    pub async fn start_again(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_some(),
            "the agent still runs"
        );
        self.child = Self::spawn(&self.env, &self.logs);
        self.wait_until_it_answers().await;
    }

    /// [`AgentProcess::stop`], then [`AgentProcess::start_again`]; the exit status.
    pub async fn restart(&mut self, grace: Duration) -> std::process::ExitStatus {
        let status = self.stop(grace).await;
        self.start_again().await;
        status
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SIGKILL ends a frozen (SIGSTOPped) process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills every worker process whose command line matches the pattern when a test ends,
/// passed or failed.
pub struct KillOnDrop(pub String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill")
            .args(["-9", "-f", "--", &self.0])
            .status();
    }
}
