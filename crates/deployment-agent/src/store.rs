//! The agent's state: the container registry, runtime config overrides, a bounded metrics
//! history per container and a bounded list of scaling events.
//!
//! Memory is the source of truth. Every call updates memory at once and never waits for Redis;
//! one background task (the writer) owns the Redis connection and applies the same changes in
//! order, taking them from a bounded channel. When a change cannot reach Redis (the channel is
//! full, a write fails or takes over a second) it is dropped and the store is marked dirty, as
//! it is when an established connection drops (Redis may come back empty). When Redis answers
//! again (reconnection backs off from 100 ms to 3 s) the writer rewrites the whole state from
//! memory (a resync) and carries on. Memory stays bounded however long Redis is away, and the
//! control loop never blocks on it. Without a Redis URL the store is memory only.
//!
//! # Redis keys
//!
//! Every key starts with the configured prefix, `rustybalancer:<APP_IDENTIFIER>`:
//!
//! | Key | Type | Content |
//! |-----|------|---------|
//! | `{prefix}:containers` | set | ids of the registered containers |
//! | `{prefix}:container:{id}` | hash | `id`, `name`, `address`, `dns_name`, `created_at_ms`, `category` (`INIT`, `LU`, `MU`, `HU`, `SUNDOWN`), and `core_id`, `sundown_since_ms` when set |
//! | `{prefix}:config` | hash | the API's overrides: `min_replicas`, `max_replicas`, `default_containers`, each only when set |
//! | `{prefix}:metrics:{id}` | list | one JSON [`MetricPoint`] per entry, newest first (`LPUSH` + `LTRIM` to `metrics_history`); deleted with its container |
//! | `{prefix}:events` | stream | one JSON [`ScalingEvent`] per entry in the field `json` (`XADD MAXLEN ~ max_events`: trimmed by whole stream nodes, so it may hold up to ~100 more) |
//!
//! A resync rewrites every registered container's hash and the `containers` set, deletes the
//! hash, set member and metrics list of every container that memory no longer has, rewrites
//! the metrics lists memory holds, and rewrites `config` once the overrides are known (loaded
//! from Redis or set through the API), so persisted overrides are never replaced by defaults.
//! Events are best effort: those recorded while Redis was away are not re-appended.
//!
//! # Fencing
//!
//! With several agents only the leader may change the desired state (the registry and the
//! overrides). Once a [`Fence`] is set ([`Store::set_fence`]), every batch of such writes,
//! resyncs included, goes to Redis as one Lua script that first checks that the fence key
//! (the leader lease, `{prefix}:leader`) still holds the fence value (`<agent_id>/<epoch>`)
//! and otherwise applies none of them: a leader that lost its lease cannot overwrite what its
//! successor wrote, however late its writes arrive. Metrics and events are not fenced.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    str::FromStr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{
    RedisError,
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::StreamRangeReply,
};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::{debug, error, info, warn};

pub use crate::model::{
    ConfigOverrides, ContainerRecord, EventKind, MetricPoint, ScalingEvent, Worker,
};

/// Changes waiting for the writer. Past this, changes are dropped and the store resyncs.
const CHANNEL_CAPACITY: usize = 1024;
/// Most changes the writer sends to Redis in one `MULTI`/`EXEC`.
const BATCH_MAX: usize = 128;
/// Longest the writer waits for any one Redis call (or connection attempt).
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest `load` waits for Redis before starting from an empty state.
const LOAD_WAIT: Duration = Duration::from_secs(2);
/// First and longest pause between reconnection attempts (doubling in between).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(3);
/// With nothing to write for this long, the writer pings Redis so `status` stays true.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// Applies a batch of commands only while the fence holds. `KEYS[1]` is the fence key,
/// `ARGV[1]` its expected value, then each command as its word count followed by its words.
/// Returns 1 when applied, 0 when the fence did not hold (nothing applied).
const FENCED_BATCH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
";

/// Reads the registry and the overrides in one step. `KEYS[1]` is the containers set,
/// `KEYS[2]` the config hash, `ARGV[1]` the container hash key without the id. Returns
/// `{{{id, {field, value, ...}}, ...}, {field, value, ...}}`.
const READ_DESIRED: &str = r"
local containers = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  containers[#containers + 1] = {id, redis.call('HGETALL', ARGV[1] .. id)}
end
return {containers, redis.call('HGETALL', KEYS[2])}
";

/// How the store is set up.
#[derive(Clone)]
pub struct StoreConfig {
    /// `redis://host:port/db`; `None` keeps everything in memory only.
    pub redis_url: Option<String>,
    /// Prefix of every key, e.g. `rustybalancer:<APP_IDENTIFIER>`.
    pub prefix: String,
    /// Metric points kept per container (0 keeps none).
    pub metrics_history: usize,
    /// Scaling events kept (0 keeps none).
    pub max_events: usize,
}

impl fmt::Debug for StoreConfig {
    // The URL may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("prefix", &self.prefix)
            .field("metrics_history", &self.metrics_history)
            .field("max_events", &self.max_events)
            .finish()
    }
}

