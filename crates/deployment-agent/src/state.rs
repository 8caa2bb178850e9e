//! What the agent knows right now: every member container with its phase, observations and
//! scores, the balancers' reports and the scaler's memory. Lives behind one mutex in the
//! `Agent` handle; every critical section is short and never spans an `.await`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
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
    /// Was ready, then failed `UNHEALTHY_THRESHOLD` probes in a row: published INIT (no new
    /// requests) until a probe answers again, replaced after `UNHEALTHY_TIMEOUT`.
    Unhealthy { since: Instant },
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
    /// It has served: the worker ran a job, or a balancer had a request in flight on it.
    pub served: bool,
    pub healthy: bool,
    /// Failed probes in a row.
    pub probe_failures: u32,
    pub scores: Scores,
    pub overall: f64,
    pub classification: Classification,
    pub sundown_since_ms: Option<u64>,
    pub created: Instant,
    /// It came from the warm pool (thawed) rather than being created.
    pub thawed: bool,
    /// The observer tasks (stats stream, probes); aborted when the member goes.
    pub observers: Vec<tokio::task::AbortHandle>,
    /// Why its last probe failed (cleared when one passes).
    pub probe_error: Option<String>,
    /// Whether its `/stats` is the worker's: `None` until known. `Some(false)`: its in-flight
    /// count comes from the balancers' reports only, and `/stats` is not asked again.
    pub worker_stats: Option<bool>,
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

    /// Counted in the desired replicas: not SUNDOWN, not stopping (unhealthy ones hold their
    /// place until they recover or are replaced).
    pub fn is_active(&self) -> bool {
        !matches!(self.phase, Phase::Sundown { .. } | Phase::Stopping)
    }

    /// Applies one probe of a ready or unhealthy member (`answered`: /health answered 2xx in
    /// time) at `now`, and says which transition it made. Other phases only count failures.
    pub fn probed(&mut self, answered: bool, now: Instant, policy: &HealthPolicy) -> ProbeVerdict {
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

/// Crash-loop back-off: crashes in a row (launches whose container exited or never became
/// ready during start), and no launch before `until`. A ready container resets it.
#[derive(Debug, Clone, Default)]
pub struct CrashLoop {
    pub crashes: u32,
    pub until: Option<Instant>,
    pub last: Option<Crash>,
}

/// One crash, as `/status` and the `crash_loop` event tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    pub name: String,
    pub code: Option<i64>,
    /// `exited with code 3`, `was not ready within 60s: GET /health answered 404 ...`.
    pub cause: String,
    /// Its last log lines (filled once read from the engine).
    pub logs: Vec<String>,
}

impl CrashLoop {
    /// Records a crash at `now`: the wait before the next launch, `initial` doubled per crash
    /// in a row before this one, capped at `max`.
    pub fn crashed(
        &mut self,
        crash: Crash,
        initial: Duration,
        max: Duration,
        now: Instant,
    ) -> Duration {
        let factor = 2u32.saturating_pow(self.crashes.min(30));
        self.crashes = self.crashes.saturating_add(1);
        let wait = initial.saturating_mul(factor).min(max);
        self.until = Some(now + wait);
        self.last = Some(crash);
        wait
    }

    /// A container became ready: the loop is over.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Launches are held until the back-off has passed.
    pub fn blocks(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }
}

/// Whether the pool has a ready container, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    pub ready: usize,
    /// Why no container is ready (`None` when one is).
    pub reason: Option<String>,
}

/// A launch under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub spec: LaunchSpec,
    /// A scale-down chose it before it was up: it is stopped as soon as its launch returns,
    /// and no longer counted.
    pub cancelled: bool,
}

/// A balancer's latest load report.
#[derive(Debug, Clone)]
pub struct BalancerReport {
    pub at: Instant,
    pub queued_without_backend: u64,
    /// In flight per backend address.
    pub in_flight: HashMap<String, u64>,
}

