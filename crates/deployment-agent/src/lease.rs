//! Leader election among agents: a lease in Redis with a fencing epoch.
//!
//! Several agents share one Redis. At most one of them leads: the one holding the lease key.
//! The [`Elector`] task of every agent, every `lease / 3`:
//! - as a follower, tries to take the lease (`SET NX PX lease`, and only when that succeeded
//!   `INCR` of the epoch and a write of the leader's info, all in one Lua script), learning the
//!   current leader when it is taken;
//! - as the leader, renews it (compare-and-`PEXPIRE` in one script), and steps down as soon as
//!   a renew fails, is refused or its deadline passes;
//! - writes its own entry in the agents hash (its heartbeat) and reads everyone's.
//!
//! **The leader acts only before its renew deadline**: the start of its last successful renew
//! (or acquire), measured on its own monotonic clock *before* the Redis call, plus
//! `lease * 2/3`. Redis set the expiry after that instant, so the deadline falls at least
//! `lease / 3` before the key can expire and another agent can take it: even a leader whose
//! process froze stops acting ([`Elector::acting_epoch`] checks the clock itself) before a
//! successor can start. Every Redis call has a timeout shorter than `lease / 3`, so a hung
//! Redis cannot stretch leadership either. The epoch only grows (it is never reset), one step
//! per new leadership; the store fences desired-state writes with `<agent_id>/<epoch>`
//! ([`Elector::fence`]).
//!
//! A leader whose renew failed (not refused) may take its own lease back, with the same epoch,
//! while the key still holds its value: a slow answer from Redis costs one round, not a
//! takeover. On shutdown the leader deletes the key if it still holds it (compare-and-delete),
//! so a follower takes over at its next attempt.
//!
//! # Redis keys
//!
//! | Key | Type | Content |
//! |-----|------|---------|
//! | `{prefix}:leader` | string, PX = lease | `<agent_id>/<epoch>` of the leader |
//! | `{prefix}:leader:epoch` | integer | the last epoch handed out (never reset; should Redis lose it, the next leader still goes above the highest epoch it saw) |
//! | `{prefix}:leader:info` | string | JSON [`LeaderInfo`] of the last leader |
//! | `{prefix}:agents` | hash | agent id -> JSON [`AgentInfo`]; entries older than 3 leases are ignored, those older than 10 leases deleted by the leader |

use std::{
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::CancellationToken;
use redis::{
    RedisError,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, error, info, warn};

use crate::store::Fence;

/// Longest any one Redis call may take, whatever the lease (shorter ones get `lease / 6`).
const CALL_TIMEOUT_MAX: Duration = Duration::from_secs(1);
/// Agents not seen for this many leases are left out of [`Elector::agents`].
const AGENT_FRESH_LEASES: u32 = 3;
/// Agents not seen for this many leases are deleted from the hash by the leader.
const AGENT_FORGET_LEASES: u32 = 10;
/// An agent that stepped down takes the lead again within its hold only once the lease has
/// stayed free this many leases: the other candidates had their chance and none took it.
const HOLD_VACANT_LEASES: u32 = 2;

/// Takes the lease if nobody holds it: `SET NX PX`, then the next epoch and the leader's info.
/// A lease still holding `ARGV[5]` (this agent's last value; empty for none) is renewed
/// instead, keeping its epoch. The new epoch is above `ARGV[6]`, the highest this agent has
/// seen, so it keeps growing even if Redis lost the counter. Returns `{2, value, info}` when
/// taken with a new epoch, `{1, value, info}` when taken back, `{0, holder's value, holder's
/// info or ''}` otherwise. `KEYS`: leader, epoch, info. `ARGV`: id, lease ms, info JSON before
/// the epoch, after it, last value, highest epoch seen.
const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if held then
  local info = redis.call('GET', KEYS[3]) or ''
  if ARGV[5] ~= '' and held == ARGV[5] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, held, info}
  end
  return {0, held, info}
end
local epoch = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[6])
if epoch <= floor then
  epoch = floor + 1
  redis.call('SET', KEYS[2], epoch)
end
local value = ARGV[1] .. '/' .. epoch
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
local info = ARGV[3] .. epoch .. ARGV[4]
redis.call('SET', KEYS[3], info)
return {2, value, info}
";

