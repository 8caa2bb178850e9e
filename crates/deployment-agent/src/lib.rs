//! The deployment agent: owns the container engine, observes, scores and classifies every
//! worker (INIT / LU / MU / HU / SUNDOWN), decides and performs scaling, and publishes the
//! live queue to balancers (WebSocket, gRPC) with its state kept in Redis.

pub mod config;
pub mod decide;
pub mod lease;
pub mod model;
pub mod score;
pub mod store;

mod agent;
mod auth;
mod controller;
mod dashboard;
mod forward;
mod grpc;
mod http;
mod journey;
mod logs;
mod metrics;
mod probe;
mod publish;
mod relay;
mod runtime;
mod state;
mod ws;

/// A real `redis-server` for the unit tests of the store and the election.
#[cfg(test)]
#[path = "../tests/deployment_agent/support/redis.rs"]
mod redis_support;

use common::{CancellationToken, serve::ServeOptions};
use tokio::net::TcpListener;

pub use agent::Agent;
pub use config::{Config, RuntimeKind};

/// The three sockets the agent serves.
pub struct Listeners {
    pub http: TcpListener,
    pub ws: TcpListener,
    pub grpc: TcpListener,
}

/// Why the agent could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A setting, or a relation between settings, is invalid; the message names the variables.
    #[error("{0}")]
    Config(String),
    #[error("cannot reach the Docker engine (DOCKER_HOST); is the socket mounted and readable?")]
    Docker(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot start the process or simulated runtime")]
    Process(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
    #[error("control loop panicked")]
    Controller(#[source] tokio::task::JoinError),
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let config = config.normalized();
    config.validate().map_err(RunError::Config)?;
    let runtime = match config.runtime {
        RuntimeKind::Docker => runtime::Runtime::Docker(
            runtime::DockerRuntime::connect(&config)
                .await
                .map_err(|error| RunError::Docker(error.into()))?,
        ),
        RuntimeKind::Process => runtime::Runtime::Process(
            runtime::ProcessRuntime::new(&config)
                .map_err(|error| RunError::Process(error.into()))?,
        ),
        RuntimeKind::Swarm => runtime::Runtime::Swarm(
            runtime::SwarmRuntime::connect(&config)
                .await
                .map_err(|error| RunError::Docker(error.into()))?,
        ),
        RuntimeKind::Simulated => runtime::Runtime::Simulated(
            runtime::SimulatedRuntime::start(&config)
                .await
                .map_err(|error| RunError::Process(error.into()))?,
        ),
    };
    // On Swarm every agent shares the stats of the workers on its own node; only an agent on
    // a manager may lead.
    let candidate = match &runtime {
        runtime::Runtime::Swarm(swarm) => {
            tokio::spawn(swarm.clone().observe_node(shutdown.clone()));
            if !swarm.is_manager() {
                tracing::info!(
                    "this node is not a swarm manager: this agent observes and follows, never leads"
                );
            }
            if !swarm.is_manager() && !config.leader_election() {
                return Err(RunError::Config(
                    "this node is not a swarm manager, and with AGENT_REPLICAS=1 the agent must lead: run it on a manager, or set AGENT_REPLICAS above 1 with Redis".into(),
                ));
            }
            swarm.is_manager()
        }
        _ => true,
    };
    let store = store::Store::open(store::StoreConfig {
        redis_url: config.redis(),
        prefix: config.key_prefix(),
        metrics_history: config.metrics_history,
        max_events: config.max_events,
    })
    .await;
    let grace = config.shutdown_grace;
    let port = |listener: &TcpListener| listener.local_addr().map_or(0, |addr| addr.port());
    let urls = config
        .advertised_urls(
            port(&listeners.http),
            port(&listeners.ws),
            port(&listeners.grpc),
        )
        .await;
    let elector = match config.lease_config(urls.clone(), candidate) {
        Some(lease) => lease::Elector::start(lease, shutdown.clone()),
        None => lease::Elector::solo(config.resolved_agent_id(), urls),
    };
    if let runtime::Runtime::Swarm(swarm) = &runtime {
        let elector = elector.clone();
        let changed = move |candidate| elector.set_candidate(candidate);
        tokio::spawn(swarm.clone().watch_candidacy(changed, shutdown.clone()));
    }
    store.set_fence(elector.fence());
    if !elector.is_solo() {
        // An agent alone in the election leads from its first round.
        let mut roles = elector.role();
        let first_round = config.leader_lease / 2;
        let _ = tokio::time::timeout(first_round, roles.wait_for(lease::Role::is_leader)).await;
        store.set_fence(elector.fence());
    }
    let agent = Agent::new(config, runtime, store, elector, shutdown.clone());
    tracing::info!(
        http = ?listeners.http.local_addr().ok(),
        ws = ?listeners.ws.local_addr().ok(),
        grpc = ?listeners.grpc.local_addr().ok(),
        runtime = agent.runtime_kind(),
        image = %agent.config().image,
        "deployment agent starting"
    );

    auth::log_access(&agent.config().access());

    let controller = tokio::spawn(controller::run(agent.clone(), shutdown.clone()));
    let relay = tokio::spawn(relay::run(agent.clone(), shutdown.clone()));
    let options = ServeOptions {
        grace,
        ..ServeOptions::default()
    };
    let never = CancellationToken::new();
    let http = common::serve::serve(
        listeners.http,
        http::router(agent.clone()),
        options.clone(),
        shutdown.clone(),
        never.clone(),
    );
    let ws_router = axum::Router::new()
        .route("/ws", axum::routing::get(ws::upgrade))
        .with_state(agent.clone());
    let ws = common::serve::serve(listeners.ws, ws_router, options, shutdown.clone(), never);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<proto::v1::deployment_agent_server::DeploymentAgentServer<grpc::AgentService>>().await;
    let grpc_shutdown = shutdown.clone();
    let grpc_server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(grpc::AgentService::server(agent.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc),
            async move { grpc_shutdown.cancelled().await },
        );
    // The agent ends its own streams on shutdown (WatchQueue, ReportLoad); whatever a client
    // still holds open after SHUTDOWN_GRACE is not waited for.
    let grpc_deadline = shutdown.clone();
    let grpc = async move {
        tokio::select! {
            served = grpc_server => served,
            () = async {
                grpc_deadline.cancelled().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace = ?grace, "gRPC calls still open after the grace period; leaving them");
                Ok(())
            }
        }
    };
    let (_, _, grpc, controller, _) = tokio::join!(http, ws, grpc, controller, relay);
    // The lease is released on shutdown, so that a follower leads at once.
    agent.shared().elector.stopped().await;
    grpc.map_err(RunError::Grpc)?;
    controller.map_err(RunError::Controller)?;
    Ok(())
}
