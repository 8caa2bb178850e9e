//! Where workers run. One interface, three engines: Docker (the default, through bollard),
//! Docker Swarm (one service per worker, across the swarm's nodes) and local processes (the
//! `worker` binary on loopback ports, for machines without Docker); and a simulated one for
//! the scale benchmark (instances are records, no process). Only the agent touches them.

mod docker;
mod process;
mod simulated;
mod swarm;

use std::time::Duration;

use futures_util::{StreamExt, stream::BoxStream};

pub use docker::DockerRuntime;
pub use process::ProcessRuntime;
pub use simulated::SimulatedRuntime;
pub use swarm::SwarmRuntime;

use crate::{model::Worker, score::StatsSample};

/// A worker instance as the engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Its identity and address, the fields the registry keeps too.
    pub worker: Worker,
    pub running: bool,
    /// Frozen (`docker pause`, SIGSTOP): a warm standby, not serving.
    pub paused: bool,
    /// Its CPU limit in cores, the 100% of its CPU score.
    pub cpu_limit_cores: f64,
}

/// What to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub name: String,
    pub core_id: Option<u32>,
    /// The epoch of the leader that launches it (a label on the container).
    pub epoch: u64,
}

/// Which log lines `Runtime::log_stream` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    /// The last `tail` lines already written (0: none, only new ones when following).
    pub tail: usize,
    /// Only lines written at or after this instant (unix milliseconds).
    pub since_ms: Option<u64>,
    /// Keep reading new lines as they are written, until the instance stops (or the stream
    /// is dropped).
    pub follow: bool,
}

/// One log line of an instance, its timestamp stripped into `at_ms`.
#[derive(serde::Serialize, Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// When the engine (or the agent, for a process) read it, in unix milliseconds.
    pub at_ms: Option<u64>,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    pub line: String,
}

/// Something happened to an instance that the agent did not ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// It died, was OOM-killed or was removed; its exit code when the engine said.
    Exited {
        id: String,
        reason: String,
        code: Option<i64>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error(
        "image {0} is not on this engine; build it with jobs/build-images.sh (nothing can be pulled)"
    )]
    ImageMissing(String),
    /// The engine already holds a container of this name (Docker's 409 on create).
    #[error("a container named {0} already exists")]
    NameTaken(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// The engine in use; a cheap handle.
#[derive(Clone)]
pub enum Runtime {
    Docker(DockerRuntime),
    Process(ProcessRuntime),
    Swarm(SwarmRuntime),
    /// For the scale benchmark: instances are records, no process.
    Simulated(SimulatedRuntime),
}

impl Runtime {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Docker(_) => "docker",
            Self::Process(_) => "process",
            Self::Swarm(_) => "swarm",
            Self::Simulated(_) => "simulated",
        }
    }

    /// Every instance carrying this agent's labels, running or not.
    pub async fn list(&self) -> Result<Vec<Instance>, RuntimeError> {
        match self {
            Self::Docker(docker) => docker.list().await,
            Self::Process(process) => process.list().await,
            Self::Swarm(swarm) => swarm.list().await,
            Self::Simulated(simulated) => Ok(simulated.list()),
        }
    }

    /// The names starting with `prefix` of every instance on the engine, whatever its state
    /// and labels (so a new name never collides with a leftover).
    pub async fn names(&self, prefix: &str) -> Result<Vec<String>, RuntimeError> {
        match self {
            Self::Docker(docker) => docker.names(prefix).await,
            Self::Swarm(swarm) => swarm.names(prefix).await,
            Self::Process(process) => Ok(process
                .list()
                .await?
                .into_iter()
                .map(|instance| instance.worker.name)
                .filter(|name| name.starts_with(prefix))
                .collect()),
            Self::Simulated(simulated) => Ok(simulated.names(prefix)),
        }
    }

    /// Creates and starts one instance; `NameTaken` when the name is in use.
    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, RuntimeError> {
        match self {
            Self::Docker(docker) => docker.launch(spec).await,
            Self::Process(process) => process.launch(spec).await,
            Self::Swarm(swarm) => swarm.launch(spec).await,
            Self::Simulated(simulated) => simulated.launch(spec).await,
        }
    }

    /// Freezes a running instance (a warm standby keeps its memory and uses no CPU).
    pub async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        match self {
            Self::Docker(docker) => docker.pause(id).await,
            Self::Process(process) => process.signal(id, nix::sys::signal::Signal::SIGSTOP),
            Self::Swarm(_) => Err(RuntimeError::Other(NO_PAUSE_IN_SWARM.into())),
            Self::Simulated(simulated) => simulated.set_paused(id, true),
        }
    }

    /// Thaws a paused instance; it carries on where it was frozen.
    pub async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        match self {
            Self::Docker(docker) => docker.resume(id).await,
            Self::Process(process) => process.signal(id, nix::sys::signal::Signal::SIGCONT),
            Self::Swarm(_) => Err(RuntimeError::Other(NO_PAUSE_IN_SWARM.into())),
            Self::Simulated(simulated) => simulated.set_paused(id, false),
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; then removal. Gone already is fine.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        match self {
            Self::Docker(docker) => docker.stop(id, grace).await,
            Self::Process(process) => process.stop(id, grace).await,
            Self::Swarm(swarm) => swarm.stop(id, grace).await,
            Self::Simulated(simulated) => {
                simulated.stop(id);
                Ok(())
            }
        }
    }

    /// Deaths the agent did not cause, as they happen (reconnects by itself).
    pub fn events(&self) -> BoxStream<'static, RuntimeEvent> {
        match self {
            Self::Docker(docker) => docker.events(),
            Self::Process(process) => process.events(),
            Self::Swarm(swarm) => swarm.events(),
            // Records die only when stopped.
            Self::Simulated(_) => futures_util::stream::pending().boxed(),
        }
    }

    /// The container's HEALTHCHECK status (Docker only: processes and records have none).
    pub async fn health(&self, id: &str) -> Result<EngineHealth, RuntimeError> {
        match self {
            Self::Docker(docker) => docker.health(id).await,
            Self::Process(_) | Self::Swarm(_) | Self::Simulated(_) => {
                Err(RuntimeError::Other(format!(
                    "the {} runtime reads no HEALTHCHECK; set WORKER_PROBE to http or tcp",
                    self.kind()
                )))
            }
        }
    }

    /// The exit code of an instance that has exited (Docker: from `inspect`; a process's is
    /// reported with its exit event).
    pub async fn exit_code(&self, id: &str) -> Option<i64> {
        match self {
            Self::Docker(docker) => docker.exit_code(id).await,
            Self::Process(_) | Self::Simulated(_) => None,
            Self::Swarm(swarm) => swarm.exit_code(id).await,
        }
    }

    /// The last log lines of an instance (stdout and stderr), at most `LOG_LINES` /
    /// `LOG_BYTES`, read for at most five seconds; empty when none can be read. What a crash
    /// report carries.
    pub async fn logs(&self, id: &str) -> Vec<String> {
        let query = LogQuery {
            tail: LOG_LINES,
            since_ms: None,
            follow: false,
        };
        let Ok(stream) = self.log_stream(id, &query).await else {
            return Vec::new();
        };
        let mut stream = stream.take(LOG_LINES * 4);
        let mut lines = Vec::new();
        let read = async {
            while let Some(line) = stream.next().await {
                lines.push(line.line);
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
        last_lines(lines.iter().map(String::as_str))
    }

    /// An instance's log lines, oldest first (Docker and Swarm: from the engine, the
    /// container's stdout and stderr; a process: what the agent kept of its output); with
    /// `follow`, new lines as they are written until the instance stops. Pulled: nothing is
    /// read ahead of the consumer. The simulated runtime's records have none (an error).
    pub async fn log_stream(
        &self,
        id: &str,
        query: &LogQuery,
    ) -> Result<BoxStream<'static, LogLine>, RuntimeError> {
        match self {
            Self::Docker(docker) => docker.log_stream(id, query).await,
            Self::Process(process) => process.log_stream(id, query),
            Self::Swarm(swarm) => swarm.log_stream(id, query).await,
            Self::Simulated(_) => Err(RuntimeError::Other(
                "a simulated worker writes no logs".into(),
            )),
        }
    }

    /// Whether the runtime still keeps the logs of `id` once the instance is gone: the
    /// process runtime keeps an exited worker's last lines; an engine lists a stopped
    /// container until it is removed, and forgets its logs with it.
    pub fn keeps_logs(&self, id: &str) -> bool {
        match self {
            Self::Process(process) => process.keeps_logs(id),
            Self::Docker(_) | Self::Swarm(_) | Self::Simulated(_) => false,
        }
    }

    /// One long-lived stream of resource samples for an instance; ends when it stops.
    pub fn stats(&self, id: &str) -> BoxStream<'static, StatsSample> {
        match self {
            Self::Docker(docker) => docker.stats(id),
            Self::Process(process) => process.stats(id),
            Self::Swarm(swarm) => swarm.stats(id),
            Self::Simulated(simulated) => simulated.stats(id),
        }
    }
}

