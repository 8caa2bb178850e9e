//! The control loop: observe -> score -> decide -> act -> publish.
//!
//! Observation runs in per-container tasks (one Docker stats stream each, /health and /stats
//! probes) plus one task on the engine's event stream (`observe.rs`); the engine is listed
//! every RECONCILE_PERIOD to catch what the events missed (`reconcile.rs`). The loop itself
//! wakes every SCALE_CHECK_PERIOD, or sooner when something asks (demand from a balancer, a
//! death, an API call), runs the pure `decide`, and acts.
//!
//! Every change goes the same one way: a transition of the world (`state::apply`), taken
//! under the world's lock, returns its `Effects`; [`execute`] (`act.rs`) performs them and
//! publishes once. The warm pool (`warm.rs`) prepares paused standbys the launches thaw.
//!
//! A container is stopped only once it is out of the balancers' candidate set: a SUNDOWN one
//! when the decision says it is drained (nothing in flight) or past DRAIN_TIMEOUT; one that
//! never was routable (not healthy within STARTUP_TIMEOUT, or its launch cancelled by a
//! scale-down); an unhealthy one (published INIT since its UNHEALTHY_THRESHOLD-th failed
//! probe) after UNHEALTHY_TIMEOUT, whatever is stalled on it; and every one on exit with
//! STOP_WORKERS_ON_EXIT.

mod act;
mod observe;
mod reconcile;
mod warm;

use std::time::{Duration, Instant};

use common::CancellationToken;

pub(crate) use act::execute;

use crate::{
    agent::Agent,
    lease::Role,
    store::{DesiredState, EventKind},
};

/// Most of the leader's events a follower takes in per tick.
const FOLLOWED_EVENTS: usize = 100;
/// How often the engine is listed to catch anything the event stream missed.
const RECONCILE_PERIOD: Duration = Duration::from_secs(10);

/// Runs until `shutdown` is cancelled.
pub async fn run(agent: Agent, shutdown: CancellationToken) {
    let mut roles = agent.roles();
    roles.borrow_and_update();
    start(&agent).await;
    let events = tokio::spawn(observe::watch_engine(agent.clone()));
    let period = agent.config().scale_check_period;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconcile_tick = tokio::time::interval(RECONCILE_PERIOD);
    reconcile_tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if agent.is_leading() {
                    step(&agent);
                } else {
                    follow(&agent).await;
                }
            }
            () = agent.shared().wake.notified() => {
                if agent.is_leading() {
                    step(&agent);
                }
            }
            _ = reconcile_tick.tick() => reconcile::reconcile(&agent).await,
            changed = roles.changed() => {
                if changed.is_err() {
                    break;
                }
                let role = roles.borrow_and_update().clone();
                role_changed(&agent, role).await;
            }
        }
    }
    events.abort();
    let observers = agent.world().all_observers();
    for observer in observers {
        observer.abort();
    }
    if agent.config().stop_workers_on_exit && agent.is_leading() {
        stop_all(&agent).await;
    }
    agent.store().flush(Duration::from_secs(2)).await;
    tracing::info!("control loop stopped");
}

/// Restores persisted state, adopts what runs, and brings the pool to its start size.
async fn start(agent: &Agent) {
    let persisted = agent.store().load().await;
    agent.world().restore(persisted.overrides.clone());
    let sundown: Vec<String> = persisted
        .containers
        .iter()
        .filter(|record| record.category == common::queue::Category::Sundown)
        .map(|record| record.worker.id.clone())
        .collect();
    reconcile::reconcile(agent).await;
    if !agent.is_leading() {
        agent.world().set_leading(false);
        follow(agent).await;
        let leader = agent.leader().map(|leader| leader.id);
        tracing::info!(agent = agent.id(), ?leader, "agent started as a follower");
        return;
    }
    let effects = agent.world().resume(
        &sundown,
        agent.config().start_count(),
        agent.runtime_kind(),
        Instant::now(),
    );
    execute(agent, effects);
    if let Some(epoch) = agent
        .acting_epoch()
        .filter(|_| !agent.shared().elector.is_solo())
    {
        agent.event(
            EventKind::LeaderElected,
            None,
            format!("{} leads with epoch {epoch} from its start", agent.id()),
        );
    }
}

/// A follower's tick: the engine listed, the leader's registry and bounds taken in.
async fn follow(agent: &Agent) {
    reconcile::reconcile(agent).await;
    if let Some(desired) = agent.store().read_shared().await {
        agent.store().mirror(&desired);
        agent
            .world()
            .follow(&desired.containers, desired.overrides, Instant::now());
    }
    take_leaders_events(agent).await;
}

/// The leader's events this agent has not taken yet, for its event log and dashboard.
async fn take_leaders_events(agent: &Agent) {
    if let Some(events) = agent.store().take_new_events(FOLLOWED_EVENTS).await {
        for event in events {
            agent.broadcast(event);
        }
    }
}

/// The elector changed this agent's role. Writes are fenced with the new epoch (or refused
/// when following); a new leader takes the world over from the registry and acts.
async fn role_changed(agent: &Agent, role: Role) {
    agent.store().set_fence(agent.shared().elector.fence());
    match role {
        Role::Leader { epoch, .. } => {
            tracing::info!(agent = agent.id(), epoch, "leading");
            // The last events of the previous leader (a step-down, say) before its own.
            take_leaders_events(agent).await;
            reconcile::reconcile(agent).await;
            let desired = agent
                .store()
                .read_shared()
                .await
                .unwrap_or_else(|| DesiredState {
                    containers: agent.store().containers(),
                    overrides: agent.store().overrides(),
                });
            agent.store().mirror(&desired);
            let message = format!(
                "{} leads with epoch {epoch}; {} container(s) taken over",
                agent.id(),
                desired.containers.len()
            );
            let effects = agent.world().take_over(
                &desired.containers,
                desired.overrides,
                agent.config().start_count(),
                message,
                Instant::now(),
            );
            execute(agent, effects);
        }
        Role::Follower { leader } => {
            agent.world().set_leading(false);
            let leader = leader.map(|leader| leader.id);
            tracing::info!(agent = agent.id(), ?leader, "following");
        }
    }
}

/// One decision and its effects, under one lock; its time goes to `agent_tick_seconds`.
fn step(agent: &Agent) {
    let now = Instant::now();
    let effects = {
        let mut world = agent.world();
        if !world.leads() {
            return; // leadership just came: the takeover runs first
        }
        // The bounds the decision uses, the decision and the changes it makes cannot
        // interleave with `set_bounds` or `request_replicas`.
        let scaling = agent.scaling_with(world.overrides());
        let decision = world.decide(now, &scaling);
        world.apply(&decision, now)
    };
    execute(agent, effects);
    agent.shared().metrics.observe_tick(now.elapsed());
}

/// STOP_WORKERS_ON_EXIT: every member and standby stopped and removed.
async fn stop_all(agent: &Agent) {
    let runtime = agent.shared().runtime.clone();
    let (standbys, members) = {
        let mut world = agent.world();
        (world.take_standbys(), world.member_ids())
    };
    for standby in &standbys {
        let _ = runtime.resume(&standby.worker.id).await;
    }
    let ids: Vec<String> = members
        .into_iter()
        .chain(standbys.into_iter().map(|standby| standby.worker.id))
        .collect();
    let grace = agent.config().stop_grace;
    let stops = ids.iter().map(|id| runtime.stop(id, grace));
    futures_util::future::join_all(stops).await;
    for id in &ids {
        agent.store().remove_container(id);
    }
}