/// The id prefix of a launch under way in the scaler's views.
pub const LAUNCHING_PREFIX: &str = "launching:";

/// The name prefix of an application's workers: `<app>-worker-`.
pub fn worker_prefix(app: &str) -> String {
    format!("{app}-worker-")
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
    pub launching: Vec<Launch>,
    /// Warm standbys (WARM_POOL): healthy, then paused; not in the queue, not counted.
    pub standby: Vec<Instance>,
    /// Standbys being started, until they are healthy and paused.
    pub preparing: Vec<LaunchSpec>,
    /// Consecutive failed launches, and no launch before this instant.
    pub launch_failures: u32,
    pub launch_blocked_until: Option<Instant>,
    /// Why the last launch failed, while launches fail.
    pub launch_error: Option<String>,
    pub crash: CrashLoop,
    /// Exits of instances that were not members (yet): a launch that returns one of these
    /// ids crashed at once. The last `EARLY_EXITS_KEPT`, with their exit codes.
    pub early_exits: std::collections::VecDeque<(String, Option<i64>)>,
    /// Names of every container on the engine with the workers' name prefix, whatever its
    /// state or labels (refreshed by each reconcile), plus names found taken since: a new
    /// worker's name skips them.
    pub taken_names: BTreeSet<String>,
    /// The items last published, to publish only on change.
    pub published: Vec<QueueItem>,
    pub seq: u64,
}

/// Exits of unknown instances remembered for launches still returning.
const EARLY_EXITS_KEPT: usize = 32;

impl World {
    /// Remembers the exit of an instance that is not a member (yet).
    pub fn early_exit(&mut self, id: String, code: Option<i64>) {
        if self.early_exits.len() == EARLY_EXITS_KEPT {
            self.early_exits.pop_front();
        }
        self.early_exits.push_back((id, code));
    }

    /// `Some(exit code)` when `id` exited before its launch returned.
    pub fn take_early_exit(&mut self, id: &str) -> Option<Option<i64>> {
        let at = self.early_exits.iter().position(|(known, _)| known == id)?;
        self.early_exits.remove(at).map(|(_, code)| code)
    }

    /// Launches are held: after a failed launch, or during a crash-loop back-off.
    pub fn launches_blocked(&self, now: Instant) -> bool {
        self.launch_blocked_until.is_some_and(|until| now < until) || self.crash.blocks(now)
    }

    /// How many members are ready, and when none is, why.
    pub fn pool_status(&self, now: Instant) -> PoolStatus {
        let ready = self
            .members
            .values()
            .filter(|member| member.phase == Phase::Ready)
            .count();
        PoolStatus {
            ready,
            reason: (ready == 0).then(|| self.no_ready_reason(now)),
        }
    }

    fn no_ready_reason(&self, now: Instant) -> String {
        if let Some(crash) = &self.crash.last {
            let next = match self.crash.until {
                Some(until) if until > now => {
                    format!(
                        "next launch in {} s",
                        until.duration_since(now).as_secs().max(1)
                    )
                }
                _ => "launching again".into(),
            };
            // The line most likely to say why (an error), else the last.
            let telling = crash.logs.iter().rev().find(|line| {
                let line = line.to_ascii_lowercase();
                ["error", "fatal", "panic"]
                    .iter()
                    .any(|word| line.contains(word))
            });
            let log = telling
                .or(crash.logs.last())
                .map_or_else(String::new, |line| format!(": {line}"));
            return format!(
                "crash loop ({} in a row): {} {}, {next}{log}",
                self.crash.crashes, crash.name, crash.cause
            );
        }
        let starting = self
            .members
            .values()
            .filter(|member| matches!(member.phase, Phase::Starting { .. }))
            .min_by_key(|member| member.created);
        if let Some(member) = starting {
            let age = now.saturating_duration_since(member.created).as_secs();
            return match &member.probe_error {
                Some(error) => format!("{} not ready after {age} s: {error}", member.instance.name),
                None => format!("{} starting ({age} s)", member.instance.name),
            };
        }
        if let Some(error) = &self.launch_error {
            return format!("cannot start a container: {error}");
        }
        if !self.launching.is_empty() {
            return format!("{} container(s) being created", self.launching.len());
        }
        if let Some(member) = self
            .members
            .values()
            .find(|member| matches!(member.phase, Phase::Unhealthy { .. }))
        {
            return format!(
                "{} unhealthy: {}",
                member.instance.name,
                member.probe_error.as_deref().unwrap_or("its probes fail")
            );
        }
        if self.members.is_empty() {
            return "no container: the desired count is 0".into();
        }
        "every container is draining or stopping".into()
    }

