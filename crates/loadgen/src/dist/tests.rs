use rand::{SeedableRng, rngs::StdRng};

use super::*;

fn draw(dist: &Dist, n: usize, seed: u64) -> Vec<f64> {
    let sampler = dist.sampler();
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| sampler.sample(&mut rng)).collect()
}

fn mean_stdev(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

fn within(actual: f64, expected: f64, tolerance: f64, what: &str) {
    let error = (actual - expected).abs() / expected.abs().max(1e-12);
    assert!(
        error <= tolerance,
        "{what}: {actual} is {:.2}% off {expected} (tolerance {:.1}%)",
        error * 100.0,
        tolerance * 100.0
    );
}

#[test]
fn every_shape_has_its_mean_and_stdev() {
    for (shape, mean, stdev) in [
        (Shape::Exponential, 0.02, 0.02),
        (Shape::Uniform, 5.0, 1.5),
        (Shape::Normal, 10.0, 2.0),
        (Shape::Lognormal, 0.05, 0.03),
    ] {
        let dist = Dist::new(shape, mean, stdev).unwrap();
        let values = draw(&dist, 200_000, 42);
        let (m, s) = mean_stdev(&values);
        within(m, mean, 0.01, &format!("{shape:?} mean"));
        within(s, stdev, 0.03, &format!("{shape:?} stdev"));
        assert!(values.iter().all(|v| *v >= 0.0), "{shape:?} went negative");
    }
}

#[test]
fn uniform_stays_in_its_range() {
    let dist = Dist::new(Shape::Uniform, 5.0, 1.0).unwrap();
    let half = 3f64.sqrt();
    for value in draw(&dist, 10_000, 1) {
        assert!((5.0 - half..=5.0 + half).contains(&value), "{value}");
    }
}

#[test]
fn constant_is_always_its_mean() {
    let dist: Dist = "constant:0.25".parse().unwrap();
    assert!(draw(&dist, 100, 3).iter().all(|v| *v == 0.25));
    let bare: Dist = "512".parse().unwrap();
    assert_eq!(bare.shape(), Shape::Constant);
    assert_eq!(bare.mean(), 512.0);
}

/// Pareto's sample stdev converges too slowly (infinite fourth moment) for a tight check,
/// so check the mean, the minimum (the scale) and the median, which follow from mean and
/// stdev in closed form.
#[test]
fn pareto_has_its_mean_scale_and_median() {
    let (mean, stdev) = (0.02, 0.02);
    let dist = Dist::new(Shape::Pareto, mean, stdev).unwrap();
    let alpha = 1.0 + (1.0 + (mean / stdev).powi(2)).sqrt();
    let scale = mean * (alpha - 1.0) / alpha;
    let mut values = draw(&dist, 400_000, 7);
    let (m, _) = mean_stdev(&values);
    within(m, mean, 0.03, "pareto mean");
    values.sort_by(f64::total_cmp);
    assert!(values[0] >= scale, "{} < scale {scale}", values[0]);
    within(
        values[values.len() / 2],
        scale * 2f64.powf(1.0 / alpha),
        0.01,
        "pareto median",
    );
}

/// Given by sigma: the logarithms of the draws have sigma as their stdev and ln(median) =
/// ln(mean) − σ²/2 as their mean.
#[test]
fn lognormal_by_sigma_has_its_median_and_log_spread() {
    let (mean, sigma) = (0.05, 1.5);
    let dist = Dist::lognormal_sigma(mean, sigma).unwrap();
    assert_eq!(dist.shape(), Shape::Lognormal);
    within(dist.stdev(), mean * 8.4877f64.sqrt(), 1e-4, "stdev");
    let mut values = draw(&dist, 200_000, 11);
    let logs: Vec<f64> = values.iter().map(|v| v.ln()).collect();
    let (log_mean, log_sd) = mean_stdev(&logs);
    within(log_sd, sigma, 0.01, "sigma of the logs");
    within(
        log_mean,
        mean.ln() - sigma * sigma / 2.0,
        0.005,
        "mean of the logs",
    );
    values.sort_by(f64::total_cmp);
    within(
        values[values.len() / 2],
        mean * (-sigma * sigma / 2.0).exp(),
        0.02,
        "median",
    );
    // The sample mean of so heavy a tail converges slowly: 2 % over 200 000 draws.
    within(mean_stdev(&values).0, mean, 0.02, "mean");
    assert!(Dist::lognormal_sigma(0.05, -1.0).is_err());
    assert!(Dist::lognormal_sigma(0.05, f64::NAN).is_err());
    assert!(Dist::lognormal_sigma(0.0, 1.5).is_err());
}

#[test]
fn the_same_seed_draws_the_same_values() {
    let dist: Dist = "lognormal:1:0.5".parse().unwrap();
    assert_eq!(draw(&dist, 1000, 9), draw(&dist, 1000, 9));
    assert_ne!(draw(&dist, 1000, 9), draw(&dist, 1000, 10));
}

#[test]
fn specs_parse_and_impossible_ones_are_refused() {
    let dist: Dist = "lognormal:512:128".parse().unwrap();
    assert_eq!(
        (dist.shape(), dist.mean(), dist.stdev()),
        (Shape::Lognormal, 512.0, 128.0)
    );
    let exp: Dist = "exponential:0.01".parse().unwrap();
    assert_eq!(exp.stdev(), 0.01, "an exponential's stdev is its mean");
    assert_eq!(dist.to_string(), "lognormal:512:128");
    for bad in [
        "zipf:1",
        "normal:x:1",
        "uniform:1:1",
        "pareto:1:0",
        "exponential:0",
        "normal:-1:1",
        "a:b:c:d",
    ] {
        assert!(bad.parse::<Dist>().is_err(), "{bad} was accepted");
    }
}
