use std::time::{Duration, Instant};

use common::queue::Category;

use super::*;

const EPS: f64 = 1e-9;

fn assert_close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < EPS,
        "expected {expected}, got {actual}"
    );
}

const MIB: u64 = 1 << 20;

fn sample(at: Instant) -> StatsSample {
    StatsSample {
        at,
        cpu_total_ns: 0,
        system_cpu_ns: 0,
        online_cpus: 4,
        memory_usage: 0,
        memory_cache: 0,
        memory_limit: 0,
        net_rx_bytes: 0,
        net_tx_bytes: 0,
    }
}

/// Two samples 2 s apart on a 4-CPU host, for a container limited to 2 cores.
fn two_samples() -> (StatsSample, StatsSample) {
    let t0 = Instant::now();
    let prev = StatsSample {
        cpu_total_ns: 1_000_000_000,
        system_cpu_ns: 10_000_000_000,
        net_rx_bytes: 1_000,
        net_tx_bytes: 500,
        memory_usage: 300 * MIB,
        memory_cache: 50 * MIB,
        memory_limit: 1000 * MIB,
        ..sample(t0)
    };
    let cur = StatsSample {
        cpu_total_ns: 1_500_000_000,
        system_cpu_ns: 14_000_000_000,
        net_rx_bytes: 301_000,
        net_tx_bytes: 100_500,
        memory_usage: 600 * MIB,
        memory_cache: 100 * MIB,
        memory_limit: 1000 * MIB,
        ..sample(t0 + Duration::from_secs(2))
    };
    (prev, cur)
}

#[test]
fn resource_scores_from_two_samples() {
    let (prev, cur) = two_samples();
    let scores = resource_scores(&prev, &cur, 2.0, 1_000_000.0);
    // CPU: Δcpu = 0.5e9 ns, Δsystem = 4e9 ns, 4 online CPUs, limit 2 cores:
    // 0.5 / 4 × 4 × 100 / 2 = 25 %, score 75.
    assert_close(scores.cpu_util, 25.0);
    assert_close(scores.cpu, 75.0);
    // Memory: (600 − 100) MiB / 1000 MiB = 50 %, score 50.
    assert_close(scores.memory, 50.0);
    // Network: (300 000 + 100 000) bytes / 2 s = 200 000 B/s; / 1 000 000 = 20 %, score 80.
    assert_close(scores.network_bytes_per_s, 200_000.0);
    assert_close(scores.network, 80.0);
}

#[test]
fn cpu_utilization_is_relative_to_the_limit_and_clamped() {
    let (prev, cur) = two_samples();
    // Unlimited (limit = the 4 online CPUs): 0.5 / 4 × 4 × 100 / 4 = 12.5 %.
    assert_close(cpu_utilization(&prev, &cur, 4.0), 12.5);
    // A limit that is not positive means unlimited: the online CPUs.
    assert_close(cpu_utilization(&prev, &cur, 0.0), 12.5);
    assert_close(cpu_utilization(&prev, &cur, f64::NAN), 12.5);
    // Half a core: 0.5 cores used / 0.5 = 100 %; a quarter core would be 200 %, clamped.
    assert_close(cpu_utilization(&prev, &cur, 0.5), 100.0);
    assert_close(cpu_utilization(&prev, &cur, 0.25), 100.0);
}

#[test]
fn cpu_utilization_is_zero_without_progress_or_after_a_reset() {
    let (prev, cur) = two_samples();
    let same_cpu = StatsSample {
        cpu_total_ns: prev.cpu_total_ns,
        ..cur
    };
    assert_eq!(cpu_utilization(&prev, &same_cpu, 2.0), 0.0);
    let same_system = StatsSample {
        system_cpu_ns: prev.system_cpu_ns,
        ..cur
    };
    assert_eq!(cpu_utilization(&prev, &same_system, 2.0), 0.0);
    // Counters that went back (container restarted): 0, not a huge wrapped value.
    let restarted = StatsSample {
        cpu_total_ns: 10,
        ..cur
    };
    assert_eq!(cpu_utilization(&prev, &restarted, 2.0), 0.0);
    assert_eq!(cpu_utilization(&cur, &prev, 2.0), 0.0);
}

