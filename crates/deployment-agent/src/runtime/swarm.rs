//! Workers as Docker Swarm services: one service with one replica per worker, so the agent
//! chooses exactly which worker to drain and remove (a replica count would let Swarm remove
//! an arbitrary task). Swarm places each on a node (WORKER_CONSTRAINTS, spread over nodes);
//! its restart policy is `none`, so a task that fails or whose node goes down is reported as
//! an exit and replaced by the agent, never moved by Swarm behind its back.
//!
//! The Swarm API answers only on managers: the leader (which is always on a manager) lists,
//! launches and removes services there. A task's Docker stats are only on its own node's
//! engine: every agent (one per node, a global service) follows the stats of the tasks on its
//! own engine and writes them to Redis (`{prefix}:swarm:stats:<service id>`, short-lived
//! keys); the leader's stats stream of a worker reads them back. Probes go from the leader to
//! the worker's overlay address, the same path the balancers use.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bollard::{
    Docker,
    models::{
        EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountType, NetworkAttachmentConfig,
        NodeState, Service, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, Task,
        TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement, TaskSpecPlacementPreferences,
        TaskSpecPlacementSpread, TaskSpecResources, TaskSpecRestartPolicy,
        TaskSpecRestartPolicyConditionEnum, TaskState,
    },
    query_parameters::{
        ListContainersOptionsBuilder, ListNodesOptions, ListServicesOptionsBuilder,
        ListTasksOptionsBuilder,
    },
};
use common::CancellationToken;
use futures_util::{StreamExt, stream::BoxStream};
use redis::{
    AsyncCommands,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use serde::{Deserialize, Serialize};

use super::{
    DockerRuntime, Instance, LaunchSpec, LogLine, LogQuery, RuntimeError, RuntimeEvent,
    docker::status_code, now_ms,
};
use crate::{
    config::{AddressMode, Config},
    model::Worker,
    score::StatsSample,
};

/// The leader's epoch under which the service was created.
const EPOCH_LABEL: &str = "rustybalancer.epoch";
/// The label Swarm puts on a task's container: its service's id.
const SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";
/// How often the leader reads Swarm's view (tasks, nodes) for exits and lost nodes.
const VIEW_PERIOD: Duration = Duration::from_secs(1);
/// How often each agent looks for new tasks on its own engine.
const NODE_SCAN_PERIOD: Duration = Duration::from_secs(1);
/// How often the leader reads a worker's shared stats.
const STATS_POLL: Duration = Duration::from_secs(1);
/// A shared sample is dropped from Redis after this (its node or agent is gone).
const SAMPLE_TTL: Duration = Duration::from_secs(15);
/// Longest a launch waits for its task to run.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(90);
/// How long after its creation a service may be unknown to the manager the agent asks (its
/// copy of the Swarm store lags behind the Raft leader's).
const NOT_YET_VISIBLE: Duration = Duration::from_secs(10);
/// Longest a launch waits for the task's address in Swarm's DNS.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an agent checks that its engine answers as a manager.
const CANDIDACY_PERIOD: Duration = Duration::from_secs(1);
/// An engine that has not answered for this long is lost (a raft election takes less).
const ENGINE_LOST_AFTER: Duration = Duration::from_secs(15);
/// An exit still seen is reported again after this: an agent that took the lead meanwhile
/// learns of it too.
const REPORT_AGAIN: Duration = Duration::from_secs(5);
/// Longest a Redis call of the stats sharing may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Docker Swarm through this node's engine; a cheap handle.
#[derive(Clone)]
pub struct SwarmRuntime {
    docker: Docker,
    /// This node's engine as a plain Docker runtime: its containers' stats and logs.
    local: DockerRuntime,
    settings: Arc<Settings>,
    redis: Arc<tokio::sync::OnceCell<ConnectionManager>>,
    /// Task id -> the overlay address it was found at (a task's address never changes).
    addresses: Arc<std::sync::Mutex<HashMap<String, String>>>,
}

struct Settings {
    image: String,
    app: String,
    agent_name: String,
    network: String,
    address_mode: AddressMode,
    target_port: u16,
    cpus: Option<f64>,
    memory: Option<u64>,
    pids_limit: i64,
    env: Vec<String>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    user: Option<String>,
    read_only: bool,
    tmpfs: Vec<String>,
    labels: HashMap<String, String>,
    constraints: Vec<String>,
    stop_grace: Duration,
    redis_url: String,
    stats_prefix: String,
    /// This engine's node: its id, and whether it is a manager (may lead).
    node_id: String,
    manager: bool,
    host_cores: f64,
}

impl Settings {
    fn labels(&self) -> HashMap<String, String> {
        let s = self;
        let mut labels = s.labels.clone();
        labels.extend([
            ("application".to_owned(), s.app.clone()),
            ("managed-by".to_owned(), s.agent_name.clone()),
        ]);
        labels
    }

    /// The service of one worker.
    fn service_spec(&self, spec: &LaunchSpec) -> ServiceSpec {
        let s = self;
        let mut labels = self.labels();
        labels.insert(EPOCH_LABEL.to_owned(), spec.epoch.to_string());
        let mounts: Vec<Mount> = s
            .tmpfs
            .iter()
            .map(|path| Mount {
                target: Some(path.clone()),
                typ: Some(MountType::TMPFS),
                ..Mount::default()
            })
            .collect();
        ServiceSpec {
            name: Some(spec.name.clone()),
            labels: Some(labels.clone()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(s.image.clone()),
                    labels: Some(labels),
                    command: s.command.clone(),
                    args: s.args.clone(),
                    env: Some(s.env.clone()),
                    user: s.user.clone(),
                    read_only: s.read_only.then_some(true),
                    mounts: Some(mounts).filter(|m| !m.is_empty()),
                    stop_grace_period: Some(
                        i64::try_from(s.stop_grace.as_nanos()).unwrap_or(i64::MAX),
                    ),
                    ..TaskSpecContainerSpec::default()
                }),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: s.cpus.map(|cpus| (cpus * 1e9) as i64),
                        memory_bytes: s.memory.map(|bytes| bytes as i64),
                        pids: Some(s.pids_limit),
                    }),
                    ..TaskSpecResources::default()
                }),
                // The agent replaces a failed worker itself, on a node of its choosing.
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    ..TaskSpecRestartPolicy::default()
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: Some(s.constraints.clone()).filter(|c| !c.is_empty()),
                    preferences: Some(vec![TaskSpecPlacementPreferences {
                        spread: Some(TaskSpecPlacementSpread {
                            spread_descriptor: Some("node.id".into()),
                        }),
                    }]),
                    ..TaskSpecPlacement::default()
                }),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(s.network.clone()),
                    aliases: Some(vec![spec.name.clone()]),
                    ..NetworkAttachmentConfig::default()
                }]),
                ..TaskSpec::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..ServiceSpecMode::default()
            }),
            // No virtual IP: the service's name resolves to its one task.
            endpoint_spec: Some(EndpointSpec {
                mode: Some(EndpointSpecModeEnum::DNSRR),
                ..EndpointSpec::default()
            }),
            ..ServiceSpec::default()
        }
    }
}

