//! The `Agent` handle: the shared state of one agent (world, runtime, store, published queue)
//! and the operations the servers call. Cheap to clone.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use common::queue::{Category, QueueSnapshot};
use tokio::sync::{Notify, broadcast, watch};

use crate::{
    config::Config,
    decide::ScalingConfig,
    forward::ForwardClient,
    lease::{Elector, LeaderInfo, Role},
    metrics::{CategoryLabel, KindLabel, Metrics},
    probe::Prober,
    publish::{Pacer, Published},
    relay::Freshness,
    runtime::{Runtime, now_ms},
    state::{BalancerReport, Event, MemberStatus, PoolStatus, Settings, World},
    store::{ConfigOverrides, EventKind, ScalingEvent, Store},
};

#[derive(Clone)]
pub struct Agent {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub config: Config,
    pub runtime: Runtime,
    pub store: Store,
    pub prober: Prober,
    pub metrics: Metrics,
    /// Who leads; only the leader acts (see `acting_epoch`).
    pub elector: Elector,
    /// Forwards a follower's mutating calls to the leader.
    forward: ForwardClient,
    world: Mutex<World>,
    /// The version of the overrides last sent to the store (see `write_overrides`).
    overrides_sent: Mutex<u64>,
    queue: watch::Sender<Arc<Published>>,
    /// Paces the publications (PUBLISH_INTERVAL).
    pacer: Pacer,
    /// Every recorded event, for live subscribers (`/ws/events`); a lagging one skips ahead.
    events: broadcast::Sender<ScalingEvent>,
    pub wake: Notify,
    shutdown: common::CancellationToken,
    /// WS_MAX_SUBSCRIBERS places, one per connected WebSocket subscriber.
    subscriber_slots: Arc<tokio::sync::Semaphore>,
    /// Whether a follower's copy of the leader's queue is fresh (see `relay`).
    relayed: Freshness,
}

/// Who leads, as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Leadership {
    pub agent_id: String,
    /// `leader` while this agent leads and may act, else `follower`.
    pub role: &'static str,
    /// The leader's epoch (0 without leader election).
    pub epoch: u64,
    /// Several agents elect a leader (AGENT_REPLICAS > 1).
    pub election: bool,
    pub leader: Option<LeaderInfo>,
    /// The agents seen lately (each writes itself every LEADER_LEASE / 3).
    pub agents: Vec<AgentEntry>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentEntry {
    pub id: String,
    pub http_url: String,
    pub seen_ms: u64,
    pub leader: bool,
}

/// Events buffered per live event subscriber before it lags and skips ahead.
const EVENT_CHANNEL_CAPACITY: usize = 256;

/// Current bounds and target, as `/status` and gRPC show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Bounds {
    pub min_replicas: usize,
    pub max_replicas: usize,
    pub desired_replicas: usize,
}