#[test]
fn memory_utilization_subtracts_the_cache_and_tolerates_no_limit() {
    let (_, cur) = two_samples();
    assert_close(memory_utilization(&cur), 50.0);
    // Cache larger than usage saturates at 0 %.
    let odd = StatsSample {
        memory_cache: 700 * MIB,
        ..cur
    };
    assert_eq!(memory_utilization(&odd), 0.0);
    // No limit reported: 0 %, score 100.
    let unlimited = StatsSample {
        memory_limit: 0,
        ..cur
    };
    assert_eq!(memory_utilization(&unlimited), 0.0);
    // Usage past the limit is clamped to 100 %.
    let over = StatsSample {
        memory_usage: 2000 * MIB,
        memory_cache: 0,
        ..cur
    };
    assert_eq!(memory_utilization(&over), 100.0);
}

#[test]
fn network_rate_and_score_edge_cases() {
    let (prev, cur) = two_samples();
    // Same instant: no rate.
    let same_time = StatsSample { at: prev.at, ..cur };
    assert_eq!(network_rate(&prev, &same_time), 0.0);
    // Samples in the wrong order: Δt ≤ 0, no rate.
    assert_eq!(network_rate(&cur, &prev), 0.0);
    // Counters that went back count as 0 bytes: only tx moved, 100 000 B / 2 s.
    let rx_reset = StatsSample {
        net_rx_bytes: 0,
        ..cur
    };
    assert_close(network_rate(&prev, &rx_reset), 50_000.0);
    // Past saturation the score is 0, not negative.
    assert_eq!(network_score(2_000_000.0, 1_000_000.0), 0.0);
    assert_close(network_score(250_000.0, 1_000_000.0), 75.0);
    // A saturation that is not positive disables the signal.
    assert_eq!(network_score(1e12, 0.0), 100.0);
    assert_eq!(network_score(1e12, -1.0), 100.0);
}

