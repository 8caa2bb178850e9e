//! Backends and the routing table.
//!
//! A [`Backend`] lives as long as some table or some request holds it: its counters (in-flight,
//! completed, errors, latency EWMA, ejection) are atomics, so the hot path never locks. The
//! [`Table`] is an immutable snapshot swapped in whole ([`Backends::replace`]) whenever the agent
//! publishes a queue; readers load it with one atomic pointer read. A backend that leaves the
//! table is marked removed, which wakes the requests still waiting for its answer (see
//! [`Backend::removed`]): those that may be retried go elsewhere at once.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use common::queue::{Category, QueueItem, QueueSnapshot};
use http::{HeaderValue, uri::Authority};
use tokio::sync::{Notify, futures::Notified};

use crate::{
    dispatch::{QueueSettings, WorkQueue},
    upstream::{Pool, PoolConfig},
};

/// Monotonic nanoseconds since the balancer started; cheap to store in atomics.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    pub fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn now(&self) -> u64 {
        self.nanos(Instant::now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Passive ejection settings.
#[derive(Debug, Clone, Copy)]
pub struct Ejection {
    pub after: u32,
    pub base: Duration,
    pub max: Duration,
}

/// Requests counted per status code (100-599), plus transport failures.
#[derive(Debug)]
pub struct StatusCounts {
    codes: Box<[AtomicU64]>,
}

impl StatusCounts {
    pub fn new() -> Self {
        Self {
            codes: (100..600).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn record(&self, status: u16) {
        if let Some(slot) = status
            .checked_sub(100)
            .and_then(|i| self.codes.get(usize::from(i)))
        {
            slot.fetch_add(1, Relaxed);
        }
    }

    /// `(status, count)` for every status seen.
    pub fn seen(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.codes.iter().enumerate().filter_map(|(i, count)| {
            let count = count.load(Relaxed);
            (count > 0).then(|| (u16::try_from(i).unwrap_or(0) + 100, count))
        })
    }
}

impl Default for StatusCounts {
    fn default() -> Self {
        Self::new()
    }
}

/// One backend container and what the balancer knows about it.
#[derive(Debug)]
pub struct Backend {
    /// Unique within this process; used to exclude backends already tried.
    pub key: u64,
    /// The container id (the address for static backends).
    pub id: String,
    /// The container's name, sent back in `X-Backend`.
    pub dns_name: String,
    /// `host:port`, as published.
    pub address: String,
    /// `X-Backend` of its answers.
    pub header: HeaderValue,
    /// `Host` of requests that came without one.
    pub host_header: HeaderValue,
    /// Its names, as the request records keep them.
    pub identity: Arc<crate::journal::Identity>,
    /// Idle connections, one pool per traffic thread (a connection stays on its thread).
    pools: Box<[Arc<Pool>]>,
    pub in_flight: AtomicU64,
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub statuses: StatusCounts,
    ewma_ns: AtomicU64,
    ewma_stamp: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: AtomicU64,
    pub ejected_total: AtomicU64,
    /// Set once the backend left the routing table.
    removed: AtomicBool,
    /// Wakes the requests waiting for its answers when it leaves; one per traffic thread like
    /// the pools, so a request registers without touching another thread's lock.
    removal: Box<[Notify]>,
    /// Requests it takes at once (its concurrency limit, scaled by `MAX_CPU_THRESHOLD`);
    /// 0 = unlimited.
    slots: AtomicU64,
    /// The expected seconds of its requests in flight, in microseconds (issue #17).
    work_us: AtomicU64,
    /// The table it belongs to: a slot freed on a limited backend goes to the work queue.
    owner: Weak<BackendsInner>,
}

impl Backend {
    fn new(
        key: u64,
        id: String,
        dns_name: String,
        address: String,
        pool: PoolConfig,
        shards: usize,
        owner: Weak<BackendsInner>,
    ) -> Option<Self> {
        let authority: Authority = address.parse().ok()?;
        let header = HeaderValue::from_str(&dns_name)
            .or_else(|_| HeaderValue::from_str(&address))
            .ok()?;
        let host_header = HeaderValue::from_str(authority.as_str()).ok()?;
        let identity = Arc::new(crate::journal::Identity {
            id: id.clone(),
            name: dns_name.clone(),
            address: address.clone(),
        });
        Some(Self {
            key,
            identity,
            id,
            dns_name,
            pools: (0..shards.max(1))
                .map(|_| Arc::new(Pool::new(address.clone(), pool)))
                .collect(),
            address,
            header,
            host_header,
            in_flight: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            statuses: StatusCounts::new(),
            ewma_ns: AtomicU64::new(0f64.to_bits()),
            ewma_stamp: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejected_total: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            removal: (0..shards.max(1)).map(|_| Notify::new()).collect(),
            slots: AtomicU64::new(0),
            work_us: AtomicU64::new(0),
            owner,
        })
    }

    /// Requests it takes at once; 0 = unlimited.
    pub fn slots(&self) -> u64 {
        self.slots.load(Relaxed)
    }

    /// Whether it can take one more request now.
    pub fn has_slot(&self) -> bool {
        let slots = self.slots();
        slots == 0 || self.in_flight() < slots
    }

    /// The expected work in flight on it, in microseconds.
    pub fn work_us(&self) -> u64 {
        self.work_us.load(Relaxed)
    }

    /// Takes one of its slots, if one is free (always, when unlimited); the request is then
    /// in flight on it. Returns the count in flight before.
    pub fn take_slot(&self, work_us: u64) -> Option<u64> {
        let slots = self.slots();
        let before = if slots == 0 {
            self.in_flight.fetch_add(1, Relaxed)
        } else {
            self.in_flight
                .fetch_update(Relaxed, Relaxed, |n| (n < slots).then_some(n + 1))
                .ok()?
        };
        if work_us != 0 {
            self.work_us.fetch_add(work_us, Relaxed);
        }
        Some(before)
    }

    /// Puts a request in flight whatever the limit (one that must go to this backend);
    /// returns the count in flight before.
    pub fn take_slot_anyway(&self, work_us: u64) -> u64 {
        if work_us != 0 {
            self.work_us.fetch_add(work_us, Relaxed);
        }
        self.in_flight.fetch_add(1, Relaxed)
    }

    /// Gives back a slot from [`Self::take_slot`]; on a limited backend the slot goes to the
    /// next request waiting in the work queue, if any.
    pub fn give_slot(&self, work_us: u64) {
        if work_us != 0 {
            self.work_us.fetch_sub(work_us, Relaxed);
        }
        self.in_flight.fetch_sub(1, Relaxed);
        if self.slots() != 0 {
            // Pairs with the fence in `WorkQueue::pump`: a request queueing meanwhile either
            // sees this slot free or is seen waiting here.
            std::sync::atomic::fence(SeqCst);
            if let Some(owner) = self.owner.upgrade() {
                Backends(owner).pump();
            }
        }
    }

    /// The connection pool of traffic thread `shard`.
    pub fn pool(&self, shard: usize) -> &Arc<Pool> {
        &self.pools[shard % self.pools.len()]
    }

    /// Every pool (for sweeping and the admin view).
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Feeds one latency sample into the peak EWMA: a sample above the estimate replaces it at
    /// once; below, the estimate decays towards it with time constant `decay`.
    pub fn observe_latency(&self, rtt: Duration, now: u64, decay: Duration) {
        let rtt = rtt.as_nanos() as f64;
        let previous = f64::from_bits(self.ewma_ns.load(Relaxed));
        let last = self.ewma_stamp.swap(now, Relaxed);
        let next = if rtt >= previous || previous == 0.0 {
            rtt
        } else {
            let elapsed = now.saturating_sub(last) as f64;
            let weight = (-elapsed / decay.as_nanos() as f64).exp();
            previous * weight + rtt * (1.0 - weight)
        };
        self.ewma_ns.store(next.to_bits(), Relaxed);
    }

    /// The latency estimate in nanoseconds, decayed towards zero for the time without samples
    /// (so a backend that stopped being chosen is tried again).
    pub fn latency_estimate(&self, now: u64, decay: Duration) -> f64 {
        let ewma = f64::from_bits(self.ewma_ns.load(Relaxed));
        if ewma == 0.0 {
            return 0.0;
        }
        let elapsed = now.saturating_sub(self.ewma_stamp.load(Relaxed)) as f64;
        ewma * (-elapsed / decay.as_nanos() as f64).exp()
    }

    /// The raw EWMA in milliseconds, for reports.
    pub fn latency_ewma_ms(&self) -> f64 {
        f64::from_bits(self.ewma_ns.load(Relaxed)) / 1e6
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Relaxed) > now
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    /// Records a failed connection; returns `true` when this ejects the backend.
    pub fn connect_failed(&self, now: u64, ejection: Ejection) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures < ejection.after || self.is_ejected(now) {
            return false;
        }
        let round = self.ejections.fetch_add(1, Relaxed).min(16);
        let backoff = ejection
            .base
            .saturating_mul(1u32 << round)
            .min(ejection.max);
        let until = now.saturating_add(u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Relaxed);
        self.ejected_total.fetch_add(1, Relaxed);
        true
    }

    /// Whether the backend left the routing table (the agent dropped it, or its node is lost).
    pub fn is_removed(&self) -> bool {
        self.removed.load(SeqCst)
    }

    /// Resolves once the backend has left the routing table; for a request on traffic thread
    /// `shard`. Already removed, it resolves at once.
    pub fn removed(&self, shard: usize) -> Removed<'_> {
        Removed {
            // Registered before the flag is read: a removal in between still wakes it.
            notified: self.removal[shard % self.removal.len()].notified(),
            backend: self,
        }
    }

    /// Marks the backend removed and wakes whoever waits for it.
    fn remove(&self) {
        if !self.removed.swap(true, SeqCst) {
            for removal in &self.removal {
                removal.notify_waiters();
            }
        }
    }

    /// Records a connection that worked: the failure streak and the ejection backoff reset.
    pub fn connected(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        if self.ejections.load(Relaxed) != 0 {
            self.ejections.store(0, Relaxed);
            self.ejected_until.store(0, Relaxed);
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`Backend::removed`]; a named future rather than an `async fn`, to stay small in
    /// the request's future.
    pub struct Removed<'a> {
        #[pin]
        notified: Notified<'a>,
        backend: &'a Backend,
    }
}

impl Future for Removed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.backend.is_removed() {
            return Poll::Ready(());
        }
        this.notified.poll(cx)
    }
}

