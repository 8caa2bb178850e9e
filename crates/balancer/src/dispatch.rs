//! Late binding (issue #17): a backend with a concurrency limit takes at most that many
//! requests at once; the others wait here, at the balancer, and each slot that frees goes to
//! the waiting request with the lowest expected cost.
//!
//! The order is cheapest first, bounded by aging: a request waits at most
//! `MAX_QUEUE_DELAY_FACTOR` × its expected seconds (at least [`MIN_DELAY`]) before it is
//! *overdue*; overdue requests go before every other, the one overdue first first. So a long
//! job is passed over by short ones only for a bounded time, and none starves.
//!
//! The queue is bounded in requests (`QUEUE_CAPACITY`) and in the bytes they hold
//! (`QUEUE_MAX_BYTES`): past either, 503 at once. A request still waiting after
//! `QUEUE_TIMEOUT` gets 503 with `Retry-After`; one whose client goes away leaves the queue
//! (its waiting future is dropped, see [`Waiting`]).
//!
//! Granting happens under one lock, from three places: a request arriving while others wait
//! (it joins them rather than overtaking them), a slot freeing (`InFlight` dropped), and a
//! new routing table (a backend joined, or a limit changed). A grant reserves the slot before
//! it wakes its request, so a woken request never finds its slot taken.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::sync::Notify;

use crate::{
    backend::{Backend, Candidate, Table},
    body::InFlight,
    error::ProxyError,
    policy::{Tried, work_per_slot},
};

/// The shortest time a request can be passed over, whatever its expected cost.
pub const MIN_DELAY: Duration = Duration::from_millis(50);

/// The queue's bounds and order.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// `QUEUE_CAPACITY`.
    pub capacity: usize,
    /// `QUEUE_MAX_BYTES`: the heads and bodies the waiting requests hold, in all.
    pub max_bytes: u64,
    /// `QUEUE_TIMEOUT`.
    pub timeout: Duration,
    /// `MAX_QUEUE_DELAY_FACTOR`.
    pub delay_factor: f64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            capacity: 1024,
            max_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
            delay_factor: 10.0,
        }
    }
}

/// What a request brings to the queue.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    /// Its expected seconds, in microseconds.
    pub work_us: u64,
    /// The bytes it holds while it waits (head and buffered body).
    pub bytes: u64,
}

/// Counters since start, for `/metrics`.
#[derive(Debug, Default)]
pub struct QueueCounters {
    pub queued: AtomicU64,
    pub granted: AtomicU64,
    pub overdue: AtomicU64,
    pub full: AtomicU64,
    pub timeouts: AtomicU64,
    pub cancelled: AtomicU64,
}

/// The requests waiting for a slot.
#[derive(Debug)]
pub struct WorkQueue {
    settings: QueueSettings,
    state: Mutex<State>,
    /// How many wait, kept beside the lock: a slot released while none waits takes no lock.
    waiting: AtomicU64,
    pub counters: QueueCounters,
}

#[derive(Debug, Default)]
struct State {
    /// By (expected µs, arrival): cheapest first.
    by_cost: BTreeMap<(u64, u64), Arc<Waiter>>,
    /// By (overdue at, arrival): the next to become overdue first.
    by_deadline: BTreeMap<(u64, u64), u64>,
    next: u64,
    bytes: u64,
    work_us: u64,
}

#[derive(Debug)]
struct Waiter {
    seq: u64,
    work_us: u64,
    bytes: u64,
    overdue_at: u64,
    tried: Tried,
    granted: Mutex<Option<InFlight>>,
    wake: Notify,
}

/// A snapshot of the queue, for load reports and the admin view.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueView {
    pub waiting: u64,
    pub bytes: u64,
    pub work_seconds: f64,
}

impl WorkQueue {
    pub fn new(settings: QueueSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State::default()),
            waiting: AtomicU64::new(0),
            counters: QueueCounters::default(),
        }
    }

    pub fn settings(&self) -> QueueSettings {
        self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn view(&self) -> QueueView {
        let state = self.lock();
        QueueView {
            waiting: state.by_cost.len() as u64,
            bytes: state.bytes,
            work_seconds: state.work_us as f64 / 1e6,
        }
    }

    /// Whether no request waits (one atomic load, no lock).
    pub fn is_empty(&self) -> bool {
        self.waiting.load(Relaxed) == 0
    }

    /// Removes `waiter` (false: it was not queued, granted already) and publishes the count.
    fn remove(&self, state: &mut State, waiter: &Waiter) -> bool {
        let removed = state.remove(waiter);
        self.waiting.store(state.by_cost.len() as u64, Relaxed);
        removed
    }

    /// Waits for a slot on one of `table`'s candidates, granted in cost order (see the
    /// module's documentation); `pump` is called once the request is queued, so that a free
    /// slot goes to whoever comes first in that order.
    pub async fn wait(
        &self,
        ask: Ask,
        tried: &Tried,
        now: u64,
        pump: impl FnOnce(),
    ) -> Result<InFlight, ProxyError> {
        let delay = Duration::from_secs_f64(
            (ask.work_us as f64 / 1e6 * self.settings.delay_factor).min(1e9),
        )
        .max(MIN_DELAY);
        let waiter = {
            let mut state = self.lock();
            if state.by_cost.len() >= self.settings.capacity
                || state.bytes.saturating_add(ask.bytes) > self.settings.max_bytes
            {
                self.counters.full.fetch_add(1, Relaxed);
                return Err(ProxyError::SlotsFull);
            }
            state.next += 1;
            let waiter = Arc::new(Waiter {
                seq: state.next,
                work_us: ask.work_us,
                bytes: ask.bytes,
                overdue_at: now.saturating_add(u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX)),
                tried: *tried,
                granted: Mutex::new(None),
                wake: Notify::new(),
            });
            state.insert(&waiter);
            self.waiting.store(state.by_cost.len() as u64, Relaxed);
            waiter
        };
        self.counters.queued.fetch_add(1, Relaxed);
        let waiting = Waiting {
            queue: self,
            waiter: Some(waiter),
        };
        pump();
        waiting.until_granted(self.settings.timeout).await
    }

    /// Hands free slots to waiting requests, in order, until none is left of either.
    pub fn pump(&self, table: &Table, now: u64) {
        // Pairs with the fence in `Backend::give_slot` (see there).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        loop {
            let mut state = self.lock();
            let Some(waiter) = state.next_in_line(now, table) else {
                return;
            };
            let Some(backend) = free_slot(table, &waiter.tried, waiter.work_us, now) else {
                return;
            };
            let Some(in_flight) = InFlight::reserve(backend, waiter.work_us) else {
                // Taken meanwhile by a request that did not queue (a retry): look again.
                continue;
            };
            if waiter.overdue_at <= now {
                self.counters.overdue.fetch_add(1, Relaxed);
            }
            self.remove(&mut state, &waiter);
            drop(state);
            self.counters.granted.fetch_add(1, Relaxed);
            *waiter.grant() = Some(in_flight);
            waiter.wake.notify_one();
        }
    }
}

