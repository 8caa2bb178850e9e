//! The control loop: observe -> score -> decide -> act -> publish.
//!
//! Observation runs in per-container tasks (one Docker stats stream each, /health and /stats
//! probes) plus one task on the engine's event stream; they update the world and publish at
//! once. The loop itself wakes every SCALE_CHECK_PERIOD, or sooner when something asks
//! (demand from a balancer, a death, an API call), runs the pure `decide`, and acts.
//!
//! A container is stopped only once it is out of the balancers' candidate set: a SUNDOWN one
//! when the decision says it is drained (nothing in flight) or past DRAIN_TIMEOUT; one that
//! never was routable (not healthy within STARTUP_TIMEOUT, or its launch cancelled by a
//! scale-down); an unhealthy one (published INIT since its UNHEALTHY_THRESHOLD-th failed
//! probe) after UNHEALTHY_TIMEOUT, whatever is stalled on it; and every one on exit with
//! STOP_WORKERS_ON_EXIT.

use std::time::{Duration, Instant};

use common::CancellationToken;
use futures_util::StreamExt;

use crate::{
    agent::Agent,
    config::ProbeKind,
    decide::{self, Observation},
    probe::{LoadProbe, ProbeSpec, WorkerLoad},
    runtime::{EngineHealth, Instance, LaunchSpec, RuntimeError, RuntimeEvent, now_ms},
    score::{self, Availability},
    state::{
        Crash, HealthPolicy, LAUNCHING_PREFIX, Launch, Member, Phase, ProbeVerdict, worker_prefix,
    },
    store::{EventKind, MetricPoint},
};

/// How often the engine is listed to catch anything the event stream missed.
const RECONCILE_PERIOD: Duration = Duration::from_secs(10);
/// A SUNDOWN container keeps at least this long, so every balancer has seen the push
/// before it is stopped.
const SUNDOWN_SETTLE: Duration = Duration::from_millis(1500);
/// Probe period while a container is starting (fast, for quick cold starts).
const STARTING_PROBE: Duration = Duration::from_millis(50);
/// After a failed launch, wait this long (doubling per failure, capped) before the next.
const LAUNCH_BACKOFF_BASE: Duration = Duration::from_millis(500);
const LAUNCH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A launch whose name turns out to be taken on the engine (409) retries with the next free
/// name this many times.
const NAME_RETRIES: usize = 8;

/// Runs until `shutdown` is cancelled.
pub async fn run(agent: Agent, shutdown: CancellationToken) {
    start(&agent).await;
    let events = tokio::spawn(watch_engine(agent.clone()));
    let period = agent.config().scale_check_period;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconcile_tick = tokio::time::interval(RECONCILE_PERIOD);
    reconcile_tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => step(&agent),
            () = agent.shared().wake.notified() => step(&agent),
            _ = reconcile_tick.tick() => reconcile(&agent).await,
        }
    }
    events.abort();
    stop_observing(&agent);
    if agent.config().stop_workers_on_exit {
        let standbys: Vec<String> = agent
            .world()
            .standby
            .drain(..)
            .map(|standby| standby.id)
            .collect();
        for id in &standbys {
            let _ = agent.shared().runtime.resume(id).await;
        }
        let ids: Vec<String> = agent
            .world()
            .members
            .keys()
            .cloned()
            .chain(standbys)
            .collect();
        let grace = agent.config().stop_grace;
        let stops = ids.iter().map(|id| agent.shared().runtime.stop(id, grace));
        futures_util::future::join_all(stops).await;
        for id in &ids {
            agent.store().remove_container(id);
        }
    }
    agent.store().flush(Duration::from_secs(2)).await;
    tracing::info!("control loop stopped");
}

/// Restores persisted state, adopts what runs, and brings the pool to its start size.
async fn start(agent: &Agent) {
    let persisted = agent.store().load().await;
    {
        let mut world = agent.world();
        world.overrides = persisted.overrides.clone();
    }
    let sundown: Vec<String> = persisted
        .containers
        .iter()
        .filter(|record| record.category == common::queue::Category::Sundown)
        .map(|record| record.id.clone())
        .collect();
    reconcile(agent).await;
    {
        let mut world = agent.world();
        for id in &sundown {
            if let Some(member) = world.members.get_mut(id) {
                member.phase = Phase::Sundown {
                    since: Instant::now(),
                };
                member.sundown_since_ms = Some(now_ms());
            }
        }
        let start = persisted
            .overrides
            .default_containers
            .unwrap_or_else(|| agent.config().start_count());
        let active = world
            .members
            .values()
            .filter(|m| !matches!(m.phase, Phase::Sundown { .. }))
            .count();
        world.requested = Some(start.max(active));
    }
    agent.event(
        EventKind::Started,
        None,
        format!(
            "agent started on the {} runtime; {} container(s) adopted",
            agent.runtime_kind(),
            agent.world().members.len()
        ),
    );
    agent.publish();
    agent.wake();
}

