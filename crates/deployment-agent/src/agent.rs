//! The `Agent` handle: the shared state of one agent (world, runtime, store, published queue)
//! and the operations the servers call. Cheap to clone.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use common::queue::{Category, QueueSnapshot};
use tokio::sync::{Notify, broadcast, watch};

use crate::{
    config::Config,
    decide::ScalingConfig,
    metrics::{CategoryLabel, KindLabel, Metrics},
    probe::Prober,
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
    world: Mutex<World>,
    /// The version of the overrides last sent to the store (see `write_overrides`).
    overrides_sent: Mutex<u64>,
    queue: watch::Sender<Arc<QueueSnapshot>>,
    /// Every recorded event, for live subscribers (`/ws/events`); a lagging one skips ahead.
    events: broadcast::Sender<ScalingEvent>,
    pub wake: Notify,
    shutdown: common::CancellationToken,
    /// WS_MAX_SUBSCRIBERS places, one per connected WebSocket subscriber.
    subscriber_slots: Arc<tokio::sync::Semaphore>,
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
        shutdown: common::CancellationToken,
    ) -> Self {
        let (queue, _) = watch::channel(Arc::new(QueueSnapshot::new(0, now_ms(), Vec::new())));
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let config_subscribers = config.ws_max_subscribers;
        let world = World::new(Settings::from_config(&config));
        Self {
            shared: Arc::new(Shared {
                prober: Prober::new(config.probe_timeout),
                config,
                runtime,
                store,
                metrics: Metrics::new(),
                world: Mutex::new(world),
                overrides_sent: Mutex::new(0),
                queue,
                events,
                wake: Notify::new(),
                shutdown,
                subscriber_slots: Arc::new(tokio::sync::Semaphore::new(
                    config_subscribers.min(tokio::sync::Semaphore::MAX_PERMITS),
                )),
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

    /// A subscription to the live queue: the current snapshot at once, then every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<QueueSnapshot>> {
        self.shared.queue.subscribe()
    }

    /// A subscription to the events recorded from now on (see `store().recent_events` for
    /// the past ones). A subscriber that falls behind gets `Lagged` and skips ahead.
    pub fn subscribe_events(&self) -> broadcast::Receiver<ScalingEvent> {
        self.shared.events.subscribe()
    }

    pub fn snapshot(&self) -> Arc<QueueSnapshot> {
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

    /// A balancer's load report. Queued demand wakes the scaler at once.
    pub fn report_load(
        &self,
        balancer_id: &str,
        queued_without_backend: u64,
        in_flight: HashMap<String, u64>,
    ) {
        let target = self.shared.config.scaling().target_concurrency;
        let report = BalancerReport {
            at: Instant::now(),
            queued_without_backend,
            in_flight,
        };
        let (demand, over_target) = self.world().report(balancer_id, report, target);
        self.shared.metrics.queued_demand.set(demand as i64);
        // Queued requests or more in flight than the containers are meant to carry: decide now
        // rather than at the next period (the cooldowns still hold the decision back).
        if queued_without_backend > 0 || over_target {
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
        tracing::info!(kind = ?kind, container, replicas, "{message}");
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
        };
        self.shared.store.record_event(event.clone());
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

    /// Publishes the queue if it changed since the last push.
    pub fn publish(&self) {
        let now = Instant::now();
        let Some((seq, items)) = self.world().next_publication(now) else {
            return;
        };
        let snapshot = Arc::new(QueueSnapshot::new(seq, now_ms(), items));
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
        metrics.desired.set(self.bounds().desired_replicas as i64);
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

    /// Cancelled when the agent shuts down.
    pub fn shutdown_token(&self) -> common::CancellationToken {
        self.shared.shutdown.clone()
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
    }
}
