//! What the agent knows right now: every member container with its phase, observations and
//! scores, the balancers' reports and the scaler's memory. Lives behind one mutex in the
//! `Agent` handle; every critical section is short and never spans an `.await`.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use common::queue::{Category, QueueItem};
use serde::Serialize;

use crate::{
    decide::{ContainerView, ScalerState},
    runtime::{Instance, LaunchSpec},
    score::{
        self, Availability, Classification, ResourceScores, Scores, StatsSample, Thresholds,
        Weights,
    },
    store::ConfigOverrides,
};

/// Where a member is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Created or adopted; not yet answering /health.
    Starting { since: Instant },
    /// Serving.
    Ready,
    /// Chosen for removal: no new requests; stopped once idle or after the drain timeout.
    Sundown { since: Instant },
    /// Being stopped and removed; no longer published.
    Stopping,
}

/// One container the agent manages.
#[derive(Debug)]
pub struct Member {
    pub instance: Instance,
    pub phase: Phase,
    pub availability: Availability,
    pub last_stats: Option<StatsSample>,
    pub resources: Option<ResourceScores>,
    /// In flight + queued, from the worker's own /stats.
    pub worker_in_flight: u64,
    pub healthy: bool,
    pub scores: Scores,
    pub overall: f64,
    pub classification: Classification,
    pub sundown_since_ms: Option<u64>,
    pub created: Instant,
    /// It came from the warm pool (thawed) rather than being created.
    pub thawed: bool,
    /// The observer tasks (stats stream, probes); aborted when the member goes.
    pub observers: Vec<tokio::task::AbortHandle>,
}

impl Member {
    pub fn new(instance: Instance, availability: Availability, now: Instant) -> Self {
        Self {
            instance,
            phase: Phase::Starting { since: now },
            availability,
            last_stats: None,
            resources: None,
            worker_in_flight: 0,
            healthy: false,
            scores: Scores {
                cpu: 100.0,
                memory: 100.0,
                network: 100.0,
                availability: 100.0,
            },
            overall: 100.0,
            classification: Classification {
                category: Category::Low,
                utilization: 0.0,
                critical: false,
            },
            sundown_since_ms: None,
            created: now,
            thawed: false,
            observers: Vec::new(),
        }
    }

    /// The category published for this member.
    pub fn category(&self) -> Category {
        match self.phase {
            Phase::Starting { .. } => Category::Init,
            Phase::Sundown { .. } | Phase::Stopping => Category::Sundown,
            Phase::Ready => self.classification.category,
        }
    }

    /// Re-derives the overall score and category from the latest observations.
    pub fn rescore(&mut self, weights: &Weights, thresholds: &Thresholds) {
        let resources = self.resources.as_ref();
        self.scores = Scores {
            cpu: resources.map_or(100.0, |r| r.cpu),
            memory: resources.map_or(100.0, |r| r.memory),
            network: resources.map_or(100.0, |r| r.network),
            availability: self.availability.score(),
        };
        self.overall = score::overall(&self.scores, weights);
        let cpu_util = resources.map_or(0.0, |r| r.cpu_util);
        self.classification = score::classify(self.overall, cpu_util, thresholds);
    }

    pub fn cpu_util(&self) -> f64 {
        self.resources.as_ref().map_or(0.0, |r| r.cpu_util)
    }
}

/// A balancer's latest load report.
#[derive(Debug, Clone)]
pub struct BalancerReport {
    pub at: Instant,
    pub queued_without_backend: u64,
    /// In flight per backend address.
    pub in_flight: HashMap<String, u64>,
}

/// Reports older than this are ignored (the balancer is gone).
pub const REPORT_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct World {
    pub members: BTreeMap<String, Member>,
    pub scaler: ScalerState,
    /// A one-off replica target from the API, applied by the next decision.
    pub requested: Option<usize>,
    pub overrides: ConfigOverrides,
    pub balancers: HashMap<String, BalancerReport>,
    /// Launches under way, counted as members so the scaler does not launch twice.
    pub launching: Vec<LaunchSpec>,
    /// Warm standbys (WARM_POOL): healthy, then paused; not in the queue, not counted.
    pub standby: Vec<Instance>,
    /// Standbys being started, until they are healthy and paused.
    pub preparing: Vec<LaunchSpec>,
    /// Consecutive failed launches, and no launch before this instant.
    pub launch_failures: u32,
    pub launch_blocked_until: Option<Instant>,
    /// The items last published, to publish only on change.
    pub published: Vec<QueueItem>,
    pub seq: u64,
}

impl World {
    /// In flight on a member: the larger of the worker's own count and the balancers' reports.
    pub fn in_flight(&self, member: &Member, now: Instant) -> u64 {
        let reported: u64 = self
            .balancers
            .values()
            .filter(|report| now.duration_since(report.at) < REPORT_TTL)
            .filter_map(|report| report.in_flight.get(&member.instance.address))
            .sum();
        member.worker_in_flight.max(reported)
    }