/// Extends the lease while it holds `ARGV[1]`: 1 if renewed, 0 if someone else holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Deletes the lease while it holds `ARGV[1]`: 1 if deleted.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// How other agents reach this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUrls {
    /// `http://HOST:HTTP_PORT`.
    pub http: String,
    /// `ws://HOST:WS_PORT/ws`.
    pub ws: String,
    /// `http://HOST:GRPC_PORT`.
    pub grpc: String,
}

impl AgentUrls {
    /// The three URLs of an agent at `host` (a name or an address; IPv6 gets brackets).
    pub fn new(host: &str, http_port: u16, ws_port: u16, grpc_port: u16) -> AgentUrls {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        AgentUrls {
            http: format!("http://{host}:{http_port}"),
            ws: format!("ws://{host}:{ws_port}/ws"),
            grpc: format!("http://{host}:{grpc_port}"),
        }
    }
}

/// How the election is set up.
#[derive(Clone)]
pub struct LeaseConfig {
    pub redis_url: String,
    /// The store's key prefix, `rustybalancer:<APP_IDENTIFIER>`.
    pub prefix: String,
    /// This agent's id (AGENT_ID): no `/`, no whitespace.
    pub agent_id: String,
    /// LEADER_LEASE: the lease's length; renewed every third of it.
    pub lease: Duration,
    pub urls: AgentUrls,
    /// Whether this agent may lead. With AGENT_RUNTIME=swarm only an agent on a manager node
    /// can (the Swarm API answers only there); the others follow, heartbeat and observe.
    pub candidate: bool,
}

impl fmt::Debug for LeaseConfig {
    // The URL may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseConfig")
            .field("redis_url", &"<set>")
            .field("prefix", &self.prefix)
            .field("agent_id", &self.agent_id)
            .field("lease", &self.lease)
            .field("urls", &self.urls)
            .field("candidate", &self.candidate)
            .finish()
    }
}

/// The leader, as it published itself when it took the lease (`{prefix}:leader:info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub id: String,
    pub epoch: u64,
    /// When it took the lease (Unix ms).
    pub since_ms: u64,
    pub http_url: String,
    pub ws_url: String,
    pub grpc_url: String,
}

/// One agent's heartbeat (`{prefix}:agents`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: String,
    pub http_url: String,
    pub ws_url: String,
    pub grpc_url: String,
    /// When it last wrote its entry (Unix ms, its own clock).
    pub seen_ms: u64,
}

/// What this agent is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Holds the lease with `epoch` since `since_ms` (Unix ms). Whether it may still act is
    /// [`Elector::acting_epoch`]'s answer.
    Leader { epoch: u64, since_ms: u64 },
    /// Someone else leads (`None`: nobody known, e.g. Redis unreachable).
    Follower { leader: Option<LeaderInfo> },
}

impl Role {
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }

    /// `"leader"` or `"follower"`, as `/status` shows it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Leader { .. } => "leader",
            Role::Follower { .. } => "follower",
        }
    }
}

/// A cheap handle to this agent's election; clones share one task.
#[derive(Clone)]
pub struct Elector {
    shared: Arc<Shared>,
}

struct Shared {
    agent_id: String,
    urls: AgentUrls,
    /// Zero when alone.
    lease: Duration,
    /// The lease key; `None` when alone (nothing to fence).
    leader_key: Option<String>,
    role: watch::Sender<Role>,
    state: Mutex<State>,
    leader_changes: AtomicU64,
    /// Whether this agent may lead now ([`LeaseConfig::candidate`], then
    /// [`Elector::set_candidate`]).
    candidate: std::sync::atomic::AtomicBool,
    /// Set by [`Elector::step_down`]: until this instant this agent yields the lead to the
    /// other candidates (see [`HOLD_VACANT_LEASES`]).
    hold_off: Mutex<Option<Instant>>,
    /// Cancelled once the task has ended (and released the lease).
    stopped: CancellationToken,
    /// Test hook: while set, the task makes no call at all, as if its process were frozen.
    #[cfg(test)]
    frozen: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    acting: Option<Acting>,
    /// The last epoch this agent held (0: never), for the fence.
    last_epoch: u64,
    /// The highest epoch seen, held or observed: a new one must be above it.
    max_epoch: u64,
    leader: Option<LeaderInfo>,
    /// Sorted by id.
    agents: Vec<AgentInfo>,
    /// The last leader seen, `(id, epoch)`, to count changes.
    last_seen: Option<(String, u64)>,
}