/// A backend as the current table sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub backend: Arc<Backend>,
    /// The agent's score (0-100, 100 = idle); 100 for static backends.
    pub score: f64,
    /// `None` for static backends.
    pub category: Option<Category>,
    pub accepts: bool,
}

/// One immutable view of the backends.
#[derive(Debug, Default)]
pub struct Table {
    /// Every known backend, SUNDOWN and INIT included.
    pub entries: Vec<Entry>,
    /// Those that take new requests, with their routing weight.
    pub candidates: Vec<Candidate>,
    /// `seq` of the agent snapshot this table came from.
    pub seq: u64,
    /// `epoch` of the agent snapshot this table came from.
    pub epoch: u64,
    /// Whether some candidate has a concurrency limit (requests may wait for a slot).
    pub limited: bool,
}

/// A backend that may take new requests.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub backend: Arc<Backend>,
    /// The score as a weight; never negative.
    pub weight: f64,
}

/// Where the backends come from, for the admin view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Static,
    Agent,
}

/// The shared handle: the current [`Table`], swapped in whole, and a wake-up for requests
/// waiting in the admission queue.
#[derive(Debug, Clone)]
pub struct Backends(Arc<BackendsInner>);

#[derive(Debug)]
struct BackendsInner {
    table: ArcSwap<Table>,
    changed: Notify,
    pool: PoolConfig,
    shards: usize,
    next_key: AtomicU64,
    source: SourceKind,
    /// Serialises writers (the agent task, or start-up); readers never take it.
    writer: std::sync::Mutex<()>,
    /// Requests waiting for a free slot on a limited backend.
    queue: WorkQueue,
    clock: Clock,
    /// `MAX_CPU_THRESHOLD` in percent: the share of a backend's concurrency it is given.
    threshold: f64,
}

