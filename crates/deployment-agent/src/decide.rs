//! The scaling decision: a pure function of one observed snapshot of the containers, the
//! config and the scaler's small state ([`ScalerState`]), returning what to create, what to
//! sundown, what to stop, why, and the next state. No I/O and no clock: `now` comes in the
//! [`Observation`].
//!
//! # Rules
//!
//! **Active** containers are all those not SUNDOWN (INIT ones count: they are coming up).
//! **Ready** containers are the active ones that are neither INIT nor unhealthy. An
//! **unhealthy** container (ready before, now failing its probes; the controller publishes it
//! as INIT) keeps its place in the active count, so a short stall does not start a container,
//! but it is no capacity: the utilisation signals use ready containers only, the concurrency
//! and work signals sum the in-flight requests (and their expected seconds) of the other active
//! containers and ask for one more container per unhealthy one, and queued demand is not
//! covered by it. The controller
//! replaces it after `UNHEALTHY_TIMEOUT` or puts it back when it recovers. "Mean utilisation"
//! below is the mean of the ready containers' utilisation (100 − overall score).
//!
//! 1. **Drain**: a SUNDOWN container is stopped once it has no request in flight or its
//!    `DRAIN_TIMEOUT` has passed since it was sundowned (one with no sundown time waits for
//!    zero in-flight). The decision stops only SUNDOWN containers.
//! 2. **Bounds**: fewer active containers than `MIN_CONTAINERS` → create the difference at
//!    once, cooldown or not. More than `MAX_CONTAINERS` → sundown the excess at once (least
//!    busy first). Autoscaling never goes past `MAX_CONTAINERS` nor below `MIN_CONTAINERS`.
//! 3. **Demand** (scale from zero): requests queued in balancers with no backend
//!    (`queued_demand` > 0) → at least ready + max(1, ⌈queued / `TARGET_CONCURRENCY`⌉)
//!    containers (`SCALE_STEP` instead of the quotient when `TARGET_CONCURRENCY` is 0), at once,
//!    cooldown or not. Containers still starting count toward it, so a queue that persists
//!    while they boot does not create more on every tick; unhealthy ones do not. No scale-down
//!    while demand is queued.
//! 4. **Requested** (`POST /scale`): the requested count, clamped to the bounds (and raised to
//!    what queued demand needs), at once. Going down sundowns containers in the removal order
//!    (below), INIT ones included, so the count is the requested one after this decision.
//!    It starts the cooldowns like any scaling and overrides the load signals for that tick.
//! 5. **Scale up on load**, once `COOLDOWN_PERIOD` has passed since the last scale-up. Each
//!    signal proposes a count; the largest wins, clamped to `MAX_CONTAINERS`:
//!    - mean utilisation > `HIGH_LOAD_THRESHOLD` → active + `SCALE_STEP`;
//!    - any ready container critical (utilisation ≥ `CRITICAL_LOAD_THRESHOLD`) → active +
//!      `SCALE_STEP`;
//!    - every ready container (at least one) at CPU ≥ `PRESPAWN_THRESHOLD` → active +
//!      `SCALE_STEP` (seed 002's proactive spawn);
//!    - `TARGET_CONCURRENCY` > 0 → ⌈Σ in-flight / `TARGET_CONCURRENCY`⌉ + unhealthy;
//!    - **work** (the balancers' cost estimates, in expected seconds): Σ work in flight on the
//!      containers + work queued in balancers for a free slot (`queued_work_seconds`) > 0 →
//!      ⌈that / (`TARGET_WORK_SECONDS` × CPUs per container)⌉ + unhealthy, CPUs per container
//!      being `WORKER_CPUS`, else 1 (a `WORKER_CPUSET` core, or unknown). A report with queued
//!      work, or with more work than the active containers carry, wakes the scaler at once
//!      ([`decide_now`]); the cooldown still holds it.
//!
//!    The three utilisation signals wait while a container is INIT: the capacity it brings is
//!    not in the signals yet, and scaling again before it takes load would overshoot. (The
//!    concurrency and work signals count INIT containers, so they need no wait.)
//! 6. **Scale down on load**, only when no signal (even one held by a cooldown or a starting
//!    container) proposes more than the active count and nothing is queued, and:
//!    - mean utilisation < `LOW_LOAD_THRESHOLD` continuously for the stabilisation window
//!      (tracked in [`ScalerState::low_since`]: set when it first goes low, cleared as soon as
//!      it is not low or no container is ready);
//!    - `COOLDOWN_PERIOD` has passed since the last scale-down and since the last scale-up;
//!    - active > `MIN_CONTAINERS`.
//!
//!    It removes k = min(`SCALE_STEP`, active − `MIN_CONTAINERS`, ready) containers if that
//!    cannot flap back up. With n ready containers: the projected mean utilisation
//!    mean × n / (n − k) stays < `HIGH_LOAD_THRESHOLD`, the projected mean CPU
//!    mean CPU × n / (n − k) stays < `PRESPAWN_THRESHOLD`, with `TARGET_CONCURRENCY` > 0 the
//!    projected concurrency Σ in-flight / (active − unhealthy − k) stays ≤ `TARGET_CONCURRENCY`,
//!    the projected work Σ work in flight / (active − unhealthy − k) stays ≤
//!    `TARGET_WORK_SECONDS` × CPUs per container, and no work waits in a balancer for a slot.
//!    Removing every ready container (scale to zero, `MIN_CONTAINERS` = 0) needs zero requests in flight
//!    and is projected with n − k taken as 1: the whole load on the one container that scaling
//!    from zero would bring back must stay under the same limits.
//!
//!    The victims are ready containers, those that never served first, then the least busy:
//!    fewest in flight, then lowest utilisation, then id. A scale-down restarts the
//!    stabilisation window.
//!
//! **Removal order** (rules 2 and 4): unhealthy containers first, then INIT ones (starting or
//! still being launched), then ready ones that never served, then the other ready ones; within
//! each, fewest in flight, lowest utilisation, then id. A serving container goes last.
//!
//! Every creation except one for the minimum records the time of the last scale-up; every
//! sundown records the last scale-down.