/// Lists the engine: adopts labelled containers the agent does not know, forgets members
/// that are gone, removes exited leftovers and stale registry entries.
async fn reconcile(agent: &Agent) {
    let runtime = &agent.shared().runtime;
    let instances = match runtime.list().await {
        Ok(instances) => instances,
        Err(err) => {
            tracing::warn!(cause = %err, "cannot list workers; keeping the current view");
            return;
        }
    };
    let taken = match runtime.names(&worker_prefix(&agent.config().app)).await {
        Ok(names) => Some(names),
        Err(err) => {
            tracing::warn!(cause = %err, "cannot list container names; keeping the known ones");
            None
        }
    };
    let grace = agent.config().stop_grace;
    let mut adopted = Vec::new();
    let mut vanished = Vec::new();
    {
        let mut world = agent.world();
        if let Some(taken) = taken {
            world.taken_names = taken.into_iter().collect();
        }
        for instance in &instances {
            if !instance.running || world.members.contains_key(&instance.id) {
                continue;
            }
            if world
                .launching
                .iter()
                .map(|launch| &launch.spec)
                .chain(&world.preparing)
                .any(|spec| spec.name == instance.name)
            {
                continue; // its launch is still returning
            }
            if instance.paused {
                if !world.standby.iter().any(|s| s.id == instance.id) {
                    world.standby.push(instance.clone()); // a warm standby from before
                }
                continue;
            }
            // Thawed by hand, or a standby whose thaw was cut short: it serves now.
            world.standby.retain(|s| s.id != instance.id);
            adopted.push(instance.id.clone());
            let member = new_member(agent, instance.clone());
            world.members.insert(instance.id.clone(), member);
        }
        let running: Vec<&str> = instances
            .iter()
            .filter(|i| i.running)
            .map(|i| i.id.as_str())
            .collect();
        for (id, member) in &world.members {
            if member.phase != Phase::Stopping && !running.contains(&id.as_str()) {
                vanished.push(id.clone());
            }
        }
        world
            .standby
            .retain(|standby| running.contains(&standby.id.as_str()));
    }
    for instance in instances.iter().filter(|i| !i.running) {
        let runtime = agent.shared().runtime.clone();
        let id = instance.id.clone();
        tokio::spawn(async move {
            if let Err(err) = runtime.stop(&id, grace).await {
                tracing::warn!(cause = %err, container = %id, "cannot remove an exited worker");
            }
        });
    }
    for id in &adopted {
        observe(agent, id);
        agent.persist_member(id);
        agent.event(
            EventKind::Adopted,
            Some(id),
            "adopted a running container".into(),
        );
    }
    for id in &vanished {
        lost(agent, id, "gone from the engine", None);
    }
    let known: Vec<String> = instances
        .iter()
        .filter(|i| i.running)
        .map(|i| i.id.clone())
        .collect();
    for record in agent.store().containers() {
        if !known.contains(&record.id)
            && !agent
                .world()
                .launching
                .iter()
                .any(|launch| launch.spec.name == record.name)
        {
            agent.store().remove_container(&record.id);
        }
    }
    if !adopted.is_empty() || !vanished.is_empty() {
        agent.publish();
        agent.wake();
    }
    refill(agent);
}

/// Follows the engine's events: a death the agent did not cause leaves the queue at once and
/// is replaced.
async fn watch_engine(agent: Agent) {
    let mut events = agent.shared().runtime.events();
    while let Some(RuntimeEvent::Exited { id, reason, code }) = events.next().await {
        let known = agent.world().members.get(&id).map(|member| member.phase);
        let standby = {
            let mut world = agent.world();
            let before = world.standby.len();
            world.standby.retain(|standby| standby.id != id);
            world.standby.len() != before
        };
        if standby {
            tracing::warn!(container = %id, %reason, "a warm standby left; preparing another");
            discard(&agent, id);
            refill(&agent);
            continue;
        }
        match known {
            Some(Phase::Stopping) => {}
            // Perhaps a worker whose launch has not returned yet: its launch looks here.
            None => agent.world().early_exit(id, code),
            Some(_) => {
                if !lost(&agent, &id, &reason, code) {
                    let runtime = agent.shared().runtime.clone();
                    tokio::spawn(async move {
                        let _ = runtime.stop(&id, Duration::from_secs(1)).await;
                    });
                }
            }
        }
    }
}

