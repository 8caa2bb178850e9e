//! The executor: performs what a transition of the world asked for (its `Effects`), in one
//! place and one order: observers, store writes, events, engine calls, then one publish and
//! one wake. Engine calls run in their own tasks; when one ends, its outcome is again a
//! transition of the world, executed here.
//!
//! Leadership is one gate, here: only an agent that acts under an epoch (it leads and renewed
//! its lease in time) writes the desired state, records events and calls the engine; each
//! engine call carries that epoch and is made only if the agent still acts under it when the
//! call is due. A follower runs its observers and keeps its world, nothing else.

use std::time::{Duration, Instant};

use crate::{
    agent::Agent,
    runtime::{Instance, LaunchSpec, RuntimeError},
    state::{Action, Effects, Launched, Slot},
    store::EventKind,
};

use super::{observe, warm};

/// A launch whose name turns out to be taken on the engine (409) retries with the next free
/// name this many times.
const NAME_RETRIES: usize = 8;

/// Performs `effects`. Never call it while holding the world's lock.
pub(crate) fn execute(agent: &Agent, effects: Effects) {
    let Effects {
        actions,
        persist,
        forget,
        overrides,
        events,
        metrics,
        observe,
        abort,
        publish,
        wake,
    } = effects;
    for observer in abort {
        observer.abort();
    }
    for id in &observe {
        observe::start(agent, id);
    }
    let Some(epoch) = agent.acting_epoch() else {
        if !actions.is_empty() {
            tracing::debug!(
                actions = actions.len(),
                "following: the leader acts, not this agent"
            );
        }
        if publish {
            agent.publish();
        }
        return;
    };
    let store = agent.store();
    for record in persist {
        store.upsert_container(record);
    }
    for id in &forget {
        store.remove_container(id);
    }
    if let Some((version, overrides)) = overrides {
        agent.write_overrides(version, overrides);
    }
    for (id, point) in metrics {
        store.record_metric(&id, point);
    }
    for event in events {
        agent.record(event);
    }
    for action in actions {
        perform(agent, action, epoch);
    }
    if publish {
        agent.publish();
    }
    if wake {
        agent.wake();
    }
}

/// True when `agent` still acts under `epoch`; else says which call it does not make.
pub(super) fn may_act(agent: &Agent, epoch: u64, call: &str, target: &str) -> bool {
    let acting = agent.acts_under(epoch);
    if !acting {
        tracing::warn!(epoch, %call, %target, "no longer the leader under this epoch: not calling the engine");
    }
    acting
}

fn perform(agent: &Agent, action: Action, epoch: u64) {
    let agent = agent.clone();
    match action {
        Action::Launch(spec) => {
            tokio::spawn(launch(agent, spec, epoch));
        }
        Action::Stop { id, done } => {
            tokio::spawn(stop(agent, id, done, epoch));
        }
        Action::Remove { id, grace, thaw } => remove(&agent, id, grace, thaw, epoch),
        Action::CrashReport {
            id,
            crash,
            member,
            wait,
            crashes,
        } => {
            tokio::spawn(crash_report(agent, id, crash, member, wait, crashes, epoch));
        }
        Action::Prepare(spec) => {
            tokio::spawn(warm::prepare(agent, spec, epoch));
        }
    }
}

/// Launches a worker: thaws a warm standby if there is one, else creates one.
async fn launch(agent: Agent, spec: LaunchSpec, epoch: u64) {
    if !may_act(&agent, epoch, "launch", &spec.name) {
        return; // its reservation goes with the next sync as a follower
    }
    let started = Instant::now();
    let standby = agent.world().take_standby(&spec.name);
    let runtime = agent.shared().runtime.clone();
    let (named, thawed) = match standby {
        Some(instance) => match runtime.resume(&instance.worker.id).await {
            Ok(()) => {
                let named = Named {
                    name: instance.worker.name.clone(),
                    result: Ok(Instance {
                        paused: false,
                        ..instance
                    }),
                    taken: Vec::new(),
                };
                (named, true)
            }
            Err(err) => {
                tracing::warn!(cause = %err, container = %instance.worker.id, "cannot thaw a warm standby; creating a worker instead");
                agent
                    .world()
                    .rename(Slot::Launching, &instance.worker.name, &spec.name);
                remove(
                    &agent,
                    instance.worker.id,
                    Duration::from_secs(1),
                    true,
                    epoch,
                );
                (
                    launch_named(&agent, Slot::Launching, spec, epoch).await,
                    false,
                )
            }
        },
        None => (
            launch_named(&agent, Slot::Launching, spec, epoch).await,
            false,
        ),
    };
    let Named {
        result,
        name,
        taken,
    } = named;
    if let Err(err) = &result {
        tracing::error!(cause = %err, worker = %name, "could not start a worker");
    }
    let launched = Launched {
        name,
        result: result.map_err(|err| err.to_string()),
        thawed,
        started,
        taken,
    };
    let effects = agent.world().launched(launched, Instant::now());
    execute(&agent, effects);
}

