//! Workers as records, no process: for the scale benchmark (`jobs/bench-scale.sh`), which
//! runs the agent with a thousand workers on one machine. A launch adds a record (after
//! SIMULATED_LAUNCH_DELAY); stop removes it; nothing dies on its own, so the event stream
//! stays silent. Each record yields a synthetic stats sample every second: a steady CPU
//! level of its own (5-55 % of its one core) with ±20 % noise, so scores differ and move.
//!
//! Every worker's address is one loopback HTTP listener the runtime starts: it answers any
//! path with 200 and `/stats` with an idle worker's JSON, so WORKER_PROBE=http (or tcp)
//! probes it as it would a worker. Balancers' in-flight reports are keyed by address, so
//! they would all land on every record: this runtime is for the agent alone.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream::BoxStream};

use super::{Instance, LaunchSpec, RuntimeError};
use crate::{config::Config, model::Worker, score::StatsSample};

/// How often a record yields a sample (Docker's stats stream: about once a second).
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// A record's memory: its usage and its limit.
const MEMORY_USAGE: u64 = 64 << 20;
const MEMORY_LIMIT: u64 = 512 << 20;

#[derive(Clone)]
pub struct SimulatedRuntime {
    shared: Arc<Shared>,
}

struct Shared {
    /// The listener every record's address points at.
    address: SocketAddr,
    launch_delay: Duration,
    /// The records by id.
    records: Mutex<HashMap<String, Instance>>,
    next_id: AtomicU64,
    listener: tokio::task::AbortHandle,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl SimulatedRuntime {
    /// Starts the loopback listener the records' addresses point at.
    pub async fn start(config: &Config) -> Result<Self, RuntimeError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let router = axum::Router::new()
            .route("/stats", axum::routing::get(worker_stats))
            .fallback(|| async { "ok" });
        let served = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::warn!(cause = %err, "the simulated workers' listener stopped");
            }
        });
        tracing::info!(%address, "simulated runtime: every worker answers here");
        Ok(Self {
            shared: Arc::new(Shared {
                address,
                launch_delay: config.simulated_launch_delay,
                records: Mutex::default(),
                next_id: AtomicU64::new(1),
                listener: served.abort_handle(),
            }),
        })
    }

    pub fn list(&self) -> Vec<Instance> {
        lock(&self.shared.records).values().cloned().collect()
    }

    pub fn names(&self, prefix: &str) -> Vec<String> {
        lock(&self.shared.records)
            .values()
            .map(|instance| instance.worker.name.clone())
            .filter(|name| name.starts_with(prefix))
            .collect()
    }

    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, RuntimeError> {
        if !self.shared.launch_delay.is_zero() {
            tokio::time::sleep(self.shared.launch_delay).await;
        }
        let mut records = lock(&self.shared.records);
        if records.values().any(|i| i.worker.name == spec.name) {
            return Err(RuntimeError::NameTaken(spec.name.clone()));
        }
        let id = format!(
            "sim-{}",
            self.shared.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let instance = Instance {
            worker: Worker {
                id: id.clone(),
                name: spec.name.clone(),
                address: self.shared.address.to_string(),
                dns_name: spec.name.clone(),
                core_id: spec.core_id,
                created_at_ms: super::now_ms(),
            },
            running: true,
            paused: false,
            cpu_limit_cores: 1.0,
        };
        records.insert(id, instance.clone());
        Ok(instance)
    }

    pub fn set_paused(&self, id: &str, paused: bool) -> Result<(), RuntimeError> {
        match lock(&self.shared.records).get_mut(id) {
            Some(instance) => {
                instance.paused = paused;
                Ok(())
            }
            None => Err(RuntimeError::Other(format!("no simulated worker {id}"))),
        }
    }

    /// Removes the record; gone already is fine.
    pub fn stop(&self, id: &str) {
        lock(&self.shared.records).remove(id);
    }

    /// Synthetic samples while the record exists (none while paused); ends when it is stopped.
    pub fn stats(&self, id: &str) -> BoxStream<'static, StatsSample> {
        let shared = Arc::downgrade(&self.shared);
        let id = id.to_owned();
        let mut noise = Noise::new(&id);
        // 5-55 % of its core, fixed per worker.
        let level = 0.05 + 0.5 * noise.next();
        let start = SampleState::default();
        let ticks =
            tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(SAMPLE_PERIOD));
        ticks
            .scan(start, move |state, _| {
                let paused = shared
                    .upgrade()
                    .and_then(|shared| lock(&shared.records).get(&id).map(|i| i.paused));
                let sample = paused.map(|paused| {
                    let period = SAMPLE_PERIOD.as_nanos() as u64;
                    let used = if paused {
                        0.0
                    } else {
                        level * (0.8 + 0.4 * noise.next())
                    };
                    state.system_ns += period;
                    state.cpu_ns += (used * period as f64) as u64;
                    state.net_bytes += (used * 1e6) as u64;
                    Some(StatsSample {
                        at: Instant::now(),
                        cpu_total_ns: state.cpu_ns,
                        system_cpu_ns: state.system_ns,
                        online_cpus: 1,
                        memory_usage: MEMORY_USAGE + (used * f64::from(1 << 24)) as u64,
                        memory_cache: 0,
                        memory_limit: MEMORY_LIMIT,
                        net_rx_bytes: state.net_bytes,
                        net_tx_bytes: state.net_bytes,
                    })
                });
                std::future::ready(sample)
            })
            .filter_map(std::future::ready)
            .boxed()
    }
}

/// A record's cumulative counters.
#[derive(Default)]
struct SampleState {
    cpu_ns: u64,
    system_ns: u64,
    net_bytes: u64,
}

/// A small deterministic generator (xorshift64*) seeded by the worker's id: numbers in [0, 1).
struct Noise(u64);

impl Noise {
    fn new(seed: &str) -> Self {
        // FNV-1a of the id; never zero.
        let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        Self(hash | 1)
    }

    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let value = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (value >> 11) as f64 / (1_u64 << 53) as f64
    }
}

/// An idle worker's `/stats`.
async fn worker_stats() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "in_flight": 0,
        "queued": 0,
        "completed": 0,
        "failed": 0,
        "rejected": 0,
    }))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