/// A member died or vanished: out of the queue now, and replaced to keep the count. One that
/// was still starting crashed: the crash-loop back-off holds its replacement, and its removal
/// is left to the crash report (true), which reads its logs first.
fn lost(agent: &Agent, id: &str, reason: &str, code: Option<i64>) -> bool {
    let (replace, crashed) = {
        let mut world = agent.world();
        let Some(member) = world.members.remove(id) else {
            return false;
        };
        for observer in &member.observers {
            observer.abort();
        }
        // Its container may linger (exited) until it is removed: keep its name out of use.
        world.taken_names.insert(member.instance.name.clone());
        let was_serving = member.is_active();
        let active = world.active_count();
        if was_serving {
            let target = world.requested.unwrap_or(0).max(active + 1);
            world.requested = Some(target);
        }
        let crashed = matches!(member.phase, Phase::Starting { .. }).then(|| Crash {
            name: member.instance.name.clone(),
            code,
            cause: match code {
                Some(code) => format!("exited with code {code} during start"),
                None => format!("left during start ({reason})"),
            },
            logs: Vec::new(),
        });
        (was_serving, crashed)
    };
    agent.store().remove_container(id);
    agent.event(
        EventKind::Died,
        Some(id),
        format!("container left: {reason}"),
    );
    let is_crash = crashed.is_some();
    if let Some(crash) = crashed {
        crash_loop(agent, id.to_owned(), crash, false);
    }
    agent.publish();
    if replace {
        agent.wake();
    }
    is_crash
}

/// Records a crash: the back-off before the next launch grows; the container's last log
/// lines are read, a `crash_loop` event tells the exit code and the lines, then the container
/// is removed (`member`: it is still a member, marked Stopping, and leaves the world then).
/// The launch held by the back-off runs when it ends.
fn crash_loop(agent: &Agent, id: String, crash: Crash, member: bool) {
    let config = agent.config();
    let (wait, crashes) = {
        let mut world = agent.world();
        let wait = world.crash.crashed(
            crash.clone(),
            config.crash_backoff_initial,
            config.crash_backoff_max,
            Instant::now(),
        );
        (wait, world.crash.crashes)
    };
    let agent = agent.clone();
    tokio::spawn(async move {
        let runtime = agent.shared().runtime.clone();
        let mut crash = crash;
        if crash.code.is_none() {
            // Exited before its exit was reported: the engine still knows the code.
            if let Some(code) = runtime.exit_code(&id).await {
                crash.code = Some(code);
                crash.cause = format!("{} with code {code}", crash.cause);
            }
        }
        let logs = runtime.logs(&id).await;
        {
            let mut world = agent.world();
            if let Some(last) = world
                .crash
                .last
                .as_mut()
                .filter(|last| last.name == crash.name)
            {
                last.logs.clone_from(&logs);
                last.code = crash.code;
                last.cause.clone_from(&crash.cause);
            }
        }
        let code = crash
            .code
            .map_or_else(|| "none".to_owned(), |code| code.to_string());
        let logs_text = if logs.is_empty() {
            "(no log lines)".to_owned()
        } else {
            logs.join("\n")
        };
        agent.event(
            EventKind::CrashLoop,
            Some(&id),
            format!(
                "{} {} (exit code {code}); crash {crashes} in a row: next launch in {} ms; last log lines:\n{logs_text}",
                crash.name,
                crash.cause,
                wait.as_millis()
            ),
        );
        if member {
            spawn_stop(&agent, id, "stopped: it crashed during start");
        } else if let Err(err) = runtime.stop(&id, Duration::from_secs(1)).await {
            tracing::warn!(cause = %err, container = %id, "cannot remove a crashed worker; reconcile will retry");
        }
        agent.publish();
        // The launch the back-off held.
        tokio::time::sleep(wait).await;
        agent.wake();
    });
}

