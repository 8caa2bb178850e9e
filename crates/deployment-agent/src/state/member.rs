//! One container the agent manages: its phase, its observations and its scores.

use std::time::{Duration, Instant};

use common::queue::Category;

use crate::{
    runtime::Instance,
    score::{
        self, Availability, Classification, ResourceScores, Scores, StatsSample, Thresholds,
        Weights,
    },
};

/// Where a member is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Created or adopted; not yet answering /health.
    Starting { since: Instant },
    /// Serving.
    Ready,
    /// Was ready, then failed `UNHEALTHY_THRESHOLD` probes in a row: published INIT (no new
    /// requests) until a probe answers again, replaced after `UNHEALTHY_TIMEOUT`.
    Unhealthy { since: Instant },
    /// Chosen for removal: no new requests; stopped once idle or after the drain timeout.
    Sundown { since: Instant },
    /// Being stopped and removed; no longer published.
    Stopping,
}

/// One container the agent manages. Its fields change only through the world's transitions.
#[derive(Debug)]
pub struct Member {
    pub(super) instance: Instance,
    pub(super) phase: Phase,
    pub(super) availability: Availability,
    pub(super) last_stats: Option<StatsSample>,
    pub(super) resources: Option<ResourceScores>,
    /// In flight + queued, from the worker's own /stats.
    pub(super) worker_in_flight: u64,
    /// It has served: the worker ran a job, or a balancer had a request in flight on it.
    pub(super) served: bool,
    pub(super) healthy: bool,
    /// Failed probes in a row.
    pub(super) probe_failures: u32,
    pub(super) scores: Scores,
    pub(super) overall: f64,
    pub(super) classification: Classification,
    pub(super) sundown_since_ms: Option<u64>,
    pub(super) created: Instant,
    /// It came from the warm pool (thawed) rather than being created.
    pub(super) thawed: bool,
    /// The observer tasks (stats stream, probes); aborted when the member goes.
    pub(super) observers: Vec<tokio::task::AbortHandle>,
    /// Why its last probe failed (cleared when one passes).
    pub(super) probe_error: Option<String>,
    /// Whether its `/stats` is the worker's: `None` until known. `Some(false)`: its in-flight
    /// count comes from the balancers' reports only, and `/stats` is not asked again.
    pub(super) worker_stats: Option<bool>,
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
            served: false,
            healthy: false,
            probe_failures: 0,
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
            probe_error: None,
            worker_stats: None,
        }
    }

    /// The category published for this member.
    pub fn category(&self) -> Category {
        match self.phase {
            Phase::Starting { .. } | Phase::Unhealthy { .. } => Category::Init,
            Phase::Sundown { .. } | Phase::Stopping => Category::Sundown,
            Phase::Ready => self.classification.category,
        }
    }

    /// Re-derives the overall score and category from the latest observations.
    pub(super) fn rescore(&mut self, weights: &Weights, thresholds: &Thresholds) {
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

    /// Counted in the desired replicas: not SUNDOWN, not stopping (unhealthy ones hold their
    /// place until they recover or are replaced).
    pub fn is_active(&self) -> bool {
        !matches!(self.phase, Phase::Sundown { .. } | Phase::Stopping)
    }

    /// The one way into SUNDOWN: no new requests from now; false when it was not active.
    pub(super) fn sundown(&mut self, now: Instant, now_ms: u64) -> bool {
        if !self.is_active() {
            return false;
        }
        self.phase = Phase::Sundown { since: now };
        self.sundown_since_ms = Some(now_ms);
        true
    }

    /// Applies one probe of a ready or unhealthy member (`answered`: /health answered 2xx in
    /// time) at `now`, and says which transition it made. Other phases only count failures.
    pub(super) fn probed(
        &mut self,
        answered: bool,
        now: Instant,
        policy: &HealthPolicy,
    ) -> ProbeVerdict {
        self.healthy = answered;
        self.probe_failures = if answered {
            0
        } else {
            self.probe_failures.saturating_add(1)
        };
        match self.phase {
            Phase::Ready if self.probe_failures >= policy.threshold => {
                self.phase = Phase::Unhealthy { since: now };
                ProbeVerdict::Unhealthy {
                    failures: self.probe_failures,
                }
            }
            Phase::Unhealthy { since } => {
                let after = now.saturating_duration_since(since);
                if answered {
                    self.phase = Phase::Ready;
                    ProbeVerdict::Recovered { after }
                } else if after >= policy.timeout {
                    self.phase = Phase::Stopping;
                    ProbeVerdict::Replace { after }
                } else {
                    ProbeVerdict::Same
                }
            }
            _ => ProbeVerdict::Same,
        }
    }
}

/// When a ready member is taken out of the queue and when it is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// `UNHEALTHY_THRESHOLD`: failed probes in a row (at least 1).
    pub threshold: u32,
    /// `UNHEALTHY_TIMEOUT`: how long an unhealthy member may take to recover.
    pub timeout: Duration,
}

/// The transition one probe made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// No change of phase.
    Same,
    /// Ready -> Unhealthy after this many failures in a row: out of the queue.
    Unhealthy { failures: u32 },
    /// Unhealthy -> Ready: it answered again, after being unhealthy this long.
    Recovered { after: Duration },
    /// Unhealthy -> Stopping: down for `UNHEALTHY_TIMEOUT`; stop it and start another.
    Replace { after: Duration },
}
