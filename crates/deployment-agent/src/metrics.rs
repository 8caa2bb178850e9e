//! The agent's Prometheus metrics, in a registry owned by the `Agent` handle.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CategoryLabel {
    pub category: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub containers: Family<CategoryLabel, Gauge>,
    pub events: Family<KindLabel, Counter>,
    pub desired: Gauge,
    pub subscribers: Gauge,
    pub queue_pushes: Counter,
    pub queued_demand: Gauge,
    /// Requests waiting in balancers' queues for a free slot.
    pub queued_for_slot: Gauge,
    /// Their expected seconds, from the balancers' cost estimates.
    pub queued_work_seconds: Gauge<f64, AtomicU64>,
    /// Expected seconds of the requests in flight on the workers.
    pub work_in_flight_seconds: Gauge<f64, AtomicU64>,
    pub redis_connected: Gauge,
    /// 1 while this agent leads.
    pub leader: Gauge,
    /// Leader changes this agent has seen.
    pub leader_changes: Counter,
    /// Time of one controller step (decide, apply, execute and publish), seconds.
    pub tick: Histogram,
    /// The longest step so far, seconds.
    pub tick_max: Gauge<f64, AtomicU64>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agent");
        let containers = Family::<CategoryLabel, Gauge>::default();
        let events = Family::<KindLabel, Counter>::default();
        let desired = Gauge::default();
        let subscribers = Gauge::default();
        let queue_pushes = Counter::default();
        let queued_demand = Gauge::default();
        let queued_for_slot = Gauge::default();
        let queued_work_seconds = Gauge::<f64, AtomicU64>::default();
        let work_in_flight_seconds = Gauge::<f64, AtomicU64>::default();
        let redis_connected = Gauge::default();
        let leader = Gauge::default();
        let leader_changes = Counter::default();
        // 50 µs to about 1.6 s, each bucket 1.5 times the last.
        let tick = Histogram::new(exponential_buckets(0.000_05, 1.5, 26));
        let tick_max = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "containers",
            "Managed containers by category",
            containers.clone(),
        );
        registry.register(
            "events",
            "Lifecycle and scaling events by kind",
            events.clone(),
        );
        registry.register(
            "desired_replicas",
            "Containers the scaler wants",
            desired.clone(),
        );
        registry.register(
            "websocket_subscribers",
            "Open queue subscriptions",
            subscribers.clone(),
        );
        registry.register(
            "queue_pushes",
            "Queue snapshots published",
            queue_pushes.clone(),
        );
        registry.register(
            "queued_demand",
            "Requests balancers hold with no backend",
            queued_demand.clone(),
        );
        registry.register(
            "queued_for_slot",
            "Requests balancers hold in their queues for a free slot on a worker",
            queued_for_slot.clone(),
        );
        registry.register(
            "queued_work_seconds",
            "Expected seconds of the requests balancers hold for a free slot, from their cost estimates",
            queued_work_seconds.clone(),
        );
        registry.register(
            "work_in_flight_seconds",
            "Expected seconds of the requests in flight on the workers, from the balancers' cost estimates",
            work_in_flight_seconds.clone(),
        );
        registry.register(
            "redis_connected",
            "1 when the Redis store answers",
            redis_connected.clone(),
        );
        registry.register("leader", "1 while this agent leads", leader.clone());
        registry.register(
            "leader_changes",
            "Leader changes this agent has seen (elections it won or saw another win)",
            leader_changes.clone(),
        );
        registry.register(
            "tick_seconds",
            "Time of one controller step: decide, apply, execute and publish",
            tick.clone(),
        );
        registry.register(
            "tick_max_seconds",
            "The longest controller step since the agent started",
            tick_max.clone(),
        );
        Self {
            registry,
            containers,
            events,
            desired,
            subscribers,
            queue_pushes,
            queued_demand,
            queued_for_slot,
            queued_work_seconds,
            work_in_flight_seconds,
            redis_connected,
            leader,
            leader_changes,
            tick,
            tick_max,
        }
    }

    /// Records one controller step that took `took`.
    pub fn observe_tick(&self, took: std::time::Duration) {
        let seconds = took.as_secs_f64();
        self.tick.observe(seconds);
        if seconds > self.tick_max.get() {
            self.tick_max.set(seconds);
        }
    }

    /// The balancers' load as their fresh reports add it up.
    pub fn set_balancer_load(&self, load: &crate::state::BalancerLoad) {
        self.queued_demand
            .set(i64::try_from(load.queued_without_backend).unwrap_or(i64::MAX));
        self.queued_for_slot
            .set(i64::try_from(load.queued_for_slot).unwrap_or(i64::MAX));
        self.queued_work_seconds.set(load.queued_work_seconds);
        self.work_in_flight_seconds.set(load.work_in_flight_seconds);
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = encode(&mut text, &self.registry);
        text
    }
}