    pub fn queued_demand(&self, now: Instant) -> u64 {
        self.balancers
            .values()
            .filter(|report| now.duration_since(report.at) < REPORT_TTL)
            .map(|report| report.queued_without_backend)
            .sum()
    }

    /// The members the scaler sees (everything but those already stopping).
    pub fn views(&self, now: Instant) -> Vec<ContainerView> {
        self.members
            .values()
            .filter(|member| member.phase != Phase::Stopping)
            .map(|member| ContainerView {
                id: member.instance.id.clone(),
                category: member.category(),
                utilization: member.classification.utilization,
                cpu_util: member.cpu_util(),
                critical: member.phase == Phase::Ready && member.classification.critical,
                in_flight: self.in_flight(member, now),
                sundown_since: match member.phase {
                    Phase::Sundown { since } => Some(since),
                    _ => None,
                },
            })
            .collect()
    }

    /// The queue as published: every member but those stopping, scores rounded to 0.1.
    pub fn queue_items(&self, now: Instant) -> Vec<QueueItem> {
        let round = |x: f64| (x * 10.0).round() / 10.0;
        let mut items: Vec<QueueItem> = self
            .members
            .values()
            .filter(|member| member.phase != Phase::Stopping)
            .map(|member| QueueItem {
                id: member.instance.id.clone(),
                dns_name: member.instance.dns_name.clone(),
                address: member.instance.address.clone(),
                score: round(member.overall),
                utilization_category: member.category(),
                in_flight: self.in_flight(member, now),
                cpu_score: round(member.scores.cpu),
                memory_score: round(member.scores.memory),
                network_score: round(member.scores.network),
                availability_score: round(member.scores.availability),
            })
            .collect();
        common::queue::sort_items(&mut items);
        items
    }

    /// Finds a member by full id, id prefix (at least 4 characters) or name.
    pub fn find(&self, key: &str) -> Option<&str> {
        if let Some((id, _)) = self.members.get_key_value(key) {
            return Some(id);
        }
        let mut matches = self.members.iter().filter(|(id, member)| {
            member.instance.name == key || (key.len() >= 4 && id.starts_with(key))
        });
        match (matches.next(), matches.next()) {
            (Some((id, _)), None) => Some(id),
            _ => None,
        }
    }

    /// The lowest `n` not used in a `<app>-worker-<n>` name.
    pub fn next_name(&self, app: &str) -> String {
        let prefix = format!("{app}-worker-");
        let used: Vec<u32> = self
            .members
            .values()
            .map(|member| member.instance.name.as_str())
            .chain(self.launching.iter().map(|spec| spec.name.as_str()))
            .chain(self.standby.iter().map(|instance| instance.name.as_str()))
            .chain(self.preparing.iter().map(|spec| spec.name.as_str()))
            .filter_map(|name| name.strip_prefix(&prefix)?.parse().ok())
            .collect();
        let n = (1..).find(|n| !used.contains(n)).unwrap_or(1);
        format!("{prefix}{n}")
    }

    /// A core from `pool` that no member uses, for CPU pinning.
    pub fn free_core(&self, pool: &[u32]) -> Option<u32> {
        pool.iter().copied().find(|core| {
            !self
                .launching
                .iter()
                .any(|spec| spec.core_id == Some(*core))
                && !self
                    .members
                    .values()
                    .any(|m| m.instance.core_id == Some(*core))
        })
    }
}

/// A member as the HTTP and gRPC status calls show it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: String,
    pub name: String,
    pub address: String,
    pub dns_name: String,
    pub core_id: Option<u32>,
    pub category: Category,
    pub healthy: bool,
    pub in_flight: u64,
    pub cpu_util: f64,
    pub utilization: f64,
    pub critical: bool,
    pub score: f64,
    pub cpu_score: f64,
    pub memory_score: f64,
    pub network_score: f64,
    pub availability_score: f64,
    pub network_bytes_per_s: f64,
    pub uptime_s: f64,
}

impl World {
    pub fn statuses(&self, now: Instant) -> Vec<MemberStatus> {
        let mut statuses: Vec<MemberStatus> = self
            .members
            .values()
            .filter(|member| member.phase != Phase::Stopping)
            .map(|member| MemberStatus {
                id: member.instance.id.clone(),
                name: member.instance.name.clone(),
                address: member.instance.address.clone(),
                dns_name: member.instance.dns_name.clone(),
                core_id: member.instance.core_id,
                category: member.category(),
                healthy: member.healthy,
                in_flight: self.in_flight(member, now),
                cpu_util: member.cpu_util(),
                utilization: member.classification.utilization,
                critical: member.classification.critical,
                score: member.overall,
                cpu_score: member.scores.cpu,
                memory_score: member.scores.memory,
                network_score: member.scores.network,
                availability_score: member.scores.availability,
                network_bytes_per_s: member
                    .resources
                    .as_ref()
                    .map_or(0.0, |r| r.network_bytes_per_s),
                uptime_s: now.duration_since(member.created).as_secs_f64(),
            })
            .collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
    }
}
