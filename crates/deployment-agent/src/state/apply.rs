//! The world's transitions. Each one takes what happened (a decision, a probe, a launch that
//! returned, an engine event), changes the phases, counts and bookkeeping while the caller holds
//! the world's one lock, and returns the [`Effects`]: the engine calls, store writes and events
//! that the executor then performs, and whether to publish. None of them does I/O.
//!
//! Every phase change lives here: into SUNDOWN only through [`Member::sundown`], into
//! `Stopping` only in these functions, and the active count is read from the world after the
//! change, never kept on the side.

use std::time::{Duration, Instant};

use crate::{
    decide::{self, Decision, Observation, Reason, ScalingConfig},
    probe::WorkerLoad,
    runtime::{Instance, LaunchSpec, now_ms},
    score::{self, StatsSample},
    store::{ConfigOverrides, ContainerRecord, EventKind, MetricPoint},
};

use super::{
    BalancerLoad, BalancerReport, Crash, LAUNCHING_PREFIX, Launch, Phase, ProbeVerdict, World,
};

/// A SUNDOWN container keeps at least this long, so every balancer has seen the push before
/// it is stopped.
const SUNDOWN_SETTLE: Duration = Duration::from_millis(1500);
/// After a failed launch, wait this long (doubling per failure, capped) before the next.
const LAUNCH_BACKOFF_BASE: Duration = Duration::from_millis(500);
const LAUNCH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Grace given to a container that is no member any more (it exited, or is a standby).
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);

/// What a transition asks for. The executor performs it in this order: abort and start
/// observers, store writes, events, engine actions, then one publish and one wake.
#[derive(Debug, Default)]
#[must_use = "effects do nothing until they are executed"]
pub struct Effects {
    /// Engine calls.
    pub actions: Vec<Action>,
    /// Registry entries to write.
    pub persist: Vec<ContainerRecord>,
    /// Registry entries to remove.
    pub forget: Vec<String>,
    /// The overrides changed: write them. The version orders writes made by different tasks.
    pub overrides: Option<(u64, ConfigOverrides)>,
    pub events: Vec<Event>,
    /// Scoring samples for the metric history.
    pub metrics: Vec<(String, MetricPoint)>,
    /// Members whose observers (stats stream, probes) to start.
    pub observe: Vec<String>,
    /// Observers of members that left, to abort.
    pub abort: Vec<tokio::task::AbortHandle>,
    /// The queue may have changed.
    pub publish: bool,
    /// Run the control loop soon.
    pub wake: bool,
}

impl Effects {
    fn merge(&mut self, other: Self) {
        self.actions.extend(other.actions);
        self.persist.extend(other.persist);
        self.forget.extend(other.forget);
        if other.overrides.is_some() {
            self.overrides = other.overrides;
        }
        self.events.extend(other.events);
        self.metrics.extend(other.metrics);
        self.observe.extend(other.observe);
        self.abort.extend(other.abort);
        self.publish |= other.publish;
        self.wake |= other.wake;
    }
}

/// One engine call.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create a worker, or thaw a warm standby; its launch entry is already in the world.
    Launch(LaunchSpec),
    /// Stop and remove a member already marked `Stopping`; `done` is the `stopped` event's
    /// message.
    Stop { id: String, done: &'static str },
    /// Remove a container that is no member (an exited leftover, a dead one, a standby given
    /// up), thawing it first when `thaw`.
    Remove {
        id: String,
        grace: Duration,
        thaw: bool,
    },
    /// A launch crashed: read its exit code and last log lines, tell them in a `crash_loop`
    /// event, remove it (`member`: it is still a member, marked `Stopping`), and wake the
    /// loop once `wait` has passed for the launch the back-off holds.
    CrashReport {
        id: String,
        crash: Crash,
        member: bool,
        wait: Duration,
        crashes: u32,
    },
    /// Start a warm standby: create it, wait until it answers, pause it.
    Prepare(LaunchSpec),
}

/// An event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub container: Option<String>,
    pub message: String,
    /// The desired replicas once the transition is done.
    pub replicas: usize,
}

/// What the engine listing found, for [`World::reconcile`].
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Every instance with the agent's labels.
    pub instances: Vec<Instance>,
    /// Every name on the engine with the workers' prefix (`None`: could not be listed).
    pub taken: Option<Vec<String>>,
}

/// Where a launch's name is reserved while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A worker for the pool (`launching`).
    Launching,
    /// A warm standby (`preparing`).
    Preparing,
}