/// One stats sample as a node's agent shares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SharedSample {
    /// The node's id, and when the sample was read there (Unix ms).
    node: String,
    at_ms: u64,
    cpu_total_ns: u64,
    system_cpu_ns: u64,
    online_cpus: u32,
    memory_usage: u64,
    memory_cache: u64,
    memory_limit: u64,
    net_rx_bytes: u64,
    net_tx_bytes: u64,
}

impl SharedSample {
    fn new(node: &str, sample: &StatsSample) -> Self {
        Self {
            node: node.to_owned(),
            at_ms: now_ms(),
            cpu_total_ns: sample.cpu_total_ns,
            system_cpu_ns: sample.system_cpu_ns,
            online_cpus: sample.online_cpus,
            memory_usage: sample.memory_usage,
            memory_cache: sample.memory_cache,
            memory_limit: sample.memory_limit,
            net_rx_bytes: sample.net_rx_bytes,
            net_tx_bytes: sample.net_tx_bytes,
        }
    }

    fn sample(&self) -> StatsSample {
        let age = Duration::from_millis(now_ms().saturating_sub(self.at_ms));
        let now = Instant::now();
        StatsSample {
            at: now.checked_sub(age).unwrap_or(now),
            cpu_total_ns: self.cpu_total_ns,
            system_cpu_ns: self.system_cpu_ns,
            online_cpus: self.online_cpus,
            memory_usage: self.memory_usage,
            memory_cache: self.memory_cache,
            memory_limit: self.memory_limit,
            net_rx_bytes: self.net_rx_bytes,
            net_tx_bytes: self.net_tx_bytes,
        }
    }
}