impl Agent {
    pub fn new(
        config: Config,
        runtime: Runtime,
        store: Store,
        elector: Elector,
        shutdown: common::CancellationToken,
    ) -> Self {
        let (queue, _) = watch::channel(Arc::new(Published::new(QueueSnapshot::new(
            0,
            now_ms(),
            Vec::new(),
        ))));
        let pacer = Pacer::new(config.publish_interval);
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let config_subscribers = config.ws_max_subscribers;
        let relayed = Freshness::new(config.leader_lease);
        let mut world = World::new(Settings::from_config(&config));
        world.set_leading(elector.acting_epoch().is_some());
        Self {
            shared: Arc::new(Shared {
                prober: Prober::new(config.probe_timeout),
                elector,
                forward: crate::forward::client(),
                config,
                runtime,
                store,
                metrics: Metrics::new(),
                world: Mutex::new(world),
                overrides_sent: Mutex::new(0),
                queue,
                pacer,
                events,
                wake: Notify::new(),
                shutdown,
                subscriber_slots: Arc::new(tokio::sync::Semaphore::new(
                    config_subscribers.min(tokio::sync::Semaphore::MAX_PERMITS),
                )),
                relayed,
            }),
        }
    }

    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.shared
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn runtime_kind(&self) -> &'static str {
        self.shared.runtime.kind()
    }

    /// Runs the control loop soon, without waiting for the next tick.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// A subscription to the live queue: the current snapshot at once, then every change
    /// (a slow reader skips to the newest).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.shared.queue.subscribe()
    }

    /// A subscription to the events recorded from now on (see `store().recent_events` for
    /// the past ones). A subscriber that falls behind gets `Lagged` and skips ahead.
    pub fn subscribe_events(&self) -> broadcast::Receiver<ScalingEvent> {
        self.shared.events.subscribe()
    }

    pub fn snapshot(&self) -> Arc<Published> {
        self.shared.queue.borrow().clone()
    }

    /// Ready containers, and why there is none.
    pub fn pool_status(&self) -> PoolStatus {
        self.world().pool_status(Instant::now())
    }

    pub fn statuses(&self) -> Vec<MemberStatus> {
        self.world().statuses(Instant::now())
    }

    /// The scaling settings with the API's overrides applied.
    pub fn scaling(&self) -> ScalingConfig {
        let overrides = self.world().overrides().clone();
        self.scaling_with(&overrides)
    }

    /// The scaling settings with `overrides` applied (for callers holding the world lock).
    pub(crate) fn scaling_with(&self, overrides: &ConfigOverrides) -> ScalingConfig {
        let mut scaling = self.shared.config.scaling();
        if let Some(min) = overrides.min_replicas {
            scaling.min_replicas = min;
        }
        if let Some(max) = overrides.max_replicas {
            // A bound stored before MAX_CONTAINERS_LIMIT existed is held to it too.
            scaling.max_replicas = max.min(self.shared.config.max_containers_limit);
            scaling.min_replicas = scaling.min_replicas.min(scaling.max_replicas);
        }
        scaling
    }

    pub fn bounds(&self) -> Bounds {
        let world = self.world();
        let scaling = self.scaling_with(world.overrides());
        Bounds {
            min_replicas: scaling.min_replicas,
            max_replicas: scaling.max_replicas,
            desired_replicas: world.desired(Instant::now()),
        }
    }

    /// Mean utilisation of the serving containers (0 with none).
    pub fn mean_utilization(&self) -> f64 {
        let statuses = self.statuses();
        let serving: Vec<f64> = statuses
            .iter()
            .filter(|s| !matches!(s.category, Category::Init | Category::Sundown))
            .map(|s| s.utilization)
            .collect();
        if serving.is_empty() {
            0.0
        } else {
            serving.iter().sum::<f64>() / serving.len() as f64
        }
    }

    /// Asks for `replicas` containers now (clamped to the bounds); returns the target. The
    /// next decision, woken at once, applies it; a later request replaces an earlier one not
    /// yet applied.
    pub fn request_replicas(&self, replicas: usize) -> usize {
        let (target, effects) = {
            let mut world = self.world();
            let scaling = self.scaling_with(world.overrides());
            world.request(replicas, &scaling, Instant::now())
        };
        crate::controller::execute(self, effects);
        target
    }

    /// Changes the replica bounds; persisted, so they survive restarts.
    pub fn set_bounds(&self, min: Option<usize>, max: Option<usize>) -> Result<Bounds, String> {
        let current = self.scaling();
        let (min, max) = (
            min.unwrap_or(current.min_replicas),
            max.unwrap_or(current.max_replicas),
        );
        if max == 0 {
            return Err("max_replicas must be at least 1".into());
        }
        if min > max {
            return Err(format!(
                "min_replicas ({min}) is above max_replicas ({max})"
            ));
        }
        if let Some(cores) = &self.shared.config.worker_cpuset {
            if max > cores.0.len() {
                return Err(format!(
                    "max_replicas ({max}) is above the {} cores of WORKER_CPUSET",
                    cores.0.len()
                ));
            }
        }
        let effects = self.world().set_bounds(min, max, Instant::now());
        crate::controller::execute(self, effects);
        Ok(self.bounds())
    }

    /// Puts a container in SUNDOWN; `key` is its id, an id prefix or its name.
    pub fn drain(&self, key: &str) -> Option<String> {
        let (id, effects) = self.world().drain(key, Instant::now())?;
        crate::controller::execute(self, effects);
        Some(id)
    }

    /// A balancer's load report. Queued demand and queued work wake the scaler at once.
    pub fn report_load(&self, balancer_id: &str, report: BalancerReport) {
        let scaling = self.shared.config.scaling();
        let (load, decide_now) = self.world().report(balancer_id, report, &scaling);
        self.shared.metrics.set_balancer_load(&load);
        // Queued requests or more in flight than the containers are meant to carry: decide now
        // rather than at the next period (the cooldowns still hold the decision back).
        if decide_now {
            self.wake();
        }
    }

    /// Records an event now, with the desired replicas as they are.
    pub fn event(&self, kind: EventKind, container: Option<&str>, message: String) {
        let replicas = self.bounds().desired_replicas;
        self.record(Event {
            kind,
            container: container.map(str::to_owned),
            message,
            replicas,
        });
    }

    /// Records a lifecycle or scaling event: log, metrics, store, live subscribers.
    pub(crate) fn record(&self, event: Event) {
        let Event {
            kind,
            container,
            message,
            replicas,
        } = event;
        let Some(epoch) = self.acting_epoch() else {
            // The leader records what happens; a follower only notes it.
            tracing::debug!(kind = ?kind, container, replicas, "following: {message}");
            return;
        };
        tracing::info!(kind = ?kind, container, replicas, epoch, "{message}");
        self.shared
            .metrics
            .events
            .get_or_create(&KindLabel {
                kind: kind_name(kind),
            })
            .inc();
        let event = ScalingEvent {
            at_ms: now_ms(),
            kind,
            container,
            replicas,
            message,
            epoch,
        };
        self.shared.store.record_event(event.clone());
        // An error only means nobody is subscribed.
        let _ = self.shared.events.send(event);
    }

    /// Shows an event to the live subscribers (`/ws/events`) without recording it (a
    /// follower showing the leader's).
    pub(crate) fn broadcast(&self, event: ScalingEvent) {
        // An error only means nobody is subscribed.
        let _ = self.shared.events.send(event);
    }

    /// Sends the overrides to the store unless a later version was sent already (two tasks
    /// may execute their effects in another order than their transitions ran).
    pub(crate) fn write_overrides(&self, version: u64, overrides: ConfigOverrides) {
        let mut sent = self
            .shared
            .overrides_sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if version > *sent {
            *sent = version;
            self.shared.store.set_overrides(overrides);
        }
    }

    /// Something in the queue may have changed: published at the pace of PUBLISH_INTERVAL
    /// (at once after a quiet interval, or when the routing set changed; else merged into
    /// one publication at the interval's end).
    pub fn publish(&self) {
        // A follower publishes the leader's snapshots (`relay`), not its own view.
        if !self.is_leading() {
            return;
        }
        let agent = self.clone();
        self.shared.pacer.changed(
            || self.world().routing_changed(),
            move || agent.publish_now(),
        );
    }

    /// Publishes the queue if it changed since the last push (called by the pacer).
    fn publish_now(&self) {
        let now = Instant::now();
        let Some(epoch) = self.acting_epoch() else {
            return;
        };
        let Some((seq, items)) = self.world().next_publication(now) else {
            return;
        };
        let mut snapshot = QueueSnapshot::new(seq, now_ms(), items);
        snapshot.epoch = epoch;
        let snapshot = Arc::new(Published::new(snapshot));
        let metrics = &self.shared.metrics;
        for category in [
            Category::Init,
            Category::Low,
            Category::Medium,
            Category::High,
            Category::Sundown,
        ] {
            let count = snapshot
                .items
                .iter()
                .filter(|i| i.utilization_category == category)
                .count();
            metrics
                .containers
                .get_or_create(&CategoryLabel {
                    category: category.as_str(),
                })
                .set(count as i64);
        }
        metrics.queue_pushes.inc();
        self.shared.queue.send_replace(snapshot);
    }

    pub fn metrics_text(&self) -> String {
        let metrics = &self.shared.metrics;
        metrics.leader.set(i64::from(self.is_leading()));
        let changes = self.shared.elector.leader_changes();
        let counted = metrics.leader_changes.get();
        if changes > counted {
            metrics.leader_changes.inc_by(changes - counted);
        }
        metrics.desired.set(self.bounds().desired_replicas as i64);
        // Without reports the sums fall to zero once the last ones are stale.
        metrics.set_balancer_load(&self.world().balancer_load(Instant::now()));
        metrics
            .subscribers
            .set(self.shared.queue.receiver_count() as i64);
        metrics
            .redis_connected
            .set(i64::from(self.shared.store.status().connected));
        metrics.render()
    }

    /// Refuses a replica count or bound above MAX_CONTAINERS_LIMIT, naming the field.
    pub fn check_limit(&self, field: &str, value: Option<usize>) -> Result<(), String> {
        let limit = self.shared.config.max_containers_limit;
        match value {
            Some(value) if value > limit => Err(format!(
                "{field} ({value}) is above MAX_CONTAINERS_LIMIT ({limit})"
            )),
            _ => Ok(()),
        }
    }

    /// A place for one more WebSocket subscriber, held while it is connected; `None` at
    /// WS_MAX_SUBSCRIBERS.
    pub fn subscriber_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.shared.subscriber_slots)
            .try_acquire_owned()
            .ok()
    }

    /// Whether this follower's copy of the leader's queue is fresh; its queue subscribers
    /// are closed and new ones refused while it is stale.
    pub(crate) fn relay_freshness(&self) -> &Freshness {
        &self.shared.relayed
    }

    /// Whether this agent's queue is a stale copy: it follows and has not heard the leader's
    /// queue for a while. A leader's own queue never is.
    pub fn queue_stale(&self) -> bool {
        self.shared.relayed.is_stale() && !self.is_leading()
    }

    /// Cancelled when the agent shuts down.
    pub fn shutdown_token(&self) -> common::CancellationToken {
        self.shared.shutdown.clone()
    }

    /// This agent's id (AGENT_ID).
    pub fn id(&self) -> &str {
        self.shared.elector.agent_id()
    }

    /// The epoch this agent acts under, while it leads and may act (its lease renewed in
    /// time); `None` on a follower. Every engine call and desired-state write checks it.
    pub fn acting_epoch(&self) -> Option<u64> {
        self.shared.elector.acting_epoch()
    }

    pub fn is_leading(&self) -> bool {
        self.acting_epoch().is_some()
    }

    /// Whether this agent still acts under `epoch`.
    pub fn acts_under(&self, epoch: u64) -> bool {
        self.acting_epoch() == Some(epoch)
    }

    /// The leader, as this agent knows it (itself when it leads).
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.shared.elector.leader()
    }

    /// Changes of role.
    pub fn roles(&self) -> watch::Receiver<Role> {
        self.shared.elector.role()
    }

    /// The leader's queue WebSocket, while this agent follows a known leader.
    pub fn leader_ws_url(&self) -> Option<String> {
        if self.is_leading() {
            return None;
        }
        self.leader()
            .filter(|leader| leader.id != self.id())
            .map(|leader| leader.ws_url)
    }

    pub(crate) fn forward_client(&self) -> &ForwardClient {
        &self.shared.forward
    }

    /// A follower republishes the leader's snapshot, unless it is not newer than the last
    /// one: `(epoch, seq)` only grows.
    pub(crate) fn relay(&self, snapshot: Published) {
        if self.is_leading() {
            return;
        }
        let published = self.shared.queue.send_if_modified(|current| {
            if (snapshot.epoch, snapshot.seq) > (current.epoch, current.seq) {
                *current = Arc::new(snapshot);
                true
            } else {
                false
            }
        });
        if published {
            self.shared.metrics.queue_pushes.inc();
        }
    }

    /// Who leads, for `/status` and the dashboard.
    pub fn leadership(&self) -> Leadership {
        let elector = &self.shared.elector;
        let leader = self.leader();
        let agents = elector
            .agents()
            .into_iter()
            .map(|agent| AgentEntry {
                leader: leader.as_ref().is_some_and(|leader| leader.id == agent.id),
                id: agent.id,
                http_url: agent.http_url,
                seen_ms: agent.seen_ms,
            })
            .collect();
        Leadership {
            agent_id: self.id().to_owned(),
            role: if self.is_leading() {
                "leader"
            } else {
                "follower"
            },
            epoch: leader.as_ref().map_or(0, |leader| leader.epoch),
            election: !elector.is_solo(),
            leader,
            agents,
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::ScaleUp => "scale_up",
        EventKind::ScaleDown => "scale_down",
        EventKind::Created => "created",
        EventKind::Ready => "ready",
        EventKind::Sundown => "sundown",
        EventKind::Stopped => "stopped",
        EventKind::Died => "died",
        EventKind::Adopted => "adopted",
        EventKind::Removed => "removed",
        EventKind::ConfigChanged => "config_changed",
        EventKind::Started => "started",
        EventKind::Unhealthy => "unhealthy",
        EventKind::Recovered => "recovered",
        EventKind::CrashLoop => "crash_loop",
        EventKind::ProbeError => "probe_error",
        EventKind::LeaderElected => "leader_elected",
        EventKind::LeaderStepDown => "leader_step_down",
    }
}