/// How a launch ended, for [`World::launched`].
#[derive(Debug)]
pub struct Launched {
    /// The name last tried (the instance's on success).
    pub name: String,
    pub result: Result<Instance, String>,
    /// A warm standby was thawed rather than a worker created.
    pub thawed: bool,
    /// When the create (or thaw) call was made.
    pub started: Instant,
    /// Names found taken on the way (409 on create).
    pub taken: Vec<String>,
}

impl World {
    fn note(
        &self,
        effects: &mut Effects,
        now: Instant,
        kind: EventKind,
        container: Option<&str>,
        message: impl Into<String>,
    ) {
        effects.events.push(Event {
            kind,
            container: container.map(str::to_owned),
            message: message.into(),
            replicas: self.desired(now),
        });
    }

    fn persist(&self, effects: &mut Effects, id: &str) {
        if let Some(record) = self.record(id) {
            effects.persist.push(record);
        }
    }

    fn overrides_changed(&mut self) -> Option<(u64, ConfigOverrides)> {
        self.overrides_version += 1;
        Some((self.overrides_version, self.overrides.clone()))
    }

    /// Runs the pure `decide` on the world as it is: the API's one-off request is taken, the
    /// scaler's memory kept. While launches are held (failed launch, crash loop) the decision
    /// creates nothing and the request waits for the next one.
    pub fn decide(&mut self, now: Instant, scaling: &ScalingConfig) -> Decision {
        let mut views = self.views(now);
        // Give balancers time to see a SUNDOWN push before its container may be stopped.
        for view in &mut views {
            if let Some(since) = view.sundown_since {
                if now.duration_since(since) < SUNDOWN_SETTLE && view.in_flight == 0 {
                    view.in_flight = 1;
                }
            }
        }
        let requested = self.requested.take();
        let observation = Observation {
            now,
            containers: &views,
            queued_demand: self.queued_demand(now),
            queued_work_seconds: self.queued_work_seconds(now),
            requested_replicas: requested,
        };
        let mut decision = decide::decide(&observation, scaling, &self.scaler);
        self.scaler = decision.state.clone();
        if self.launches_blocked(now) && decision.create > 0 {
            self.requested = requested; // tried again once the back-off has passed
            decision.create = 0;
        }
        decision
    }

    /// Carries a decision into the world: SUNDOWN marks (or cancelled launches), stops of
    /// drained members, new launches with their names and cores, and the persisted count.
    pub fn apply(&mut self, decision: &Decision, now: Instant) -> Effects {
        let mut effects = Effects::default();
        let mut sundowns = Vec::new();
        let mut cancelled = Vec::new();
        for id in &decision.sundown {
            if let Some(name) = id.strip_prefix(LAUNCHING_PREFIX) {
                if self.cancel_launch(name) {
                    cancelled.push(name.to_owned());
                }
            } else if let Some(member) = self.members.get_mut(id) {
                if member.sundown(now, now_ms()) {
                    sundowns.push(id.clone());
                }
            }
        }
        for id in &decision.stop {
            if let Some(member) = self.members.get_mut(id) {
                if matches!(member.phase, Phase::Sundown { .. }) {
                    member.phase = Phase::Stopping;
                    effects.actions.push(Action::Stop {
                        id: id.clone(),
                        done: "drained and stopped",
                    });
                }
            }
        }
        let mut launches = Vec::new();
        for _ in 0..decision.create {
            let core_id = match &self.settings.cpuset {
                Some(pool) => match self.free_core(pool) {
                    Some(core) => Some(core),
                    None => {
                        tracing::warn!(
                            "every core of WORKER_CPUSET is taken; not starting more workers"
                        );
                        break;
                    }
                },
                None => None,
            };
            let spec = LaunchSpec {
                name: self.next_name(&self.settings.app),
                core_id,
                epoch: 0,
            };
            self.launching.push(Launch {
                spec: spec.clone(),
                cancelled: false,
            });
            launches.push(spec);
        }
        if !launches.is_empty() || !sundowns.is_empty() || !cancelled.is_empty() {
            self.overrides.default_containers = Some(self.active_count());
            effects.overrides = self.overrides_changed();
        }
        if !launches.is_empty() {
            let kind = match decision.reason {
                Reason::BelowMinimum { .. } | Reason::Requested { .. } => EventKind::Created,
                _ => EventKind::ScaleUp,
            };
            let message = format!("{} (+{})", decision.reason, launches.len());
            self.note(&mut effects, now, kind, None, message);
        }
        if !sundowns.is_empty() || !cancelled.is_empty() {
            let message = format!(
                "{} (-{})",
                decision.reason,
                sundowns.len() + cancelled.len()
            );
            self.note(&mut effects, now, EventKind::ScaleDown, None, message);
            for id in &sundowns {
                self.persist(&mut effects, id);
                self.note(
                    &mut effects,
                    now,
                    EventKind::Sundown,
                    Some(id),
                    "draining: no new requests",
                );
            }
            for name in &cancelled {
                self.note(
                    &mut effects,
                    now,
                    EventKind::Sundown,
                    None,
                    format!("{name}: launch cancelled; it is stopped once its launch returns"),
                );
            }
        }
        effects
            .actions
            .extend(launches.into_iter().map(Action::Launch));
        effects.publish = true;
        effects
    }

