//! The warm pool (WARM_POOL): standbys created ahead, healthy, then paused, so a scale-out
//! thaws one in milliseconds instead of creating a container.

use std::time::{Duration, Instant};

use crate::{
    agent::Agent,
    probe::ProbeSpec,
    runtime::{Instance, LaunchSpec},
    state::Slot,
};

use super::{
    act::{Named, launch_named, may_act, remove},
    observe::{STARTING_PROBE, check},
};

/// Creates a standby, waits until it answers its probe, then pauses it; the world learns the
/// outcome under the name the standby got.
pub(super) async fn prepare(agent: Agent, spec: LaunchSpec, epoch: u64) {
    let Named { result, name, .. } = launch_named(&agent, Slot::Preparing, spec, epoch).await;
    let outcome = match result {
        Ok(instance) => ready_and_pause(&agent, instance, epoch).await,
        Err(err) => Err(err.to_string()),
    };
    agent.world().standby_prepared(&name, outcome);
}

async fn ready_and_pause(
    agent: &Agent,
    instance: Instance,
    epoch: u64,
) -> Result<Instance, String> {
    let runtime = agent.shared().runtime.clone();
    let spec = ProbeSpec::from_config(agent.config());
    let timeout = agent.config().startup_timeout;
    let deadline = Instant::now() + timeout;
    while let Err(failure) =
        check(agent, &spec, &instance.worker.id, &instance.worker.address).await
    {
        if Instant::now() > deadline {
            remove(
                agent,
                instance.worker.id,
                Duration::from_secs(1),
                true,
                epoch,
            );
            return Err(format!("not ready within {timeout:?}: {}", failure.message));
        }
        tokio::time::sleep(STARTING_PROBE).await;
    }
    if !may_act(agent, epoch, "pause", &instance.worker.name) {
        return Err("not paused: this agent no longer leads".into());
    }
    if let Err(err) = runtime.pause(&instance.worker.id).await {
        remove(
            agent,
            instance.worker.id,
            Duration::from_secs(1),
            true,
            epoch,
        );
        return Err(format!("cannot pause it: {err}"));
    }
    Ok(Instance {
        paused: true,
        ..instance
    })
}