/// One decision and its actions.
fn step(agent: &Agent) {
    let now = Instant::now();
    let config = agent.config();
    // One critical section: the bounds the decision uses, the decision, the phases it changes
    // and the overrides it writes cannot interleave with `set_bounds` or `request_replicas`.
    let (decision, launches, sundowns, cancelled, stops) = {
        let mut world = agent.world();
        let scaling = agent.scaling_with(&world.overrides);
        let mut views = world.views(now);
        // Give balancers time to see a SUNDOWN push before its container may be stopped.
        for view in &mut views {
            if let Some(since) = view.sundown_since {
                if now.duration_since(since) < SUNDOWN_SETTLE && view.in_flight == 0 {
                    view.in_flight = 1;
                }
            }
        }
        let requested = world.requested.take();
        let observation = Observation {
            now,
            containers: &views,
            queued_demand: world.queued_demand(now),
            requested_replicas: requested,
        };
        let mut decision = decide::decide(&observation, &scaling, &world.scaler);
        world.scaler = decision.state.clone();
        let blocked = world.launches_blocked(now);
        if blocked && decision.create > 0 {
            world.requested = requested; // try again once the backoff has passed
            decision.create = 0;
        }
        let mut sundowns = Vec::new();
        let mut cancelled = Vec::new();
        for id in &decision.sundown {
            if let Some(name) = id.strip_prefix(LAUNCHING_PREFIX) {
                if world.cancel_launch(name) {
                    cancelled.push(name.to_owned());
                }
            } else if let Some(member) = world.members.get_mut(id) {
                if member.is_active() {
                    member.phase = Phase::Sundown { since: now };
                    member.sundown_since_ms = Some(now_ms());
                    sundowns.push(id.clone());
                }
            }
        }
        let mut stops = Vec::new();
        for id in &decision.stop {
            if let Some(member) = world.members.get_mut(id) {
                if matches!(member.phase, Phase::Sundown { .. }) {
                    member.phase = Phase::Stopping;
                    stops.push(id.clone());
                }
            }
        }
        let mut launches = Vec::new();
        for _ in 0..decision.create {
            let core_id = match &config.worker_cpuset {
                Some(pool) => match world.free_core(&pool.0) {
                    Some(core) => Some(core),
                    None => {
                        tracing::warn!(
                            "every core of WORKER_CPUSET is taken; not starting more workers"
                        );
                        break;
                    }
                },
                None => None,
            };
            let spec = LaunchSpec {
                name: world.next_name(&config.app),
                core_id,
            };
            world.launching.push(Launch {
                spec: spec.clone(),
                cancelled: false,
            });
            launches.push(spec);
        }
        if !launches.is_empty() || !sundowns.is_empty() || !cancelled.is_empty() {
            world.overrides.default_containers = Some(world.active_count());
            // Sent under the world lock, so the store gets the overrides in the order they
            // were changed.
            agent.store().set_overrides(world.overrides.clone());
        }
        (decision, launches, sundowns, cancelled, stops)
    };

    if !launches.is_empty() {
        let kind = match decision.reason {
            decide::Reason::BelowMinimum { .. } | decide::Reason::Requested { .. } => {
                EventKind::Created
            }
            _ => EventKind::ScaleUp,
        };
        agent.event(
            kind,
            None,
            format!("{} (+{})", decision.reason, launches.len()),
        );
    }
    if !sundowns.is_empty() || !cancelled.is_empty() {
        agent.event(
            EventKind::ScaleDown,
            None,
            format!(
                "{} (-{})",
                decision.reason,
                sundowns.len() + cancelled.len()
            ),
        );
        for id in &sundowns {
            agent.persist_member(id);
            agent.event(
                EventKind::Sundown,
                Some(id),
                "draining: no new requests".into(),
            );
        }
        for name in &cancelled {
            agent.event(
                EventKind::Sundown,
                None,
                format!("{name}: launch cancelled; it is stopped once its launch returns"),
            );
        }
    }
    for id in stops {
        spawn_stop(agent, id, "drained and stopped");
    }
    for spec in launches {
        spawn_launch(agent, spec);
    }
    agent.publish();
}