/// Guards writes of the desired state: they apply only while `key` holds `value` in Redis
/// (the leader lease and `<agent_id>/<epoch>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub value: String,
}

/// The desired state as Redis holds it now, for followers to follow the leader.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredState {
    /// Sorted by id.
    pub containers: Vec<ContainerRecord>,
    pub overrides: ConfigOverrides,
}

/// What was in Redis when the agent started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Persisted {
    /// The registry as persisted, sorted by id. Also put back into the store; the caller
    /// reconciles it with the engine and removes what no longer runs.
    pub containers: Vec<ContainerRecord>,
    pub overrides: ConfigOverrides,
    /// The last `max_events` events, oldest first.
    pub events: Vec<ScalingEvent>,
}

/// The store's backend and link, for the status API.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    /// `"redis"` when a Redis URL is configured, else `"memory"`.
    pub backend: &'static str,
    /// Whether the writer's last Redis call succeeded.
    pub connected: bool,
    /// Full rewrites of Redis from memory since start.
    pub resyncs: u64,
}

/// A cheap handle to the store; clones share one state and one writer.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    /// To the writer; `None` when memory only. The writer stops when every handle is gone.
    writer: Option<mpsc::Sender<Op>>,
}

struct Shared {
    backend: &'static str,
    metrics_history: usize,
    max_events: usize,
    memory: Mutex<Memory>,
    /// Some change did not reach Redis: the next thing the writer does is a resync.
    dirty: AtomicBool,
    connected: AtomicBool,
    resyncs: AtomicU64,
    /// Set while desired-state writes must be fenced.
    fence: Mutex<Option<Fence>>,
    /// Desired-state changes a fence refused.
    fenced_drops: AtomicU64,
    /// The writer's connection while the link is up, for prompt reads.
    conn: Mutex<Option<ConnectionManager>>,
    keys: Keys,
}

#[derive(Default)]
struct Memory {
    containers: BTreeMap<String, ContainerRecord>,
    overrides: ConfigOverrides,
    /// Loaded from Redis or set through the API; until then a resync leaves `config` alone.
    overrides_known: bool,
    /// Oldest first.
    metrics: HashMap<String, VecDeque<MetricPoint>>,
    /// Oldest first.
    events: VecDeque<ScalingEvent>,
    loaded: bool,
}

/// What the store hands to the writer.
enum Op {
    Upsert(ContainerRecord),
    Remove(String),
    Overrides(ConfigOverrides),
    Metric(String, MetricPoint),
    Event(ScalingEvent),
    /// Answered once everything sent before it is in Redis.
    Flush(oneshot::Sender<bool>),
    /// Answered with what Redis holds, `None` if it could not be read.
    Load(oneshot::Sender<Option<Loaded>>),
}

/// What `load` reads: the caller's part and the metrics histories the store keeps itself.
struct Loaded {
    persisted: Persisted,
    metrics: Vec<(String, Vec<MetricPoint>)>,
}

/// Why a Redis call failed.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

impl StoreError {
    /// The connection is gone or hung, as opposed to Redis refusing a command.
    fn is_connection(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Redis(err) => connection_lost(err),
        }
    }
}

impl Store {
    /// Never fails: without a URL it is memory-only; with Redis unreachable it starts from
    /// memory and keeps reconnecting in the background (with capped exponential backoff),
    /// resyncing when it gets through.
    pub async fn open(config: StoreConfig) -> Store {
        let backend = if config.redis_url.is_some() {
            "redis"
        } else {
            "memory"
        };
        let shared = Arc::new(Shared {
            backend,
            metrics_history: config.metrics_history,
            max_events: config.max_events,
            memory: Mutex::new(Memory::default()),
            dirty: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            resyncs: AtomicU64::new(0),
            fence: Mutex::new(None),
            fenced_drops: AtomicU64::new(0),
            conn: Mutex::new(None),
            keys: Keys {
                prefix: config.prefix.clone(),
            },
        });
        let Some(url) = config.redis_url else {
            info!("no redis configured; agent state is kept in memory only");
            return Store {
                shared,
                writer: None,
            };
        };
        let client = match redis::Client::open(url.as_str()) {
            Ok(client) => client,
            Err(err) => {
                // Not the URL itself: it may carry a password.
                error!(cause = %err, "invalid redis url; agent state is kept in memory only");
                return Store {
                    shared,
                    writer: None,
                };
            }
        };
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let writer = Writer {
            shared: shared.clone(),
            rx,
            client,
            conn: None,
            keys: Keys {
                prefix: config.prefix,
            },
            link: Link::Unknown,
            rejecting: false,
            refused_fence: None,
            retry: RETRY_MIN,
            pending_flushes: Vec::new(),
            pending_loads: Vec::new(),
        };
        tokio::spawn(writer.run());
        Store {
            shared,
            writer: Some(tx),
        }
    }

