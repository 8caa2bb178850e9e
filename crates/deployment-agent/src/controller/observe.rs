//! The observers: one task per member follows its resource stats, one probes it (readiness,
//! liveness, load), and one follows the engine's events. What they see becomes a transition
//! of the world, executed at once.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::{
    agent::Agent,
    config::ProbeKind,
    probe::{LoadProbe, ProbeSpec, WorkerLoad},
    runtime::{EngineHealth, RuntimeEvent},
    state::{Phase, ProbeVerdict},
};

use super::execute;

/// Probe period while a container is starting (fast, for quick cold starts).
pub(super) const STARTING_PROBE: Duration = Duration::from_millis(50);

/// Follows the engine's events: a death the agent did not cause leaves the queue at once and
/// is replaced.
pub(super) async fn watch_engine(agent: Agent) {
    let mut events = agent.shared().runtime.events();
    while let Some(RuntimeEvent::Exited { id, reason, code }) = events.next().await {
        let effects = agent.world().exited(&id, &reason, code, Instant::now());
        execute(&agent, effects);
    }
}

/// Starts the observers of a member: its stats stream and its probes.
pub(super) fn start(agent: &Agent, id: &str) {
    let stats = tokio::spawn(follow_stats(agent.clone(), id.to_owned())).abort_handle();
    let probes = tokio::spawn(probe(agent.clone(), id.to_owned())).abort_handle();
    let refused = agent.world().set_observers(id, vec![stats, probes]);
    if let Err(observers) = refused {
        for observer in observers {
            observer.abort();
        }
    }
}

async fn follow_stats(agent: Agent, id: String) {
    let mut samples = agent.shared().runtime.stats(&id);
    while let Some(sample) = samples.next().await {
        let member = agent.world().stats_sample(&id, sample);
        if !member {
            return;
        }
        agent.publish();
    }
}

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProbeFailure {
    pub message: String,
    /// The probe cannot pass as configured (WORKER_PROBE=docker, no HEALTHCHECK).
    pub misconfigured: bool,
}

impl ProbeFailure {
    fn failed(message: String) -> Self {
        Self {
            message,
            misconfigured: false,
        }
    }
}

/// Runs the configured probe (WORKER_PROBE) once against a worker: its latency, or why it
/// failed. The `docker` kind reads the container's HEALTHCHECK status from the engine; its
/// latency is the last check's run time (else the engine's answer time).
pub(super) async fn check(
    agent: &Agent,
    spec: &ProbeSpec,
    id: &str,
    address: &str,
) -> Result<Duration, ProbeFailure> {
    let prober = &agent.shared().prober;
    match spec.kind {
        ProbeKind::Http => prober
            .http(address, &spec.path, &spec.status)
            .await
            .map_err(ProbeFailure::failed),
        ProbeKind::Tcp => prober.tcp(address).await.map_err(ProbeFailure::failed),
        ProbeKind::Docker => {
            let started = Instant::now();
            let timeout = agent.config().probe_timeout;
            let health = tokio::time::timeout(timeout, agent.shared().runtime.health(id)).await;
            match health {
                Err(_) => Err(ProbeFailure::failed(format!(
                    "the engine did not answer within {timeout:?}"
                ))),
                Ok(Err(err)) => Err(ProbeFailure::failed(format!("inspect failed: {err}"))),
                Ok(Ok(EngineHealth::Healthy(took))) => {
                    Ok(took.unwrap_or_else(|| started.elapsed()))
                }
                Ok(Ok(EngineHealth::Starting)) => {
                    Err(ProbeFailure::failed("HEALTHCHECK status: starting".into()))
                }
                Ok(Ok(EngineHealth::Unhealthy(output))) => Err(ProbeFailure::failed(format!(
                    "HEALTHCHECK status: unhealthy: {}",
                    output.lines().last().unwrap_or_default()
                ))),
                Ok(Ok(EngineHealth::NoHealthcheck)) => Err(ProbeFailure {
                    message: format!(
                        "WORKER_PROBE=docker but image {} has no HEALTHCHECK; add one or set WORKER_PROBE to http or tcp",
                        agent.config().image
                    ),
                    misconfigured: true,
                }),
            }
        }
    }
}

/// The worker's `/stats`, unless it is known not to have it; a member found without it
/// counts its in-flight from the balancers' reports from then on.
async fn load_of(agent: &Agent, id: &str, address: &str) -> Option<WorkerLoad> {
    let known = agent.world().worker_stats(id);
    if known == Some(false) {
        return None;
    }
    let probe = agent.shared().prober.load(address).await;
    let verdict = match probe {
        LoadProbe::Worker(_) => Some(true),
        LoadProbe::NotWorker => Some(false),
        LoadProbe::NoAnswer => None,
    };
    if let Some(worker) = verdict.filter(|_| verdict != known) {
        agent.world().set_worker_stats(id, worker);
        if !worker {
            tracing::info!(container = %id, "no worker /stats: in-flight counts come from the balancers' reports");
        }
    }
    match probe {
        LoadProbe::Worker(load) => Some(load),
        _ => None,
    }
}

async fn probe(agent: Agent, id: String) {
    let config = agent.config().clone();
    let spec = ProbeSpec::from_config(&config);
    loop {
        let target = agent.world().probe_target(&id);
        let Some((address, phase, created)) = target else {
            return;
        };
        let outcome = check(&agent, &spec, &id, &address).await;
        let latency = outcome.as_ref().ok().copied();
        let load = match latency {
            Some(_) => load_of(&agent, &id, &address).await,
            None => None,
        };
        let now = Instant::now();
        if let Err(failure) = &outcome {
            let effects =
                agent
                    .world()
                    .probe_failed(&id, &failure.message, failure.misconfigured, now);
            execute(&agent, effects);
        }
        match phase {
            Phase::Starting { since } => {
                if latency.is_some() {
                    let after = now.duration_since(created);
                    let effects = agent.world().became_ready(&id, latency, load, after, now);
                    execute(&agent, effects);
                    continue;
                }
                if now.duration_since(since) > config.startup_timeout {
                    let failure = outcome.err().map(|f| f.message).unwrap_or_default();
                    let message = format!(
                        "not ready within STARTUP_TIMEOUT {:?} ({} {failure}); replacing it",
                        config.startup_timeout,
                        spec.describe()
                    );
                    let cause = format!(
                        "was not ready within {:?}: {failure}",
                        config.startup_timeout
                    );
                    let effects = agent.world().startup_timed_out(&id, message, cause, now);
                    execute(&agent, effects);
                    return;
                }
                tokio::time::sleep(STARTING_PROBE).await;
            }
            Phase::Stopping => return,
            Phase::Ready | Phase::Unhealthy { .. } | Phase::Sundown { .. } => {
                let (effects, verdict) = agent.world().probed(&id, latency, load, now);
                execute(&agent, effects);
                if let ProbeVerdict::Replace { .. } = verdict {
                    return; // being replaced
                }
                tokio::time::sleep(config.probe_period).await;
            }
        }
    }
}