use std::{
    fmt,
    time::{Duration, Instant},
};

use common::queue::Category;

use crate::score::{validate_load_thresholds, validate_percent};

/// The autoscaler's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingConfig {
    /// `MIN_CONTAINERS`: never fewer active containers.
    pub min_replicas: usize,
    /// `MAX_CONTAINERS`: never more active containers.
    pub max_replicas: usize,
    /// `SCALE_STEP`: containers added or removed per load-based step.
    pub step: usize,
    /// `HIGH_LOAD_THRESHOLD`: mean utilisation % above which to scale up.
    pub high: f64,
    /// `LOW_LOAD_THRESHOLD`: mean utilisation % below which to scale down.
    pub low: f64,
    /// `CRITICAL_LOAD_THRESHOLD`: utilisation % from which one container is critical.
    pub critical: f64,
    /// `PRESPAWN_THRESHOLD`: CPU % from which, on every ready container, to scale up.
    pub prespawn_cpu: f64,
    /// `TARGET_CONCURRENCY`: requests in flight per container; 0 disables the signal.
    pub target_concurrency: f64,
    /// `TARGET_WORK_SECONDS`: expected seconds of work per CPU of a container (> 0).
    pub target_work_seconds: f64,
    /// CPUs per container for the work signal: `WORKER_CPUS`, else one core (pinned with
    /// `WORKER_CPUSET`, or unknown).
    pub worker_cpus: f64,
    /// Minimum time between two scale-ups (`COOLDOWN_PERIOD`).
    pub cooldown_up: Duration,
    /// Minimum time from any scaling to a scale-down (`COOLDOWN_PERIOD`).
    pub cooldown_down: Duration,
    /// How long the mean utilisation must stay low before a scale-down.
    pub stabilization: Duration,
    /// `DRAIN_TIMEOUT`: how long a SUNDOWN container may drain before it is stopped anyway.
    pub drain_timeout: Duration,
}

impl ScalingConfig {
    /// Checks the bounds, step, concurrency target and thresholds; the error names the
    /// variable.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_replicas == 0 {
            return Err("MAX_CONTAINERS must be at least 1".into());
        }
        if self.min_replicas > self.max_replicas {
            return Err(format!(
                "MIN_CONTAINERS ({}) must not exceed MAX_CONTAINERS ({})",
                self.min_replicas, self.max_replicas
            ));
        }
        if self.step == 0 {
            return Err("SCALE_STEP must be at least 1".into());
        }
        if !(self.target_concurrency.is_finite() && self.target_concurrency >= 0.0) {
            return Err(format!(
                "TARGET_CONCURRENCY must be a number >= 0 (0 disables it), got {}",
                self.target_concurrency
            ));
        }
        if !(self.target_work_seconds.is_finite() && self.target_work_seconds > 0.0) {
            return Err(format!(
                "TARGET_WORK_SECONDS must be a number of seconds > 0, got {}",
                self.target_work_seconds
            ));
        }
        if !(self.worker_cpus.is_finite() && self.worker_cpus > 0.0) {
            return Err(format!(
                "WORKER_CPUS must be a CPU count > 0, got {}",
                self.worker_cpus
            ));
        }
        validate_load_thresholds(self.low, self.high, self.critical)?;
        validate_percent("PRESPAWN_THRESHOLD", self.prespawn_cpu)
    }

    /// Expected seconds of work one container is meant to carry:
    /// `TARGET_WORK_SECONDS` × its CPUs.
    pub fn work_per_container(&self) -> f64 {
        self.target_work_seconds * self.worker_cpus
    }
}