#[test]
fn availability_step_by_step() {
    let mut availability = Availability::default();
    assert_eq!(availability.score(), 100.0);
    assert_eq!(availability.samples(), 0);

    // Step 1: t = 0.1 s. history [0.1], best [0.1], avg 0.1;
    // threshold = max(0.5, 1.0 × 0.9 + 0.1 × 1.5 × 0.1) = 0.915.
    // effective = 0.3 × 0.1 + 0.7 × 0.1 = 0.1, ratio 0.1 / 0.1 = 1, base 100, no penalty
    // (0.1 < 0.915), trend 0 (one sample): raw 100; ema = 0.2 × 100 + 0.8 × 100 = 100.
    let score = availability.record(Some(Duration::from_millis(100)));
    assert_close(score, 100.0);
    assert_close(availability.dynamic_threshold, 0.915);

    // Step 2: t = 0.2 s. history [0.1, 0.2], best stays [0.1] (0.2 is not below 0.1),
    // avg 0.15; threshold = max(0.5, 0.915 × 0.9 + 0.1 × 1.5 × 0.15) = 0.8235 + 0.0225 = 0.846.
    // effective = 0.3 × 0.2 + 0.7 × 0.15 = 0.06 + 0.105 = 0.165; ratio 1.65;
    // base = 100 × (1 / 1.65)^1.5 = 100 / 2.119480... = 47.181754...; no penalty; trend 0
    // (nothing before the last 5): raw 47.181754...;
    // ema = 0.2 × 47.181754 + 0.8 × 100 = 9.436351 + 80 = 89.436351...
    let score = availability.record(Some(Duration::from_millis(200)));
    let raw2 = 100.0 * (1.0 / 1.65_f64).powf(1.5);
    assert_close(raw2, 47.181_754_191_607_45);
    assert_close(availability.dynamic_threshold, 0.846);
    assert_close(score, 0.2 * raw2 + 0.8 * 100.0);
    assert_close(score, 89.436_350_838_321_49);

    // Step 3: t = 0.05 s. history [0.1, 0.2, 0.05], avg 0.35 / 3 = 0.116667; 0.05 < 0.1 so
    // best [0.1, 0.05], best time 0.075; threshold = max(0.5, 0.846 × 0.9 + 0.15 × 0.116667)
    // = 0.7614 + 0.0175 = 0.7789. effective = 0.3 × 0.05 + 0.7 × 0.116667 = 0.015 +
    // 0.081667 = 0.096667; ratio = 0.096667 / 0.075 = 1.288889;
    // base = 100 × 1.288889^−1.5 = 68.340284...; no penalty; trend 0: raw 68.340284...;
    // ema = 0.2 × 68.340284 + 0.8 × 89.436351 = 13.668057 + 71.549081 = 85.217138...
    let score = availability.record(Some(Duration::from_millis(50)));
    let ratio3 = (0.3 * 0.05 + 0.7 * (0.35 / 3.0)) / 0.075;
    assert_close(ratio3, 1.288_888_888_888_888_8);
    let raw3 = 100.0 * ratio3.powf(-1.5);
    assert_close(raw3, 68.340_284_167_659_48);
    assert_close(availability.dynamic_threshold, 0.7789);
    assert_close(score, 0.2 * raw3 + 0.8 * 89.436_350_838_321_49);
    assert_close(score, 85.217_137_504_189_08);
    assert_close(availability.score(), score);
    assert_eq!(availability.samples(), 3);

    // Step 4: a failure feeds raw 0: ema = 0.8 × 85.217138 = 68.173710...; the history keeps
    // its 3 response times.
    let score = availability.record(None);
    assert_close(score, 0.8 * 85.217_137_504_189_08);
    assert_close(score, 68.173_710_003_351_27);
    assert_eq!(availability.samples(), 3);
    assert_eq!(availability.consecutive_failures(), 1);
    // An answer resets the failure count.
    availability.record(Some(Duration::from_millis(100)));
    assert_eq!(availability.consecutive_failures(), 0);
}

#[test]
fn failures_lower_the_score_and_repeated_ones_drive_it_to_zero() {
    let mut availability = Availability::default();
    // Each failure multiplies the score by 1 − α = 0.8: 80, 64, 51.2, ...
    assert_close(availability.record(None), 80.0);
    assert_close(availability.record(None), 64.0);
    assert_close(availability.record(None), 51.2);
    for _ in 0..100 {
        availability.record(None);
    }
    // 100 × 0.8^103 ≈ 1e-8.
    assert!(availability.score() < 1e-6, "{}", availability.score());
    assert_eq!(availability.samples(), 0);
    assert_eq!(availability.consecutive_failures(), 103);

    // A failure after good answers also lowers the score.
    let mut availability = Availability::default();
    let before = availability.record(Some(Duration::from_millis(10)));
    let after = availability.record(None);
    assert!(after < before, "{after} !< {before}");
}