    /// The API's one-off target, clamped to `scaling`'s bounds; applied by the next decision.
    pub fn request(
        &mut self,
        replicas: usize,
        scaling: &ScalingConfig,
        now: Instant,
    ) -> (usize, Effects) {
        let target = replicas.clamp(scaling.min_replicas, scaling.max_replicas);
        self.requested = Some(target);
        let mut effects = Effects {
            wake: true,
            ..Effects::default()
        };
        self.note(
            &mut effects,
            now,
            EventKind::ConfigChanged,
            None,
            format!("replicas requested: {target}"),
        );
        (target, effects)
    }

    /// New replica bounds (already validated), persisted so they survive restarts.
    pub fn set_bounds(&mut self, min: usize, max: usize, now: Instant) -> Effects {
        self.overrides.min_replicas = Some(min);
        self.overrides.max_replicas = Some(max);
        let mut effects = Effects {
            overrides: self.overrides_changed(),
            wake: true,
            ..Effects::default()
        };
        self.note(
            &mut effects,
            now,
            EventKind::ConfigChanged,
            None,
            format!("replica bounds set to {min}..{max}"),
        );
        effects
    }

    /// Puts a member in SUNDOWN on request; `key` is its id, an id prefix or its name.
    pub fn drain(&mut self, key: &str, now: Instant) -> Option<(String, Effects)> {
        let id = self.find(key)?.to_owned();
        self.members.get_mut(&id)?.sundown(now, now_ms());
        let mut effects = Effects {
            publish: true,
            wake: true,
            ..Effects::default()
        };
        self.persist(&mut effects, &id);
        self.note(
            &mut effects,
            now,
            EventKind::Sundown,
            Some(&id),
            "drain requested through the API",
        );
        Some((id, effects))
    }

    /// A balancer's load report: the load of every balancer added up, and whether it calls
    /// for a decision now (`decide::decide_now`: something queued, or more in flight than
    /// the active containers are meant to carry).
    pub fn report(
        &mut self,
        balancer_id: &str,
        report: BalancerReport,
        scaling: &ScalingConfig,
    ) -> (BalancerLoad, bool) {
        let now = report.at;
        self.balancers.insert(balancer_id.to_owned(), report);
        let load = self.balancer_load(now);
        let wake = decide::decide_now(
            &self.views(now),
            load.queued_without_backend,
            load.queued_work_seconds,
            scaling,
        );
        (load, wake)
    }

    /// The overrides found in the store at start.
    pub fn restore(&mut self, overrides: ConfigOverrides) {
        self.overrides = overrides;
    }

    /// After the first reconcile: members that were SUNDOWN stay so, and the pool's target
    /// is the persisted count (else `start`), never below what runs.
    pub fn resume(
        &mut self,
        sundown: &[String],
        start: usize,
        runtime: &str,
        now: Instant,
    ) -> Effects {
        for id in sundown {
            if let Some(member) = self.members.get_mut(id) {
                member.sundown(now, now_ms());
            }
        }
        let start = self.overrides.default_containers.unwrap_or(start);
        self.requested = Some(start.max(self.active_count()));
        let mut effects = Effects {
            publish: true,
            wake: true,
            ..Effects::default()
        };
        let message = format!(
            "agent started on the {runtime} runtime; {} container(s) adopted",
            self.members.len()
        );
        self.note(&mut effects, now, EventKind::Started, None, message);
        effects
    }

    /// Brings the world in line with the engine: adopts labelled containers it does not know,
    /// forgets members that are gone, removes exited leftovers and stale registry entries
    /// (`registry`: what the store holds), and refills the warm pool.
    /// Whether the worker named `name` is being launched or prepared as a standby (its
    /// launch has not returned yet).
    fn launch_under_way(&self, name: &str) -> bool {
        self.launching
            .iter()
            .map(|launch| &launch.spec)
            .chain(&self.preparing)
            .any(|spec| spec.name == name)
    }