    /// What was persisted before this process started (empty when memory-only or Redis
    /// unreachable within ~2 s). Call once at start-up, before writes.
    ///
    /// All of it is also put back into the store, as are the persisted containers' metrics
    /// histories; nothing already in memory is replaced (e.g. overrides set before).
    pub async fn load(&self) -> Persisted {
        let Some(writer) = &self.writer else {
            return Persisted::default();
        };
        let (reply, answer) = oneshot::channel();
        let loaded = tokio::time::timeout(LOAD_WAIT, async {
            writer.send(Op::Load(reply)).await.ok()?;
            answer.await.ok().flatten()
        })
        .await
        .ok()
        .flatten();
        let Some(loaded) = loaded else {
            warn!(
                wait = ?LOAD_WAIT,
                "could not read the persisted state from redis; starting from an empty state"
            );
            return Persisted::default();
        };
        self.restore(&loaded);
        info!(
            containers = loaded.persisted.containers.len(),
            events = loaded.persisted.events.len(),
            "loaded the persisted state from redis"
        );
        loaded.persisted
    }

    fn restore(&self, loaded: &Loaded) {
        let mut memory = self.shared.lock();
        if memory.loaded {
            return;
        }
        memory.loaded = true;
        for record in &loaded.persisted.containers {
            memory
                .containers
                .entry(record.worker.id.clone())
                .or_insert_with(|| record.clone());
        }
        if !memory.overrides_known {
            memory.overrides = loaded.persisted.overrides.clone();
            memory.overrides_known = true;
        }
        let mut events: VecDeque<_> = loaded.persisted.events.iter().cloned().collect();
        events.append(&mut memory.events);
        while events.len() > self.shared.max_events {
            events.pop_front();
        }
        memory.events = events;
        for (id, points) in &loaded.metrics {
            let history = memory.metrics.entry(id.clone()).or_default();
            if history.is_empty() {
                history.extend(points.iter().cloned());
            }
        }
    }

    /// Adds or replaces a container; synchronous: updates memory at once, Redis in the
    /// background. Upserting an unchanged record writes nothing.
    pub fn upsert_container(&self, record: ContainerRecord) {
        let mut memory = self.shared.lock();
        if memory.containers.get(&record.worker.id) == Some(&record) {
            return;
        }
        memory
            .containers
            .insert(record.worker.id.clone(), record.clone());
        self.send(&memory, Op::Upsert(record));
    }

    /// Forgets a container and its metrics history.
    pub fn remove_container(&self, id: &str) {
        let mut memory = self.shared.lock();
        memory.containers.remove(id);
        memory.metrics.remove(id);
        self.send(&memory, Op::Remove(id.to_owned()));
    }

    /// Every registered container, sorted by id.
    pub fn containers(&self) -> Vec<ContainerRecord> {
        self.shared.lock().containers.values().cloned().collect()
    }

    pub fn set_overrides(&self, overrides: ConfigOverrides) {
        let mut memory = self.shared.lock();
        if memory.overrides_known && memory.overrides == overrides {
            return;
        }
        memory.overrides = overrides.clone();
        memory.overrides_known = true;
        self.send(&memory, Op::Overrides(overrides));
    }

    pub fn overrides(&self) -> ConfigOverrides {
        self.shared.lock().overrides.clone()
    }

    /// Appends a sample, keeping the last `metrics_history` per container.
    pub fn record_metric(&self, container_id: &str, point: MetricPoint) {
        let limit = self.shared.metrics_history;
        if limit == 0 {
            return;
        }
        let mut memory = self.shared.lock();
        let history = memory.metrics.entry(container_id.to_owned()).or_default();
        history.push_back(point.clone());
        while history.len() > limit {
            history.pop_front();
        }
        self.send(&memory, Op::Metric(container_id.to_owned(), point));
    }

