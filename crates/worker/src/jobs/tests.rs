use std::time::Duration;

use super::*;

#[test]
fn pi_is_within_a_hundredth_at_a_million_iterations() {
    let pi = monte_carlo_pi(1_000_000, &CancelFlag::default()).unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "got {pi}");
}

#[test]
fn prime_counts_are_exact() {
    let cancel = CancelFlag::default();
    let known = [
        (0, 0),
        (1, 0),
        (2, 0),
        (3, 1),
        (4, 2),
        (10, 4),
        (11, 4),
        (12, 5),
        (100, 25),
        (1_000, 168),
        (7_919, 999),
        (7_920, 1_000),
        (1_000_000, 78_498),
        (10_000_000, 664_579),
    ];
    for (limit, expected) in known {
        assert_eq!(
            count_primes_below(limit, &cancel),
            Ok(expected),
            "primes below {limit}"
        );
    }
}

#[test]
fn prime_counts_match_trial_division_across_segment_edges() {
    let cancel = CancelFlag::default();
    let is_prime = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
    let mut running = 0;
    for limit in 0..3_000u64 {
        assert_eq!(
            count_primes_below(limit, &cancel),
            Ok(running),
            "below {limit}"
        );
        running += u64::from(is_prime(limit));
    }
    // Around the first segment boundary (2^18 odd numbers from 3).
    let edge = 3 + 2 * (1u64 << 18);
    for limit in edge - 5..edge + 5 {
        let slow = (0..limit).filter(|&n| is_prime(n)).count() as u64;
        assert_eq!(
            count_primes_below(limit, &cancel),
            Ok(slow),
            "below {limit}"
        );
    }
}

#[test]
fn cancelled_jobs_stop_early() {
    let cancel = CancelFlag::default();
    cancel.cancel();
    assert_eq!(monte_carlo_pi(u64::MAX, &cancel), Err(Cancelled));
    assert_eq!(
        count_primes_below(1_000_000_000_000, &cancel),
        Err(Cancelled)
    );
    assert_eq!(spin(u64::MAX, &cancel), Err(Cancelled));
    assert_eq!(sleep(Duration::from_secs(60), &cancel), Err(Cancelled));
}

#[test]
fn sleep_and_memory_jobs_take_their_time_and_size() {
    let cancel = CancelFlag::default();
    let slept = sleep(Duration::from_millis(120), &cancel).unwrap();
    assert!(slept >= 0.12, "slept {slept}");
    assert_eq!(
        consume_memory(3 << 20, Duration::ZERO, &cancel),
        Ok(3 << 20)
    );
}

#[test]
fn spin_is_deterministic() {
    let cancel = CancelFlag::default();
    assert_eq!(spin(1_000, &cancel), spin(1_000, &cancel));
    assert_ne!(spin(1_000, &cancel), spin(1_001, &cancel));
}