    pub fn reconcile(
        &mut self,
        listing: Listing,
        registry: &[ContainerRecord],
        now: Instant,
    ) -> Effects {
        let mut effects = Effects::default();
        if let Some(taken) = listing.taken {
            self.taken_names = taken.into_iter().collect();
        }
        let mut adopted = Vec::new();
        for instance in &listing.instances {
            let id = &instance.worker.id;
            if !self.leading
                && instance.paused
                && self.members.contains_key(id)
                && !registry.iter().any(|record| &record.worker.id == id)
            {
                // A follower adopted the leader's standby while it was being prepared (running,
                // not paused yet): it is a standby, not a worker.
                if let Some(member) = self.members.remove(id) {
                    effects.abort.extend(member.observers);
                }
            }
            if !instance.running || self.members.contains_key(id) {
                continue;
            }
            if self.launch_under_way(&instance.worker.name) {
                continue; // its launch is still returning
            }
            if instance.paused {
                if !self
                    .standby
                    .iter()
                    .any(|s| s.worker.id == instance.worker.id)
                {
                    self.standby.push(instance.clone()); // a warm standby from before
                }
                continue;
            }
            // Thawed by hand, or a standby whose thaw was cut short: it serves now.
            self.standby.retain(|s| s.worker.id != instance.worker.id);
            adopted.push(instance.worker.id.clone());
            let member = self.settings.member(instance.clone(), now);
            self.members.insert(instance.worker.id.clone(), member);
        }
        let running: Vec<&str> = listing
            .instances
            .iter()
            .filter(|i| i.running)
            .map(|i| i.worker.id.as_str())
            .collect();
        let vanished: Vec<String> = self
            .members
            .iter()
            .filter(|(id, member)| {
                member.phase != Phase::Stopping && !running.contains(&id.as_str())
            })
            .map(|(id, _)| id.clone())
            .collect();
        self.standby
            .retain(|standby| running.contains(&standby.worker.id.as_str()));
        // Exited leftovers go; not one whose launch is under way (a Swarm service's task
        // takes seconds to be scheduled and run).
        let leftovers = listing
            .instances
            .iter()
            .filter(|i| !i.running && !self.launch_under_way(&i.worker.name));
        for instance in leftovers {
            effects.actions.push(Action::Remove {
                id: instance.worker.id.clone(),
                grace: self.settings.stop_grace,
                thaw: false,
            });
        }
        for id in &adopted {
            effects.observe.push(id.clone());
            self.persist(&mut effects, id);
            self.note(
                &mut effects,
                now,
                EventKind::Adopted,
                Some(id),
                "adopted a running container",
            );
        }
        for id in &vanished {
            if let Some((lost, _)) = self.lose(id, "gone from the engine", None, now) {
                effects.merge(lost);
            }
        }
        for record in registry {
            if !running.contains(&record.worker.id.as_str())
                && !self.is_launching(&record.worker.name)
            {
                effects.forget.push(record.worker.id.clone());
            }
        }
        if !adopted.is_empty() || !vanished.is_empty() {
            effects.publish = true;
            effects.wake = true;
        }
        effects.merge(self.plan_standbys(now));
        effects
    }

    /// An instance exited without being asked to: a standby is replaced, a member is lost (and
    /// removed), an unknown one may be a launch still returning.
    pub fn exited(&mut self, id: &str, reason: &str, code: Option<i64>, now: Instant) -> Effects {
        let before = self.standby.len();
        self.standby.retain(|standby| standby.worker.id != id);
        if self.standby.len() != before {
            tracing::warn!(container = %id, %reason, "a warm standby left; preparing another");
            let mut effects = Effects::default();
            effects.actions.push(Action::Remove {
                id: id.to_owned(),
                grace: LEFTOVER_GRACE,
                thaw: true,
            });
            effects.merge(self.plan_standbys(now));
            return effects;
        }
        match self.members.get(id).map(|member| member.phase) {
            Some(Phase::Stopping) => Effects::default(),
            // Perhaps a worker whose launch has not returned yet: its launch looks here.
            None => {
                self.early_exit(id.to_owned(), code);
                Effects::default()
            }
            Some(_) => {
                let (mut effects, crashed) = self.lose(id, reason, code, now).unwrap_or_default();
                if !crashed {
                    effects.actions.push(Action::Remove {
                        id: id.to_owned(),
                        grace: LEFTOVER_GRACE,
                        thaw: false,
                    });
                }
                effects
            }
        }
    }

