//! Routing policies. Picking reads the current table and the backends' atomics only: no lock.
//!
//! Ejected backends are skipped while any other candidate is left; when every candidate is
//! ejected they are used anyway (failing open beats refusing every request). Backends already
//! tried by this request are never picked again.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use crate::{
    backend::{Backend, Candidate, Table},
    config::Policy,
};

/// A lock-free, seedable random number generator: SplitMix64 over an atomic counter. With a
/// fixed seed the sequence of numbers handed out is fixed (which thread gets which one is not).
#[derive(Debug)]
pub struct Rng(AtomicU64);

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    pub fn next_u64(&self) -> u64 {
        let mut z = self.0.fetch_add(GAMMA, Relaxed).wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Backends this request already tried (a retry goes elsewhere).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried {
    keys: [u64; 4],
    len: usize,
}

impl Tried {
    pub fn add(&mut self, backend: &Backend) {
        if self.len < self.keys.len() {
            self.keys[self.len] = backend.key;
            self.len += 1;
        }
    }

    pub fn contains(&self, backend: &Backend) -> bool {
        self.keys[..self.len].contains(&backend.key)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Chooses a backend per request according to the configured policy.
#[derive(Debug)]
pub struct Picker {
    policy: Policy,
    rng: Rng,
    next: AtomicUsize,
    decay: Duration,
}

impl Picker {
    pub fn new(policy: Policy, seed: u64, decay: Duration) -> Self {
        Self {
            policy,
            rng: Rng::new(seed),
            next: AtomicUsize::new(0),
            decay,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// A backend from `table` for a new request, or `None` when no candidate is left.
    pub fn pick(&self, table: &Table, tried: &Tried, now: u64) -> Option<Arc<Backend>> {
        self.pick_for(table, tried, now, Want::default())
    }

    /// A backend for a request of expected work `want.work_us`; with `want.free_only`, only
    /// among backends with a free slot.
    pub fn pick_for(
        &self,
        table: &Table,
        tried: &Tried,
        now: u64,
        want: Want,
    ) -> Option<Arc<Backend>> {
        let candidates = &table.candidates;
        if candidates.is_empty() {
            return None;
        }
        let free = |c: &Candidate| !want.free_only || c.backend.has_slot();
        let healthy =
            |c: &Candidate| !tried.contains(&c.backend) && !c.backend.is_ejected(now) && free(c);
        let untried = |c: &Candidate| !tried.contains(&c.backend) && free(c);
        self.pick_with(candidates, &healthy, now, want.work_us)
            .or_else(|| self.pick_with(candidates, &untried, now, want.work_us))
            .map(|c| Arc::clone(&c.backend))
    }

    fn pick_with<'t>(
        &self,
        candidates: &'t [Candidate],
        eligible: &dyn Fn(&Candidate) -> bool,
        now: u64,
        work_us: u64,
    ) -> Option<&'t Candidate> {
        match self.policy {
            Policy::RoundRobin => {
                let start = self.next.fetch_add(1, Relaxed);
                (0..candidates.len())
                    .map(|i| &candidates[(start + i) % candidates.len()])
                    .find(|c| eligible(c))
            }
            Policy::WeightedRandom => self.weighted(candidates, eligible),
            Policy::LeastRequest => {
                let start = self.rng.below(candidates.len());
                (0..candidates.len())
                    .map(|i| &candidates[(start + i) % candidates.len()])
                    .filter(|c| eligible(c))
                    .min_by(|a, b| {
                        let load = |c: &Candidate| (c.backend.in_flight() + 1) as f64 / weight(c);
                        load(a).total_cmp(&load(b))
                    })
            }
            Policy::P2cEwma => self.p2c(candidates, eligible, now),
            Policy::LeastWork => {
                let start = self.rng.below(candidates.len());
                (0..candidates.len())
                    .map(|i| &candidates[(start + i) % candidates.len()])
                    .filter(|c| eligible(c))
                    .min_by(|a, b| work_per_slot(a, work_us).total_cmp(&work_per_slot(b, work_us)))
            }
        }
    }

    fn weighted<'t>(
        &self,
        candidates: &'t [Candidate],
        eligible: &dyn Fn(&Candidate) -> bool,
    ) -> Option<&'t Candidate> {
        let total: f64 = candidates
            .iter()
            .filter(|c| eligible(c))
            .map(|c| c.weight)
            .sum();
        if total <= 0.0 {
            // Every eligible score is zero: uniform among them.
            let count = candidates.iter().filter(|c| eligible(c)).count();
            if count == 0 {
                return None;
            }
            return candidates
                .iter()
                .filter(|c| eligible(c))
                .nth(self.rng.below(count));
        }
        let mut point = self.rng.unit() * total;
        let mut last = None;
        for candidate in candidates.iter().filter(|c| eligible(c)) {
            if candidate.weight <= 0.0 {
                continue;
            }
            last = Some(candidate);
            if point < candidate.weight {
                return Some(candidate);
            }
            point -= candidate.weight;
        }
        last
    }

    fn p2c<'t>(
        &self,
        candidates: &'t [Candidate],
        eligible: &dyn Fn(&Candidate) -> bool,
        now: u64,
    ) -> Option<&'t Candidate> {
        let n = candidates.len();
        let cost = |c: &Candidate| self.cost(c, now);
        if n == 1 {
            return candidates.first().filter(|c| eligible(c));
        }
        // Two distinct random indices; a few draws find eligible ones in the common case.
        for _ in 0..4 {
            let a = self.rng.below(n);
            let mut b = self.rng.below(n - 1);
            if b >= a {
                b += 1;
            }
            let (first, second) = (&candidates[a], &candidates[b]);
            match (eligible(first), eligible(second)) {
                (true, true) => {
                    return Some(if cost(second) < cost(first) {
                        second
                    } else {
                        first
                    });
                }
                (true, false) | (false, true) if n == 2 => {
                    return Some(if eligible(first) { first } else { second });
                }
                _ => {}
            }
        }
        // Most candidates are excluded: the cheapest eligible one.
        candidates
            .iter()
            .filter(|c| eligible(c))
            .min_by(|a, b| cost(a).total_cmp(&cost(b)))
    }

    /// Peak-EWMA cost: latency x (in-flight + 1) / weight. A backend without latency samples
    /// costs nothing while idle and a large penalty per request in flight.
    fn cost(&self, candidate: &Candidate, now: u64) -> f64 {
        const PENALTY_NS: f64 = 1e9;
        let backend = &candidate.backend;
        let pending = backend.in_flight() as f64;
        let mut latency = backend.latency_estimate(now, self.decay);
        if latency == 0.0 && pending > 0.0 {
            latency = PENALTY_NS;
        }
        latency * (pending + 1.0) / weight(candidate)
    }
}

/// What a request asks of the picker.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    /// Its expected seconds, in microseconds.
    pub work_us: u64,
    /// Only backends with a free slot (late binding: the others are full).
    pub free_only: bool,
}

/// `least-work`'s measure: the expected seconds in flight on a backend with this request
/// added, per unit of capacity (its slots; 1 when unlimited), with the request count as a
/// tie-break between backends without costs.
pub(crate) fn work_per_slot(candidate: &Candidate, work_us: u64) -> f64 {
    let backend = &candidate.backend;
    let capacity = backend.slots().max(1) as f64;
    let work = backend.work_us().saturating_add(work_us) as f64;
    (work + (backend.in_flight() + 1) as f64 * 1e-3) / capacity
}

/// The weight used by the load-aware policies: the score, at least 1.
fn weight(candidate: &Candidate) -> f64 {
    candidate.weight.max(1.0)
}

#[cfg(test)]
pub(crate) mod tests;