/// The work queue's settings and the clock it reads (the proxy's own).
#[derive(Debug, Clone, Copy)]
pub struct Dispatch {
    pub queue: QueueSettings,
    pub clock: Clock,
    /// `MAX_CPU_THRESHOLD`, percent (1-100).
    pub threshold: f64,
}

impl Default for Dispatch {
    fn default() -> Self {
        Self {
            queue: QueueSettings::default(),
            clock: Clock::new(),
            threshold: 100.0,
        }
    }
}

impl Backends {
    #[cfg(test)]
    pub fn new(pool: PoolConfig, shards: usize, source: SourceKind) -> Self {
        Self::with_dispatch(pool, shards, source, Dispatch::default())
    }

    pub fn with_dispatch(
        pool: PoolConfig,
        shards: usize,
        source: SourceKind,
        dispatch: Dispatch,
    ) -> Self {
        Self(Arc::new(BackendsInner {
            table: ArcSwap::from_pointee(Table::default()),
            changed: Notify::new(),
            pool,
            shards,
            next_key: AtomicU64::new(1),
            source,
            writer: std::sync::Mutex::new(()),
            queue: WorkQueue::new(dispatch.queue),
            clock: dispatch.clock,
            threshold: dispatch.threshold.clamp(1.0, 100.0),
        }))
    }

