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

/// Serves the worker API on `listener` until `shutdown` is cancelled, then lets in-flight
/// jobs finish within the configured grace period. Returns [`Stopped::Aborted`] when
/// `POST /stop` simulated a crash.
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Stopped {
    let cpu_limit_cores = common::cpu::cpu_limit_cores();
    let threads = config
        .threads
        .map_or_else(|| common::cpu::pool_threads(cpu_limit_cores), usize::from);
    let crash = CancellationToken::new();
    let options = ServeOptions {
        grace: config.shutdown_grace,
        ..ServeOptions::default()
    };
    let state = api::AppState::new(config, cpu_limit_cores, threads, crash.clone());
    tracing::info!(
        worker_id = state.worker_id(),
        address = %listener.local_addr().map_or_else(|err| err.to_string(), |a| a.to_string()),
        threads,
        cpu_limit_cores,
        "worker listening"
    );
    let stopped =
        common::serve::serve(listener, api::router(state), options, shutdown, crash).await;
    tracing::info!(?stopped, "worker stopped");
    stopped
}

/// Probes `GET /health` on the local worker; `Ok` when it answers `200`.
pub async fn healthcheck(config: &Config, timeout: Duration) -> Result<(), String> {
    common::serve::probe_health(config.host, config.port, timeout).await
}
