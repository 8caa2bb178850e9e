//! What the agent knows right now: every member container with its phase, observations and
//! scores, the balancers' reports and the scaler's memory. Lives behind one mutex in the
//! `Agent` handle; every critical section is short and never spans an `.await`.
//!
//! The fields are private: reads go through the queries here, and every change is a
//! transition in `apply.rs` that returns the [`Effects`] the executor then performs.

mod apply;
mod member;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use common::queue::{Category, QueueItem};
use serde::Serialize;

pub use apply::{Action, Effects, Event, Launched, Listing, Slot};
pub use member::{HealthPolicy, Member, Phase, ProbeVerdict};

use crate::{
    config::{Config, WorkerConcurrency, worker_concurrency},
    decide::{ContainerView, ScalerState},
    runtime::{Instance, LaunchSpec},
    score::{Availability, Thresholds, Weights},
    store::ConfigOverrides,
};

/// What the world's transitions need from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub app: String,
    /// WORKER_CPUSET: the cores workers are pinned to, one each.
    pub cpuset: Option<Vec<u32>>,
    /// WORKER_CPUS: each worker's CPU limit.
    pub worker_cpus: Option<f64>,
    /// WORKER_CONCURRENCY, as set (or derived per worker, see [`Settings::concurrency`]).
    pub concurrency: WorkerConcurrency,
    pub history_size: usize,
    pub best_time_window: usize,
    pub ema_alpha: f64,
    pub weights: Weights,
    pub thresholds: Thresholds,
    pub health: HealthPolicy,
    pub crash_backoff_initial: Duration,
    pub crash_backoff_max: Duration,
    pub network_saturation: f64,
    pub warm_pool: usize,
    pub stop_grace: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            app: config.app.clone(),
            cpuset: config.worker_cpuset.as_ref().map(|cores| cores.0.clone()),
            worker_cpus: config.worker_cpus,
            concurrency: config.worker_concurrency,
            history_size: config.history_size,
            best_time_window: config.best_time_window,
            ema_alpha: config.ema_alpha,
            weights: config.weights(),
            thresholds: config.thresholds(),
            health: HealthPolicy {
                threshold: config.unhealthy_threshold,
                timeout: config.unhealthy_timeout,
            },
            crash_backoff_initial: config.crash_backoff_initial,
            crash_backoff_max: config.crash_backoff_max,
            network_saturation: config.network_saturation,
            warm_pool: config.warm_pool,
            stop_grace: config.stop_grace,
        }
    }

    /// Requests a balancer may send `worker` at once (0 = unlimited): WORKER_CONCURRENCY, else
    /// the default worker's thread count under its CPU limit (WORKER_CPUS, its pinned core).
    pub fn concurrency(&self, worker: &crate::model::Worker) -> u32 {
        worker_concurrency(self.concurrency, self.worker_cpus, worker.core_id.is_some())
    }

    /// A new member for `instance`, starting.
    fn member(&self, instance: Instance, now: Instant) -> Member {
        let availability =
            Availability::new(self.history_size, self.best_time_window, self.ema_alpha);
        Member::new(instance, availability, now)
    }
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
    /// Requests waiting in its queue for a free slot (every backend at its concurrency).
    pub queued_for_slot: u64,
    /// Their expected seconds, from the balancer's cost estimates.
    pub queued_work_seconds: f64,
    /// Per backend address.
    pub backends: HashMap<String, BackendReport>,
}

/// What a balancer has on one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BackendReport {
    pub in_flight: u64,
    /// Expected seconds of those requests, from the balancer's cost estimates.
    pub work_seconds: f64,
}

/// The balancers' load as their fresh reports add it up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct BalancerLoad {
    /// Requests held with no backend (scale from zero).
    pub queued_without_backend: u64,
    /// Requests waiting for a free slot.
    pub queued_for_slot: u64,
    /// Their expected seconds.
    pub queued_work_seconds: f64,
    /// Expected seconds of the requests in flight on every backend.
    pub work_in_flight_seconds: f64,
}

/// The id prefix of a launch under way in the scaler's views.
pub const LAUNCHING_PREFIX: &str = "launching:";