impl SwarmRuntime {
    /// Connects to this node's engine, which must be in a swarm.
    pub async fn connect(config: &Config) -> Result<Self, RuntimeError> {
        let local = DockerRuntime::connect(config).await?;
        let docker = local.client();
        let info = docker.info().await?;
        let swarm = info.swarm.unwrap_or_default();
        let active = swarm
            .local_node_state
            .as_ref()
            .is_some_and(|state| state.to_string() == "active");
        let node_id = swarm.node_id.unwrap_or_default();
        if !active || node_id.is_empty() {
            return Err(RuntimeError::Other(
                "AGENT_RUNTIME=swarm: the engine at DOCKER_HOST is not part of an active swarm (docker swarm init / join)".into(),
            ));
        }
        let (Some(network), Some(redis_url)) = (config.network.clone(), config.redis()) else {
            return Err(RuntimeError::Other(
                "AGENT_RUNTIME=swarm needs AGENT_NETWORK and REDIS_URL".into(),
            ));
        };
        Ok(Self {
            docker,
            local,
            settings: Arc::new(Settings {
                image: config.image.clone(),
                app: config.app.clone(),
                agent_name: config.agent_name.clone(),
                network,
                address_mode: config.address_mode,
                target_port: config.target_port,
                cpus: config.worker_cpus,
                memory: config.worker_memory,
                pids_limit: config.worker_pids_limit,
                env: super::worker_env(config),
                command: Some(config.worker_command.0.clone()).filter(|c| !c.is_empty()),
                args: Some(config.worker_args.0.clone()).filter(|c| !c.is_empty()),
                user: Some(config.worker_user.clone()).filter(|u| !u.is_empty()),
                read_only: config.worker_read_only,
                tmpfs: config
                    .worker_tmpfs
                    .0
                    .iter()
                    .map(|(path, _)| path.clone())
                    .collect(),
                labels: super::worker_labels(config),
                constraints: config.worker_constraints.clone(),
                stop_grace: config.stop_grace,
                redis_url,
                stats_prefix: format!("{}:swarm:stats", config.key_prefix()),
                node_id,
                manager: swarm.control_available == Some(true),
                host_cores: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
            }),
            redis: Arc::new(tokio::sync::OnceCell::new()),
            addresses: Arc::default(),
        })
    }

    /// Whether this node was a manager at start: only there can the agent lead.
    pub fn is_manager(&self) -> bool {
        self.settings.manager
    }