fn spawn_launch(agent: &Agent, spec: LaunchSpec) {
    let agent = agent.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        // A warm standby if there is one. Its launch entry takes the standby's name, so that
        // reconcile does not adopt it while it thaws.
        let standby = {
            let mut world = agent.world();
            let standby = world.standby.pop();
            if let Some(standby) = &standby {
                rename_launch(&mut world.launching, &spec.name, &standby.name);
            }
            standby
        };
        let runtime = agent.shared().runtime.clone();
        let (
            Named {
                result,
                name,
                taken,
            },
            thawed,
        ) = match standby {
            Some(instance) => match runtime.resume(&instance.id).await {
                Ok(()) => {
                    let name = instance.name.clone();
                    let thawed = Instance {
                        paused: false,
                        ..instance
                    };
                    let named = Named {
                        result: Ok(thawed),
                        name,
                        taken: Vec::new(),
                    };
                    (named, true)
                }
                Err(err) => {
                    tracing::warn!(cause = %err, container = %instance.id, "cannot thaw a warm standby; creating a worker instead");
                    rename_launch(&mut agent.world().launching, &instance.name, &spec.name);
                    discard(&agent, instance.id);
                    (
                        launch_named(&agent, Slot::Launching, spec.clone()).await,
                        false,
                    )
                }
            },
            None => (
                launch_named(&agent, Slot::Launching, spec.clone()).await,
                false,
            ),
        };
        let (cancelled, exited) = {
            let mut world = agent.world();
            let cancelled = world
                .launching
                .iter()
                .any(|launch| launch.spec.name == name && launch.cancelled);
            world.launching.retain(|launch| launch.spec.name != name);
            let mut exited_now = None;
            match &result {
                Ok(instance) => {
                    world.launch_failures = 0;
                    world.launch_blocked_until = None;
                    world.launch_error = None;
                    let mut member = new_member(&agent, instance.clone());
                    // Cold start is measured from the create (or thaw) call to the first
                    // healthy answer.
                    member.created = started;
                    member.thawed = thawed;
                    // Exited already: before the engine was asked about it, or its exit
                    // was reported before it was a member.
                    let exited = if instance.running {
                        world.take_early_exit(&instance.id)
                    } else {
                        Some(None)
                    };
                    if cancelled || exited.is_some() {
                        // Never published: it goes straight to its stop.
                        member.phase = Phase::Stopping;
                    }
                    world.members.insert(instance.id.clone(), member);
                    if !cancelled {
                        exited_now = exited;
                    }
                }
                Err(err) => {
                    world.launch_error = Some(err.to_string());
                    world.launch_failures = world.launch_failures.saturating_add(1);
                    let delay =
                        LAUNCH_BACKOFF_BASE * 2u32.saturating_pow(world.launch_failures.min(6));
                    world.launch_blocked_until =
                        Some(Instant::now() + delay.min(LAUNCH_BACKOFF_MAX));
                }
            }
            (cancelled, exited_now)
        };
        match result {
            Ok(instance) if cancelled => {
                agent.event(
                    EventKind::Created,
                    Some(&instance.id),
                    format!(
                        "{} {}, whose launch a scale-down cancelled: stopping it unused",
                        if thawed { "thawed" } else { "created" },
                        instance.name
                    ),
                );
                spawn_stop(
                    &agent,
                    instance.id,
                    "stopped before it served: its launch was cancelled",
                );
            }
            Ok(instance) if exited.is_some() => {
                // It exited at once: a crash.
                let code = exited.flatten();
                let crash = Crash {
                    name: instance.name.clone(),
                    code,
                    cause: match code {
                        Some(code) => format!("exited at once with code {code}"),
                        None => "exited at once".into(),
                    },
                    logs: Vec::new(),
                };
                agent.event(
                    EventKind::Created,
                    Some(&instance.id),
                    format!("created {}, which exited at once", instance.name),
                );
                crash_loop(&agent, instance.id, crash, true);
            }
            Ok(instance) => {
                observe(&agent, &instance.id);
                agent.persist_member(&instance.id);
                agent.event(
                    EventKind::Created,
                    Some(&instance.id),
                    format!(
                        "{} {} at {} in {} ms{}",
                        if thawed {
                            "thawed warm standby"
                        } else {
                            "created"
                        },
                        instance.name,
                        instance.address,
                        started.elapsed().as_millis(),
                        if taken.is_empty() {
                            String::new()
                        } else {
                            format!(" ({} already existed)", taken.join(", "))
                        }
                    ),
                );
            }
            Err(err) => {
                tracing::error!(cause = %err, worker = %name, "could not start a worker");
                agent.event(
                    EventKind::Died,
                    None,
                    format!("could not start {name}: {err}"),
                );
            }
        }
        agent.publish();
        refill(&agent);
    });
}

fn rename_launch(launching: &mut [Launch], from: &str, to: &str) {
    if let Some(entry) = launching.iter_mut().find(|launch| launch.spec.name == from) {
        entry.spec.name = to.to_owned();
    }
}

/// Where a launch's name is reserved while it runs.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// `World::launching`: a worker for the pool.
    Launching,
    /// `World::preparing`: a warm standby.
    Preparing,
}

/// What [`launch_named`] did.
struct Named {
    result: Result<Instance, RuntimeError>,
    /// The name last tried (the instance's on success).
    name: String,
    /// Names found taken on the way (409 on create).
    taken: Vec<String>,
}

/// Launches `spec`. When the engine already holds a container of that name (one the last
/// listing did not show), the name is recorded as taken and the launch retried with the next
/// free one, its reservation renamed.
async fn launch_named(agent: &Agent, slot: Slot, mut spec: LaunchSpec) -> Named {
    let runtime = agent.shared().runtime.clone();
    let mut taken_names = Vec::new();
    loop {
        match runtime.launch(&spec).await {
            Err(RuntimeError::NameTaken(taken)) if taken_names.len() < NAME_RETRIES => {
                taken_names.push(taken.clone());
                let next = {
                    let mut world = agent.world();
                    world.taken_names.insert(taken.clone());
                    let next = world.next_name(&agent.config().app);
                    match slot {
                        Slot::Launching => rename_launch(&mut world.launching, &spec.name, &next),
                        Slot::Preparing => {
                            if let Some(entry) =
                                world.preparing.iter_mut().find(|s| s.name == spec.name)
                            {
                                entry.name.clone_from(&next);
                            }
                        }
                    }
                    next
                };
                tracing::warn!(taken = %taken, next = %next, "a container of that name exists; launching under the next free name");
                spec.name = next;
            }
            result => {
                return Named {
                    result,
                    name: spec.name,
                    taken: taken_names,
                };
            }
        }
    }
}

