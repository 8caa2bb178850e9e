//! Where workers run. One interface, two engines: Docker (the default, through bollard) and
//! local processes (the `worker` binary on loopback ports, for machines without Docker).
//! Only the agent touches either.

mod docker;
mod process;

use std::time::Duration;

use futures_util::stream::BoxStream;

pub use docker::DockerRuntime;
pub use process::ProcessRuntime;

use crate::score::StatsSample;

/// A worker instance as the engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub name: String,
    /// `host:port` that balancers and the agent's probes dial.
    pub address: String,
    /// The name balancers show for it (`X-Backend`).
    pub dns_name: String,
    /// The core it is pinned to (WORKER_CPUSET), if any.
    pub core_id: Option<u32>,
    pub created_at_ms: u64,
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
}

/// Something happened to an instance that the agent did not ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// It died, was OOM-killed or was removed.
    Exited { id: String, reason: String },
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
}

impl Runtime {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Docker(_) => "docker",
            Self::Process(_) => "process",
        }
    }

    /// Every instance carrying this agent's labels, running or not.
    pub async fn list(&self) -> Result<Vec<Instance>, RuntimeError> {
        match self {
            Self::Docker(docker) => docker.list().await,
            Self::Process(process) => process.list().await,
        }
    }

    /// The names starting with `prefix` of every instance on the engine, whatever its state
    /// and labels (so a new name never collides with a leftover).
    pub async fn names(&self, prefix: &str) -> Result<Vec<String>, RuntimeError> {
        match self {
            Self::Docker(docker) => docker.names(prefix).await,
            Self::Process(process) => Ok(process
                .list()
                .await?
                .into_iter()
                .map(|instance| instance.name)
                .filter(|name| name.starts_with(prefix))
                .collect()),
        }
    }

    /// Creates and starts one instance; `NameTaken` when the name is in use.
    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, RuntimeError> {
        match self {
            Self::Docker(docker) => docker.launch(spec).await,
            Self::Process(process) => process.launch(spec).await,
        }
    }

    /// Freezes a running instance (a warm standby keeps its memory and uses no CPU).
    pub async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        match self {
            Self::Docker(docker) => docker.pause(id).await,
            Self::Process(process) => process.signal(id, nix::sys::signal::Signal::SIGSTOP),
        }
    }

    /// Thaws a paused instance; it carries on where it was frozen.
    pub async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        match self {
            Self::Docker(docker) => docker.resume(id).await,
            Self::Process(process) => process.signal(id, nix::sys::signal::Signal::SIGCONT),
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; then removal. Gone already is fine.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        match self {
            Self::Docker(docker) => docker.stop(id, grace).await,
            Self::Process(process) => process.stop(id, grace).await,
        }
    }

    /// Deaths the agent did not cause, as they happen (reconnects by itself).
    pub fn events(&self) -> BoxStream<'static, RuntimeEvent> {
        match self {
            Self::Docker(docker) => docker.events(),
            Self::Process(process) => process.events(),
        }
    }

    /// One long-lived stream of resource samples for an instance; ends when it stops.
    pub fn stats(&self, id: &str) -> BoxStream<'static, StatsSample> {
        match self {
            Self::Docker(docker) => docker.stats(id),
            Self::Process(process) => process.stats(id),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
