use super::*;
use crate::dist::Shape;

/// A `monte_carlo_pi` row's iterations.
fn iterations(row: &TraceRow) -> u64 {
    match row.job {
        Some(Submit::MonteCarloPi { iterations }) if row.kind == Kind::MonteCarloPi => iterations,
        _ => panic!("not a monte_carlo_pi row: {row:?}"),
    }
}

/// A `sleep` row's seconds.
fn seconds(row: &TraceRow) -> f64 {
    match row.job {
        Some(Submit::Sleep { seconds }) if row.kind == Kind::Sleep => seconds,
        _ => panic!("not a sleep row: {row:?}"),
    }
}

fn config() -> GenerateConfig {
    GenerateConfig {
        samples: 20_000,
        arrivals: Dist::new(Shape::Exponential, 0.01, 0.0).unwrap(),
        service: Dist::new(Shape::Lognormal, 0.05, 0.02).unwrap(),
        size: Dist::new(Shape::Uniform, 1000.0, 200.0).unwrap(),
        read_ratio: 0.3,
        concurrency: 1,
        seed: 42,
        intensity_unit_s: 0.01,
        max_intensity: 10,
        job: Job::Intensity,
    }
}

fn gaps(rows: &[TraceRow]) -> Vec<f64> {
    let mut previous = 0.0;
    rows.iter()
        .map(|row| {
            let gap = row.arrival_s - previous;
            previous = row.arrival_s;
            gap
        })
        .collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn generated_trace_follows_its_parameters() {
    let rows = generate(&config()).unwrap();
    assert_eq!(rows.len(), 20_000);
    assert!(rows.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
    assert!(rows.iter().enumerate().all(|(i, r)| r.id == i as u64));

    let gap = mean(&gaps(&rows));
    assert!((gap - 0.01).abs() < 0.0003, "mean gap {gap}");

    let light = rows.iter().filter(|r| r.kind == Kind::Light).count() as f64 / 20_000.0;
    assert!((light - 0.3).abs() < 0.015, "light share {light}");

    let work: Vec<f64> = rows
        .iter()
        .filter(|r| r.kind == Kind::Work)
        .filter_map(|r| r.service_s)
        .collect();
    let demand = mean(&work);
    assert!((demand - 0.05).abs() < 0.0015, "mean work demand {demand}");

    let sizes: Vec<f64> = rows.iter().map(|r| r.size_bytes as f64).collect();
    let size = mean(&sizes);
    assert!((size - 1000.0).abs() < 10.0, "mean size {size}");

    for row in &rows {
        assert!((1..=10).contains(&row.intensity), "{row:?}");
        if row.kind == Kind::Work {
            let expected = (row.service_s.unwrap() / 0.01).round().clamp(1.0, 10.0) as u32;
            assert_eq!(row.intensity, expected, "{row:?}");
        }
    }
}

#[test]
fn merged_clients_keep_the_mean_gap() {
    let rows = generate(&GenerateConfig {
        concurrency: 8,
        arrivals: Dist::new(Shape::Constant, 0.01, 0.0).unwrap(),
        samples: 8000,
        ..config()
    })
    .unwrap();
    let gap = mean(&gaps(&rows));
    assert!((gap - 0.01).abs() < 0.0002, "mean gap {gap}");
    // Constant gaps of staggered clients interleave evenly.
    assert!((rows[100].arrival_s - rows[99].arrival_s - 0.01).abs() < 1e-6);
}

/// The heavy-tailed trace of the policy benchmark: monte_carlo_pi jobs whose sizes are
/// log-normal with sigma 1.5.
fn pi_config(max_iterations: u64) -> GenerateConfig {
    GenerateConfig {
        samples: 100_000,
        service: Dist::lognormal_sigma(0.05, 1.5).unwrap(),
        read_ratio: 0.0,
        job: Job::MonteCarloPi {
            iterations_per_s: 2e7,
            max_iterations,
        },
        ..config()
    }
}

fn median_and_log_sigma(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let logs: Vec<f64> = values.iter().map(|v| v.ln()).collect();
    let log_mean = mean(&logs);
    let var = logs.iter().map(|l| (l - log_mean).powi(2)).sum::<f64>() / (logs.len() - 1) as f64;
    (sorted[sorted.len() / 2], var.sqrt())
}

#[test]
fn pi_jobs_are_lognormal_in_size_with_their_median_and_sigma() {
    let rows = generate(&pi_config(DEFAULT_MAX_ITERATIONS)).unwrap();
    assert_eq!(rows.len(), 100_000);
    assert!(rows.iter().all(|r| r.kind == Kind::MonteCarloPi));
    let sizes: Vec<f64> = rows.iter().map(|r| iterations(r) as f64).collect();
    let (median, sigma) = median_and_log_sigma(&sizes);
    // Median = mean·e^(−σ²/2) seconds at 2·10⁷ iterations a second.
    let expected = 0.05 * (-1.125f64).exp() * 2e7;
    assert!(
        (median / expected - 1.0).abs() < 0.02,
        "median {median} vs {expected}"
    );
    assert!(
        (sigma - 1.5).abs() < 0.015,
        "sigma of ln(iterations) {sigma}"
    );
    // About three orders of magnitude between the 0.1st and the 99.9th percentile.
    let mut sorted = sizes.clone();
    sorted.sort_by(f64::total_cmp);
    let spread = sorted[99_899] / sorted[100];
    assert!(
        (3e3..3e4).contains(&spread),
        "99.9th / 0.1st percentile {spread}"
    );
    // The mean job takes the mean demand on one thread; service_s is each job's time.
    let demand = mean(
        &rows
            .iter()
            .map(|r| r.service_s.unwrap())
            .collect::<Vec<_>>(),
    );
    assert!((demand - 0.05).abs() < 0.003, "mean demand {demand}");
    for row in &rows {
        let service = iterations(row) as f64 / 2e7;
        assert!((row.service_s.unwrap() - service).abs() < 1e-6, "{row:?}");
    }
}

#[test]
fn pi_jobs_are_clamped_to_the_workers_limits() {
    let rows = generate(&pi_config(2_000_000)).unwrap();
    let sizes: Vec<u64> = rows.iter().map(iterations).collect();
    assert!(sizes.iter().all(|n| (1..=2_000_000).contains(n)));
    // 2·10⁶ iterations take 0.1 s at 2·10⁷/s, ln(0.1/median)/σ = 1.21 sigmas above the
    // median: 11.3 % of the draws are larger and clamped.
    let clamped = sizes.iter().filter(|n| **n == 2_000_000).count();
    assert!((10_500..12_100).contains(&clamped), "{clamped} clamped");
    assert!(rows.iter().all(|r| r.service_s.unwrap() <= 0.1 + 1e-9));
    assert_eq!(pi_iterations(1e-12, 2e7, 100), 1, "at least one iteration");
    assert_eq!(pi_iterations(1e9, 2e7, 100), 100);
    assert_eq!(pi_iterations(f64::INFINITY, 2e7, 100), 100);
    assert_eq!(pi_iterations(0.5, 2e7, u64::MAX), 10_000_000);
    // Light requests are jobs of a tenth of the demand.
    let mixed = generate(&GenerateConfig {
        samples: 2000,
        read_ratio: 0.5,
        ..pi_config(DEFAULT_MAX_ITERATIONS)
    })
    .unwrap();
    assert!(mixed.iter().all(|r| r.kind == Kind::MonteCarloPi));
    let bad = GenerateConfig {
        job: Job::MonteCarloPi {
            iterations_per_s: 0.0,
            max_iterations: 10,
        },
        ..config()
    };
    assert!(generate(&bad).is_err());
}

/// The same seed gives the same jobs, another seed others; the arrivals are those of the
/// intensity trace of the same seed (the job kind draws no numbers of its own).
#[test]
fn pi_traces_are_seeded() {
    let small = GenerateConfig {
        samples: 500,
        ..pi_config(DEFAULT_MAX_ITERATIONS)
    };
    let a = generate(&small).unwrap();
    assert_eq!(a, generate(&small).unwrap());
    let other = generate(&GenerateConfig {
        seed: 43,
        ..small.clone()
    })
    .unwrap();
    assert_ne!(a, other);
    // Same arrivals as the intensity trace of the same seed: only the jobs differ.
    let intensity = generate(&GenerateConfig {
        job: Job::Intensity,
        ..small
    })
    .unwrap();
    assert!(
        a.iter()
            .zip(&intensity)
            .all(|(p, i)| p.arrival_s == i.arrival_s)
    );
}

/// The heavy-tailed trace of the policy benchmark on a small host: sleep jobs whose
/// seconds are log-normal with sigma 1.5.
fn sleep_config(max_seconds: f64) -> GenerateConfig {
    GenerateConfig {
        samples: 100_000,
        service: Dist::lognormal_sigma(0.1, 1.5).unwrap(),
        read_ratio: 0.0,
        job: Job::Sleep { max_seconds },
        ..config()
    }
}

/// With a mean of 1 s the worker's limits (0.001 and 120 s) are 3.9 and 4.0 sigmas from the
/// median: what is generated is the log-normal itself.
#[test]
fn sleep_jobs_are_lognormal_in_seconds_with_their_median_and_sigma() {
    let rows = generate(&GenerateConfig {
        service: Dist::lognormal_sigma(1.0, 1.5).unwrap(),
        ..sleep_config(DEFAULT_MAX_SLEEP_S)
    })
    .unwrap();
    assert_eq!(rows.len(), 100_000);
    let sizes: Vec<f64> = rows.iter().map(seconds).collect();
    let (median, sigma) = median_and_log_sigma(&sizes);
    // Median = mean·e^(−σ²/2).
    let expected = (-1.125f64).exp();
    assert!(
        (median / expected - 1.0).abs() < 0.02,
        "median {median} vs {expected}"
    );
    assert!((sigma - 1.5).abs() < 0.015, "sigma of ln(seconds) {sigma}");
    let mut sorted = sizes.clone();
    sorted.sort_by(f64::total_cmp);
    let spread = sorted[99_899] / sorted[100];
    assert!(
        (3e3..3e4).contains(&spread),
        "99.9th / 0.1st percentile {spread}"
    );
    // The mean job is the mean demand, and service_s is each job's seconds.
    let demand = mean(&sizes);
    assert!((demand - 1.0).abs() < 0.05, "mean demand {demand}");
    for row in &rows {
        assert_eq!(row.service_s, Some(seconds(row)), "{row:?}");
        assert_eq!(row.intensity, 1);
        assert_eq!(row.kind.path(), "/submit");
    }
}

#[test]
fn sleep_jobs_are_clamped_to_the_workers_limits() {
    let rows = generate(&sleep_config(1.0)).unwrap();
    let sizes: Vec<f64> = rows.iter().map(seconds).collect();
    assert!(sizes.iter().all(|s| (MIN_SLEEP_S..=1.0).contains(s)));
    // The benchmark's mean of 0.1 s has its median at 0.0325 s. 1 s is ln(1/0.0325)/1.5 =
    // 2.29 sigmas above it: 1.1 % of the draws are longer and clamped; 0.001 s is 2.32
    // sigmas below it: 1.0 % are lifted to it.
    let clamped = sizes.iter().filter(|s| **s == 1.0).count();
    assert!((1000..1250).contains(&clamped), "{clamped} clamped to 1 s");
    let lifted = sizes.iter().filter(|s| **s == MIN_SLEEP_S).count();
    assert!((900..1150).contains(&lifted), "{lifted} lifted to 1 ms");
    assert!(rows.iter().all(|r| r.service_s.unwrap() <= 1.0));
    assert_eq!(sleep_seconds(1e-9, 120.0), MIN_SLEEP_S);
    assert_eq!(sleep_seconds(f64::NAN, 120.0), MIN_SLEEP_S);
    assert_eq!(sleep_seconds(1e9, 120.0), 120.0);
    assert_eq!(sleep_seconds(f64::INFINITY, 120.0), 120.0);
    assert_eq!(
        sleep_seconds(0.123_456_789, 120.0),
        0.123457,
        "microseconds"
    );
    // Light requests are sleeps of a tenth of the demand.
    let mixed = generate(&GenerateConfig {
        samples: 4000,
        read_ratio: 0.5,
        service: Dist::constant(0.2).unwrap(),
        ..sleep_config(DEFAULT_MAX_SLEEP_S)
    })
    .unwrap();
    let short = mixed.iter().filter(|r| seconds(r) == 0.02).count();
    let long = mixed.iter().filter(|r| seconds(r) == 0.2).count();
    assert_eq!(short + long, 4000);
    assert!((1800..2200).contains(&short), "{short} light");
    for max_seconds in [0.0, 0.0005, f64::NAN, f64::INFINITY] {
        let bad = GenerateConfig {
            job: Job::Sleep { max_seconds },
            ..config()
        };
        let err = generate(&bad).unwrap_err().to_string();
        assert!(err.contains("--max-sleep"), "{max_seconds}: {err}");
    }
}

/// The same seed gives the same sleeps, and the arrivals and job sizes of the pi trace of
/// that seed: only the job differs.
#[test]
fn sleep_traces_are_seeded_like_pi_traces() {
    let small = GenerateConfig {
        samples: 500,
        ..sleep_config(DEFAULT_MAX_SLEEP_S)
    };
    let a = generate(&small).unwrap();
    assert_eq!(a, generate(&small).unwrap());
    assert_ne!(
        a,
        generate(&GenerateConfig {
            seed: 43,
            ..small.clone()
        })
        .unwrap()
    );
    let pi = generate(&GenerateConfig {
        job: Job::MonteCarloPi {
            iterations_per_s: 1e9,
            max_iterations: u64::MAX,
        },
        ..small
    })
    .unwrap();
    for (sleep, pi) in a.iter().zip(&pi) {
        assert_eq!(sleep.arrival_s, pi.arrival_s);
        let drawn = iterations(pi) as f64 / 1e9;
        assert!((seconds(sleep) - drawn).abs() < 1e-6 || seconds(sleep) == MIN_SLEEP_S);
    }
}

#[test]
fn same_seed_same_trace_and_other_seed_other_trace() {
    let render = |config: &GenerateConfig| {
        let mut bytes = Vec::new();
        write(&mut bytes, &generate(config).unwrap()).unwrap();
        bytes
    };
    let small = GenerateConfig {
        samples: 500,
        ..config()
    };
    assert_eq!(render(&small), render(&small));
    assert_ne!(
        render(&small),
        render(&GenerateConfig {
            seed: 43,
            ..small.clone()
        })
    );
}

#[test]
fn written_traces_read_back_equal() {
    let rows = generate(&GenerateConfig {
        samples: 300,
        ..config()
    })
    .unwrap();
    let mut bytes = Vec::new();
    write(&mut bytes, &rows).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.starts_with("id,arrival_s,kind,intensity,service_s,size_bytes,iterations,seconds\n")
    );
    let read = parse(bytes.as_slice(), Path::new("t.csv")).unwrap();
    assert_eq!(read, rows);
}

#[test]
fn pi_traces_read_back_equal() {
    let rows = generate(&GenerateConfig {
        samples: 300,
        ..pi_config(DEFAULT_MAX_ITERATIONS)
    })
    .unwrap();
    let mut bytes = Vec::new();
    write(&mut bytes, &rows).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.lines().nth(1).unwrap().contains(",monte_carlo_pi,"),
        "{text}"
    );
    assert_eq!(parse(bytes.as_slice(), Path::new("t.csv")).unwrap(), rows);
}