/// The name prefix of an application's workers: `<app>-worker-`.
pub fn worker_prefix(app: &str) -> String {
    format!("{app}-worker-")
}

/// Reports older than this are ignored (the balancer is gone).
pub const REPORT_TTL: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct World {
    settings: Settings,
    members: BTreeMap<String, Member>,
    scaler: ScalerState,
    /// A one-off replica target from the API, applied by the next decision.
    requested: Option<usize>,
    overrides: ConfigOverrides,
    /// Bumped with every change of `overrides`, so their writes to the store keep their order.
    overrides_version: u64,
    balancers: HashMap<String, BalancerReport>,
    /// Launches under way, counted as members so the scaler does not launch twice.
    launching: Vec<Launch>,
    /// Warm standbys (WARM_POOL): healthy, then paused; not in the queue, not counted.
    standby: Vec<Instance>,
    /// Standbys being started, until they are healthy and paused.
    preparing: Vec<LaunchSpec>,
    /// Consecutive failed launches, and no launch before this instant.
    launch_failures: u32,
    launch_blocked_until: Option<Instant>,
    /// Why the last launch failed, while launches fail.
    launch_error: Option<String>,
    crash: CrashLoop,
    /// Exits of instances that were not members (yet): a launch that returns one of these
    /// ids crashed at once. The last `EARLY_EXITS_KEPT`, with their exit codes.
    early_exits: std::collections::VecDeque<(String, Option<i64>)>,
    /// Names of every container on the engine with the workers' name prefix, whatever its
    /// state or labels (refreshed by each reconcile), plus names found taken since: a new
    /// worker's name skips them.
    taken_names: BTreeSet<String>,
    /// The items last published, to publish only on change.
    published: Vec<QueueItem>,
    /// The next publication goes out even if the items did not change (a new leader
    /// publishes under its epoch, an empty pool included).
    republish: bool,
    seq: u64,
    /// This agent leads (always, without leader election).
    leading: bool,
}

/// Exits of unknown instances remembered for launches still returning.
const EARLY_EXITS_KEPT: usize = 32;

impl World {
    /// Remembers the exit of an instance that is not a member (yet).
    fn early_exit(&mut self, id: String, code: Option<i64>) {
        if self.early_exits.len() == EARLY_EXITS_KEPT {
            self.early_exits.pop_front();
        }
        self.early_exits.push_back((id, code));
    }

    /// `Some(exit code)` when `id` exited before its launch returned.
    fn take_early_exit(&mut self, id: &str) -> Option<Option<i64>> {
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
                Some(error) => format!(
                    "{} not ready after {age} s: {error}",
                    member.instance.worker.name
                ),
                None => format!("{} starting ({age} s)", member.instance.worker.name),
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
                member.instance.worker.name,
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
            .reported(member, now)
            .map(|backend| backend.in_flight)
            .sum();
        member.worker_in_flight.max(reported)
    }

    /// Expected seconds of the requests in flight on a member, summed over the balancers'
    /// fresh reports.
    pub fn work_seconds(&self, member: &Member, now: Instant) -> f64 {
        self.reported(member, now)
            .map(|backend| backend.work_seconds)
            .sum()
    }