    /// Whether this agent may lead, checked every second until `shutdown`: its node is a
    /// manager, and its engine answers (not answering for ENGINE_LOST_AFTER: it does not; a
    /// manager's engine stops answering for a few seconds while Swarm elects a new raft
    /// leader). `changed` gets every change: a leader whose node is demoted or whose engine
    /// died steps down, so that an agent on a live manager leads.
    pub async fn watch_candidacy(self, changed: impl Fn(bool), shutdown: CancellationToken) {
        let mut candidate = self.settings.manager;
        let mut answered = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(CANDIDACY_PERIOD) => {}
            }
            let now = match tokio::time::timeout(CANDIDACY_PERIOD * 2, self.docker.info()).await {
                Ok(Ok(info)) => {
                    answered = Instant::now();
                    info.swarm.and_then(|swarm| swarm.control_available) == Some(true)
                }
                _ => candidate && answered.elapsed() < ENGINE_LOST_AFTER,
            };
            if now != candidate {
                if now {
                    tracing::info!(
                        "this node's engine answers as a swarm manager: this agent may lead"
                    );
                } else {
                    tracing::warn!(
                        "this node's engine does not answer as a swarm manager: this agent may not lead"
                    );
                }
                candidate = now;
                changed(now);
            }
        }
    }

    /// The labels every worker carries, as engine filters (the same on every node).
    fn label_filters(&self) -> HashMap<String, Vec<String>> {
        self.local.label_filters()
    }

    async fn services(&self) -> Result<Vec<Service>, RuntimeError> {
        let options = ListServicesOptionsBuilder::new()
            .filters(&self.label_filters())
            .build();
        Ok(self.docker.list_services(Some(options)).await?)
    }

    /// Every task, by service id.
    async fn tasks(&self) -> Result<HashMap<String, Vec<Task>>, RuntimeError> {
        let tasks = self
            .docker
            .list_tasks(None::<bollard::query_parameters::ListTasksOptions>)
            .await?;
        let mut by_service: HashMap<String, Vec<Task>> = HashMap::new();
        for task in tasks {
            if let Some(service) = task.service_id.clone() {
                by_service.entry(service).or_default().push(task);
            }
        }
        Ok(by_service)
    }

    async fn service_tasks(&self, id: &str) -> Result<Vec<Task>, RuntimeError> {
        let filters = HashMap::from([("service".to_owned(), vec![id.to_owned()])]);
        let options = ListTasksOptionsBuilder::new().filters(&filters).build();
        Ok(self.docker.list_tasks(Some(options)).await?)
    }

    pub async fn list(&self) -> Result<Vec<Instance>, RuntimeError> {
        let services = self.services().await?;
        let mut tasks = self.tasks().await?;
        let mut instances = Vec::with_capacity(services.len());
        for service in services {
            let id = service.id.clone().unwrap_or_default();
            let task = current_task(tasks.remove(&id).unwrap_or_default());
            instances.push(self.instance(&service, task.as_ref()).await);
        }
        Ok(instances)
    }

    pub async fn names(&self, prefix: &str) -> Result<Vec<String>, RuntimeError> {
        let filters = HashMap::from([("name".to_owned(), vec![prefix.to_owned()])]);
        let options = ListServicesOptionsBuilder::new().filters(&filters).build();
        let services = self.docker.list_services(Some(options)).await?;
        Ok(services
            .into_iter()
            .filter_map(|service| service.spec?.name)
            .filter(|name| name.starts_with(prefix))
            .collect())
    }

    /// Creates the service and waits until its task runs and has an address.
    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, RuntimeError> {
        let mut service = self.settings.service_spec(spec);
        // By id when this engine has the image: a node given the image by `docker load`
        // (no registry) then never tries to pull it first.
        if let Ok(image) = self.docker.inspect_image(&self.settings.image).await
            && let (Some(id), Some(template)) = (image.id, service.task_template.as_mut())
            && let Some(container) = template.container_spec.as_mut()
        {
            container.image = Some(id);
        }
        let created = match self.docker.create_service(service, None).await {
            Ok(created) => created,
            Err(err) if status_code(&err) == Some(409) => {
                return Err(RuntimeError::NameTaken(spec.name.clone()));
            }
            Err(err) => return Err(err.into()),
        };
        let id = created.id.unwrap_or_default();
        match self.wait_running(&id, &spec.name).await {
            Ok(instance) => Ok(instance),
            Err(err) => {
                let _ = self.delete(&id).await;
                Err(err)
            }
        }
    }

    async fn wait_running(&self, id: &str, name: &str) -> Result<Instance, RuntimeError> {
        let started = Instant::now();
        let deadline = started + LAUNCH_TIMEOUT;
        let mut last = String::from("no task yet");
        // A manager that is not the Raft leader forwards the create to the leader and answers
        // before its own copy of the store has the service: for a while, "not found" means
        // "not seen here yet".
        let not_yet = |err: &bollard::errors::Error| {
            status_code(err) == Some(404) && started.elapsed() < NOT_YET_VISIBLE
        };
        loop {
            let tasks = match self.service_tasks(id).await {
                Ok(tasks) => tasks,
                Err(RuntimeError::Docker(err)) if not_yet(&err) => Vec::new(),
                Err(err) => return Err(err),
            };
            if let Some(task) = current_task(tasks) {
                let status = task.status.clone().unwrap_or_default();
                let state = status.state.unwrap_or(TaskState::NEW);
                let message = status.err.or(status.message).unwrap_or_default();
                if state == TaskState::RUNNING {
                    let service = match self.docker.inspect_service(id, None).await {
                        Ok(service) => service,
                        Err(err) if not_yet(&err) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                        Err(err) => return Err(err.into()),
                    };
                    let instance = self.instance(&service, Some(&task)).await;
                    if !instance.worker.address.starts_with(':') {
                        return Ok(instance);
                    }
                } else if is_terminal(state) {
                    if message.contains("No such image") {
                        return Err(RuntimeError::ImageMissing(self.settings.image.clone()));
                    }
                    return Err(RuntimeError::Other(format!(
                        "the task of {name} {state}: {message}"
                    )));
                }
                last = format!("{state}: {message}");
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Other(format!(
                    "the task of {name} was not running within {LAUNCH_TIMEOUT:?} ({last})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes the service; Swarm stops its task with the service's stop grace period
    /// (STOP_GRACE). Waits, up to `grace` and a little more, until the task has stopped.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.delete(id).await?;
        let deadline = Instant::now() + grace + Duration::from_secs(5);
        while Instant::now() < deadline {
            let running = match self.service_tasks(id).await {
                Ok(tasks) => tasks.iter().any(|task| {
                    task.status
                        .as_ref()
                        .and_then(|s| s.state)
                        .is_some_and(|state| !is_terminal(state))
                }),
                Err(_) => false,
            };
            if !running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.docker.delete_service(id).await {
            Ok(()) => Ok(()),
            Err(err) if status_code(&err) == Some(404) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Exits the agent did not cause, from Swarm's own view, read every second on a manager
    /// (nothing on other nodes, which cannot read it): a task that failed or was rejected, a
    /// task on a node Swarm marks down, a task Swarm replaced, a service removed by someone
    /// else. An exit is reported again every REPORT_AGAIN while its service is there (so an
    /// agent that takes the lead after the first report learns of it too).
    pub fn events(&self) -> BoxStream<'static, RuntimeEvent> {
        if !self.settings.manager {
            return futures_util::stream::pending().boxed();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let runtime = self.clone();
        tokio::spawn(async move {
            let mut view = View::default();
            let mut warned = false;
            loop {
                match runtime.read_view().await {
                    Ok((services, tasks, down)) => {
                        warned = false;
                        for event in view.update(&services, &tasks, &down, Instant::now()) {
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(err) if !warned => {
                        warned = true;
                        tracing::warn!(cause = %err, "cannot read the swarm's services and tasks; retrying");
                    }
                    Err(_) => {}
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(VIEW_PERIOD).await;
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    /// Our services (id -> name), every task by service, and the nodes not ready (id -> name).
    async fn read_view(
        &self,
    ) -> Result<
        (
            HashMap<String, String>,
            HashMap<String, Vec<Task>>,
            HashMap<String, String>,
        ),
        RuntimeError,
    > {
        let services = self
            .services()
            .await?
            .into_iter()
            .filter_map(|service| {
                let name = service.spec.and_then(|spec| spec.name).unwrap_or_default();
                Some((service.id?, name))
            })
            .collect();
        let tasks = self.tasks().await?;
        let nodes = self.docker.list_nodes(None::<ListNodesOptions>).await?;
        let down = nodes
            .into_iter()
            .filter(|node| {
                node.status
                    .as_ref()
                    .and_then(|status| status.state)
                    // `unknown` is passing (every node is, for a moment, after a new raft
                    // leader takes over); `down` is Swarm's verdict.
                    .is_some_and(|state| matches!(state, NodeState::DOWN | NodeState::DISCONNECTED))
            })
            .filter_map(|node| {
                let name = node
                    .description
                    .and_then(|d| d.hostname)
                    .unwrap_or_default();
                Some((node.id?, name))
            })
            .collect();
        Ok((services, tasks, down))
    }

    pub async fn exit_code(&self, id: &str) -> Option<i64> {
        let task = current_task(self.service_tasks(id).await.ok()?)?;
        task.status?.container_status?.exit_code
    }

    /// The service's log lines, which Swarm fetches from its task's node (whichever node
    /// this agent runs on); an unknown service is an error.
    pub async fn log_stream(
        &self,
        id: &str,
        query: &LogQuery,
    ) -> Result<BoxStream<'static, LogLine>, RuntimeError> {
        self.docker.inspect_service(id, None).await?;
        let options = super::docker::logs_options(query);
        let stream = self.docker.service_logs(id, Some(options));
        Ok(super::docker::log_lines(stream, query.since_ms))
    }

    /// The worker's stats as its node's agent shares them, read every second; a sample only
    /// when a new one arrived. Never ends by itself (its observer is stopped with the member).
    pub fn stats(&self, id: &str) -> BoxStream<'static, StatsSample> {
        let runtime = self.clone();
        let key = format!("{}:{id}", self.settings.stats_prefix);
        futures_util::stream::unfold(0u64, move |mut last| {
            let (runtime, key) = (runtime.clone(), key.clone());
            async move {
                loop {
                    tokio::time::sleep(STATS_POLL).await;
                    let Some(shared) = runtime.read_sample(&key).await else {
                        continue;
                    };
                    if shared.at_ms > last {
                        last = shared.at_ms;
                        return Some((shared.sample(), last));
                    }
                }
            }
        })
        .boxed()
    }

    async fn redis(&self) -> Option<ConnectionManager> {
        let init = || async {
            let client = redis::Client::open(self.settings.redis_url.as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_response_timeout(Some(REDIS_TIMEOUT));
            ConnectionManager::new_with_config(client, config).await
        };
        match tokio::time::timeout(REDIS_TIMEOUT * 2, self.redis.get_or_try_init(init)).await {
            Ok(Ok(conn)) => Some(conn.clone()),
            Ok(Err(err)) => {
                tracing::debug!(cause = %err, "redis for the shared stats unreachable");
                None
            }
            Err(_) => None,
        }
    }

    async fn read_sample(&self, key: &str) -> Option<SharedSample> {
        let mut conn = self.redis().await?;
        let json: Option<String> = tokio::time::timeout(REDIS_TIMEOUT, conn.get(key))
            .await
            .ok()?
            .ok()?;
        serde_json::from_str(&json?).ok()
    }

    /// Follows the stats of every worker task on this node's own engine and shares them in
    /// Redis, until `shutdown`. Runs on every agent, leader or not.
    pub async fn observe_node(self, shutdown: CancellationToken) {
        let mut followed: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
        loop {
            match self.local_tasks().await {
                Ok(local) => {
                    followed.retain(|_, handle| !handle.is_finished());
                    for (container, service) in local {
                        if followed.contains_key(&container) {
                            continue;
                        }
                        let handle =
                            tokio::spawn(self.clone().share_stats(container.clone(), service));
                        followed.insert(container, handle.abort_handle());
                    }
                }
                Err(err) => {
                    tracing::debug!(cause = %err, "cannot list this node's worker containers");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(NODE_SCAN_PERIOD) => {}
            }
        }
        for handle in followed.into_values() {
            handle.abort();
        }
    }

    /// This engine's running worker containers: container id -> service id.
    async fn local_tasks(&self) -> Result<Vec<(String, String)>, RuntimeError> {
        let mut filters = self.label_filters();
        filters.insert("status".into(), vec!["running".into()]);
        let options = ListContainersOptionsBuilder::new()
            .filters(&filters)
            .build();
        let containers = self.docker.list_containers(Some(options)).await?;
        Ok(containers
            .into_iter()
            .filter_map(|container| {
                let service = container.labels?.get(SERVICE_ID_LABEL)?.clone();
                Some((container.id?, service))
            })
            .collect())
    }

    async fn share_stats(self, container: String, service: String) {
        let key = format!("{}:{service}", self.settings.stats_prefix);
        let ttl = u64::try_from(SAMPLE_TTL.as_millis()).unwrap_or(u64::MAX);
        let mut samples = self.local.stats(&container);
        while let Some(sample) = samples.next().await {
            let shared = SharedSample::new(&self.settings.node_id, &sample);
            let Ok(json) = serde_json::to_string(&shared) else {
                continue;
            };
            let Some(mut conn) = self.redis().await else {
                continue;
            };
            let set = conn.pset_ex::<_, _, ()>(&key, json, ttl);
            if let Ok(Err(err)) = tokio::time::timeout(REDIS_TIMEOUT, set).await {
                tracing::debug!(cause = %err, %service, "cannot share a worker's stats");
            }
        }
    }

    async fn instance(&self, service: &Service, task: Option<&Task>) -> Instance {
        let s = &self.settings;
        let spec = service.spec.as_ref();
        let name = spec.and_then(|spec| spec.name.clone()).unwrap_or_default();
        let state = task
            .and_then(|task| task.status.as_ref())
            .and_then(|status| status.state);
        let running = state == Some(TaskState::RUNNING);
        let host = match s.address_mode {
            AddressMode::Name => name.clone(),
            AddressMode::Ip if running => match task.and_then(|task| task.id.clone()) {
                Some(task_id) => self.task_address(&task_id, &name).await.unwrap_or_default(),
                None => String::new(),
            },
            AddressMode::Ip => String::new(),
        };
        let cpu_limit_cores = spec
            .and_then(|spec| spec.task_template.as_ref())
            .and_then(|template| template.resources.as_ref())
            .and_then(|resources| resources.limits.as_ref())
            .and_then(|limits| limits.nano_cpus)
            .filter(|n| *n > 0)
            .map_or(s.host_cores, |n| n as f64 / 1e9);
        Instance {
            worker: Worker {
                id: service.id.clone().unwrap_or_default(),
                address: format!("{host}:{}", s.target_port),
                dns_name: name.clone(),
                name,
                core_id: None,
                created_at_ms: service
                    .created_at
                    .as_ref()
                    .and_then(|created| humantime::parse_rfc3339_weak(&created.to_string()).ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or_else(now_ms, |d| d.as_millis() as u64),
            },
            running,
            paused: false,
            cpu_limit_cores,
        }
    }

    /// The task's address on the overlay: its service's name in Swarm's DNS (one task, no
    /// virtual IP), remembered per task.
    async fn task_address(&self, task_id: &str, name: &str) -> Option<String> {
        if let Some(address) = self.lock_addresses().get(task_id) {
            return Some(address.clone());
        }
        let deadline = Instant::now() + RESOLVE_TIMEOUT;
        loop {
            let lookup = tokio::net::lookup_host((name, self.settings.target_port));
            if let Ok(Ok(mut found)) = tokio::time::timeout(Duration::from_secs(2), lookup).await
                && let Some(address) = found.next()
            {
                let ip = address.ip().to_string();
                let mut addresses = self.lock_addresses();
                if addresses.len() > 10_000 {
                    addresses.clear();
                }
                addresses.insert(task_id.to_owned(), ip.clone());
                return Some(ip);
            }
            if Instant::now() >= deadline {
                tracing::warn!(service = %name, "the task's name does not resolve on the overlay; is the agent attached to AGENT_NETWORK?");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn lock_addresses(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the exit detection remembers between two reads of Swarm's view.
#[derive(Default)]
struct View {
    /// Services seen in the previous read (id -> name).
    known: HashMap<String, String>,
    /// Services whose exit was reported, and when.
    reported: HashMap<String, Instant>,
}

impl View {
    /// The exits found in this read.
    fn update(
        &mut self,
        services: &HashMap<String, String>,
        tasks: &HashMap<String, Vec<Task>>,
        down: &HashMap<String, String>,
        now: Instant,
    ) -> Vec<RuntimeEvent> {
        let mut events = Vec::new();
        for (id, name) in &self.known {
            if !services.contains_key(id) && !self.reported.contains_key(id) {
                events.push(RuntimeEvent::Exited {
                    id: id.clone(),
                    reason: format!("service {name} removed"),
                    code: None,
                });
            }
        }
        for id in services.keys() {
            if self
                .reported
                .get(id)
                .is_some_and(|at| now.saturating_duration_since(*at) < REPORT_AGAIN)
            {
                continue;
            }
            let tasks = tasks.get(id).map(Vec::as_slice).unwrap_or_default();
            if let Some((reason, code)) = exit_of(tasks, down) {
                self.reported.insert(id.clone(), now);
                events.push(RuntimeEvent::Exited {
                    id: id.clone(),
                    reason,
                    code,
                });
            }
        }
        self.reported.retain(|id, _| services.contains_key(id));
        self.known = services.clone();
        events
    }
}

/// Why a service's worker is gone, if it is: a task on a node that is down, more than one
/// task (Swarm replaced the first), or its one task ended.
fn exit_of(tasks: &[Task], down: &HashMap<String, String>) -> Option<(String, Option<i64>)> {
    for task in tasks {
        let node = task.node_id.as_deref().unwrap_or_default();
        if let Some(name) = down.get(node) {
            return Some((format!("node {name} is down"), None));
        }
    }
    if tasks.len() > 1 {
        return Some(("Swarm replaced its task".into(), None));
    }
    let task = tasks.first()?;
    let status = task.status.as_ref()?;
    let state = status.state?;
    if !is_terminal(state) {
        return None;
    }
    let code = status
        .container_status
        .as_ref()
        .and_then(|container| container.exit_code);
    let message = status
        .err
        .clone()
        .or_else(|| status.message.clone())
        .unwrap_or_default();
    let reason = match code {
        Some(code) => format!("task {state} (exit code {code}): {message}"),
        None => format!("task {state}: {message}"),
    };
    Some((reason, code))
}

/// The task that stands for the service: the newest.
fn current_task(mut tasks: Vec<Task>) -> Option<Task> {
    tasks.sort_by_key(|task| task.version.as_ref().and_then(|v| v.index).unwrap_or(0));
    tasks.pop()
}

fn is_terminal(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::COMPLETE
            | TaskState::SHUTDOWN
            | TaskState::FAILED
            | TaskState::REJECTED
            | TaskState::REMOVE
            | TaskState::ORPHANED
    )
}

#[cfg(test)]
mod tests;