#[test]
fn sleep_traces_read_back_equal() {
    let rows = generate(&GenerateConfig {
        samples: 300,
        ..sleep_config(DEFAULT_MAX_SLEEP_S)
    })
    .unwrap();
    let mut bytes = Vec::new();
    write(&mut bytes, &rows).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let first = text.lines().nth(1).unwrap();
    assert!(first.contains(",sleep,"), "{text}");
    assert!(
        first.ends_with(&format!(",,{:.6}", seconds(&rows[0]))),
        "{first}"
    );
    assert_eq!(parse(bytes.as_slice(), Path::new("t.csv")).unwrap(), rows);
}

/// A trace written before the `seconds` column (or the `iterations` one) reads as before.
#[test]
fn older_traces_read_without_the_newer_columns() {
    let text = "id,arrival_s,kind,intensity,service_s,size_bytes,iterations\n\
                0,0.0,monte_carlo_pi,1,0.05,0,1000000\n1,0.1,work,3,0.03,64,\n";
    let rows = parse(text.as_bytes(), Path::new("t.csv")).unwrap();
    assert_eq!(
        rows[0].job,
        Some(Submit::MonteCarloPi {
            iterations: 1_000_000
        })
    );
    assert_eq!(rows[1].job, None);
    let text = "id,arrival_s,kind,intensity,service_s,size_bytes\n0,0.0,light,2,0.002,64\n";
    let rows = parse(text.as_bytes(), Path::new("t.csv")).unwrap();
    assert_eq!((rows[0].kind, rows[0].job), (Kind::Light, None));
    // Columns of another kind are ignored.
    let text = "arrival_s,kind,iterations,seconds\n0,work,5,0.5\n0.1,sleep,,0.25\n";
    let rows = parse(text.as_bytes(), Path::new("t.csv")).unwrap();
    assert_eq!(rows[0].job, None);
    assert_eq!(rows[1].job, Some(Submit::Sleep { seconds: 0.25 }));
}