impl Waiter {
    fn grant(&self) -> std::sync::MutexGuard<'_, Option<InFlight>> {
        self.granted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The slot granted to it, if any (taken once).
    fn take_grant(&self) -> Option<InFlight> {
        self.grant().take()
    }
}

impl State {
    fn insert(&mut self, waiter: &Arc<Waiter>) {
        self.by_cost
            .insert((waiter.work_us, waiter.seq), Arc::clone(waiter));
        self.by_deadline
            .insert((waiter.overdue_at, waiter.seq), waiter.work_us);
        self.bytes = self.bytes.saturating_add(waiter.bytes);
        self.work_us = self.work_us.saturating_add(waiter.work_us);
    }

    /// Removes `waiter`; false when it was not queued (granted already).
    fn remove(&mut self, waiter: &Waiter) -> bool {
        if self.by_cost.remove(&(waiter.work_us, waiter.seq)).is_none() {
            return false;
        }
        self.by_deadline.remove(&(waiter.overdue_at, waiter.seq));
        self.bytes = self.bytes.saturating_sub(waiter.bytes);
        self.work_us = self.work_us.saturating_sub(waiter.work_us);
        true
    }

    /// The request the next free slot goes to: the first overdue one, else the cheapest.
    /// A request that already tried every backend with a free slot (a retry) is passed over.
    fn next_in_line(&self, now: u64, table: &Table) -> Option<Arc<Waiter>> {
        let overdue = self
            .by_deadline
            .iter()
            .take_while(|((at, _), _)| *at <= now)
            .map(|((_, seq), work_us)| (*work_us, *seq));
        let cheapest = self.by_cost.keys().copied();
        overdue
            .chain(cheapest)
            .filter_map(|key| self.by_cost.get(&key))
            .find(|waiter| {
                waiter.tried.is_empty() || free_slot(table, &waiter.tried, 0, now).is_some()
            })
            .cloned()
    }
}

/// The candidate with a free slot and the least expected work per slot, not tried yet; one
/// not ejected if there is any.
pub fn free_slot<'t>(
    table: &'t Table,
    tried: &Tried,
    work_us: u64,
    now: u64,
) -> Option<&'t Arc<Backend>> {
    let free = |c: &&Candidate| c.backend.has_slot() && !tried.contains(&c.backend);
    let best = |ejected: bool| {
        table
            .candidates
            .iter()
            .filter(free)
            .filter(|c| c.backend.is_ejected(now) == ejected)
            .min_by(|a, b| work_per_slot(a, work_us).total_cmp(&work_per_slot(b, work_us)))
    };
    best(false).or_else(|| best(true)).map(|c| &c.backend)
}

/// A request in the queue; dropped (its client gone, its deadline passed) it leaves the
/// queue, and a slot granted to it meanwhile goes to the next in line.
struct Waiting<'a> {
    queue: &'a WorkQueue,
    waiter: Option<Arc<Waiter>>,
}

impl Waiting<'_> {
    async fn until_granted(mut self, timeout: Duration) -> Result<InFlight, ProxyError> {
        let Some(waiter) = self.waiter.clone() else {
            return Err(ProxyError::QueueFull);
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(in_flight) = waiter.take_grant() {
                self.waiter = None;
                return Ok(in_flight);
            }
            if tokio::time::timeout_at(deadline, waiter.wake.notified())
                .await
                .is_err()
            {
                // Granted at the last moment: taken all the same.
                if let Some(in_flight) = waiter.take_grant() {
                    self.waiter = None;
                    return Ok(in_flight);
                }
                self.queue.counters.timeouts.fetch_add(1, Relaxed);
                self.leave(&waiter);
                self.waiter = None;
                return Err(ProxyError::SlotTimeout(timeout));
            }
        }
    }

    fn leave(&self, waiter: &Waiter) {
        let mut state = self.queue.lock();
        self.queue.remove(&mut state, waiter);
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        let was_queued = {
            let mut state = self.queue.lock();
            self.queue.remove(&mut state, &waiter)
        };
        if was_queued {
            self.queue.counters.cancelled.fetch_add(1, Relaxed);
        }
        // A slot granted to a request that is gone: dropped here, outside the lock, which
        // hands it on (see `InFlight`'s drop).
        if let Some(in_flight) = waiter.take_grant() {
            in_flight.abandon();
        }
    }
}

#[cfg(test)]
mod tests;
