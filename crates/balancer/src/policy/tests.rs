use std::collections::HashMap;

use common::queue::{Category, QueueSnapshot};

use super::*;
use crate::{
    backend::{Backends, SourceKind},
    upstream::PoolConfig,
};

pub(crate) fn table(scores: &[f64]) -> Backends {
    let backends = Backends::new(
        PoolConfig {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle: 1,
        },
        1,
        SourceKind::Agent,
    );
    let items = scores
        .iter()
        .enumerate()
        .map(|(i, score)| {
            crate::backend::tests::item(
                &format!("b{i}"),
                &format!("10.0.0.{i}:80"),
                *score,
                Category::Low,
            )
        })
        .collect();
    backends.apply_snapshot(&QueueSnapshot::new(1, 0, items), 80);
    backends
}

fn counts(picker: &Picker, backends: &Backends, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let table = backends.load();
    for _ in 0..n {
        let backend = picker.pick(&table, &Tried::default(), 0).unwrap();
        *counts.entry(backend.dns_name.clone()).or_default() += 1;
    }
    counts
}

#[test]
fn rng_is_reproducible_and_uniform_enough() {
    let a = Rng::new(7);
    let b = Rng::new(7);
    let xs: Vec<_> = (0..5).map(|_| a.next_u64()).collect();
    let ys: Vec<_> = (0..5).map(|_| b.next_u64()).collect();
    assert_eq!(xs, ys);
    let mut buckets = [0usize; 4];
    for _ in 0..40_000 {
        buckets[a.below(4)] += 1;
    }
    assert!(
        buckets.iter().all(|&n| (9_000..11_000).contains(&n)),
        "{buckets:?}"
    );
    assert!((0..1000).all(|_| (0.0..1.0).contains(&a.unit())));
}

#[test]
fn weighted_random_follows_the_scores() {
    let backends = table(&[10.0, 30.0, 60.0]);
    let picker = Picker::new(Policy::WeightedRandom, 42, Duration::from_secs(10));
    let n = 60_000;
    let counts = counts(&picker, &backends, n);
    for (name, share) in [("b0", 0.1), ("b1", 0.3), ("b2", 0.6)] {
        let got = counts[name] as f64 / n as f64;
        assert!((got - share).abs() < 0.01, "{name}: {got} vs {share}");
    }
}

#[test]
fn zero_scores_fall_back_to_uniform() {
    let backends = table(&[0.0, 0.0]);
    let picker = Picker::new(Policy::WeightedRandom, 1, Duration::from_secs(10));
    let counts = counts(&picker, &backends, 1000);
    assert_eq!(counts.len(), 2);
}

#[test]
fn round_robin_takes_turns() {
    let backends = table(&[50.0, 50.0, 50.0]);
    let picker = Picker::new(Policy::RoundRobin, 1, Duration::from_secs(10));
    let counts = counts(&picker, &backends, 300);
    assert!(counts.values().all(|&n| n == 100), "{counts:?}");
}

#[test]
fn least_request_and_p2c_avoid_the_busy_backend() {
    let backends = table(&[50.0, 50.0]);
    let busy = Arc::clone(&backends.load().candidates[0].backend);
    busy.in_flight.fetch_add(5, Relaxed);
    for policy in [Policy::LeastRequest, Policy::P2cEwma] {
        let picker = Picker::new(policy, 3, Duration::from_secs(10));
        let counts = counts(&picker, &backends, 100);
        assert_eq!(counts.get("b0"), None, "{policy}: {counts:?}");
    }
}

#[test]
fn p2c_prefers_the_faster_backend() {
    let backends = table(&[50.0, 50.0, 50.0]);
    let table_now = backends.load();
    let decay = Duration::from_secs(10);
    for (i, ms) in [(0, 100), (1, 5), (2, 50)] {
        table_now.candidates[i]
            .backend
            .observe_latency(Duration::from_millis(ms), 1, decay);
    }
    let picker = Picker::new(Policy::P2cEwma, 9, decay);
    let counts = counts(&picker, &backends, 3000);
    assert!(counts.get("b1") > counts.get("b2"), "{counts:?}");
    assert!(
        counts.get("b2") > counts.get("b0").or(Some(&0)),
        "{counts:?}"
    );
    assert_eq!(
        counts.get("b0"),
        None,
        "the slowest never wins a pair: {counts:?}"
    );
}