struct Acting {
    epoch: u64,
    /// The renew deadline; `None` when alone.
    until: Option<Instant>,
}

impl Elector {
    /// Starts the election task. It never fails: with Redis unreachable (or the URL invalid)
    /// the agent follows, leaderless, and keeps trying. On `shutdown` it releases the lease if
    /// it holds it, then stops ([`Elector::stopped`]).
    pub fn start(config: LeaseConfig, shutdown: CancellationToken) -> Elector {
        let keys = Keys::new(&config.prefix);
        let shared = Arc::new(Shared {
            agent_id: config.agent_id.clone(),
            urls: config.urls.clone(),
            lease: config.lease,
            leader_key: Some(keys.leader.clone()),
            role: watch::Sender::new(Role::Follower { leader: None }),
            state: Mutex::new(State::default()),
            leader_changes: AtomicU64::new(0),
            candidate: std::sync::atomic::AtomicBool::new(config.candidate),
            hold_off: Mutex::new(None),
            stopped: CancellationToken::new(),
            #[cfg(test)]
            frozen: std::sync::atomic::AtomicBool::new(false),
        });
        let client = redis::Client::open(config.redis_url.as_str())
            .inspect_err(|err| {
                // Not the URL itself: it may carry a password.
                error!(cause = %err, "invalid redis url; this agent never leads");
            })
            .ok();
        let tick = config.lease / 3;
        let task = Task {
            shared: shared.clone(),
            client,
            conn: None,
            keys,
            tick,
            timeout: (tick / 2).min(CALL_TIMEOUT_MAX),
            held: None,
            forget: Vec::new(),
            vacant_since: None,
            config,
        };
        tokio::spawn(task.run(shutdown));
        Elector { shared }
    }

    /// One agent alone (AGENT_REPLICAS=1): always the leader, epoch 0, no Redis, no fence.
    pub fn solo(agent_id: String, urls: AgentUrls) -> Elector {
        let since_ms = now_ms();
        let stopped = CancellationToken::new();
        stopped.cancel();
        let leader = LeaderInfo {
            id: agent_id.clone(),
            epoch: 0,
            since_ms,
            http_url: urls.http.clone(),
            ws_url: urls.ws.clone(),
            grpc_url: urls.grpc.clone(),
        };
        let shared = Arc::new(Shared {
            agent_id: agent_id.clone(),
            urls,
            lease: Duration::ZERO,
            leader_key: None,
            role: watch::Sender::new(Role::Leader { epoch: 0, since_ms }),
            state: Mutex::new(State {
                acting: Some(Acting {
                    epoch: 0,
                    until: None,
                }),
                last_epoch: 0,
                max_epoch: 0,
                leader: Some(leader),
                agents: Vec::new(),
                last_seen: Some((agent_id, 0)),
            }),
            leader_changes: AtomicU64::new(1),
            candidate: std::sync::atomic::AtomicBool::new(true),
            hold_off: Mutex::new(None),
            stopped,
            #[cfg(test)]
            frozen: std::sync::atomic::AtomicBool::new(false),
        });
        Elector { shared }
    }

    /// Whether this agent may lead from now on. An agent that leads and is no longer a
    /// candidate (with the Swarm runtime: its node's engine stopped answering, or the node is
    /// no longer a manager) releases the lease at its next round, so that another leads; it
    /// campaigns again once it is a candidate again. No effect when alone.
    pub fn set_candidate(&self, candidate: bool) {
        let was = self.shared.candidate.swap(candidate, Ordering::Relaxed);
        if was != candidate && !self.is_solo() {
            if candidate {
                info!("this agent may lead again");
            } else {
                warn!("this agent may not lead now; it steps down if it leads");
            }
        }
    }