#[test]
fn dynamic_threshold_penalises_slow_answers() {
    let mut availability = Availability::default();
    // t = 2 s: history [2], best [2], avg 2; threshold = max(0.5, 0.9 + 0.15 × 2) = 1.2.
    // effective 2, ratio 1, base 100; effective > threshold, so
    // penalty = 20 × (1 − e^−(2 − 1.2)) = 20 × (1 − 0.449329) = 11.013421...;
    // raw = 100 − 11.013421 = 88.986579; ema = 0.2 × 88.986579 + 80 = 97.797316...
    let score = availability.record(Some(Duration::from_secs(2)));
    let penalty = 20.0 * (1.0 - (-0.8_f64).exp());
    assert_close(penalty, 11.013_420_717_655_567);
    assert_close(availability.raw, 100.0 - penalty);
    assert_close(score, 97.797_315_856_468_88);

    // Step 2, same 2 s: threshold = 1.2 × 0.9 + 0.3 = 1.38; penalty = 20 × (1 − e^−0.62)
    // = 9.241111...; raw 90.758889; ema = 0.2 × 90.758889 + 0.8 × 97.797316 = 96.389630...
    let score = availability.record(Some(Duration::from_secs(2)));
    assert_close(availability.dynamic_threshold, 1.38);
    assert_close(score, 96.389_630_435_553_81);

    // A fast answer stays under the 0.5 s floor of the threshold: no penalty.
    let mut fast = Availability::default();
    fast.record(Some(Duration::from_millis(400)));
    assert_eq!(fast.raw, 100.0);
}

#[test]
fn trend_compares_the_last_five_with_the_five_before() {
    let mut availability = Availability::default();
    // Fewer than 2 samples, and no sample before the last 5: 0 (the original divided by 0).
    assert_eq!(availability.trend(), 0.0);
    for _ in 0..5 {
        availability.record(Some(Duration::from_millis(200)));
        assert_eq!(availability.trend(), 0.0);
    }
    // 6 samples [0.2 × 5, 0.1]: recent = (4 × 0.2 + 0.1) / 5 = 0.18, older = 0.2 / 1 = 0.2
    // (divided by its own count, not by 5): trend = (0.2 − 0.18) / 0.2 = 0.1, faster.
    availability.record(Some(Duration::from_millis(100)));
    assert_close(availability.trend(), 0.1);
    for _ in 0..4 {
        availability.record(Some(Duration::from_millis(100)));
    }
    // [0.2 × 5, 0.1 × 5]: (0.2 − 0.1) / 0.2 = 0.5.
    assert_close(availability.trend(), 0.5);

    // Getting slower: [0.1 × 5, 0.3 × 5]: (0.1 − 0.3) / 0.1 = −2, clamped to −1.
    let mut slower = Availability::default();
    for millis in [100, 100, 100, 100, 100, 300, 300, 300, 300, 300] {
        slower.record(Some(Duration::from_millis(millis)));
    }
    assert_eq!(slower.trend(), -1.0);

    // Response times of 0 give older = 0: 0, not a division by zero.
    let mut zero = Availability::default();
    for _ in 0..6 {
        zero.record(Some(Duration::ZERO));
    }
    assert_eq!(zero.trend(), 0.0);
    assert!(zero.score().is_finite());
}

#[test]
fn getting_faster_raises_the_score_and_slower_lowers_it() {
    // Same response times in a different order: same best time (the first, 0.05 s), same
    // average, same last answer (0.2 s), so only the trend differs.
    let faster = [50, 300, 300, 300, 300, 300, 100, 100, 100, 100, 200];
    let slower = [50, 100, 100, 100, 100, 300, 300, 300, 300, 300, 200];
    let run = |times: &[u64]| {
        let mut availability = Availability::default();
        for &millis in times {
            availability.record(Some(Duration::from_millis(millis)));
        }
        availability
    };
    let (faster, slower) = (run(&faster), run(&slower));
    // faster: recent [0.1 × 4, 0.2] = 0.12, older [0.3 × 5] = 0.3: trend (0.3 − 0.12) / 0.3 = 0.6.
    assert_close(faster.trend(), 0.6);
    // slower: recent [0.3 × 4, 0.2] = 0.28, older [0.1 × 4, 0.3] = 0.14: (0.14 − 0.28) / 0.14
    // = −1.
    assert_close(slower.trend(), -1.0);
    // Both: avg = 2.15 / 11 = 0.195455, effective = 0.3 × 0.2 + 0.7 × 0.195455 = 0.196818,
    // best 0.05, ratio 3.936364, base = 100 × 3.936364^−1.5 = 12.804340...; no penalty (the
    // threshold never drops below 0.5).
    let base = 100.0 * ((0.3 * 0.2 + 0.7 * (2.15 / 11.0)) / 0.05_f64).powf(-1.5);
    assert_close(base, 12.804_339_573_821_752);
    assert_close(faster.raw, base + 10.0 * 0.6);
    assert_close(slower.raw, base - 10.0);
    assert!(faster.raw > base && base > slower.raw);
}

