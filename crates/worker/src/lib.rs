//! The worker: the default CPU-bound workload that the deployment agent scales. CPU jobs run
//! on a bounded pool sized to the container's CPU quota, never on the async runtime; when the
//! pool and its wait queue are full, requests get `503` with `Retry-After`.

pub mod config;

mod api;
mod jobs;
mod metrics;
mod pool;
mod request;
pub mod simulate;

use std::time::Duration;

use common::{
    CancellationToken,
    serve::{ServeOptions, Stopped},
};
use tokio::net::TcpListener;

pub use config::Config;
pub use request::OPERATIONS;

/// The worker's listening sockets.
#[derive(Debug)]
pub struct Listeners {
    /// The job API, the port the balancer forwards to (`TARGET_PORT`).
    pub traffic: TcpListener,
    /// `POST /stop` alone, with `WORKER_CHAOS=true` (`WORKER_CHAOS_PORT`); never forwarded.
    pub chaos: Option<TcpListener>,
}

/// Serves the worker API on `listener` (and no chaos port) until `shutdown` is cancelled; see
/// [`serve`].
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Stopped {
    serve(
        Listeners {
            traffic: listener,
            chaos: None,
        },
        config,
        shutdown,
    )
    .await
}

/// Serves the worker API on the traffic port, and `POST /stop` on the chaos port when chaos is
/// on, until `shutdown` is cancelled, then lets in-flight jobs finish within the configured
/// grace period. Returns [`Stopped::Aborted`] when `POST /stop` simulated a crash.
pub async fn serve(listeners: Listeners, config: Config, shutdown: CancellationToken) -> Stopped {
    let cpu_limit_cores = common::cpu::cpu_limit_cores();
    let threads = config
        .threads
        .map_or_else(|| common::cpu::pool_threads(cpu_limit_cores), usize::from);
    let crash = CancellationToken::new();
    let options = ServeOptions {
        grace: config.shutdown_grace,
        ..ServeOptions::default()
    };
    let chaos = if config.chaos { listeners.chaos } else { None };
    if config.chaos && chaos.is_none() {
        tracing::warn!("WORKER_CHAOS is on but no chaos port is open: POST /stop is unreachable");
    }
    let state = api::AppState::new(config, cpu_limit_cores, threads, crash.clone());
    tracing::info!(
        worker_id = state.worker_id(),
        address = %local(&listeners.traffic),
        chaos_address = chaos.as_ref().map(local).as_deref(),
        threads,
        cpu_limit_cores,
        "worker listening"
    );
    // The chaos port stops with the traffic port: on shutdown, or at once on a crash.
    let chaos_task = chaos.map(|listener| {
        tokio::spawn(common::serve::serve(
            listener,
            api::chaos_router(state.clone()),
            ServeOptions {
                grace: Duration::from_secs(1),
                max_connections: Some(16),
                header_read_timeout: Duration::from_secs(5),
            },
            shutdown.clone(),
            crash.clone(),
        ))
    });
    let stopped = common::serve::serve(
        listeners.traffic,
        api::router(state),
        options,
        shutdown,
        crash,
    )
    .await;
    if let Some(task) = chaos_task {
        task.abort();
    }
    tracing::info!(?stopped, "worker stopped");
    stopped
}

fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|err| err.to_string(), |a| a.to_string())
}

/// Probes `GET /health` on the local worker; `Ok` when it answers `200`.
pub async fn healthcheck(config: &Config, timeout: Duration) -> Result<(), String> {
    common::serve::probe_health(config.host, config.port, timeout).await
}