/// What the decision needs to know about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub id: String,
    pub category: Category,
    /// 100 − overall score, %.
    pub utilization: f64,
    /// CPU utilisation, % of the container's limit.
    pub cpu_util: f64,
    /// Utilisation at or past the critical threshold.
    pub critical: bool,
    /// Requests in flight, as last reported.
    pub in_flight: u64,
    /// Expected seconds of the requests in flight on it, summed over the balancers' reports.
    pub work_seconds: f64,
    /// When the container was sundowned (SUNDOWN containers only).
    pub sundown_since: Option<Instant>,
    /// It has served requests (a job ran on it, or a balancer had a request in flight on it).
    pub served: bool,
    /// Ready before, now failing its probes (see the module docs).
    pub unhealthy: bool,
}

impl ContainerView {
    fn is_active(&self) -> bool {
        self.category != Category::Sundown
    }

    fn is_ready(&self) -> bool {
        self.is_active() && self.category != Category::Init && !self.unhealthy
    }

    fn is_unhealthy(&self) -> bool {
        self.is_active() && self.unhealthy
    }

    /// The removal order's group: unhealthy, starting, ready and never served, serving.
    fn removal_rank(&self) -> u8 {
        if self.unhealthy {
            0
        } else if !self.is_ready() {
            1
        } else if !self.served {
            2
        } else {
            3
        }
    }

    /// Least busy first: fewest in flight, lowest utilisation, then id.
    fn by_load(a: &Self, b: &Self) -> std::cmp::Ordering {
        a.in_flight
            .cmp(&b.in_flight)
            .then(a.utilization.total_cmp(&b.utilization))
            .then_with(|| a.id.cmp(&b.id))
    }
}

/// One observed snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub now: Instant,
    pub containers: &'a [ContainerView],
    /// Requests waiting in balancers with no backend.
    pub queued_demand: u64,
    /// Expected seconds of the requests waiting in balancers' queues for a free slot.
    pub queued_work_seconds: f64,
    /// A one-off target set through the API (`POST /scale`).
    pub requested_replicas: Option<usize>,
}

/// What the scaler remembers between decisions.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct ScalerState {
    pub last_scale_up: Option<Instant>,
    pub last_scale_down: Option<Instant>,
    /// Since when the mean utilisation has been below the low threshold without a break.
    pub low_since: Option<Instant>,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Containers to create.
    pub create: usize,
    /// Active containers to mark SUNDOWN (they drain, then a later decision stops them); a
    /// load-based scale-down picks ready ones only.
    pub sundown: Vec<String>,
    /// SUNDOWN containers to stop and remove: drained or past their drain timeout.
    pub stop: Vec<String>,
    /// Why the count changes, or why it does not.
    pub reason: Reason,
    /// The state for the next decision.
    pub state: ScalerState,
    /// Active containers once this decision is carried out: active + create − sundown.
    pub desired: usize,
}

/// The signal that would go past its threshold if containers were removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Mean utilisation against `HIGH_LOAD_THRESHOLD`.
    Utilization,
    /// Mean CPU against `PRESPAWN_THRESHOLD`.
    Cpu,
    /// In-flight requests per container against `TARGET_CONCURRENCY`.
    Concurrency,
    /// Expected seconds of work per container against `TARGET_WORK_SECONDS` × its CPUs.
    Work,
    /// Requests waiting in balancers' queues for a free slot.
    QueuedWork,
    /// Requests still in flight with no ready container left.
    InFlight,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Utilization => "mean utilisation",
            Self::Cpu => "mean CPU",
            Self::Concurrency => "requests in flight per container",
            Self::Work => "expected seconds of work per container",
            Self::QueuedWork => "expected seconds of work queued for a slot",
            Self::InFlight => "requests in flight",
        })
    }
}