    /// The fresh reports' entries for a member.
    fn reported<'a>(
        &'a self,
        member: &'a Member,
        now: Instant,
    ) -> impl Iterator<Item = &'a BackendReport> {
        self.fresh_reports(now)
            .filter_map(|report| report.backends.get(&member.instance.worker.address))
    }

    /// Reports younger than `REPORT_TTL`: those of balancers still running.
    fn fresh_reports(&self, now: Instant) -> impl Iterator<Item = &BalancerReport> {
        self.balancers
            .values()
            .filter(move |report| now.duration_since(report.at) < REPORT_TTL)
    }

    pub fn queued_demand(&self, now: Instant) -> u64 {
        self.fresh_reports(now)
            .map(|report| report.queued_without_backend)
            .sum()
    }

    /// Expected seconds of the requests waiting in balancers' queues for a free slot.
    pub fn queued_work_seconds(&self, now: Instant) -> f64 {
        self.fresh_reports(now)
            .map(|report| report.queued_work_seconds)
            .sum()
    }

    /// The balancers' load from their fresh reports: what waits in their queues, and the
    /// expected seconds in flight on every backend (members or not).
    pub fn balancer_load(&self, now: Instant) -> BalancerLoad {
        self.fresh_reports(now)
            .fold(BalancerLoad::default(), |mut load, report| {
                load.queued_without_backend = load
                    .queued_without_backend
                    .saturating_add(report.queued_without_backend);
                load.queued_for_slot = load.queued_for_slot.saturating_add(report.queued_for_slot);
                load.queued_work_seconds += report.queued_work_seconds;
                load.work_in_flight_seconds += report
                    .backends
                    .values()
                    .map(|backend| backend.work_seconds)
                    .sum::<f64>();
                load
            })
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
                    id: member.instance.worker.id.clone(),
                    category: member.category(),
                    utilization: member.classification.utilization,
                    cpu_util: member.cpu_util(),
                    critical: member.phase == Phase::Ready && member.classification.critical,
                    in_flight,
                    work_seconds: self.work_seconds(member, now),
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
                work_seconds: 0.0,
                sundown_since: None,
                served: false,
                unhealthy: false,
            });
        members.chain(launches).collect()
    }

    /// Cancels the launch of `name` (a view id without its `launching:` prefix); false when
    /// it is not under way.
    fn cancel_launch(&mut self, name: &str) -> bool {
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
                id: member.instance.worker.id.clone(),
                dns_name: member.instance.worker.dns_name.clone(),
                address: member.instance.worker.address.clone(),
                score: round(member.overall),
                utilization_category: member.category(),
                in_flight: self.in_flight(member, now),
                cpu_score: round(member.scores.cpu),
                memory_score: round(member.scores.memory),
                network_score: round(member.scores.network),
                availability_score: round(member.scores.availability),
                concurrency: self.settings.concurrency(&member.instance.worker),
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
            member.instance.worker.name == key || (key.len() >= 4 && id.starts_with(key))
        });
        match (matches.next(), matches.next()) {
            (Some((id, _)), None) => Some(id),
            _ => None,
        }
    }

    /// The lowest `n` not used in a `<app>-worker-<n>` name by a member, a launch, a standby
    /// or any container known on the engine (`taken_names`).
    fn next_name(&self, app: &str) -> String {
        let prefix = worker_prefix(app);
        let used: BTreeSet<u32> = self
            .members
            .values()
            .map(|member| member.instance.worker.name.as_str())
            .chain(self.launching.iter().map(|l| l.spec.name.as_str()))
            .chain(
                self.standby
                    .iter()
                    .map(|instance| instance.worker.name.as_str()),
            )
            .chain(self.preparing.iter().map(|spec| spec.name.as_str()))
            .chain(self.taken_names.iter().map(String::as_str))
            .filter_map(|name| name.strip_prefix(&prefix)?.parse().ok())
            .collect();
        let n = (1..).find(|n| !used.contains(n)).unwrap_or(1);
        format!("{prefix}{n}")
    }

    /// A core from `pool` that no member uses, for CPU pinning.
    fn free_core(&self, pool: &[u32]) -> Option<u32> {
        pool.iter().copied().find(|core| {
            !self
                .launching
                .iter()
                .any(|launch| launch.spec.core_id == Some(*core))
                && !self
                    .members
                    .values()
                    .any(|m| m.instance.worker.core_id == Some(*core))
        })
    }
}

