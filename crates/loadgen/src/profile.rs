//! Rate profiles of `loadgen run`: steps (`10@30s`) and linear ramps (`10..50@30s`), one
//! after another, and the arrival times they give.

use std::{fmt, str::FromStr, time::Duration};

use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Exp1};

use crate::Error;

/// One stretch of a profile: the rate goes linearly from `from` to `to` req/s over `duration`
/// (a step when they are equal).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub from: f64,
    pub to: f64,
    pub duration: Duration,
}

/// A sequence of segments.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub segments: Vec<Segment>,
}

/// How arrivals are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// Evenly, exactly at the rate (the stress client's fixed rate).
    Even,
    /// A Poisson process with this (time-varying) rate, from a seed.
    Poisson { seed: u64 },
}

impl Profile {
    /// A constant rate for `duration`.
    pub fn constant(rate: f64, duration: Duration) -> Result<Self, Error> {
        check_rate(rate)?;
        Ok(Self {
            segments: vec![Segment {
                from: rate,
                to: rate,
                duration,
            }],
        })
    }

    pub fn duration(&self) -> Duration {
        self.segments.iter().map(|s| s.duration).sum()
    }

    /// The expected number of requests.
    pub fn expected_requests(&self) -> f64 {
        self.segments
            .iter()
            .map(|s| (s.from + s.to) / 2.0 * s.duration.as_secs_f64())
            .sum()
    }

    /// Arrival times in seconds from the start. With even spacing the cumulative rate
    /// (the expected count) is inverted at 0, 1, 2, ...; with Poisson spacing at the sums
    /// of unit exponential draws (time rescaling), which gives a Poisson process with this
    /// rate.
    pub fn arrivals(&self, spacing: Spacing) -> Vec<f64> {
        let mut rng = match spacing {
            Spacing::Even => None,
            Spacing::Poisson { seed } => Some(StdRng::seed_from_u64(seed)),
        };
        let mut step = move || match rng.as_mut() {
            None => 1.0,
            Some(rng) => Exp1.sample(rng),
        };
        let mut times = Vec::new();
        let mut target = match spacing {
            Spacing::Even => 0.0,
            Spacing::Poisson { .. } => step(),
        };
        let mut count_before = 0.0; // expected requests before this segment
        let mut start = 0.0; // seconds
        for segment in &self.segments {
            let length = segment.duration.as_secs_f64();
            let a = segment.from;
            let slope = if length > 0.0 {
                (segment.to - segment.from) / length
            } else {
                0.0
            };
            // Expected requests within the segment after tau seconds: a*tau + slope*tau^2/2.
            let total = a * length + slope * length * length / 2.0;
            while target - count_before < total {
                let m = target - count_before;
                let tau = if slope.abs() < 1e-12 {
                    m / a
                } else {
                    (-a + (a * a + 2.0 * slope * m).max(0.0).sqrt()) / slope
                };
                times.push(start + tau.clamp(0.0, length));
                target += step();
            }
            count_before += total;
            start += length;
        }
        times
    }
}

fn check_rate(rate: f64) -> Result<(), Error> {
    if rate.is_finite() && rate >= 0.0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "rate `{rate}` must be a non-negative number of requests per second"
        )))
    }
}

/// `10@30s,50@30s,10@60s` (steps) and `10..50@30s` (a ramp), comma-separated.
impl FromStr for Profile {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let mut segments = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |why: String| {
                Error::Invalid(format!(
                    "profile part `{part}`: {why}; use RATE@DURATION or FROM..TO@DURATION, e.g. 10@30s,10..50@1m"
                ))
            };
            let (rates, duration) = part
                .split_once('@')
                .ok_or_else(|| bad("no `@DURATION`".into()))?;
            let duration = common::config::parse_duration(duration).map_err(bad)?;
            let rate = |text: &str| {
                text.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && *r >= 0.0)
                    .ok_or_else(|| bad(format!("`{text}` is not a rate")))
            };
            let (from, to) = match rates.split_once("..") {
                Some((from, to)) => (rate(from)?, rate(to)?),
                None => {
                    let r = rate(rates)?;
                    (r, r)
                }
            };
            segments.push(Segment { from, to, duration });
        }
        if segments.is_empty() {
            return Err(Error::Invalid("the profile is empty".into()));
        }
        Ok(Self { segments })
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if s.from == s.to {
                write!(f, "{}@{}s", s.from, s.duration.as_secs_f64())?;
            } else {
                write!(f, "{}..{}@{}s", s.from, s.to, s.duration.as_secs_f64())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
