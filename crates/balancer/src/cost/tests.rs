use proptest::prelude::*;

use super::*;

const WORKER: &str =
    "POST /submit class=/operation size=/data/iterations|/data/limit|/data/seconds";

fn rules() -> CostRules {
    WORKER.parse().unwrap()
}

#[test]
fn the_default_workers_rule_reads_class_and_size() {
    let rules = rules();
    let submit = rules
        .rule_for(&Method::POST, &Path::new("/submit"))
        .unwrap();
    let job = |body: &str| rules.job(submit, body.as_bytes(), 64 << 10);
    assert_eq!(
        job(r#"{"operation":"monte_carlo_pi","data":{"iterations":1000000}}"#),
        Ok(Job {
            rule: 0,
            class: "monte_carlo_pi".into(),
            size: 1e6
        })
    );
    // The first pointer that finds something gives the size.
    assert_eq!(
        job(r#"{"operation":"primes","data":{"limit":5000}}"#).map(|job| job.size),
        Ok(5000.0)
    );
    assert_eq!(
        job(r#"{"operation":"sleep","data":{"seconds":0.5}}"#).map(|job| job.size),
        Ok(0.5)
    );
    assert_eq!(rules.rule_for(&Method::GET, &Path::new("/submit")), None);
    assert_eq!(
        rules.rule_for(&Method::POST, &Path::new("/submitted")),
        None
    );
    assert_eq!(
        rules.rule_for(&Method::POST, &Path::new("/x/../submit/")),
        Some(0)
    );
}

#[test]
fn what_cannot_be_read_falls_back_with_its_reason() {
    let rules = rules();
    let job = |body: &str| rules.job(0, body.as_bytes(), 64);
    assert_eq!(job("not json"), Err(Fallback::NotJson));
    assert_eq!(job(r#"{"data":{"limit":5}}"#), Err(Fallback::MissingField));
    assert_eq!(
        job(r#"{"operation":"x","data":{}}"#),
        Err(Fallback::MissingField)
    );
    assert_eq!(
        job(r#"{"operation":"x","data":{"limit":"many"}}"#),
        Err(Fallback::NotNumeric)
    );
    assert_eq!(
        job(r#"{"operation":"x","data":{"limit":-1}}"#),
        Err(Fallback::NotNumeric)
    );
    assert_eq!(
        job(r#"{"operation":["x"],"data":{"limit":1}}"#),
        Err(Fallback::NotNumeric)
    );
    let big = format!(
        r#"{{"operation":"x","data":{{"limit":{}}}}}"#,
        "1".repeat(64)
    );
    assert_eq!(job(&big), Err(Fallback::BodyTooLarge));
    assert_eq!(rules.job(7, b"{}", 64), Err(Fallback::MissingField));

    assert_eq!(explicit(b" 2.5 "), Ok(2.5));
    for bad in [&b"-1"[..], b"NaN", b"inf", b"", b"1e999", b"\xff", b"two"] {
        assert_eq!(explicit(bad), Err(Fallback::BadHeader), "{bad:?}");
    }
}

#[test]
fn rules_are_checked_when_read() {
    assert_eq!("".parse::<CostRules>(), Ok(CostRules::default()));
    let two: CostRules = format!("{WORKER}; GET /api class= size=/n")
        .parse()
        .unwrap();
    assert_eq!(two.rule_for(&Method::GET, &Path::new("/api/x")), Some(1));
    for (bad, says) in [
        ("POST", "is not a rule"),
        ("P@ST /x class=/a size=/b", "is not an HTTP method"),
        ("POST x class=/a size=/b", "not a path prefix"),
        ("POST /x class=a size=/b", "must start with /"),
        ("POST /x class=/a~2 size=/b", "~ must be followed"),
        ("POST /x class=/a", "needs both"),
        ("POST /x class=/a size=/b size=/c", "once each"),
        ("POST /x kind=/a size=/b", "expected class="),
    ] {
        let error = bad.parse::<CostRules>().unwrap_err();
        assert!(error.contains(says), "{bad}: {error}");
    }
}

/// A small deterministic generator for the noise in the fit tests.
fn noise(seed: &mut u64) -> f64 {
    *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

#[test]
fn the_fit_converges_on_noisy_data_over_three_orders_of_magnitude() {
    // 20 ms of overhead and 2 µs per unit, sizes from 1e3 to 1e6, ±20 % noise.
    let (intercept, slope) = (0.02, 2e-6);
    let mut fit = Fit::new(1.0);
    let mut seed = 7;
    for i in 0..2000 {
        let size = 10f64.powf(3.0 + 3.0 * f64::from(i % 97) / 96.0);
        let seconds = (intercept + slope * size) * (1.0 + 0.2 * noise(&mut seed));
        fit.observe(size, seconds);
    }
    let (b, a) = fit.line();
    assert!((b - slope).abs() / slope < 0.05, "slope {b}");
    assert!((a - intercept).abs() < 0.01, "intercept {a}");
    for size in [1e3, 1e5, 1e6] {
        let truth = intercept + slope * size;
        let predicted = fit.predict(size);
        assert!(
            (predicted - truth).abs() / truth < 0.1,
            "{size}: {predicted} against {truth}"
        );
    }
    assert_eq!(fit.samples(), 2000);
    assert!(fit.error() < 0.5, "error {}", fit.error());
}

#[test]
fn the_fit_starts_from_its_prior_and_follows_a_change() {
    let mut fit = Fit::new(0.5);
    assert_eq!(fit.predict(1e6), 0.5);
    assert_eq!(fit.line(), (0.0, 0.5));
    assert_eq!(fit.samples(), 0);
    // One size only: the mean of what it took, no slope.
    for _ in 0..50 {
        fit.observe(100.0, 2.0);
    }
    assert!(
        (fit.predict(100.0) - 2.0).abs() < 0.05,
        "{}",
        fit.predict(100.0)
    );
    // Jobs get ten times faster: the fit follows within a few hundred samples.
    for _ in 0..1000 {
        fit.observe(100.0, 0.2);
    }
    assert!(
        (fit.predict(100.0) - 0.2).abs() < 0.01,
        "{}",
        fit.predict(100.0)
    );
    // Nonsense is ignored.
    let before = fit.clone();
    fit.observe(f64::NAN, 1.0);
    fit.observe(1.0, -1.0);
    assert_eq!(fit, before);
}

proptest! {
    /// Whatever the samples, the fit's predictions stay finite, non-negative and grow (or
    /// stay) with the size.
    #[test]
    fn predictions_stay_finite_non_negative_and_monotone(
        samples in prop::collection::vec((0.0f64..1e9, 0.0f64..1e4), 0..200),
        a in 0.0f64..1e9,
        b in 0.0f64..1e9,
    ) {
        let mut fit = Fit::new(1.0);
        for (size, seconds) in samples {
            fit.observe(size, seconds);
        }
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let (p, q) = (fit.predict(low), fit.predict(high));
        prop_assert!(p.is_finite() && q.is_finite() && p >= 0.0);
        prop_assert!(q >= p);
    }

    /// Any body with a numeric size is read; any other body falls back, never panics.
    #[test]
    fn any_body_is_read_or_falls_back(body in prop::collection::vec(any::<u8>(), 0..256), size in 0u32..u32::MAX) {
        let rules = rules();
        let _ = rules.job(0, &body, 128);
        let good = format!(r#"{{"operation":"primes","data":{{"limit":{size}}}}}"#);
        prop_assert_eq!(rules.job(0, good.as_bytes(), 128).map(|job| job.size), Ok(f64::from(size)));
    }
}

#[test]
fn server_timing_gives_the_jobs_seconds() {
    assert_eq!(duration_seconds(b"job;dur=250"), Some(0.25));
    assert_eq!(
        duration_seconds(b"db;dur=5, job;desc=\"x\";dur=\"1500\""),
        Some(1.5)
    );
    assert_eq!(duration_seconds(b"db;dur=5, cache"), Some(0.005));
    for none in [&b"job"[..], b"job;dur=-1", b"job;dur=x", b"", b"\xff;dur=1"] {
        assert_eq!(duration_seconds(none), None, "{none:?}");
    }
}

#[test]
fn costs_learn_by_header_then_rule_then_route_and_count_what_falls_back() {
    let costs = Costs::new(rules(), 64);
    let post = Method::POST;
    let learn = |x_cost: Option<&str>, body: Option<&str>, timing: Option<&str>| {
        costs.learn(
            &post,
            "/submit",
            x_cost.map(str::as_bytes),
            body.map(str::as_bytes),
            timing.map(str::as_bytes),
        );
    };
    let pi = r#"{"operation":"pi","data":{"iterations":100}}"#;
    learn(None, Some(pi), Some("job;dur=100"));
    learn(None, Some(pi), None); // nothing to learn from
    learn(Some("lots"), Some(pi), Some("job;dur=100")); // the rule stands in
    learn(Some("7"), Some(pi), Some("job;dur=70"));
    learn(None, Some("{}"), Some("job;dur=10")); // the route's mean
    learn(None, None, Some("job;dur=10")); // streamed: the route's mean
    costs.learn(&Method::GET, "/other", None, None, Some(b"job;dur=1"));

    let fits = costs.fits();
    let seen: Vec<(&str, &str, u64)> = fits
        .iter()
        .map(|fit| (fit.route.as_str(), fit.class.as_str(), fit.samples))
        .collect();
    assert_eq!(
        seen,
        [
            ("POST /submit", "*", 2),
            ("POST /submit", "X-Cost", 1),
            ("POST /submit", "pi", 2)
        ]
    );
    let counted: Vec<(&str, u64)> = Fallback::ALL
        .iter()
        .map(|reason| reason.label())
        .zip(costs.fallbacks())
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        counted,
        [
            ("bad_header", 1),
            ("body_too_large", 1),
            ("missing_field", 1)
        ]
    );
}

#[test]
fn a_job_is_costed_before_it_is_sent_and_learned_after() {
    let costs = Costs::new(rules(), DEFAULT_BODY_LIMIT);
    let job = |body: &str| {
        costs
            .job(&Method::POST, "/submit", None, Some(body.as_bytes()))
            .unwrap()
    };
    let small = job(r#"{"operation":"sleep","data":{"seconds":1}}"#);
    let large = job(r#"{"operation":"sleep","data":{"seconds":4}}"#);
    // Nothing learned yet: the prior.
    assert_eq!(costs.expected(&small), PRIOR_SECONDS);
    assert_eq!(costs.expected_us(&large), 100_000);
    for _ in 0..50 {
        costs.observe(&small, 1.0);
        costs.observe(&large, 4.0);
    }
    assert!(
        (costs.expected(&small) - 1.0).abs() < 0.05,
        "{}",
        costs.expected(&small)
    );
    assert!((costs.expected(&large) - 4.0).abs() < 0.05);
    // An unseen class of the same route: the route's mean until it has its own samples.
    let other = job(r#"{"operation":"primes","data":{"limit":5}}"#);
    assert_eq!(
        costs.expected(&other),
        PRIOR_SECONDS,
        "no route mean learned yet"
    );
    let unreadable = job("not json");
    assert_eq!(unreadable.class, "*");
    costs.observe(&unreadable, 2.0);
    assert!(
        (costs.expected(&other) - 2.0).abs() < 1e-6,
        "the route's mean"
    );
    // Neither a rule nor X-Cost: no job (and nothing counted).
    assert!(costs.job(&Method::GET, "/health", None, None).is_none());
    // Nonsense seconds are not learned.
    costs.observe(&small, f64::NAN);
    costs.observe(&small, -1.0);
    assert!((costs.expected(&small) - 1.0).abs() < 0.05);
}