    /// Hands the lead over: a leader releases the lease at its next round (within a third
    /// of the lease), and for `hold` this agent yields to the other candidates: it campaigns
    /// only once the lease has stayed free for [`HOLD_VACANT_LEASES`] leases (no other agent
    /// could take it), so a step-down never leaves the agents without a leader for longer.
    /// Returns false, changing nothing, unless it leads in an election.
    pub fn step_down(&self, hold: Duration) -> bool {
        if self.is_solo() || !self.shared.is_acting() {
            return false;
        }
        *self
            .shared
            .hold_off
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + hold);
        info!(
            ?hold,
            "stepping down as asked; yielding the lead to the other agents for the hold"
        );
        true
    }

    pub fn agent_id(&self) -> &str {
        &self.shared.agent_id
    }

    /// Whether this agent leads alone (no lease).
    pub fn is_solo(&self) -> bool {
        self.shared.leader_key.is_none()
    }

    /// This agent's role, updated as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.shared.role.subscribe()
    }

    /// The epoch to act with, `None` when this agent must not act: only while it leads and
    /// its renew deadline has not passed, checked on the clock now (not what the task last
    /// noticed). Alone, always `Some(0)`.
    pub fn acting_epoch(&self) -> Option<u64> {
        let state = self.shared.lock();
        let acting = state.acting.as_ref()?;
        match acting.until {
            Some(until) if Instant::now() >= until => None,
            _ => Some(acting.epoch),
        }
    }

    /// The instant this agent stops acting unless it renews; `None` when it does not lead or
    /// leads alone.
    pub fn renew_deadline(&self) -> Option<Instant> {
        self.shared.lock().acting.as_ref()?.until
    }

    /// The current leader as last seen (this agent itself when it leads); `None` when unknown.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.shared.lock().leader.clone()
    }

    /// The agents that wrote their heartbeat within the last 3 leases, as of the last read,
    /// sorted by id. Alone, just this one.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let now = now_ms();
        if self.is_solo() {
            return vec![self.shared.agent_info(now)];
        }
        let fresh = millis(self.shared.lease * AGENT_FRESH_LEASES);
        self.shared
            .lock()
            .agents
            .iter()
            .filter(|agent| now.saturating_sub(agent.seen_ms) <= fresh)
            .cloned()
            .collect()
    }

    /// Leader changes this agent observed (a new `(id, epoch)`, itself included), since start
    /// (`agent_leader_changes_total`).
    pub fn leader_changes(&self) -> u64 {
        self.shared.leader_changes.load(Ordering::SeqCst)
    }

    /// What the store needs to fence desired-state writes: the lease key and
    /// `<agent_id>/<epoch>` of this agent's current or last lease (`/0`, which never holds,
    /// if it never led). It holds in Redis only while this agent's lease is there, so a
    /// follower's writes are dropped. `None` alone: nothing to fence.
    pub fn fence(&self) -> Option<Fence> {
        let key = self.shared.leader_key.clone()?;
        let epoch = {
            let state = self.shared.lock();
            state
                .acting
                .as_ref()
                .map_or(state.last_epoch, |acting| acting.epoch)
        };
        Some(Fence {
            key,
            value: lease_value(&self.shared.agent_id, epoch),
        })
    }

    /// Resolves once the task has stopped after shutdown (having released the lease if it
    /// held it). At once when alone.
    pub async fn stopped(&self) {
        self.shared.stopped.cancelled().await;
    }

    /// Test hook: freezes (or thaws) the task, which then makes no call and changes nothing,
    /// like a process stopped with SIGSTOP.
    #[cfg(test)]
    pub(crate) fn freeze(&self, frozen: bool) {
        self.shared.frozen.store(frozen, Ordering::SeqCst);
    }
}

