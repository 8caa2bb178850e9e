//! Workers as Docker containers, through one shared bollard client.

use std::{collections::HashMap, time::Duration};

use bollard::{
    Docker,
    models::{
        ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HostConfig,
        NetworkingConfig,
    },
    query_parameters::{
        CreateContainerOptionsBuilder, EventsOptionsBuilder, InspectContainerOptions,
        ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptionsBuilder,
        StopContainerOptionsBuilder,
    },
};
use futures_util::{StreamExt, stream::BoxStream};

use super::{EngineHealth, Instance, LaunchSpec, LogLine, LogQuery, RuntimeError, RuntimeEvent};
use crate::{
    config::{AddressMode, Config},
    model::Worker,
    score::StatsSample,
};

const CORE_LABEL: &str = "rustybalancer.core";
/// The leader's epoch under which the container was created.
const EPOCH_LABEL: &str = "rustybalancer.epoch";

/// The Docker engine; `Docker` is already a cheap, cloneable handle.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    settings: std::sync::Arc<Settings>,
}

struct Settings {
    image: String,
    app: String,
    agent_name: String,
    network: Option<String>,
    address_mode: AddressMode,
    target_port: u16,
    cpus: Option<f64>,
    memory: Option<u64>,
    pids_limit: i64,
    env: Vec<String>,
    host_cores: f64,
    /// WORKER_COMMAND, WORKER_ARGS (`None`: the image's).
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    user: Option<String>,
    read_only: bool,
    tmpfs: HashMap<String, String>,
    labels: HashMap<String, String>,
}

impl DockerRuntime {
    /// Connects to `DOCKER_HOST` (or the default socket) and agrees on an API version.
    pub async fn connect(config: &Config) -> Result<Self, RuntimeError> {
        let docker = match config.docker_host.as_deref() {
            Some(host) if host.starts_with("tcp://") || host.starts_with("http://") => {
                Docker::connect_with_http(host, 120, bollard::API_DEFAULT_VERSION)?
            }
            Some(host) if !host.is_empty() => {
                Docker::connect_with_unix(host, 120, bollard::API_DEFAULT_VERSION)?
            }
            _ => Docker::connect_with_unix(
                "/var/run/docker.sock",
                120,
                bollard::API_DEFAULT_VERSION,
            )?,
        };
        let docker = docker.negotiate_version().await?;
        Ok(Self {
            docker,
            settings: std::sync::Arc::new(Settings {
                image: config.image.clone(),
                app: config.app.clone(),
                agent_name: config.agent_name.clone(),
                network: config.network.clone(),
                address_mode: config.address_mode,
                target_port: config.target_port,
                cpus: config.worker_cpus,
                memory: config.worker_memory,
                pids_limit: config.worker_pids_limit,
                env: super::worker_env(config),
                host_cores: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
                entrypoint: Some(config.worker_command.0.clone()).filter(|c| !c.is_empty()),
                cmd: Some(config.worker_args.0.clone()).filter(|c| !c.is_empty()),
                user: Some(config.worker_user.clone()).filter(|u| !u.is_empty()),
                read_only: config.worker_read_only,
                tmpfs: config.worker_tmpfs.0.iter().cloned().collect(),
                labels: super::worker_labels(config),
            }),
        })
    }

    /// The engine's client (a cheap handle).
    pub(super) fn client(&self) -> Docker {
        self.docker.clone()
    }

    pub(super) fn label_filters(&self) -> HashMap<String, Vec<String>> {
        let s = &self.settings;
        HashMap::from([(
            "label".to_owned(),
            vec![
                format!("application={}", s.app),
                format!("managed-by={}", s.agent_name),
            ],
        )])
    }

    pub async fn list(&self) -> Result<Vec<Instance>, RuntimeError> {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&self.label_filters())
            .build();
        let summaries = self.docker.list_containers(Some(options)).await?;
        let mut instances = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            match self
                .docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            {
                Ok(inspect) => instances.push(self.instance(&inspect)),
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(instances)
    }