/// Starts warm standbys until `WARM_POOL` are ready or on their way; real launches first.
fn refill(agent: &Agent) {
    let config = agent.config();
    if config.warm_pool == 0 {
        return;
    }
    let specs = {
        let mut world = agent.world();
        if world.launches_blocked(Instant::now()) || !world.launching.is_empty() {
            return;
        }
        let have = world.standby.len() + world.preparing.len();
        let mut specs = Vec::new();
        for _ in have..config.warm_pool {
            let spec = LaunchSpec {
                name: world.next_name(&config.app),
                core_id: None,
            };
            world.preparing.push(spec.clone());
            specs.push(spec);
        }
        specs
    };
    for spec in specs {
        let agent = agent.clone();
        tokio::spawn(async move {
            let (outcome, name) = prepare(&agent, spec).await;
            let mut world = agent.world();
            world.preparing.retain(|s| s.name != name);
            match outcome {
                Ok(instance) => {
                    tracing::info!(container = %instance.id, name = %instance.name, "warm standby ready (paused)");
                    world.standby.push(instance);
                }
                Err(err) => {
                    tracing::warn!(cause = %err, %name, "could not prepare a warm standby");
                }
            }
        });
    }
}

/// Creates a standby, waits until it answers /health, then pauses it. The outcome and the
/// name the standby got.
async fn prepare(agent: &Agent, spec: LaunchSpec) -> (Result<Instance, String>, String) {
    let Named { result, name, .. } = launch_named(agent, Slot::Preparing, spec).await;
    let outcome = match result {
        Ok(instance) => ready_and_pause(agent, instance).await,
        Err(err) => Err(err.to_string()),
    };
    (outcome, name)
}

async fn ready_and_pause(agent: &Agent, instance: Instance) -> Result<Instance, String> {
    let runtime = agent.shared().runtime.clone();
    let spec = ProbeSpec::from_config(agent.config());
    let timeout = agent.config().startup_timeout;
    let deadline = Instant::now() + timeout;
    while let Err(failure) = check(agent, &spec, &instance.id, &instance.address).await {
        if Instant::now() > deadline {
            discard(agent, instance.id);
            return Err(format!("not ready within {timeout:?}: {}", failure.message));
        }
        tokio::time::sleep(STARTING_PROBE).await;
    }
    if let Err(err) = runtime.pause(&instance.id).await {
        discard(agent, instance.id);
        return Err(format!("cannot pause it: {err}"));
    }
    Ok(Instance {
        paused: true,
        ..instance
    })
}

/// Removes a container the agent does not serve with (a standby), thawing it first.
fn discard(agent: &Agent, id: String) {
    let runtime = agent.shared().runtime.clone();
    tokio::spawn(async move {
        let _ = runtime.resume(&id).await;
        if let Err(err) = runtime.stop(&id, Duration::from_secs(1)).await {
            tracing::warn!(cause = %err, container = %id, "cannot remove a standby; reconcile will retry");
        }
    });
}

/// Stops and removes a member already marked `Stopping`; `done` is the event's message.
fn spawn_stop(agent: &Agent, id: String, done: &'static str) {
    let agent = agent.clone();
    tokio::spawn(async move {
        let grace = agent.config().stop_grace;
        if let Err(err) = agent.shared().runtime.stop(&id, grace).await {
            tracing::warn!(cause = %err, container = %id, "stop failed; reconcile will retry");
        }
        if let Some(member) = agent.world().members.remove(&id) {
            for observer in &member.observers {
                observer.abort();
            }
        }
        agent.store().remove_container(&id);
        agent.event(EventKind::Stopped, Some(&id), done.into());
        agent.publish();
        agent.wake();
    });
}

fn new_member(agent: &Agent, instance: Instance) -> Member {
    let config = agent.config();
    let availability = Availability::new(
        config.history_size,
        config.best_time_window,
        config.ema_alpha,
    );
    Member::new(instance, availability, Instant::now())
}