/// Why a decision changes the container count, or why it does not. Utilisations and
/// thresholds are percentages.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// No signal asks for a change.
    Steady {
        active: usize,
        utilization: Option<f64>,
    },
    /// Fewer active containers than the minimum.
    BelowMinimum { active: usize, min: usize },
    /// More active containers than the maximum.
    AboveMaximum { active: usize, max: usize },
    /// Requests are queued with no backend.
    Demand {
        queued: u64,
        ready: usize,
        starting: usize,
        wanted: usize,
    },
    /// A target set through the API.
    Requested { requested: usize, desired: usize },
    /// Mean utilisation above the high threshold.
    HighLoad { utilization: f64, high: f64 },
    /// A container at or past the critical threshold.
    Critical { id: String, utilization: f64 },
    /// Every ready container at or past the prespawn CPU threshold.
    Prespawn { min_cpu: f64, threshold: f64 },
    /// More requests in flight than the target concurrency allows.
    Concurrency {
        in_flight: u64,
        target: f64,
        wanted: usize,
    },
    /// More expected work (in flight and queued for a slot) than the containers are meant to
    /// carry (`per_container` seconds each).
    Work {
        in_flight_seconds: f64,
        queued_seconds: f64,
        per_container: f64,
        wanted: usize,
    },
    /// Mean utilisation below the low threshold for the whole stabilisation window.
    LowLoad {
        utilization: f64,
        low: f64,
        removed: usize,
        projected: f64,
    },
    /// A signal wants more containers but the maximum is reached.
    AtMaximum { max: usize, wanted: usize },
    /// A signal wants more containers but the scale-up cooldown is running.
    UpCooldown { wanted: usize, remaining: Duration },
    /// A signal wants more containers; the ones starting come first.
    WaitingForStart { starting: usize, wanted: usize },
    /// Load is low, but not yet for the whole stabilisation window.
    Stabilizing {
        utilization: f64,
        remaining: Duration,
    },
    /// Load is low, but the scale-down cooldown is running.
    DownCooldown {
        utilization: f64,
        remaining: Duration,
    },
    /// Load is low, but removing containers would push a signal past its threshold.
    WouldOverload {
        removed: usize,
        signal: Signal,
        projected: f64,
        limit: f64,
    },
}

impl Reason {
    /// A short stable name, for metrics labels and structured logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Steady { .. } => "steady",
            Self::BelowMinimum { .. } => "below_minimum",
            Self::AboveMaximum { .. } => "above_maximum",
            Self::Demand { .. } => "demand",
            Self::Requested { .. } => "requested",
            Self::HighLoad { .. } => "high_load",
            Self::Critical { .. } => "critical",
            Self::Prespawn { .. } => "prespawn",
            Self::Concurrency { .. } => "concurrency",
            Self::Work { .. } => "work",
            Self::LowLoad { .. } => "low_load",
            Self::AtMaximum { .. } => "at_maximum",
            Self::UpCooldown { .. } => "up_cooldown",
            Self::WaitingForStart { .. } => "waiting_for_start",
            Self::Stabilizing { .. } => "stabilizing",
            Self::DownCooldown { .. } => "down_cooldown",
            Self::WouldOverload { .. } => "would_overload",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Steady {
                active,
                utilization: Some(utilization),
            } => write!(
                f,
                "steady at {active} containers, mean utilisation {utilization:.1}%"
            ),
            Self::Steady {
                active,
                utilization: None,
            } => write!(f, "steady at {active} containers, none ready"),
            Self::BelowMinimum { active, min } => {
                write!(f, "{active} active containers, below the minimum of {min}")
            }
            Self::AboveMaximum { active, max } => {
                write!(f, "{active} active containers, above the maximum of {max}")
            }
            Self::Demand {
                queued,
                ready,
                starting,
                wanted,
            } => write!(
                f,
                "{queued} requests queued with no backend ({ready} ready, {starting} starting): \
                 scaling to {wanted}"
            ),
            Self::Requested { requested, desired } => {
                write!(f, "{requested} containers requested: scaling to {desired}")
            }
            Self::HighLoad { utilization, high } => write!(
                f,
                "mean utilisation {utilization:.1}% above the high threshold of {high:.1}%"
            ),
            Self::Critical { id, utilization } => write!(
                f,
                "container {id} critical at {utilization:.1}% utilisation"
            ),
            Self::Prespawn { min_cpu, threshold } => write!(
                f,
                "every ready container at {min_cpu:.1}% CPU or more, past the prespawn \
                 threshold of {threshold:.1}%"
            ),
            Self::Concurrency {
                in_flight,
                target,
                wanted,
            } => write!(
                f,
                "{in_flight} requests in flight at a target of {target} per container: \
                 {wanted} containers needed"
            ),
            Self::Work {
                in_flight_seconds,
                queued_seconds,
                per_container,
                wanted,
            } => write!(
                f,
                "{in_flight_seconds:.1}s of work in flight and {queued_seconds:.1}s queued for \
                 a slot at a target of {per_container:.1}s per container: {wanted} containers \
                 needed"
            ),
            Self::LowLoad {
                utilization,
                low,
                removed,
                projected,
            } => write!(
                f,
                "mean utilisation {utilization:.1}% below the low threshold of {low:.1}%: \
                 removing {removed}, projected {projected:.1}%"
            ),
            Self::AtMaximum { max, wanted } => write!(
                f,
                "{wanted} containers wanted, held at the maximum of {max}"
            ),
            Self::UpCooldown { wanted, remaining } => write!(
                f,
                "{wanted} containers wanted, scale-up cooldown for another {:.1}s",
                remaining.as_secs_f64()
            ),
            Self::WaitingForStart { starting, wanted } => write!(
                f,
                "{wanted} containers wanted, waiting for {starting} starting"
            ),
            Self::Stabilizing {
                utilization,
                remaining,
            } => write!(
                f,
                "mean utilisation {utilization:.1}% is low, stabilising for another {:.1}s",
                remaining.as_secs_f64()
            ),
            Self::DownCooldown {
                utilization,
                remaining,
            } => write!(
                f,
                "mean utilisation {utilization:.1}% is low, scale-down cooldown for another \
                 {:.1}s",
                remaining.as_secs_f64()
            ),
            Self::WouldOverload {
                removed,
                signal,
                projected,
                limit,
            } => write!(
                f,
                "load is low but removing {removed} would bring {signal} to {projected:.1} \
                 (limit {limit:.1})"
            ),
        }
    }
}