impl fmt::Debug for Elector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Elector")
            .field("agent_id", &self.shared.agent_id)
            .field("role", &*self.shared.role.borrow())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn agent_info(&self, seen_ms: u64) -> AgentInfo {
        AgentInfo {
            id: self.agent_id.clone(),
            http_url: self.urls.http.clone(),
            ws_url: self.urls.ws.clone(),
            grpc_url: self.urls.grpc.clone(),
            seen_ms,
        }
    }

    fn set_role(&self, role: Role) {
        self.role.send_if_modified(|current| {
            if *current == role {
                return false;
            }
            *current = role;
            true
        });
    }

    /// Counts a leader not seen before.
    fn observe(state: &mut State, shared_changes: &AtomicU64, leader: Option<&LeaderInfo>) {
        let Some(leader) = leader else {
            return;
        };
        state.max_epoch = state.max_epoch.max(leader.epoch);
        let seen = (leader.id.clone(), leader.epoch);
        if state.last_seen.as_ref() != Some(&seen) {
            state.last_seen = Some(seen);
            shared_changes.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Leads with `held` until `until`.
    fn lead(&self, held: &Held, until: Instant) {
        {
            let mut state = self.lock();
            state.acting = Some(Acting {
                epoch: held.info.epoch,
                until: Some(until),
            });
            state.last_epoch = held.info.epoch;
            state.leader = Some(held.info.clone());
            Shared::observe(&mut state, &self.leader_changes, Some(&held.info));
        }
        self.set_role(Role::Leader {
            epoch: held.info.epoch,
            since_ms: held.info.since_ms,
        });
    }

    /// Follows `leader` (`None`: unknown), no longer acting.
    fn follow(&self, leader: Option<LeaderInfo>) {
        {
            let mut state = self.lock();
            state.acting = None;
            Shared::observe(&mut state, &self.leader_changes, leader.as_ref());
            state.leader.clone_from(&leader);
        }
        self.set_role(Role::Follower { leader });
    }

    fn is_acting(&self) -> bool {
        self.lock().acting.is_some()
    }

    /// Whether this agent may campaign now: a candidate that is not yielding after a step
    /// down, or that yields but has seen the lease free since `vacant_since` for
    /// [`HOLD_VACANT_LEASES`] leases.
    fn may_lead(&self, vacant_since: Option<Instant>, lease: Duration) -> bool {
        if !self.candidate.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        let yielding = self
            .hold_off
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| now < until);
        !yielding
            || vacant_since
                .is_some_and(|since| now.duration_since(since) >= lease * HOLD_VACANT_LEASES)
    }

    /// Whether this agent yields the lead after a step-down.
    fn yielding(&self) -> bool {
        self.hold_off
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Ends a step-down's hold early (this agent took the lease that nobody else took).
    fn end_hold(&self) {
        self.hold_off
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    #[cfg(test)]
    fn frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    #[cfg(not(test))]
    fn frozen(&self) -> bool {
        false
    }
}

/// The key layout (see the module docs).
struct Keys {
    leader: String,
    epoch: String,
    info: String,
    agents: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            leader: format!("{prefix}:leader"),
            epoch: format!("{prefix}:leader:epoch"),
            info: format!("{prefix}:leader:info"),
            agents: format!("{prefix}:agents"),
        }
    }
}

/// The lease this agent holds or last held.
struct Held {
    /// `<agent_id>/<epoch>`.
    value: String,
    info: LeaderInfo,
}

/// Why a Redis call failed.
#[derive(Debug, thiserror::Error)]
enum LeaseError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no valid redis url")]
    NoClient,
}

impl LeaseError {
    /// The connection is gone or hung: make a new one.
    fn is_connection(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::NoClient => true,
            Self::Redis(err) => crate::store::connection_lost(err),
        }
    }
}

/// What the lease call of one round found.
enum Outcome {
    /// Taken with a new epoch, or taken back.
    Took {
        held: Held,
        fresh: bool,
    },
    Renewed,
    /// Someone else holds it (their info, if readable).
    HeldBy(Option<LeaderInfo>),
    /// Nobody holds it (read by an agent that yields after a step-down).
    Vacant,
    Refused,
    Failed(LeaseError),
}

/// The one task that talks to Redis for the election.
struct Task {
    shared: Arc<Shared>,
    config: LeaseConfig,
    client: Option<redis::Client>,
    conn: Option<ConnectionManager>,
    keys: Keys,
    tick: Duration,
    /// Of every Redis call.
    timeout: Duration,
    /// The lease this agent holds, or held when a renew failed (to take it back).
    held: Option<Held>,
    /// Stale agent entries to delete with the next heartbeat (when leading).
    forget: Vec<String>,
    /// Since when a yielding agent has seen the lease free, round after round.
    vacant_since: Option<Instant>,
}