    /// A container's samples, oldest first.
    pub fn metrics(&self, container_id: &str) -> Vec<MetricPoint> {
        self.shared
            .lock()
            .metrics
            .get(container_id)
            .map(|history| history.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Appends an event, keeping the last `max_events`.
    pub fn record_event(&self, event: ScalingEvent) {
        let limit = self.shared.max_events;
        if limit == 0 {
            return;
        }
        let mut memory = self.shared.lock();
        memory.events.push_back(event.clone());
        while memory.events.len() > limit {
            memory.events.pop_front();
        }
        self.send(&memory, Op::Event(event));
    }

    /// Up to `limit` events, newest first.
    pub fn recent_events(&self, limit: usize) -> Vec<ScalingEvent> {
        self.shared
            .lock()
            .events
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn status(&self) -> StoreStatus {
        StoreStatus {
            backend: self.shared.backend,
            connected: self.shared.connected.load(Ordering::SeqCst),
            resyncs: self.shared.resyncs.load(Ordering::SeqCst),
        }
    }

    /// Fences every later desired-state write (registry and overrides, including those
    /// already queued and resyncs) with `fence`; `None` writes them unconditionally (one
    /// agent alone). With several agents keep a fence set at all times: a follower's is one
    /// that cannot hold, so whatever it writes is dropped.
    pub fn set_fence(&self, fence: Option<Fence>) {
        *lock(&self.shared.fence) = fence;
    }

    /// Desired-state changes dropped because the fence did not hold, since start.
    pub fn fenced_drops(&self) -> u64 {
        self.shared.fenced_drops.load(Ordering::SeqCst)
    }

    /// The registry and the overrides as Redis holds them now (written by the leader), for
    /// a follower to sync from. Does not wait for a link: `None` when memory only, while
    /// Redis is unreachable, or when the read fails or takes over a second.
    pub async fn read_shared(&self) -> Option<DesiredState> {
        let mut conn = lock(&self.shared.conn).clone()?;
        let keys = &self.shared.keys;
        type Reply = (
            Vec<(String, HashMap<String, String>)>,
            HashMap<String, String>,
        );
        let (containers, config): Reply = timed(
            redis::cmd("EVAL")
                .arg(READ_DESIRED)
                .arg(2)
                .arg(keys.containers())
                .arg(keys.config())
                .arg(keys.container(""))
                .query_async(&mut conn),
        )
        .await
        .inspect_err(|err| debug!(cause = %err, "could not read the shared state from redis"))
        .ok()?;
        let mut records: Vec<ContainerRecord> = containers
            .iter()
            .filter_map(|(id, fields)| {
                container_from_fields(fields).or_else(|| {
                    warn!(container = %id, "skipping an unreadable container record in redis");
                    None
                })
            })
            .collect();
        records.sort_by(|a, b| a.worker.id.cmp(&b.worker.id));
        Some(DesiredState {
            containers: records,
            overrides: overrides_from_fields(&config),
        })
    }

    /// The events in Redis that memory does not hold yet (the leader's, for a follower),
    /// oldest first; each is kept in memory, not written. `None` when Redis does not answer.
    pub async fn take_new_events(&self, limit: usize) -> Option<Vec<ScalingEvent>> {
        let mut conn = lock(&self.shared.conn).clone()?;
        let reply: StreamRangeReply = timed(
            redis::cmd("XREVRANGE")
                .arg(self.shared.keys.events())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut conn),
        )
        .await
        .ok()?;
        let mut memory = self.shared.lock();
        let newest = memory.events.back().map_or(0, |event| event.at_ms);
        let mut fresh: Vec<ScalingEvent> = reply
            .ids
            .iter()
            .rev()
            .filter_map(|entry| from_json::<ScalingEvent>(&entry.get::<String>("json")?))
            .filter(|event| event.at_ms >= newest && !memory.events.contains(event))
            .collect();
        fresh.sort_by_key(|event| event.at_ms);
        for event in &fresh {
            memory.events.push_back(event.clone());
        }
        while memory.events.len() > self.shared.max_events {
            memory.events.pop_front();
        }
        Some(fresh)
    }

    /// Makes memory hold `desired` (a follower mirroring what the leader wrote) without
    /// writing anything to Redis: the registry and the overrides are replaced, and the metrics
    /// of containers no longer registered are forgotten.
    pub fn mirror(&self, desired: &DesiredState) {
        let mut memory = self.shared.lock();
        let memory = &mut *memory;
        memory.containers = desired
            .containers
            .iter()
            .map(|record| (record.worker.id.clone(), record.clone()))
            .collect();
        let containers = &memory.containers;
        memory.metrics.retain(|id, _| containers.contains_key(id));
        memory.overrides = desired.overrides.clone();
        memory.overrides_known = true;
    }

    /// Flush pending writes (best effort, bounded by `timeout`) — used at shutdown and by
    /// tests. True when everything written before the call is in Redis (always when memory
    /// only); false when Redis did not get it within `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let Some(writer) = &self.writer else {
            return self.shared.backend == "memory";
        };
        let (reply, answer) = oneshot::channel();
        tokio::time::timeout(timeout, async {
            writer.send(Op::Flush(reply)).await.ok()?;
            answer.await.ok()
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
    }

    /// Hands a change to the writer without waiting. Takes the memory guard so changes reach
    /// the channel in the order they were made in memory, which lets a resync tell the
    /// changes it covers from those it does not.
    fn send(&self, _memory: &MutexGuard<'_, Memory>, op: Op) {
        let Some(writer) = &self.writer else {
            return;
        };
        if writer.try_send(op).is_err() && !self.shared.dirty.swap(true, Ordering::SeqCst) {
            debug!("redis writer is behind; dropping changes until the next resync");
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The memory, even if a panicking thread poisoned the lock (every update leaves it
    /// consistent).
    fn lock(&self) -> MutexGuard<'_, Memory> {
        lock(&self.memory)
    }

    fn set_conn(&self, conn: Option<ConnectionManager>) {
        *lock(&self.conn) = conn;
    }
}

/// Every lock here guards a value that each update leaves consistent, so a poisoned one is
/// still good.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The key layout (see the module docs).
#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn containers(&self) -> String {
        format!("{}:containers", self.prefix)
    }

    fn container(&self, id: &str) -> String {
        format!("{}:container:{id}", self.prefix)
    }

    fn config(&self) -> String {
        format!("{}:config", self.prefix)
    }

    fn metrics(&self, id: &str) -> String {
        format!("{}:metrics:{id}", self.prefix)
    }

    fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
}

/// The writer's view of Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not reached yet since start.
    Unknown,
    Up,
    Down,
}

/// The one task that talks to Redis.
struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Op>,
    client: redis::Client,
    /// Present while the link is up.
    conn: Option<ConnectionManager>,
    keys: Keys,
    link: Link,
    /// Redis is refusing commands (as opposed to being unreachable); logged once.
    rejecting: bool,
    /// The fence value that last failed to hold; warned about once until one holds.
    refused_fence: Option<String>,
    retry: Duration,
    pending_flushes: Vec<oneshot::Sender<bool>>,
    pending_loads: Vec<oneshot::Sender<Option<Loaded>>>,
}

