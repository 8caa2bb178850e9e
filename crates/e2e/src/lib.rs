//! The harness of the end-to-end tests: the real stack started the way users start it
//! (`jobs/run.sh -e prod|dev|slim`, with the binaries `jobs/test.sh` already built), a WebSocket recorder
//! of the agent's queue that survives agent restarts, the `loadgen` binary, and a teardown
//! through `jobs/reset.sh` that also runs when the test fails.
//!
//! Every stack gets its own compose project, worker label, network, image tag, host ports and
//! agent token, so it never meets a stack a user is running on the same machine.
//!
//! The prod and dev stacks run two agents (services `deployment-agent` and
//! `deployment-agent-2`, whose `AGENT_ID` is their service name), one leading; the slim stack
//! runs the first only. [`Stack::agents`] lists them, [`leadership`] reads who leads.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    queue::{Category, QueueItem, QueueSnapshot},
    testing::{binary_dir, free_port, repo_root, unique},
};
use futures_util::StreamExt;
use serde::Deserialize;

/// The services with an image in `deploy/` (`run.sh` builds them all).
const SERVICES: [&str; 4] = ["balancer", "deployment-agent", "loadgen", "worker"];

/// One running stack; torn down (containers, workers, network, volumes, images) on drop.
pub struct Stack {
    /// Compose project name.
    pub project: String,
    /// `APP_IDENTIFIER`: the workers' `application` label and the network's name.
    pub app: String,
    /// Image tag of this stack's images.
    pub tag: String,
    /// `http://127.0.0.1:<port>` of the balancer's traffic port.
    pub balancer: String,
    /// The balancer's admin port.
    pub admin: String,
    /// The first agent's HTTP API (service `deployment-agent`).
    pub agent: String,
    /// The first agent's queue WebSocket.
    pub ws: String,
    /// The second agent's HTTP API (service `deployment-agent-2`; none runs in slim).
    pub agent_2: String,
    /// The second agent's queue WebSocket.
    pub ws_2: String,
    /// The bearer token the agent requires on mutating calls (`AGENT_TOKEN`, given to run.sh).
    pub token: String,
    env: Vec<(String, String)>,
    torn_down: bool,
}

impl Stack {
    /// Starts a stack with `jobs/run.sh -e <environment>` (`prod`, `dev` or `slim`; no build:
    /// `SKIP_BUILD=1`), with `settings` on top of that environment's defaults.
    pub fn up(environment: &str, settings: &[(&str, &str)]) -> Self {
        Self::up_with(environment, &[], settings)
    }