impl Task {
    async fn run(mut self, shutdown: CancellationToken) {
        info!(
            agent_id = %self.config.agent_id,
            lease = ?self.config.lease,
            "leader election started"
        );
        let mut next = Instant::now();
        loop {
            let wake = if self.shared.frozen() {
                Instant::now() + self.tick
            } else {
                self.deadline().map_or(next, |deadline| deadline.min(next))
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(wake) => {}
            }
            if self.shared.frozen() {
                continue;
            }
            if self
                .deadline()
                .is_some_and(|deadline| Instant::now() >= deadline)
            {
                warn!(
                    agent_id = %self.config.agent_id,
                    "renew deadline passed without a renew; stepping down"
                );
                self.shared.follow(None);
            }
            let now = Instant::now();
            if now >= next {
                self.round(now).await;
                // A follower tries twice as often, so that it leads soon after a lease ends:
                // at most LEADER_LEASE + LEADER_LEASE / 6 after the leader's last renew.
                let period = if self.shared.lock().acting.is_some() {
                    self.tick
                } else {
                    self.tick / 2
                };
                next = now + period;
            }
        }
        if !self.shared.frozen() {
            self.release().await;
        }
        self.shared.stopped.cancel();
        debug!("leader election stopped");
    }

    /// The renew deadline while acting.
    fn deadline(&self) -> Option<Instant> {
        self.shared.lock().acting.as_ref().and_then(|a| a.until)
    }

    /// One round, started at `started`: renew or try to take the lease, and heartbeat, both at
    /// once.
    async fn round(&mut self, started: Instant) {
        let mut conn = match self.connection().await {
            Ok(conn) => conn,
            Err(err) => {
                self.settle(started, Outcome::Failed(err));
                return;
            }
        };
        let may_lead = self.may_lead();
        if !may_lead && self.held.is_some() {
            self.resign(&mut conn).await;
        }
        let mut heartbeat_conn = conn.clone();
        let (acting, max_epoch) = {
            let state = self.shared.lock();
            (state.acting.is_some(), state.max_epoch)
        };
        let (outcome, agents) = tokio::join!(
            self.lease_call(&mut conn, acting, max_epoch, may_lead),
            self.heartbeat(&mut heartbeat_conn)
        );
        match agents {
            Ok(agents) => self.heard(agents),
            Err(err) => {
                debug!(cause = %err, "agents heartbeat failed");
            }
        }
        self.settle(started, outcome);
    }

    fn may_lead(&self) -> bool {
        self.shared.may_lead(self.vacant_since, self.config.lease)
    }