/// The pool as the rules see it.
struct Pool<'a> {
    active: usize,
    /// Active, neither ready nor unhealthy (INIT).
    starting: usize,
    /// Active and failing their probes.
    unhealthy: usize,
    /// Ready containers in the load-based victim order: never served first, then least busy.
    ready: Vec<&'a ContainerView>,
    /// Active containers in the removal order (module docs).
    removal: Vec<&'a ContainerView>,
    /// Σ in-flight over active containers that are not unhealthy.
    in_flight: u64,
    /// Σ expected seconds in flight over the same containers.
    work_seconds: f64,
    mean_utilization: Option<f64>,
    mean_cpu: Option<f64>,
}

impl<'a> Pool<'a> {
    fn new(containers: &'a [ContainerView]) -> Self {
        let active: Vec<_> = containers.iter().filter(|c| c.is_active()).collect();
        let mut ready: Vec<_> = active.iter().copied().filter(|c| c.is_ready()).collect();
        ready.sort_by(|a, b| {
            a.served
                .cmp(&b.served)
                .then_with(|| ContainerView::by_load(a, b))
        });
        let mut removal = active.clone();
        removal.sort_by(|a, b| {
            a.removal_rank()
                .cmp(&b.removal_rank())
                .then_with(|| ContainerView::by_load(a, b))
        });
        let unhealthy = active.iter().filter(|c| c.is_unhealthy()).count();
        let mean = |value: fn(&ContainerView) -> f64| {
            let count = ready.len() as f64;
            (!ready.is_empty()).then(|| ready.iter().map(|c| value(c)).sum::<f64>() / count)
        };
        Self {
            active: active.len(),
            starting: active.len() - ready.len() - unhealthy,
            unhealthy,
            in_flight: active
                .iter()
                .filter(|c| !c.is_unhealthy())
                .map(|c| c.in_flight)
                .fold(0, u64::saturating_add),
            work_seconds: active
                .iter()
                .filter(|c| !c.is_unhealthy())
                .map(|c| c.work_seconds)
                .sum(),
            mean_utilization: mean(|c| c.utilization),
            mean_cpu: mean(|c| c.cpu_util),
            ready,
            removal,
        }
    }

    /// The first `k` ready containers of the load-based victim order.
    fn victims(&self, k: usize) -> Vec<String> {
        self.ready.iter().take(k).map(|c| c.id.clone()).collect()
    }

    /// The first `k` active containers of the removal order.
    fn removals(&self, k: usize) -> Vec<String> {
        self.removal.iter().take(k).map(|c| c.id.clone()).collect()
    }

    fn steady(&self) -> Reason {
        Reason::Steady {
            active: self.active,
            utilization: self.mean_utilization,
        }
    }
}

/// A count proposed by a load signal.
struct Proposal {
    wanted: usize,
    reason: Reason,
    /// A utilisation signal, which waits for INIT containers.
    waits_for_start: bool,
}

/// What one decision changes in the pool.
struct Plan {
    create: usize,
    sundown: Vec<String>,
    reason: Reason,
}

impl Plan {
    fn hold(reason: Reason) -> Self {
        Self {
            create: 0,
            sundown: Vec::new(),
            reason,
        }
    }
}

/// Everything one decision looks at.
struct Context<'a> {
    now: Instant,
    config: &'a ScalingConfig,
    state: &'a ScalerState,
    pool: Pool<'a>,
    min: usize,
    max: usize,
    step: usize,
    queued: u64,
    /// The count queued demand asks for (rule 3), before clamping.
    demand_wanted: Option<usize>,
    /// Expected seconds of work queued in balancers for a free slot.
    queued_work: f64,
}