    /// In flight on a member: the larger of the worker's own count and the balancers' reports
    /// (only the latter when its `/stats` is not the worker's).
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

    /// The desired replicas: active members and launches not cancelled.
    pub fn active_count(&self) -> usize {
        self.members.values().filter(|m| m.is_active()).count()
            + self.launching.iter().filter(|l| !l.cancelled).count()
    }

    /// The members the scaler sees (everything but those already stopping), and the launches
    /// under way as INIT containers with the id `launching:<name>`.
    pub fn views(&self, now: Instant) -> Vec<ContainerView> {
        let members = self
            .members
            .values()
            .filter(|member| member.phase != Phase::Stopping)
            .map(|member| {
                let in_flight = self.in_flight(member, now);
                ContainerView {
                    id: member.instance.id.clone(),
                    category: member.category(),
                    utilization: member.classification.utilization,
                    cpu_util: member.cpu_util(),
                    critical: member.phase == Phase::Ready && member.classification.critical,
                    in_flight,
                    sundown_since: match member.phase {
                        Phase::Sundown { since } => Some(since),
                        _ => None,
                    },
                    served: member.served || in_flight > 0,
                    unhealthy: matches!(member.phase, Phase::Unhealthy { .. }),
                }
            });
        let launches = self
            .launching
            .iter()
            .filter(|launch| !launch.cancelled)
            .map(|launch| ContainerView {
                id: format!("{LAUNCHING_PREFIX}{}", launch.spec.name),
                category: Category::Init,
                utilization: 0.0,
                cpu_util: 0.0,
                critical: false,
                in_flight: 0,
                sundown_since: None,
                served: false,
                unhealthy: false,
            });
        members.chain(launches).collect()
    }