    /// Now, by the clock the proxy reads.
    #[cfg(test)]
    pub fn now(&self) -> u64 {
        self.0.clock.now()
    }

    /// The requests waiting for a free slot.
    pub fn queue(&self) -> &WorkQueue {
        &self.0.queue
    }

    /// Hands free slots to the requests waiting for one (see [`WorkQueue::pump`]).
    pub fn pump(&self) {
        if !self.0.queue.is_empty() {
            self.0.queue.pump(&self.load(), self.0.clock.now());
        }
    }

    /// The slots a backend of concurrency limit `concurrency` gets: a share
    /// `MAX_CPU_THRESHOLD` of it, at least one (a one-thread worker still takes a job).
    fn slots_for(&self, concurrency: u32) -> u64 {
        if concurrency == 0 {
            return 0;
        }
        ((f64::from(concurrency) * self.0.threshold / 100.0).floor() as u64).max(1)
    }

    pub fn source(&self) -> SourceKind {
        self.0.source
    }

    /// The current table (one atomic load; the guard is cheap to hold briefly).
    pub fn load(&self) -> arc_swap::Guard<Arc<Table>> {
        self.0.table.load()
    }

    pub fn load_full(&self) -> Arc<Table> {
        self.0.table.load_full()
    }

    /// Notified whenever the table changes.
    pub fn changed(&self) -> &Notify {
        &self.0.changed
    }

    /// Replaces the table with static backends (`host:port` each), each taking at most
    /// `concurrency` requests at once (`BACKEND_CONCURRENCY`; 0 = unlimited).
    pub fn set_static(&self, addresses: &[String], concurrency: u32) {
        let items = addresses
            .iter()
            .map(|address| Spec {
                id: address.clone(),
                dns_name: address.clone(),
                address: address.clone(),
                score: 100.0,
                category: None,
                concurrency,
            })
            .collect();
        self.replace(items, (0, 0));
    }