const NO_PAUSE_IN_SWARM: &str =
    "a Swarm task cannot be paused (the swarm runtime keeps no warm standbys; WARM_POOL=0)";

/// A container's own HEALTHCHECK status, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineHealth {
    /// The image has no HEALTHCHECK (and none was set at create).
    NoHealthcheck,
    Starting,
    /// Healthy; the last check's run time when the engine recorded it.
    Healthy(Option<Duration>),
    /// Unhealthy, with the last check's output.
    Unhealthy(String),
}

/// A worker's environment from the config: `TARGET_PORT`, then WORKER_ENV.
fn worker_env(config: &crate::config::Config) -> Vec<String> {
    let mut env = vec![format!("TARGET_PORT={}", config.target_port)];
    env.extend(config.worker_env.0.iter().cloned());
    env
}

/// A worker's own labels from WORKER_LABELS (never one of the agent's: those it sets itself).
fn worker_labels(config: &crate::config::Config) -> std::collections::HashMap<String, String> {
    config
        .worker_labels
        .0
        .iter()
        .filter(|(key, _)| !crate::config::is_agent_label(key))
        .cloned()
        .collect()
}

/// Most log lines and bytes kept for a crash report.
pub const LOG_LINES: usize = 10;
pub const LOG_BYTES: usize = 2048;

/// The last `LOG_LINES` non-empty lines of `text`, at most `LOG_BYTES` in all (the oldest
/// cut first).
pub fn last_lines<'a>(lines: impl DoubleEndedIterator<Item = &'a str>) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    let mut bytes = 0;
    for line in lines.rev() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if kept.len() == LOG_LINES || bytes + line.len() > LOG_BYTES {
            if kept.is_empty() {
                // One line alone over the limit: its end.
                let mut start = line.len() - LOG_BYTES;
                while !line.is_char_boundary(start) {
                    start += 1;
                }
                kept.push(line[start..].to_owned());
            }
            break;
        }
        bytes += line.len();
        kept.push(line.to_owned());
    }
    kept.reverse();
    kept
}

/// The HTTP status of an engine's error answer.
pub(crate) fn docker_status(err: &bollard::errors::Error) -> Option<u16> {
    docker::status_code(err)
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