/// Starts the observers of a member: its stats stream and its probes.
fn observe(agent: &Agent, id: &str) {
    let stats = tokio::spawn(follow_stats(agent.clone(), id.to_owned())).abort_handle();
    let probes = tokio::spawn(probe(agent.clone(), id.to_owned())).abort_handle();
    if let Some(member) = agent.world().members.get_mut(id) {
        member.observers = vec![stats, probes];
    } else {
        stats.abort();
        probes.abort();
    }
}

fn stop_observing(agent: &Agent) {
    for member in agent.world().members.values() {
        for observer in &member.observers {
            observer.abort();
        }
    }
}

async fn follow_stats(agent: Agent, id: String) {
    let mut samples = agent.shared().runtime.stats(&id);
    let saturation = agent.config().network_saturation;
    while let Some(sample) = samples.next().await {
        {
            let shared = agent.shared();
            let mut world = agent.world();
            let Some(member) = world.members.get_mut(&id) else {
                return;
            };
            if let Some(previous) = member.last_stats.take() {
                let cores = member.instance.cpu_limit_cores;
                member.resources = Some(score::resource_scores(
                    &previous, &sample, cores, saturation,
                ));
                member.rescore(&shared.weights, &shared.thresholds);
            }
            member.last_stats = Some(sample);
        }
        agent.publish();
    }
}

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProbeFailure {
    message: String,
    /// The probe cannot pass as configured (WORKER_PROBE=docker, no HEALTHCHECK).
    misconfigured: bool,
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
async fn check(
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

/// Notes a failed probe on a member; the first misconfiguration is an event.
fn probe_failed(agent: &Agent, id: &str, failure: &ProbeFailure) {
    let first = {
        let mut world = agent.world();
        let Some(member) = world.members.get_mut(id) else {
            return;
        };
        let first = member.probe_error.as_deref() != Some(failure.message.as_str());
        member.probe_error = Some(failure.message.clone());
        first
    };
    if first && failure.misconfigured {
        tracing::error!(container = %id, "{}", failure.message);
        agent.event(EventKind::ProbeError, Some(id), failure.message.clone());
    }
}

/// The worker's `/stats`, unless it is known not to have it; a member found without it
/// counts its in-flight from the balancers' reports from then on.
async fn load_of(agent: &Agent, id: &str, address: &str) -> Option<WorkerLoad> {
    let known = agent
        .world()
        .members
        .get(id)
        .and_then(|member| member.worker_stats);
    if known == Some(false) {
        return None;
    }
    let probe = agent.shared().prober.load(address).await;
    let verdict = match probe {
        LoadProbe::Worker(_) => Some(true),
        LoadProbe::NotWorker => Some(false),
        LoadProbe::NoAnswer => None,
    };
    if verdict.is_some() && verdict != known {
        if let Some(member) = agent.world().members.get_mut(id) {
            member.worker_stats = verdict;
        }
        if verdict == Some(false) {
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
    let policy = HealthPolicy {
        threshold: config.unhealthy_threshold,
        timeout: config.unhealthy_timeout,
    };
    loop {
        let Some((address, phase, created)) = agent.world().members.get(&id).map(|member| {
            (
                member.instance.address.clone(),
                member.phase,
                member.created,
            )
        }) else {
            return;
        };
        let outcome = check(&agent, &spec, &id, &address).await;
        let latency = outcome.as_ref().ok().copied();
        let load = match latency {
            Some(_) => load_of(&agent, &id, &address).await,
            None => None,
        };
        if let Err(failure) = &outcome {
            probe_failed(&agent, &id, failure);
        }
        let now = Instant::now();
        match phase {
            Phase::Starting { since } => {
                if latency.is_some() {
                    became_ready(&agent, &id, latency, load, now.duration_since(created));
                    continue;
                }
                if now.duration_since(since) > config.startup_timeout {
                    let failure = outcome.err().map(|f| f.message).unwrap_or_default();
                    agent.event(
                        EventKind::Died,
                        Some(&id),
                        format!(
                            "not ready within STARTUP_TIMEOUT {:?} ({} {failure}); replacing it",
                            config.startup_timeout,
                            spec.describe()
                        ),
                    );
                    let crash = {
                        let mut world = agent.world();
                        let active = world.active_count();
                        match world.members.get_mut(&id) {
                            Some(member) => {
                                member.phase = Phase::Stopping;
                                let crash = Crash {
                                    name: member.instance.name.clone(),
                                    code: None,
                                    cause: format!(
                                        "was not ready within {:?}: {failure}",
                                        config.startup_timeout
                                    ),
                                    logs: Vec::new(),
                                };
                                // Keep the count: its replacement waits for the back-off.
                                world.requested = Some(world.requested.unwrap_or(0).max(active));
                                Some(crash)
                            }
                            None => None,
                        }
                    };
                    if let Some(crash) = crash {
                        crash_loop(&agent, id.clone(), crash, true);
                    }
                    agent.publish();
                    return;
                }
                tokio::time::sleep(STARTING_PROBE).await;
            }
            Phase::Stopping => return,
            Phase::Ready | Phase::Unhealthy { .. } | Phase::Sundown { .. } => {
                let verdict = record_probe(&agent, &id, latency, load, &policy);
                if health_changed(&agent, &id, verdict, &policy) {
                    return; // being replaced
                }
                tokio::time::sleep(config.probe_period).await;
            }
        }
    }
}

/// Acts on a probe's transition: events, the store, the scaler; starts the stop of a member
/// given up. True when the member is being replaced (its probes end).
fn health_changed(agent: &Agent, id: &str, verdict: ProbeVerdict, policy: &HealthPolicy) -> bool {
    match verdict {
        ProbeVerdict::Same => return false,
        ProbeVerdict::Unhealthy { failures } => {
            agent.persist_member(id);
            agent.event(
                EventKind::Unhealthy,
                Some(id),
                format!(
                    "{failures} probes failed in a row: out of the queue until it answers; \
                     replaced after {:?}",
                    policy.timeout
                ),
            );
        }
        ProbeVerdict::Recovered { after } => {
            agent.persist_member(id);
            agent.event(
                EventKind::Recovered,
                Some(id),
                format!(
                    "answered again after {} ms unhealthy: back in the queue",
                    after.as_millis()
                ),
            );
        }
        ProbeVerdict::Replace { after } => {
            agent.event(
                EventKind::Died,
                Some(id),
                format!(
                    "unhealthy for {} ms (UNHEALTHY_TIMEOUT {:?}): replacing it",
                    after.as_millis(),
                    policy.timeout
                ),
            );
            spawn_stop(
                agent,
                id.to_owned(),
                "stopped and removed: it stayed unhealthy",
            );
        }
    }
    agent.wake();
    matches!(verdict, ProbeVerdict::Replace { .. })
}

fn became_ready(
    agent: &Agent,
    id: &str,
    latency: Option<Duration>,
    load: Option<WorkerLoad>,
    after: Duration,
) {
    let thawed = {
        let mut world = agent.world();
        let thawed = match world.members.get_mut(id) {
            Some(member) => {
                if matches!(member.phase, Phase::Starting { .. }) {
                    member.phase = Phase::Ready;
                }
                member.probe_error = None;
                member.thawed
            }
            None => false,
        };
        // A ready container ends any crash loop.
        world.crash.reset();
        thawed
    };
    let policy = HealthPolicy {
        threshold: agent.config().unhealthy_threshold,
        timeout: agent.config().unhealthy_timeout,
    };
    // It answered: no transition but Starting -> Ready can come of it.
    let _ = record_probe(agent, id, latency, load, &policy);
    agent.persist_member(id);
    agent.event(
        EventKind::Ready,
        Some(id),
        format!(
            "healthy {} ms after the {} call",
            after.as_millis(),
            if thawed { "thaw" } else { "create" }
        ),
    );
    agent.wake();
}

/// Records one probe (scores, in-flight, served, health) in one critical section and applies
/// its health transition; a member given up is marked Stopping and a replacement requested.
fn record_probe(
    agent: &Agent,
    id: &str,
    latency: Option<Duration>,
    load: Option<WorkerLoad>,
    policy: &HealthPolicy,
) -> ProbeVerdict {
    let (point, verdict) = {
        let shared = agent.shared();
        let mut world = agent.world();
        let now = Instant::now();
        let Some(member) = world.members.get_mut(id) else {
            return ProbeVerdict::Same;
        };
        member.availability.record(latency);
        if let Some(load) = load {
            member.worker_in_flight = load.in_flight;
            member.served |= load.served;
        }
        let verdict = member.probed(latency.is_some(), now, policy);
        if latency.is_some() {
            member.probe_error = None;
        }
        member.rescore(&shared.weights, &shared.thresholds);
        if let ProbeVerdict::Replace { .. } = verdict {
            // Like a death: keep the count with a new container.
            let target = world.active_count() + 1;
            world.requested = Some(world.requested.unwrap_or(0).max(target));
        }
        let in_flight = world.in_flight(&world.members[id], now);
        let member = &world.members[id];
        let point = MetricPoint {
            at_ms: now_ms(),
            cpu: member.scores.cpu,
            memory: member.scores.memory,
            network: member.scores.network,
            availability: member.scores.availability,
            overall: member.overall,
            in_flight,
        };
        (point, verdict)
    };
    agent.store().record_metric(id, point);
    agent.publish();
    verdict
}
