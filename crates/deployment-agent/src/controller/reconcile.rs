//! The engine listed against the world: what the event stream missed is caught here.

use std::time::Instant;

use crate::{agent::Agent, state::Listing, state::worker_prefix};

use super::execute;

/// Lists the engine: adopts labelled containers the agent does not know, forgets members
/// that are gone, removes exited leftovers and stale registry entries.
pub(super) async fn reconcile(agent: &Agent) {
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
    let registry = agent.store().containers();
    let listing = Listing { instances, taken };
    let effects = agent.world().reconcile(listing, &registry, Instant::now());
    execute(agent, effects);
}