/// What to do after a failure: pause before the next attempt, or stop (every handle gone).
enum Next {
    Continue,
    Stop,
}

impl Writer {
    async fn run(mut self) {
        loop {
            if let Err(err) = self.step().await {
                self.fail(&err);
                if let Next::Stop = self.pause().await {
                    break;
                }
            } else if self.rx.is_closed() && self.rx.is_empty() {
                break;
            }
        }
        debug!("redis writer stopped");
    }

    /// One round: connect if needed, resync if dirty, answer waiting flushes and loads, then
    /// apply the next batch of changes (or ping when idle).
    async fn step(&mut self) -> Result<(), StoreError> {
        let mut conn = match &self.conn {
            Some(conn) => conn.clone(),
            None => self.connect().await?,
        };
        if self.shared.dirty.load(Ordering::SeqCst) {
            self.resync(&mut conn).await?;
        }
        self.retry = RETRY_MIN;
        self.answer_pending(&mut conn).await?;
        let op = tokio::select! {
            op = self.rx.recv() => op,
            () = tokio::time::sleep(HEALTH_INTERVAL) => return ping(&mut conn).await,
        };
        match op {
            Some(op) => self.apply(&mut conn, op).await,
            None => Ok(()),
        }
    }

    async fn connect(&mut self) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(0);
        let mut conn = timed(ConnectionManager::new_with_config(
            self.client.clone(),
            config,
        ))
        .await?;
        ping(&mut conn).await?;
        if self.link != Link::Up {
            info!(
                resync = self.shared.dirty.load(Ordering::SeqCst),
                "redis connected"
            );
        }
        self.link = Link::Up;
        self.shared.connected.store(true, Ordering::SeqCst);
        self.shared.set_conn(Some(conn.clone()));
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    fn fail(&mut self, err: &StoreError) {
        if self.conn.is_some() && !err.is_connection() {
            // Redis answered but refused: keep the link, rewrite everything after a pause.
            self.shared.dirty.store(true, Ordering::SeqCst);
            if !self.rejecting {
                self.rejecting = true;
                warn!(cause = %err, "redis refused a write; will resync from memory");
            }
            return;
        }
        match self.link {
            Link::Up => {
                // Whatever was in flight is lost, and Redis may come back empty.
                self.shared.dirty.store(true, Ordering::SeqCst);
                warn!(cause = %err, "redis connection lost; keeping state in memory and reconnecting");
            }
            Link::Unknown => {
                warn!(cause = %err, "redis unreachable; starting from memory and reconnecting in the background");
            }
            Link::Down => {}
        }
        self.link = Link::Down;
        self.conn = None;
        self.shared.set_conn(None);
        self.shared.connected.store(false, Ordering::SeqCst);
    }

    /// Waits the current backoff, then doubles it. Changes that arrive meanwhile are dropped
    /// (the store is dirty); flushes and loads wait for the link.
    async fn pause(&mut self) -> Next {
        let until = Instant::now() + self.retry;
        self.retry = (self.retry * 2).min(RETRY_MAX);
        loop {
            let op = tokio::select! {
                () = tokio::time::sleep_until(until) => return Next::Continue,
                op = self.rx.recv() => op,
            };
            match op {
                Some(op) => self.set_aside(op),
                None => return Next::Stop,
            }
        }
    }

    /// Keeps a flush or load for later; drops a change and marks the store dirty.
    fn set_aside(&mut self, op: Op) {
        match op {
            Op::Flush(reply) => {
                self.pending_flushes.retain(|reply| !reply.is_closed());
                self.pending_flushes.push(reply);
            }
            Op::Load(reply) => {
                self.pending_loads.retain(|reply| !reply.is_closed());
                self.pending_loads.push(reply);
            }
            _ => self.shared.dirty.store(true, Ordering::SeqCst),
        }
    }