    /// [`Stack::up`] with compose files on top (`jobs/run.sh -e <environment> -f <file>...`,
    /// paths relative to the repository, e.g. `docker-compose.byoa.yaml`).
    pub fn up_with(environment: &str, compose_files: &[&str], settings: &[(&str, &str)]) -> Self {
        let id = unique();
        let project = format!("rbe2e-{id}");
        let tag = format!("e2e-{id}");
        let [balancer, admin, agent, ws, grpc] = [(); 5].map(|()| free_port());
        let [agent_2, ws_2, grpc_2] = [(); 3].map(|()| free_port());
        let token = random_token();
        let target_dir = binary_dir()
            .parent()
            .and_then(Path::parent)
            .expect("the binaries are not under <target>/<triple>/release")
            .to_path_buf();
        let mut env: Vec<(String, String)> = [
            ("SKIP_BUILD", "1".to_owned()),
            // The binaries this test runs on were built in the tests' profile.
            ("BUILD_PROFILE", "release".to_owned()),
            (
                "CARGO_TARGET_DIR",
                target_dir.to_string_lossy().into_owned(),
            ),
            ("COMPOSE_PROJECT_NAME", project.clone()),
            ("APP_IDENTIFIER", project.clone()),
            ("IMAGE_TAG", tag.clone()),
            ("DOCKER_IMAGE", format!("rustybalancer/worker:{tag}")),
            ("HOST_PORT_HTTP_BALANCER", balancer.to_string()),
            ("HOST_PORT_ADMIN_BALANCER", admin.to_string()),
            ("HOST_PORT_HTTP_DEPLOYMENT_AGENT", agent.to_string()),
            ("HOST_PORT_WS_DEPLOYMENT_AGENT", ws.to_string()),
            ("HOST_PORT_GRPC_DEPLOYMENT_AGENT", grpc.to_string()),
            ("HOST_PORT_HTTP_DEPLOYMENT_AGENT_2", agent_2.to_string()),
            ("HOST_PORT_WS_DEPLOYMENT_AGENT_2", ws_2.to_string()),
            ("HOST_PORT_GRPC_DEPLOYMENT_AGENT_2", grpc_2.to_string()),
            ("AGENT_TOKEN", token.clone()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        env.extend(
            settings
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
        );
        let stack = Self {
            app: project.clone(),
            project,
            tag,
            balancer: format!("http://127.0.0.1:{balancer}"),
            admin: format!("http://127.0.0.1:{admin}"),
            agent: format!("http://127.0.0.1:{agent}"),
            ws: format!("ws://127.0.0.1:{ws}/ws"),
            agent_2: format!("http://127.0.0.1:{agent_2}"),
            ws_2: format!("ws://127.0.0.1:{ws_2}/ws"),
            token,
            env,
            torn_down: false,
        };
        let mut args = vec!["-e", environment];
        for file in compose_files {
            args.extend(["-f", file]);
        }
        let output = stack.script_in_root("run.sh", &args);
        if !output.status.success() {
            // Keep what run.sh said; the drop tears down whatever it started.
            stack.dump_logs();
            panic!(
                "jobs/run.sh {} failed:\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        stack
    }

    /// Runs `jobs/<name>` with this stack's environment.
    fn script(&self, name: &str, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(repo_root().join("jobs").join(name))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap_or_else(|err| panic!("cannot run jobs/{name}: {err}"))
    }

    /// [`Stack::script`] run from the repository root, as the README's commands are.
    fn script_in_root(&self, name: &str, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(Path::new("jobs").join(name))
            .args(args)
            .current_dir(repo_root())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap_or_else(|err| panic!("cannot run jobs/{name}: {err}"))
    }

    /// The ids of the containers of a compose service (running or not).
    fn service_containers(&self, service: &str) -> BTreeSet<String> {
        list(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])
    }

    /// The agents this stack runs (both in prod and dev, the first only in slim): those whose
    /// service has a container.
    pub fn agents(&self) -> Vec<AgentEndpoint> {
        [
            (AGENT_SERVICES[0], &self.agent, &self.ws),
            (AGENT_SERVICES[1], &self.agent_2, &self.ws_2),
        ]
        .into_iter()
        .filter(|(service, _, _)| !self.service_containers(service).is_empty())
        .map(|(service, http, ws)| AgentEndpoint {
            service,
            http: http.clone(),
            ws: ws.clone(),
        })
        .collect()
    }

    /// The agent whose service (= `AGENT_ID`) is `id`.
    pub fn agent_by_id(&self, id: &str) -> AgentEndpoint {
        self.agents()
            .into_iter()
            .find(|agent| agent.service == id)
            .unwrap_or_else(|| panic!("no running agent with AGENT_ID {id}"))
    }

    /// Waits until exactly one agent leads and every other follows it at the same epoch;
    /// returns (leader, followers, epoch).
    pub async fn leader(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> (AgentEndpoint, Vec<AgentEndpoint>, u64) {
        let agents = self.agents();
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            for agent in &agents {
                seen.push(leadership(client, &agent.http).await);
            }
            let leaders: Vec<&Leadership> = seen
                .iter()
                .flatten()
                .filter(|l| l.role == "leader")
                .collect();
            if let [leader] = leaders.as_slice() {
                // Every other agent answers, as a follower of that leader at its epoch.
                let agreed = seen.iter().all(|l| {
                    l.as_ref().is_some_and(|l| {
                        l.agent_id == leader.agent_id
                            || (l.role == "follower"
                                && l.leader_id.as_deref() == Some(&leader.agent_id)
                                && l.leader_epoch == Some(leader.epoch))
                    })
                });
                if agreed {
                    let (lead, rest): (Vec<AgentEndpoint>, Vec<AgentEndpoint>) = agents
                        .into_iter()
                        .partition(|agent| agent.service == leader.agent_id);
                    let lead = lead.into_iter().next().unwrap_or_else(|| {
                        panic!("the leader {} is no agent service", leader.agent_id)
                    });
                    return (lead, rest, leader.epoch);
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for one leader the others follow: {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The id of the one container of a compose service.
    pub fn service_container(&self, service: &str) -> String {
        let ids = self.service_containers(service);
        assert_eq!(
            ids.len(),
            1,
            "expected one {service} container, got {ids:?}"
        );
        ids.into_iter().next().unwrap_or_default()
    }

    /// The agent's worker containers in one Docker state: `running` (serving; paused ones
    /// are not running) or `paused` (warm standbys).
    pub fn worker_containers(&self, status: &str) -> BTreeSet<String> {
        list(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=application={}", self.app),
            "--filter",
            &format!("status={status}"),
        ])
    }

    /// `jobs/reset.sh`, then checks that no container, network or volume of the stack is left.
    pub fn tear_down(&mut self) {
        let output = self.script("reset.sh", &[]);
        self.torn_down = true;
        self.remove_images();
        assert!(
            output.status.success(),
            "jobs/reset.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let by_project = format!("label=com.docker.compose.project={}", self.project);
        let left = [
            (
                "stack containers",
                list(&["ps", "-aq", "--filter", &by_project]),
            ),
            (
                "workers",
                list(&[
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=application={}", self.app),
                ]),
            ),
            (
                "volumes",
                list(&["volume", "ls", "-q", "--filter", &by_project]),
            ),
            (
                "networks",
                list(&["network", "ls", "--format", "{{.Name}}"])
                    .into_iter()
                    .filter(|name| *name == self.app)
                    .collect(),
            ),
        ];
        for (what, ids) in left {
            assert!(ids.is_empty(), "jobs/reset.sh left {what} behind: {ids:?}");
        }
    }

    fn remove_images(&self) {
        let mut images: Vec<String> = SERVICES
            .iter()
            .map(|service| format!("rustybalancer/{service}:{}", self.tag))
            .collect();
        images.push(format!("rustybalancer/redis:{}", self.tag));
        let _ = Command::new("docker")
            .args(["image", "rm", "-f"])
            .args(&images)
            .output();
    }

    /// Prints the last lines of the agent's and the balancer's logs (for a failed run).
    pub fn dump_logs(&self) {
        for service in ["deployment-agent", "deployment-agent-2", "balancer"] {
            for id in self.service_containers(service) {
                if let Ok(output) = Command::new("docker")
                    .args(["logs", "--tail", "80", &id])
                    .output()
                {
                    eprintln!(
                        "----- {service} log (last 80 lines) -----\n{}{}",
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
        let _ = self.script("reset.sh", &[]);
        self.remove_images();
    }
}

/// The compose services of the agents; each one's `AGENT_ID` is its service name.
pub const AGENT_SERVICES: [&str; 2] = ["deployment-agent", "deployment-agent-2"];

/// One agent of a stack, as the host reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEndpoint {
    /// Its compose service, also its `AGENT_ID`.
    pub service: &'static str,
    /// `http://127.0.0.1:<port>` of its HTTP API.
    pub http: String,
    /// Its queue WebSocket.
    pub ws: String,
}

/// What an agent's `GET /status` says about leadership (`"leadership"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// This agent's `AGENT_ID`.
    pub agent_id: String,
    /// `leader` or `follower`.
    pub role: String,
    /// The epoch this agent knows (its own while it leads).
    pub epoch: u64,
    /// The leader it knows of (`"leader": {"id", "epoch", ...}`), if any.
    pub leader_id: Option<String>,
    pub leader_epoch: Option<u64>,
}

/// The leadership `GET <agent>/status` reports; `None` when the agent does not answer.
pub async fn leadership(client: &reqwest::Client, agent: &str) -> Option<Leadership> {
    let status: serde_json::Value = client
        .get(format!("{agent}/status"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let leadership = &status["leadership"];
    Some(Leadership {
        agent_id: leadership["agent_id"].as_str()?.to_owned(),
        role: leadership["role"].as_str()?.to_owned(),
        epoch: leadership["epoch"].as_u64()?,
        leader_id: leadership["leader"]["id"].as_str().map(str::to_owned),
        leader_epoch: leadership["leader"]["epoch"].as_u64(),
    })
}

/// Polls `agent`'s `/status` every 50 ms until it leads with an epoch above `above`; the
/// time from `since`, or `None` after `timeout`.
pub async fn leads_above(
    client: &reqwest::Client,
    agent: &str,
    above: u64,
    since: Instant,
    timeout: Duration,
) -> Option<(Duration, u64)> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(l) = leadership(client, agent).await {
            if l.role == "leader" && l.epoch > above {
                return Some((since.elapsed(), l.epoch));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A fresh agent token: 32 random bytes as hex.
fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .expect("cannot read /dev/urandom");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// How a container runs: the user its configuration names (`docker inspect`, `Config.User`),
/// the extra groups it gets (`HostConfig.GroupAdd`) and the host uids of its processes
/// (`docker top`).
#[derive(Debug)]
pub struct RunsAs {
    pub user: String,
    pub group_add: Vec<String>,
    pub uids: Vec<u32>,
}

/// How the container `id` runs; see [`RunsAs`].
pub fn runs_as(id: &str) -> RunsAs {
    let user = common::testing::docker(&["inspect", "-f", "{{.Config.User}}", id]);
    let group_add = common::testing::docker(&[
        "inspect",
        "-f",
        "{{range .HostConfig.GroupAdd}}{{.}} {{end}}",
        id,
    ])
    .split_whitespace()
    .map(str::to_owned)
    .collect();
    // `docker top` runs ps on the host and keeps the container's processes: numeric uids.
    let top = common::testing::docker(&["top", id, "-eo", "pid,uid"]);
    let uids = top
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
        .collect();
    RunsAs {
        user,
        group_add,
        uids,
    }
}

/// The host addresses each container port of `id` is published on (`docker port`), e.g.
/// `8000 -> ["0.0.0.0", "::"]`.
pub fn published_on(id: &str) -> BTreeMap<u16, BTreeSet<String>> {
    let mut ports: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    // Lines like `9000/tcp -> 127.0.0.1:49153` or `8000/tcp -> :::49154`.
    for line in common::testing::docker(&["port", id]).lines() {
        let Some((port, host)) = line.split_once(" -> ") else {
            continue;
        };
        let Some(port) = port.split('/').next().and_then(|p| p.trim().parse().ok()) else {
            continue;
        };
        let address = host.rsplit_once(':').map_or(host, |(address, _)| address);
        ports.entry(port).or_default().insert(
            address
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        );
    }
    ports
}

/// `docker ARGS` as a set of its output lines; empty when docker fails.
fn list(args: &[&str]) -> BTreeSet<String> {
    Command::new("docker")
        .args(args)
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Every snapshot of the agents' queue seen on a WebSocket, reconnecting whenever the agent
/// goes away (it is restarted or killed during the test), to the next URL of its list.
pub struct QueueRecorder {
    seen: Arc<Mutex<Vec<(Instant, QueueSnapshot)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl QueueRecorder {
    /// Connects to `url` and keeps recording until dropped.
    pub async fn start(url: &str) -> Self {
        Self::following(&[url.to_owned()]).await
    }

    /// Records from the first of `urls` that answers; when its socket ends, the next one (in
    /// turn). Every agent serves the leader's queue, so any of a stack's agents will do.
    pub async fn following(urls: &[String]) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let urls = urls.to_vec();
        let task = tokio::spawn(async move {
            for url in urls.iter().cycle() {
                if let Ok(Ok((socket, _))) = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio_tungstenite::connect_async(url.as_str()),
                )
                .await
                {
                    let (_, mut read) = socket.split();
                    while let Some(Ok(message)) = read.next().await {
                        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                            let snapshot: QueueSnapshot = serde_json::from_str(&text)
                                .unwrap_or_else(|err| panic!("bad snapshot {text}: {err}"));
                            sink.lock().unwrap().push((Instant::now(), snapshot));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let recorder = Self { seen, task };
        recorder
            .wait_until("a first queue snapshot", Duration::from_secs(20), |_| true)
            .await;
        recorder
    }

    /// The latest snapshot, if any.
    pub fn latest(&self) -> Option<QueueSnapshot> {
        self.seen.lock().unwrap().last().map(|(_, s)| s.clone())
    }

    /// Waits until the latest snapshot satisfies `check`; returns it.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&QueueSnapshot) -> bool,
    ) -> QueueSnapshot {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(snapshot) = self.latest() {
                if check(&snapshot) {
                    return snapshot;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last snapshot: {:#?}",
                self.latest()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The categories each container went through since `since`, in order, repeats folded.
    pub fn journeys(&self, since: Instant) -> BTreeMap<String, Vec<Category>> {
        let mut journeys: BTreeMap<String, Vec<Category>> = BTreeMap::new();
        for (at, snapshot) in self.seen.lock().unwrap().iter() {
            if *at < since {
                continue;
            }
            for item in &snapshot.items {
                let journey = journeys.entry(item.id.clone()).or_default();
                if journey.last() != Some(&item.utilization_category) {
                    journey.push(item.utilization_category);
                }
            }
        }
        journeys
    }

    /// The most containers not SUNDOWN at once since `since`.
    pub fn peak_active(&self, since: Instant) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, snapshot)| active(snapshot).len())
            .max()
            .unwrap_or(0)
    }
}

impl Drop for QueueRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The containers of a snapshot that are not SUNDOWN.
pub fn active(snapshot: &QueueSnapshot) -> Vec<&QueueItem> {
    snapshot
        .items
        .iter()
        .filter(|item| item.utilization_category != Category::Sundown)
        .collect()
}

/// The containers of a snapshot that take new requests (neither INIT nor SUNDOWN).
pub fn serving(snapshot: &QueueSnapshot) -> Vec<&QueueItem> {
    snapshot
        .items
        .iter()
        .filter(|item| item.utilization_category.accepts_new_requests())
        .collect()
}

/// Whether `journey` passes through `steps` in that order (other categories may come between).
pub fn passes_through(journey: &[Category], steps: &[&[Category]]) -> bool {
    let mut rest = journey.iter();
    steps
        .iter()
        .all(|step| rest.by_ref().any(|category| step.contains(category)))
}

/// A `loadgen` run in the background.
pub struct Loadgen {
    child: tokio::process::Child,
    args: Vec<String>,
    /// Its results CSV.
    pub results: PathBuf,
    /// Its summary JSON.
    pub summary: PathBuf,
}

/// What `loadgen --summary-json` wrote (the part the test reads).
#[derive(Debug, Deserialize)]
pub struct Summary {
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
}

/// One row of a results CSV (the columns the test reads).
#[derive(Debug, Deserialize)]
pub struct ResultRow {
    pub due_s: f64,
    pub latency_ms: f64,
    pub status: u16,
    pub backend: String,
    pub error: String,
}

impl Loadgen {
    /// Starts `loadgen run ARGS --out <dir>/<name>.csv --summary-json <dir>/<name>.json --quiet`.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Self {
        let results = dir.join(format!("{name}.csv"));
        let summary = dir.join(format!("{name}.json"));
        let mut all: Vec<String> = vec!["run".into()];
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        all.extend([
            "--quiet".into(),
            "--out".into(),
            results.to_string_lossy().into_owned(),
            "--summary-json".into(),
            summary.to_string_lossy().into_owned(),
        ]);
        let child = tokio::process::Command::new(common::testing::workspace_binary("loadgen"))
            .args(&all)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start loadgen");
        Self {
            child,
            args: all,
            results,
            summary,
        }
    }

    /// Waits for the run to end (at most `timeout`) and reads its summary and rows.
    pub async fn finish(self, timeout: Duration) -> (Summary, Vec<ResultRow>) {
        let output = tokio::time::timeout(timeout, self.child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("loadgen {:?} ran past {timeout:?}", self.args))
            .expect("loadgen did not run");
        assert!(
            output.status.success(),
            "loadgen {:?} failed: {}",
            self.args,
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: Summary = serde_json::from_slice(
            &std::fs::read(&self.summary).expect("loadgen wrote no summary"),
        )
        .expect("the summary does not parse");
        let rows = csv::Reader::from_path(&self.results)
            .expect("loadgen wrote no results")
            .deserialize()
            .collect::<Result<Vec<ResultRow>, _>>()
            .expect("the results do not parse");
        (summary, rows)
    }
}

/// A small job sent with `X-Request-Id: id` through the balancer at `balancer` (answered 200,
/// the same id back), then its journey from the agent at `agent` (`GET /requests/{id}`) once
/// it holds the worker's `job done` line, within `within` (issue #18).
pub async fn follow_job(
    client: &reqwest::Client,
    balancer: &str,
    agent: &str,
    id: &str,
    within: Duration,
) -> serde_json::Value {
    let sent = client
        .post(format!("{balancer}/submit"))
        .header("x-request-id", id)
        .header("content-type", "application/json")
        .body(r#"{"operation":"monte_carlo_pi","data":{"iterations":1000}}"#)
        .send()
        .await
        .expect("a job through the balancer");
    assert_eq!(sent.status(), 200);
    assert_eq!(sent.headers()["x-request-id"], id);
    let url = format!("{agent}/requests/{id}");
    common::testing::eventually(
        "the request's journey with the worker's line",
        within,
        || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let journey: serde_json::Value =
                    client.get(url).send().await.ok()?.json().await.ok()?;
                let done = journey["logs"].as_array()?.iter().any(|line| {
                    line["line"]
                        .as_str()
                        .is_some_and(|l| l.contains("job done"))
                });
                done.then_some(journey)
            }
        },
    )
    .await
}

/// `GET url` as JSON; panics on a failed request or a body that is not JSON.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"))
        .json()
        .await
        .unwrap_or_else(|err| panic!("GET {url}: not JSON: {err}"))
}

/// An agent's answer to `POST /scale`: status, body, and the agent a follower forwarded it to
/// (`X-Forwarded-To-Leader`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleAnswer {
    pub status: u16,
    pub body: serde_json::Value,
    pub forwarded_to: Option<String>,
}

/// `POST <agent>/scale` with `body`, with the bearer `token` when given.
pub async fn post_scale(
    client: &reqwest::Client,
    agent: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> ScaleAnswer {
    let mut request = client.post(format!("{agent}/scale")).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request
        .send()
        .await
        .unwrap_or_else(|err| panic!("POST {agent}/scale {body}: {err}"));
    let status = answer.status().as_u16();
    let forwarded_to = answer
        .headers()
        .get("x-forwarded-to-leader")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let text = answer.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    ScaleAnswer {
        status,
        body,
        forwarded_to,
    }
}

/// The failed rows of a run, for an assertion message.
pub fn failures(rows: &[ResultRow]) -> Vec<String> {
    rows.iter()
        .filter(|row| !(200..300).contains(&row.status) || !row.error.is_empty())
        .take(10)
        .map(|row| {
            format!(
                "at {:.2}s: status {} from {:?}: {}",
                row.due_s, row.status, row.backend, row.error
            )
        })
        .collect()
}

/// One entry of the agent's `GET /events`.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub kind: String,
    pub container: Option<String>,
    pub message: String,
}

/// The agent's recent events, oldest first.
pub async fn events(client: &reqwest::Client, agent: &str) -> Vec<Event> {
    #[derive(Deserialize)]
    struct Events {
        events: Vec<Event>,
    }
    let answer: Events = client
        .get(format!("{agent}/events?limit=1000"))
        .send()
        .await
        .expect("GET /events failed")
        .json()
        .await
        .expect("GET /events does not parse");
    let mut events = answer.events;
    events.sort_by_key(|event| event.at_ms);
    events
}

/// How long each new worker took from the agent's call to its first healthy answer, ms, by
/// the agent's `ready` events: (created from scratch, thawed from the warm pool).
pub fn cold_starts(events: &[Event]) -> (Vec<u64>, Vec<u64>) {
    let after = |call: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|event| event.kind == "ready")
            .filter_map(|event| {
                number_before(&event.message, &format!(" ms after the {call} call"))
            })
            .collect()
    };
    (after("create"), after("thaw"))
}

/// The integer just before the last `suffix` in `text`.
fn number_before(text: &str, suffix: &str) -> Option<u64> {
    let head = &text[..text.rfind(suffix)?];
    let digits = head.rsplit(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, container: &str, message: &str) -> Event {
        Event {
            at_ms: 0,
            kind: kind.into(),
            container: Some(container.into()),
            message: message.into(),
        }
    }

    #[test]
    fn cold_start_is_read_from_ready_events() {
        let events = [
            event("created", "a", "created w-1 at w-1:8080 in 120 ms"),
            event("ready", "a", "healthy 150 ms after the create call"),
            event("ready", "b", "healthy 95 ms after the create call"),
            event("ready", "d", "healthy 12 ms after the thaw call"),
            event("adopted", "c", "adopted a running container"),
        ];
        assert_eq!(cold_starts(&events), (vec![150, 95], vec![12]));
    }

    #[test]
    fn journeys_are_matched_in_order() {
        use Category::*;
        let journey = [Init, Low, High, Sundown];
        assert!(passes_through(
            &journey,
            &[&[Init], &[Low], &[Medium, High]]
        ));
        assert!(!passes_through(&journey, &[&[High], &[Low]]));
        assert!(!passes_through(&[Init, High], &[&[Init], &[Low], &[High]]));
    }
}