    /// A member died or vanished: out of the queue now, and replaced to keep the count. One
    /// that was still starting crashed: the crash-loop back-off holds its replacement and the
    /// crash report removes it (true). `None` when it is no member.
    fn lose(
        &mut self,
        id: &str,
        reason: &str,
        code: Option<i64>,
        now: Instant,
    ) -> Option<(Effects, bool)> {
        let member = self.members.remove(id)?;
        let mut effects = Effects {
            abort: member.observers.clone(),
            forget: vec![id.to_owned()],
            publish: true,
            ..Effects::default()
        };
        // Its container may linger (exited) until it is removed: keep its name out of use.
        self.taken_names.insert(member.instance.worker.name.clone());
        if member.is_active() {
            let target = self.requested.unwrap_or(0).max(self.active_count() + 1);
            self.requested = Some(target);
            effects.wake = true;
        }
        self.note(
            &mut effects,
            now,
            EventKind::Died,
            Some(id),
            format!("container left: {reason}"),
        );
        let crashed = matches!(member.phase, Phase::Starting { .. });
        if crashed {
            let crash = Crash {
                name: member.instance.worker.name.clone(),
                code,
                cause: match code {
                    Some(code) => format!("exited with code {code} during start"),
                    None => format!("left during start ({reason})"),
                },
                logs: Vec::new(),
            };
            effects.actions.push(self.crashed(id, crash, false, now));
        }
        Some((effects, crashed))
    }

    /// Records a crash: the back-off before the next launch grows. The report (logs, event,
    /// removal) is the returned action's.
    fn crashed(&mut self, id: &str, crash: Crash, member: bool, now: Instant) -> Action {
        let wait = self.crash.crashed(
            crash.clone(),
            self.settings.crash_backoff_initial,
            self.settings.crash_backoff_max,
            now,
        );
        Action::CrashReport {
            id: id.to_owned(),
            crash,
            member,
            wait,
            crashes: self.crash.crashes,
        }
    }

    /// The exit code and last log lines of a crash, once read from the engine.
    pub fn crash_details(&mut self, crash: &Crash) {
        if let Some(last) = self
            .crash
            .last
            .as_mut()
            .filter(|last| last.name == crash.name)
        {
            last.logs.clone_from(&crash.logs);
            last.code = crash.code;
            last.cause.clone_from(&crash.cause);
        }
    }

    /// A starting member was not ready within STARTUP_TIMEOUT: a crash; it is stopped and its
    /// replacement waits for the back-off. `message` is the `died` event's, `cause` the crash's.
    pub fn startup_timed_out(
        &mut self,
        id: &str,
        message: String,
        cause: String,
        now: Instant,
    ) -> Effects {
        let mut effects = Effects {
            publish: true,
            ..Effects::default()
        };
        self.note(&mut effects, now, EventKind::Died, Some(id), message);
        let active = self.active_count();
        let Some(member) = self.members.get_mut(id) else {
            return effects;
        };
        member.phase = Phase::Stopping;
        let crash = Crash {
            name: member.instance.worker.name.clone(),
            code: None,
            cause,
            logs: Vec::new(),
        };
        // Keep the count: its replacement waits for the back-off.
        self.requested = Some(self.requested.unwrap_or(0).max(active));
        effects.actions.push(self.crashed(id, crash, true, now));
        effects
    }

    /// One probe of a member (its latency when it answered, its `/stats` when read): scores,
    /// in-flight, served and health in one go, and what its health transition asks for.
    pub fn probed(
        &mut self,
        id: &str,
        latency: Option<Duration>,
        load: Option<WorkerLoad>,
        now: Instant,
    ) -> (Effects, ProbeVerdict) {
        let mut effects = Effects::default();
        let settings = &self.settings;
        let Some(member) = self.members.get_mut(id) else {
            return (effects, ProbeVerdict::Same);
        };
        member.availability.record(latency);
        if let Some(load) = load {
            member.worker_in_flight = load.in_flight;
            member.served |= load.served;
        }
        let verdict = member.probed(latency.is_some(), now, &settings.health);
        if latency.is_some() {
            member.probe_error = None;
        }
        member.rescore(&settings.weights, &settings.thresholds);
        let timeout = settings.health.timeout;
        if let ProbeVerdict::Replace { .. } = verdict {
            // Like a death: keep the count with a new container.
            let target = self.active_count() + 1;
            self.requested = Some(self.requested.unwrap_or(0).max(target));
        }
        let member = &self.members[id];
        let point = MetricPoint {
            at_ms: now_ms(),
            cpu: member.scores.cpu,
            memory: member.scores.memory,
            network: member.scores.network,
            availability: member.scores.availability,
            overall: member.overall,
            in_flight: self.in_flight(member, now),
        };
        effects.metrics.push((id.to_owned(), point));
        effects.publish = true;
        match verdict {
            ProbeVerdict::Same => {}
            ProbeVerdict::Unhealthy { failures } => {
                self.persist(&mut effects, id);
                let message = format!(
                    "{failures} probes failed in a row: out of the queue until it answers; \
                     replaced after {timeout:?}"
                );
                self.note(&mut effects, now, EventKind::Unhealthy, Some(id), message);
            }
            ProbeVerdict::Recovered { after } => {
                self.persist(&mut effects, id);
                let message = format!(
                    "answered again after {} ms unhealthy: back in the queue",
                    after.as_millis()
                );
                self.note(&mut effects, now, EventKind::Recovered, Some(id), message);
            }
            ProbeVerdict::Replace { after } => {
                let message = format!(
                    "unhealthy for {} ms (UNHEALTHY_TIMEOUT {timeout:?}): replacing it",
                    after.as_millis()
                );
                self.note(&mut effects, now, EventKind::Died, Some(id), message);
                effects.actions.push(Action::Stop {
                    id: id.to_owned(),
                    done: "stopped and removed: it stayed unhealthy",
                });
            }
        }
        effects.wake = verdict != ProbeVerdict::Same;
        (effects, verdict)
    }

