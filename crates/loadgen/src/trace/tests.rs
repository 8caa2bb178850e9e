use super::*;
use crate::dist::Shape;

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
    let sizes: Vec<f64> = rows.iter().map(|r| r.iterations.unwrap() as f64).collect();
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
        let service = row.iterations.unwrap() as f64 / 2e7;
        assert!((row.service_s.unwrap() - service).abs() < 1e-6, "{row:?}");
    }
}

#[test]
fn pi_jobs_are_clamped_to_the_workers_limits() {
    let rows = generate(&pi_config(2_000_000)).unwrap();
    let sizes: Vec<u64> = rows.iter().map(|r| r.iterations.unwrap()).collect();
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
    assert!(text.starts_with("id,arrival_s,kind,intensity,service_s,size_bytes,iterations\n"));
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
    let err = parse("when,what\n1,2\n".as_bytes(), Path::new("bad.csv")).unwrap_err();
    assert!(
        err.to_string()
            .contains("line 1: the header has no `arrival_s`"),
        "{err}"
    );
}