    /// Cancels the launch of `name` (a view id without its `launching:` prefix); false when
    /// it is not under way.
    pub fn cancel_launch(&mut self, name: &str) -> bool {
        match self
            .launching
            .iter_mut()
            .find(|launch| launch.spec.name == name && !launch.cancelled)
        {
            Some(launch) => {
                launch.cancelled = true;
                true
            }
            None => false,
        }
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

    /// The lowest `n` not used in a `<app>-worker-<n>` name by a member, a launch, a standby
    /// or any container known on the engine (`taken_names`).
    pub fn next_name(&self, app: &str) -> String {
        let prefix = worker_prefix(app);
        let used: BTreeSet<u32> = self
            .members
            .values()
            .map(|member| member.instance.name.as_str())
            .chain(self.launching.iter().map(|l| l.spec.name.as_str()))
            .chain(self.standby.iter().map(|instance| instance.name.as_str()))
            .chain(self.preparing.iter().map(|spec| spec.name.as_str()))
            .chain(self.taken_names.iter().map(String::as_str))
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
                .any(|launch| launch.spec.core_id == Some(*core))
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
    /// Ready before and now failing its probes: out of the queue (published INIT).
    pub unhealthy: bool,
    /// It has served requests (the scale-down order keeps serving containers last).
    pub served: bool,
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
    /// Why its last probe failed, if it did.
    pub probe_error: Option<String>,
    /// Where its in-flight count comes from: `worker` (its `/stats` and the balancers'
    /// reports) or `balancers` (the app has no worker `/stats`).
    pub in_flight_source: &'static str,
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
                unhealthy: matches!(member.phase, Phase::Unhealthy { .. }),
                served: member.served,
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
                probe_error: member.probe_error.clone(),
                in_flight_source: if member.worker_stats == Some(false) {
                    "balancers"
                } else {
                    "worker"
                },
            })
            .collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str) -> Member {
        let instance = Instance {
            id: format!("id-{name}"),
            name: name.into(),
            address: format!("{name}:8080"),
            dns_name: name.into(),
            core_id: None,
            created_at_ms: 0,
            running: true,
            paused: false,
            cpu_limit_cores: 1.0,
        };
        Member::new(instance, Availability::new(20, 10, 0.2), Instant::now())
    }

    const POLICY: HealthPolicy = HealthPolicy {
        threshold: 2,
        timeout: Duration::from_secs(30),
    };

    #[test]
    fn a_ready_member_leaves_the_queue_after_the_threshold_and_recovers_or_is_given_up() {
        let t0 = Instant::now();
        let mut m = member("w-1");
        m.phase = Phase::Ready;
        m.classification.category = Category::Low;
        assert_eq!(m.probed(false, t0, &POLICY), ProbeVerdict::Same);
        assert_eq!(m.category(), Category::Low, "one failure is tolerated");
        // A success in between resets the count.
        assert_eq!(m.probed(true, t0, &POLICY), ProbeVerdict::Same);
        assert_eq!(m.probed(false, t0, &POLICY), ProbeVerdict::Same);
        assert_eq!(
            m.probed(false, t0, &POLICY),
            ProbeVerdict::Unhealthy { failures: 2 }
        );
        assert_eq!(m.category(), Category::Init, "published as not routable");
        assert!(m.is_active(), "it holds its place in the count");
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(m.probed(false, t1, &POLICY), ProbeVerdict::Same);
        assert_eq!(
            m.probed(true, t1, &POLICY),
            ProbeVerdict::Recovered {
                after: Duration::from_secs(5)
            }
        );
        assert_eq!((m.phase, m.category()), (Phase::Ready, Category::Low));

        // Down again, and for UNHEALTHY_TIMEOUT: given up.
        m.probed(false, t1, &POLICY);
        m.probed(false, t1, &POLICY);
        let t2 = t1 + Duration::from_secs(29);
        assert_eq!(m.probed(false, t2, &POLICY), ProbeVerdict::Same);
        assert_eq!(
            m.probed(false, t2 + Duration::from_secs(1), &POLICY),
            ProbeVerdict::Replace {
                after: Duration::from_secs(30)
            }
        );
        assert_eq!(m.phase, Phase::Stopping);
        assert!(!m.is_active());
    }

    #[test]
    fn starting_and_sundown_members_have_no_health_transition() {
        let now = Instant::now();
        let mut starting = member("w-1");
        let mut sundown = member("w-2");
        sundown.phase = Phase::Sundown { since: now };
        for _ in 0..5 {
            assert_eq!(starting.probed(false, now, &POLICY), ProbeVerdict::Same);
            assert_eq!(sundown.probed(false, now, &POLICY), ProbeVerdict::Same);
        }
        assert!(matches!(starting.phase, Phase::Starting { .. }));
        assert!(matches!(sundown.phase, Phase::Sundown { .. }));
    }

    #[test]
    fn new_names_skip_every_name_in_use_or_taken_on_the_engine() {
        let mut world = World::default();
        let m = member("app-worker-1");
        world.members.insert(m.instance.id.clone(), m);
        world.launching.push(Launch {
            spec: LaunchSpec {
                name: "app-worker-2".into(),
                core_id: None,
            },
            cancelled: false,
        });
        // An exited container and a stranger's container with the prefix.
        world.taken_names.insert("app-worker-3".into());
        world.taken_names.insert("app-worker-5".into());
        world.taken_names.insert("other-worker-4".into());
        assert_eq!(world.next_name("app"), "app-worker-4");
        world.taken_names.insert("app-worker-4".into());
        assert_eq!(world.next_name("app"), "app-worker-6");
    }

    fn crash(name: &str, code: i64) -> Crash {
        Crash {
            name: name.into(),
            code: Some(code),
            cause: format!("exited with code {code}"),
            logs: vec!["first".into(), "flag --bogus not known".into()],
        }
    }

    #[test]
    fn crash_waits_double_up_to_the_cap_and_a_ready_container_resets_them() {
        let t0 = Instant::now();
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(5));
        let mut crash_loop = CrashLoop::default();
        let waits: Vec<u64> = (0..5)
            .map(|_| {
                crash_loop
                    .crashed(crash("w-1", 2), initial, max, t0)
                    .as_secs()
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert!(crash_loop.blocks(t0 + Duration::from_secs(4)));
        assert!(!crash_loop.blocks(t0 + Duration::from_secs(5)));
        crash_loop.reset();
        assert_eq!(
            crash_loop.crashed(crash("w-1", 2), initial, max, t0),
            initial
        );
    }

    #[test]
    fn the_pool_says_why_no_container_is_ready() {
        let now = Instant::now();
        let mut world = World::default();
        assert_eq!(
            world.pool_status(now).reason.as_deref(),
            Some("no container: the desired count is 0")
        );
        let mut starting = member("app-worker-1");
        starting.probe_error = Some("GET /health answered 404".into());
        world.members.insert(starting.instance.id.clone(), starting);
        let reason = world.pool_status(now).reason.unwrap();
        assert!(
            reason.starts_with("app-worker-1 not ready after 0 s: GET /health answered 404"),
            "{reason}"
        );

        world.crash.crashed(
            crash("app-worker-2", 3),
            Duration::from_secs(8),
            Duration::from_secs(60),
            now,
        );
        assert!(world.launches_blocked(now));
        let reason = world.pool_status(now).reason.unwrap();
        assert_eq!(
            reason,
            "crash loop (1 in a row): app-worker-2 exited with code 3, next launch in 8 s: flag --bogus not known"
        );

        let mut ready = member("app-worker-3");
        ready.phase = Phase::Ready;
        world.members.insert(ready.instance.id.clone(), ready);
        assert_eq!(
            world.pool_status(now),
            PoolStatus {
                ready: 1,
                reason: None
            }
        );
    }

    #[test]
    fn without_the_workers_stats_in_flight_comes_from_the_balancers() {
        let now = Instant::now();
        let mut world = World::default();
        let mut m = member("app-worker-1");
        m.worker_stats = Some(false);
        let address = m.instance.address.clone();
        world.members.insert(m.instance.id.clone(), m);
        for (balancer, count) in [("b1", 3), ("b2", 4)] {
            world.balancers.insert(
                balancer.into(),
                BalancerReport {
                    at: now,
                    queued_without_backend: 0,
                    in_flight: HashMap::from([(address.clone(), count)]),
                },
            );
        }
        let views = world.views(now);
        assert_eq!((views[0].in_flight, views[0].served), (7, true));
        assert_eq!(world.statuses(now)[0].in_flight_source, "balancers");
    }

    #[test]
    fn a_cancelled_launch_is_no_longer_counted_nor_seen_by_the_scaler() {
        let mut world = World::default();
        for name in ["w-1", "w-2"] {
            world.launching.push(Launch {
                spec: LaunchSpec {
                    name: name.into(),
                    core_id: None,
                },
                cancelled: false,
            });
        }
        assert_eq!(world.active_count(), 2);
        assert!(world.cancel_launch("w-1"));
        assert!(!world.cancel_launch("w-1"), "cancelled once");
        assert!(!world.cancel_launch("w-9"));
        assert_eq!(world.active_count(), 1);
        let views = world.views(Instant::now());
        let ids: Vec<&str> = views.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["launching:w-2"]);
    }
}