#[test]
fn raw_score_guards_degenerate_times() {
    // best ≤ 0 → ratio 1 → base 100.
    assert_eq!(raw_score(0.1, 0.1, 0.0, 0.5, 0.0), 100.0);
    // effective 0 (instant answers) → 100, not infinity.
    assert_eq!(raw_score(0.0, 0.0, 0.1, 0.5, 0.0), 100.0);
    // A very slow answer is clamped at 0.
    assert_eq!(raw_score(100.0, 100.0, 0.001, 0.5, -1.0), 0.0);
}

#[test]
fn history_and_best_times_are_bounded() {
    let mut availability = Availability::new(3, 2, 0.5);
    for millis in [500, 400, 300, 200, 100] {
        availability.record(Some(Duration::from_millis(millis)));
    }
    assert_eq!(availability.samples(), 3);
    assert_eq!(Vec::from(availability.history.clone()), [0.3, 0.2, 0.1]);
    assert_eq!(Vec::from(availability.best_times.clone()), [0.2, 0.1]);
    // Out-of-range construction values are made usable.
    let odd = Availability::new(0, 0, f64::NAN);
    assert_eq!((odd.history_size, odd.best_time_window), (1, 1));
    assert_eq!(odd.ema_alpha, DEFAULT_EMA_ALPHA);
    assert_eq!(Availability::new(1, 1, 7.0).ema_alpha, 1.0);
}

#[test]
fn availability_validation_names_the_variable() {
    assert_eq!(Availability::validate(20, 10, 0.2), Ok(()));
    assert_eq!(Availability::validate(20, 10, 1.0), Ok(()));
    assert!(
        Availability::validate(0, 10, 0.2)
            .unwrap_err()
            .contains("HISTORY_SIZE")
    );
    assert!(
        Availability::validate(20, 0, 0.2)
            .unwrap_err()
            .contains("BEST_TIME_WINDOW")
    );
    for alpha in [0.0, -0.1, 1.5, f64::NAN] {
        assert!(
            Availability::validate(20, 10, alpha)
                .unwrap_err()
                .contains("EMA_ALPHA")
        );
    }
}

#[test]
fn overall_is_the_weighted_mean() {
    let scores = Scores {
        cpu: 80.0,
        memory: 60.0,
        network: 100.0,
        availability: 40.0,
    };
    // Defaults: 0.35 × 80 + 0.25 × 60 + 0.15 × 100 + 0.25 × 40 = 28 + 15 + 15 + 10 = 68, / 1.
    assert_close(overall(&scores, &Weights::default()), 68.0);
    // CPU and availability only, 3 : 1: (3 × 80 + 1 × 40) / 4 = 70.
    let custom = Weights {
        cpu: 3.0,
        memory: 0.0,
        network: 0.0,
        availability: 1.0,
    };
    assert_close(overall(&scores, &custom), 70.0);
    // Weights need not sum to 1: 2 × everything gives the same mean.
    let doubled = Weights {
        cpu: 0.7,
        memory: 0.5,
        network: 0.3,
        availability: 0.5,
    };
    assert_close(overall(&scores, &doubled), 68.0);
    // All weights 0: 100. A negative weight counts as 0.
    let zero = Weights {
        cpu: 0.0,
        memory: 0.0,
        network: 0.0,
        availability: 0.0,
    };
    assert_eq!(overall(&scores, &zero), 100.0);
    let negative = Weights {
        memory: -5.0,
        ..custom
    };
    assert_close(overall(&scores, &negative), 70.0);
    // Out-of-range scores are clamped.
    let wild = Scores {
        cpu: 500.0,
        ..scores
    };
    assert_eq!(overall(&wild, &Weights { cpu: 1.0, ..zero }), 100.0);
}

