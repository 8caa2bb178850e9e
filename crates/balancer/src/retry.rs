//! Retries. `RetryPolicy`: the rules of one request, when it is sent again and why.
//! `RetryBudget`: retries allowed per second, shared by all requests, are a minimum plus a
//! ratio of the requests seen (in the current or the previous second, whichever is larger).
//! Lock-free: a one-second window of atomic counters, rolled over by whoever first sees the
//! new second.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::{
    backend::{Backend, Table},
    error::ProxyError,
    metrics::RetryReason,
    policy::Tried,
    upstream::SendError,
};

/// Attempts after connect failures, each on another backend.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// What one attempt came to, for the retry rules.
#[derive(Debug)]
pub enum Outcome {
    /// The request could not be sent: no connection, or one that failed after the request
    /// was (maybe) sent (a reset).
    Failed(SendError),
    /// The backend answered 502 or 503.
    Unavailable,
    /// The backend left the routing table while its answer was awaited (its node lost:
    /// neither an answer nor a reset will come); `elsewhere`: a backend not tried yet is
    /// routable.
    Removed { elsewhere: bool },
}

/// The policy's word on an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the request again, to a backend it has not tried.
    Retry(RetryReason),
    /// The rules allowed a retry but the budget is spent: give up.
    Denied,
    /// No retry: a failure goes to the client, a 502/503 too; a removed backend's answer is
    /// still awaited.
    GiveUp,
}

/// The retry rules of one request, in one place. It is sent again on another backend:
/// - after a connect failure, up to `MAX_CONNECT_ATTEMPTS` attempts in all, outside the
///   budget (the request reached no backend);
/// - once, after a reset, a 502 or 503 answer, or its backend leaving the table, when it is
///   safe to send again (idempotent by method, `Idempotency-Key` or `RETRY_ROUTES`, with a
///   body that can be sent again), another backend was routable when the attempt was picked,
///   and the budget allows a retry.
#[derive(Debug)]
pub struct RetryPolicy {
    /// The backends tried so far; the next attempt picks another.
    tried: Tried,
    idempotent: bool,
    /// The current attempt's body can be sent again and another backend was routable.
    resendable: bool,
    /// A retry after the request reached a backend was made (there is at most one).
    retried: bool,
    connect_failures: usize,
    /// The client's answer when no further attempt is made.
    last_error: ProxyError,
}

impl RetryPolicy {
    pub fn new(idempotent: bool) -> Self {
        Self {
            tried: Tried::default(),
            idempotent,
            resendable: false,
            retried: false,
            connect_failures: 0,
            last_error: ProxyError::Connect(None),
        }
    }

    pub fn tried(&self) -> &Tried {
        &self.tried
    }

    /// An attempt is sent to `backend`; `replayable`: its body can be sent again; `others`:
    /// another backend was routable when this one was picked.
    pub fn sent_to(&mut self, backend: &Backend, replayable: bool, others: bool) {
        self.tried.add(backend);
        self.resendable = replayable && others;
    }

    /// Whether the current attempt may be sent again once it reached its backend (after a
    /// reset, a 502/503, its backend leaving), budget permitting.
    pub fn may_resend(&self) -> bool {
        self.idempotent && self.resendable && !self.retried
    }

    /// Whether `table` holds a routable backend this request has not tried.
    pub fn elsewhere(&self, table: &Table) -> bool {
        table
            .candidates
            .iter()
            .any(|candidate| !self.tried.contains(&candidate.backend))
    }

    /// Retry or give up after `outcome`; a retry it allows after the request reached a
    /// backend is taken from `budget` at `now`.
    pub fn decide(&mut self, outcome: Outcome, budget: &RetryBudget, now: u64) -> Verdict {
        let reason = match outcome {
            Outcome::Failed(err @ SendError::Connect(_)) => {
                self.last_error = ProxyError::Connect(Some(err));
                self.connect_failures += 1;
                return if self.connect_failures < MAX_CONNECT_ATTEMPTS {
                    Verdict::Retry(RetryReason::Connect)
                } else {
                    Verdict::GiveUp
                };
            }
            Outcome::Failed(err) => {
                self.last_error = ProxyError::Upstream(Some(err));
                RetryReason::Reset
            }
            Outcome::Unavailable => RetryReason::Status,
            Outcome::Removed { elsewhere: false } => return Verdict::GiveUp,
            Outcome::Removed { elsewhere: true } => RetryReason::Removed,
        };
        if !self.may_resend() {
            return Verdict::GiveUp;
        }
        if !budget.withdraw(now) {
            return Verdict::Denied;
        }
        self.retried = true;
        if reason != RetryReason::Reset {
            self.last_error = ProxyError::Upstream(None);
        }
        Verdict::Retry(reason)
    }

    /// The client's answer when the request is given up: the last failure.
    pub fn take_error(&mut self) -> ProxyError {
        std::mem::replace(&mut self.last_error, ProxyError::Connect(None))
    }
}

/// The retries allowed per second, shared by all requests (see the module's documentation).
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: u64,
    window: AtomicU64,
    requests: AtomicU64,
    previous_requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: u32) -> Self {
        Self {
            ratio,
            min_per_sec: u64::from(min_per_sec),
            window: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            previous_requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    fn roll(&self, now_nanos: u64) {
        let second = now_nanos / 1_000_000_000;
        let window = self.window.load(Relaxed);
        if window != second
            && self
                .window
                .compare_exchange(window, second, Relaxed, Relaxed)
                .is_ok()
        {
            let seen = self.requests.swap(0, Relaxed);
            let previous = if second == window + 1 { seen } else { 0 };
            self.previous_requests.store(previous, Relaxed);
            self.retries.store(0, Relaxed);
        }
    }

    /// Counts one original request.
    pub fn deposit(&self, now_nanos: u64) {
        self.roll(now_nanos);
        self.requests.fetch_add(1, Relaxed);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self, now_nanos: u64) -> bool {
        self.roll(now_nanos);
        let requests = self
            .requests
            .load(Relaxed)
            .max(self.previous_requests.load(Relaxed));
        let allowed = self.min_per_sec + (self.ratio * requests as f64) as u64;
        if self.retries.fetch_add(1, Relaxed) < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests;