    async fn answer_pending(&mut self, conn: &mut ConnectionManager) -> Result<(), StoreError> {
        for reply in std::mem::take(&mut self.pending_flushes) {
            let _ = reply.send(true);
        }
        while let Some(reply) = self.pending_loads.pop() {
            if reply.is_closed() {
                continue;
            }
            match self.read(conn).await {
                Ok(loaded) => {
                    let _ = reply.send(Some(loaded));
                }
                Err(err) if err.is_connection() => {
                    // Tried again once the link is back, if the caller still waits.
                    self.pending_loads.push(reply);
                    return Err(err);
                }
                Err(err) => {
                    warn!(cause = %err, "could not read the persisted state from redis");
                    let _ = reply.send(None);
                }
            }
        }
        Ok(())
    }

    /// Applies `first` and whatever else is already queued (up to [`BATCH_MAX`]) in one
    /// transaction.
    async fn apply(&mut self, conn: &mut ConnectionManager, first: Op) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        let mut changes = 0;
        let mut next = Some(first);
        while let Some(op) = next.take() {
            if self.add(&mut batch, op) {
                changes += 1;
            }
            if changes < BATCH_MAX {
                next = self.rx.try_recv().ok();
            }
        }
        if changes > 0 {
            self.exec(conn, batch).await?;
            self.rejecting = false;
        }
        Ok(())
    }

    /// Sends a batch in one transaction, its desired-state part behind the fence if one is
    /// set.
    async fn exec(&mut self, conn: &mut ConnectionManager, batch: Batch) -> Result<(), StoreError> {
        let Batch {
            mut pipe,
            desired,
            desired_changes,
        } = batch;
        let fence = lock(&self.shared.fence).clone();
        let fenced = match &fence {
            Some(fence) if !desired.is_empty() => {
                let eval = pipe
                    .cmd("EVAL")
                    .arg(FENCED_BATCH)
                    .arg(1)
                    .arg(&fence.key)
                    .arg(&fence.value);
                for command in &desired.0 {
                    eval.arg(command.len()).arg(command);
                }
                true
            }
            _ => {
                desired.add_to(&mut pipe);
                false
            }
        };
        if pipe.is_empty() {
            return Ok(());
        }
        pipe.atomic();
        if !fenced {
            return timed(pipe.exec_async(conn)).await;
        }
        let (applied,): (i64,) = timed(pipe.query_async(conn)).await?;
        if applied == 1 {
            self.refused_fence = None;
            return Ok(());
        }
        self.shared
            .fenced_drops
            .fetch_add(desired_changes, Ordering::SeqCst);
        let value = fence.map(|fence| fence.value);
        if self.refused_fence == value {
            debug!(
                dropped = desired_changes,
                "not the leader: {desired_changes} writes dropped"
            );
        } else {
            warn!(
                dropped = desired_changes,
                fence = value.as_deref().unwrap_or_default(),
                "not the leader any more: {desired_changes} writes dropped"
            );
            self.refused_fence = value;
        }
        Ok(())
    }

    /// Adds the commands of one change to `batch`; true if it was a change. Flushes and
    /// loads are kept to be answered once the batch is in.
    fn add(&mut self, batch: &mut Batch, op: Op) -> bool {
        let keys = &self.keys;
        let pipe = &mut batch.pipe;
        match op {
            Op::Upsert(record) => {
                batch.desired.write_container(keys, &record);
                batch.desired_changes += 1;
            }
            Op::Remove(id) => {
                batch.desired.delete_container(keys, &id);
                batch.desired_changes += 1;
            }
            Op::Overrides(overrides) => {
                batch.desired.write_overrides(keys, &overrides);
                batch.desired_changes += 1;
            }
            Op::Metric(id, point) => {
                let Some(json) = to_json(&point) else {
                    return false;
                };
                let keep = self.shared.metrics_history;
                let key = keys.metrics(&id);
                pipe.lpush(&key, json).ignore();
                pipe.ltrim(&key, 0, last_index(keep)).ignore();
            }
            Op::Event(event) => {
                let Some(json) = to_json(&event) else {
                    return false;
                };
                pipe.cmd("XADD")
                    .arg(keys.events())
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.shared.max_events)
                    .arg("*")
                    .arg("json")
                    .arg(json)
                    .ignore();
            }
            op @ (Op::Flush(_) | Op::Load(_)) => {
                self.set_aside(op);
                return false;
            }
        }
        true
    }

    /// Rewrites Redis from memory and clears the dirty mark. Changes queued before the
    /// snapshot are covered by it and dropped; later ones follow it in order.
    async fn resync(&mut self, conn: &mut ConnectionManager) -> Result<(), StoreError> {
        let registered: Vec<String> = timed(
            redis::cmd("SMEMBERS")
                .arg(self.keys.containers())
                .query_async(conn),
        )
        .await?;
        let (containers, overrides, metrics) = {
            let shared = self.shared.clone();
            let memory = shared.lock();
            shared.dirty.store(false, Ordering::SeqCst);
            while let Ok(op) = self.rx.try_recv() {
                if let op @ (Op::Flush(_) | Op::Load(_)) = op {
                    self.set_aside(op);
                }
            }
            (
                memory.containers.clone(),
                memory.overrides_known.then(|| memory.overrides.clone()),
                memory.metrics.clone(),
            )
        };

        let mut batch = Batch::default();
        let stale: Vec<_> = registered
            .iter()
            .filter(|id| !containers.contains_key(id.as_str()))
            .collect();
        for id in &stale {
            batch.desired.delete_container(&self.keys, id);
        }
        for record in containers.values() {
            batch.desired.write_container(&self.keys, record);
        }
        batch.desired_changes = u64::try_from(stale.len() + containers.len()).unwrap_or(u64::MAX);
        let pipe = &mut batch.pipe;
        for (id, history) in &metrics {
            let key = self.keys.metrics(id);
            pipe.del(&key).ignore();
            // Newest first, as LPUSH leaves them.
            let entries: Vec<String> = history.iter().rev().filter_map(to_json).collect();
            if !entries.is_empty() {
                pipe.rpush(&key, entries).ignore();
            }
        }
        if let Some(overrides) = &overrides {
            batch.desired.write_overrides(&self.keys, overrides);
            batch.desired_changes += 1;
        }
        self.exec(conn, batch).await?;

        let resyncs = self.shared.resyncs.fetch_add(1, Ordering::SeqCst) + 1;
        self.rejecting = false;
        info!(
            containers = containers.len(),
            removed = stale.len(),
            resyncs,
            "redis resynced from memory"
        );
        Ok(())
    }

    /// Everything `load` returns, as Redis holds it now.
    async fn read(&self, conn: &mut ConnectionManager) -> Result<Loaded, StoreError> {
        let keys = &self.keys;
        let mut ids: Vec<String> = timed(
            redis::cmd("SMEMBERS")
                .arg(keys.containers())
                .query_async(conn),
        )
        .await?;
        ids.sort();

        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(keys.container(id));
        }
        let hashes: Vec<HashMap<String, String>> = if pipe.is_empty() {
            Vec::new()
        } else {
            timed(pipe.query_async(conn)).await?
        };
        let mut containers = Vec::with_capacity(ids.len());
        for (id, fields) in ids.iter().zip(hashes) {
            match container_from_fields(&fields) {
                Some(record) => containers.push(record),
                None => warn!(container = %id, "skipping an unreadable container record in redis"),
            }
        }

        let mut metrics = Vec::new();
        if self.shared.metrics_history > 0 && !containers.is_empty() {
            let mut pipe = redis::pipe();
            for record in &containers {
                pipe.lrange(
                    keys.metrics(&record.worker.id),
                    0,
                    last_index(self.shared.metrics_history),
                );
            }
            let lists: Vec<Vec<String>> = timed(pipe.query_async(conn)).await?;
            for (record, list) in containers.iter().zip(lists) {
                // Stored newest first.
                let points: Vec<MetricPoint> = list
                    .iter()
                    .rev()
                    .filter_map(|json| from_json(json))
                    .collect();
                if !points.is_empty() {
                    metrics.push((record.worker.id.clone(), points));
                }
            }
        }

        let config: HashMap<String, String> =
            timed(redis::cmd("HGETALL").arg(keys.config()).query_async(conn)).await?;
        let overrides = overrides_from_fields(&config);

        let mut events = Vec::new();
        if self.shared.max_events > 0 {
            let reply: StreamRangeReply = timed(
                redis::cmd("XREVRANGE")
                    .arg(keys.events())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(self.shared.max_events)
                    .query_async(conn),
            )
            .await?;
            // Newest first from XREVRANGE.
            events = reply
                .ids
                .iter()
                .rev()
                .filter_map(|entry| from_json(&entry.get::<String>("json")?))
                .collect();
        }

        Ok(Loaded {
            persisted: Persisted {
                containers,
                overrides,
                events,
            },
            metrics,
        })
    }
}