/// Decides what to create, sundown and stop now (rules in the module docs).
pub fn decide(obs: &Observation, config: &ScalingConfig, state: &ScalerState) -> Decision {
    let context = Context::new(obs, config, state);
    let mut next = state.clone();
    next.low_since = match context.pool.mean_utilization {
        Some(mean) if mean < config.low => state.low_since.or(Some(obs.now)),
        _ => None,
    };
    let plan = match obs.requested_replicas {
        Some(requested) => context.requested(requested, &mut next),
        None => context.autoscale(&mut next),
    };
    Decision {
        desired: context.pool.active + plan.create - plan.sundown.len(),
        create: plan.create,
        sundown: plan.sundown,
        stop: drained(obs.containers, obs.now, config.drain_timeout),
        reason: plan.reason,
        state: next,
    }
}

impl<'a> Context<'a> {
    fn new(obs: &Observation<'a>, config: &'a ScalingConfig, state: &'a ScalerState) -> Self {
        let pool = Pool::new(obs.containers);
        let max = config.max_replicas;
        let step = config.step.max(1);
        // Ready + unhealthy + extra: the starting containers count toward it, the unhealthy
        // ones do not.
        let demand_wanted = (obs.queued_demand > 0).then(|| {
            let extra = if config.target_concurrency > 0.0 {
                ceil_div(obs.queued_demand, config.target_concurrency).max(1)
            } else {
                step
            };
            pool.active
                .max(pool.ready.len() + pool.unhealthy.saturating_add(extra))
        });
        Self {
            now: obs.now,
            config,
            state,
            min: config.min_replicas.min(max),
            max,
            step,
            queued: obs.queued_demand,
            demand_wanted,
            queued_work: obs.queued_work_seconds.max(0.0),
            pool,
        }
    }

    /// Rule 4: the requested count, within bounds and raised to what demand needs.
    fn requested(&self, requested: usize, next: &mut ScalerState) -> Plan {
        let active = self.pool.active;
        let demand_floor = self.demand_wanted.map_or(0, |wanted| wanted.min(self.max));
        let wanted = requested.clamp(self.min, self.max).max(demand_floor);
        next.low_since = None;
        let (create, sundown) = if wanted > active {
            next.last_scale_up = Some(self.now);
            (wanted - active, Vec::new())
        } else {
            let victims = self.pool.removals(active - wanted);
            if !victims.is_empty() {
                next.last_scale_down = Some(self.now);
            }
            (0, victims)
        };
        let desired = active + create - sundown.len();
        Plan {
            create,
            sundown,
            reason: Reason::Requested { requested, desired },
        }
    }

    /// Rules 2, 3, 5 and 6.
    fn autoscale(&self, next: &mut ScalerState) -> Plan {
        let active = self.pool.active;
        let proposals = self.load_proposals();
        let up_ready = elapsed(self.state.last_scale_up, self.now, self.config.cooldown_up);
        if let Some((wanted, reason)) = self.scale_up(&proposals, up_ready.is_ok()) {
            if !matches!(reason, Reason::BelowMinimum { .. }) {
                next.last_scale_up = Some(self.now);
            }
            return Plan {
                create: wanted - active,
                sundown: Vec::new(),
                reason,
            };
        }
        if active > self.max {
            next.last_scale_down = Some(self.now);
            next.low_since = None;
            return Plan {
                create: 0,
                sundown: self.pool.removals(active - self.max),
                reason: Reason::AboveMaximum {
                    active,
                    max: self.max,
                },
            };
        }
        if let Some(reason) = self.up_held(&proposals, up_ready) {
            return Plan::hold(reason);
        }
        match self.scale_down(next) {
            Ok((sundown, reason)) => {
                next.last_scale_down = Some(self.now);
                next.low_since = None;
                Plan {
                    create: 0,
                    sundown,
                    reason,
                }
            }
            Err(reason) => Plan::hold(reason),
        }
    }