/// What [`launch_named`] did.
pub(super) struct Named {
    pub result: Result<Instance, RuntimeError>,
    /// The name last tried (the instance's on success).
    pub name: String,
    /// Names found taken on the way (409 on create).
    pub taken: Vec<String>,
}

/// Launches `spec`. When the engine already holds a container of that name (one the last
/// listing did not show), the name is recorded as taken and the launch retried with the next
/// free one, its reservation renamed.
pub(super) async fn launch_named(
    agent: &Agent,
    slot: Slot,
    mut spec: LaunchSpec,
    epoch: u64,
) -> Named {
    let runtime = agent.shared().runtime.clone();
    let mut taken_names = Vec::new();
    loop {
        if !may_act(agent, epoch, "create", &spec.name) {
            return Named {
                result: Err(RuntimeError::Other(format!(
                    "not created: this agent no longer leads under epoch {epoch}"
                ))),
                name: spec.name,
                taken: taken_names,
            };
        }
        spec.epoch = epoch;
        match runtime.launch(&spec).await {
            Err(RuntimeError::NameTaken(taken)) if taken_names.len() < NAME_RETRIES => {
                let next = agent.world().name_taken(slot, &spec.name, &taken);
                tracing::warn!(taken = %taken, next = %next, "a container of that name exists; launching under the next free name");
                taken_names.push(taken);
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

/// Stops and removes a member already marked `Stopping`; `done` is the event's message.
async fn stop(agent: Agent, id: String, done: &'static str, epoch: u64) {
    if !may_act(&agent, epoch, "stop", &id) {
        return;
    }
    let grace = agent.config().stop_grace;
    if let Err(err) = agent.shared().runtime.stop(&id, grace).await {
        tracing::warn!(cause = %err, container = %id, "stop failed; reconcile will retry");
    }
    let effects = agent.world().stopped(&id, done, Instant::now());
    execute(&agent, effects);
}

/// Removes a container that is no member (thawing it first when `thaw`); reconcile retries
/// what fails.
pub(super) fn remove(agent: &Agent, id: String, grace: Duration, thaw: bool, epoch: u64) {
    let runtime = agent.shared().runtime.clone();
    let agent = agent.clone();
    tokio::spawn(async move {
        if !may_act(&agent, epoch, "remove", &id) {
            return;
        }
        if thaw {
            let _ = runtime.resume(&id).await;
        }
        if let Err(err) = runtime.stop(&id, grace).await {
            tracing::warn!(cause = %err, container = %id, "cannot remove a worker that left; reconcile will retry");
        }
    });
}

/// Reports a crash: the exit code and last log lines go into a `crash_loop` event, then the
/// container is removed; the launch the back-off held runs once `wait` has passed.
async fn crash_report(
    agent: Agent,
    id: String,
    mut crash: crate::state::Crash,
    member: bool,
    wait: Duration,
    crashes: u32,
    epoch: u64,
) {
    let runtime = agent.shared().runtime.clone();
    if crash.code.is_none() {
        // Exited before its exit was reported: the engine still knows the code.
        if let Some(code) = runtime.exit_code(&id).await {
            crash.code = Some(code);
            crash.cause = format!("{} with code {code}", crash.cause);
        }
    }
    crash.logs = runtime.logs(&id).await;
    agent.world().crash_details(&crash);
    let code = crash
        .code
        .map_or_else(|| "none".to_owned(), |code| code.to_string());
    let logs = if crash.logs.is_empty() {
        "(no log lines)".to_owned()
    } else {
        crash.logs.join("\n")
    };
    agent.event(
        EventKind::CrashLoop,
        Some(&id),
        format!(
            "{} {} (exit code {code}); crash {crashes} in a row: next launch in {} ms; last log lines:\n{logs}",
            crash.name,
            crash.cause,
            wait.as_millis()
        ),
    );
    if member {
        tokio::spawn(stop(
            agent.clone(),
            id,
            "stopped: it crashed during start",
            epoch,
        ));
    } else if !may_act(&agent, epoch, "remove", &id) {
    } else if let Err(err) = runtime.stop(&id, Duration::from_secs(1)).await {
        tracing::warn!(cause = %err, container = %id, "cannot remove a crashed worker; reconcile will retry");
    }
    agent.publish();
    // The launch the back-off held.
    tokio::time::sleep(wait).await;
    agent.wake();
}