    /// Names of all containers (running or not, any labels) that start with `prefix`.
    pub async fn names(&self, prefix: &str) -> Result<Vec<String>, RuntimeError> {
        // The engine's name filter matches anywhere in the name; the prefix is checked here.
        let filters = HashMap::from([("name".to_owned(), vec![prefix.to_owned()])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self.docker.list_containers(Some(options)).await?;
        Ok(summaries
            .into_iter()
            .flat_map(|summary| summary.names.unwrap_or_default())
            .map(|name| name.trim_start_matches('/').to_owned())
            .filter(|name| name.starts_with(prefix))
            .collect())
    }

    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, RuntimeError> {
        let s = &self.settings;
        let mut labels = s.labels.clone();
        labels.extend([
            ("application".to_owned(), s.app.clone()),
            ("managed-by".to_owned(), s.agent_name.clone()),
        ]);
        labels.insert(EPOCH_LABEL.to_owned(), spec.epoch.to_string());
        if let Some(core) = spec.core_id {
            labels.insert(CORE_LABEL.to_owned(), core.to_string());
        }
        let host_config = HostConfig {
            nano_cpus: s.cpus.map(|cpus| (cpus * 1e9) as i64),
            memory: s.memory.map(|bytes| bytes as i64),
            pids_limit: Some(s.pids_limit),
            cpuset_cpus: spec.core_id.map(|core| core.to_string()),
            network_mode: s.network.clone(),
            readonly_rootfs: s.read_only.then_some(true),
            tmpfs: Some(s.tmpfs.clone()).filter(|t| !t.is_empty()),
            ..HostConfig::default()
        };
        let networking_config = s.network.as_ref().map(|network| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.clone(),
                EndpointSettings {
                    aliases: Some(vec![spec.name.clone()]),
                    ..EndpointSettings::default()
                },
            )])),
        });
        let body = ContainerCreateBody {
            image: Some(s.image.clone()),
            env: Some(s.env.clone()),
            entrypoint: s.entrypoint.clone(),
            cmd: s.cmd.clone(),
            user: s.user.clone(),
            labels: Some(labels),
            host_config: Some(host_config),
            networking_config,
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = match self.docker.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(err) if is_not_found(&err) => {
                return Err(RuntimeError::ImageMissing(s.image.clone()));
            }
            Err(err) if is_conflict(&err) => {
                return Err(RuntimeError::NameTaken(spec.name.clone()));
            }
            Err(err) => return Err(err.into()),
        };
        if let Err(err) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(err.into());
        }
        let inspect = self
            .docker
            .inspect_container(&created.id, None::<InspectContainerOptions>)
            .await?;
        Ok(self.instance(&inspect))
    }

    pub async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        Ok(self.docker.pause_container(id).await?)
    }

    pub async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        Ok(self.docker.unpause_container(id).await?)
    }

    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let options = StopContainerOptionsBuilder::new()
            .t(grace.as_secs().clamp(1, 3600) as i32)
            .build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => {}
            Err(err) if is_not_found(&err) || is_not_modified(&err) => {}
            Err(err) => return Err(err.into()),
        }
        self.remove(id).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) || is_conflict(&err) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    pub fn events(&self) -> BoxStream<'static, RuntimeEvent> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let runtime = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut filters = runtime.label_filters();
                filters.insert("type".into(), vec!["container".into()]);
                filters.insert(
                    "event".into(),
                    vec!["die".into(), "oom".into(), "destroy".into()],
                );
                let options = EventsOptionsBuilder::new().filters(&filters).build();
                let mut events = runtime.docker.events(Some(options));
                while let Some(event) = events.next().await {
                    match event {
                        Ok(message) => {
                            backoff = Duration::from_millis(100);
                            let actor = message.actor.unwrap_or_default();
                            let Some(id) = actor.id else { continue };
                            let action = message.action.unwrap_or_default();
                            let code = actor
                                .attributes
                                .as_ref()
                                .and_then(|a| a.get("exitCode"))
                                .and_then(|code| code.parse::<i64>().ok());
                            let reason = match code {
                                Some(code) => format!("{action} (exit code {code})"),
                                None => action,
                            };
                            let event = RuntimeEvent::Exited { id, reason, code };
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(cause = %err, "docker event stream failed; reconnecting");
                            break;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    /// The container's HEALTHCHECK state from `inspect` (`State.Health`).
    pub async fn health(&self, id: &str) -> Result<EngineHealth, RuntimeError> {
        use bollard::models::HealthStatusEnum;
        let inspect = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await?;
        let health = inspect.state.and_then(|state| state.health);
        let Some(health) = health else {
            return Ok(EngineHealth::NoHealthcheck);
        };
        let last = health.log.as_ref().and_then(|log| log.last());
        Ok(match health.status {
            None | Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) => {
                EngineHealth::NoHealthcheck
            }
            Some(HealthStatusEnum::STARTING) => EngineHealth::Starting,
            Some(HealthStatusEnum::HEALTHY) => {
                let took = last.and_then(|result| {
                    let at = |date: &Option<bollard::models::BollardDate>| {
                        date.as_ref()
                            .and_then(|d| humantime::parse_rfc3339_weak(&d.to_string()).ok())
                    };
                    at(&result.end)?.duration_since(at(&result.start)?).ok()
                });
                EngineHealth::Healthy(took)
            }
            Some(HealthStatusEnum::UNHEALTHY) => EngineHealth::Unhealthy(
                last.and_then(|result| result.output.clone())
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            ),
        })
    }

    /// The exit code of a container that is no longer running.
    pub async fn exit_code(&self, id: &str) -> Option<i64> {
        let inspect = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()?;
        let state = inspect.state?;
        if state.running == Some(true) {
            return None;
        }
        state.exit_code
    }

    /// The container's log lines (stdout and stderr) through the engine's logs API; a
    /// stopped container that is not removed yet has them too. An unknown container is an
    /// error (asked first, so the stream itself only ends).
    pub async fn log_stream(
        &self,
        id: &str,
        query: &LogQuery,
    ) -> Result<BoxStream<'static, LogLine>, RuntimeError> {
        self.docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await?;
        let stream = self.docker.logs(id, Some(logs_options(query)));
        Ok(log_lines(stream, query.since_ms))
    }

    pub fn stats(&self, id: &str) -> BoxStream<'static, StatsSample> {
        let options = StatsOptionsBuilder::new()
            .stream(true)
            .one_shot(false)
            .build();
        self.docker
            .stats(id, Some(options))
            .take_while(|sample| std::future::ready(sample.is_ok()))
            .filter_map(|sample| std::future::ready(sample.ok().and_then(|s| to_sample(&s))))
            .boxed()
    }

    fn instance(&self, inspect: &ContainerInspectResponse) -> Instance {
        let s = &self.settings;
        let name = inspect
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        let labels = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let core_id = labels.get(CORE_LABEL).and_then(|core| core.parse().ok());
        let ip = inspect
            .network_settings
            .as_ref()
            .and_then(|settings| settings.networks.as_ref())
            .and_then(|networks| match &s.network {
                Some(network) => networks.get(network).cloned(),
                None => networks
                    .get("bridge")
                    .cloned()
                    .or_else(|| networks.values().next().cloned()),
            })
            .and_then(|endpoint| endpoint.ip_address)
            .unwrap_or_default();
        let host = match s.address_mode {
            AddressMode::Name => name.clone(),
            AddressMode::Ip => ip,
        };
        let state = inspect.state.as_ref();
        let host_config = inspect.host_config.as_ref();
        let cpu_limit_cores = host_config
            .and_then(|h| h.nano_cpus)
            .filter(|n| *n > 0)
            .map(|n| n as f64 / 1e9)
            .or_else(|| core_id.map(|_| 1.0))
            .unwrap_or(s.host_cores);
        Instance {
            worker: Worker {
                id: inspect.id.clone().unwrap_or_default(),
                address: format!("{host}:{}", s.target_port),
                dns_name: name.clone(),
                name,
                core_id,
                created_at_ms: inspect
                    .created
                    .as_ref()
                    .and_then(|created| humantime::parse_rfc3339_weak(&created.to_string()).ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or_else(super::now_ms, |d| d.as_millis() as u64),
            },
            running: state.and_then(|state| state.running).unwrap_or(false),
            paused: state.and_then(|state| state.paused).unwrap_or(false),
            cpu_limit_cores,
        }
    }
}