    /// A starting member answered its probe: ready, and any crash loop is over. `after` is
    /// the time since its create (or thaw) call.
    pub fn became_ready(
        &mut self,
        id: &str,
        latency: Option<Duration>,
        load: Option<WorkerLoad>,
        after: Duration,
        now: Instant,
    ) -> Effects {
        let Some(member) = self.members.get_mut(id) else {
            return Effects::default();
        };
        if matches!(member.phase, Phase::Starting { .. }) {
            member.phase = Phase::Ready;
        }
        member.probe_error = None;
        let thawed = member.thawed;
        // A ready container ends any crash loop.
        self.crash.reset();
        // It answered: no transition but Starting -> Ready can come of it.
        let (mut effects, _) = self.probed(id, latency, load, now);
        self.persist(&mut effects, id);
        let message = format!(
            "healthy {} ms after the {} call",
            after.as_millis(),
            if thawed { "thaw" } else { "create" }
        );
        self.note(&mut effects, now, EventKind::Ready, Some(id), message);
        effects.wake = true;
        effects
    }

    /// A probe failed; the first failure of a probe that cannot work as configured is an event.
    pub fn probe_failed(
        &mut self,
        id: &str,
        message: &str,
        misconfigured: bool,
        now: Instant,
    ) -> Effects {
        let mut effects = Effects::default();
        let Some(member) = self.members.get_mut(id) else {
            return effects;
        };
        let first = member.probe_error.as_deref() != Some(message);
        member.probe_error = Some(message.to_owned());
        if first && misconfigured {
            tracing::error!(container = %id, "{message}");
            self.note(&mut effects, now, EventKind::ProbeError, Some(id), message);
        }
        effects
    }

    /// Whether a member's `/stats` turned out to be the worker's.
    pub fn set_worker_stats(&mut self, id: &str, worker: bool) {
        if let Some(member) = self.members.get_mut(id) {
            member.worker_stats = Some(worker);
        }
    }

    /// A resource sample from a member's stats stream; false when it is no member any more.
    pub fn stats_sample(&mut self, id: &str, sample: StatsSample) -> bool {
        let settings = &self.settings;
        let Some(member) = self.members.get_mut(id) else {
            return false;
        };
        if let Some(previous) = member.last_stats.take() {
            let cores = member.instance.cpu_limit_cores;
            member.resources = Some(score::resource_scores(
                &previous,
                &sample,
                cores,
                settings.network_saturation,
            ));
            member.rescore(&settings.weights, &settings.thresholds);
        }
        member.last_stats = Some(sample);
        true
    }

    /// Hands a member its observer tasks; gives them back when it is gone already.
    pub fn set_observers(
        &mut self,
        id: &str,
        observers: Vec<tokio::task::AbortHandle>,
    ) -> Result<(), Vec<tokio::task::AbortHandle>> {
        match self.members.get_mut(id) {
            Some(member) => {
                member.observers = observers;
                Ok(())
            }
            None => Err(observers),
        }
    }

    /// Every member's observer tasks, to abort them on shutdown.
    pub fn all_observers(&self) -> Vec<tokio::task::AbortHandle> {
        self.members
            .values()
            .flat_map(|member| member.observers.iter().cloned())
            .collect()
    }