    /// Replaces the table with the agent's snapshot; addresses without a port get `target_port`.
    pub fn apply_snapshot(&self, snapshot: &QueueSnapshot, target_port: u16) {
        let items = snapshot
            .items
            .iter()
            .map(|item| Spec::from_item(item, target_port))
            .collect();
        self.replace(items, snapshot.position());
    }

    /// `position`: the snapshot's `(epoch, seq)`.
    fn replace(&self, specs: Vec<Spec>, (epoch, seq): (u64, u64)) {
        let _writer = self
            .0
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.0.table.load_full();
        let mut known: HashMap<&str, &Arc<Backend>> = current
            .entries
            .iter()
            .map(|entry| (entry.backend.address.as_str(), &entry.backend))
            .collect();
        let mut entries = Vec::with_capacity(specs.len());
        for spec in specs {
            if entries
                .iter()
                .any(|e: &Entry| e.backend.address == spec.address)
            {
                tracing::warn!(address = %spec.address, "duplicate backend address ignored");
                continue;
            }
            let backend = match known.remove(spec.address.as_str()) {
                Some(backend) if backend.dns_name == spec.dns_name && backend.id == spec.id => {
                    Arc::clone(backend)
                }
                _ => {
                    let key = self.0.next_key.fetch_add(1, Relaxed);
                    match Backend::new(
                        key,
                        spec.id.clone(),
                        spec.dns_name.clone(),
                        spec.address.clone(),
                        self.0.pool,
                        self.0.shards,
                        Arc::downgrade(&self.0),
                    ) {
                        Some(backend) => Arc::new(backend),
                        None => {
                            tracing::warn!(address = %spec.address, "backend address is not host:port; ignored");
                            continue;
                        }
                    }
                }
            };
            backend
                .slots
                .store(self.slots_for(spec.concurrency), Relaxed);
            let accepts = spec.category.is_none_or(Category::accepts_new_requests);
            entries.push(Entry {
                backend,
                score: spec.score,
                category: spec.category,
                accepts,
            });
        }
        let candidates = entries
            .iter()
            .filter(|entry| entry.accepts)
            .map(|entry| Candidate {
                backend: Arc::clone(&entry.backend),
                weight: if entry.score.is_finite() {
                    entry.score.max(0.0)
                } else {
                    0.0
                },
            })
            .collect::<Vec<_>>();
        let kept: HashSet<u64> = entries.iter().map(|entry| entry.backend.key).collect();
        tracing::debug!(
            epoch,
            seq,
            backends = entries.len(),
            candidates = candidates.len(),
            "routing table replaced"
        );
        let limited = candidates.iter().any(|c| c.backend.slots() != 0);
        self.0.table.store(Arc::new(Table {
            entries,
            candidates,
            seq,
            epoch,
            limited,
        }));
        self.0.changed.notify_waiters();
        // A backend joined or a limit grew: its slots go to the requests waiting.
        self.pump();
        // After the new table is in place, so that a request woken here picks from it.
        for entry in &current.entries {
            if !kept.contains(&entry.backend.key) {
                tracing::debug!(backend = %entry.backend.dns_name, address = %entry.backend.address, "backend left the table");
                entry.backend.remove();
            }
        }
    }
}

struct Spec {
    id: String,
    dns_name: String,
    address: String,
    score: f64,
    category: Option<Category>,
    concurrency: u32,
}

impl Spec {
    fn from_item(item: &QueueItem, target_port: u16) -> Self {
        let raw = if item.address.trim().is_empty() {
            item.dns_name.trim()
        } else {
            item.address.trim()
        };
        let raw = raw.strip_prefix("http://").unwrap_or(raw);
        let address = match raw.parse::<crate::config::BackendAddr>() {
            Ok(addr) => addr.with_port(target_port),
            Err(_) => raw.to_owned(),
        };
        let dns_name = if item.dns_name.is_empty() {
            address.clone()
        } else {
            item.dns_name.clone()
        };
        Self {
            id: item.id.clone(),
            dns_name,
            address,
            score: item.score,
            category: Some(item.utilization_category),
            concurrency: item.concurrency,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