async fn timed<T>(call: impl Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
    tokio::time::timeout(REDIS_TIMEOUT, call)
        .await
        .map_err(|_| StoreError::Timeout(REDIS_TIMEOUT))?
        .map_err(StoreError::from)
}

async fn ping(conn: &mut ConnectionManager) -> Result<(), StoreError> {
    timed(redis::cmd("PING").query_async::<String>(conn))
        .await
        .map(drop)
}

/// `LTRIM`/`LRANGE` stop index that keeps `keep` entries.
fn last_index(keep: usize) -> isize {
    isize::try_from(keep).unwrap_or(isize::MAX) - 1
}

/// One transaction's worth of changes: the desired-state commands apart, to be fenced.
#[derive(Default)]
struct Batch {
    /// Metrics and events (and, unfenced, the desired state).
    pipe: redis::Pipeline,
    desired: Commands,
    /// Changes (not commands) in `desired`, for the count of dropped writes.
    desired_changes: u64,
}

/// Redis commands as words, to send either in a pipeline or inside the fenced script.
#[derive(Default)]
struct Commands(Vec<Vec<String>>);

impl Commands {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn push<const N: usize>(&mut self, words: [&str; N]) -> &mut Vec<String> {
        self.0
            .push(words.iter().map(|word| (*word).to_owned()).collect());
        self.0.last_mut().expect("just pushed")
    }

