//! The agent's domain types: what it manages (the container registry), what the API changes
//! at run time (overrides), what it records (scaling events, metric samples). The store keeps
//! them; the controller, the API and the dashboard speak them.

use common::queue::Category;
use serde::{Deserialize, Serialize};

/// A worker container as the engine names it and the balancers reach it: what the engine
/// reports and the registry keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    pub name: String,
    /// `host:port` that balancers and the agent's probes dial.
    pub address: String,
    /// The name balancers show for it (`X-Backend`).
    pub dns_name: String,
    /// The CPU core it is pinned to (WORKER_CPUSET), if any.
    pub core_id: Option<u32>,
    pub created_at_ms: u64,
}

/// One container the agent manages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Flattened: its fields sit at the top level of the JSON, as before they were shared.
    /// (The Redis hash is written field by field in `store.rs`.)
    #[serde(flatten)]
    pub worker: Worker,
    pub category: Category,
    /// When the container entered SUNDOWN (Unix ms).
    pub sundown_since_ms: Option<u64>,
}

/// Config values changed at run time through the API; `None` keeps the configured value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigOverrides {
    pub min_replicas: Option<usize>,
    pub max_replicas: Option<usize>,
    pub default_containers: Option<usize>,
}

/// Something the agent did or saw, for the dashboard and the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingEvent {
    pub at_ms: u64,
    pub kind: EventKind,
    pub container: Option<String>,
    /// Replicas after the event.
    pub replicas: usize,
    pub message: String,
    /// The epoch of the leader that recorded it (0 without leader election).
    #[serde(default)]
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ScaleUp,
    ScaleDown,
    Created,
    Ready,
    Sundown,
    Stopped,
    Died,
    Adopted,
    Removed,
    ConfigChanged,
    Started,
    /// A ready container failed UNHEALTHY_THRESHOLD probes in a row: out of the queue.
    Unhealthy,
    /// An unhealthy container answered again: back in the queue.
    Recovered,
    /// A launch crashed (its container exited or never became ready during start): the next
    /// launch waits, longer after each crash in a row.
    CrashLoop,
    /// The worker probe cannot work as configured (WORKER_PROBE=docker on an image without
    /// HEALTHCHECK).
    ProbeError,
    /// This agent became the leader (took the lease with a new epoch).
    LeaderElected,
    /// The leader was asked to hand the lead over (`POST /leadership/step-down`).
    LeaderStepDown,
}

/// One scoring sample of a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub at_ms: u64,
    pub cpu: f64,
    pub memory: f64,
    pub network: f64,
    pub availability: f64,
    pub overall: f64,
    pub in_flight: u64,
}