#[test]
fn minimal_traces_take_defaults() {
    let text = "arrival_s,service_s\n0,0.5\n1.5,\n2,0.25\n";
    let rows = parse(text.as_bytes(), Path::new("t.csv")).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].id, 1);
    assert_eq!(rows[1].kind, Kind::Work);
    assert_eq!(rows[1].intensity, 1);
    assert_eq!(rows[1].service_s, None);
    assert_eq!(rows[2].service_s, Some(0.25));
}

#[test]
fn malformed_rows_name_their_line() {
    let header = "id,arrival_s,kind,intensity,service_s,size_bytes\n";
    for (body, line, expected) in [
        (
            "0,0.0,work,1,0.1,10\n1,abc,work,1,0.1,10\n",
            3,
            "`arrival_s` must be",
        ),
        (
            "0,0.0,work,1,0.1,10\n1,0.1,work,1,0.1,10\n2,0.2,cook,1,0.1,10\n",
            4,
            "kind `cook`",
        ),
        ("0,0.0,work,0,0.1,10\n", 2, "`intensity`"),
        (
            "0,0.5,work,1,0.1,10\n1,0.2,work,1,0.1,10\n",
            3,
            "earlier than",
        ),
        ("0,0.0,work,1\n", 2, "4 fields, but the header has 6"),
        ("0,-1,work,1,0.1,10\n", 2, "non-negative"),
        ("0,0.0,work,1,0.1,big\n", 2, "`size_bytes`"),
        ("0,,work,1,0.1,10\n", 2, "`arrival_s` is empty"),
        (
            "0,0.0,monte_carlo_pi,1,0.1,10\n",
            2,
            "needs its `iterations`",
        ),
    ] {
        let text = format!("{header}{body}");
        let err = parse(text.as_bytes(), Path::new("bad.csv")).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("bad.csv line {line}: ")) && message.contains(expected),
            "{body:?}: {message}"
        );
    }
    let with_iterations = "arrival_s,kind,iterations\n0,monte_carlo_pi,0\n";
    let err = parse(with_iterations.as_bytes(), Path::new("bad.csv")).unwrap_err();
    assert!(err.to_string().contains("`iterations` must be"), "{err}");
    for (text, expected) in [
        (
            "arrival_s,kind\n0,sleep\n",
            "a `sleep` row needs its `seconds`",
        ),
        ("arrival_s,kind,seconds\n0,sleep,\n", "needs its `seconds`"),
        ("arrival_s,kind,seconds\n0,sleep,-1\n", "`seconds` must be"),
        (
            "arrival_s,kind,seconds\n0,sleep,soon\n",
            "`seconds` must be",
        ),
    ] {
        let err = parse(text.as_bytes(), Path::new("bad.csv")).unwrap_err();
        assert!(
            err.to_string().starts_with("bad.csv line 2: ") && err.to_string().contains(expected),
            "{text:?}: {err}"
        );
    }
    let err = parse("when,what\n1,2\n".as_bytes(), Path::new("bad.csv")).unwrap_err();
    assert!(
        err.to_string()
            .contains("line 1: the header has no `arrival_s`"),
        "{err}"
    );
}