fn to_sample(stats: &bollard::models::ContainerStatsResponse) -> Option<StatsSample> {
    let cpu = stats.cpu_stats.as_ref()?;
    let memory = stats.memory_stats.as_ref();
    let cache = memory
        .and_then(|m| m.stats.as_ref())
        .and_then(|s| s.get("inactive_file").or_else(|| s.get("cache")).copied())
        .unwrap_or(0);
    let (rx, tx) = stats.networks.as_ref().map_or((0, 0), |networks| {
        networks.values().fold((0, 0), |(rx, tx), n| {
            (rx + n.rx_bytes.unwrap_or(0), tx + n.tx_bytes.unwrap_or(0))
        })
    });
    Some(StatsSample {
        at: std::time::Instant::now(),
        cpu_total_ns: cpu
            .cpu_usage
            .as_ref()
            .and_then(|u| u.total_usage)
            .unwrap_or(0),
        system_cpu_ns: cpu.system_cpu_usage.unwrap_or(0),
        online_cpus: cpu.online_cpus.unwrap_or(1),
        memory_usage: memory.and_then(|m| m.usage).unwrap_or(0),
        memory_cache: cache,
        memory_limit: memory.and_then(|m| m.limit).unwrap_or(0),
        net_rx_bytes: rx,
        net_tx_bytes: tx,
    })
}

