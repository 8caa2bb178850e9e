//! The retry budget: retries allowed per second are a minimum plus a ratio of the requests
//! seen (in the current or the previous second, whichever is larger). Lock-free: a one-second
//! window of atomic counters, rolled over by whoever first sees the new second.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn minimum_then_ratio() {
        let budget = RetryBudget::new(0.5, 2);
        let now = 5 * SECOND;
        assert!(budget.withdraw(now));
        assert!(budget.withdraw(now));
        assert!(!budget.withdraw(now), "the minimum is spent");
        for _ in 0..4 {
            budget.deposit(now);
        }
        assert!(budget.withdraw(now));
        assert!(budget.withdraw(now));
        assert!(!budget.withdraw(now), "2 + 0.5 x 4 = 4 retries");
    }

    #[test]
    fn a_new_second_refills_and_remembers_the_last_one() {
        let budget = RetryBudget::new(0.5, 0);
        for _ in 0..10 {
            budget.deposit(SECOND);
        }
        for _ in 0..5 {
            assert!(budget.withdraw(SECOND));
        }
        assert!(!budget.withdraw(SECOND));
        // Next second: the previous second's 10 requests still count.
        assert!(budget.withdraw(2 * SECOND));
        // After a gap, nothing is remembered.
        assert!(!budget.withdraw(10 * SECOND));
    }
}