    async fn connection(&mut self) -> Result<ConnectionManager, LeaseError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let client = self.client.clone().ok_or(LeaseError::NoClient)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0);
        let conn = self
            .timed(ConnectionManager::new_with_config(client, config))
            .await?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, LeaseError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| LeaseError::Timeout(self.timeout))?
            .map_err(LeaseError::from)
    }

    /// Renews when acting, else tries to take the lease (back).
    async fn lease_call(
        &self,
        conn: &mut ConnectionManager,
        acting: bool,
        max_epoch: u64,
        may_lead: bool,
    ) -> Outcome {
        let lease_ms = millis(self.config.lease);
        match (&self.held, acting) {
            (Some(held), true) => {
                let renewed: Result<i64, _> = self
                    .timed(
                        redis::cmd("EVAL")
                            .arg(RENEW)
                            .arg(1)
                            .arg(&self.keys.leader)
                            .arg(&held.value)
                            .arg(lease_ms)
                            .query_async(conn),
                    )
                    .await;
                match renewed {
                    Ok(1) => Outcome::Renewed,
                    Ok(_) => Outcome::Refused,
                    Err(err) => Outcome::Failed(err),
                }
            }
            (None, _) if !may_lead => {
                // May not lead now: only reads who does.
                let read: Result<(Option<String>, Option<String>), _> = self
                    .timed(
                        redis::cmd("MGET")
                            .arg(&self.keys.leader)
                            .arg(&self.keys.info)
                            .query_async(conn),
                    )
                    .await;
                match read {
                    Ok((Some(value), Some(info))) => Outcome::HeldBy(parse_info(&info, &value)),
                    Ok((None, _)) => Outcome::Vacant,
                    Ok(_) => Outcome::HeldBy(None),
                    Err(err) => Outcome::Failed(err),
                }
            }
            (held, _) => {
                let mine = LeaderInfo {
                    id: self.config.agent_id.clone(),
                    epoch: 0,
                    since_ms: now_ms(),
                    http_url: self.config.urls.http.clone(),
                    ws_url: self.config.urls.ws.clone(),
                    grpc_url: self.config.urls.grpc.clone(),
                };
                let (head, tail) = info_around_epoch(&mine);
                let last = held.as_ref().map_or("", |held| held.value.as_str());
                let reply: Result<(i64, String, String), _> = self
                    .timed(
                        redis::cmd("EVAL")
                            .arg(ACQUIRE)
                            .arg(3)
                            .arg(&self.keys.leader)
                            .arg(&self.keys.epoch)
                            .arg(&self.keys.info)
                            .arg(&self.config.agent_id)
                            .arg(lease_ms)
                            .arg(head)
                            .arg(tail)
                            .arg(last)
                            .arg(max_epoch)
                            .query_async(conn),
                    )
                    .await;
                let (code, value, info) = match reply {
                    Ok(reply) => reply,
                    Err(err) => return Outcome::Failed(err),
                };
                let info = parse_info(&info, &value);
                match (code, info) {
                    (1 | 2, Some(info)) => Outcome::Took {
                        held: Held { value, info },
                        fresh: code == 2,
                    },
                    (1 | 2, None) => {
                        // Our own script wrote it: cannot happen unless someone else writes
                        // the info key. Lead anyway with what we know.
                        let epoch = epoch_of(&value).unwrap_or_default();
                        Outcome::Took {
                            held: Held {
                                value,
                                info: LeaderInfo { epoch, ..mine },
                            },
                            fresh: code == 2,
                        }
                    }
                    (_, info) => Outcome::HeldBy(info),
                }
            }
        }
    }

    /// Writes this agent's entry (and deletes forgotten ones), then reads everyone's.
    async fn heartbeat(
        &self,
        conn: &mut ConnectionManager,
    ) -> Result<Vec<(String, String)>, LeaseError> {
        let me = self.shared.agent_info(now_ms());
        let json = serde_json::to_string(&me).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.hset(&self.keys.agents, &me.id, json).ignore();
        if !self.forget.is_empty() {
            pipe.hdel(&self.keys.agents, &self.forget).ignore();
        }
        pipe.hgetall(&self.keys.agents);
        let (agents,): (Vec<(String, String)>,) = self.timed(pipe.query_async(conn)).await?;
        Ok(agents)
    }

    /// Keeps the fresh agents; notes the long-gone ones for the leader to delete.
    fn heard(&mut self, entries: Vec<(String, String)>) {
        let now = now_ms();
        let fresh = millis(self.config.lease * AGENT_FRESH_LEASES);
        let forget = millis(self.config.lease * AGENT_FORGET_LEASES);
        let mut agents = Vec::new();
        self.forget.clear();
        let leading = self.shared.is_acting();
        for (id, json) in entries {
            let Ok(agent) = serde_json::from_str::<AgentInfo>(&json) else {
                debug!(agent = %id, "skipping an unreadable agent entry");
                continue;
            };
            let age = now.saturating_sub(agent.seen_ms);
            if age <= fresh {
                agents.push(agent);
            } else if leading && age > forget {
                self.forget.push(id);
            }
        }
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        self.shared.lock().agents = agents;
    }

    /// Applies what the round's lease call found.
    fn settle(&mut self, started: Instant, outcome: Outcome) {
        let until = started + self.config.lease * 2 / 3;
        let was_acting = self.shared.is_acting();
        if !matches!(outcome, Outcome::Vacant) {
            self.vacant_since = None;
        }
        match outcome {
            Outcome::Renewed => {
                if let Some(held) = &self.held {
                    self.shared.lead(held, until);
                }
            }
            Outcome::Took { held, fresh } => {
                if fresh {
                    info!(
                        agent_id = %held.info.id,
                        epoch = held.info.epoch,
                        "took the leader lease"
                    );
                } else {
                    info!(
                        agent_id = %held.info.id,
                        epoch = held.info.epoch,
                        "took the leader lease back"
                    );
                }
                if self.shared.yielding() {
                    warn!(
                        vacant = ?self.config.lease * HOLD_VACANT_LEASES,
                        "no other agent took the lead this agent stepped down from; leading again"
                    );
                    self.shared.end_hold();
                }
                self.shared.lead(&held, until);
                self.held = Some(held);
            }
            Outcome::Vacant => {
                self.held = None;
                self.vacant_since.get_or_insert(started);
                self.shared.follow(None);
            }
            Outcome::HeldBy(leader) => {
                self.held = None;
                self.shared.follow(leader);
            }
            Outcome::Refused => {
                warn!(
                    agent_id = %self.config.agent_id,
                    "the leader lease is someone else's now; stepping down"
                );
                self.held = None;
                self.shared.follow(None);
            }
            Outcome::Failed(err) => {
                if err.is_connection() {
                    self.conn = None;
                }
                if was_acting {
                    warn!(cause = %err, "could not renew the leader lease; stepping down");
                } else {
                    debug!(cause = %err, "could not reach redis for the leader lease");
                }
                // `held` stays: the lease may be taken back while it holds our value.
                self.shared.follow(None);
            }
        }
    }

    /// Deletes the lease if it still holds ours, and this agent's heartbeat.
    async fn release(&mut self) {
        let Ok(mut conn) = self.connection().await else {
            self.held = None;
            self.shared.follow(None);
            return;
        };
        self.resign(&mut conn).await;
        let _: Result<i64, _> = self
            .timed(
                redis::cmd("HDEL")
                    .arg(&self.keys.agents)
                    .arg(&self.config.agent_id)
                    .query_async(&mut conn),
            )
            .await;
    }

    /// Stops acting at once and gives the lease up if this agent holds it.
    async fn resign(&mut self, conn: &mut ConnectionManager) {
        let held = self.held.take();
        self.shared.follow(None);
        if let Some(held) = held {
            let released: Result<i64, _> = self
                .timed(
                    redis::cmd("EVAL")
                        .arg(RELEASE)
                        .arg(1)
                        .arg(&self.keys.leader)
                        .arg(&held.value)
                        .query_async(conn),
                )
                .await;
            match released {
                Ok(1) => info!(epoch = held.info.epoch, "released the leader lease"),
                Ok(_) => debug!("the leader lease was no longer ours"),
                Err(err) => warn!(cause = %err, "could not release the leader lease"),
            }
        }
    }
}