    /// Takes a warm standby for the launch `name`, if there is one. The launch entry takes
    /// the standby's name, so that reconcile does not adopt it while it thaws.
    pub fn take_standby(&mut self, name: &str) -> Option<Instance> {
        let standby = self.standby.pop()?;
        self.rename(Slot::Launching, name, &standby.worker.name);
        Some(standby)
    }

    /// Renames a launch's reservation.
    pub fn rename(&mut self, slot: Slot, from: &str, to: &str) {
        let spec = match slot {
            Slot::Launching => self
                .launching
                .iter_mut()
                .map(|launch| &mut launch.spec)
                .find(|spec| spec.name == from),
            Slot::Preparing => self.preparing.iter_mut().find(|spec| spec.name == from),
        };
        if let Some(spec) = spec {
            spec.name = to.to_owned();
        }
    }

    /// The engine holds a container named `taken` already: it is kept out of use, and the
    /// launch reserved under `tried` moves to the next free name, which is returned.
    pub fn name_taken(&mut self, slot: Slot, tried: &str, taken: &str) -> String {
        self.taken_names.insert(taken.to_owned());
        let next = self.next_name(&self.settings.app);
        self.rename(slot, tried, &next);
        next
    }

    /// A launch returned. The new member starts (observed, persisted), unless its launch was
    /// cancelled meanwhile (stopped unused) or it exited at once (a crash); a failed launch
    /// holds the next ones for a growing back-off.
    pub fn launched(&mut self, launched: Launched, now: Instant) -> Effects {
        let Launched {
            name,
            result,
            thawed,
            started,
            taken,
        } = launched;
        let mut effects = Effects {
            publish: true,
            ..Effects::default()
        };
        let cancelled = self
            .launching
            .iter()
            .any(|launch| launch.spec.name == name && launch.cancelled);
        self.launching.retain(|launch| launch.spec.name != name);
        let instance = match result {
            Ok(instance) => instance,
            Err(error) => {
                self.launch_error = Some(error.clone());
                self.launch_failures = self.launch_failures.saturating_add(1);
                let delay = LAUNCH_BACKOFF_BASE * 2u32.saturating_pow(self.launch_failures.min(6));
                self.launch_blocked_until = Some(now + delay.min(LAUNCH_BACKOFF_MAX));
                self.note(
                    &mut effects,
                    now,
                    EventKind::Died,
                    None,
                    format!("could not start {name}: {error}"),
                );
                effects.merge(self.plan_standbys(now));
                return effects;
            }
        };
        self.launch_failures = 0;
        self.launch_blocked_until = None;
        self.launch_error = None;
        let mut member = self.settings.member(instance.clone(), now);
        // Cold start is measured from the create (or thaw) call to the first healthy answer.
        member.created = started;
        member.thawed = thawed;
        // Exited already: before the engine was asked about it, or its exit was reported
        // before it was a member.
        let exited = if instance.running {
            self.take_early_exit(&instance.worker.id)
        } else {
            Some(None)
        };
        if cancelled || exited.is_some() {
            // Never published: it goes straight to its stop.
            member.phase = Phase::Stopping;
        }
        self.members.insert(instance.worker.id.clone(), member);
        let verb = if thawed { "thawed" } else { "created" };
        if cancelled {
            let message = format!(
                "{verb} {}, whose launch a scale-down cancelled: stopping it unused",
                instance.worker.name
            );
            self.note(
                &mut effects,
                now,
                EventKind::Created,
                Some(&instance.worker.id),
                message,
            );
            effects.actions.push(Action::Stop {
                id: instance.worker.id,
                done: "stopped before it served: its launch was cancelled",
            });
        } else if let Some(code) = exited {
            // It exited at once: a crash.
            let crash = Crash {
                name: instance.worker.name.clone(),
                code,
                cause: match code {
                    Some(code) => format!("exited at once with code {code}"),
                    None => "exited at once".into(),
                },
                logs: Vec::new(),
            };
            let message = format!("created {}, which exited at once", instance.worker.name);
            self.note(
                &mut effects,
                now,
                EventKind::Created,
                Some(&instance.worker.id),
                message,
            );
            effects
                .actions
                .push(self.crashed(&instance.worker.id, crash, true, now));
        } else {
            effects.observe.push(instance.worker.id.clone());
            self.persist(&mut effects, &instance.worker.id);
            let message = format!(
                "{} {} at {} in {} ms{}",
                if thawed {
                    "thawed warm standby"
                } else {
                    "created"
                },
                instance.worker.name,
                instance.worker.address,
                now.saturating_duration_since(started).as_millis(),
                if taken.is_empty() {
                    String::new()
                } else {
                    format!(" ({} already existed)", taken.join(", "))
                }
            );
            self.note(
                &mut effects,
                now,
                EventKind::Created,
                Some(&instance.worker.id),
                message,
            );
        }
        effects.merge(self.plan_standbys(now));
        effects
    }