/// The engine's logs options for a query (a container's or a service's): both streams,
/// timestamps on, the tail, `since` in whole seconds (the finer cut is `log_lines`'s).
pub(super) fn logs_options(query: &LogQuery) -> bollard::query_parameters::LogsOptions {
    let mut options = bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .follow(query.follow)
        .tail(&query.tail.to_string());
    if let Some(since_ms) = query.since_ms {
        options = options.since(i32::try_from(since_ms / 1000).unwrap_or(i32::MAX));
    }
    options.build()
}

/// Longest line passed on from the engine; the rest is cut (Docker itself splits lines
/// over 16 KiB).
const ENGINE_LINE_BYTES: usize = 16 * 1024;

/// The engine's log frames as lines: the RFC 3339 timestamp each starts with (`timestamps`)
/// parsed into `at_ms` and stripped, lines before `since_ms` dropped. Ends at the engine's
/// end of stream or first error.
pub(super) fn log_lines(
    stream: impl futures_util::Stream<
        Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
    > + Send
    + 'static,
    since_ms: Option<u64>,
) -> BoxStream<'static, LogLine> {
    use bollard::container::LogOutput;
    stream
        .take_while(|frame| {
            if let Err(err) = frame {
                tracing::debug!(cause = %err, "a log stream ended");
            }
            std::future::ready(frame.is_ok())
        })
        .filter_map(|frame| std::future::ready(frame.ok()))
        .flat_map(move |frame| {
            let (stream, message) = match frame {
                LogOutput::StdErr { message } => ("stderr", message),
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    ("stdout", message)
                }
                LogOutput::StdIn { message } => ("stdin", message),
            };
            let lines: Vec<LogLine> = if stream == "stdin" {
                Vec::new()
            } else {
                String::from_utf8_lossy(&message)
                    .lines()
                    .map(|line| engine_line(stream, line))
                    .filter(|line| !line.line.is_empty())
                    .filter(|line| match (since_ms, line.at_ms) {
                        (Some(since), Some(at)) => at >= since,
                        _ => true,
                    })
                    .collect()
            };
            futures_util::stream::iter(lines)
        })
        .boxed()
}

/// `2024-01-01T12:00:00.123456789Z text` -> the time and `text` (a line without a timestamp
/// is kept whole).
pub(super) fn engine_line(stream: &'static str, line: &str) -> LogLine {
    let parsed = line.split_once(' ').and_then(|(stamp, rest)| {
        let at = humantime::parse_rfc3339(stamp).ok()?;
        let at = at.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some((at.as_millis() as u64, rest))
    });
    let (at_ms, text) = match parsed {
        Some((at, rest)) => (Some(at), rest),
        None => (None, line),
    };
    LogLine {
        at_ms,
        stream,
        line: super::cut(text.trim_end(), ENGINE_LINE_BYTES).to_owned(),
    }
}

pub(super) fn status_code(err: &bollard::errors::Error) -> Option<u16> {
    match err {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_not_found(err: &bollard::errors::Error) -> bool {
    status_code(err) == Some(404)
}

fn is_not_modified(err: &bollard::errors::Error) -> bool {
    status_code(err) == Some(304)
}

fn is_conflict(err: &bollard::errors::Error) -> bool {
    status_code(err) == Some(409)
}