#[test]
fn tried_and_ejected_backends_are_skipped() {
    let backends = table(&[50.0, 50.0]);
    let table_now = backends.load();
    let first = Arc::clone(&table_now.candidates[0].backend);
    let second = Arc::clone(&table_now.candidates[1].backend);
    for policy in [
        Policy::WeightedRandom,
        Policy::P2cEwma,
        Policy::LeastRequest,
        Policy::RoundRobin,
        Policy::LeastWork,
    ] {
        let picker = Picker::new(policy, 5, Duration::from_secs(10));
        let mut tried = Tried::default();
        tried.add(&first);
        for _ in 0..20 {
            let picked = picker.pick(&table_now, &tried, 0).unwrap();
            assert!(Arc::ptr_eq(&picked, &second), "{policy}");
        }
        tried.add(&second);
        assert!(picker.pick(&table_now, &tried, 0).is_none(), "{policy}");
    }
    // Ejected: skipped while another is healthy, used when none is.
    let ejection = crate::backend::Ejection {
        after: 1,
        base: Duration::from_secs(60),
        max: Duration::from_secs(60),
    };
    first.connect_failed(0, ejection);
    let picker = Picker::new(Policy::RoundRobin, 5, Duration::from_secs(10));
    for _ in 0..10 {
        let picked = picker.pick(&table_now, &Tried::default(), 1).unwrap();
        assert!(Arc::ptr_eq(&picked, &second));
    }
    second.connect_failed(0, ejection);
    assert!(
        picker.pick(&table_now, &Tried::default(), 1).is_some(),
        "fails open"
    );
}

#[test]
fn least_work_weighs_expected_seconds_per_slot_not_requests() {
    let backends = table(&[50.0, 50.0, 50.0]);
    let table_now = backends.load();
    let [a, b, c] = [0, 1, 2].map(|i| Arc::clone(&table_now.candidates[i].backend));
    // `a`: one job of 10 s; `b`: three of 1 s; `c`: two of 2 s.
    let _held: Vec<_> = [
        (&a, 10.0),
        (&b, 1.0),
        (&b, 1.0),
        (&b, 1.0),
        (&c, 2.0),
        (&c, 2.0),
    ]
    .into_iter()
    .map(|(backend, seconds)| {
        crate::body::InFlight::start(Arc::clone(backend), (seconds * 1e6) as u64)
    })
    .collect();
    let picker = Picker::new(Policy::LeastWork, 3, Duration::from_secs(10));
    let want = Want {
        work_us: 500_000,
        free_only: false,
    };
    for _ in 0..20 {
        let picked = picker
            .pick_for(&table_now, &Tried::default(), 0, want)
            .unwrap();
        assert!(Arc::ptr_eq(&picked, &b), "3 s beats 4 s and 10 s");
    }
    // Least-request would have avoided `b` (three requests against one and two).
    let least_request = Picker::new(Policy::LeastRequest, 3, Duration::from_secs(10));
    let picked = least_request
        .pick(&table_now, &Tried::default(), 0)
        .unwrap();
    assert!(Arc::ptr_eq(&picked, &a));
}

#[test]
fn free_only_skips_full_backends() {
    let backends = table(&[50.0, 50.0]);
    let table_now = backends.load();
    let picker = Picker::new(Policy::LeastWork, 3, Duration::from_secs(10));
    let want = Want {
        work_us: 0,
        free_only: true,
    };
    // Unlimited backends are never full.
    assert!(
        picker
            .pick_for(&table_now, &Tried::default(), 0, want)
            .is_some()
    );
}