    /// A stopped member leaves the world and the registry.
    pub fn stopped(&mut self, id: &str, done: &str, now: Instant) -> Effects {
        let mut effects = Effects {
            forget: vec![id.to_owned()],
            publish: true,
            wake: true,
            ..Effects::default()
        };
        if let Some(member) = self.members.remove(id) {
            effects.abort = member.observers;
        }
        self.note(&mut effects, now, EventKind::Stopped, Some(id), done);
        effects
    }

    /// Warm standbys to start until `WARM_POOL` are ready or on their way; real launches
    /// and back-offs first.
    pub fn plan_standbys(&mut self, now: Instant) -> Effects {
        let mut effects = Effects::default();
        let target = self.settings.warm_pool;
        if target == 0 || !self.leading || self.launches_blocked(now) || !self.launching.is_empty()
        {
            return effects;
        }
        for _ in self.standby.len() + self.preparing.len()..target {
            let spec = LaunchSpec {
                name: self.next_name(&self.settings.app),
                core_id: None,
                epoch: 0,
            };
            self.preparing.push(spec.clone());
            effects.actions.push(Action::Prepare(spec));
        }
        effects
    }

    /// A standby's preparation ended (`name`: the name it got): ready and paused, or failed.
    pub fn standby_prepared(&mut self, name: &str, outcome: Result<Instance, String>) {
        self.preparing.retain(|spec| spec.name != name);
        match outcome {
            Ok(instance) => {
                tracing::info!(container = %instance.worker.id, name = %instance.worker.name, "warm standby ready (paused)");
                self.standby.push(instance);
            }
            Err(err) => tracing::warn!(cause = %err, %name, "could not prepare a warm standby"),
        }
    }

    /// Whether this agent leads: a follower prepares no standby and reserves no launch.
    pub fn set_leading(&mut self, leading: bool) {
        self.leading = leading;
    }

    /// A follower's sync with the leader's registry and overrides: the leader's SUNDOWN marks
    /// and bounds, so that its read API shows what the leader decided, and a takeover starts
    /// from it. A follower launches nothing: no launch or standby is reserved.
    pub fn follow(
        &mut self,
        registry: &[ContainerRecord],
        overrides: ConfigOverrides,
        now: Instant,
    ) {
        self.overrides = overrides;
        self.launching.clear();
        self.preparing.clear();
        self.requested = None;
        let now_ms = now_ms();
        for record in registry {
            let Some(member) = self.members.get_mut(&record.worker.id) else {
                continue; // not seen on the engine yet: the next reconcile adopts it
            };
            match (record.category, member.phase) {
                (common::queue::Category::Sundown, phase) if phase != Phase::Stopping => {
                    let since_ms = record.sundown_since_ms.unwrap_or(now_ms);
                    let age = Duration::from_millis(now_ms.saturating_sub(since_ms));
                    member.sundown(now.checked_sub(age).unwrap_or(now), since_ms);
                }
                _ => {}
            }
        }
    }

    /// This agent now leads with `epoch`: the leader's registry and overrides are taken over,
    /// every member is persisted as this agent sees it, members it gave up while following
    /// are stopped, and the pool's target is the persisted count.
    pub fn take_over(
        &mut self,
        registry: &[ContainerRecord],
        overrides: ConfigOverrides,
        start: usize,
        message: String,
        now: Instant,
    ) -> Effects {
        self.follow(registry, overrides, now);
        self.leading = true;
        // Publish this agent's own view at once, under its epoch, even an empty one.
        self.published.clear();
        self.republish = true;
        let start = self.overrides.default_containers.unwrap_or(start);
        self.requested = Some(start.max(self.active_count()));
        let mut effects = Effects {
            publish: true,
            wake: true,
            ..Effects::default()
        };
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in &ids {
            if self.members[id].phase == Phase::Stopping {
                effects.actions.push(Action::Stop {
                    id: id.clone(),
                    done: "stopped by the new leader: it was given up while this agent followed",
                });
            } else {
                self.persist(&mut effects, id);
            }
        }
        self.note(&mut effects, now, EventKind::LeaderElected, None, message);
        effects.merge(self.plan_standbys(now));
        effects
    }

    /// Every warm standby, taken out of the world (on shutdown).
    pub fn take_standbys(&mut self) -> Vec<Instance> {
        std::mem::take(&mut self.standby)
    }
}