/// `<agent_id>/<epoch>`, the lease key's value.
fn lease_value(agent_id: &str, epoch: u64) -> String {
    format!("{agent_id}/{epoch}")
}

fn epoch_of(value: &str) -> Option<u64> {
    value.rsplit_once('/')?.1.parse().ok()
}

/// The leader's info as JSON, split where the epoch goes (the acquire script puts it there).
fn info_around_epoch(info: &LeaderInfo) -> (String, String) {
    #[derive(Serialize)]
    struct Tail<'a> {
        since_ms: u64,
        http_url: &'a str,
        ws_url: &'a str,
        grpc_url: &'a str,
    }
    let id = serde_json::to_string(&info.id).unwrap_or_default();
    let tail = serde_json::to_string(&Tail {
        since_ms: info.since_ms,
        http_url: &info.http_url,
        ws_url: &info.ws_url,
        grpc_url: &info.grpc_url,
    })
    .unwrap_or_default();
    (
        format!("{{\"id\":{id},\"epoch\":"),
        format!(",{}", tail.trim_start_matches('{')),
    )
}

/// The info if it is readable and belongs to the lease `value`.
fn parse_info(json: &str, value: &str) -> Option<LeaderInfo> {
    let info: LeaderInfo = serde_json::from_str(json).ok()?;
    (lease_value(&info.id, info.epoch) == value).then_some(info)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