impl World {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            members: BTreeMap::new(),
            scaler: ScalerState::default(),
            requested: None,
            overrides: ConfigOverrides::default(),
            overrides_version: 0,
            balancers: HashMap::new(),
            launching: Vec::new(),
            standby: Vec::new(),
            preparing: Vec::new(),
            launch_failures: 0,
            launch_blocked_until: None,
            launch_error: None,
            crash: CrashLoop::default(),
            early_exits: std::collections::VecDeque::new(),
            taken_names: BTreeSet::new(),
            published: Vec::new(),
            republish: false,
            seq: 0,
            leading: true,
        }
    }

    /// This agent leads: a decision may be taken on this world (`set_leading`).
    pub fn leads(&self) -> bool {
        self.leading
    }

    pub fn overrides(&self) -> &ConfigOverrides {
        &self.overrides
    }

    /// The desired replicas as `/status` shows them: the active count, or the target a
    /// back-off holds, since the pool converges to it once the back-off ends.
    pub fn desired(&self, now: Instant) -> usize {
        let active = self.active_count();
        if self.launches_blocked(now) {
            active.max(self.requested.unwrap_or(0))
        } else {
            active
        }
    }

    /// Every member's id, stopping ones included.
    pub fn member_ids(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    /// The balancers whose last report is fresh (younger than `REPORT_TTL`), sorted: the
    /// load this agent adds up.
    pub fn reporting_balancers(&self, now: Instant) -> Vec<String> {
        let mut ids: Vec<String> = self
            .balancers
            .iter()
            .filter(|(_, report)| now.duration_since(report.at) < REPORT_TTL)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The names of the ready warm standbys.
    pub fn standby_names(&self) -> Vec<String> {
        self.standby
            .iter()
            .map(|standby| standby.worker.name.clone())
            .collect()
    }

    /// Warm standbys being prepared.
    pub fn preparing_count(&self) -> usize {
        self.preparing.len()
    }

    /// A launch of this name is under way (its registry entry is not stale).
    pub fn is_launching(&self, name: &str) -> bool {
        self.launching.iter().any(|launch| launch.spec.name == name)
    }

    /// What a member's probe needs: its address, phase and creation instant.
    pub fn probe_target(&self, id: &str) -> Option<(String, Phase, Instant)> {
        self.members.get(id).map(|member| {
            (
                member.instance.worker.address.clone(),
                member.phase,
                member.created,
            )
        })
    }

    /// Whether a member's `/stats` is the worker's (`None`: not known yet, or no member).
    pub fn worker_stats(&self, id: &str) -> Option<bool> {
        self.members.get(id).and_then(|member| member.worker_stats)
    }

    /// A member's registry entry, as the store keeps it.
    pub fn record(&self, id: &str) -> Option<crate::store::ContainerRecord> {
        self.members
            .get(id)
            .map(|member| crate::store::ContainerRecord {
                worker: member.instance.worker.clone(),
                category: member.category(),
                sundown_since_ms: member.sundown_since_ms,
            })
    }

    /// Whether the routing set changed since the last publication: a worker added or gone,
    /// or one that starts or stops taking new requests (ready, SUNDOWN, unhealthy). Such a
    /// change is published at once, whatever the pace; scores and loads wait for it.
    pub fn routing_changed(&self) -> bool {
        let listed = self
            .members
            .values()
            .filter(|member| member.phase != Phase::Stopping)
            .count();
        self.republish
            || listed != self.published.len()
            || self.published.iter().any(|item| {
                self.members.get(&item.id).is_none_or(|member| {
                    member.phase == Phase::Stopping
                        || member.category().accepts_new_requests()
                            != item.utilization_category.accepts_new_requests()
                })
            })
    }

    /// The queue to publish when it changed since the last one: `(seq, items)`.
    pub fn next_publication(&mut self, now: Instant) -> Option<(u64, Vec<QueueItem>)> {
        let items = self.queue_items(now);
        if items == self.published && !self.republish {
            return None;
        }
        self.republish = false;
        self.seq += 1;
        self.published = items.clone();
        Some((self.seq, items))
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
    /// Requests a balancer sends it at once (0 = unlimited), as published.
    pub concurrency: u32,
    /// Expected seconds of its requests in flight, summed over the balancers' reports.
    pub work_seconds: f64,
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
                id: member.instance.worker.id.clone(),
                name: member.instance.worker.name.clone(),
                address: member.instance.worker.address.clone(),
                dns_name: member.instance.worker.dns_name.clone(),
                core_id: member.instance.worker.core_id,
                category: member.category(),
                healthy: member.healthy,
                unhealthy: matches!(member.phase, Phase::Unhealthy { .. }),
                served: member.served,
                in_flight: self.in_flight(member, now),
                concurrency: self.settings.concurrency(&member.instance.worker),
                work_seconds: self.work_seconds(member, now),
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
mod tests;