    /// Rule 5's proposals, before cooldowns and clamping. Ties go to the first.
    fn load_proposals(&self) -> Vec<Proposal> {
        let (pool, config) = (&self.pool, self.config);
        let plus_step = pool.active.saturating_add(self.step);
        let mut proposals = Vec::new();
        if let Some(mean) = pool.mean_utilization.filter(|&mean| mean > config.high) {
            proposals.push(Proposal {
                wanted: plus_step,
                reason: Reason::HighLoad {
                    utilization: mean,
                    high: config.high,
                },
                waits_for_start: true,
            });
        }
        let worst_critical = pool
            .ready
            .iter()
            .filter(|c| c.critical)
            .max_by(|a, b| a.utilization.total_cmp(&b.utilization));
        if let Some(worst) = worst_critical {
            proposals.push(Proposal {
                wanted: plus_step,
                reason: Reason::Critical {
                    id: worst.id.clone(),
                    utilization: worst.utilization,
                },
                waits_for_start: true,
            });
        }
        let min_cpu = pool
            .ready
            .iter()
            .map(|c| c.cpu_util)
            .min_by(f64::total_cmp)
            .filter(|&cpu| cpu >= config.prespawn_cpu);
        if let Some(min_cpu) = min_cpu {
            proposals.push(Proposal {
                wanted: plus_step,
                reason: Reason::Prespawn {
                    min_cpu,
                    threshold: config.prespawn_cpu,
                },
                waits_for_start: true,
            });
        }
        if config.target_concurrency > 0.0 {
            let wanted =
                ceil_div(pool.in_flight, config.target_concurrency).saturating_add(pool.unhealthy);
            proposals.push(Proposal {
                wanted,
                reason: Reason::Concurrency {
                    in_flight: pool.in_flight,
                    target: config.target_concurrency,
                    wanted,
                },
                waits_for_start: false,
            });
        }
        let work = pool.work_seconds + self.queued_work;
        if work > 0.0 {
            let per_container = config.work_per_container();
            let wanted = ceil_seconds(work, per_container).saturating_add(pool.unhealthy);
            proposals.push(Proposal {
                wanted,
                reason: Reason::Work {
                    in_flight_seconds: pool.work_seconds,
                    queued_seconds: self.queued_work,
                    per_container,
                    wanted,
                },
                waits_for_start: false,
            });
        }
        proposals
    }

    /// The largest count above the active one, clamped to the maximum, with its reason:
    /// minimum and demand at any time, load proposals once the cooldown has passed and (for
    /// the utilisation signals) no container is starting. Ties go to the minimum, then demand,
    /// then the load signals in their order.
    fn scale_up(&self, proposals: &[Proposal], cooled_down: bool) -> Option<(usize, Reason)> {
        let active = self.pool.active;
        let minimum = (
            self.min,
            Reason::BelowMinimum {
                active,
                min: self.min,
            },
        );
        let demand = self.demand_wanted.map(|wanted| {
            let reason = Reason::Demand {
                queued: self.queued,
                ready: self.pool.ready.len(),
                starting: self.pool.starting,
                wanted: wanted.min(self.max),
            };
            (wanted, reason)
        });
        let load = proposals
            .iter()
            .filter(|p| cooled_down && !(p.waits_for_start && self.pool.starting > 0))
            .map(|p| (p.wanted, p.reason.clone()));
        std::iter::once(minimum)
            .chain(demand)
            .chain(load)
            .map(|(wanted, reason)| (wanted.min(self.max), reason))
            .filter(|&(wanted, _)| wanted > active)
            .fold(None, |best, (wanted, reason)| match best {
                Some((top, _)) if top >= wanted => best,
                _ => Some((wanted, reason)),
            })
    }

    /// Why a signal that wants more containers does not get them now, if one does: then
    /// nothing scales down either.
    fn up_held(&self, proposals: &[Proposal], up_ready: Result<(), Duration>) -> Option<Reason> {
        let active = self.pool.active;
        let (wanted, waits_for_start) = proposals
            .iter()
            .map(|p| (p.wanted, p.waits_for_start))
            .chain(self.demand_wanted.map(|wanted| (wanted, false)))
            .filter(|&(wanted, _)| wanted > active)
            .max_by_key(|&(wanted, _)| wanted)?;
        let starting = self.pool.starting;
        Some(if active >= self.max {
            Reason::AtMaximum {
                max: self.max,
                wanted,
            }
        } else if waits_for_start && starting > 0 {
            Reason::WaitingForStart { starting, wanted }
        } else if let Err(remaining) = up_ready {
            Reason::UpCooldown { wanted, remaining }
        } else {
            // Not reached: `scale_up` takes any other proposal past the active count.
            self.pool.steady()
        })
    }

