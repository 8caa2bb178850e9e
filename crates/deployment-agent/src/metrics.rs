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

    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = encode(&mut text, &self.registry);
        text
    }
}