    fn add_to(&self, pipe: &mut redis::Pipeline) {
        for command in &self.0 {
            if let Some((name, args)) = command.split_first() {
                pipe.cmd(name).arg(args).ignore();
            }
        }
    }

    fn write_container(&mut self, keys: &Keys, record: &ContainerRecord) {
        let key = keys.container(&record.worker.id);
        self.push(["DEL", &key]);
        let hset = self.push(["HSET", &key]);
        for (field, value) in container_fields(record) {
            hset.push(field.to_owned());
            hset.push(value);
        }
        self.push(["SADD", &keys.containers(), &record.worker.id]);
    }

    fn delete_container(&mut self, keys: &Keys, id: &str) {
        self.push(["DEL", &keys.container(id)]);
        self.push(["DEL", &keys.metrics(id)]);
        self.push(["SREM", &keys.containers(), id]);
    }

    fn write_overrides(&mut self, keys: &Keys, overrides: &ConfigOverrides) {
        let key = keys.config();
        self.push(["DEL", &key]);
        let fields = overrides_fields(overrides);
        if !fields.is_empty() {
            let hset = self.push(["HSET", &key]);
            for (field, value) in fields {
                hset.push(field.to_owned());
                hset.push(value);
            }
        }
    }
}

fn container_fields(record: &ContainerRecord) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", record.worker.id.clone()),
        ("name", record.worker.name.clone()),
        ("address", record.worker.address.clone()),
        ("dns_name", record.worker.dns_name.clone()),
        ("created_at_ms", record.worker.created_at_ms.to_string()),
        ("category", record.category.as_str().to_owned()),
    ];
    if let Some(core_id) = record.worker.core_id {
        fields.push(("core_id", core_id.to_string()));
    }
    if let Some(since) = record.sundown_since_ms {
        fields.push(("sundown_since_ms", since.to_string()));
    }
    fields
}

fn container_from_fields(fields: &HashMap<String, String>) -> Option<ContainerRecord> {
    let text = |name: &str| fields.get(name).cloned();
    Some(ContainerRecord {
        worker: Worker {
            id: text("id")?,
            name: text("name")?,
            address: text("address")?,
            dns_name: text("dns_name")?,
            core_id: optional_field(fields, "core_id")?,
            created_at_ms: fields.get("created_at_ms")?.parse().ok()?,
        },
        category: serde_json::from_value(serde_json::Value::String(text("category")?)).ok()?,
        sundown_since_ms: optional_field(fields, "sundown_since_ms")?,
    })
}

/// `Some(None)` when the field is absent, `None` when it is present but unreadable.
fn optional_field<T: FromStr>(fields: &HashMap<String, String>, name: &str) -> Option<Option<T>> {
    match fields.get(name) {
        Some(value) => value.parse().ok().map(Some),
        None => Some(None),
    }
}

fn overrides_fields(overrides: &ConfigOverrides) -> Vec<(&'static str, String)> {
    [
        ("min_replicas", overrides.min_replicas),
        ("max_replicas", overrides.max_replicas),
        ("default_containers", overrides.default_containers),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?.to_string())))
    .collect()
}

/// Unreadable fields count as unset.
fn overrides_from_fields(fields: &HashMap<String, String>) -> ConfigOverrides {
    let value = |name: &str| fields.get(name).and_then(|value| value.parse().ok());
    ConfigOverrides {
        min_replicas: value("min_replicas"),
        max_replicas: value("max_replicas"),
        default_containers: value("default_containers"),
    }
}

fn to_json<T: Serialize>(value: &T) -> Option<String> {
    serde_json::to_string(value)
        .inspect_err(|err| warn!(cause = %err, "could not encode a value for redis"))
        .ok()
}

fn from_json<T: for<'de> Deserialize<'de>>(json: &str) -> Option<T> {
    serde_json::from_str(json)
        .inspect_err(|err| warn!(cause = %err, "skipping an unreadable entry in redis"))
        .ok()
}

#[cfg(test)]
pub(crate) mod tests;

/// The error means the link to Redis is gone (rather than a refused command).
pub(crate) fn connection_lost(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
}