    /// Rule 6: the victims and reason of a load-based scale-down, or why there is none.
    fn scale_down(&self, next: &ScalerState) -> Result<(Vec<String>, Reason), Reason> {
        let (pool, config) = (&self.pool, self.config);
        if self.demand_wanted.is_some() {
            // Queued demand already covered by the containers starting.
            return Err(Reason::WaitingForStart {
                starting: pool.starting,
                wanted: pool.active,
            });
        }
        let (Some(mean), Some(low_since)) = (pool.mean_utilization, next.low_since) else {
            return Err(pool.steady());
        };
        let k = self
            .step
            .min(pool.active.saturating_sub(self.min))
            .min(pool.ready.len());
        if k == 0 {
            return Err(pool.steady());
        }
        elapsed(Some(low_since), self.now, config.stabilization).map_err(|remaining| {
            Reason::Stabilizing {
                utilization: mean,
                remaining,
            }
        })?;
        elapsed(self.state.last_scale_down, self.now, config.cooldown_down)
            .and(elapsed(
                self.state.last_scale_up,
                self.now,
                config.cooldown_down,
            ))
            .map_err(|remaining| Reason::DownCooldown {
                utilization: mean,
                remaining,
            })?;
        let projected = self.projected_after_removing(k, mean)?;
        let reason = Reason::LowLoad {
            utilization: mean,
            low: config.low,
            removed: k,
            projected,
        };
        Ok((pool.victims(k), reason))
    }

    /// The mean utilisation once `k` ready containers are gone, if no signal would then
    /// propose scaling back up. Removing every ready container (scale to zero) needs nothing
    /// in flight, and is projected as the whole load on one container: what scaling from zero
    /// would bring back.
    fn projected_after_removing(&self, k: usize, mean: f64) -> Result<f64, Reason> {
        let (pool, config) = (&self.pool, self.config);
        let overload = |signal, projected, limit| Reason::WouldOverload {
            removed: k,
            signal,
            projected,
            limit,
        };
        let n = pool.ready.len();
        if n == k && pool.in_flight > 0 {
            return Err(overload(Signal::InFlight, pool.in_flight as f64, 0.0));
        }
        let scale = n as f64 / (n - k).max(1) as f64;
        let projected = mean * scale;
        if projected >= config.high {
            return Err(overload(Signal::Utilization, projected, config.high));
        }
        let cpu = pool.mean_cpu.unwrap_or(0.0) * scale;
        if cpu >= config.prespawn_cpu {
            return Err(overload(Signal::Cpu, cpu, config.prespawn_cpu));
        }
        let serving = (pool.active - pool.unhealthy - k).max(1) as f64;
        if config.target_concurrency > 0.0 {
            let per_container = pool.in_flight as f64 / serving;
            if per_container > config.target_concurrency {
                return Err(overload(
                    Signal::Concurrency,
                    per_container,
                    config.target_concurrency,
                ));
            }
        }
        if self.queued_work > 0.0 {
            return Err(overload(Signal::QueuedWork, self.queued_work, 0.0));
        }
        let work = pool.work_seconds / serving;
        if work > config.work_per_container() {
            return Err(overload(Signal::Work, work, config.work_per_container()));
        }
        Ok(projected)
    }
}

/// SUNDOWN containers with nothing in flight or past their drain timeout.
fn drained(containers: &[ContainerView], now: Instant, drain_timeout: Duration) -> Vec<String> {
    containers
        .iter()
        .filter(|c| c.category == Category::Sundown)
        .filter(|c| {
            c.in_flight == 0
                || c.sundown_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= drain_timeout)
        })
        .map(|c| c.id.clone())
        .collect()
}

/// `Ok` once `period` has passed since `since` (or there was no `since`), else the time left.
fn elapsed(since: Option<Instant>, now: Instant, period: Duration) -> Result<(), Duration> {
    match since {
        Some(since) => {
            let passed = now.saturating_duration_since(since);
            if passed >= period {
                Ok(())
            } else {
                Err(period - passed)
            }
        }
        None => Ok(()),
    }
}

/// ⌈`seconds` / `per`⌉ for `per` > 0, saturating.
fn ceil_seconds(seconds: f64, per: f64) -> usize {
    // `as` saturates for floats out of range (and maps NaN to 0).
    (seconds / per).ceil() as usize
}

/// Whether the balancers' load calls for a decision now rather than at the next period:
/// requests queued with no backend, work queued for a free slot, more in flight than
/// `TARGET_CONCURRENCY` allows, or more expected work (in flight and queued) than
/// `TARGET_WORK_SECONDS` × CPUs per container. The cooldowns still hold the decision back.
pub fn decide_now(
    containers: &[ContainerView],
    queued_demand: u64,
    queued_work_seconds: f64,
    config: &ScalingConfig,
) -> bool {
    if queued_demand > 0 || queued_work_seconds > 0.0 {
        return true;
    }
    let pool = Pool::new(containers);
    let active = pool.active as f64;
    let concurrency = config.target_concurrency > 0.0
        && pool.in_flight as f64 > config.target_concurrency * active;
    concurrency || pool.work_seconds > config.work_per_container() * active
}

/// ⌈`count` / `per`⌉ for `per` > 0, saturating.
fn ceil_div(count: u64, per: f64) -> usize {
    // `as` saturates for floats out of range.
    (count as f64 / per).ceil() as usize
}

#[cfg(test)]
mod tests;
