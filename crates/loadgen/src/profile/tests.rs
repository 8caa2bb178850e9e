use super::*;

#[test]
fn a_constant_rate_is_evenly_spaced() {
    let profile = Profile::constant(10.0, Duration::from_secs(2)).unwrap();
    let times = profile.arrivals(Spacing::Even);
    assert_eq!(times.len(), 20);
    for (i, t) in times.iter().enumerate() {
        assert!((t - i as f64 * 0.1).abs() < 1e-9, "{i}: {t}");
    }
}

#[test]
fn steps_follow_one_another() {
    let profile: Profile = "10@1s,50@1s,0@1s,10@1s".parse().unwrap();
    assert_eq!(profile.duration(), Duration::from_secs(4));
    let times = profile.arrivals(Spacing::Even);
    assert_eq!(times.len(), 70);
    assert_eq!(times.iter().filter(|t| **t < 1.0).count(), 10);
    assert_eq!(times.iter().filter(|t| (1.0..2.0).contains(*t)).count(), 50);
    assert_eq!(times.iter().filter(|t| (2.0..3.0).contains(*t)).count(), 0);
    assert_eq!(times.iter().filter(|t| **t >= 3.0).count(), 10);
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn a_ramp_rises_linearly() {
    let profile: Profile = "0..100@10s".parse().unwrap();
    let times = profile.arrivals(Spacing::Even);
    // The expected count is the area under the rate: 100 * 10 / 2.
    assert!((times.len() as f64 - 500.0).abs() <= 1.0, "{}", times.len());
    // Rate at t is 10 t: in the first half a quarter of the requests.
    let first_half = times.iter().filter(|t| **t < 5.0).count();
    assert!((first_half as f64 - 125.0).abs() <= 1.0, "{first_half}");
    let down: Profile = "100..0@10s".parse().unwrap();
    assert!((down.arrivals(Spacing::Even).len() as f64 - 500.0).abs() <= 1.0);
}

#[test]
fn poisson_spacing_keeps_the_rate_and_the_seed() {
    let profile = Profile::constant(200.0, Duration::from_secs(50)).unwrap();
    let times = profile.arrivals(Spacing::Poisson { seed: 5 });
    let n = times.len() as f64;
    assert!((n - 10_000.0).abs() < 300.0, "{n}");
    assert_eq!(times, profile.arrivals(Spacing::Poisson { seed: 5 }));
    assert_ne!(times, profile.arrivals(Spacing::Poisson { seed: 6 }));
}

#[test]
fn bad_profiles_are_refused() {
    for bad in ["", "10", "10@", "x@1s", "10@forever", "-5@1s", "1..x@2s"] {
        assert!(bad.parse::<Profile>().is_err(), "{bad:?} was accepted");
    }
    assert_eq!(
        "10@30s,10..50@1m".parse::<Profile>().unwrap().to_string(),
        "10@30s,10..50@60s"
    );
}