#[test]
fn classification_boundaries() {
    let t = Thresholds::default();
    let category = |overall: f64, cpu: f64| classify(overall, cpu, &t).category;
    // u = 100 − overall. Low below 30 exclusive.
    assert_eq!(category(70.5, 0.0), Category::Low); // u 29.5
    assert_eq!(category(70.0, 0.0), Category::Medium); // u 30: not < low
    // High at 75 inclusive.
    assert_eq!(category(25.5, 0.0), Category::Medium); // u 74.5
    assert_eq!(category(25.0, 0.0), Category::High); // u 75
    // CPU at MAX_CPU_THRESHOLD (80) makes any container HU, even an otherwise idle one.
    assert_eq!(category(95.0, 79.9), Category::Low);
    assert_eq!(category(95.0, 80.0), Category::High);
    assert_eq!(category(50.0, 80.0), Category::High);
    // Critical at 90 inclusive.
    assert!(!classify(10.5, 0.0, &t).critical); // u 89.5
    let at_critical = classify(10.0, 0.0, &t); // u 90
    assert!(at_critical.critical);
    assert_eq!(at_critical.category, Category::High);
    assert_eq!(at_critical.utilization, 90.0);
    // Out-of-range overall scores are clamped first.
    assert_eq!(classify(150.0, 0.0, &t).utilization, 0.0);
    assert_eq!(classify(f64::NAN, 0.0, &t).utilization, 100.0);
}

#[test]
fn weights_validation_names_the_variable() {
    assert_eq!(Weights::default().validate(), Ok(()));
    let bad = Weights {
        network: -0.1,
        ..Weights::default()
    };
    assert!(bad.validate().unwrap_err().contains("NETWORK_WEIGHT"));
    let nan = Weights {
        availability: f64::NAN,
        ..Weights::default()
    };
    assert!(nan.validate().unwrap_err().contains("AVAILABILITY_WEIGHT"));
    let zero = Weights {
        cpu: 0.0,
        memory: 0.0,
        network: 0.0,
        availability: 0.0,
    };
    assert!(zero.validate().unwrap_err().contains("all 0"));
    // One positive weight is enough.
    assert_eq!(Weights { cpu: 1.0, ..zero }.validate(), Ok(()));
}

#[test]
fn thresholds_validation_names_the_variable() {
    let ok = Thresholds::default();
    assert_eq!(ok.validate(), Ok(()));
    // high == critical is allowed.
    assert_eq!(
        Thresholds {
            critical: 75.0,
            ..ok
        }
        .validate(),
        Ok(())
    );
    let cases = [
        (Thresholds { low: 75.0, ..ok }, "LOW_LOAD_THRESHOLD"),
        (Thresholds { low: -1.0, ..ok }, "LOW_LOAD_THRESHOLD"),
        (Thresholds { high: 95.0, ..ok }, "CRITICAL_LOAD_THRESHOLD"),
        (
            Thresholds {
                critical: 101.0,
                ..ok
            },
            "CRITICAL_LOAD_THRESHOLD",
        ),
        (
            Thresholds {
                high: f64::NAN,
                ..ok
            },
            "HIGH_LOAD_THRESHOLD",
        ),
        (
            Thresholds {
                max_cpu: 120.0,
                ..ok
            },
            "MAX_CPU_THRESHOLD",
        ),
    ];
    for (thresholds, name) in cases {
        let err = thresholds.validate().unwrap_err();
        assert!(err.contains(name), "{thresholds:?}: {err}");
    }
}
